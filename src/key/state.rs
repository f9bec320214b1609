//! The key's bookkeeping as a state machine that does no I/O: events in, [`Grant`]s and
//! [`Effect`]s out.
//!
//! [`KeyState`] reads no clock it is not given (the [`Env`] reads it at most once per event,
//! and a hit never asks), records no metric (it adds to a [`Tally`]), takes no lock, spawns
//! nothing and owns no channel: a grant for a queued acquire waits in [`KeyState::next_grant`]
//! with the waiter's payload `W`, and a session to close waits in
//! [`KeyState::take_effects`]. The async driver ([`super::driver`]) performs them; a test
//! drives it step by step with no runtime.
//!
//! Every event ends by serving the queue, so a waiter that could be served never sleeps:
//! releases, evictions, drains and failed creations all wake it (a lost wake-up was the classic
//! bug of bb8 and r2d2, bb8#67). Capacity is counted exactly: active sessions, retiring
//! sessions (closed when their last lease returns) and sessions being created together never
//! exceed `max_size`.

use std::{collections::VecDeque, sync::Arc};

use mcp_pool_traits::{
    AffinityKey, AffinityState, Binding, Digest256, EndpointView, EvictionReason, LeaseReport,
    PoolKey, SelectContext, Selection, Selector, SessionId, SessionView,
};
use tokio::time::{Duration, Instant};

mod maintenance;
mod views;

pub(crate) use maintenance::ReapOutcome;

use super::{
    effect::{Discard, Effect, Env, Grant, Granted, Refusal, Tally, Ticket, TimedOut},
    session::{KeyCounters, Phase, Retiring, Session, Upstream, Use},
};
use crate::{
    autoscale::ScaleStats,
    breaker::{BreakerConfig, Open, Outcome},
    limits,
    pins::{Pins, Route},
    server::ServerEntry,
};

/// A queued acquire.
#[derive(Debug)]
struct Waiter<W> {
    id: u64,
    ctx: SelectContext,
    payload: W,
    /// When it queued: the autoscaler counts wait time.
    since: Instant,
}

/// What a finished creation turned into.
#[derive(Debug)]
pub(crate) struct Created<H> {
    /// The lease for the acquire it was made for (`None` for a background creation).
    pub(crate) lease: Option<Granted<H>>,
    /// It was made for an acquire on a pooling server: that acquire's headers are what
    /// background creations send from now on.
    pub(crate) keep_headers: bool,
}

/// The settings of the pool a key's state needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySettings {
    /// The maintenance period: how stale the state's idea of the time may be.
    pub(crate) cleanup_interval: Duration,
    /// Settings of every endpoint's circuit breaker.
    pub(crate) breaker: BreakerConfig,
}

/// One key's sessions, waiters and accounting. `S` is what the driver keeps of a session,
/// `W` what it keeps of a queued acquire.
#[derive(Debug)]
pub(crate) struct KeyState<S: Upstream, W> {
    key: PoolKey,
    /// Whose sessions these are for the user limit.
    subject: Option<Digest256>,
    settings: KeySettings,
    server: Arc<ServerEntry>,
    selector: Box<dyn Selector>,
    /// `selector.binds()`, read once per selector.
    binds: bool,
    /// `selector.observes_leases()`, read once per selector.
    observes: bool,
    /// `server.pools()`, read once per snapshot: the hit and release paths make no virtual
    /// call for it.
    pools: bool,
    /// Counts changes of the rules sessions are handed out by (strategy, pooling on or off): a
    /// creation reserved under earlier rules serves its acquire once and binds nothing.
    rules_epoch: u64,
    /// Affinities with a creation in flight, when the selector binds.
    creating_for: Vec<SelectContext>,
    /// Conversations pinned to sessions the strategy shares ([`crate::pins`]).
    pins: Pins,
    /// Views and sessions of the active set, index for index.
    views: Vec<SessionView>,
    sessions: Vec<Session<S>>,
    /// Sessions in [`Phase::Retiring`].
    retiring: Vec<Session<S>>,
    creating: u32,
    creating_by_endpoint: Vec<u32>,
    endpoint_scratch: Vec<EndpointView>,
    waiters: VecDeque<Waiter<W>>,
    next_waiter: u64,
    /// Whether a session was ever created for an acquire on a pooling server: only then does
    /// maintenance keep `min_size` warm (it needs that acquire's headers).
    warm: bool,
    last_used: Instant,
    removed: bool,
    counters: KeyCounters,
    last_health_check: Instant,
    /// A health check round is going through the key's sessions (one at a time).
    health_running: bool,
    /// Counts releases: the least-recently-used order of the sessions.
    release_seq: u64,
    /// A session was released since `last_used` was last brought up to date.
    released: bool,
    /// When the maintenance last looked at the key: a lower bound of the clock that releases
    /// use to decide whether a session may have outlived `max_lifetime`.
    last_tick: Instant,
    /// Sessions created at or before this instant may be past `max_lifetime` (the clock is at
    /// most two cleanup intervals past `last_tick`): only their expiry costs a clock read.
    expiry_cutoff: Option<Instant>,
    /// The autoscaler's target size, within [min_size, max_size] (the configured `size` when
    /// autoscaling is off).
    target: u32,
    scale: ScaleStats,
    last_rebalance: Instant,
    grants: VecDeque<(W, Grant<S::Handle>)>,
    effects: Vec<Effect<S>>,
    tally: Tally,
}

