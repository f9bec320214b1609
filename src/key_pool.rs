//! One pool key's sessions, waiters and accounting (the locked internals; bb8's `internals.rs`).
//!
//! Every state change happens under the key's mutex and ends with [`KeyState::serve_waiters`],
//! so a waiter that could be served never sleeps: releases, evictions, drains and failed
//! creations all wake the queue (DESIGN §2.1). Capacity is counted exactly: active sessions,
//! retiring sessions (closed when their last lease returns) and sessions being created together
//! never exceed `max_size` (DESIGN §2.2).

use std::{collections::VecDeque, sync::Arc};

use http::HeaderMap;
use mcp_pool_traits::{
    Binding, ClientSession, ConnectRequest, Digest256, EndpointView, EvictionReason, PoolKey,
    SelectContext, Selection, Selector, SessionId, SessionView, StateId, TransportError,
    TransportKind,
    rmcp::{Peer, RoleClient},
};
use parking_lot::Mutex;
use tokio::{
    sync::oneshot,
    time::{Duration, Instant},
};

use crate::{
    Lease, PoolError,
    autoscale::{ScaleInputs, ScaleStats, decide},
    breaker::{Attempt, BreakerState, Outcome},
    health::HealthOutcome,
    limits::{self, Cap},
    metrics::KeyMetrics,
    server::ServerEntry,
    shared::Shared,
    stats::{KeySizes, KeyStats},
};

/// A live session of a key.
#[derive(Debug)]
struct Slot {
    session: ClientSession,
    /// This session's slot of the user limit across workers, if one was taken.
    user_slot: Option<StateId>,
    /// Shared by the leases on this session: one reference count instead of a `Peer` clone
    /// (about ten of them) per acquire.
    peer: Arc<Peer<RoleClient>>,
    created_at: Instant,
    last_used: Instant,
    use_count: u64,
    /// Capacity taken by a health check in progress (0 when none).
    checking: u32,
    /// Released since `last_used` was last brought up to date: releases read no clock, the
    /// maintenance and health passes fold this into `last_used` (see [`KeyState::settle_use`]).
    released: bool,
}

/// A session that left the key's active set while leases were out on it. It still counts
/// against `max_size` until its last lease returns, then it is closed.
#[derive(Debug)]
struct Retiring {
    id: SessionId,
    slot: Slot,
    in_flight: u32,
    reason: EvictionReason,
}

/// Why no session could be reserved.
#[derive(Debug)]
pub(crate) enum Refusal {
    NoEndpoint,
    Capped(Cap),
    CircuitOpen(Instant),
}

/// What a waiter is handed.
#[derive(Debug)]
pub(crate) enum Grant {
    /// A lease on an existing session (its `in_flight` already counts it).
    Session {
        id: SessionId,
        peer: Arc<Peer<RoleClient>>,
        endpoint: usize,
    },
    /// Permission to create a session on this endpoint (`creating` already counts it), with
    /// the endpoint's circuit breaker's permit.
    Create { endpoint: usize, attempt: Attempt },
    /// Every endpoint's circuit is open; the earliest retry.
    CircuitOpen(Instant),
    /// No endpoint of the key's transport is available.
    NoEndpoint,
    /// A pool-wide cap stops a new session.
    Capped(Cap),
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    ctx: SelectContext,
    tx: oneshot::Sender<Grant>,
    /// When it queued: the autoscaler counts wait time.
    since: Instant,
}

/// Per-key counters for stats, kept under the key's lock (no shared atomics on the hit path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyCounters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) releases: u64,
    pub(crate) timeouts: u64,
    pub(crate) evictions: u64,
    pub(crate) rebinds: u64,
    pub(crate) create_failures: u64,
}

impl KeyCounters {
    pub(crate) fn absorb(&mut self, other: &KeyCounters) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.releases += other.releases;
        self.timeouts += other.timeouts;
        self.evictions += other.evictions;
        self.rebinds += other.rebinds;
        self.create_failures += other.create_failures;
    }
}

#[derive(Debug)]
pub(crate) struct KeyState {
    shared: Arc<Shared>,
    /// Whose sessions these are for the user limit.
    subject: Option<Digest256>,
    transport: TransportKind,
    server: Arc<ServerEntry>,
    selector: Box<dyn Selector>,
    /// Views and slots of the active sessions, index for index.
    views: Vec<SessionView>,
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    creating: u32,
    creating_by_endpoint: Vec<u32>,
    endpoint_scratch: Vec<EndpointView>,
    waiters: VecDeque<Waiter>,
    /// Headers of the latest session creation: what background creations (min_size) send.
    /// Kept in memory only; never stored elsewhere, logged or labelled.
    headers: HeaderMap,
    /// Whether a session was ever created for an acquire: only then does maintenance keep
    /// `min_size` warm (it needs that acquire's headers).
    warm: bool,
    pub(crate) last_used: Instant,
    pub(crate) removed: bool,
    pub(crate) counters: KeyCounters,
    metrics: KeyMetrics,
    last_health_check: Instant,
    /// A session was released since `last_used` was last brought up to date.
    released: bool,
    /// When the maintenance last looked at the key: a lower bound of the clock that releases
    /// use to decide whether a session may have outlived `max_lifetime`.
    last_tick: Instant,
    /// The autoscaler's target size, within [min_size, max_size] (the configured `size` when
    /// autoscaling is off).
    target: u32,
    scale: ScaleStats,
    last_rebalance: Instant,
}

