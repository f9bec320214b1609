//! MCP streamable HTTP over rmcp's client, with a keep-alive connection pool.

use std::{sync::Arc, time::Duration};

use crate::{
    headers::{bounded, single_valued, upstream_headers},
    per_call::{PerCallClient, SessionCredentials, StreamAnswers},
};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, SessionHandler, Transport, TransportError, TransportKind,
    async_trait,
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
/// (rmcp issue #789), and without nodelay a reused connection stalls ~44 ms per call.
/// Sessions are created with `reinit_on_expired_session(false)`: a session the
/// server expired (HTTP 404) fails visibly and is evicted by the pool instead of being silently
/// replaced with a fresh one that has lost the server-side state.
/// rmcp sets `Accept: application/json, text/event-stream` on every request. Redirects are not
/// followed ([`http_client`]): a `3xx` answer fails the connect.
///
/// A request `POST` answered with an event stream keeps its connection: rmcp stops reading the
/// stream once it has the response, and this transport reads the rest (the server ends it
/// after the response) in the background, for at most
/// [`RESPONSE_STREAM_DRAIN_TIME`](crate::RESPONSE_STREAM_DRAIN_TIME) and
/// [`RESPONSE_STREAM_DRAIN_BYTES`](crate::RESPONSE_STREAM_DRAIN_BYTES), so that the connection
/// goes back to the pool instead of being closed: pooled calls do not open a TCP connection
/// (or a TLS handshake) each.
///
/// Per-request headers ([`CallHeaders`](mcp_pool_traits::CallHeaders) in a request's
/// extensions, set by the pool's leases) go on that request's `POST`; their credentials
/// replace the session's for every later request, the `DELETE` at close included.
///
/// A reply stream that drops mid-call is resumed at most [`MAX_STREAM_RESUMES`] times
/// ([`default_retry_policy`]): rmcp's default retries forever, so a call in flight when an rmcp
/// upstream (which sends SSE priming events) dies would never fail and its lease would never
/// come back.
///
/// rmcp 3.9's session never reports its own death, so this transport watches for it and tells
/// the pool, which then evicts the session at once instead of finding out at the next call or
/// after a call's deadline, when:
/// - a `GET` of the session's event stream is answered HTTP 404 or 400: the server no longer
///   knows the session (it restarted, or expired it):
///   [reported forgotten](SessionHandler::report_forgotten);
/// - an event stream cannot be re-established: the retry policy gave up after failed
///   reconnection attempts (by default [`MAX_STREAM_RESUMES`], within about 2 s), the last
///   of which got no HTTP answer: [reported lost](SessionHandler::report_lost), and the calls
///   in flight fail at once.
///
/// A request's own answer fails that request instead: HTTP 404 (`SessionExpired`), and an
/// HTTP 400 or id-less JSON-RPC error naming the session as unknown, which would otherwise
/// never reach the call (server-everything answers so after a restart).
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

/// The transport's resume policy as one session uses it: when it gives up on one of the
/// session's event streams after failed reconnection attempts, the last of which got no HTTP
/// answer, the server is unreachable and the session is reported lost. (Giving up on a stream
/// that ended cleanly, before any attempt, proves nothing; nor do attempts the server
/// answered: a 404 or 400 is reported when it comes, another status leaves the session to its
/// calls.)
#[derive(Debug)]
struct SessionRetry {
    policy: Arc<dyn SseRetryPolicy>,
    session: SessionHandler,
    streams: StreamAnswers,
}

impl SseRetryPolicy for SessionRetry {
    fn retry(&self, failed_attempts: usize) -> Option<Duration> {
        let delay = self.policy.retry(failed_attempts);
        if delay.is_none() && failed_attempts > 0 && self.streams.last_unanswered() {
            self.session.report_lost(format!(
                "the server could not be reached: the session's event stream failed \
                 {failed_attempts} reconnection attempts"
            ));
        }
        delay
    }
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
        let (session, streams) = (request.handler(), StreamAnswers::default());
        config.retry_config = Arc::new(SessionRetry {
            policy: self.retry.clone(),
            session: session.clone(),
            streams: streams.clone(),
        });
        let client = PerCallClient {
            client: self.client.clone(),
            credentials: SessionCredentials::default(),
            session,
            streams,
        };
        let transport = StreamableHttpClientTransport::with_client(client, config);
        bounded(url, request.timeout(), request.start(transport)).await
    }
}
