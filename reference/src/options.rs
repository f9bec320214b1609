//! [`ServerOptions`]: how a [`ReferenceServer`](crate::ReferenceServer) serves.

use std::{net::SocketAddr, time::Duration};

/// How a [`ReferenceServer`](crate::ReferenceServer) serves; see
/// [`start_with`](crate::ReferenceServer::start_with).
///
/// The default listens on `127.0.0.1` on a free port, sends no SSE priming events and ends
/// sessions idle for 300 s (rmcp's default).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The `retry` interval announced in SSE priming events (MCP SEP-1699), or `None` to send
    /// no priming events.
    ///
    /// With priming events, an rmcp client whose response stream ends early (the server
    /// stopped mid-call) waits this long and then tries to resume the stream; with rmcp's
    /// default retry policy (unbounded exponential backoff) it keeps trying and the call never
    /// fails. Without them the call fails at once with `ServiceError::TransportClosed`. rmcp
    /// servers send them by default, every 3 s.
    pub sse_retry: Option<Duration>,
    /// How long a session may stay idle (no request, no message) before the server ends it on
    /// its own; `None` never ends idle sessions. Requests on an ended session get HTTP 404.
    pub session_idle_timeout: Option<Duration>,
    /// A bearer token every HTTP request must carry (`Authorization: Bearer <token>`), over
    /// every transport, or `None` to require none. A request without it is answered
    /// `401 Unauthorized` with `WWW-Authenticate: Bearer realm="mcp-pool-reference"`
    /// (RFC 6750 §3) and opens no session.
    pub bearer_token: Option<String>,
    /// Which MCP lifecycles its streamable HTTP endpoint speaks (default: both).
    pub protocols: Protocols,
    /// How long after its last event the server ends an event stream answering a streamable
    /// HTTP `POST` (the stream of one request, ended after its response), or `None` (the
    /// default) to end it with the response. A delay models a server whose stream end comes
    /// in a later write than the response, as the Python SDK's does: a client that stops
    /// reading at the response then cannot reuse the connection.
    pub stream_end_delay: Option<Duration>,
}

/// Which MCP lifecycles a [`ReferenceServer`](crate::ReferenceServer)'s streamable HTTP
/// endpoint speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocols {
    /// `initialize` sessions (2024-11-05 to 2025-11-25) and session-less 2026-07-28 requests
    /// (`server/discover`, per-request `_meta`), as rmcp 3.9 serves by default.
    #[default]
    All,
    /// 2026-07-28 only: `initialize` is refused with `UNSUPPORTED_PROTOCOL_VERSION`, and
    /// requests must carry the protocol metadata.
    ModernOnly,
    /// The `initialize` lifecycle only: `server/discover` is answered "method not found", as
    /// by every server written before 2026-07-28.
    LegacyOnly,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            sse_retry: None,
            session_idle_timeout: Some(Duration::from_secs(300)),
            bearer_token: None,
            protocols: Protocols::All,
            stream_end_delay: None,
        }
    }
}

impl ServerOptions {
    /// The same options listening on `addr`.
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The same options with SSE priming events announcing `retry` (`None`: no priming).
    pub fn with_sse_retry(mut self, retry: Option<Duration>) -> Self {
        self.sse_retry = retry;
        self
    }

    /// The same options requiring `Authorization: Bearer <token>` on every request (`None`:
    /// no token required); see [`bearer_token`](Self::bearer_token).
    pub fn with_bearer_token(mut self, token: Option<&str>) -> Self {
        self.bearer_token = token.map(str::to_owned);
        self
    }

    /// The same options speaking `protocols` on streamable HTTP.
    pub fn with_protocols(mut self, protocols: Protocols) -> Self {
        self.protocols = protocols;
        self
    }

    /// The same options ending each `POST`'s event stream `delay` after its last event
    /// (`None`: with it); see [`stream_end_delay`](Self::stream_end_delay).
    pub fn with_stream_end_delay(mut self, delay: Option<Duration>) -> Self {
        self.stream_end_delay = delay;
        self
    }

    /// The same options ending sessions idle for `timeout` (`None`: never).
    pub fn with_session_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.session_idle_timeout = timeout;
        self
    }
}
