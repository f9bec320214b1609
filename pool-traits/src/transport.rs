//! The [`Transport`] trait: connect an endpoint and return an initialized rmcp client session.

use std::{fmt, time::Duration};

use http::HeaderMap;
use rmcp::{
    RoleClient, ServiceError,
    model::{ClientConfig, Implementation},
    service::RunningService,
};

use crate::{
    Endpoint, FailureKind, RedactedHeaders, TransportKind, forwardable_headers, redact_url,
};

/// An initialized upstream MCP session, as rmcp hands it out. Derefs to
/// [`Peer<RoleClient>`](rmcp::Peer).
pub type ClientSession = RunningService<RoleClient, ClientConfig>;

/// What a transport needs to open one session.
///
/// Its `Debug` shows header names only and the endpoint URL without user-info
/// ([`redact_url`]); header values are marked sensitive.
#[derive(Clone)]
pub struct ConnectRequest<'a> {
    endpoint: &'a Endpoint,
    headers: HeaderMap,
    timeout: Duration,
    client: &'a ClientConfig,
}

impl<'a> ConnectRequest<'a> {
    /// A request to connect `endpoint` sending `headers` on every upstream HTTP request, with
    /// connect + `initialize` bounded by `timeout`.
    ///
    /// Pass the headers of [`IdentityConfig::forwarded_headers`](crate::IdentityConfig::forwarded_headers)
    /// (identity headers and the allow-list, all hashed into the key), not a downstream
    /// request's headers. Whatever is passed, the [`NEVER_FORWARDED`](crate::NEVER_FORWARDED)
    /// headers (hop-by-hop, `host`, `content-length`, `accept`, `accept-encoding`,
    /// `last-event-id`, the internal `mcp-session-id` / `x-mcp-session-id`, WebSocket handshake
    /// headers, …) are removed here, so no transport can forward them, and every value is
    /// marked [sensitive](http::HeaderValue::set_sensitive) ([`forwardable_headers`]).
    pub fn new(
        endpoint: &'a Endpoint,
        headers: &HeaderMap,
        timeout: Duration,
        client: &'a ClientConfig,
    ) -> Self {
        Self {
            endpoint,
            headers: forwardable_headers(headers),
            timeout,
            client,
        }
    }

    /// The endpoint to connect.
    pub fn endpoint(&self) -> &'a Endpoint {
        self.endpoint
    }

    /// Headers to send upstream, [`forwardable_headers`] of what the caller passed: never a
    /// [`NEVER_FORWARDED`](crate::NEVER_FORWARDED) header, values marked sensitive.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The bound on connect + `initialize` together.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `initialize` parameters (client info and capabilities) to send.
    pub fn client(&self) -> &'a ClientConfig {
        self.client
    }
}

impl fmt::Debug for ConnectRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("endpoint", self.endpoint)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The `initialize` parameters the pool sends by default: client name `mcp-pool` and this
/// crate's version, default capabilities.
pub fn default_client_config() -> ClientConfig {
    ClientConfig::new(
        Default::default(),
        Implementation::new("mcp-pool", env!("CARGO_PKG_VERSION")),
    )
}

/// A session could not be opened.
///
/// The URLs it holds have their user-info and credential-looking query values hidden
/// ([`redact_url`]): build it with [`connect`](Self::connect) and [`timeout`](Self::timeout).
///
/// [`kind`](Self::kind) says why, in categories ([`FailureKind`]) that tell an endpoint's
/// failure from a caller's; [`counts_against_endpoint`](Self::counts_against_endpoint) is what
/// a shared circuit breaker should look at (issue 9, item 12).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Connect + initialize did not finish within the create timeout.
    #[error("connecting {url} timed out after {timeout:?} (connect + initialize)")]
    Timeout {
        /// The endpoint URL, redacted.
        url: String,
        /// The create timeout.
        timeout: Duration,
    },
    /// The connection or the handshake failed.
    #[error("connecting {url} failed ({kind}): {source}")]
    Connect {
        /// The endpoint URL, redacted.
        url: String,
        /// Why, as a category ([`FailureKind::Other`] when the transport did not say).
        kind: FailureKind,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No transport is registered for this kind.
    #[error("no transport is registered for {0}")]
    Unsupported(TransportKind),
}

