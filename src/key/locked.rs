//! The key's lock and what runs under it: [`KeyPool`] holds the [`KeyState`] behind a mutex,
//! and [`KeyPool::with_state`] runs one event on it — then hands the grants it made to their
//! waiters (under the lock: a grant whose waiter is gone is undone at once), records its
//! metric deltas, and after the lock is released closes the sessions it closed.

use std::sync::Arc;

use http::HeaderMap;
use mcp_pool_traits::{Digest256, PoolKey};
use parking_lot::{Mutex, MutexGuard};
use tokio::{sync::oneshot, time::Instant};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{
    effect::{Effect, Env, Grant, Tally},
    session::KeyCounters,
    state::KeyState,
    upstream::{Link, Live},
};
use crate::{
    limits::Cap,
    metrics::KeyMetrics,
    server::{ServerCounters, ServerHealth},
    shared::Shared,
};

/// What a queued acquire is handed: its grant, and for a creation the token that keeps
/// [`Pool::close`](crate::Pool::close) waiting until the creation ended (taken under the lock).
pub(crate) type Delivery = (Grant<Arc<Link>>, Option<TaskTrackerToken>);

/// The key's state as the driver keeps it.
pub(crate) type State = KeyState<Live, oneshot::Sender<Delivery>>;

/// The key map's key: a [`PoolKey`] with the server as its index, so that looking a key up
/// clones nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyId {
    pub(crate) server: u32,
    pub(crate) principal: mcp_pool_traits::Principal,
    pub(crate) transport: mcp_pool_traits::TransportKind,
}

impl std::hash::Hash for KeyId {
    /// 8 bytes of each digest (uniform already; the map's hasher is seeded), not all 64: on
    /// every acquire. Equality compares whole keys.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.server) << 8 ^ kind_code(self.transport));
        state.write_u64(self.principal.user.prefix_u64());
        state.write_u64(self.principal.identity.prefix_u64());
    }
}

/// A number per transport kind, for [`KeyId`]'s hash: a custom kind's is the address of its
/// interned name (one per name).
fn kind_code(kind: mcp_pool_traits::TransportKind) -> u64 {
    use mcp_pool_traits::TransportKind;
    match kind {
        TransportKind::StreamableHttp => 0,
        TransportKind::Sse => 1,
        TransportKind::WebSocket => 2,
        TransportKind::Stdio => 3,
        other => other.as_str().as_ptr() as usize as u64,
    }
}

impl KeyId {
    pub(crate) fn of(key: &KeyPool) -> Self {
        Self {
            server: key.server_index,
            principal: key.key.principal(),
            transport: key.key.transport,
        }
    }
}

/// Headers kept for background creations. `Debug` shows their names only: the values are
/// credentials.
#[derive(Default)]
pub(super) struct ForwardedHeaders(pub(super) HeaderMap);

impl std::fmt::Debug for ForwardedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the key's mutex guards.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) state: State,
    pub(super) metrics: KeyMetrics,
    /// Headers of the latest session creation for an acquire: what background creations
    /// (`min_size`) send. Kept in memory only; never stored elsewhere, logged or labelled.
    pub(super) headers: ForwardedHeaders,
}

/// The [`Env`] of one event: the clock read at most once, the server's health locked on first
/// use (always after the key's lock: the acquire path's order).
pub(super) struct LockedEnv<'a> {
    pub(super) now: Option<Instant>,
    counters: &'a ServerCounters,
    health: Option<MutexGuard<'a, ServerHealth>>,
    shared: &'a Shared,
}

impl Env for LockedEnv<'_> {
    #[inline]
    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    fn health(&mut self) -> &mut ServerHealth {
        let counters = self.counters;
        self.health.get_or_insert_with(|| counters.health.lock())
    }

    fn reserve(&mut self, subject: Option<Digest256>) -> Result<(), Cap> {
        self.shared.limits.try_reserve(subject)
    }

    fn release(&mut self, subject: Option<Digest256>) {
        self.shared.limits.release(subject);
    }

    fn pool_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

/// One key: (user, identity, server, transport).
#[derive(Debug)]
pub(crate) struct KeyPool {
    pub(crate) key: PoolKey,
    pub(crate) server_index: u32,
    /// The server's counters and health, the same for every generation of its config: what
    /// leases report call outcomes to without taking the key's lock.
    pub(crate) server_state: Arc<ServerCounters>,
    pub(crate) shared: Arc<Shared>,
    pub(super) locked: Mutex<Locked>,
}