/// One key: (user, identity, server, transport).
#[derive(Debug)]
pub(crate) struct KeyPool {
    pub(crate) key: PoolKey,
    pub(crate) server_index: u32,
    /// The server's counters and health, the same for every generation of its config: what
    /// leases report call outcomes to without taking the key's lock.
    pub(crate) server_state: Arc<crate::server::ServerCounters>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: Mutex<KeyState>,
}

/// Why [`KeyPool::acquire`] did not return a lease.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// The key was removed while the acquire looked it up: look it up again.
    Removed,
    /// A pool-wide cap stops a new session: make room, or fail.
    Capped(Cap),
    Pool(PoolError),
}

impl From<PoolError> for AcquireError {
    fn from(e: PoolError) -> Self {
        Self::Pool(e)
    }
}

/// Everything one acquire brings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcquireArgs<'a> {
    pub(crate) ctx: SelectContext,
    pub(crate) started: Instant,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) deadline: Instant,
}

/// What follows a first step that was not a hit.
#[derive(Debug)]
pub(crate) enum Next {
    /// The key was removed: look it up again.
    Removed,
    /// The pool is closed.
    Closed,
    /// Create or wait.
    Slow(FirstStep),
}

#[derive(Debug)]
pub(crate) enum FirstStep {
    Lease(Lease),
    Create(usize, Attempt),
    Wait(WaiterGuard),
    NoEndpoint,
    Capped(Cap),
    CircuitOpen(Instant),
}

impl KeyPool {
    pub(crate) fn new(key: PoolKey, shared: Arc<Shared>, server: Arc<ServerEntry>) -> Self {
        let metrics = KeyMetrics::new(
            &server.id,
            key.transport,
            server.strategy.name(),
            shared.metrics_enabled,
        );
        let endpoints = server.endpoints.len();
        let server_index = server.index;
        let size = server.config.size;
        let server_state = server.counters.clone();
        Self {
            state: Mutex::new(KeyState {
                shared: shared.clone(),
                subject: limits::subject(&key.principal()),
                transport: key.transport,
                selector: server.strategy.selector(),
                server,
                views: Vec::new(),
                slots: Vec::new(),
                retiring: Vec::new(),
                creating: 0,
                creating_by_endpoint: vec![0; endpoints],
                endpoint_scratch: Vec::with_capacity(endpoints),
                waiters: VecDeque::new(),
                headers: HeaderMap::new(),
                warm: false,
                last_health_check: Instant::now(),
                released: false,
                last_tick: Instant::now(),
                target: size,
                scale: ScaleStats::new(),
                last_rebalance: Instant::now(),
                last_used: Instant::now(),
                removed: false,
                counters: KeyCounters::default(),
                metrics,
            }),
            server_index,
            server_state,
            key,
            shared,
        }
    }

