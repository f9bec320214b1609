//! Everything a test binary logs, captured as text, for tests asserting that a secret never
//! reaches a log line.
//!
//! [`capture`] installs, once per test binary, a global `tracing` subscriber that writes every
//! event at every level as plain text (no ANSI colours) into a buffer, and, through
//! `tracing-log`, every `log` record of dependencies (hyper, reqwest, redis, tokio-postgres…);
//! [`Logs::text`] reads it back. The subscriber is global, not scoped to one test: events of
//! spawned tasks and of other threads (DNS lookups, blocking pools) are captured, and so are
//! those of the other tests of the binary, which only makes "no secret in any log line"
//! stricter.
//!
//! One target is captured below TRACE: `tungstenite::handshake`, which at TRACE logs the raw
//! WebSocket upgrade request, headers and all. That is third-party logging outside the pool's
//! control; the transports README tells deployments to keep it below TRACE.
//!
//! ```no_run
//! let logs = mcp_pool_conformance::logs::capture();
//! tracing::warn!("connect failed");
//! assert!(!logs.text().contains("s3cr3t"));
//! ```

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// The text logged in this test binary since [`capture`] was first called; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Installs the capturing subscriber on the first call; every call returns the same [`Logs`].
///
/// # Panics
/// When a global `tracing` subscriber or `log` logger was installed in this binary by other
/// means before the first call: then the logs would go elsewhere.
pub fn capture() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        let filter = Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target("tungstenite::handshake", LevelFilter::DEBUG);
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || Writer(sink.0.clone())),
            )
            .with(filter)
            .try_init()
            .expect("logs::capture() installs the only global subscriber of this test binary");
        logs
    })
    .clone()
}

/// The subscriber's writer: appends to the shared buffer.
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
