//! The [`Transport`] trait: connect an endpoint and return an initialized rmcp client session.

use std::{fmt, time::Duration};

use http::HeaderMap;
use rmcp::{
    RoleClient, ServiceError,
    model::{ClientConfig, Implementation},
    service::RunningService,
};

use crate::{
    Endpoint, FailureKind, RedactedHeaders, SessionHandler, TransportKind, forwardable_headers,
    redact_url,
};

/// An initialized upstream MCP session, as rmcp hands it out, served by the pool's
/// [`SessionHandler`] (which routes the server's notifications and requests). Derefs to
/// [`Peer<RoleClient>`](rmcp::Peer).
pub type ClientSession = RunningService<RoleClient, SessionHandler>;

/// What a transport needs to open one session.
///
/// Its `Debug` shows header names only and the endpoint URL without user-info
/// ([`redact_url`]); header values are marked sensitive.
#[derive(Clone)]
pub struct ConnectRequest<'a> {
    endpoint: &'a Endpoint,
    headers: HeaderMap,
    timeout: Duration,
    handler: SessionHandler,
}

impl<'a> ConnectRequest<'a> {
    /// A request to connect `endpoint` sending `headers` on every upstream HTTP request, with
    /// connect + `initialize` bounded by `timeout`, the session served by `handler`.
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
        handler: SessionHandler,
    ) -> Self {
        Self {
            endpoint,
            headers: forwardable_headers(headers),
            timeout,
            handler,
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
    pub fn client(&self) -> &ClientConfig {
        self.handler.info()
    }

    /// The service to run the session with: serve it over the transport
    /// (`request.handler().serve(transport)`, rmcp's `ServiceExt`), so that the server's
    /// notifications and requests reach the pool. [`start`](Self::start) does that and also
    /// honours the endpoint's [`Lifecycle`](crate::Lifecycle).
    pub fn handler(&self) -> SessionHandler {
        self.handler.clone()
    }

    /// Starts the session over an established `transport` with the endpoint's
    /// [`Lifecycle`](crate::Lifecycle): `initialize` (rmcp's `serve`), `server/discover` for
    /// protocol 2026-07-28, or discover falling back to `initialize`. Not bounded in time:
    /// wrap it in [`timeout`](Self::timeout).
    ///
    /// # Errors
    /// rmcp's [`ClientInitializeError`](rmcp::service::ClientInitializeError): the handshake
    /// or discovery failed, or the server speaks no version the lifecycle accepts.
    pub async fn start<T, E, A>(
        &self,
        transport: T,
    ) -> Result<ClientSession, rmcp::service::ClientInitializeError>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        use rmcp::{ClientLifecycleMode, model::ProtocolVersion};
        let mode = match self.endpoint.lifecycle {
            crate::Lifecycle::Discover => ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
            crate::Lifecycle::Auto => ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: None,
            },
            _ => ClientLifecycleMode::Initialize,
        };
        // The handler's own method: it routes notifications in wire order.
        self.handler().serve_with_lifecycle(transport, mode).await
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
/// ([`redact_url`]): build it with [`categorized`](Self::categorized),
/// [`with_cause`](Self::with_cause) or [`timeout`](Self::timeout).
///
/// Its message is complete and meant for people: the endpoint URL and the
/// cause in words, e.g. `cannot open an MCP session at http://127.0.0.1:8000/mcp: connection
/// refused (nothing listens at this address)`. It has no [`source`](std::error::Error::source):
/// the transport's own error, whose text may name Rust types or repeat the cause, is kept in
/// [`Connect::error`](Self::Connect::error) for programs.
///
/// [`kind`](Self::kind) says why, in categories ([`FailureKind`]) that tell an endpoint's
/// failure from a caller's; [`counts_against_endpoint`](Self::counts_against_endpoint) is what
/// a shared circuit breaker should look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Connect + initialize did not finish within the create timeout.
    #[error(
        "cannot open an MCP session at {url}: connect + initialize timed out after {timeout:?}"
    )]
    Timeout {
        /// The endpoint URL, redacted.
        url: String,
        /// The create timeout.
        timeout: Duration,
    },
    /// The connection or the handshake failed.
    #[error("cannot open an MCP session at {url}: {cause}")]
    Connect {
        /// The endpoint URL, redacted.
        url: String,
        /// Why, as a category ([`FailureKind::Other`] when the transport did not say).
        kind: FailureKind,
        /// Why, in words: the root cause (`connection refused (nothing listens at this
        /// address)`, `DNS failure: …`, `HTTP 404 Not Found (text/html): "Not Found"`), with
        /// no Rust type names, bodies cut to a short excerpt and the endpoint URL redacted.
        cause: String,
        /// The transport's own error, for programs (downcast it); not part of the message.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No transport is registered for this kind.
    #[error(
        "cannot open an MCP session over {0}: no transport is registered for it \
         (PoolBuilder::transport)"
    )]
    Unsupported(TransportKind),
}

/// The longest [`TransportError::Connect::cause`] built from an error's messages, in bytes
/// (an excerpt ends with `…`).
const MAX_CAUSE_BYTES: usize = 400;

impl TransportError {
    /// A [`TransportError::Connect`] for `url` (stored [redacted](redact_url)) of kind
    /// [`FailureKind::Other`] (which counts against the endpoint). Prefer
    /// [`categorized`](Self::categorized) when the cause is known.
    pub fn connect(url: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::categorized(url, FailureKind::Other, source)
    }

