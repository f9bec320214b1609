//! What several gateway workers share through the [`StateBackend`] (DESIGN §8): saved pool
//! configs, applied by every worker without a restart.
//!
//! The backend is never on the path of a local hit, and a backend that is down affects only
//! these shared features: local pooling keeps working, and the watcher resubscribes by itself
//! when the backend comes back.
//!
//! # Saved configs and their versions
//! The backend gives every saved config and every deletion a version, increasing per server
//! (see [`ConfigChange`]). The pool remembers per server the last version it applied, and
//! applies a saved change only when its version is above that: a re-list after a resubscribe,
//! a periodic re-list, a duplicate or late notification, or a stale read is then a no-op, and
//! never reverts a newer config. A config saved through this pool
//! ([`Pool::save_pool_config`]) records the version the backend gave it, so its own
//! notification is a no-op too; if a newer save by another pool was applied in between, the
//! newer one stays in force.
//!
//! The saved config is the shared truth; a purely local [`Pool::set_pool_config`] (or
//! [`Pool::add_server`] replacing a server) is a local override: it holds until a saved change
//! this pool has not applied yet arrives (a newer save or a deletion by any pool, or at start
//! the saved state this pool has not seen), and re-lists of versions already applied never
//! undo it. A deletion reverts the server to the configuration it was added with.
//!
//! # A silent subscription
//! A connection that dies half-open (no FIN, no RST) leaves a Redis or PostgreSQL
//! subscription silent without ending it, so a resubscribe alone would never happen. The
//! watcher therefore re-lists every `cleanup_interval` (the maintenance period) and applies
//! any version it has not applied: a saved change reaches every pool within one
//! `cleanup_interval` whatever happens to its subscription. The re-list is cheap (one read of
//! the configs; applying a known version is a map lookup). When a re-list finds a change the
//! subscription did not deliver, or fails, the watcher drops the subscription and subscribes
//! again, so a dead connection is replaced too.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use futures::StreamExt;
use mcp_pool_traits::{ConfigChange, ServerId, StateBackend};
use tokio_util::sync::CancellationToken;

use crate::{Pool, PoolError, pool::PoolInner};

/// First and largest wait before resubscribing after the backend failed.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Per server, the version of the last saved change a pool applied (see the module docs).
pub(crate) type SavedVersions = parking_lot::Mutex<HashMap<ServerId, u64>>;

/// Applies saved configs to `pool`: every config stored now, then every change, for as long
/// as the pool lives.
pub(crate) fn spawn_config_watcher(pool: &Pool) {
    let weak = Arc::downgrade(&pool.inner);
    let backend = pool.inner.backend.clone();
    let shutdown = pool.inner.shutdown.clone();
    let relist = pool.inner.shared.cleanup_interval;
    pool.inner.shared.runtime.spawn(async move {
        let mut wait = RESUBSCRIBE.0;
        loop {
            if watch_once(&weak, &*backend, &shutdown, relist)
                .await
                .is_ok()
            {
                wait = RESUBSCRIBE.0;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RESUBSCRIBE.1);
        }
    });
}