impl<S: Upstream, W> KeyState<S, W> {
    pub(crate) fn new(
        key: PoolKey,
        server: Arc<ServerEntry>,
        settings: KeySettings,
        now: Instant,
    ) -> Self {
        let selector = server.strategy.selector();
        let mut state = Self {
            subject: limits::subject(&key.principal()),
            key,
            settings,
            binds: selector.binds(),
            observes: selector.observes_leases(),
            pools: server.pools(),
            rules_epoch: 0,
            creating_for: Vec::new(),
            pins: Pins::default(),
            selector,
            views: Vec::new(),
            sessions: Vec::new(),
            retiring: Vec::new(),
            creating: 0,
            creating_by_endpoint: vec![0; server.endpoints.len()],
            endpoint_scratch: Vec::with_capacity(server.endpoints.len()),
            waiters: VecDeque::new(),
            next_waiter: 0,
            warm: false,
            last_used: now,
            removed: false,
            counters: KeyCounters::default(),
            last_health_check: now,
            health_running: false,
            release_seq: 0,
            released: false,
            last_tick: now,
            expiry_cutoff: None,
            target: server.config.size,
            scale: ScaleStats::new(),
            last_rebalance: now,
            server,
            grants: VecDeque::new(),
            effects: Vec::new(),
            tally: Tally::default(),
        };
        state.refresh_expiry_cutoff();
        state
    }

    // ---- what the driver reads -------------------------------------------------------------

    pub(crate) fn server(&self) -> &Arc<ServerEntry> {
        &self.server
    }

    pub(crate) fn subject(&self) -> Option<Digest256> {
        self.subject
    }

    /// Whether the strategy binds conversations to sessions (sticky).
    pub(crate) fn binds(&self) -> bool {
        self.binds
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed
    }

    pub(crate) fn last_used(&self) -> Instant {
        self.last_used
    }

    pub(crate) fn counters(&self) -> KeyCounters {
        self.counters
    }

    /// Takes the counters (they join the server's totals when the key goes).
    pub(crate) fn take_counters(&mut self) -> KeyCounters {
        std::mem::take(&mut self.counters)
    }

    /// Zeroes the counters.
    pub(crate) fn reset_counters(&mut self) {
        self.counters = KeyCounters::default();
    }

    /// Whether a session has no lease out and no health check.
    pub(crate) fn has_idle_session(&self) -> bool {
        self.views.iter().any(|v| v.in_flight == 0)
    }

    /// What the driver keeps of every session, active and retiring.
    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &S> {
        self.sessions
            .iter()
            .chain(&self.retiring)
            .map(|s| &s.upstream)
    }

    /// Sessions missing to reach `min_size` (0 unless the key is warm and pooled).
    pub(crate) fn missing_for_min_size(&self) -> u32 {
        if self.removed || !self.warm || !self.pools {
            return 0;
        }
        self.server.config.min_size.saturating_sub(self.total())
    }

    /// Where `ctx`'s conversation stands: pinned, else with the selector.
    pub(crate) fn affinity_state(&self, ctx: &SelectContext) -> AffinityState {
        ctx.affinity
            .and_then(|affinity| self.pins.state(&affinity))
            .unwrap_or_else(|| self.selector.affinity_state(ctx))
    }

    // ---- what the driver takes -------------------------------------------------------------

    /// The next grant for a queued acquire, with the waiter's payload. A grant whose waiter is
    /// gone goes back with [`undo`](Self::undo).
    #[inline]
    pub(crate) fn next_grant(&mut self) -> Option<(W, Grant<S::Handle>)> {
        self.grants.pop_front()
    }

    /// Whether grants or effects are waiting.
    #[inline]
    pub(crate) fn has_output(&self) -> bool {
        !self.grants.is_empty() || !self.effects.is_empty()
    }

