//! MCP streamable HTTP over rmcp's client, with a keep-alive connection pool.

use std::{sync::Arc, time::Duration};

use crate::{
    headers::{bounded, single_valued, upstream_headers},
    per_call::{PerCallClient, SessionCredentials},
};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Transport, TransportError, TransportKind, async_trait,
};
use rmcp::transport::{
    StreamableHttpClientTransport,
    common::client_side_sse::{ExponentialBackoff, SseRetryPolicy},
    streamable_http_client::StreamableHttpClientTransportConfig,
};

/// How long an idle keep-alive connection is kept (reqwest's default, stated for the docs).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(90);

/// The streamable HTTP client transport (MCP 2025-03-26 and later).
///
/// One instance holds one [`reqwest::Client`] shared by every session of the pool, with
/// keep-alive on and TCP_NODELAY set: rmcp's own `from_uri` client turns keep-alive off
/// (rmcp issue #789), and without nodelay a reused connection stalls ~44 ms per call
/// (RMCP-NOTES). Sessions are created with `reinit_on_expired_session(false)`: a session the
/// server expired (HTTP 404) fails visibly and is evicted by the pool instead of being silently
/// replaced with a fresh one that has lost the server-side state (DESIGN §2.6).
/// rmcp sets `Accept: application/json, text/event-stream` on every request. Redirects are not
/// followed ([`http_client`]): a `3xx` answer fails the connect.
///
/// Per-request headers ([`CallHeaders`](mcp_pool_traits::CallHeaders) in a request's
/// extensions, set by the pool's leases) go on that request's `POST`; their credentials
/// replace the session's for every later request, the `DELETE` at close included.
///
/// A reply stream that drops mid-call is resumed at most [`MAX_STREAM_RESUMES`] times
/// ([`default_retry_policy`]): rmcp's default retries forever, so a call in flight when an rmcp
/// upstream (which sends SSE priming events) dies would never fail and its lease would never
/// come back.
#[derive(Clone)]
pub struct StreamableHttp {
    client: reqwest::Client,
    retry: Arc<dyn SseRetryPolicy>,
}

impl std::fmt::Debug for StreamableHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamableHttp").finish_non_exhaustive()
    }
}

/// How many times a dropped reply stream is resumed before the call fails.
pub const MAX_STREAM_RESUMES: usize = 3;

/// The default resume policy: [`MAX_STREAM_RESUMES`] attempts, backing off from 250 ms, no
/// single delay above 2 s (a server's SSE `retry:` field can ask for another interval).
pub fn default_retry_policy() -> Arc<dyn SseRetryPolicy> {
    let mut policy = ExponentialBackoff::default();
    policy.max_times = Some(MAX_STREAM_RESUMES);
    policy.base_duration = Duration::from_millis(250);
    policy.max_delay = Some(Duration::from_secs(2));
    Arc::new(policy)
}

/// The HTTP client the HTTP transports use by default: keep-alive on (idle connections kept
/// [`IDLE_CONNECTION_TIMEOUT`]), TCP_NODELAY set, **no redirects followed**: a `3xx` answer
/// fails the request, so the identity headers (`authorization`, `x-api-key`, `x-tenant-id`,
/// …) are only ever sent to the origin the endpoint names. An endpoint that moved must be
/// configured with its new URL.
///
/// # Errors
/// When the client cannot be built (its TLS backend failed to initialize).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .build()
}

impl StreamableHttp {
    /// A transport with its own keep-alive, TCP_NODELAY HTTP client.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (its TLS backend failed to initialize).
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self::with_client(http_client()?))
    }

    /// A transport over `client`. Keep keep-alive on and TCP_NODELAY set, or every call pays a
    /// connect or a 44 ms stall, and redirects off (as [`http_client`]), or a redirect carries
    /// the identity headers to another origin.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self {
            client,
            retry: default_retry_policy(),
        }
    }

    /// Resumes dropped reply streams by `policy` instead of [`default_retry_policy`].
    pub fn with_retry_policy(mut self, policy: Arc<dyn SseRetryPolicy>) -> Self {
        self.retry = policy;
        self
    }
}

#[async_trait]
impl Transport for StreamableHttp {
    fn kind(&self) -> TransportKind {
        TransportKind::StreamableHttp
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        let url = &request.endpoint().url;
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone())
            .reinit_on_expired_session(false)
            .custom_headers(single_valued(&upstream_headers(request.headers())));
        config.retry_config = self.retry.clone();
        let client = PerCallClient {
            client: self.client.clone(),
            credentials: SessionCredentials::default(),
        };
        let transport = StreamableHttpClientTransport::with_client(client, config);
        bounded(url, request.timeout(), request.start(transport)).await
    }
}