    /// The synchronous first step of an acquire, under the key's lock: a hit returns the lease
    /// at once (no clock read, no allocation); anything else says what to do next.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        server: &Arc<ServerEntry>,
        ctx: &SelectContext,
    ) -> Result<Lease, Next> {
        let mut st = self.state.lock();
        if st.removed {
            return Err(Next::Removed);
        }
        if self.shared.is_closed() {
            return Err(Next::Closed);
        }
        st.update_server(server, &self.key);
        if self.key.identity.is_anonymous() {
            st.metrics.anonymous.increment(1);
        }
        if st.waiters.is_empty() {
            match st.try_serve(ctx) {
                Some(Grant::Session { id, peer, endpoint }) => {
                    // Hits are recorded as 0 s: this path reads no clock (its cost is the
                    // ~200 ns of `cargo bench --bench acquire`).
                    st.metrics.acquire_seconds.record(0.0);
                    Ok(Lease::new(self.clone(), id, peer, endpoint, true, false))
                }
                Some(grant) => Err(Next::Slow(self.first_step(grant))),
                None => Err(Next::Slow(FirstStep::Wait(self.enqueue(&mut st, *ctx)))),
            }
        } else {
            // Others are queued: join behind them, then let the queue be served in order.
            let guard = self.enqueue(&mut st, *ctx);
            st.serve_waiters();
            Err(Next::Slow(FirstStep::Wait(guard)))
        }
    }

    /// The rest of an acquire that was not a hit: create, or wait in the queue until the
    /// acquire timeout. Records the time it took in `mcp_pool_acquire_seconds`.
    pub(crate) async fn acquire_slow_recorded(
        self: &Arc<Self>,
        first: FirstStep,
        args: AcquireArgs<'_>,
    ) -> Result<Lease, AcquireError> {
        let result = self.acquire_slow(first, args).await;
        if !matches!(result, Err(AcquireError::Removed)) {
            self.record_acquire_time(args.started);
        }
        result
    }

    async fn acquire_slow(
        self: &Arc<Self>,
        first: FirstStep,
        args: AcquireArgs<'_>,
    ) -> Result<Lease, AcquireError> {
        let grant = match first {
            FirstStep::Lease(lease) => return Ok(lease),
            FirstStep::Create(endpoint, attempt) => {
                return self.create_for(endpoint, attempt, args).await;
            }
            FirstStep::CircuitOpen(at) => return Err(self.circuit_open(at).into()),
            FirstStep::NoEndpoint => return Err(self.no_endpoint().into()),
            FirstStep::Capped(cap) => return Err(AcquireError::Capped(cap)),
            FirstStep::Wait(mut guard) => {
                match tokio::time::timeout_at(args.deadline, &mut guard.rx).await {
                    Ok(Ok(grant)) => {
                        guard.granted = true;
                        grant
                    }
                    Ok(Err(_)) => {
                        // Senders are dropped without a grant only by close() or key removal.
                        guard.granted = true;
                        return Err(if self.shared.is_closed() {
                            PoolError::Closed.into()
                        } else {
                            AcquireError::Removed
                        });
                    }
                    Err(_) => {
                        drop(guard);
                        return Err(self.timed_out(args.deadline).into());
                    }
                }
            }
        };
        match self.first_step(grant) {
            FirstStep::Lease(lease) => Ok(lease),
            FirstStep::Create(endpoint, attempt) => self.create_for(endpoint, attempt, args).await,
            FirstStep::CircuitOpen(at) => Err(self.circuit_open(at).into()),
            FirstStep::NoEndpoint => Err(self.no_endpoint().into()),
            FirstStep::Capped(cap) => Err(AcquireError::Capped(cap)),
            FirstStep::Wait(_) => unreachable!("grants never say wait"),
        }
    }

    /// Records a call's outcome through a lease on `endpoint` in the health scores.
    pub(crate) fn record_call(&self, endpoint: usize, success: bool) {
        self.server_state
            .health
            .lock()
            .record(Some(endpoint), success, Instant::now());
    }

    fn record_acquire_time(&self, started: Instant) {
        let elapsed = started.elapsed();
        self.state
            .lock()
            .metrics
            .acquire_seconds
            .record(elapsed.as_secs_f64());
    }

    fn first_step(self: &Arc<Self>, grant: Grant) -> FirstStep {
        match grant {
            Grant::Session { id, peer, endpoint } => {
                FirstStep::Lease(Lease::new(self.clone(), id, peer, endpoint, true, false))
            }
            Grant::Create { endpoint, attempt } => FirstStep::Create(endpoint, attempt),
            Grant::NoEndpoint => FirstStep::NoEndpoint,
            Grant::CircuitOpen(at) => FirstStep::CircuitOpen(at),
            Grant::Capped(cap) => FirstStep::Capped(cap),
        }
    }

    fn enqueue(self: &Arc<Self>, st: &mut KeyState, ctx: SelectContext) -> WaiterGuard {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.waiter_id();
        st.waiters.push_back(Waiter {
            id,
            ctx,
            tx,
            since: Instant::now(),
        });
        st.metrics.waiters.increment(1.0);
        WaiterGuard {
            key: self.clone(),
            id,
            rx,
            granted: false,
        }
    }

    fn circuit_open(&self, retry_at: Instant) -> PoolError {
        PoolError::CircuitOpen {
            server: self.key.server.clone(),
            transport: self.key.transport,
            retry_in: retry_at.saturating_duration_since(Instant::now()),
        }
    }

    fn no_endpoint(&self) -> PoolError {
        PoolError::NoEndpoint {
            server: self.key.server.clone(),
            transport: self.key.transport,
        }
    }

    fn timed_out(&self, deadline: Instant) -> PoolError {
        let mut st = self.state.lock();
        st.counters.timeouts += 1;
        st.metrics.timeouts.increment(1);
        let waited = st.server.config.timeout;
        if st.server.config.auto_scale {
            st.scale.waited(waited);
        }
        tracing::debug!(key = %self.key.short(), ?deadline, "acquire timed out");
        PoolError::Timeout {
            server: self.key.server.clone(),
            transport: self.key.transport,
            waited,
            in_use: st.total(),
            max_size: st.server.config.max_size,
            waiters: st.waiters.len(),
        }
    }

    /// Creates a session on `endpoint` for an acquire (the slot is already reserved) and
    /// hands it out.
    async fn create_for(
        self: &Arc<Self>,
        endpoint: usize,
        attempt: Attempt,
        args: AcquireArgs<'_>,
    ) -> Result<Lease, AcquireError> {
        let mut reservation = Reservation {
            key: self.clone(),
            endpoint,
            armed: true,
            user_slot: None,
            attempt: Some(attempt),
        };
        if !reservation.take_user_slot().await {
            drop(reservation);
            return Err(AcquireError::Capped(Cap::User));
        }
        let remaining = args.deadline.saturating_duration_since(Instant::now());
        let timeout = self
            .shared
            .create_timeout
            .min(remaining)
            .max(Duration::from_millis(1));
        let session = self.connect(endpoint, args.headers, timeout).await;
        let mut st = self.state.lock();
        match session {
            Ok(session) => {
                let lease = reservation.fill(&mut st, session, &args.ctx, true, Some(args.headers));
                lease.ok_or(AcquireError::Pool(PoolError::Closed))
            }
            Err(source) => {
                st.counters.create_failures += 1;
                reservation.failed(&mut st);
                drop(st);
                drop(reservation);
                Err(PoolError::Create {
                    server: self.key.server.clone(),
                    source,
                }
                .into())
            }
        }
    }

    async fn connect(
        &self,
        endpoint: usize,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<ClientSession, TransportError> {
        let server = self.state.lock().server.clone();
        let endpoint = &server.endpoints[endpoint];
        let transport = self
            .shared
            .transports
            .get(&endpoint.transport)
            .ok_or(TransportError::Unsupported(endpoint.transport))?;
        let request = ConnectRequest::new(endpoint, headers, timeout, &self.shared.client_config);
        transport.connect(request).await
    }

    /// Returns a lease's session.
    pub(crate) fn release(&self, id: SessionId, broken: bool) {
        let mut st = self.state.lock();
        st.counters.releases += 1;
        st.give_back(id, broken);
        st.serve_waiters();
    }

    /// Creates one session in the background (to reach `min_size`), if there is room.
    pub(crate) fn spawn_create(self: &Arc<Self>) {
        let (endpoint, attempt) = {
            let mut st = self.state.lock();
            if st.removed || self.shared.is_closed() || st.total() >= st.server.config.max_size {
                return;
            }
            let ctx = SelectContext::default();
            match st.reserve_create(&ctx) {
                Ok(reserved) => reserved,
                Err(_) => return,
            }
        };
        let key = self.clone();
        self.shared.runtime.spawn(async move {
            let mut reservation = Reservation {
                key: key.clone(),
                endpoint,
                armed: true,
                user_slot: None,
                attempt: Some(attempt),
            };
            if !reservation.take_user_slot().await {
                return;
            }
            let (headers, timeout) = {
                let st = key.state.lock();
                (st.headers.clone(), key.shared.create_timeout)
            };
            let result = key.connect(endpoint, &headers, timeout).await;
            let mut st = key.state.lock();
            match result {
                Ok(session) => {
                    reservation.fill(&mut st, session, &SelectContext::default(), false, None);
                    st.serve_waiters();
                }
                Err(error) => {
                    st.counters.create_failures += 1;
                    reservation.failed(&mut st);
                    drop(st);
                    drop(reservation);
                    tracing::debug!(key = %key.key.short(), %error, "background session creation failed");
                }
            }
        });
    }

    /// Closes idle sessions past `max_lifetime`, or past `max_idle_time` above `min_size`; says
    /// whether the key is idle (nothing in use, waiting or being created) since `key_idle`
    /// ago, and how many sessions are missing to reach `min_size`.
    pub(crate) fn reap(&self, now: Instant, key_idle: Duration) -> ReapOutcome {
        // The server map is read before the key's lock is taken, never under it: the acquire
        // path takes them in the other order.
        let server = self.shared.server(&self.key.server);
        let mut st = self.state.lock();
        if let Some(server) = server {
            st.update_server(&server, &self.key);
        }
        st.settle_use(now);
        st.last_tick = now;
        let config = st.server.config.clone();
        let mut i = st.views.len();
        while i > 0 {
            i -= 1;
            if st.views[i].in_flight > 0 {
                continue;
            }
            let slot = &st.slots[i];
            let reason = if now.duration_since(slot.created_at) >= config.max_lifetime {
                Some(EvictionReason::Lifetime)
            } else if now.duration_since(slot.last_used) >= config.max_idle_time
                && st.views.len() as u32 > config.min_size
            {
                Some(EvictionReason::Idle)
            } else {
                None
            };
            if let Some(reason) = reason {
                st.retire(i, reason);
            }
        }
        st.serve_waiters();
        let busy = st.views.iter().any(|v| v.in_flight > 0)
            || !st.retiring.is_empty()
            || st.creating > 0
            || !st.waiters.is_empty();
        let idle_key = !busy && now.duration_since(st.last_used) >= key_idle;
        let missing = if st.server.pools() && st.warm && !st.removed {
            config.min_size.saturating_sub(st.total())
        } else {
            0
        };
        ReapOutcome { idle_key, missing }
    }

    /// Retires every session (`reason` = drained or closed); in-use ones close on release.
    /// With `remove`, the key is marked removed and its queued acquires are woken with nothing
    /// (they then see the pool closed, or look the key up again).
    pub(crate) fn retire_all(&self, reason: EvictionReason, remove: bool) {
        let mut st = self.state.lock();
        while !st.views.is_empty() {
            let last = st.views.len() - 1;
            st.retire(last, reason);
        }
        if remove {
            st.removed = true;
            let waiters = st.waiters.len();
            st.waiters.clear();
            st.metrics.waiters.decrement(waiters as f64);
        } else {
            st.serve_waiters();
        }
    }

    /// The sessions due for a health check: idle, and unused for at least
    /// `health_check_interval` (a session in use proves itself through its calls, which count
    /// in the health score). They are taken out of use until
    /// [`health_checked`](Self::health_checked) gives them back.
    pub(crate) fn health_due(&self, now: Instant) -> Vec<(SessionId, Arc<Peer<RoleClient>>)> {
        let mut st = self.state.lock();
        if st.removed
            || !st.server.pools()
            || now.duration_since(st.last_health_check) < st.server.config.health_check_interval
        {
            return Vec::new();
        }
        st.last_health_check = now;
        st.settle_use(now);
        let interval = st.server.config.health_check_interval;
        let mut due = Vec::new();
        let st = &mut *st;
        for (view, slot) in st.views.iter_mut().zip(&mut st.slots) {
            if view.in_flight == 0
                && slot.checking == 0
                && now.duration_since(slot.last_used) >= interval
            {
                // Full: no acquire picks it while it is being checked.
                slot.checking = view.capacity;
                view.in_flight = view.capacity;
                due.push((view.id, slot.peer.clone()));
            }
        }
        due
    }

    /// Gives a checked session back; a failed one is closed (and `min_size` refilled by the
    /// caller). Returns whether it failed.
    pub(crate) fn health_checked(&self, id: SessionId, outcome: &HealthOutcome) -> bool {
        let failed = !outcome.is_healthy();
        let mut st = self.state.lock();
        let now = Instant::now();
        let endpoint = st.views.iter().find(|v| v.id == id).map(|v| v.endpoint);
        st.server_record(endpoint, !failed, now);
        if failed {
            st.metrics.health_failures.increment(1);
            tracing::info!(
                key = %self.key.short(),
                session = %id,
                method = outcome.method().as_str(),
                "health check failed: closing the session"
            );
        }
        if let Some(i) = st.views.iter().position(|v| v.id == id) {
            let marked = std::mem::take(&mut st.slots[i].checking);
            st.views[i].in_flight -= marked;
            if failed {
                st.retire(i, EvictionReason::Health);
            }
        } else if let Some(i) = st.retiring.iter().position(|r| r.id == id) {
            // Retired (drained) while checked: its check held `checking` of its in-flight count.
            let marked = std::mem::take(&mut st.retiring[i].slot.checking);
            st.retiring[i].in_flight -= marked;
            if st.retiring[i].in_flight == 0 {
                let r = st.retiring.swap_remove(i);
                st.close(r.slot, r.id, r.reason);
            }
        }
        st.serve_waiters();
        failed
    }

    /// Runs the autoscaler when `auto_scale` is on and `rebalance_interval` has passed: moves
    /// the target size, closes idle sessions above it (never in-use ones, never below
    /// `min_size`) and returns how many sessions to create ahead of demand.
    pub(crate) fn rebalance(&self, now: Instant) -> u32 {
        let mut st = self.state.lock();
        let config = st.server.config.clone();
        if st.removed
            || !config.auto_scale
            || !st.server.pools()
            || now.duration_since(st.last_rebalance) < config.rebalance_interval
        {
            return 0;
        }
        st.last_rebalance = now;
        let stats = st.scale.take();
        let before = st.target;
        let decision = decide(&ScaleInputs::new(stats, before, &config));
        st.target = decision.target;
        tracing::info!(
            key = %self.key.short(),
            ?stats,
            from = before,
            to = decision.target,
            action = decision.action.as_str(),
            reason = decision.reason,
            "autoscaler decision"
        );
        st.metrics.autoscale(decision.action.as_str());
        let floor = decision.target.max(config.min_size);
        let mut i = st.views.len();
        while st.views.len() as u32 > floor && i > 0 {
            i -= 1;
            if st.views[i].in_flight == 0 {
                st.retire(i, EvictionReason::Idle);
            }
        }
        st.serve_waiters();
        if st.warm {
            decision.target.saturating_sub(st.total())
        } else {
            0
        }
    }

    /// Sessions missing to reach `min_size` (0 unless the key is warm and pooled).
    pub(crate) fn missing_for_min_size(&self) -> u32 {
        let st = self.state.lock();
        if st.removed || !st.warm || !st.server.pools() {
            return 0;
        }
        st.server.config.min_size.saturating_sub(st.total())
    }

    /// Closes the least recently used idle session of the key, to make room under a pool-wide
    /// cap. `None` when there was none; else the session's slot of the user limit across
    /// workers, which the caller gives back before retrying (so the room is there at once).
    pub(crate) fn evict_one_idle(&self) -> Option<Option<StateId>> {
        let mut st = self.state.lock();
        let oldest = (0..st.views.len())
            .filter(|&i| st.views[i].in_flight == 0)
            .min_by_key(|&i| st.slots[i].last_used)?;
        let user_slot = st.slots[oldest].user_slot.take();
        st.retire(oldest, EvictionReason::Capacity);
        Some(user_slot)
    }

    /// Whether the key holds nothing in use, nothing queued and nothing being created.
    pub(crate) fn is_idle(&self) -> bool {
        let st = self.state.lock();
        st.views.iter().all(|v| v.in_flight == 0)
            && st.retiring.is_empty()
            && st.creating == 0
            && st.waiters.is_empty()
    }

    /// The slots of the user limit across workers held by this key's sessions.
    pub(crate) fn user_slots(&self) -> (Option<Digest256>, Vec<StateId>) {
        let st = self.state.lock();
        let slots = st
            .slots
            .iter()
            .map(|s| &s.user_slot)
            .chain(st.retiring.iter().map(|r| &r.slot.user_slot))
            .flatten()
            .cloned()
            .collect();
        (st.subject, slots)
    }

    /// Whose sessions these are for the user limit.
    pub(crate) fn subject(&self) -> Option<Digest256> {
        self.state.lock().subject
    }

    /// Ends the sticky binding of `ctx` and retires its session.
    pub(crate) fn unbind(&self, ctx: &SelectContext) -> bool {
        let mut st = self.state.lock();
        let Some(id) = st.selector.unbind(ctx) else {
            return false;
        };
        if let Some(i) = st.views.iter().position(|v| v.id == id) {
            st.retire(i, EvictionReason::Unbound);
        }
        st.serve_waiters();
        true
    }

    pub(crate) fn stats(&self) -> KeyStats {
        let st = self.state.lock();
        let active =
            st.views.iter().filter(|v| v.in_flight > 0).count() as u32 + st.retiring.len() as u32;
        let available = st.views.iter().filter(|v| v.has_capacity()).count() as u32;
        KeyStats::new(
            &self.key,
            KeySizes {
                sessions_total: st.views.len() as u32 + st.retiring.len() as u32,
                sessions_active: active,
                sessions_available: available,
                sessions_idle: st.views.iter().filter(|v| v.in_flight == 0).count() as u32,
                sessions_checking: st.slots.iter().filter(|s| s.checking > 0).count() as u32,
                sessions_creating: st.creating,
                waiters: st.waiters.len() as u32,
                target_size: st.target,
            },
            st.counters,
        )
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        // The last lease of a removed key has returned: its counters join the server's totals.
        let st = self.state.get_mut();
        st.server.counters.retired.lock().absorb(&st.counters);
    }
}

