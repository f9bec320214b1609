//! What several gateway workers share through the [`StateBackend`] (DESIGN §8): saved pool
//! configs, applied by every worker without a restart.
//!
//! The backend is never on the path of a local hit, and a backend that is down affects only
//! these shared features: local pooling keeps working, and the watcher resubscribes by itself
//! when the backend comes back.

use std::{sync::Weak, time::Duration};

use futures::StreamExt;
use mcp_pool_traits::{ConfigChange, StateBackend};
use tokio_util::sync::CancellationToken;

use crate::{Pool, pool::PoolInner};

/// First and largest wait before resubscribing after the backend failed.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Applies saved configs to `pool`: every config stored now, then every change, for as long
/// as the pool lives.
pub(crate) fn spawn_config_watcher(pool: &Pool) {
    let weak = std::sync::Arc::downgrade(&pool.inner);
    let backend = pool.inner.backend.clone();
    let shutdown = pool.inner.shutdown.clone();
    pool.inner.shared.runtime.spawn(async move {
        let mut wait = RESUBSCRIBE.0;
        loop {
            if watch_once(&weak, &*backend, &shutdown).await.is_ok() {
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
/// two is missed), then follow the changes until the stream ends. `Err` when the backend could
/// not be reached at all.
async fn watch_once(
    pool: &Weak<PoolInner>,
    backend: &dyn StateBackend,
    shutdown: &CancellationToken,
) -> Result<(), ()> {
    let mut changes = match backend.watch_configs().await {
        Ok(changes) => changes,
        Err(error) => {
            tracing::debug!(%error, "cannot watch saved pool configs yet");
            return Err(());
        }
    };
    match backend.list_configs().await {
        Ok(saved) => {
            for (server, config) in saved {
                apply(
                    pool,
                    ConfigChange {
                        server,
                        config: Some(config),
                    },
                );
            }
        }
        Err(error) => tracing::debug!(%error, "cannot list saved pool configs"),
    }
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            change = changes.next() => change,
        };
        match change {
            Some(change) => apply(pool, change),
            None => return Ok(()),
        }
    }
}

/// Applies one saved config (or its deletion) if the pool knows the server and the config is
/// not already in force. An invalid saved config is logged and ignored: it never replaces a
/// working one.
fn apply(pool: &Weak<PoolInner>, change: ConfigChange) {
    let Some(inner) = pool.upgrade() else { return };
    let pool = Pool { inner };
    let Some(current) = pool.inner.shared.server(&change.server) else {
        return;
    };
    let config = change.config.unwrap_or_else(|| current.base.clone());
    if config == current.config {
        return;
    }
    if let Err(error) = pool.set_pool_config(&change.server, config) {
        tracing::warn!(server = %change.server, %error, "ignoring an invalid saved pool config");
    }
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