    /// The effects of the events so far, in order.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect<S>> {
        std::mem::take(&mut self.effects)
    }

    /// The metric deltas of the events so far.
    #[inline]
    pub(crate) fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Hands the metric deltas of the events so far to `record`, if there are any, and
    /// zeroes them.
    #[inline]
    pub(crate) fn flush_tally(&mut self, record: impl FnOnce(&Tally)) {
        record(&self.tally);
        self.tally = Tally::default();
    }

    // ---- acquire ---------------------------------------------------------------------------

    /// An acquire: a lease, a creation or a refusal now, or `None` to queue
    /// ([`enqueue`](Self::enqueue)). A hit reads no clock and allocates nothing.
    #[inline]
    pub(crate) fn acquire(
        &mut self,
        ctx: &SelectContext,
        env: &mut impl Env,
    ) -> Option<Grant<S::Handle>> {
        if self.waiters.is_empty() {
            self.try_serve(ctx, env)
        } else {
            // Others are queued: join behind them.
            None
        }
    }

    /// Queues an acquire; its grant comes out of [`next_grant`](Self::next_grant) with
    /// `payload`. Returns the waiter's id.
    pub(crate) fn enqueue(&mut self, ctx: SelectContext, payload: W, env: &mut impl Env) -> u64 {
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.waiters.push_back(Waiter {
            id,
            ctx,
            payload,
            since: env.now(),
        });
        self.tally.waiters += 1;
        self.serve_waiters(env);
        id
    }

    /// Queued acquire `id` is gone (timed out, cancelled). `false` when it is no longer
    /// queued: its grant may be waiting for it.
    pub(crate) fn waiter_gone(&mut self, id: u64) -> bool {
        let Some(pos) = self.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        self.waiters.remove(pos);
        self.tally.waiters -= 1;
        true
    }

    /// Takes back a grant whose acquire is gone, and serves the queue.
    pub(crate) fn undo(&mut self, grant: Grant<S::Handle>, env: &mut impl Env) {
        match grant {
            Grant::Lease(granted) => {
                // The session may have been retired (drain) since the grant.
                self.give_back(granted.id, false, env);
                self.counters.hits -= 1;
            }
            Grant::Create(ticket) => {
                self.cancel_ticket(*ticket, env);
                self.counters.misses -= 1;
            }
            Grant::Refused(_) => {}
        }
        self.serve_waiters(env);
    }

    /// An acquire that ran out of time, counted (its waiter is gone already).
    pub(crate) fn timed_out(&mut self) -> TimedOut {
        self.counters.timeouts += 1;
        self.tally.timeouts += 1;
        let waited = self.server.config.timeout;
        if self.server.config.auto_scale {
            self.scale.waited(waited);
        }
        TimedOut {
            waited,
            in_use: self.total(),
            max_size: self.server.config.max_size,
            waiters: self.waiters.len(),
        }
    }

    // ---- creations -------------------------------------------------------------------------

    /// Room for a background creation (`min_size`, the autoscaler's target), if the key is
    /// pooled and has room. The session binds to no conversation.
    pub(crate) fn reserve_background(&mut self, env: &mut impl Env) -> Option<Ticket> {
        if self.removed || !self.pools || self.total() >= self.server.config.max_size {
            return None;
        }
        self.reserve_create(&SelectContext::default(), false, env)
            .ok()
    }

    /// Session `id` was created for `ticket`: it joins the key, leased to the acquire it was
    /// made for (`for_acquire`: that acquire's context; the strategy may bind it) or idle.
    /// A session that cannot join is closed: the key was removed ([`Discard::Closed`]), or its
    /// endpoint changed meanwhile ([`Discard::Stale`]).
    pub(crate) fn created(
        &mut self,
        ticket: Ticket,
        id: SessionId,
        upstream: S,
        for_acquire: Option<&SelectContext>,
        env: &mut impl Env,
    ) -> Result<Created<S::Handle>, Discard> {
        self.end_creation(&ticket);
        self.record_creation(ticket.endpoint, ticket.attempt, Outcome::Success, env);
        let now = env.now();
        self.release_seq += 1;
        // On an endpoint that still points where it did.
        let current = self
            .server
            .endpoints
            .get(ticket.endpoint)
            .is_some_and(|e| same_endpoint(e, &ticket.target));
        // Reserved under the current strategy and pooling mode.
        let same_rules = self.rules_epoch == ticket.epoch;
        let discard = if self.removed || env.pool_closed() {
            Some((Discard::Closed, EvictionReason::Closed))
        } else if !current {
            Some((Discard::Stale, EvictionReason::Drained))
        } else if for_acquire.is_none() && !(self.pools && same_rules) {
            // Warm-up for a server whose strategy or pooling changed meanwhile.
            Some((Discard::Closed, EvictionReason::Drained))
        } else if for_acquire.is_none() && self.total() >= self.server.config.max_size {
            // Warm-up above a `max_size` lowered meanwhile.
            Some((Discard::Closed, EvictionReason::Drained))
        } else {
            None
        };
        if let Some((discard, reason)) = discard {
            self.close(upstream, id, reason, env);
            self.serve_waiters(env);
            return Err(discard);
        }
        let leased = for_acquire.is_some();
        // A creation reserved under other rules serves its acquire once, as a per-request
        // session: it binds nothing and closes when released.
        let pooled = ticket.pooled && self.pools && same_rules;
        let binding = match for_acquire {
            Some(ctx) if pooled => {
                self.warm = true;
                self.selector.on_created(id, ctx)
            }
            // A per-request session binds nothing; a background one binds no conversation.
            _ => Binding::Unbound,
        };
        if binding == Binding::Rebound {
            self.counters.rebinds += 1;
            self.tally.rebinds += 1;
        }
        let usage = if pooled { Use::Pooled } else { Use::PerRequest };
        let mut session = Session::new(id, upstream, usage, now, self.release_seq);
        session.use_count = u64::from(leased);
        let handle = session.upstream.handle().clone();
        self.views.push(SessionView {
            id,
            endpoint: ticket.endpoint,
            in_flight: u32::from(leased),
            // A per-request session serves the acquire it was made for, and no other.
            capacity: if pooled {
                self.server.config.session_concurrency
            } else {
                1
            },
            weight: ticket.target.weight,
        });
        self.sessions.push(session);
        self.tally.session(None, Some(leased));
        // `max_size` may have been lowered while this session was being created.
        self.shrink_to_max(env);
        let lease = leased.then(|| Granted {
            id,
            handle,
            endpoint: ticket.endpoint,
            hit: false,
            rebound: binding == Binding::Rebound || ticket.rebound,
            observed: self.observes,
        });
        self.serve_waiters(env);
        Ok(Created {
            lease,
            keep_headers: leased && pooled,
        })
    }

    /// The creation of `ticket` failed for a cause in words (no credentials): counted, and the
    /// breaker and the scores hear of it when the endpoint caused it (`against_endpoint`: a
    /// caller's bad credential must not open the circuit for everyone).
    pub(crate) fn create_failed(
        &mut self,
        ticket: Ticket,
        cause: &str,
        against_endpoint: bool,
        env: &mut impl Env,
    ) {
        self.counters.create_failures += 1;
        let now = env.now();
        env.health().record_error(
            ticket.endpoint,
            &format!("cannot open a session: {cause}"),
            now,
        );
        let outcome = if against_endpoint {
            Outcome::Failure
        } else {
            Outcome::Cancelled
        };
        self.unreserve(&ticket, env);
        self.record_creation(ticket.endpoint, ticket.attempt, outcome, env);
        self.serve_waiters(env);
    }

    /// The creation of `ticket` was abandoned (its acquire was cancelled, or its user is at
    /// the limit in other workers): the room goes back.
    pub(crate) fn create_cancelled(&mut self, ticket: Ticket, env: &mut impl Env) {
        self.cancel_ticket(ticket, env);
        self.serve_waiters(env);
    }

    fn cancel_ticket(&mut self, ticket: Ticket, env: &mut impl Env) {
        self.unreserve(&ticket, env);
        self.record_creation(ticket.endpoint, ticket.attempt, Outcome::Cancelled, env);
    }

    // ---- releases --------------------------------------------------------------------------

    /// One lease of session `id` is back. `report` is there when the lease timed itself.
    #[inline]
    pub(crate) fn release(
        &mut self,
        id: SessionId,
        broken: bool,
        report: Option<&LeaseReport>,
        env: &mut impl Env,
    ) {
        self.counters.releases += 1;
        if let Some(report) = report {
            self.selector.on_released(report);
        }
        self.give_back(id, broken, env);
        self.serve_waiters(env);
    }

    /// One lease of session `id` whose call was abandoned is back: the session stays out of
    /// use, [`Probing`](Phase::Probing), until the driver's probe reports through
    /// [`health_checked`](Self::health_checked). Returns the session to probe; `None` when it
    /// needs no probe (it is retiring, or the release retires it anyway).
    pub(crate) fn release_in_doubt(
        &mut self,
        id: SessionId,
        report: Option<&LeaseReport>,
        env: &mut impl Env,
    ) -> Option<S::Handle> {
        self.counters.releases += 1;
        if let Some(report) = report {
            self.selector.on_released(report);
        }
        let handle = self.hold_for_probe(id, env);
        self.serve_waiters(env);
        handle
    }

    fn hold_for_probe(&mut self, id: SessionId, env: &mut impl Env) -> Option<S::Handle> {
        let Some(i) = self.position(id) else {
            self.give_back(id, false, env);
            return None;
        };
        if !self.pools || self.sessions[i].usage == Use::PerRequest || self.is_expired(i, env) {
            self.give_back(id, false, env);
            return None;
        }
        self.released = true;
        self.release_seq += 1;
        let was = self.counted_active(i);
        let view = &mut self.views[i];
        // The capacity may have been lowered under leases still out.
        let free = view.capacity.saturating_sub(view.in_flight);
        view.in_flight += free;
        let session = &mut self.sessions[i];
        session.phase = Phase::Probing {
            held: session.phase.held() + free + 1,
        };
        session.release_seq = self.release_seq;
        session.released = true;
        let handle = session.upstream.handle().clone();
        self.resync(i, was);
        Some(handle)
    }

    // ---- losses, caps, conversations -------------------------------------------------------

    /// Session `id` is gone for `cause` (in words): it leaves the key now with reason
    /// [`Lost`](EvictionReason::Lost) (at once if nothing is out on it, else when its leases
    /// return). With `record`, the loss counts as a failure in the health scores and becomes
    /// the endpoint's last error. `false` when it already left.
    pub(crate) fn session_lost(
        &mut self,
        id: SessionId,
        cause: &str,
        record: bool,
        env: &mut impl Env,
    ) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        if record {
            let endpoint = self.views[i].endpoint;
            let now = env.now();
            env.health()
                .record_failure(endpoint, &format!("session lost: {cause}"), now);
        }
        self.retire(i, EvictionReason::Lost, env);
        self.serve_waiters(env);
        true
    }

    /// Closes the least recently used idle session, to make room under a pool-wide cap.
    /// Returns its id (its [`Effect::Close`] is among the effects), `None` when there was none.
    pub(crate) fn evict_one_idle(&mut self, env: &mut impl Env) -> Option<SessionId> {
        let oldest = self.least_recently_used_idle()?;
        let id = self.views[oldest].id;
        self.retire(oldest, EvictionReason::Capacity, env);
        self.serve_waiters(env);
        Some(id)
    }

    /// Pins `affinity`'s conversation to session `id`. Returns the session's handle, for the
    /// driver to route its traffic outside calls; `None` when there is nothing to pin (a
    /// strategy that binds pins already, a session no longer in the key, a conversation pinned
    /// already).
    pub(crate) fn pin(&mut self, affinity: AffinityKey, id: SessionId) -> Option<S::Handle> {
        if self.binds || !self.pools {
            return None;
        }
        let i = self.position(id)?;
        self.pins
            .pin(affinity, id)
            .then(|| self.sessions[i].upstream.handle().clone())
    }

    /// Ends `ctx`'s pin, if any (the pinned session is shared: it stays), and its sticky
    /// binding, if any (the bound session retires). Returns whether there was either, and the
    /// handle of the session the conversation was pinned to.
    pub(crate) fn unbind(
        &mut self,
        ctx: &SelectContext,
        env: &mut impl Env,
    ) -> (bool, Option<S::Handle>) {
        let mut unpinned = None;
        let mut any = false;
        if let Some(affinity) = ctx.affinity
            && !self.pins.is_empty()
            && let Some(id) = self.pins.unpin(&affinity)
        {
            any = true;
            unpinned = self
                .position(id)
                .map(|i| self.sessions[i].upstream.handle().clone());
        }
        if let Some(id) = self.selector.unbind(ctx) {
            if let Some(i) = self.position(id) {
                self.retire(i, EvictionReason::Unbound, env);
            }
            self.serve_waiters(env);
            any = true;
        }
        (any, unpinned)
    }

    /// Counts a call retried once on another session.
    pub(crate) fn count_retry(&mut self) {
        self.counters.call_retries += 1;
    }

    // ---- the rules -------------------------------------------------------------------------

    /// Sessions counted against `max_size`: active, retiring and being created.
    fn total(&self) -> u32 {
        (self.views.len() + self.retiring.len()) as u32 + self.creating
    }

    /// Nothing in use, nothing retiring, queued or being created.
    fn is_idle(&self) -> bool {
        self.views.iter().all(|v| v.in_flight == 0)
            && self.retiring.is_empty()
            && self.creating == 0
            && self.waiters.is_empty()
    }

    #[inline]
    fn position(&self, id: SessionId) -> Option<usize> {
        self.views.iter().position(|v| v.id == id)
    }

    /// Whether the `mcp_pool_sessions` gauge counts active session `i` as `active`: a lease
    /// (not a check) is out on it.
    #[inline]
    fn counted_active(&self, i: usize) -> bool {
        self.views[i].in_flight > self.sessions[i].phase.held()
    }

    /// Moves session `i`'s gauge from `was` to what it is now.
    #[inline]
    fn resync(&mut self, i: usize, was: bool) {
        let now = self.counted_active(i);
        self.tally.session(Some(was), Some(now));
    }

    /// Whether session `i` is past `max_lifetime`: one comparison, and a clock read only for a
    /// session that may be.
    #[inline]
    fn is_expired(&self, i: usize, env: &mut impl Env) -> bool {
        let created_at = self.sessions[i].created_at;
        self.expiry_cutoff
            .is_some_and(|cutoff| created_at <= cutoff)
            && env.now().duration_since(created_at) >= self.server.config.max_lifetime
    }

    /// Feeds the autoscaler's statistics (only when it is on: the sum is O(sessions)).
    #[inline]
    fn observe_load(&mut self) {
        if self.server.config.auto_scale {
            let in_use: u32 = self.views.iter().map(|v| v.in_flight).sum();
            let capacity = self.views.len() as u32 * self.server.config.session_concurrency;
            self.scale.observe(in_use, capacity);
        }
    }

    /// The idle session released longest ago.
    fn least_recently_used_idle(&self) -> Option<usize> {
        (0..self.views.len())
            .filter(|&i| self.views[i].in_flight == 0)
            .min_by_key(|&i| self.sessions[i].release_seq)
    }

    /// Serves an acquire right now if possible: a session with capacity (hit), or a reserved
    /// creation (miss). `None` means wait.
    #[inline]
    fn try_serve(&mut self, ctx: &SelectContext, env: &mut impl Env) -> Option<Grant<S::Handle>> {
        if !self.creating_for.is_empty()
            && self.binds
            && self.pools
            && self.creating_for.contains(ctx)
        {
            // The conversation's session is being created: it serves this acquire too.
            return None;
        }
        let mut rebound = false;
        loop {
            let selection = if !self.pools {
                Selection::Create
            } else if let Some(pinned) = self.pinned(ctx, &mut rebound) {
                pinned
            } else {
                self.selector.select(&self.views, ctx)
            };
            let grant = match selection {
                Selection::Session(i)
                    if self.views.get(i).is_some_and(SessionView::has_capacity) =>
                {
                    // Reported lost or dead (an atomic load each), or past its lifetime: never
                    // hand it out; select again without it.
                    let unusable = self.sessions[i]
                        .upstream
                        .gone()
                        .or_else(|| self.is_expired(i, env).then_some(EvictionReason::Lifetime));
                    if let Some(reason) = unusable {
                        if self.binds && self.sessions[i].use_count == 0 {
                            // A warm session the strategy just bound to this conversation: it
                            // never served it, so no conversation state was lost with it.
                            self.selector.unbind(ctx);
                        }
                        self.retire(i, reason, env);
                        continue;
                    }
                    Some(self.take(i))
                }
                Selection::Session(i) => {
                    tracing::warn!(
                        strategy = self.server.strategy.name(),
                        index = i,
                        "strategy selected a session without capacity; creating instead"
                    );
                    self.grant_create(ctx, env)
                }
                Selection::Create => self.grant_create(ctx, env),
                Selection::Wait => None,
            };
            return grant.map(|grant| mark_rebound(grant, rebound));
        }
    }

    /// What serves a pinned conversation: its session (waiting while it is busy), or `None`
    /// for the strategy to choose — not pinned, or its session is gone (`rebound` is then set,
    /// and the loss is reported once).
    #[inline]
    fn pinned(&mut self, ctx: &SelectContext, rebound: &mut bool) -> Option<Selection> {
        if self.pins.is_empty() {
            return None;
        }
        let affinity = ctx.affinity.as_ref()?;
        match self.pins.route(affinity) {
            Route::Free => None,
            Route::Session(id) => match self.position(id) {
                Some(i) if self.views[i].has_capacity() => Some(Selection::Session(i)),
                Some(_) => Some(Selection::Wait),
                None => {
                    // Gone without notice (never expected: `retire` reports every removal).
                    self.pins.on_removed(id, EvictionReason::Drained);
                    self.pinned(ctx, rebound)
                }
            },
            Route::Lost => {
                *rebound = true;
                self.pins.forget_lost(affinity);
                None
            }
        }
    }

    /// A creation for `ctx`, if the key has room for one. At `max_size`, the least recently
    /// used idle session makes room (sticky: a new conversation must not wait while sessions
    /// bound to quiet ones sit idle; their conversations see `is_rebound()` next time).
    fn grant_create(
        &mut self,
        ctx: &SelectContext,
        env: &mut impl Env,
    ) -> Option<Grant<S::Handle>> {
        if self.total() >= self.server.config.max_size {
            let victim = self.least_recently_used_idle()?;
            self.retire(victim, EvictionReason::Capacity, env);
        }
        Some(match self.reserve_create(ctx, true, env) {
            Ok(ticket) => {
                self.counters.misses += 1;
                self.tally.misses += 1;
                Grant::Create(Box::new(ticket))
            }
            Err(refusal) => Grant::Refused(refusal),
        })
    }

    /// Reserves room for a creation on the endpoint the selector picks, counted against the
    /// pool-wide caps. An open circuit breaker lets an acquire (`for_acquire`) probe after its
    /// probe interval, background work after its backoff (see [`crate::breaker`]).
    fn reserve_create(
        &mut self,
        ctx: &SelectContext,
        for_acquire: bool,
        env: &mut impl Env,
    ) -> Result<Ticket, Refusal> {
        let now = env.now();
        let transport = self.key.transport;
        let (endpoint, attempt) = {
            let health = env.health();
            health.ensure(self.server.endpoints.len(), self.settings.breaker, now);
            // Endpoints of another transport than the key's, or whose circuit is open, are
            // unavailable to it.
            let refusal_of = |breaker: &crate::CircuitBreaker| {
                if for_acquire {
                    breaker.refusal(now)
                } else {
                    breaker.background_refusal(now)
                }
            };
            self.endpoint_scratch.clear();
            let mut any_of_transport = false;
            for (i, endpoint) in self.server.endpoints.iter().enumerate() {
                let (sessions, in_flight) = self
                    .views
                    .iter()
                    .filter(|v| v.endpoint == i)
                    .fold((0, 0), |(s, f), v| (s + 1, f + v.in_flight));
                any_of_transport |= endpoint.transport == transport;
                self.endpoint_scratch.push(EndpointView {
                    weight: endpoint.weight,
                    sessions: sessions + self.creating_by_endpoint[i],
                    in_flight,
                    available: endpoint.transport == transport
                        && refusal_of(&health.endpoints[i].breaker).is_none(),
                });
            }
            let mut refused: Option<Open> = None;
            loop {
                let Some(endpoint) = self.selector.select_endpoint(&self.endpoint_scratch, ctx)
                else {
                    return Err(match (any_of_transport, refused) {
                        (true, Some(open)) => Refusal::CircuitOpen(open),
                        (true, None) => {
                            // Every endpoint of the transport was open before asking (a probe
                            // in flight included): the earliest retry.
                            let open = (0..self.server.endpoints.len())
                                .filter(|&i| self.server.endpoints[i].transport == transport)
                                .filter_map(|i| refusal_of(&health.endpoints[i].breaker))
                                .min_by_key(|open| open.retry_at);
                            open.map_or(Refusal::NoEndpoint, Refusal::CircuitOpen)
                        }
                        (false, _) => Refusal::NoEndpoint,
                    });
                };
                if !self
                    .endpoint_scratch
                    .get(endpoint)
                    .is_some_and(|e| e.available)
                {
                    tracing::warn!(
                        strategy = self.server.strategy.name(),
                        endpoint,
                        "strategy selected an unavailable endpoint"
                    );
                    return Err(Refusal::NoEndpoint);
                }
                let breaker = &mut health.endpoints[endpoint].breaker;
                let attempt = if for_acquire {
                    breaker.try_acquire(now)
                } else {
                    breaker.try_acquire_background(now)
                };
                match attempt {
                    Ok(attempt) => break (endpoint, attempt),
                    Err(open) => {
                        // Half-open with its probe out: try another endpoint.
                        self.endpoint_scratch[endpoint].available = false;
                        refused =
                            Some(refused.map_or(open, |r| {
                                if open.retry_at < r.retry_at { open } else { r }
                            }));
                    }
                }
            }
        };
        if let Err(cap) = env.reserve(self.subject) {
            env.health().endpoints[endpoint]
                .breaker
                .record(attempt, Outcome::Cancelled, now);
            return Err(Refusal::Capped(cap));
        }
        self.creating += 1;
        self.creating_by_endpoint[endpoint] += 1;
        let affinity = (for_acquire && self.binds && self.pools).then_some(*ctx);
        if let Some(ctx) = affinity {
            self.creating_for.push(ctx);
        }
        Ok(Ticket {
            endpoint,
            target: self.server.endpoints[endpoint].clone(),
            attempt,
            affinity,
            epoch: self.rules_epoch,
            pooled: self.pools,
            rebound: false,
        })
    }

    /// Reports how a creation on `endpoint` went to its circuit breaker and the health scores
    /// (a cancellation is no evidence either way).
    fn record_creation(
        &mut self,
        endpoint: usize,
        attempt: crate::breaker::Attempt,
        outcome: Outcome,
        env: &mut impl Env,
    ) {
        let now = env.now();
        let health = env.health();
        if let Some(e) = health.endpoints.get_mut(endpoint)
            && e.breaker.record(attempt, outcome, now)
        {
            self.effects.push(Effect::BreakerOpened { endpoint });
        }
        match outcome {
            Outcome::Success => health.record(Some(endpoint), true, now),
            Outcome::Failure => health.record(Some(endpoint), false, now),
            Outcome::Cancelled => {}
        }
    }

    /// A creation ended (filled or not): its room and its conversation's turn are free. An
    /// affinity reserved under earlier rules was already forgotten (and may have a new
    /// creation now).
    fn end_creation(&mut self, ticket: &Ticket) {
        self.creating -= 1;
        self.creating_by_endpoint[ticket.endpoint] -= 1;
        if let Some(ctx) = ticket.affinity
            && ticket.epoch == self.rules_epoch
            && let Some(i) = self.creating_for.iter().position(|c| *c == ctx)
        {
            self.creating_for.swap_remove(i);
        }
    }

    /// Gives back the room of a creation whose session was never made.
    fn unreserve(&mut self, ticket: &Ticket, env: &mut impl Env) {
        self.end_creation(ticket);
        env.release(self.subject);
    }

    /// Closes a session that left the key, giving its place under the caps back.
    fn close(&mut self, upstream: S, id: SessionId, reason: EvictionReason, env: &mut impl Env) {
        env.release(self.subject);
        self.effects.push(Effect::Close {
            session: upstream,
            id,
            reason,
        });
    }

    /// Closes a retiring session whose last lease (or check) returned.
    fn close_retired(&mut self, session: Session<S>, env: &mut impl Env) {
        let Phase::Retiring(r) = session.phase else {
            unreachable!("only retiring sessions are in `retiring`")
        };
        self.tally.session(Some(r.active), None);
        self.close(session.upstream, session.id, r.reason, env);
    }

    /// Hands out one lease on active session `i`.
    #[inline]
    fn take(&mut self, i: usize) -> Grant<S::Handle> {
        let held = self.sessions[i].phase.held();
        let view = &mut self.views[i];
        if view.in_flight == held {
            // Idle until now (a held unit holds no lease): active from now on.
            self.tally.idle -= 1;
            self.tally.active += 1;
        }
        view.in_flight += 1;
        self.observe_load();
        let session = &mut self.sessions[i];
        session.use_count += 1;
        self.counters.hits += 1;
        self.tally.hits += 1;
        Grant::Lease(Granted {
            id: session.id,
            handle: session.upstream.handle().clone(),
            endpoint: self.views[i].endpoint,
            hit: true,
            rebound: false,
            observed: self.observes,
        })
    }

    /// Takes one lease of session `id` back: active sessions retire when broken, unpooled or
    /// past `max_lifetime`; retiring ones close with their last lease.
    ///
    /// A release reads the clock only for a session that may have reached `max_lifetime`: idle
    /// times are measured at the maintenance's granularity (`cleanup_interval`).
    #[inline]
    fn give_back(&mut self, id: SessionId, broken: bool, env: &mut impl Env) {
        self.released = true;
        if let Some(i) = self.position(id) {
            self.release_seq += 1;
            let session = &mut self.sessions[i];
            session.release_seq = self.release_seq;
            session.released = true;
            let held = session.phase.held();
            let view = &mut self.views[i];
            view.in_flight -= 1;
            if view.in_flight == held {
                // Its last lease: idle from now on.
                self.tally.active -= 1;
                self.tally.idle += 1;
            }
            self.observe_load();
            let reason = if broken {
                Some(EvictionReason::Broken)
            } else if !self.pools || self.sessions[i].usage == Use::PerRequest {
                Some(EvictionReason::Unpooled)
            } else if self.is_expired(i, env) {
                Some(EvictionReason::Lifetime)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.retire(i, reason, env);
            } else if self.views[i].in_flight == 0 && self.total() > self.server.config.max_size {
                // max_size was lowered while this session was in use.
                self.retire(i, EvictionReason::Drained, env);
            }
        } else if let Some(i) = self.retiring.iter().position(|s| s.id == id)
            && let Phase::Retiring(r) = &mut self.retiring[i].phase
        {
            r.in_flight -= 1;
            // What is left may be a check or the probe of an abandoned call: it holds no
            // conversation, and closing the session ends it too.
            if r.in_flight == r.held {
                let session = self.retiring.swap_remove(i);
                self.close_retired(session, env);
            }
        }
    }

    /// Removes active session `i`: closed now if nothing but a check is out on it, else
    /// retiring until its leases return.
    fn retire(&mut self, i: usize, reason: EvictionReason, env: &mut impl Env) {
        let active = self.counted_active(i);
        let view = self.views.remove(i);
        let mut session = self.sessions.remove(i);
        self.selector.on_removed(view.id, reason);
        if self.pins.holds(view.id) {
            self.pins.on_removed(view.id, reason);
        }
        // The conversations pinned to it (by a pin, or by a sticky binding) learn that their
        // state is gone.
        self.effects
            .push(Effect::Unpin(session.upstream.handle().clone()));
        self.counters.evictions += 1;
        self.effects.push(Effect::Evicted(reason));
        let held = session.phase.held();
        if view.in_flight == held {
            // No lease out (a check in progress holds no conversation: closing the session
            // ends the check too).
            self.tally.session(Some(active), None);
            self.close(session.upstream, view.id, reason, env);
        } else {
            session.phase = Phase::Retiring(Retiring {
                reason,
                in_flight: view.in_flight,
                held,
                active,
            });
            self.retiring.push(session);
        }
    }

    /// Serves queued acquires in FIFO order while anything can be served. A waiter that must
    /// wait for a specific session (sticky, pinned) does not block those behind it. Every event
    /// that may free room ends here: releases, evictions, creations (with
    /// `session_concurrency` > 1 a new session serves more than the acquire it was made for),
    /// failed creations, reconfiguration.
    #[inline]
    fn serve_waiters(&mut self, env: &mut impl Env) {
        let mut i = 0;
        while i < self.waiters.len() {
            if !self.has_room() {
                break;
            }
            let ctx = self.waiters[i].ctx;
            match self.try_serve(&ctx, env) {
                Some(grant) => {
                    let Some(waiter) = self.waiters.remove(i) else {
                        break;
                    };
                    self.tally.waiters -= 1;
                    if self.server.config.auto_scale {
                        let waited = env.now().saturating_duration_since(waiter.since);
                        self.scale.waited(waited);
                    }
                    self.grants.push_back((waiter.payload, grant));
                }
                None => i += 1,
            }
        }
    }

    /// Whether any acquire could be served now: room to create, or a session with capacity
    /// (an idle one at `max_size` can be closed to make room).
    fn has_room(&self) -> bool {
        self.total() < self.server.config.max_size
            || self.views.iter().any(SessionView::has_capacity)
    }
}

/// Marks a lease or creation as a rebind of a conversation whose pinned session is gone.
fn mark_rebound<H>(mut grant: Grant<H>, rebound: bool) -> Grant<H> {
    if rebound {
        match &mut grant {
            Grant::Lease(granted) => granted.rebound = true,
            Grant::Create(ticket) => ticket.rebound = true,
            Grant::Refused(_) => {}
        }
    }
    grant
}

/// Whether two endpoints reach the same place (a weight change keeps the sessions).
fn same_endpoint(a: &mcp_pool_traits::Endpoint, b: &mcp_pool_traits::Endpoint) -> bool {
    a.url == b.url && a.transport == b.transport
}