/// What the maintenance task learns from [`KeyPool::reap`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReapOutcome {
    pub(crate) idle_key: bool,
    pub(crate) missing: u32,
}

impl KeyState {
    /// Sessions counted against `max_size`: active, retiring and being created.
    fn total(&self) -> u32 {
        (self.views.len() + self.retiring.len()) as u32 + self.creating
    }

    /// Picks up a newer server snapshot (live reconfiguration). A new strategy gets a fresh
    /// selector and the sessions are retired (in-use ones when released): sessions shared
    /// under one strategy must not become, say, exclusive sticky sessions carrying other
    /// conversations' state. A lower `max_size` closes idle sessions above it.
    fn update_server(&mut self, server: &Arc<ServerEntry>, key: &PoolKey) {
        if self.server.generation == server.generation {
            return;
        }
        let strategy_changed = !Arc::ptr_eq(&self.server.strategy, &server.strategy);
        if self.creating_by_endpoint.len() < server.endpoints.len() {
            self.creating_by_endpoint.resize(server.endpoints.len(), 0);
        }
        self.server = server.clone();
        if strategy_changed {
            while !self.views.is_empty() {
                self.retire(self.views.len() - 1, EvictionReason::Drained);
            }
            self.selector = server.strategy.selector();
            self.metrics = KeyMetrics::new(
                &server.id,
                key.transport,
                server.strategy.name(),
                self.shared.metrics_enabled,
            );
        }
        let config = &self.server.config;
        self.target = if config.auto_scale {
            self.target.clamp(config.min_size, config.max_size)
        } else {
            config.size
        };
        self.shrink_to_max();
        for view in &mut self.views {
            view.capacity = server.config.session_concurrency;
        }
    }

