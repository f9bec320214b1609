//! The reference MCP test server: an rmcp server with the tools `echo`, `counter`, `sleep` and
//! `fail`, and `progress`, `log`, `notify`, `sample`, `elicit` and `roots`, which send
//! notifications and requests to the client (see [`ReferenceHandler`]), served on loopback over
//! MCP streamable HTTP, legacy HTTP+SSE and WebSocket, with counters and fault switches for
//! tests.
//!
//! Every test and example of the workspace uses it as the upstream server.

mod handler;
mod http;
mod options;
mod sessions;
mod stats;

use std::{collections::BTreeSet, io, net::SocketAddr, sync::Arc, time::Duration};

use ::http::HeaderMap;
use mcp_pool_traits::{Endpoint, TransportKind};
use tokio::sync::Mutex;

pub use handler::{
    GREET_PROMPT, GREETING_RESOURCE, GREETING_TEXT, LOGGER, MAX_PROGRESS_STEPS, ReferenceHandler,
    SAMPLE_MAX_TOKENS, SERVER_NAME, UPDATED_RESOURCE,
};
pub use options::{Protocols, ServerOptions};
pub(crate) use stats::{Counters, SessionGuard, wait_for_stats};
pub use stats::{ServerStats, WaitTimeout};

use self::http::{MCP_PATH, Run, SSE_PATH, Shared, WS_PATH};

/// The reference MCP server, serving three transports on one port of `127.0.0.1`
/// ([`url_for`](Self::url_for)):
///
/// | transport | URL | served by |
/// |---|---|---|
/// | streamable HTTP | `http://127.0.0.1:PORT/mcp` | rmcp's `StreamableHttpService` |
/// | legacy HTTP+SSE (2024-11-05) | `http://127.0.0.1:PORT/sse` (messages: `POST /message?sessionId=…`) | [`SseServer`](mcp_pool_transports::server::SseServer) |
/// | WebSocket (custom, subprotocol `mcp`) | `ws://127.0.0.1:PORT/ws` | [`WebSocketServer`](mcp_pool_transports::server::WebSocketServer) |
///
/// Each MCP session gets its own [`ReferenceHandler`] (see there for the tools), whatever the
/// transport. The server counts what it sees over all of them ([`stats`](Self::stats)),
/// records request headers, and can be stopped, restarted on the same port, made to forget
/// its sessions or to hang, for fault tests; every switch acts on every transport.
///
/// Streamable HTTP sessions are managed by rmcp's `LocalSessionManager`; SSE keep-alive pings
/// are off on both HTTP transports; the `Host` header of streamable HTTP requests must be a
/// loopback name (`127.0.0.1`, `localhost`, `::1`); every accepted socket has `TCP_NODELAY`
/// set. [`ServerOptions`] sets the address, SSE priming events and the session idle timeout
/// (both for streamable HTTP only), and a bearer token to require (401 without it, over every
/// transport); [`set_reject_status`](Self::set_reject_status) makes it answer every request
/// with an error status.
///
/// Dropping the server stops it at once, without waiting for in-flight responses.
#[derive(Debug)]
pub struct ReferenceServer {
    /// As started, with the port actually bound.
    options: ServerOptions,
    shared: Arc<Shared>,
    /// The current run; `None` while stopped. An async mutex so that `stop` and `restart`
    /// calls are serialized across their awaits.
    run: Mutex<Option<Run>>,
}