    /// A [`TransportError::Connect`] for `url` that failed for the reason `kind`. Its cause in
    /// words is `source`'s message followed by those of its causes (`source()`), each once:
    /// a cause whose text its parent already includes is skipped; at most 400 bytes. Use
    /// [`with_cause`](Self::with_cause) to word it yourself.
    pub fn categorized(
        url: &str,
        kind: FailureKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let error = source.into();
        let cause = chain_text(error.as_ref());
        Self::with_cause(url, kind, cause, error)
    }

    /// A [`TransportError::Connect`] for `url` that failed for the reason `kind`, with its
    /// cause in words (`cause`; `url` appearing in it is redacted too) and the transport's
    /// own `error`.
    pub fn with_cause(
        url: &str,
        kind: FailureKind,
        cause: impl Into<String>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let redacted = redact_url(url);
        let mut cause = cause.into();
        if redacted != url && cause.contains(url) {
            cause = cause.replace(url, &redacted);
        }
        Self::Connect {
            url: redacted.into_owned(),
            kind,
            cause,
            error: error.into(),
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

    /// The cause in words, without the URL: the `cause` of [`Connect`](Self::Connect), what
    /// timed out for [`Timeout`](Self::Timeout), the missing transport for
    /// [`Unsupported`](Self::Unsupported).
    pub fn cause(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Connect { cause, .. } => cause.as_str().into(),
            Self::Timeout { timeout, .. } => {
                format!("connect + initialize timed out after {timeout:?}").into()
            }
            Self::Unsupported(kind) => format!("no transport is registered for {kind}").into(),
        }
    }
}

/// `error`'s message and its causes', each once (a cause whose text the message so far already
/// includes is skipped), joined by `: `, at most [`MAX_CAUSE_BYTES`].
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    // Chains are a handful deep; the bound stops a cyclic `source()`.
    for _ in 0..32 {
        let Some(cause) = next else { break };
        let message = cause.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        next = cause.source();
    }
    if text.len() > MAX_CAUSE_BYTES {
        let mut end = MAX_CAUSE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Opens initialized MCP client sessions over one kind of transport.
///
/// One instance serves a whole pool: keep shared resources (an HTTP client with keep-alive) in
/// it. Custom transports prove themselves with `mcp_pool_conformance::transport_conformance!`.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The kind of endpoints this transport connects: a built-in kind (the pool's built-in
    /// transport of that kind is then replaced) or a [custom one](TransportKind::custom),
    /// which endpoints name in their `transport` and stats and metrics show by its name.
    fn kind(&self) -> TransportKind;

    /// Checks an endpoint of this transport's kind when a server is added to a pool, beyond
    /// what [`Endpoint::validate`] checks (for a custom kind: only that the URL is not empty).
    /// The default accepts every endpoint.
    ///
    /// # Errors
    /// [`InvalidEndpoint::Refused`](crate::InvalidEndpoint::Refused) with the reason, which the
    /// pool reports naming the server.
    fn validate_endpoint(&self, _endpoint: &Endpoint) -> Result<(), crate::InvalidEndpoint> {
        Ok(())
    }

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
/// rmcp's streamable HTTP client never reports its own death: this is how the pool
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

    /// An error whose message includes its source's (the pattern `chain_text` must not repeat).
    #[derive(Debug, thiserror::Error)]
    #[error("handshake failed: {0}")]
    struct Including(#[source] std::io::Error);

    /// An error whose message leaves its source's to `source()`.
    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Exposing(#[source] Including);

    #[test]
    fn a_categorized_cause_says_each_message_once_and_has_no_source() {
        let error = TransportError::categorized(
            "http://127.0.0.1:1/mcp",
            FailureKind::ConnectionRefused,
            Exposing(Including(std::io::Error::other("refused by peer"))),
        );
        assert_eq!(
            error.cause(),
            "request failed: handshake failed: refused by peer"
        );
        assert_eq!(
            error.to_string(),
            "cannot open an MCP session at http://127.0.0.1:1/mcp: request failed: handshake \
             failed: refused by peer"
        );
        assert!(std::error::Error::source(&error).is_none());
        let TransportError::Connect { error: inner, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            inner.downcast_ref::<Exposing>().is_some(),
            "kept for programs"
        );

        let long = TransportError::connect("http://x/mcp", "y".repeat(1000));
        assert_eq!(long.cause().len(), MAX_CAUSE_BYTES + '…'.len_utf8());
        let timeout = TransportError::timeout("http://x/mcp", Duration::from_secs(5));
        assert_eq!(
            timeout.to_string(),
            "cannot open an MCP session at http://x/mcp: connect + initialize timed out after 5s"
        );
        assert_eq!(
            TransportError::Unsupported(TransportKind::WebSocket).to_string(),
            "cannot open an MCP session over websocket: no transport is registered for it \
             (PoolBuilder::transport)"
        );
    }

    #[test]
    fn a_url_in_the_cause_is_redacted_too() {
        let url = "https://alice:pw123@example.test/mcp";
        let error = TransportError::with_cause(
            url,
            FailureKind::Other,
            format!("error sending request for url ({url})"),
            "raw",
        );
        let shown = error.to_string();
        assert!(
            !shown.contains("pw123") && !shown.contains("alice"),
            "{shown}"
        );
        assert_eq!(
            error.cause(),
            "error sending request for url (https://***@example.test/mcp)"
        );
    }

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
        let handler = SessionHandler::new(default_client_config(), None);
        let request = ConnectRequest::new(&endpoint, &headers, Duration::from_secs(1), handler);
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