    /// Whether `slot` may be past `max_lifetime`: the clock is at most about one cleanup
    /// interval past the last maintenance pass (two, for a late pass).
    fn may_be_expired(&self, slot: &Slot) -> bool {
        let horizon = self.last_tick + self.shared.cleanup_interval * 2;
        horizon.saturating_duration_since(slot.created_at) >= self.server.config.max_lifetime
    }

    /// Folds the releases since the last pass into `last_used` (the key's and its sessions'),
    /// as of `now`.
    fn settle_use(&mut self, now: Instant) {
        if std::mem::take(&mut self.released) {
            self.last_used = now;
        }
        for slot in &mut self.slots {
            if std::mem::take(&mut slot.released) {
                slot.last_used = now;
            }
        }
    }

    /// Feeds the autoscaler's statistics (only when it is on: the sum is O(sessions)).
    fn observe_load(&mut self) {
        if self.server.config.auto_scale {
            let in_use: u32 = self.views.iter().map(|v| v.in_flight).sum();
            let capacity = self.views.len() as u32 * self.server.config.session_concurrency;
            self.scale.observe(in_use, capacity);
        }
    }

    /// Closes idle sessions while the key holds more than `max_size`.
    fn shrink_to_max(&mut self) {
        let max = self.server.config.max_size;
        let mut i = self.views.len();
        while self.total() > max && i > 0 {
            i -= 1;
            if self.views[i].in_flight == 0 {
                self.retire(i, EvictionReason::Drained);
            }
        }
    }