impl TransportError {
    /// A [`TransportError::Connect`] for `url` (stored [redacted](redact_url)) of kind
    /// [`FailureKind::Other`] (which counts against the endpoint). Prefer
    /// [`categorized`](Self::categorized) when the cause is known.
    pub fn connect(url: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::categorized(url, FailureKind::Other, source)
    }

    /// A [`TransportError::Connect`] for `url` that failed for the reason `kind`.
    pub fn categorized(
        url: &str,
        kind: FailureKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Connect {
            url: redact_url(url).into_owned(),
            kind,
            source: source.into(),
        }
    }

    /// A [`TransportError::Timeout`] for `url` (stored [redacted](redact_url)).
    pub fn timeout(url: &str, timeout: Duration) -> Self {
        Self::Timeout {
            url: redact_url(url).into_owned(),
            timeout,
        }
    }

    /// Why the session could not be opened: [`FailureKind::Timeout`] for
    /// [`Timeout`](Self::Timeout), the transport's category for [`Connect`](Self::Connect),
    /// [`FailureKind::Unsupported`] for [`Unsupported`](Self::Unsupported).
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Timeout { .. } => FailureKind::Timeout,
            Self::Connect { kind, .. } => *kind,
            Self::Unsupported(_) => FailureKind::Unsupported,
        }
    }

    /// Whether this failure is the endpoint's (down, slow, broken for everyone) rather than
    /// the caller's (a refused token, a rate limit): only then may it count towards opening
    /// the endpoint's circuit breaker, which every tenant shares. See
    /// [`FailureKind::counts_against_endpoint`] for the rule and its reasons.
    pub fn counts_against_endpoint(&self) -> bool {
        self.kind().counts_against_endpoint()
    }

    /// The endpoint URL, when the error names one.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Timeout { url, .. } | Self::Connect { url, .. } => Some(url),
            Self::Unsupported(_) => None,
        }
    }
}

/// Opens initialized MCP client sessions over one kind of transport (DESIGN §9).
///
/// One instance serves a whole pool: keep shared resources (an HTTP client with keep-alive) in
/// it. Custom transports prove themselves with `mcp_pool_conformance::transport_conformance!`.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The kind of endpoints this transport connects.
    fn kind(&self) -> TransportKind;

    /// Connects `request.endpoint()`, performs `initialize` + `notifications/initialized`, and
    /// returns the running session. Must finish within `request.timeout()`.
    ///
    /// # Errors
    /// [`TransportError::Timeout`] past the timeout, [`TransportError::Connect`] otherwise,
    /// with the [`FailureKind`] that fits the cause (a pool's circuit breaker counts only
    /// the endpoint's failures: an HTTP 401 must say [`FailureKind::Unauthorized`], not
    /// [`FailureKind::Other`]).
    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError>;
}

/// Whether an error from a call on a session means the session is unusable: the request could
/// not be sent, the transport closed, or the reply made no sense. An error the server returned
/// (a JSON-RPC error), a request timeout or a cancellation leave the session usable.
///
/// rmcp's streamable HTTP client never reports its own death (RMCP-NOTES): this is how the pool
/// finds out.
pub fn is_transport_failure(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::TransportSend(_)
            | ServiceError::TransportClosed
            | ServiceError::UnexpectedResponse
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_in_debug_or_errors() {
        let endpoint = Endpoint::new(
            "https://alice:pw123@example.test/mcp",
            TransportKind::StreamableHttp,
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
        headers.insert("cookie", "sid=c00kie-value".parse().unwrap());
        headers.insert("last-event-id", "7".parse().unwrap());
        let client = default_client_config();
        let request = ConnectRequest::new(&endpoint, &headers, Duration::from_secs(1), &client);
        assert!(
            request
                .headers()
                .values()
                .all(http::HeaderValue::is_sensitive)
        );
        assert!(!request.headers().contains_key("last-event-id"));
        let errors = [
            TransportError::connect(&endpoint.url, "refused"),
            TransportError::timeout(&endpoint.url, Duration::from_secs(1)),
        ];
        let mut shown = format!("{request:?}");
        for error in &errors {
            shown += &format!("{error} {error:?}");
        }
        for secret in ["s3cr3t-t0ken", "c00kie-value", "pw123", "alice"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("authorization") && shown.contains("***@example.test/mcp"));
    }
}