/// One subscription: subscribe first, then apply what is stored (so nothing saved between the
/// two is missed), then follow the changes, re-listing every `relist`, until the stream ends or
/// a re-list shows the subscription missed a change. `Err` when the backend could not be
/// reached.
async fn watch_once(
    pool: &Weak<PoolInner>,
    backend: &dyn StateBackend,
    shutdown: &CancellationToken,
    relist: Duration,
) -> Result<(), ()> {
    let mut changes = match backend.watch_configs().await {
        Ok(changes) => changes,
        Err(error) => {
            tracing::debug!(%error, "cannot watch saved pool configs yet");
            return Err(());
        }
    };
    apply_listed(pool, backend).await?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + relist, relist);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            change = changes.next() => match change {
                Some(change) => {
                    let Some(pool) = pool.upgrade().map(|inner| Pool { inner }) else {
                        return Ok(());
                    };
                    let server = change.server.clone();
                    log_invalid(&server, apply_saved(&pool, change));
                }
                None => return Ok(()),
            },
            _ = ticks.tick() => {
                if apply_listed(pool, backend).await? > 0 {
                    tracing::info!(
                        "the saved pool config subscription missed a change; subscribing again"
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// Lists what is saved and applies every version not applied yet; how many that was. `Err`
/// when the backend could not be reached.
async fn apply_listed(pool: &Weak<PoolInner>, backend: &dyn StateBackend) -> Result<usize, ()> {
    let saved = match backend.list_configs().await {
        Ok(saved) => saved,
        Err(error) => {
            tracing::debug!(%error, "cannot list saved pool configs");
            return Err(());
        }
    };
    let Some(pool) = pool.upgrade().map(|inner| Pool { inner }) else {
        return Ok(0);
    };
    let mut applied = 0;
    for change in saved {
        let server = change.server.clone();
        if log_invalid(&server, apply_saved(&pool, change)) {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Whether a change was applied; an invalid saved config is logged and ignored (it never
/// replaces a working one).
fn log_invalid(server: &ServerId, outcome: Result<bool, PoolError>) -> bool {
    outcome.unwrap_or_else(|error| {
        tracing::warn!(%server, %error, "ignoring an invalid saved pool config");
        true
    })
}

/// Applies one saved config (or its deletion: the server's configuration as added) if the
/// pool knows the server and has not applied this version or a newer one. `Ok(true)` when the
/// version was new; the version is recorded even when its config is invalid (`Err`), so that
/// it is reported once, not at every re-list.
pub(crate) fn apply_saved(pool: &Pool, change: ConfigChange) -> Result<bool, PoolError> {
    // Held while applying: a local save and the watcher apply one server's versions in order.
    let mut applied = pool.inner.saved_versions.lock();
    if applied
        .get(&change.server)
        .is_some_and(|&version| change.version <= version)
    {
        return Ok(false);
    }
    // A server this pool does not know (yet): nothing recorded, so that a re-list applies the
    // saved config once the server is added.
    let Some(current) = pool.inner.shared.server(&change.server) else {
        return Ok(false);
    };
    applied.insert(change.server.clone(), change.version);
    let config = change.config.unwrap_or_else(|| current.base.clone());
    if config != current.config {
        pool.set_pool_config(&change.server, config)?;
    }
    Ok(true)
}

/// The user limit across workers: one slot of the backend's counter `user-<hash>` per session
/// of that user in any worker (DESIGN §8 bounded counters). Used when the backend is shared
/// (not `memory`): the local count already covers a single process.
#[derive(Debug)]
pub(crate) struct UserSlots {
    backend: std::sync::Arc<dyn StateBackend>,
    worker: String,
    next: std::sync::atomic::AtomicU64,
    limit: u32,
    /// Slots expire after this unless renewed by the maintenance task, so a crashed worker's
    /// slots come back.
    pub(crate) ttl: Duration,
}

/// How long a backend operation of the user limit may take before the pool goes on without
/// it (failing open: local pooling must not stop when the backend does).
const SLOT_TIMEOUT: Duration = Duration::from_secs(2);

impl UserSlots {
    pub(crate) fn new(
        backend: std::sync::Arc<dyn StateBackend>,
        limit: u32,
        cleanup_interval: Duration,
    ) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            backend,
            worker: format!("w{random:016x}"),
            next: std::sync::atomic::AtomicU64::new(1),
            limit,
            ttl: (cleanup_interval * 3).max(Duration::from_secs(30)),
        }
    }

    fn counter(subject: &mcp_pool_traits::Digest256) -> Option<mcp_pool_traits::StateId> {
        mcp_pool_traits::StateId::new(format!("user-{subject}")).ok()
    }

    /// Takes a slot for one more session of `subject`. `Ok(None)`: the backend is unreachable
    /// and the limit is not enforced across workers for this session; `Err(())`: the user is
    /// at the limit.
    pub(crate) async fn take(
        &self,
        subject: &mcp_pool_traits::Digest256,
    ) -> Result<Option<mcp_pool_traits::StateId>, ()> {
        let Some(counter) = Self::counter(subject) else {
            return Ok(None);
        };
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(slot) = mcp_pool_traits::StateId::new(format!("{}-{n}", self.worker)) else {
            return Ok(None);
        };
        let taking = self
            .backend
            .try_acquire_slot(&counter, &slot, self.limit, self.ttl);
        match tokio::time::timeout(SLOT_TIMEOUT, taking).await {
            Ok(Ok(true)) => Ok(Some(slot)),
            Ok(Ok(false)) => Err(()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "user limit across workers not enforced: backend failed");
                Ok(None)
            }
            Err(_) => {
                tracing::warn!("user limit across workers not enforced: backend timed out");
                Ok(None)
            }
        }
    }

    /// Gives a slot back (awaited where the caller needs the room at once).
    pub(crate) async fn release(
        &self,
        subject: &mcp_pool_traits::Digest256,
        slot: &mcp_pool_traits::StateId,
    ) {
        if let Some(counter) = Self::counter(subject) {
            let releasing = self.backend.release_slot(&counter, slot);
            if let Ok(Err(error)) = tokio::time::timeout(SLOT_TIMEOUT, releasing).await {
                tracing::debug!(%error, "releasing a user slot failed; it expires by its TTL");
            }
        }
    }

    /// Renews the slots of live sessions.
    pub(crate) async fn renew(
        &self,
        subject: &mcp_pool_traits::Digest256,
        slots: &[mcp_pool_traits::StateId],
    ) {
        let Some(counter) = Self::counter(subject) else {
            return;
        };
        for slot in slots {
            let renewing = self
                .backend
                .try_acquire_slot(&counter, slot, self.limit, self.ttl);
            let _ = tokio::time::timeout(SLOT_TIMEOUT, renewing).await;
        }
    }
}
