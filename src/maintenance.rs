//! The background maintenance task: reaping without traffic (DESIGN §2.5, §7).

use std::{sync::Arc, time::Duration};

use mcp_pool_traits::EvictionReason;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    Pool,
    health::{HealthCheckConfig, check_session},
    key_pool::KeyPool,
    pool::{KeyId, PoolInner},
};

/// Every `interval`: close sessions past `max_lifetime` or idle past `max_idle_time` (down to
/// `min_size`), remove keys idle for `key_idle`, and create sessions up to `min_size`.
/// Holds the pool weakly: dropping the last [`Pool`] handle or closing it ends the task.
pub(crate) fn spawn(pool: &Pool, interval: Duration, key_idle: Duration) {
    spawn_periodic(pool, interval, move |pool| run_once(pool, key_idle));
}

/// Runs `tick` every `period` until the pool closes or its last handle is dropped (the task
/// holds the pool weakly).
fn spawn_periodic(pool: &Pool, period: Duration, mut tick: impl FnMut(&Pool) + Send + 'static) {
    let weak = Arc::downgrade(&pool.inner);
    let shutdown = pool.inner.shutdown.clone();
    pool.inner.shared.runtime.spawn(async move {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            tick(&Pool { inner });
        }
    });
}

/// One maintenance pass. Never awaits: closing and creating happen in spawned tasks.
pub(crate) fn run_once(pool: &Pool, key_idle: Duration) {
    let now = Instant::now();
    let user_slots = pool.inner.shared.user_slots.get().cloned();
    for key in pool.all_keys() {
        if let Some(user_slots) = &user_slots
            && let (Some(subject), slots) = key.user_slots()
            && !slots.is_empty()
        {
            let user_slots = user_slots.clone();
            pool.inner
                .shared
                .runtime
                .spawn(async move { user_slots.renew(&subject, &slots).await });
        }
        let outcome = key.reap(now, key_idle);
        if outcome.idle_key {
            remove_key(&pool.inner, &key);
        } else {
            for _ in 0..outcome.missing {
                key.spawn_create();
            }
        }
    }
}

/// Removes `key` from the map (if it is still there) and retires its sessions; returns
/// whether it was removed.
pub(crate) fn remove_key(inner: &PoolInner, key: &Arc<KeyPool>) -> bool {
    // Only if the map still holds this very key pool. An acquire that found it just before
    // sees it removed under its lock and looks the key up again.
    let removed = inner
        .keys
        .pin()
        .remove_if(&KeyId::of(key), |_, k| Arc::ptr_eq(k, key))
        .is_ok_and(|r| r.is_some());
    if removed {
        key.retire_all(EvictionReason::KeyEvicted, true);
    }
    removed
}

/// How often the health task looks for keys due for a health check or a rebalance. Each key
/// then follows its server's `health_check_interval` (at least 10 s) and `rebalance_interval`.
pub(crate) const HEALTH_TICK: Duration = Duration::from_secs(5);

/// Background health checks of idle sessions and the autoscaler (DESIGN §7): every
/// [`HEALTH_TICK`], each key due checks its idle sessions with the chain of `config` (failed
/// ones are closed and `min_size` refilled, which also probes endpoints whose circuit has
/// reset), and, with `auto_scale`, moves its target size and pre-creates sessions.
pub(crate) fn spawn_health(pool: &Pool, config: HealthCheckConfig) {
    let config = Arc::new(config);
    spawn_periodic(pool, HEALTH_TICK, move |pool| {
        let now = Instant::now();
        for key in pool.all_keys() {
            for _ in 0..key.rebalance(now) {
                key.spawn_create();
            }
            let due = key.health_due(now);
            if due.is_empty() {
                continue;
            }
            let config = config.clone();
            pool.inner.shared.runtime.spawn(async move {
                let mut failures = 0;
                for (id, peer) in due {
                    let outcome = check_session(&peer, &config).await;
                    failures += u32::from(key.health_checked(id, &outcome));
                }
                if failures > 0 {
                    for _ in 0..key.missing_for_min_size() {
                        key.spawn_create();
                    }
                }
            });
        }
    });
}
