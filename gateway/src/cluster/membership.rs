//! Who a worker is in a group of workers: its id ([`WorkerId`]), and its heartbeat, renewed
//! every [`HEARTBEAT_INTERVAL`] and living [`HEARTBEAT_TTL`]: a worker whose heartbeat ran out
//! is dead to the others.

use std::{sync::Arc, time::Duration};

use mcp_pool::traits::{StateBackend, StateId};
use tokio_util::sync::CancellationToken;

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

/// Renews `worker`'s heartbeat every [`HEARTBEAT_INTERVAL`] until `shutdown`. A failed
/// renewal is logged once per outage (the worker keeps serving; the others will see it as dead
/// when the outage outlasts [`HEARTBEAT_TTL`]).
///
/// `lost` is notified when the backend may have lost this worker's claims: its heartbeat
/// reached the backend again after failing, or had vanished from it between two renewals (the
/// backend restarted without its data, or this worker was paused past the TTL). The claims are
/// then taken again at once (see [`crate::cluster`]).
pub fn spawn_heartbeat(
    backend: Arc<dyn StateBackend>,
    worker: WorkerId,
    lost: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut first = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let beat = tokio::time::timeout(HEARTBEAT_INTERVAL, async {
                let alive = backend.is_alive(worker.state_id()).await?;
                backend.heartbeat(worker.state_id(), HEARTBEAT_TTL).await?;
                Ok::<_, mcp_pool::traits::BackendError>(alive)
            })
            .await;
            match beat {
                Ok(Ok(_)) if failing => {
                    failing = false;
                    tracing::info!("worker {worker}: heartbeats reach the state backend again");
                    lost.notify_one();
                }
                Ok(Ok(false)) if !first => {
                    tracing::warn!(
                        "worker {worker}: the state backend had lost this worker's heartbeat (restarted, or this worker was paused): claiming its sessions again"
                    );
                    lost.notify_one();
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) if !failing => {
                    failing = true;
                    tracing::warn!(%worker, %error, "heartbeat failed; serving on");
                }
                Err(_) if !failing => {
                    failing = true;
                    tracing::warn!(%worker, "heartbeat timed out; serving on");
                }
                _ => {}
            }
            first = false;
        }
    })
}
