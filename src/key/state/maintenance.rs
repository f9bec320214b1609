//! The key's configuration, maintenance and health events: reconfigure, the maintenance pass,
//! removal and drains, health check rounds and probes, the autoscaler.

use std::sync::Arc;

use mcp_pool_traits::{EvictionReason, SessionId};
use tokio::time::{Duration, Instant};

use super::{
    super::{
        effect::{Effect, Env, Tally},
        session::{Phase, Upstream, Use},
    },
    KeyState, same_endpoint,
};
use crate::{
    autoscale::{ScaleInputs, decide},
    health::HealthOutcome,
    server::ServerEntry,
};

/// What the maintenance pass learns from [`KeyState::reap`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReapOutcome {
    pub(crate) idle_key: bool,
    pub(crate) missing: u32,
    /// The key has an idle session (a candidate to close under a pool-wide cap).
    pub(crate) has_idle: bool,
    /// When the key was last used, as of this pass.
    pub(crate) last_used: Instant,
}

/// An autoscaler decision, for the driver's log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rebalanced {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) action: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) stats: crate::autoscale::IntervalStats,
    /// Sessions to create ahead of demand.
    pub(crate) missing: u32,
}

impl<S: Upstream, W> KeyState<S, W> {
    /// Picks up a newer server snapshot (live reconfiguration); one that is not newer is
    /// ignored, so a key only moves forward. Returns whether it changed (the queue is then
    /// served).
    ///
    /// A new strategy gets a fresh selector and the sessions retire: sessions shared under one
    /// strategy must not become, say, exclusive sticky sessions carrying other conversations'
    /// state. Sessions whose endpoint was removed or now points elsewhere retire. With pooling
    /// off (or strategy `none`) every session retires: idle ones close at once (nothing may
    /// hand them out, so they must not hold room), in-use ones when released. A lower
    /// `max_size` closes idle sessions above it.
    #[inline]
    pub(crate) fn reconfigure(&mut self, server: &Arc<ServerEntry>, env: &mut impl Env) -> bool {
        if server.generation <= self.server.generation {
            return false;
        }
        let old = std::mem::replace(&mut self.server, server.clone());
        self.pools = server.pools();
        if !Arc::ptr_eq(&old.strategy, &server.strategy) || old.pools() != server.pools() {
            // Creations in flight were reserved under other rules: they serve their acquire
            // once and bind nothing (see `created`).
            self.rules_epoch += 1;
            self.creating_for.clear();
        }
        if self.creating_by_endpoint.len() < server.endpoints.len() {
            self.creating_by_endpoint.resize(server.endpoints.len(), 0);
        }
        if !Arc::ptr_eq(&old.strategy, &server.strategy) {
            self.retire_all(EvictionReason::Drained, env);
            self.selector = server.strategy.selector();
            self.binds = self.selector.binds();
            self.observes = self.selector.observes_leases();
            // What the old label set counts moves to the new one: no series is left stuck.
            let mut moved = Tally {
                waiters: self.waiters.len() as i64,
                ..Tally::default()
            };
            for session in &self.retiring {
                if let Phase::Retiring(r) = session.phase {
                    moved.session(None, Some(r.active));
                }
            }
            let before = self.take_tally();
            self.effects.push(Effect::Relabel { before, moved });
        }
        let mut i = self.views.len();
        while i > 0 {
            i -= 1;
            let e = self.views[i].endpoint;
            let kept = match (old.endpoints.get(e), server.endpoints.get(e)) {
                (Some(a), Some(b)) => same_endpoint(a, b),
                _ => false,
            };
            if !kept {
                self.retire(i, EvictionReason::Drained, env);
            } else if !server.pools() {
                // Pooling off: every session goes (in-use ones when released), also if pooling
                // comes back before that — a conversation then starts afresh.
                self.retire(i, EvictionReason::Unpooled, env);
            } else {
                if self.sessions[i].usage == Use::Pooled {
                    self.set_capacity(i, server.config.session_concurrency);
                }
                self.views[i].weight = server.endpoints[e].weight;
            }
        }
        self.refresh_expiry_cutoff();
        let config = &self.server.config;
        self.target = if config.auto_scale {
            self.target.clamp(config.min_size, config.max_size)
        } else {
            config.size
        };
        self.shrink_to_max(env);
        self.serve_waiters(env);
        true
    }

