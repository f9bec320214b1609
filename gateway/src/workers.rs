//! A worker joining the workers that share its state backend ([`join`]): what ties the group
//! ([`crate::cluster`]) to this worker's downstream sessions and registry.
//!
//! Every worker has an id ([`WorkerId`]: `--worker-id`, else host name, process id and a
//! random suffix, fixed when the worker starts) and, on a shared backend (`CACHE_TYPE=redis` or
//! `database`), announces itself with a heartbeat every [`HEARTBEAT_INTERVAL`] that lives
//! [`HEARTBEAT_TTL`]: a worker whose heartbeat ran out is dead to the others.
//!
//! # The shared registry
//! A server created, replaced or deleted through any worker's API reaches every other worker
//! through [`watch_servers`](mcp_pool::StateBackend::watch_servers), applied by
//! [`Registry::apply_change`](crate::Registry::apply_change); saved pool configs travel the same way inside the pool
//! (`mcp_pool`'s config watcher). Notifications can be lost — a subscription that dies
//! half-open stays silent, a worker cut off from the backend misses what happened meanwhile —
//! so the watcher also re-lists the records every [`RELIST_INTERVAL`] and whenever it
//! subscribes again, and applies every version it has not applied: a change reaches every
//! worker within one re-list period whatever happens to the subscription, and at once when it
//! works. A backend that is down stops none of the local work: the watcher retries with a
//! backoff and the pools keep serving.

use std::time::Duration;

use futures::StreamExt;
use mcp_pool::traits::StateBackend;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

pub use crate::cluster::{HEARTBEAT_INTERVAL, HEARTBEAT_TTL, WorkerId, spawn_heartbeat};
use crate::{
    AppState,
    cluster::{self, Group, LocalHandler},
    downstream::{self, DownstreamRoutes},
    registry::Applied,
};

/// How often the registry watcher re-lists the backend's records (see the module docs).
pub const RELIST_INTERVAL: Duration = Duration::from_secs(5);

/// First and largest wait before the watcher subscribes again after the backend failed.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Joins `state` to the workers sharing its pool's (shared) backend as `worker`, signing
/// relayed requests with `key` (the same on every worker: `JWT_SECRET_KEY`): sets
/// [`AppState::group`] and starts, until `shutdown`, the heartbeat, the registry watcher,
/// this worker's channel ([`cluster::spawn_channel`]) and the claims' refreshes. What the
/// binary does on `CACHE_TYPE=redis|database`; the router must be built from `state` after.
///
/// # Errors
/// When `worker` is too long to name its channel.
pub fn join(
    state: &mut AppState,
    worker: WorkerId,
    key: &[u8],
    shutdown: CancellationToken,
) -> Result<Membership, String> {
    let backend = state.pool.backend().clone();
    let group = Group::new(worker.clone(), backend.clone(), key)?;
    state.group = Some(group.clone());
    let lost = Arc::new(tokio::sync::Notify::new());
    let heartbeat = spawn_heartbeat(backend, worker, lost.clone(), shutdown.clone());
    spawn_registry_watcher(state.clone(), RELIST_INTERVAL, shutdown.clone());
    let local: LocalHandler = {
        let state = state.clone();
        Arc::new(move |server, request| {
            Box::pin(downstream::handle(
                axum::extract::State(state.clone()),
                axum::extract::Path(server),
                request,
            ))
        })
    };
    cluster::spawn_channel(group.clone(), local, shutdown.clone());
    let downstream = state.downstream.clone();
    tokio::spawn(refresh_claims(group.clone(), downstream, lost, shutdown));
    Ok(Membership { group, heartbeat })
}

/// A worker's place in the group ([`join`]).
#[derive(Debug)]
pub struct Membership {
    /// The group, as [`AppState::group`] holds it.
    pub group: Arc<Group>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Leaves the group once `join`'s `shutdown` token is cancelled: waits for the last
    /// heartbeat to be written, then ends it ([`Group::leave`]), so that the other
    /// workers take this worker's sessions over at once.
    pub async fn leave(self) {
        let _ = self.heartbeat.await;
        self.group.leave().await;
    }
}

/// Refreshes the claims of this worker's downstream sessions every
/// [`cluster::CLAIM_REFRESH`], and at once when the backend may have `lost` them, until
/// `shutdown`. Sessions another worker took over meanwhile end here.
async fn refresh_claims(
    group: Arc<Group>,
    downstream: Arc<DownstreamRoutes>,
    lost: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(cluster::CLAIM_REFRESH);
    ticks.tick().await;
    loop {
        let urgent = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => false,
            () = lost.notified() => true,
        };
        let held = downstream.held_sessions().await;
        let Some(taken) = group.refresh(&held).await else {
            continue;
        };
        for session in &taken {
            downstream.close_session(session).await;
        }
        if urgent {
            tracing::info!(
                "claimed {} sessions again; {} had been taken over by another worker and ended here",
                held.len() - taken.len(),
                taken.len()
            );
        }
    }
}

/// Applies the records other workers change to this worker's registry and pool (see the module
/// docs), until `shutdown`: subscribe, re-list, follow; re-list every `relist`; subscribe
/// again after an error or a re-list that found a change the subscription missed.
pub fn spawn_registry_watcher(
    state: AppState,
    relist: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = RESUBSCRIBE.0;
        loop {
            if watch_once(&state, relist, &shutdown).await.is_ok() {
                wait = RESUBSCRIBE.0;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RESUBSCRIBE.1);
        }
    })
}

/// One subscription (see [`spawn_registry_watcher`]). `Err` when the backend could not be
/// reached.
async fn watch_once(
    state: &AppState,
    relist: Duration,
    shutdown: &CancellationToken,
) -> Result<(), ()> {
    let backend = state.pool.backend().clone();
    let mut changes = backend.watch_servers().await.map_err(|error| {
        tracing::debug!(%error, "cannot watch the server registry yet");
    })?;
    // Subscribed first, then listed: nothing stored between the two is missed.
    apply_listed(state, &*backend).await?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + relist, relist);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            change = changes.next() => match change {
                Some(change) => {
                    apply(state, change).await;
                }
                None => return Ok(()),
            },
            _ = ticks.tick() => {
                if apply_listed(state, &*backend).await? > 0 {
                    tracing::info!(
                        "the server registry subscription missed a change; subscribing again"
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// Lists the records and applies every version not applied yet; how many that was.
async fn apply_listed(state: &AppState, backend: &dyn StateBackend) -> Result<usize, ()> {
    let listed = backend.list_servers().await.map_err(|error| {
        tracing::debug!(%error, "cannot list the server registry");
    })?;
    let mut applied = 0;
    for change in listed {
        if apply(state, change).await {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Applies one change; whether it was new. A change this worker cannot apply (a credential
/// variable it lacks, a config its pool rejects) is logged and retried at the next re-list.
async fn apply(state: &AppState, change: mcp_pool::traits::ServerChange) -> bool {
    let server = change.server.clone();
    match state.registry.apply_change(change).await {
        Ok(Applied::Nothing) => false,
        Ok(Applied::Served) => {
            tracing::info!("server {server} changed by another worker: applied");
            true
        }
        Ok(Applied::Removed) => {
            // Its downstream sessions end with its pool, as on the worker that removed it.
            state.downstream.forget(&server);
            tracing::info!("server {server} deleted or disabled by another worker: removed");
            true
        }
        Err(error) => {
            tracing::warn!(%server, %error, "cannot apply another worker's change of the server");
            false
        }
    }
}
