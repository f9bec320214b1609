//! [`DuplexTransport`]: an in-process [`Transport`] that serves a fresh [`ReferenceHandler`]
//! over a `tokio::io::duplex` pipe for each session.
//!
//! No sockets and no timers of its own: the transport for tests on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`), where real sockets cannot be used.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mcp_pool_traits::{
    ClientSession, ConnectRequest, FailureKind, Transport, TransportError, TransportKind,
};
use rmcp::ServiceExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::server::{Counters, ReferenceHandler, ServerStats, SessionGuard, WaitTimeout};

/// Bytes buffered in each direction of a session's pipe.
const PIPE_BUFFER_BYTES: usize = 64 * 1024;

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
    authorization: Arc<parking_lot::Mutex<Option<http::HeaderValue>>>,
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
        }
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
        let (client_side, server_side) = tokio::io::duplex(PIPE_BUFFER_BYTES);
        let handler =
            ReferenceHandler::with_counters(self.counters.clone(), Some(self.hang.clone()));
        let session = SessionGuard::open(self.counters.clone());
        // Cancelled when this connect gives up (error, timeout, or the caller dropping it), so
        // a session whose `initialize` is held by the hang switch ends with it.
        let abandoned = CancellationToken::new();
        let server_abandoned = abandoned.clone();
        tokio::spawn(async move {
            // Held until the session ends, whichever way: the client closing or dropping its
            // end ends `serve` or `waiting`.
            let _session = session;
            let serve = async {
                if let Ok(server) = handler.serve(server_side).await {
                    let _ = server.waiting().await;
                }
            };
            tokio::select! {
                () = serve => {}
                () = server_abandoned.cancelled() => {}
            }
        });
        let abandon_on_failure = abandoned.drop_guard();
        let timeout = request.timeout();
        let initialized =
            tokio::time::timeout(timeout, request.client().clone().serve(client_side)).await;
        match initialized {
            Ok(Ok(client)) => {
                abandon_on_failure.disarm();
                Ok(client)
            }
            Ok(Err(error)) => {
                let kind = mcp_pool_transports::failure_kind(&error);
                Err(TransportError::categorized(url, kind, error))
            }
            Err(_elapsed) => Err(TransportError::Timeout {
                url: url.to_string(),
                timeout,
            }),
        }
    }
}