    /// The maintenance pass, as of `now`: closes idle sessions past `max_lifetime`, or past
    /// `max_idle_time` above `min_size` (a pinned one stays), and dead ones; says whether the
    /// key is idle (nothing in use, waiting or being created) since `key_idle` ago, and how
    /// many sessions are missing to reach `min_size`.
    pub(crate) fn reap(
        &mut self,
        now: Instant,
        key_idle: Duration,
        env: &mut impl Env,
    ) -> ReapOutcome {
        self.settle_use(now);
        self.last_tick = now;
        self.refresh_expiry_cutoff();
        let config = self.server.config.clone();
        let mut i = self.views.len();
        while i > 0 {
            i -= 1;
            if let Some(reason) = self.sessions[i].upstream.gone() {
                // Lost (its eviction task has not run yet), or dead (SSE, WebSocket and
                // in-process sessions say so), maybe with leases out: a conversation waiting
                // for it is served a new session now, not when the lease comes back.
                self.retire(i, reason, env);
                continue;
            }
            if self.views[i].in_flight > 0 {
                continue;
            }
            let session = &self.sessions[i];
            let reason = if now.duration_since(session.created_at) >= config.max_lifetime {
                Some(EvictionReason::Lifetime)
            } else if now.duration_since(session.last_used) >= config.max_idle_time
                && self.views.len() as u32 > config.min_size
                && !self.pins.holds(self.views[i].id)
            {
                Some(EvictionReason::Idle)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.retire(i, reason, env);
            }
        }
        self.serve_waiters(env);
        let missing = if self.pools && self.warm && !self.removed {
            config.min_size.saturating_sub(self.total())
        } else {
            0
        };
        ReapOutcome {
            idle_key: self.is_idle() && now.duration_since(self.last_used) >= key_idle,
            missing,
            has_idle: self.has_idle_session(),
            last_used: self.last_used,
        }
    }

    /// Whether the key may be removed: idle, and (with `idle_for`) unused for that long as of
    /// that instant.
    pub(crate) fn removable(&mut self, idle_for: Option<(Instant, Duration)>) -> bool {
        if self.removed || !self.is_idle() {
            return false;
        }
        if let Some((now, idle)) = idle_for {
            self.settle_use(now);
            if now.duration_since(self.last_used) < idle {
                return false;
            }
        }
        true
    }

    /// Marks the key removed: every session retires (in-use ones close when released) and the
    /// queued acquires are dropped (their payloads with them: the driver's waiters see the
    /// pool closed or look the key up again).
    pub(crate) fn remove(&mut self, reason: EvictionReason, env: &mut impl Env) {
        self.removed = true;
        self.retire_all(reason, env);
        self.tally.waiters -= self.waiters.len() as i64;
        self.waiters.clear();
    }

    /// Retires every session (`drain()`); in-use ones close on release.
    pub(crate) fn drain(&mut self, env: &mut impl Env) {
        self.retire_all(EvictionReason::Drained, env);
        self.serve_waiters(env);
    }

    /// Starts a health check round if one is due as of `now`: `health_check_interval` passed
    /// since the last one and no round is running. Sessions are then taken one at a time with
    /// [`health_take`](Self::health_take): never more than one session of a key out of
    /// service for a check.
    pub(crate) fn health_round(&mut self, now: Instant) -> bool {
        if self.removed
            || self.health_running
            || !self.pools
            || now.duration_since(self.last_health_check) < self.server.config.health_check_interval
        {
            return false;
        }
        self.last_health_check = now;
        self.health_running = true;
        true
    }

    /// The next session due for a health check — idle, and neither used nor checked for
    /// `health_check_interval` (a session in use proves itself through its calls, which count
    /// in the health score) — [`Checking`](Phase::Checking) until
    /// [`health_checked`](Self::health_checked). `None` ends the round.
    pub(crate) fn health_take(&mut self, env: &mut impl Env) -> Option<(SessionId, S::Handle)> {
        let now = env.now();
        self.settle_use(now);
        let interval = self.server.config.health_check_interval;
        let due = (!self.removed && !env.pool_closed())
            .then(|| {
                (0..self.views.len()).find(|&i| {
                    let (view, session) = (&self.views[i], &self.sessions[i]);
                    view.in_flight == 0
                        && session.phase == Phase::Open
                        && now.duration_since(session.last_used.max(session.last_checked))
                            >= interval
                })
            })
            .flatten();
        let Some(i) = due else {
            self.health_running = false;
            return None;
        };
        // Full: no acquire picks it while it is being checked.
        let capacity = self.views[i].capacity;
        self.sessions[i].phase = Phase::Checking { held: capacity };
        self.views[i].in_flight = capacity;
        Some((self.views[i].id, self.sessions[i].upstream.handle().clone()))
    }