impl KeyPool {
    /// Runs one event on the state: under the key's lock, then the grants it made are handed
    /// to their waiters and its metric deltas recorded (still under the lock), then the
    /// sessions it closed are closed (after).
    #[inline]
    pub(super) fn with_state<R>(
        &self,
        event: impl FnOnce(&mut Locked, &mut LockedEnv<'_>) -> R,
    ) -> R {
        let mut locked = self.locked.lock();
        let mut env = self.env();
        let result = event(&mut locked, &mut env);
        let io = self.finish(&mut locked, &mut env);
        drop(env);
        drop(locked);
        if let Some(io) = io {
            self.perform(io);
        }
        result
    }

    pub(super) fn env(&self) -> LockedEnv<'_> {
        LockedEnv {
            now: None,
            counters: &self.server_state,
            health: None,
            shared: &self.shared,
        }
    }

    /// Hands out the grants, records the metrics, and returns what must be done after the
    /// lock is released. The common event (a hit, a release) made no grant and no effect: it
    /// only records its metric deltas.
    #[inline]
    pub(super) fn finish(
        &self,
        locked: &mut Locked,
        env: &mut LockedEnv<'_>,
    ) -> Option<Vec<Effect<Live>>> {
        let io = if locked.state.has_output() {
            self.hand_out(locked, env)
        } else {
            None
        };
        locked
            .state
            .flush_tally(|tally| record(&locked.metrics, tally));
        io
    }

    /// Sends the grants to their waiters (undoing those whose waiter is gone) and applies the
    /// effects that are metrics; returns the others.
    #[cold]
    fn hand_out(&self, locked: &mut Locked, env: &mut LockedEnv<'_>) -> Option<Vec<Effect<Live>>> {
        while let Some((waiter, grant)) = locked.state.next_grant() {
            let token = matches!(grant, Grant::Create(_)).then(|| self.shared.closing.token());
            if let Err((grant, _)) = waiter.send((grant, token)) {
                locked.state.undo(grant, env);
            }
        }
        let mut io = None;
        for effect in locked.state.take_effects() {
            match effect {
                Effect::Evicted(reason) => locked.metrics.evicted(reason),
                Effect::Autoscaled(action) => locked.metrics.autoscale(action),
                Effect::BreakerOpened { endpoint } => {
                    locked.metrics.breaker_trips.increment(1);
                    let server = locked.state.server();
                    tracing::warn!(
                        server = %server.id,
                        endpoint = %server.endpoints.get(endpoint).map_or("?".into(), |e| mcp_pool_traits::redact_url(&e.url)),
                        "circuit breaker opened"
                    );
                }
                Effect::Relabel { before, moved } => {
                    record(&locked.metrics, &before);
                    record(&locked.metrics, &moved.negated());
                    let server = locked.state.server();
                    let metrics = KeyMetrics::new(
                        &server.id,
                        self.key.transport,
                        server.strategy.name(),
                        self.shared.metrics_enabled,
                    );
                    record(&metrics, &moved);
                    locked.metrics = metrics;
                }
                effect @ (Effect::Close { .. } | Effect::Unpin(_)) => {
                    io.get_or_insert_with(Vec::new).push(effect);
                }
            }
        }
        io
    }

    /// Closes sessions and closes the channels of the conversations pinned to them.
    pub(super) fn perform(&self, io: Vec<Effect<Live>>) {
        let subject = limits_subject(&self.key);
        for effect in io {
            match effect {
                Effect::Close {
                    mut session,
                    id,
                    reason,
                } => {
                    self.shared
                        .release_user_slot(subject, session.user_slot.take());
                    self.shared.close_session(session.session, id, reason);
                }
                Effect::Unpin(link) => link.handler.unpin_all(),
                _ => {}
            }
        }
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        // Counters a removed key gathered after its removal (releases of leases that were
        // out then) join the server's totals too.
        let counters: KeyCounters = self.locked.get_mut().state.take_counters();
        self.server_state.retired.lock().absorb(&counters);
    }
}

/// Whose sessions a key's are for the user limit.
pub(super) fn limits_subject(key: &PoolKey) -> Option<Digest256> {
    crate::limits::subject(&key.principal())
}

/// Records metric deltas.
#[inline]
fn record(metrics: &KeyMetrics, tally: &Tally) {
    if tally.hits > 0 {
        metrics.hits.increment(tally.hits);
    }
    if tally.misses > 0 {
        metrics.misses.increment(tally.misses);
    }
    if tally.timeouts > 0 {
        metrics.timeouts.increment(tally.timeouts);
    }
    if tally.rebinds > 0 {
        metrics.rebinds.increment(tally.rebinds);
    }
    if tally.health_failures > 0 {
        metrics.health_failures.increment(tally.health_failures);
    }
    if tally.active != 0 {
        metrics.active.increment(tally.active as f64);
    }
    if tally.idle != 0 {
        metrics.idle.increment(tally.idle as f64);
    }
    if tally.waiters != 0 {
        metrics.waiters.increment(tally.waiters as f64);
    }
}