    /// Serves an acquire right now if possible: a session with capacity (hit), or a reserved
    /// creation (miss). `None` means wait.
    fn try_serve(&mut self, ctx: &SelectContext) -> Option<Grant> {
        let selection = if self.server.pools() {
            self.selector.select(&self.views, ctx)
        } else {
            Selection::Create
        };
        match selection {
            Selection::Session(i) if self.views.get(i).is_some_and(SessionView::has_capacity) => {
                if self.slots[i].peer.is_transport_closed() {
                    // SSE and WebSocket sessions report their death (one atomic load): never
                    // hand one out; select again without it.
                    self.retire(i, EvictionReason::Broken);
                    return self.try_serve(ctx);
                }
                Some(self.take(i))
            }
            Selection::Session(i) => {
                tracing::warn!(
                    strategy = self.server.strategy.name(),
                    index = i,
                    "strategy selected a session without capacity; creating instead"
                );
                self.grant_create(ctx)
            }
            Selection::Create => self.grant_create(ctx),
            Selection::Wait => None,
        }
    }

    fn grant_create(&mut self, ctx: &SelectContext) -> Option<Grant> {
        if self.total() >= self.server.config.max_size {
            return None;
        }
        Some(match self.reserve_create(ctx) {
            Ok((endpoint, attempt)) => {
                self.counters.misses += 1;
                self.metrics.misses.increment(1);
                Grant::Create { endpoint, attempt }
            }
            Err(Refusal::NoEndpoint) => Grant::NoEndpoint,
            Err(Refusal::Capped(cap)) => Grant::Capped(cap),
            Err(Refusal::CircuitOpen(at)) => Grant::CircuitOpen(at),
        })
    }

