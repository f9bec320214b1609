//! [`DuplexTransport`]: an in-process [`Transport`] that serves a fresh [`ReferenceHandler`]
//! over a `tokio::io::duplex` pipe for each session.
//!
//! No sockets and no timers of its own beyond the fault switches: the transport for tests on
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`), where real sockets cannot be
//! used.
//!
//! Fault injection, for the pool's property and cancellation tests:
//!
//! | switch | effect |
//! |---|---|
//! | [`set_fail_connects`](DuplexTransport::set_fail_connects) | connects fail at once (connection refused) |
//! | [`set_connect_delay`](DuplexTransport::set_connect_delay) | connects wait this long before the session opens (a slow network) |
//! | [`set_connect_hang`](DuplexTransport::set_connect_hang) | connects wait until the switch is off, bounded by the connect timeout (a black-holed SYN) |
//! | [`set_hang`](DuplexTransport::set_hang) | every session leaves `initialize`, `ping` and `tools/call` unanswered |
//! | [`hang_session`](DuplexTransport::hang_session) | the same, for one session |
//! | [`kill_session`](DuplexTransport::kill_session) | one session's server side ends (upstream death): its pipe closes |
//!
//! Each upstream session has a number, sent as the `instructions` of its `initialize` result:
//! [`session_of`](DuplexTransport::session_of) reads it from a client peer (a pool lease), and
//! [`upstream_sessions`](DuplexTransport::upstream_sessions) lists the sessions alive with their
//! endpoint URL.

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mcp_pool_traits::{
    ClientSession, ConnectRequest, FailureKind, Transport, TransportError, TransportKind,
    rmcp::{Peer, RoleClient},
};
use parking_lot::Mutex;
use rmcp::ServiceExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Counters, ReferenceHandler, ServerStats, SessionGuard, WaitTimeout};

/// Bytes buffered in each direction of a session's pipe.
const PIPE_BUFFER_BYTES: usize = 64 * 1024;

/// What [`DuplexTransport::session_of`] looks for in the `instructions` of a session.
const TAG_PREFIX: &str = "duplex-session-";

/// One upstream session alive on a [`DuplexTransport`], as
/// [`upstream_sessions`](DuplexTransport::upstream_sessions) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamSession {
    /// Its number, unique per transport (shared by clones).
    pub id: u64,
    /// The endpoint URL it was opened for.
    pub url: String,
    /// Whether its `initialize` completed and the connect returned it.
    pub initialized: bool,
}

#[derive(Debug)]
struct Entry {
    url: String,
    initialized: bool,
    kill: CancellationToken,
    hang: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    sessions: BTreeMap<u64, Entry>,
}

/// The server's end of a session's pipe: reading end-of-stream (the client closed or dropped
/// its end) cancels `closed`, so the session ends even while a request is held by a hang
/// switch (as an HTTP server ends a session on `DELETE`).
struct ServerEnd {
    pipe: tokio::io::DuplexStream,
    closed: CancellationToken,
}

impl tokio::io::AsyncRead for ServerEnd {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.pipe).poll_read(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.closed.cancel();
        }
        poll
    }
}

/// `AsyncWrite` for a pipe end: everything goes to its `pipe`.
macro_rules! write_to_pipe {
    ($end:ty) => {
        impl tokio::io::AsyncWrite for $end {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<io::Result<usize>> {
                std::pin::Pin::new(&mut self.pipe).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::pin::Pin::new(&mut self.pipe).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::pin::Pin::new(&mut self.pipe).poll_shutdown(cx)
            }
        }
    };
}

write_to_pipe!(ServerEnd);

/// The client's end of a session's pipe. Dropped — the client session's loop ended: it was
/// closed, cancelled or dropped — it takes the session out of the registry at once and cuts the
/// pipe, as an HTTP server has ended a session by the time it answers `DELETE`: what
/// [`DuplexTransport::upstream_sessions`] lists never lags behind a pool's `close()`.
struct ClientEnd {
    pipe: tokio::io::DuplexStream,
    _unregister: Unregister,
    kill: CancellationToken,
}

impl Drop for ClientEnd {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

impl tokio::io::AsyncRead for ClientEnd {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

write_to_pipe!(ClientEnd);

/// Removes a session from the registry when its server task ends, however it ends.
struct Unregister {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.registry.lock().sessions.remove(&self.id);
    }
}

/// An in-process [`Transport`]: each [`connect`](Transport::connect) starts a fresh
/// [`ReferenceHandler`] on a task, joined to the client by a `tokio::io::duplex` pipe, and
/// performs `initialize` over it. The endpoint URL is only used in error messages.
///
/// It counts like [`ReferenceServer`](crate::ReferenceServer) ([`stats`](Self::stats)); there
/// are no HTTP requests, so `http_requests` stays 0. A session ends, and `sessions_alive`
/// drops, when the client session is closed or dropped.
///
/// Cloning gives another handle on the same counters and switches.
#[derive(Debug, Clone)]
pub struct DuplexTransport {
    kind: TransportKind,
    counters: Arc<Counters>,
    fail_connects: Arc<AtomicBool>,
    hang: Arc<watch::Sender<bool>>,
    /// The `authorization` value connects must carry, when one is required.
    authorization: Arc<Mutex<Option<http::HeaderValue>>>,
    connect_delay: Arc<Mutex<Duration>>,
    connect_hang: Arc<watch::Sender<bool>>,
    registry: Arc<Mutex<Registry>>,
}

impl DuplexTransport {
    /// A transport that reports `kind` from [`Transport::kind`], so tests can register it in
    /// place of any real transport.
    pub fn new(kind: TransportKind) -> Self {
        Self {
            kind,
            counters: Arc::default(),
            fail_connects: Arc::default(),
            hang: Arc::new(watch::Sender::new(false)),
            authorization: Arc::default(),
            connect_delay: Arc::default(),
            connect_hang: Arc::new(watch::Sender::new(false)),
            registry: Arc::default(),
        }
    }

    /// Every later [`connect`](Transport::connect) waits `delay` (on tokio's clock) before its
    /// session opens; `Duration::ZERO` turns the delay off. The wait counts against the
    /// connect timeout: a connect whose delay outlasts it ends with
    /// [`TransportError::Timeout`].
    pub fn set_connect_delay(&self, delay: Duration) {
        *self.connect_delay.lock() = delay;
    }

    /// While `true`, a [`connect`](Transport::connect) waits, before its session opens, until
    /// the switch is turned off or its timeout ends it with [`TransportError::Timeout`].
    pub fn set_connect_hang(&self, hang: bool) {
        self.connect_hang.send_replace(hang);
    }

    /// Holds (`true`) or lets go (`false`) `initialize`, `ping` and `tools/call` of upstream
    /// session `id` alone, as [`set_hang`](Self::set_hang) does for all. Returns whether the
    /// session is alive.
    pub fn hang_session(&self, id: u64, hang: bool) -> bool {
        match self.registry.lock().sessions.get(&id) {
            Some(entry) => {
                entry.hang.send_replace(hang);
                true
            }
            None => false,
        }
    }

    /// Ends upstream session `id` from the server side (an upstream crash or restart): its
    /// pipe closes, the client sees the transport end. Returns whether the session was alive.
    pub fn kill_session(&self, id: u64) -> bool {
        match self.registry.lock().sessions.get(&id) {
            Some(entry) => {
                entry.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// How many sessions this transport started (the next session's number): sessions
    /// numbered from here on were opened after this call.
    pub fn sessions_started(&self) -> u64 {
        self.registry.lock().next
    }

    /// The upstream sessions alive now, by number. A killed session leaves the list once its
    /// server task has ended (the next time the runtime runs it); a session its client closed
    /// or dropped leaves it at once.
    pub fn upstream_sessions(&self) -> Vec<UpstreamSession> {
        self.registry
            .lock()
            .sessions
            .iter()
            .map(|(&id, e)| UpstreamSession {
                id,
                url: e.url.clone(),
                initialized: e.initialized,
            })
            .collect()
    }

    /// The number of the upstream session behind `peer`, a client of this transport (for
    /// example a pool lease), read from its `initialize` result; `None` for another peer.
    pub fn session_of(peer: &Peer<RoleClient>) -> Option<u64> {
        peer.peer_info()?
            .instructions
            .as_deref()?
            .strip_prefix(TAG_PREFIX)?
            .parse()
            .ok()
    }

    /// While `true`, [`connect`](Transport::connect) fails at once with
    /// [`TransportError::Connect`] of kind [`FailureKind::ConnectionRefused`] (the upstream
    /// refuses connections), without starting a session.
    pub fn set_fail_connects(&self, fail: bool) {
        self.fail_connects.store(fail, Ordering::Relaxed);
    }

    /// While `Some(value)`, a connect whose `authorization` header is not exactly `value` (or
    /// missing) fails at once with [`TransportError::Connect`] of kind
    /// [`FailureKind::Unauthorized`], as an HTTP upstream answering 401 would, without starting
    /// a session: one caller's bad token, for tests of what must not open a circuit breaker.
    /// `None` accepts every connect.
    pub fn set_required_authorization(&self, value: Option<http::HeaderValue>) {
        *self.authorization.lock() = value;
    }

    /// While `true`, every session's handler leaves `initialize`, `ping` and `tools/call`
    /// unanswered until the switch is turned off; they are then answered normally. A connect
    /// made meanwhile ends with [`TransportError::Timeout`] after `request.timeout()`, and its
    /// session ends with it.
    pub fn set_hang(&self, hang: bool) {
        self.hang.send_replace(hang);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// MCP sessions opened; see [`ServerStats::sessions_opened`].
    pub fn sessions_opened(&self) -> u64 {
        self.stats().sessions_opened
    }

    /// MCP sessions currently alive; see [`ServerStats::sessions_alive`].
    pub fn sessions_alive(&self) -> u64 {
        self.stats().sessions_alive
    }

    /// `tools/call` requests received; see [`ServerStats::tool_calls`].
    pub fn tool_calls(&self) -> u64 {
        self.stats().tool_calls
    }

    /// Waits until `condition` holds for the counters, re-checking after each change rather
    /// than polling, and returns the snapshot it held for.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last counters, when `condition` did not hold within `timeout`.
    pub async fn wait_until(
        &self,
        condition: impl FnMut(&ServerStats) -> bool,
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        self.counters.wait_until(condition, timeout).await
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
}

#[mcp_pool_traits::async_trait]
impl Transport for DuplexTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        let url = &request.endpoint().url;
        if self.fail_connects.load(Ordering::Relaxed) {
            return Err(TransportError::categorized(
                url,
                FailureKind::ConnectionRefused,
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connects are switched to fail (DuplexTransport::set_fail_connects)",
                ),
            ));
        }
        if let Some(required) = self.authorization.lock().as_ref()
            && request.headers().get(http::header::AUTHORIZATION) != Some(required)
        {
            return Err(TransportError::categorized(
                url,
                FailureKind::Unauthorized,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "HTTP 401: the authorization is not the one required \
                     (DuplexTransport::set_required_authorization)",
                ),
            ));
        }
        let timeout = request.timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || TransportError::timeout(url, timeout);
        // Numbered when the connect starts, so that numbers follow the order of the pool's
        // creations, not of their (possibly slow) completions.
        let id = {
            let mut registry = self.registry.lock();
            let id = registry.next;
            registry.next += 1;
            id
        };
        let delay = *self.connect_delay.lock();
        if !delay.is_zero() {
            if delay >= timeout {
                tokio::time::sleep_until(deadline).await;
                return Err(timed_out());
            }
            tokio::time::sleep(delay).await;
        }
        let mut connect_hang = self.connect_hang.subscribe();
        if tokio::time::timeout_at(deadline, connect_hang.wait_for(|hanging| !*hanging))
            .await
            .is_err()
        {
            return Err(timed_out());
        }
        // Client and server talk through a relay task, so that a kill cuts the pipe at once,
        // whatever the server's handler is doing (an rmcp server finishes the requests in
        // flight before it lets its transport go).
        let (client_side, relay_client) = tokio::io::duplex(PIPE_BUFFER_BYTES);
        let (relay_server, server_side) = tokio::io::duplex(PIPE_BUFFER_BYTES);
        let kill = CancellationToken::new();
        let relay_kill = kill.clone();
        tokio::spawn(async move {
            let (mut from_client, mut to_client) = tokio::io::split(relay_client);
            let (mut from_server, mut to_server) = tokio::io::split(relay_server);
            // The kill first: once it fired, not another byte crosses (polling a copy moves
            // bytes, and the server answers its requests in flight as it shuts down: "cancelled
            // by the client" reaching the client would make a killed session look alive).
            tokio::select! {
                biased;
                () = relay_kill.cancelled() => {}
                _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
            }
        });
        let session_hang = Arc::new(watch::Sender::new(false));
        {
            let mut registry = self.registry.lock();
            registry.sessions.insert(
                id,
                Entry {
                    url: url.to_string(),
                    initialized: false,
                    kill: kill.clone(),
                    hang: session_hang.clone(),
                },
            );
        }
        let unregister = Unregister {
            registry: self.registry.clone(),
            id,
        };
        let client_side = ClientEnd {
            pipe: client_side,
            _unregister: Unregister {
                registry: self.registry.clone(),
                id,
            },
            kill: kill.clone(),
        };
        let handler =
            ReferenceHandler::with_counters(self.counters.clone(), Some(self.hang.clone()))
                .with_session(session_hang, format!("{TAG_PREFIX}{id}"));
        let session = SessionGuard::open(self.counters.clone());
        // Cancelled when this connect gives up (error, timeout, or the caller dropping it), so
        // a session whose `initialize` is held by the hang switch ends with it.
        let abandoned = CancellationToken::new();
        let server_abandoned = abandoned.clone();
        let client_closed = CancellationToken::new();
        let server_side = ServerEnd {
            pipe: server_side,
            closed: client_closed.clone(),
        };
        tokio::spawn(async move {
            // Held until the session ends, whichever way: the client closing or dropping its
            // end ends `serve` or `waiting`; a kill ends it from this side.
            let _unregister = unregister;
            let _session = session;
            let serve = async {
                if let Ok(server) = handler.serve(server_side).await {
                    let _ = server.waiting().await;
                }
            };
            tokio::select! {
                () = serve => {}
                () = server_abandoned.cancelled() => {}
                () = kill.cancelled() => {}
                () = client_closed.cancelled() => {}
            }
        });
        let abandon_on_failure = abandoned.drop_guard();
        let initialized = tokio::time::timeout_at(deadline, request.start(client_side)).await;
        match initialized {
            Ok(Ok(client)) => {
                abandon_on_failure.disarm();
                if let Some(entry) = self.registry.lock().sessions.get_mut(&id) {
                    entry.initialized = true;
                }
                Ok(client)
            }
            Ok(Err(error)) => {
                let kind = mcp_pool_transports::failure_kind(&error);
                Err(TransportError::categorized(url, kind, error))
            }
            Err(_elapsed) => Err(timed_out()),
        }
    }
}