    /// A check (or the probe after an abandoned call) of session `id` ended: a failed one
    /// closes the session, a healthy one gives it back. Returns whether it failed.
    pub(crate) fn health_checked(
        &mut self,
        id: SessionId,
        outcome: &HealthOutcome,
        env: &mut impl Env,
    ) -> bool {
        let failed = !outcome.is_healthy();
        let now = env.now();
        let endpoint = self.position(id).map(|i| self.views[i].endpoint);
        let health = env.health();
        health.record(endpoint, !failed, now);
        if let (Some(endpoint), Some(failure)) = (endpoint, outcome.failure()) {
            health.record_error(
                endpoint,
                &format!(
                    "health check ({}) failed: {failure}",
                    outcome.method().as_str()
                ),
                now,
            );
        }
        if failed {
            self.tally.health_failures += 1;
        }
        if let Some(i) = self.position(id) {
            let was = self.counted_active(i);
            let held = self.sessions[i].phase.held();
            self.sessions[i].phase = Phase::Open;
            self.sessions[i].last_checked = now;
            self.views[i].in_flight -= held;
            self.resync(i, was);
            if failed {
                self.retire(i, EvictionReason::Health, env);
            } else if self.views[i].in_flight == 0 && self.total() > self.server.config.max_size {
                // max_size was lowered while this session was out of use for its check.
                self.retire(i, EvictionReason::Drained, env);
            }
        } else if let Some(i) = self.retiring.iter().position(|s| s.id == id)
            && let Phase::Retiring(r) = &mut self.retiring[i].phase
        {
            // Retired (drained) while checked: its check held `held` of its in-flight count.
            r.in_flight -= std::mem::take(&mut r.held);
            if r.in_flight == 0 {
                let session = self.retiring.swap_remove(i);
                self.close_retired(session, env);
            }
        }
        self.serve_waiters(env);
        failed
    }

    /// The autoscaler, as of `now`, when `auto_scale` is on and `rebalance_interval` has
    /// passed: moves the target size and closes idle sessions above it (never in-use or
    /// pinned ones, never below `min_size`).
    pub(crate) fn rebalance(&mut self, now: Instant, env: &mut impl Env) -> Option<Rebalanced> {
        let config = self.server.config.clone();
        if self.removed
            || !config.auto_scale
            || !self.pools
            || now.duration_since(self.last_rebalance) < config.rebalance_interval
        {
            return None;
        }
        self.last_rebalance = now;
        let stats = self.scale.take();
        let from = self.target;
        let decision = decide(&ScaleInputs::new(stats, from, &config));
        self.target = decision.target;
        self.effects
            .push(Effect::Autoscaled(decision.action.as_str()));
        let floor = decision.target.max(config.min_size);
        let mut i = self.views.len();
        while self.views.len() as u32 > floor && i > 0 {
            i -= 1;
            if self.views[i].in_flight == 0 && !self.pins.holds(self.views[i].id) {
                self.retire(i, EvictionReason::Idle, env);
            }
        }
        self.serve_waiters(env);
        Some(Rebalanced {
            from,
            to: decision.target,
            action: decision.action.as_str(),
            reason: decision.reason,
            stats,
            missing: if self.warm {
                decision.target.saturating_sub(self.total())
            } else {
                0
            },
        })
    }

    /// Sets active session `i`'s capacity; a check or probe in progress keeps holding all of it.
    fn set_capacity(&mut self, i: usize, capacity: u32) {
        let view = &mut self.views[i];
        let session = &mut self.sessions[i];
        if let Phase::Checking { held } | Phase::Probing { held } = &mut session.phase
            && capacity > view.capacity
        {
            let more = capacity - view.capacity;
            *held += more;
            view.in_flight += more;
        }
        view.capacity = capacity;
    }

    fn retire_all(&mut self, reason: EvictionReason, env: &mut impl Env) {
        while let Some(last) = self.views.len().checked_sub(1) {
            self.retire(last, reason, env);
        }
    }

    /// Recomputes `expiry_cutoff` after the maintenance pass moved `last_tick` or a
    /// reconfiguration changed `max_lifetime`.
    pub(super) fn refresh_expiry_cutoff(&mut self) {
        let horizon = self.last_tick + self.settings.cleanup_interval * 2;
        self.expiry_cutoff = horizon.checked_sub(self.server.config.max_lifetime);
    }

    /// Folds the releases since the last pass into `last_used` (the key's and its sessions'),
    /// as of `now`.
    fn settle_use(&mut self, now: Instant) {
        if std::mem::take(&mut self.released) {
            self.last_used = now;
        }
        for session in &mut self.sessions {
            if std::mem::take(&mut session.released) {
                session.last_used = now;
            }
        }
    }

    /// Closes idle sessions while the key holds more than `max_size`.
    pub(super) fn shrink_to_max(&mut self, env: &mut impl Env) {
        let max = self.server.config.max_size;
        let mut i = self.views.len();
        while self.total() > max && i > 0 {
            i -= 1;
            if self.views[i].in_flight == 0 {
                self.retire(i, EvictionReason::Drained, env);
            }
        }
    }
}