impl ReferenceServer {
    /// Starts a server on `127.0.0.1` on a free port, with the default [`ServerOptions`].
    ///
    /// # Errors
    /// The I/O error of binding the listener.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server listening on `addr` (port 0 picks a free port), with the default
    /// [`ServerOptions`] otherwise.
    ///
    /// # Errors
    /// The I/O error of binding the listener, e.g. the port is in use.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        Self::start_with(ServerOptions::default().with_addr(addr)).await
    }

    /// Starts a server with `options`. The socket is bound with `SO_REUSEADDR`.
    ///
    /// # Errors
    /// The I/O error of binding the listener, e.g. the port is in use.
    pub async fn start_with(mut options: ServerOptions) -> io::Result<Self> {
        let listener = http::bind(options.addr)?;
        options.addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        *shared.authorization.lock() = options
            .bearer_token
            .as_deref()
            .map(|token| Arc::from(format!("Bearer {token}")));
        let run = Run::spawn(listener, shared.clone(), &options);
        Ok(Self {
            options,
            shared,
            run: Mutex::new(Some(run)),
        })
    }

    /// The options the server was started with; `addr` holds the port actually bound.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The address the server listens on; it stays the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        self.options.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The streamable HTTP endpoint URL, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        self.url_for(TransportKind::StreamableHttp)
    }

    /// The server as a streamable HTTP [`Endpoint`] of weight 1.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint_for(TransportKind::StreamableHttp)
    }

    /// The URL of the server over `transport`: `http://127.0.0.1:PORT/mcp` (streamable HTTP),
    /// `http://127.0.0.1:PORT/sse` (legacy SSE: the event stream; messages go where its
    /// `endpoint` event says, `/message?sessionId=…`), `ws://127.0.0.1:PORT/ws` (WebSocket).
    ///
    /// # Panics
    /// For a kind not served over the network (stdio, custom kinds); the reference server over
    /// stdio is this crate's `mcp-pool-reference-stdio` binary.
    pub fn url_for(&self, transport: TransportKind) -> String {
        let addr = self.addr();
        match transport {
            TransportKind::StreamableHttp => format!("http://{addr}{MCP_PATH}"),
            TransportKind::Sse => format!("http://{addr}{SSE_PATH}"),
            TransportKind::WebSocket => format!("ws://{addr}{WS_PATH}"),
            other => panic!("the reference server is not served over {other} by URL"),
        }
    }

    /// The server over `transport` as an [`Endpoint`] of weight 1 ([`url_for`](Self::url_for)).
    pub fn endpoint_for(&self, transport: TransportKind) -> Endpoint {
        // `url_for` picks the scheme that fits each transport.
        Endpoint::new(self.url_for(transport), transport)
            .expect("url_for builds a URL whose scheme fits its transport")
    }

    /// Whether the server is serving (started or restarted, and not stopped since).
    pub async fn is_running(&self) -> bool {
        self.run.lock().await.is_some()
    }

    /// Stops the server and returns once everything is shut down: the listener is closed (new
    /// connections are refused), every MCP session is ended (`sessions_alive` is 0), and every
    /// TCP connection is closed, idle keep-alive ones included, so a client's next request
    /// fails instead of hanging. SSE event streams end and WebSocket connections get a close
    /// frame (1001), so SSE and WebSocket clients see their sessions die at once. Response streams of calls in flight end without a response
    /// (see [`ServerOptions::sse_retry`] for what an rmcp client makes of that); requests held
    /// by [`set_hang`](Self::set_hang) are answered with HTTP 503; a response still being
    /// written after 2 s has its connection aborted. Does nothing when already stopped.
    pub async fn stop(&self) {
        let run = self.run.lock().await.take();
        if let Some(run) = run {
            run.stop().await;
        }
    }

    /// Stops the server if it is running, then serves again on the same address with no
    /// sessions: ids issued before get HTTP 404. Counters, recorded headers and the hang
    /// switch carry over.
    ///
    /// # Errors
    /// The I/O error of binding the port again, e.g. another process took it meanwhile. The
    /// server is then stopped.
    pub async fn restart(&self) -> io::Result<()> {
        let mut run = self.run.lock().await;
        if let Some(previous) = run.take() {
            previous.stop().await;
        }
        let listener = http::bind(self.addr())?;
        *run = Some(Run::spawn(listener, self.shared.clone(), &self.options));
        Ok(())
    }

    /// Ends every MCP session on the server side while it keeps serving, as an idle timeout
    /// or a server restart would: streamable HTTP requests with those session ids get HTTP
    /// 404 (session expired), SSE streams end (later POSTs get 404), WebSocket connections
    /// get a close frame. Returns how many sessions were ended; 0 when stopped. Streamable
    /// HTTP sessions are counted as ended when this returns, SSE and WebSocket ones right
    /// after (wait with [`wait_sessions_alive`](Self::wait_sessions_alive)).
    pub async fn expire_sessions(&self) -> usize {
        match self.run.lock().await.as_ref() {
            Some(run) => run.expire_sessions().await,
            None => 0,
        }
    }

    /// While `true`, HTTP requests (to `/mcp`, `/sse`, `/message`, `/ws`) are accepted (and
    /// counted) but not answered: each waits until the switch is turned off, then is served
    /// normally, or until the server stops. Open WebSocket sessions, which send no HTTP
    /// requests, leave their `initialize`, `ping` and `tools/call` unanswered the same way.
    /// So a connect over any transport times out, and so does a call on an open session.
    /// Carries over across restarts.
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.send_replace(hang);
    }

    /// While `Some(status)`, every HTTP request (to `/mcp`, `/sse`, `/message`, `/ws`) is
    /// answered with `status` and a short `text/plain` body instead of being served (after the
    /// hang switch, if that is on, lets it through): a connect over any transport fails with
    /// that status (403, 404, 429, 500, …), and so does every request of an open HTTP session.
    /// Open WebSocket sessions, which send no HTTP requests, are not affected. `None` serves
    /// normally again. Carries over across restarts.
    ///
    /// # Panics
    /// When `status` is not an error status (4xx or 5xx).
    pub fn set_reject_status(&self, status: Option<::http::StatusCode>) {
        let code = status.map_or(0, |status| {
            assert!(
                status.is_client_error() || status.is_server_error(),
                "set_reject_status takes an error status, got {status}"
            );
            status.as_u16()
        });
        self.shared
            .reject
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requires `Authorization: Bearer <token>` on every request from now on (`None`: no
    /// token), as [`ServerOptions::bearer_token`] does from the start: a token rotated (the
    /// old one revoked) while sessions are open. Carries over across restarts.
    pub fn set_bearer_token(&self, token: Option<&str>) {
        *self.shared.authorization.lock() = token.map(|token| Arc::from(format!("Bearer {token}")));
    }

    /// Whether the hang switch is on.
    pub fn is_hanging(&self) -> bool {
        *self.shared.hang.borrow()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// HTTP requests received; see [`ServerStats::http_requests`].
    pub fn http_requests(&self) -> u64 {
        self.stats().http_requests
    }

    /// MCP sessions opened; see [`ServerStats::sessions_opened`].
    pub fn sessions_opened(&self) -> u64 {
        self.stats().sessions_opened
    }

    /// MCP sessions currently alive; see [`ServerStats::sessions_alive`].
    pub fn sessions_alive(&self) -> u64 {
        self.stats().sessions_alive
    }

    /// `initialize` requests answered; see [`ServerStats::initializes`].
    pub fn initializes(&self) -> u64 {
        self.stats().initializes
    }

    /// `tools/call` requests received; see [`ServerStats::tool_calls`].
    pub fn tool_calls(&self) -> u64 {
        self.stats().tool_calls
    }

    /// Waits until `condition` holds for the counters, re-checking after each change rather
    /// than polling, and returns the snapshot it held for. Sessions end asynchronously after a
    /// client closes them, and requests arrive asynchronously after a client sends them: tests
    /// wait with this rather than read [`stats`](Self::stats) once.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last counters, when `condition` did not hold within `timeout`.
    pub async fn wait_until(
        &self,
        condition: impl FnMut(&ServerStats) -> bool,
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        self.shared.counters.wait_until(condition, timeout).await
    }

    /// Waits until exactly `expected` sessions are alive; see [`wait_until`](Self::wait_until).
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last counters, when the count was not reached within `timeout`.
    pub async fn wait_sessions_alive(
        &self,
        expected: u64,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_until(|stats| stats.sessions_alive == expected, timeout)
            .await
            .map(drop)
    }

    /// The lowercase names of every request header the server received, over every
    /// transport.
    pub fn seen_header_names(&self) -> BTreeSet<String> {
        self.shared.headers.lock().seen.clone()
    }

    /// The lowercase names of the headers of the requests that opened sessions (streamable
    /// HTTP POSTs without an `mcp-session-id`, SSE stream GETs, WebSocket upgrades): what a
    /// client sent before it had any session id. A pool must not forward its own internal
    /// headers, so `x-mcp-session-id` and `mcp-session-id` must not appear here.
    pub fn initialize_header_names(&self) -> BTreeSet<String> {
        self.shared.headers.lock().on_initialize.clone()
    }

    /// The headers of the most recent HTTP request; empty before the first one. Lets a test
    /// check that identity headers were forwarded upstream.
    pub fn last_request_headers(&self) -> HeaderMap {
        self.shared.headers.lock().last.clone()
    }
}
