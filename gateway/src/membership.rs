//! Who a worker is in a group of workers: its id and how long its heartbeat lives. Below both
//! the relay between workers (`forward`) and the group's tasks (`workers`).

use std::time::Duration;

use mcp_pool::traits::StateId;

/// How often a worker renews its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long a heartbeat lives: three missed renewals and the worker is dead to the others.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// A worker's id in the group: what its heartbeats, and later its claims, carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerId(StateId);

impl WorkerId {
    /// `id` as given (`--worker-id`).
    ///
    /// # Errors
    /// When `id` is not 1 to 128 characters of `[a-zA-Z0-9_-]`, with that rule in the message.
    pub fn new(id: &str) -> Result<Self, String> {
        StateId::new(id)
            .map(Self)
            .map_err(|e| format!("--worker-id {id:?} is invalid: {e}"))
    }

    /// The default id: `{host}-{pid}-{random}`, the host name reduced to `[a-zA-Z0-9_-]` and
    /// 64 characters. Made when called — by the binary, after start-up, never at import — so
    /// that two processes (a fork included) never share one.
    pub fn generate() -> Self {
        let host = hostname();
        let host: String = host
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
                _ => '-',
            })
            .take(64)
            .collect();
        let host = if host.is_empty() {
            "worker".into()
        } else {
            host
        };
        let random = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{host}-{}-{}", std::process::id(), &random[..8]);
        Self(StateId::new(id).expect("built from [a-zA-Z0-9_-], at most 84 characters"))
    }

    /// The id as the backend stores it.
    pub fn state_id(&self) -> &StateId {
        &self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), or empty.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
