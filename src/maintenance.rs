//! The background maintenance task: reaping without traffic.

use std::{sync::Arc, time::Duration};

use mcp_pool_traits::EvictionReason;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    Pool,
    health::{HealthCheckConfig, check_session},
    pool::{by_last_use, unlist},
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
    let mut candidates = Vec::new();
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
        if outcome.idle_key
            && key.try_remove(
                || unlist(&pool.inner.keys, &key),
                Some((now, key_idle)),
                EvictionReason::KeyEvicted,
            )
        {
            continue;
        }
        for _ in 0..outcome.missing {
            key.spawn_create();
        }
        if outcome.has_idle {
            candidates.push((outcome.last_used, Arc::downgrade(&key)));
        }
    }
    *pool.inner.candidates.lock() = by_last_use(candidates);
    pool.inner.subjects.lock().retain(|_, keys| {
        keys.retain(|k| k.upgrade().is_some_and(|k| !k.is_removed()));
        !keys.is_empty()
    });
}

/// How often the health task looks for keys due for a health check or a rebalance. Each key
/// then follows its server's `health_check_interval` (at least 10 s) and `rebalance_interval`.
pub(crate) const HEALTH_TICK: Duration = Duration::from_secs(5);

/// Background health checks of idle sessions and the autoscaler: every
/// [`HEALTH_TICK`], each key due checks its idle sessions with the chain of `config`, one at a
/// time so that a key never has more than one session out of service for a check (failed ones
/// are closed and `min_size` refilled, which also probes endpoints whose circuit has reset),
/// and, with `auto_scale`, moves its target size and pre-creates sessions. Check tasks are
/// tracked: [`Pool::close`] waits for them.
pub(crate) fn spawn_health(pool: &Pool, config: HealthCheckConfig) {
    let config = Arc::new(config);
    spawn_periodic(pool, HEALTH_TICK, move |pool| {
        let now = Instant::now();
        let shared = &pool.inner.shared;
        for key in pool.all_keys() {
            for _ in 0..key.rebalance(now) {
                key.spawn_create();
            }
            if !key.health_round(now) {
                continue;
            }
            let config = config.clone();
            shared.closing.spawn_on(
                async move {
                    let mut failures = 0;
                    while let Some((id, peer)) = key.health_take() {
                        let outcome = check_session(&peer, &config).await;
                        failures += u32::from(key.health_checked(id, &outcome));
                    }
                    if failures > 0 {
                        key.refill_min_size();
                    }
                },
                &shared.runtime,
            );
        }
    });
}