    /// Reserves a creation slot on the endpoint the selector picks, counted against the
    /// pool-wide caps. `Err(None)`: no endpoint is available; `Err(Some(cap))`: a cap is reached.
    fn reserve_create(&mut self, ctx: &SelectContext) -> Result<(usize, Attempt), Refusal> {
        let now = Instant::now();
        let shared = self.shared.clone();
        let counters = self.server.counters.clone();
        let mut health = counters.health.lock();
        health.ensure(self.server.endpoints.len(), shared.breaker, now);
        // Endpoints of another transport than the key's, or whose circuit is open, are
        // unavailable to it.
        let transport = self.transport;
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
                    && !health.endpoints[i].breaker.is_open(now),
            });
        }
        let mut retry_at: Option<Instant> = None;
        let (endpoint, attempt) = loop {
            let Some(endpoint) = self.selector.select_endpoint(&self.endpoint_scratch, ctx) else {
                return Err(match (any_of_transport, retry_at) {
                    (true, Some(at)) => Refusal::CircuitOpen(at),
                    (true, None) => {
                        // Every endpoint of the transport was open before asking.
                        let at = (0..self.server.endpoints.len())
                            .filter(|&i| self.server.endpoints[i].transport == transport)
                            .filter_map(|i| match health.endpoints[i].breaker.state() {
                                BreakerState::Open { until } => Some(until),
                                _ => None,
                            })
                            .min();
                        at.map_or(Refusal::NoEndpoint, Refusal::CircuitOpen)
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
            match health.endpoints[endpoint].breaker.try_acquire(now) {
                Ok(attempt) => break (endpoint, attempt),
                Err(open) => {
                    // Half-open with its probe out: try another endpoint.
                    self.endpoint_scratch[endpoint].available = false;
                    retry_at = Some(retry_at.map_or(open.retry_at, |r| r.min(open.retry_at)));
                }
            }
        };
        if let Err(cap) = shared.limits.try_reserve(self.subject) {
            health.endpoints[endpoint]
                .breaker
                .record(attempt, Outcome::Cancelled, now);
            return Err(Refusal::Capped(cap));
        }
        self.creating += 1;
        self.creating_by_endpoint[endpoint] += 1;
        Ok((endpoint, attempt))
    }

    /// Records an operation's outcome in the server's and the endpoint's health scores.
    fn server_record(&self, endpoint: Option<usize>, success: bool, now: Instant) {
        self.server
            .counters
            .health
            .lock()
            .record(endpoint, success, now);
    }

    /// Reports how a creation on `endpoint` went to its circuit breaker and the health scores
    /// (a cancellation is no evidence either way).
    fn record_creation(&mut self, endpoint: usize, attempt: Attempt, outcome: Outcome) {
        let now = Instant::now();
        let counters = self.server.counters.clone();
        let mut health = counters.health.lock();
        if let Some(e) = health.endpoints.get_mut(endpoint)
            && e.breaker.record(attempt, outcome, now)
        {
            self.metrics.breaker_trips.increment(1);
            tracing::warn!(
                server = %self.server.id,
                endpoint = %self.server.endpoints[endpoint].url,
                "circuit breaker opened"
            );
        }
        match outcome {
            Outcome::Success => health.record(Some(endpoint), true, now),
            Outcome::Failure => health.record(Some(endpoint), false, now),
            Outcome::Cancelled => {}
        }
    }

    /// Gives back a creation slot whose session was never made.
    fn unreserve(&mut self, endpoint: usize) {
        self.creating -= 1;
        self.creating_by_endpoint[endpoint] -= 1;
        self.shared.limits.release(self.subject);
    }

    /// Closes a session that left the key, giving its place under the caps back.
    fn close(&self, slot: Slot, id: SessionId, reason: EvictionReason) {
        self.shared.limits.release(self.subject);
        self.shared.release_user_slot(self.subject, slot.user_slot);
        self.shared.close_session(slot.session, id, reason);
    }

    /// Hands out one lease on active session `i`.
    fn take(&mut self, i: usize) -> Grant {
        let view = &mut self.views[i];
        view.in_flight += 1;
        let (id, endpoint) = (view.id, view.endpoint);
        if view.in_flight == 1 {
            self.metrics.activate(true);
        }
        self.observe_load();
        let slot = &mut self.slots[i];
        slot.use_count += 1;
        self.counters.hits += 1;
        self.metrics.hits.increment(1);
        Grant::Session {
            id,
            peer: slot.peer.clone(),
            endpoint,
        }
    }

    /// Takes a grant back from a waiter that is gone.
    fn undo(&mut self, grant: Grant) {
        match grant {
            Grant::Session { id, .. } => {
                // The session may have been retired (drain) since the grant.
                self.give_back(id, false);
                self.counters.hits -= 1;
            }
            Grant::Create { endpoint, attempt } => {
                self.record_creation(endpoint, attempt, Outcome::Cancelled);
                self.unreserve(endpoint);
                self.counters.misses -= 1;
            }
            Grant::NoEndpoint | Grant::Capped(_) | Grant::CircuitOpen(_) => {}
        }
    }

    /// Takes one lease of session `id` back: active sessions are retired when broken, unpooled
    /// or past `max_lifetime`; retiring ones close with their last lease.
    ///
    /// A release reads the clock only for a session that may have reached `max_lifetime`:
    /// idle times are measured at the maintenance's granularity (`cleanup_interval`).
    fn give_back(&mut self, id: SessionId, broken: bool) {
        self.released = true;
        if let Some(i) = self.views.iter().position(|v| v.id == id) {
            self.views[i].in_flight -= 1;
            self.slots[i].released = true;
            self.observe_load();
            if self.views[i].in_flight == 0 {
                self.metrics.activate(false);
            }
            let reason = if broken {
                Some(EvictionReason::Broken)
            } else if !self.server.pools() {
                Some(EvictionReason::Unpooled)
            } else if self.may_be_expired(&self.slots[i])
                && Instant::now().duration_since(self.slots[i].created_at)
                    >= self.server.config.max_lifetime
            {
                Some(EvictionReason::Lifetime)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.retire(i, reason);
            } else if self.views[i].in_flight == 0 && self.total() > self.server.config.max_size {
                // max_size was lowered while this session was in use.
                self.retire(i, EvictionReason::Drained);
            }
        } else if let Some(i) = self.retiring.iter().position(|r| r.id == id) {
            let retiring = &mut self.retiring[i];
            retiring.in_flight -= 1;
            if retiring.in_flight == 0 {
                let r = self.retiring.swap_remove(i);
                self.metrics.session(true, -1.0);
                self.close(r.slot, r.id, r.reason);
            }
        }
    }

    /// Removes active session `i`: closed now if idle, else retiring until its leases return.
    fn retire(&mut self, i: usize, reason: EvictionReason) {
        let view = self.views.remove(i);
        let slot = self.slots.remove(i);
        self.selector.on_removed(view.id, reason);
        self.counters.evictions += 1;
        self.metrics.evicted(reason);
        if view.in_flight == 0 {
            self.metrics.session(false, -1.0);
            self.close(slot, view.id, reason);
        } else {
            self.retiring.push(Retiring {
                id: view.id,
                slot,
                in_flight: view.in_flight,
                reason,
            });
        }
    }

    /// Serves queued acquires in FIFO order while anything can be served. A waiter that must
    /// wait for a specific session (sticky) does not block those behind it.
    fn serve_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            if !self.has_room() {
                break;
            }
            let ctx = self.waiters[i].ctx;
            match self.try_serve(&ctx) {
                Some(grant) => {
                    let Some(waiter) = self.waiters.remove(i) else {
                        break;
                    };
                    self.metrics.waiters.decrement(1.0);
                    if self.server.config.auto_scale {
                        self.scale.waited(waiter.since.elapsed());
                    }
                    if let Err(grant) = waiter.tx.send(grant) {
                        self.undo(grant);
                    }
                }
                None => i += 1,
            }
        }
    }

    /// Whether any acquire could be served now.
    fn has_room(&self) -> bool {
        self.total() < self.server.config.max_size
            || self.views.iter().any(SessionView::has_capacity)
    }
}

