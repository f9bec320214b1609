//! The counters a reference server keeps, and their snapshot.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A snapshot of a reference server's counters, taken by `stats()`.
///
/// Every counter except `sessions_alive` only grows, and all of them carry over across
/// [`ReferenceServer::restart`](crate::ReferenceServer::restart). The counters are read one by
/// one, so a snapshot taken while requests are in flight may mix instants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerStats {
    /// HTTP requests received over every transport (streamable HTTP POST, GET and DELETE on
    /// `/mcp`; SSE stream GETs and message POSTs; WebSocket upgrades, but not the frames that
    /// follow), counted on arrival, before any validation, including requests held by
    /// [`set_hang`](crate::ReferenceServer::set_hang). Always 0 for
    /// [`DuplexTransport`](crate::DuplexTransport).
    pub http_requests: u64,
    /// MCP sessions opened: over streamable HTTP, `initialize` requests that created a
    /// session; over SSE, event streams opened; over WebSocket, connections upgraded; over
    /// [`DuplexTransport`](crate::DuplexTransport), connects that started a server side.
    pub sessions_opened: u64,
    /// MCP sessions currently alive on the server. A session ends when the client closes it
    /// (HTTP `DELETE`, the SSE stream or the WebSocket connection closing, the duplex stream
    /// closing), when the server expires it, or when the server stops.
    pub sessions_alive: u64,
    /// `initialize` requests that reached a session's handler.
    pub initializes: u64,
    /// `server/discover` requests answered (protocol 2026-07-28).
    pub discovers: u64,
    /// `ping` requests that reached a handler.
    pub pings: u64,
    /// `tools/call` requests the handler received, whatever the tool and outcome.
    pub tool_calls: u64,
    /// `sleep` calls the client cancelled (`notifications/cancelled`) before they ended: the
    /// tool stops at once and answers nothing more.
    pub calls_cancelled: u64,
}

/// A wait on the counters (`wait_until`, `wait_sessions_alive`) gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("the awaited server stats were not reached within {timeout:?}; last stats: {last:?}")]
pub struct WaitTimeout {
    /// The counters when the wait gave up.
    pub last: ServerStats,
    /// How long the wait lasted.
    pub timeout: Duration,
}

/// The live counters behind [`ServerStats`], shared by a server and all its session handlers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    http_requests: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_alive: AtomicU64,
    initializes: AtomicU64,
    discovers: AtomicU64,
    pings: AtomicU64,
    tool_calls: AtomicU64,
    calls_cancelled: AtomicU64,
    /// Notified after every change of a counter, so that waiters need not poll.
    changed: watch::Sender<()>,
}

impl Counters {
    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// Notified after every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub(crate) fn http_request(&self) {
        self.bump(&self.http_requests);
    }

    pub(crate) fn initialize(&self) {
        self.bump(&self.initializes);
    }

    pub(crate) fn discover(&self) {
        self.bump(&self.discovers);
    }

    pub(crate) fn ping(&self) {
        self.bump(&self.pings);
    }

    pub(crate) fn tool_call(&self) {
        self.bump(&self.tool_calls);
    }

    pub(crate) fn call_cancelled(&self) {
        self.bump(&self.calls_cancelled);
    }

    /// A session was created: counts it as opened and alive.
    pub(crate) fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.bump(&self.sessions_alive);
    }

    /// `count` sessions ended. Callers guarantee each session ends once.
    pub(crate) fn sessions_closed(&self, count: u64) {
        if count > 0 {
            // `fetch_update` with a closure returning `Some` cannot fail.
            let _ =
                self.sessions_alive
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |alive| {
                        Some(alive.saturating_sub(count))
                    });
            self.changed.send_replace(());
        }
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            http_requests: self.http_requests.load(Ordering::Relaxed),
            sessions_opened: self.sessions_opened.load(Ordering::Relaxed),
            sessions_alive: self.sessions_alive.load(Ordering::Relaxed),
            initializes: self.initializes.load(Ordering::Relaxed),
            discovers: self.discovers.load(Ordering::Relaxed),
            pings: self.pings.load(Ordering::Relaxed),
            tool_calls: self.tool_calls.load(Ordering::Relaxed),
            calls_cancelled: self.calls_cancelled.load(Ordering::Relaxed),
        }
    }

    /// Waits until `condition` holds for a snapshot, re-checking after each change of a
    /// counter rather than polling; returns that snapshot.
    pub(crate) async fn wait_until(
        &self,
        condition: impl FnMut(&ServerStats) -> bool,
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        wait_for_stats(&self.changed, || self.snapshot(), condition, timeout).await
    }
}

/// Waits until `condition` holds for `snapshot()`, re-checking after each notification of
/// `changed` rather than polling; returns that snapshot, or [`WaitTimeout`] with the last one.
pub(crate) async fn wait_for_stats(
    changed: &watch::Sender<()>,
    snapshot: impl Fn() -> ServerStats,
    mut condition: impl FnMut(&ServerStats) -> bool,
    timeout: Duration,
) -> Result<ServerStats, WaitTimeout> {
    let mut changes = changed.subscribe();
    let wait = async {
        loop {
            // Marked seen before the snapshot, so a change made while it is taken wakes the
            // next `changed()`.
            changes.mark_unchanged();
            let stats = snapshot();
            if condition(&stats) {
                return stats;
            }
            // Fails only when the sender is dropped, and the caller holds it.
            let _ = changes.changed().await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_elapsed| WaitTimeout {
            last: snapshot(),
            timeout,
        })
}

/// Counts one session as ended when dropped, however the task holding it ends (normal end,
/// panic, abort, runtime shutdown).
#[derive(Debug)]
pub(crate) struct SessionGuard {
    counters: Arc<Counters>,
}

impl SessionGuard {
    /// Counts a session as opened; it is counted as ended when the guard drops.
    pub(crate) fn open(counters: Arc<Counters>) -> Self {
        counters.session_opened();
        Self { counters }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.counters.sessions_closed(1);
    }
}
