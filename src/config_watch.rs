//! Saved pool configs, shared through the [`StateBackend`] by every pool that uses it (several
//! gateway workers) and applied by each without a restart.
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
    sync::{Arc, Weak},
    time::Duration,
};

use futures::StreamExt;
use mcp_pool_traits::{ServerId, StateBackend};
use tokio_util::sync::CancellationToken;

use crate::{Pool, PoolError, pool::PoolInner};

/// First and largest wait before resubscribing after the backend failed.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

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
                    log_invalid(&server, pool.apply_saved(change));
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
        if log_invalid(&server, pool.apply_saved(change)) {
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