/// A reserved creation slot: dropped unfilled (failure, cancellation), it gives the slot back
/// and wakes waiters.
struct Reservation {
    key: Arc<KeyPool>,
    endpoint: usize,
    armed: bool,
    user_slot: Option<StateId>,
    /// The endpoint breaker's permit: reported as a success (filled), a failure (`failed`) or
    /// a cancellation (dropped).
    attempt: Option<Attempt>,
}

impl Reservation {
    /// The creation failed: the breaker and the scores hear of it.
    fn failed(&mut self, st: &mut KeyState) {
        if let Some(attempt) = self.attempt.take() {
            st.record_creation(self.endpoint, attempt, Outcome::Failure);
        }
    }

    /// Takes a slot of the user limit across workers, when there is one to take. `false`:
    /// the user is at the limit in the other workers.
    async fn take_user_slot(&mut self) -> bool {
        let shared = &self.key.shared;
        let (Some(slots), Some(subject)) = (
            shared.user_slots.get(),
            limits::subject(&self.key.key.principal()),
        ) else {
            return true;
        };
        match slots.take(&subject).await {
            Ok(slot) => {
                self.user_slot = slot;
                true
            }
            Err(()) => false,
        }
    }

    /// Turns the reservation into an active session; with `lease`, one lease on it is returned.
    fn fill(
        mut self,
        st: &mut KeyState,
        session: ClientSession,
        ctx: &SelectContext,
        lease: bool,
        headers: Option<&HeaderMap>,
    ) -> Option<Lease> {
        self.armed = false;
        st.creating -= 1;
        st.creating_by_endpoint[self.endpoint] -= 1;
        if let Some(attempt) = self.attempt.take() {
            st.record_creation(self.endpoint, attempt, Outcome::Success);
        }
        let shared = &self.key.shared;
        let id = shared.session_id();
        if st.removed || shared.is_closed() {
            let now = Instant::now();
            let slot = Slot {
                peer: Arc::new(session.peer().clone()),
                user_slot: self.user_slot.take(),
                session,
                created_at: now,
                last_used: now,
                use_count: 0,
                checking: 0,
                released: false,
            };
            st.close(slot, id, EvictionReason::Closed);
            st.serve_waiters();
            return None;
        }
        let binding = st.selector.on_created(id, ctx);
        if binding == Binding::Rebound {
            st.counters.rebinds += 1;
            st.metrics.rebinds.increment(1);
        }
        if let Some(headers) = headers {
            st.warm = true;
            if st.headers != *headers {
                st.headers = headers.clone();
            }
        }
        let now = Instant::now();
        let endpoint = &st.server.endpoints[self.endpoint];
        st.views.push(SessionView {
            id,
            endpoint: self.endpoint,
            in_flight: u32::from(lease),
            capacity: st.server.config.session_concurrency,
            weight: endpoint.weight,
        });
        let peer = Arc::new(session.peer().clone());
        st.slots.push(Slot {
            peer: peer.clone(),
            user_slot: self.user_slot.take(),
            session,
            created_at: now,
            last_used: now,
            use_count: u64::from(lease),
            checking: 0,
            released: false,
        });
        st.metrics.session(lease, 1.0);
        lease.then(|| {
            Lease::new(
                self.key.clone(),
                id,
                peer,
                self.endpoint,
                false,
                binding == Binding::Rebound,
            )
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.key.state.lock();
            if let Some(attempt) = self.attempt.take() {
                st.record_creation(self.endpoint, attempt, Outcome::Cancelled);
            }
            st.unreserve(self.endpoint);
            st.serve_waiters();
        }
        let subject = limits::subject(&self.key.key.principal());
        self.key
            .shared
            .release_user_slot(subject, self.user_slot.take());
    }
}

/// A queued acquire. Dropped before its grant was taken (timeout, cancellation), it leaves the
/// queue, or gives back a grant that raced in.
#[derive(Debug)]
pub(crate) struct WaiterGuard {
    key: Arc<KeyPool>,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    granted: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut st = self.key.state.lock();
        if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
            st.waiters.remove(pos);
            st.metrics.waiters.decrement(1.0);
        } else if let Ok(grant) = self.rx.try_recv() {
            // Granted under the lock before we got it: hand it on.
            st.undo(grant);
            st.serve_waiters();
        }
    }
}
