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
    AffinityState, Binding, ClientSession, ConnectRequest, Conversation, Digest256, Endpoint,
    EndpointView, EvictionReason, LeaseReport, PoolKey, SelectContext, Selection, Selector,
    SessionHandler, SessionId, SessionView, StateId, TransportError, TransportKind,
};
use parking_lot::Mutex;
use tokio::{
    sync::oneshot,
    time::{Duration, Instant},
};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::task_tracker::TaskTrackerToken,
};

use crate::{
    Lease, PoolError,
    autoscale::{ScaleInputs, ScaleStats, decide},
    breaker::{Attempt, Open, Outcome},
    health::HealthOutcome,
    lease::Link,
    limits::{self, Cap},
    metrics::KeyMetrics,
    pins::{Pins, Route},
    pool::KeyId,
    server::ServerEntry,
    shared::{FastHash, Shared},
    stats::{KeySizes, KeyStats, SessionInfo, SessionState},
};

/// A live session of a key.
#[derive(Debug)]
struct Slot {
    session: ClientSession,
    /// This session's slot of the user limit across workers, if one was taken.
    user_slot: Option<StateId>,
    /// Shared by the leases on this session: one reference count instead of a `Peer` clone
    /// (about ten of them) per acquire.
    peer: Arc<Link>,
    created_at: Instant,
    last_used: Instant,
    use_count: u64,
    /// Capacity taken by a health check in progress, or by the probe of an abandoned call
    /// (0 when none).
    checking: u32,
    /// Whether `checking` is the probe of an abandoned call (issue 10, item 3), not a periodic
    /// health check: probes are per session and not limited to one per key.
    probing: bool,
    /// Released since `last_used` was last brought up to date: releases read no clock, the
    /// maintenance and health passes fold this into `last_used` (see [`KeyState::settle_use`]).
    released: bool,
    /// The key's release sequence number at this session's last release (or creation): the
    /// exact least-recently-used order, without a clock read on the release path.
    release_seq: u64,
    /// When its last health check ended.
    last_checked: Instant,
    /// Whether the `mcp_pool_sessions` gauge counts it as `active` (else `idle`).
    gauge_active: bool,
    /// Created while the server did not pool (pooling off, strategy `none`): a per-request
    /// session, closed when released even if pooling was turned on meanwhile — it served one
    /// request and belongs to no conversation.
    per_request: bool,
    /// Ends the task that evicts the session when it is reported lost
    /// ([`KeyPool::watch_loss`]) when the session leaves the key.
    _watch: Option<DropGuard>,
}

impl Slot {
    fn new(session: ClientSession, user_slot: Option<StateId>, now: Instant, seq: u64) -> Self {
        Self {
            peer: Arc::new(Link::new(&session)),
            session,
            user_slot,
            created_at: now,
            last_used: now,
            use_count: 0,
            checking: 0,
            probing: false,
            released: false,
            release_seq: seq,
            last_checked: now,
            gauge_active: false,
            per_request: false,
            _watch: None,
        }
    }
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
    CircuitOpen(Open),
}

/// A creation slot reserved under the key's lock: the endpoint (as it was then: a
/// reconfiguration may renumber the list before the session exists), the endpoint breaker's
/// permit, and a token of the pool's task tracker, so that [`Pool::close`](crate::Pool::close)
/// waits for the creation to end and its session to close.
#[derive(Debug)]
pub(crate) struct Reserved {
    endpoint: usize,
    target: Endpoint,
    attempt: Attempt,
    token: TaskTrackerToken,
    /// The affinity the session is created for, when the strategy binds (see
    /// [`KeyState::creating_for`]).
    affinity: Option<SelectContext>,
    /// [`KeyState::selector_epoch`] at reservation.
    selector_epoch: u64,
    /// Whether the server pooled at reservation: a creation made for a per-request acquire
    /// stays a per-request session even if pooling was turned on meanwhile.
    pooled: bool,
    /// Made for a conversation whose pinned session is gone ([`crate::pins`]): its lease is a
    /// rebind.
    rebound: bool,
}

/// What a waiter is handed.
#[derive(Debug)]
pub(crate) enum Grant {
    /// A lease on an existing session (its `in_flight` already counts it).
    Session {
        id: SessionId,
        peer: Arc<Link>,
        endpoint: usize,
        /// Whether the selector observes leases (the lease then times itself).
        observes: bool,
        /// The conversation's pinned session is gone: the lease is a rebind.
        rebound: bool,
    },
    /// Permission to create a session (`creating` already counts it).
    Create(Reserved),
    /// Every endpoint's circuit is open; the earliest retry.
    CircuitOpen(Open),
    /// No endpoint of the key's transport is available.
    NoEndpoint,
    /// A pool-wide cap stops a new session.
    Capped(Cap),
}

impl Grant {
    /// Marks a lease or creation as a rebind of a conversation whose pinned session is gone.
    fn rebound(mut self, rebound: bool) -> Self {
        if rebound {
            match &mut self {
                Grant::Session { rebound, .. } => *rebound = true,
                Grant::Create(reserved) => reserved.rebound = true,
                _ => {}
            }
        }
        self
    }
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
    pub(crate) call_retries: u64,
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
        self.call_retries += other.call_retries;
    }
}

/// Headers kept for background creations. `Debug` shows their names only: the values are
/// credentials (DESIGN §13: never a secret in `Debug`).
#[derive(Default)]
struct ForwardedHeaders(HeaderMap);

impl std::fmt::Debug for ForwardedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Whether two endpoints reach the same place (a weight change keeps the sessions).
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    a.url == b.url && a.transport == b.transport
}

#[derive(Debug)]
pub(crate) struct KeyState {
    shared: Arc<Shared>,
    /// Whose sessions these are for the user limit.
    subject: Option<Digest256>,
    transport: TransportKind,
    server: Arc<ServerEntry>,
    selector: Box<dyn Selector>,
    /// `selector.binds()`, read once per selector.
    binds: bool,
    /// `selector.observes_leases()`, read once per selector: whether leases read the clock
    /// and report their end.
    observes: bool,
    /// `server.pools()` (pooling on and a strategy that pools), read once per snapshot: the
    /// hit and release paths make no virtual call for it.
    pools: bool,
    /// Counts changes of the rules sessions are handed out by (strategy, pooling on or off): a
    /// creation reserved under earlier rules serves its acquire once and binds nothing.
    selector_epoch: u64,
    /// Affinities with a creation in flight, when the selector binds: one conversation never
    /// gets two sessions created for it at once.
    creating_for: Vec<SelectContext>,
    /// Conversations pinned to sessions the strategy shares ([`crate::pins`]).
    pins: Pins,
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
    headers: ForwardedHeaders,
    /// Whether a session was ever created for an acquire: only then does maintenance keep
    /// `min_size` warm (it needs that acquire's headers).
    warm: bool,
    pub(crate) last_used: Instant,
    pub(crate) removed: bool,
    pub(crate) counters: KeyCounters,
    metrics: KeyMetrics,
    last_health_check: Instant,
    /// A health check task is going through the key's sessions (one at a time).
    health_running: bool,
    /// Counts releases: the least-recently-used order of the sessions.
    release_seq: u64,
    /// A session was released since `last_used` was last brought up to date.
    released: bool,
    /// When the maintenance last looked at the key: a lower bound of the clock that releases
    /// use to decide whether a session may have outlived `max_lifetime`.
    last_tick: Instant,
    /// Sessions created at or before this instant may be past `max_lifetime` (the clock is
    /// at most two cleanup intervals past `last_tick`): only their expiry costs a clock read.
    /// `None`: none can be yet.
    expiry_cutoff: Option<Instant>,
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
    /// The session was created on an endpoint that a reconfiguration removed or changed
    /// meanwhile (it was closed): try again, within the same deadline.
    Retry,
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
    /// Create or wait (boxed: the slow path allocates anyway, and the hit path's `Result`
    /// stays small).
    Slow(Box<FirstStep>),
}

#[derive(Debug)]
pub(crate) enum FirstStep {
    Lease(Lease),
    Create(Reserved),
    Wait(WaiterGuard),
    NoEndpoint,
    Capped(Cap),
    CircuitOpen(Open),
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
        let now = Instant::now();
        let selector = server.strategy.selector();
        let mut state = KeyState {
            shared: shared.clone(),
            subject: limits::subject(&key.principal()),
            transport: key.transport,
            binds: selector.binds(),
            observes: selector.observes_leases(),
            pools: server.pools(),
            selector_epoch: 0,
            creating_for: Vec::new(),
            pins: Pins::default(),
            selector,
            server,
            views: Vec::new(),
            slots: Vec::new(),
            retiring: Vec::new(),
            creating: 0,
            creating_by_endpoint: vec![0; endpoints],
            endpoint_scratch: Vec::with_capacity(endpoints),
            waiters: VecDeque::new(),
            headers: ForwardedHeaders::default(),
            warm: false,
            last_health_check: now,
            health_running: false,
            release_seq: 0,
            released: false,
            last_tick: now,
            expiry_cutoff: None,
            target: size,
            scale: ScaleStats::new(),
            last_rebalance: now,
            last_used: now,
            removed: false,
            counters: KeyCounters::default(),
            metrics,
        };
        state.refresh_expiry_cutoff();
        Self {
            state: Mutex::new(state),
            server_index,
            server_state,
            key,
            shared,
        }
    }

    /// The synchronous first step of an acquire, under the key's lock: a hit returns the lease
    /// at once (no clock read, no allocation); anything else says what to do next.
    #[inline]
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
                Some(Grant::Session {
                    id,
                    peer,
                    endpoint,
                    observes,
                    rebound,
                }) => {
                    // Hits are recorded as 0 s: this path reads no clock unless the strategy
                    // observes leases (its cost is the ~200 ns of `cargo bench --bench acquire`).
                    st.metrics.acquire_seconds.record(0.0);
                    Ok(Lease::new(
                        self.clone(),
                        id,
                        peer,
                        endpoint,
                        true,
                        rebound,
                        observes,
                    ))
                }
                Some(grant) => Err(Next::Slow(Box::new(self.first_step(grant)))),
                None => Err(Next::Slow(Box::new(FirstStep::Wait(
                    self.enqueue(&mut st, *ctx),
                )))),
            }
        } else {
            // Others are queued: join behind them, then let the queue be served in order.
            let guard = self.enqueue(&mut st, *ctx);
            st.serve_waiters();
            Err(Next::Slow(Box::new(FirstStep::Wait(guard))))
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
        if !matches!(result, Err(AcquireError::Removed | AcquireError::Retry)) {
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
            FirstStep::Wait(mut guard) => {
                match tokio::time::timeout_at(args.deadline, &mut guard.rx).await {
                    Ok(Ok(grant)) => {
                        guard.granted = true;
                        grant
                    }
                    Ok(Err(_)) => {
                        // Senders are dropped without a grant only when the key is removed,
                        // and a key is removed with waiters only by close().
                        guard.granted = true;
                        return Err(if self.shared.is_closed() {
                            PoolError::Closed.into()
                        } else {
                            AcquireError::Removed
                        });
                    }
                    Err(_) => {
                        drop(guard);
                        return Err(self.timed_out().into());
                    }
                }
            }
            other => return self.after_grant(other, args).await,
        };
        let step = self.first_step(grant);
        self.after_grant(step, args).await
    }

    async fn after_grant(
        self: &Arc<Self>,
        step: FirstStep,
        args: AcquireArgs<'_>,
    ) -> Result<Lease, AcquireError> {
        match step {
            FirstStep::Lease(lease) => Ok(lease),
            FirstStep::Create(reserved) => self.create_for(reserved, args).await,
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

    /// Records a call through a lease on `endpoint` that failed for `error` (in words, no
    /// credentials): a failure in the health scores, and the endpoint's last error.
    pub(crate) fn record_call_failure(&self, endpoint: usize, error: &str) {
        self.server_state
            .health
            .lock()
            .record_failure(endpoint, error, Instant::now());
    }

    /// Evicts session `id` when its handler is reported [lost](SessionHandler::report_lost) or
    /// [forgotten](SessionHandler::report_forgotten), from a task that ends when the returned
    /// guard is dropped (with the session's slot): an idle session that died is gone from the
    /// key at once, not at its next acquire or at the maintenance's next pass.
    fn watch_loss(self: &Arc<Self>, id: SessionId, handler: &SessionHandler) -> DropGuard {
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let key = Arc::downgrade(self);
        let handler = handler.clone();
        // Not tracked by `closing`: it holds nothing to close, and ends with the slot.
        self.shared.runtime.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = handler.lost() => {
                    if let (Some(key), Some(lost)) = (key.upgrade(), handler.lost_cause()) {
                        key.session_lost(id, lost.cause(), true);
                    }
                }
            }
        });
        guard
    }

    /// Session `id` is gone for `cause` (in words): it leaves the key now with reason
    /// [`Lost`](EvictionReason::Lost) — at once if no lease is out on it, else as soon as the
    /// leases return (their calls in flight fail at once: see [`Lease`]) — so no acquire gets
    /// it again, a sticky binding to it is recorded as lost (the next session of its
    /// conversation is a rebind), and `min_size` is refilled. With `record`, the loss counts
    /// as a failure in the health scores and becomes the endpoint's last error (a call that
    /// found out has recorded its own failure already). Does nothing when the session already
    /// left the key.
    pub(crate) fn session_lost(self: &Arc<Self>, id: SessionId, cause: &str, record: bool) {
        {
            let mut st = self.state.lock();
            let Some(i) = st.views.iter().position(|v| v.id == id) else {
                return;
            };
            if record {
                let endpoint = st.views[i].endpoint;
                st.endpoint_failure(endpoint, &format!("session lost: {cause}"));
            }
            tracing::info!(
                key = %self.key.short(),
                session = %id,
                cause,
                "the session is gone: evicting it"
            );
            st.retire(i, EvictionReason::Lost);
            st.serve_waiters();
        }
        self.refill_min_size();
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
            Grant::Session {
                id,
                peer,
                endpoint,
                observes,
                rebound,
            } => FirstStep::Lease(Lease::new(
                self.clone(),
                id,
                peer,
                endpoint,
                true,
                rebound,
                observes,
            )),
            Grant::Create(reserved) => FirstStep::Create(reserved),
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

    /// The error of an acquire refused by open circuits, counted as a failed operation in
    /// the server's health score (issue 10: an outage seen only as refusals must not leave
    /// the score at 99).
    fn circuit_open(&self, open: Open) -> PoolError {
        let now = Instant::now();
        self.server_state.health.lock().record_refusal(now);
        PoolError::CircuitOpen {
            server: self.key.server.clone(),
            transport: self.key.transport,
            retry_in: open.retry_at.saturating_duration_since(now),
            probing: open.probing,
        }
    }

    fn no_endpoint(&self) -> PoolError {
        PoolError::NoEndpoint {
            server: self.key.server.clone(),
            transport: self.key.transport,
        }
    }

    fn timed_out(&self) -> PoolError {
        let mut st = self.state.lock();
        st.counters.timeouts += 1;
        st.metrics.timeouts.increment(1);
        let waited = st.server.config.timeout;
        if st.server.config.auto_scale {
            st.scale.waited(waited);
        }
        tracing::debug!(key = %self.key.short(), "acquire timed out");
        PoolError::Timeout {
            server: self.key.server.clone(),
            transport: self.key.transport,
            waited,
            in_use: st.total(),
            max_size: st.server.config.max_size,
            waiters: st.waiters.len(),
        }
    }

    /// Creates a session for an acquire (the slot is already reserved) and hands it out.
    async fn create_for(
        self: &Arc<Self>,
        reserved: Reserved,
        args: AcquireArgs<'_>,
    ) -> Result<Lease, AcquireError> {
        let mut reservation = Reservation::new(self.clone(), reserved);
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
        let session = self
            .connect(&reservation.target, args.headers, timeout)
            .await;
        let mut st = self.state.lock();
        match session {
            Ok(session) => {
                match reservation.fill(&mut st, session, Some((&args.ctx, args.headers))) {
                    Filled::Lease(lease) => Ok(lease),
                    Filled::Discarded(Discard::Stale) => Err(AcquireError::Retry),
                    Filled::Stored | Filled::Discarded(Discard::Closed) => {
                        Err(AcquireError::Pool(PoolError::Closed))
                    }
                }
            }
            Err(source) => {
                reservation.failed(&mut st, &source);
                drop(st);
                drop(reservation);
                Err(PoolError::Create {
                    server: self.key.server.clone(),
                    error: source,
                }
                .into())
            }
        }
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<ClientSession, TransportError> {
        let transport = self
            .shared
            .transports
            .get(&endpoint.transport)
            .ok_or(TransportError::Unsupported(endpoint.transport))?;
        let (client, own) = {
            let state = self.state.lock();
            (state.server.client.clone(), state.server.headers.clone())
        };
        let handler = SessionHandler::new(client, Some(self.server_state.events.clone()));
        let request = if own.is_empty() {
            ConnectRequest::new(endpoint, headers, timeout, handler)
        } else {
            // The server's own headers win over the caller's of the same name.
            let mut headers = headers.clone();
            for name in own.keys() {
                headers.remove(name);
            }
            headers.extend(own);
            ConnectRequest::new(endpoint, &headers, timeout, handler)
        };
        transport.connect(request).await
    }

    /// Returns the session of a lease whose call was abandoned (timed out, or dropped before
    /// its reply): the session stays out of use, as if checked, until a probe (the health
    /// check chain within [`PoolBuilder::cancel_grace`](crate::PoolBuilder::cancel_grace))
    /// shows the server still answers; else it is evicted (issue 10, item 3).
    pub(crate) fn release_in_doubt(self: &Arc<Self>, id: SessionId, report: Option<&LeaseReport>) {
        let link = {
            let mut st = self.state.lock();
            st.counters.releases += 1;
            if let Some(report) = report {
                st.selector.on_released(report);
            }
            let link = st.hold_for_probe(id);
            st.serve_waiters();
            link
        };
        let Some(link) = link else { return };
        let key = self.clone();
        self.spawn_tracked(async move {
            let outcome = crate::health::check_session(&link.peer, &key.shared.probe).await;
            if !outcome.is_healthy() {
                tracing::info!(
                    key = %key.key.short(),
                    session = %id,
                    "the server did not answer after an abandoned call: evicting the session"
                );
            }
            if key.health_checked(id, &outcome) {
                key.refill_min_size();
            }
        });
    }

    /// Runs `task` on the pool's runtime, tracked: [`Pool::close`](crate::Pool::close) waits
    /// for it.
    pub(crate) fn spawn_tracked(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.shared.closing.spawn_on(task, &self.shared.runtime);
    }

    /// Counts a call retried for `reason` (the metric; the stats' `call_retries`).
    pub(crate) fn count_retry(&self, reason: &'static str) {
        let mut st = self.state.lock();
        st.counters.call_retries += 1;
        st.metrics.retried(reason);
    }

    /// The URL of endpoint `i` of the server, user-info redacted (empty when the server no
    /// longer has it).
    pub(crate) fn endpoint_url(&self, i: usize) -> String {
        self.state
            .lock()
            .server
            .endpoints
            .get(i)
            .map(|e| mcp_pool_traits::redact_url(&e.url).into_owned())
            .unwrap_or_default()
    }

    /// `text` with endpoint `i`'s URL, as configured and redacted, replaced by `the endpoint`:
    /// a cause in words may quote the URL, credentials included.
    pub(crate) fn without_url(&self, i: usize, text: &str) -> String {
        let st = self.state.lock();
        let Some(url) = st.server.endpoints.get(i).map(|e| &e.url[..]) else {
            return text.to_owned();
        };
        let redacted = mcp_pool_traits::redact_url(url);
        text.replace(url, "the endpoint")
            .replace(redacted.as_ref(), "the endpoint")
    }

    /// The server's `call_timeout`.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.state.lock().server.call_timeout
    }

    /// Whether the server's strategy binds conversations to sessions (sticky): a call that
    /// failed on one must not be retried invisibly on another.
    pub(crate) fn binds(&self) -> bool {
        self.state.lock().binds
    }

    /// The per-call headers of a downstream request's `headers`: its trace headers, and its
    /// forwarded credentials when they hash to this key's identity (DESIGN §2.11).
    pub(crate) fn call_headers(&self, headers: &HeaderMap) -> mcp_pool_traits::CallHeaders {
        let mut trace = HeaderMap::new();
        for name in &self.shared.trace_headers {
            for value in headers.get_all(name) {
                trace.append(name.clone(), value.clone());
            }
        }
        let identity = &self.shared.identity;
        let credentials = if identity.identity(headers) == self.key.principal().identity {
            let mut credentials = identity.forwarded_headers(headers);
            // The server's own credentials are never replaced by a caller's.
            for name in self.state.lock().server.headers.keys() {
                credentials.remove(name);
            }
            credentials
        } else {
            tracing::debug!(
                key = %self.key.short(),
                "per-call credentials of another identity: not sent on this session"
            );
            HeaderMap::new()
        };
        mcp_pool_traits::CallHeaders::new(
            mcp_pool_traits::forwardable_headers(&trace),
            mcp_pool_traits::forwardable_headers(&credentials),
        )
    }

    /// Returns a lease's session. `report` is there when the lease timed itself (its
    /// selector [`observes_leases`](mcp_pool_traits::Selector::observes_leases)).
    #[inline]
    pub(crate) fn release(&self, id: SessionId, broken: bool, report: Option<&LeaseReport>) {
        let mut st = self.state.lock();
        st.counters.releases += 1;
        if let Some(report) = report {
            st.selector.on_released(report);
        }
        st.give_back(id, broken);
        st.serve_waiters();
    }

    /// Creates one session in the background (to reach `min_size` or the autoscaler's
    /// target), if the key is pooled and has room. The session binds to no affinity: the
    /// first new conversation that picks it binds it (DESIGN §2.10).
    pub(crate) fn spawn_create(self: &Arc<Self>) {
        let reserved = {
            let mut st = self.state.lock();
            if st.removed
                || self.shared.is_closed()
                || !st.pools
                || st.total() >= st.server.config.max_size
            {
                return;
            }
            match st.reserve_create(&SelectContext::default(), false) {
                Ok(reserved) => reserved,
                Err(_) => return,
            }
        };
        let key = self.clone();
        self.shared.closing.spawn_on(
            async move {
                let mut reservation = Reservation::new(key.clone(), reserved);
                if !reservation.take_user_slot().await {
                    return;
                }
                let headers = key.state.lock().headers.0.clone();
                let result = key
                    .connect(&reservation.target, &headers, key.shared.create_timeout)
                    .await;
                let mut st = key.state.lock();
                match result {
                    Ok(session) => {
                        reservation.fill(&mut st, session, None);
                    }
                    Err(error) => {
                        reservation.failed(&mut st, &error);
                        drop(st);
                        drop(reservation);
                        tracing::debug!(key = %key.key.short(), %error, "background session creation failed");
                    }
                }
            },
            &self.shared.runtime,
        );
    }

    /// Picks up `server` if it is newer than the key's (a configuration change applied at
    /// once, not at the key's next acquire), and serves the queue.
    pub(crate) fn reconfigure(&self, server: &Arc<ServerEntry>) {
        let mut st = self.state.lock();
        if !st.removed && st.update_server(server, &self.key) {
            st.serve_waiters();
        }
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
        st.refresh_expiry_cutoff();
        let config = st.server.config.clone();
        let mut i = st.views.len();
        while i > 0 {
            i -= 1;
            if st.slots[i].peer.handler.is_lost() {
                // Its eviction task has not run yet.
                st.retire(i, EvictionReason::Lost);
                continue;
            }
            if st.slots[i].peer.is_transport_closed() {
                // Dead (SSE, WebSocket and in-process sessions say so), maybe with leases
                // out: a conversation waiting for it is served a new session now, not when
                // the lease comes back.
                st.retire(i, EvictionReason::Broken);
                continue;
            }
            if st.views[i].in_flight > 0 {
                continue;
            }
            let slot = &st.slots[i];
            let reason = if now.duration_since(slot.created_at) >= config.max_lifetime {
                Some(EvictionReason::Lifetime)
            } else if now.duration_since(slot.last_used) >= config.max_idle_time
                && st.views.len() as u32 > config.min_size
                && !st.pins.holds(st.views[i].id)
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
        let idle_key = st.is_idle() && now.duration_since(st.last_used) >= key_idle;
        let missing = if st.pools && st.warm && !st.removed {
            config.min_size.saturating_sub(st.total())
        } else {
            0
        };
        ReapOutcome {
            idle_key,
            missing,
            has_idle: st.views.iter().any(|v| v.in_flight == 0),
            last_used: st.last_used,
        }
    }

    /// Removes the key if it is still idle (for `idle_for` as of `now`, when given): marked
    /// removed and taken out of `keys` under its own lock, so an acquire either got its lease
    /// before or looks the key up again after — never a creation into a removed key. Its
    /// sessions close and its counters join the server's totals.
    pub(crate) fn try_remove(
        self: &Arc<Self>,
        keys: &papaya::HashMap<KeyId, Arc<KeyPool>, FastHash>,
        idle_for: Option<(Instant, Duration)>,
        reason: EvictionReason,
    ) -> bool {
        let mut st = self.state.lock();
        if st.removed || !st.is_idle() {
            return false;
        }
        if let Some((now, idle)) = idle_for {
            st.settle_use(now);
            if now.duration_since(st.last_used) < idle {
                return false;
            }
        }
        let removed = keys
            .pin()
            .remove_if(&KeyId::of(self), |_, k| Arc::ptr_eq(k, self))
            .is_ok_and(|r| r.is_some());
        if removed {
            st.remove(reason);
        }
        removed
    }

    /// `close()`: the key is removed, its sessions close (in-use ones when released) and its
    /// queued acquires are woken with nothing (they see the pool closed).
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        if !st.removed {
            st.remove(EvictionReason::Closed);
        }
    }

    /// Retires every session (`drain()`); in-use ones close on release.
    pub(crate) fn drain(&self) {
        let mut st = self.state.lock();
        st.retire_all(EvictionReason::Drained);
        st.serve_waiters();
    }

    /// Starts a health check round if one is due: `health_check_interval` passed since the
    /// last one and no round is running. The caller then takes sessions one at a time with
    /// [`health_take`](Self::health_take) (DESIGN §7: never more than one session of a key
    /// out of service for a check).
    pub(crate) fn health_round(&self, now: Instant) -> bool {
        let mut st = self.state.lock();
        if st.removed
            || st.health_running
            || !st.pools
            || now.duration_since(st.last_health_check) < st.server.config.health_check_interval
        {
            return false;
        }
        st.last_health_check = now;
        st.health_running = true;
        true
    }

    /// The next session due for a health check — idle, and neither used nor checked for
    /// `health_check_interval` (a session in use proves itself through its calls, which count
    /// in the health score) — taken out of use until [`health_checked`](Self::health_checked)
    /// gives it back. `None` ends the round.
    pub(crate) fn health_take(&self) -> Option<(SessionId, Arc<Link>)> {
        let mut st = self.state.lock();
        let now = Instant::now();
        st.settle_use(now);
        let interval = st.server.config.health_check_interval;
        let due = (!st.removed && !self.shared.is_closed())
            .then(|| {
                (0..st.views.len()).find(|&i| {
                    let (view, slot) = (&st.views[i], &st.slots[i]);
                    view.in_flight == 0
                        && slot.checking == 0
                        && now.duration_since(slot.last_used.max(slot.last_checked)) >= interval
                })
            })
            .flatten();
        let Some(i) = due else {
            st.health_running = false;
            return None;
        };
        // Full: no acquire picks it while it is being checked.
        let capacity = st.views[i].capacity;
        st.slots[i].checking = capacity;
        st.views[i].in_flight = capacity;
        Some((st.views[i].id, st.slots[i].peer.clone()))
    }

    /// Gives a checked session back; a failed one is closed (and `min_size` refilled by the
    /// caller). Returns whether it failed.
    pub(crate) fn health_checked(&self, id: SessionId, outcome: &HealthOutcome) -> bool {
        let failed = !outcome.is_healthy();
        let mut st = self.state.lock();
        let now = Instant::now();
        let endpoint = st.views.iter().find(|v| v.id == id).map(|v| v.endpoint);
        st.server_record(endpoint, !failed, now);
        if let (Some(endpoint), Some(failure)) = (endpoint, outcome.failure()) {
            st.server.counters.health.lock().record_error(
                endpoint,
                &format!(
                    "health check ({}) failed: {failure}",
                    outcome.method().as_str()
                ),
                now,
            );
        }
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
            st.slots[i].probing = false;
            st.views[i].in_flight -= marked;
            st.slots[i].last_checked = now;
            if failed {
                st.retire(i, EvictionReason::Health);
            } else if st.views[i].in_flight == 0 && st.total() > st.server.config.max_size {
                // max_size was lowered while this session was out of use for its check.
                st.retire(i, EvictionReason::Drained);
            } else {
                st.sync_gauge(i);
            }
        } else if let Some(i) = st.retiring.iter().position(|r| r.id == id) {
            // Retired (drained) while checked: its check held `checking` of its in-flight count.
            let marked = std::mem::take(&mut st.retiring[i].slot.checking);
            st.retiring[i].in_flight -= marked;
            if st.retiring[i].in_flight == 0 {
                let r = st.retiring.swap_remove(i);
                st.close_retired(r);
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
            || !st.pools
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
            if st.views[i].in_flight == 0 && !st.pins.holds(st.views[i].id) {
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

    /// Creates, in the background, the sessions missing to reach `min_size` (after sessions
    /// failed their checks).
    pub(crate) fn refill_min_size(self: &Arc<Self>) {
        for _ in 0..self.missing_for_min_size() {
            self.spawn_create();
        }
    }

    /// Sessions missing to reach `min_size` (0 unless the key is warm and pooled).
    pub(crate) fn missing_for_min_size(&self) -> u32 {
        let st = self.state.lock();
        if st.removed || !st.warm || !st.pools {
            return 0;
        }
        st.server.config.min_size.saturating_sub(st.total())
    }

    /// Closes the least recently used idle session of the key, to make room under a pool-wide
    /// cap. `None` when there was none; else the session's slot of the user limit across
    /// workers, which the caller gives back before retrying (so the room is there at once).
    pub(crate) fn evict_one_idle(&self) -> Option<Option<StateId>> {
        let mut st = self.state.lock();
        let oldest = st.least_recently_used_idle()?;
        let user_slot = st.slots[oldest].user_slot.take();
        st.retire(oldest, EvictionReason::Capacity);
        st.serve_waiters();
        Some(user_slot)
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

    /// Where `ctx`'s affinity stands: pinned ([`crate::pins`]), else with this key's selector.
    pub(crate) fn affinity_state(&self, ctx: &SelectContext) -> AffinityState {
        let st = self.state.lock();
        ctx.affinity
            .and_then(|affinity| st.pins.state(&affinity))
            .unwrap_or_else(|| st.selector.affinity_state(ctx))
    }

    /// Pins `ctx`'s conversation to session `id` ([`crate::pins`]) with what it wants of the
    /// session's traffic outside calls. `false` when there is nothing to pin: no affinity, a
    /// strategy that binds (its binding pins already), a session no longer in the key, or a
    /// conversation pinned already (its first pin stays).
    pub(crate) fn pin(
        &self,
        ctx: &SelectContext,
        id: SessionId,
        conversation: Conversation,
    ) -> bool {
        let Some(affinity) = ctx.affinity else {
            return false;
        };
        let mut st = self.state.lock();
        if st.binds || !st.pools {
            return false;
        }
        let Some(i) = st.views.iter().position(|v| v.id == id) else {
            return false;
        };
        if !st.pins.pin(affinity, id) {
            return false;
        }
        st.slots[i].peer.handler.pin(affinity, conversation);
        true
    }

    /// Ends `ctx`'s pin, if any, and its sticky binding, if any, retiring the bound session
    /// (a pinned one is shared: it stays). Returns whether there was either.
    pub(crate) fn unbind(&self, ctx: &SelectContext) -> bool {
        let mut st = self.state.lock();
        let unpinned = match ctx.affinity {
            Some(affinity) if !st.pins.is_empty() => match st.pins.unpin(&affinity) {
                Some(id) => {
                    if let Some(i) = st.views.iter().position(|v| v.id == id) {
                        st.slots[i].peer.handler.unpin(&affinity);
                    }
                    true
                }
                None => false,
            },
            _ => false,
        };
        let Some(id) = st.selector.unbind(ctx) else {
            return unpinned;
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
            st.slots.iter().filter(|s| s.gauge_active).count() as u32 + st.retiring.len() as u32;
        KeyStats::new(
            &self.key,
            KeySizes {
                sessions_total: st.views.len() as u32 + st.retiring.len() as u32,
                sessions_active: active,
                sessions_available: st.views.iter().filter(|v| v.has_capacity()).count() as u32,
                sessions_idle: st.views.iter().filter(|v| v.in_flight == 0).count() as u32,
                sessions_checking: st
                    .slots
                    .iter()
                    .filter(|s| s.checking > 0 && !s.probing)
                    .count() as u32,
                sessions_probing: st
                    .slots
                    .iter()
                    .filter(|s| s.checking > 0 && s.probing)
                    .count() as u32,
                sessions_creating: st.creating,
                waiters: st.waiters.len() as u32,
                target_size: st.target,
            },
            st.counters,
        )
    }
}

impl KeyPool {
    /// Its sessions as [`SessionInfo`]s: active ones, then retiring ones.
    pub(crate) fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let st = self.state.lock();
        let label = crate::stats::key_label(&self.key);
        let info = |id: SessionId, slot: &Slot, leases: u32, endpoint: Option<usize>| {
            let state = if endpoint.is_none() {
                SessionState::Retiring
            } else if slot.checking > 0 && slot.probing {
                SessionState::Probing
            } else if slot.checking > 0 {
                SessionState::Checking
            } else if leases > 0 {
                SessionState::Leased
            } else {
                SessionState::Idle
            };
            let idle_since = if slot.released {
                st.last_tick
            } else {
                slot.last_used
            };
            SessionInfo {
                key: label.clone(),
                session: id.0,
                transport: self.key.transport,
                endpoint,
                url: endpoint
                    .and_then(|i| st.server.endpoints.get(i))
                    .map(|e| mcp_pool_traits::redact_url(&e.url).into_owned()),
                age_secs: now.duration_since(slot.created_at).as_secs_f64(),
                idle_secs: if leases > 0 {
                    0.0
                } else {
                    now.duration_since(idle_since).as_secs_f64()
                },
                use_count: slot.use_count,
                in_flight: leases,
                state,
            }
        };
        let active = st
            .views
            .iter()
            .zip(&st.slots)
            .map(|(v, slot)| info(v.id, slot, v.in_flight - slot.checking, Some(v.endpoint)));
        let retiring = st.retiring.iter().map(|r| {
            info(
                r.id,
                &r.slot,
                r.in_flight.saturating_sub(r.slot.checking),
                None,
            )
        });
        active.chain(retiring).collect()
    }

    /// Zeroes its counters (`Pool::reset_server`).
    pub(crate) fn reset_counters(&self) {
        self.state.lock().counters = KeyCounters::default();
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        // Counters a removed key gathered after its removal (releases of leases that were
        // out then) join the server's totals too.
        let st = self.state.get_mut();
        st.fold_counters();
    }
}

/// What the maintenance task learns from [`KeyPool::reap`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReapOutcome {
    pub(crate) idle_key: bool,
    pub(crate) missing: u32,
    /// The key has an idle session (a candidate to close under a pool-wide cap).
    pub(crate) has_idle: bool,
    /// When the key was last used, as of this pass.
    pub(crate) last_used: Instant,
}

impl KeyState {
    /// Sessions counted against `max_size`: active, retiring and being created.
    fn total(&self) -> u32 {
        (self.views.len() + self.retiring.len()) as u32 + self.creating
    }

    /// Whether a session has no lease out and no health check.
    pub(crate) fn has_idle_session(&self) -> bool {
        self.views.iter().any(|v| v.in_flight == 0)
    }

    /// Nothing in use, nothing retiring, queued or being created.
    fn is_idle(&self) -> bool {
        self.views.iter().all(|v| v.in_flight == 0)
            && self.retiring.is_empty()
            && self.creating == 0
            && self.waiters.is_empty()
    }

    /// Marks the key removed: every session retires (in-use ones close when released), queued
    /// acquires are woken with nothing, and the counters join the server's totals now, so that
    /// the totals never go down (stats show live keys and these totals).
    fn remove(&mut self, reason: EvictionReason) {
        self.removed = true;
        self.retire_all(reason);
        let waiters = self.waiters.len();
        self.waiters.clear();
        self.metrics.waiters.decrement(waiters as f64);
        self.fold_counters();
    }

    fn fold_counters(&mut self) {
        let counters = std::mem::take(&mut self.counters);
        self.server.counters.retired.lock().absorb(&counters);
    }

    fn retire_all(&mut self, reason: EvictionReason) {
        while let Some(last) = self.views.len().checked_sub(1) {
            self.retire(last, reason);
        }
    }

    /// Picks up a newer server snapshot (live reconfiguration); a snapshot that is not newer
    /// than the key's is ignored, so a key only ever moves forward. Returns whether it changed.
    ///
    /// A new strategy gets a fresh selector and the sessions are retired (in-use ones when
    /// released): sessions shared under one strategy must not become, say, exclusive sticky
    /// sessions carrying other conversations' state. Sessions whose endpoint was removed or
    /// now points elsewhere are retired. With pooling off (or strategy `none`) every session is
    /// retired: idle ones close at once (nothing may hand them out, so they must not hold
    /// room), in-use ones when released. A lower
    /// `max_size` closes idle sessions above it.
    #[inline]
    fn update_server(&mut self, server: &Arc<ServerEntry>, key: &PoolKey) -> bool {
        if server.generation <= self.server.generation {
            return false;
        }
        let old = std::mem::replace(&mut self.server, server.clone());
        self.pools = server.pools();
        if !Arc::ptr_eq(&old.strategy, &server.strategy) || old.pools() != server.pools() {
            // Creations in flight were reserved under other rules: they will serve their
            // acquire once and bind nothing (see `Reservation::fill`).
            self.selector_epoch += 1;
            self.creating_for.clear();
        }
        if self.creating_by_endpoint.len() < server.endpoints.len() {
            self.creating_by_endpoint.resize(server.endpoints.len(), 0);
        }
        if !Arc::ptr_eq(&old.strategy, &server.strategy) {
            self.retire_all(EvictionReason::Drained);
            self.selector = server.strategy.selector();
            self.binds = self.selector.binds();
            self.observes = self.selector.observes_leases();
            let metrics = KeyMetrics::new(
                &server.id,
                key.transport,
                server.strategy.name(),
                self.shared.metrics_enabled,
            );
            // What the old label set counts moves to the new one: no series is left stuck.
            for slot in self.retiring.iter().map(|r| &r.slot) {
                self.metrics.session(slot.gauge_active, -1.0);
                metrics.session(slot.gauge_active, 1.0);
            }
            let waiters = self.waiters.len() as f64;
            self.metrics.waiters.decrement(waiters);
            metrics.waiters.increment(waiters);
            self.metrics = metrics;
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
                self.retire(i, EvictionReason::Drained);
            } else if !server.pools() {
                // Pooling off: every session goes (in-use ones when released), also if pooling
                // comes back before that — a conversation then starts afresh.
                self.retire(i, EvictionReason::Unpooled);
            } else {
                if !self.slots[i].per_request {
                    self.views[i].capacity = server.config.session_concurrency;
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
        self.shrink_to_max();
        true
    }

    /// Recomputes [`expiry_cutoff`](Self::expiry_cutoff) after the maintenance pass moved
    /// `last_tick` or a reconfiguration changed `max_lifetime`: the clock is at most about one
    /// cleanup interval past the last pass (two, for a late pass).
    fn refresh_expiry_cutoff(&mut self) {
        let horizon = self.last_tick + self.shared.cleanup_interval * 2;
        self.expiry_cutoff = horizon.checked_sub(self.server.config.max_lifetime);
    }

    /// Whether session `i` is past `max_lifetime`: one comparison, and a clock read only for a
    /// session that may be.
    #[inline]
    fn is_expired(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        self.expiry_cutoff
            .is_some_and(|cutoff| slot.created_at <= cutoff)
            && Instant::now().duration_since(slot.created_at) >= self.server.config.max_lifetime
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
    #[inline]
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

    /// The idle session released longest ago.
    fn least_recently_used_idle(&self) -> Option<usize> {
        (0..self.views.len())
            .filter(|&i| self.views[i].in_flight == 0)
            .min_by_key(|&i| self.slots[i].release_seq)
    }

    /// Keeps the `mcp_pool_sessions` gauge in step with session `i`: active while a lease
    /// (not a health check) is out on it.
    #[inline]
    fn sync_gauge(&mut self, i: usize) {
        let active = self.views[i].in_flight > self.slots[i].checking;
        let slot = &mut self.slots[i];
        if slot.gauge_active != active {
            slot.gauge_active = active;
            self.metrics.activate(active);
        }
    }

    /// Serves an acquire right now if possible: a session with capacity (hit), or a reserved
    /// creation (miss). `None` means wait.
    #[inline]
    fn try_serve(&mut self, ctx: &SelectContext) -> Option<Grant> {
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
            return match selection {
                Selection::Session(i)
                    if self.views.get(i).is_some_and(SessionView::has_capacity) =>
                {
                    let unusable = if self.slots[i].peer.handler.is_lost() {
                        // Reported lost (one atomic load), its eviction not run yet: never
                        // hand it out; select again without it.
                        Some(EvictionReason::Lost)
                    } else if self.slots[i].peer.is_transport_closed() {
                        // SSE, WebSocket and in-process sessions report their death (one
                        // atomic load): never hand one out; select again without it.
                        Some(EvictionReason::Broken)
                    } else if self.is_expired(i) {
                        Some(EvictionReason::Lifetime)
                    } else {
                        None
                    };
                    if let Some(reason) = unusable {
                        if self.binds && self.slots[i].use_count == 0 {
                            // A warm session the strategy just bound to this affinity: it
                            // never served it, so no conversation state was lost with it.
                            self.selector.unbind(ctx);
                        }
                        self.retire(i, reason);
                        continue;
                    }
                    Some(self.take(i).rebound(rebound))
                }
                Selection::Session(i) => {
                    tracing::warn!(
                        strategy = self.server.strategy.name(),
                        index = i,
                        "strategy selected a session without capacity; creating instead"
                    );
                    self.grant_create(ctx).map(|g| g.rebound(rebound))
                }
                Selection::Create => self.grant_create(ctx).map(|g| g.rebound(rebound)),
                Selection::Wait => None,
            };
        }
    }

    /// What serves a pinned conversation ([`crate::pins`]): its session (waiting while it is
    /// busy), or `None` for the strategy to choose — the conversation is not pinned, or its
    /// session is gone (`rebound` is then set, and the loss is reported once).
    #[inline]
    fn pinned(&mut self, ctx: &SelectContext, rebound: &mut bool) -> Option<Selection> {
        if self.pins.is_empty() {
            return None;
        }
        let affinity = ctx.affinity.as_ref()?;
        match self.pins.route(affinity) {
            Route::Free => None,
            Route::Session(id) => match self.views.iter().position(|v| v.id == id) {
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
    fn grant_create(&mut self, ctx: &SelectContext) -> Option<Grant> {
        if self.total() >= self.server.config.max_size {
            let victim = self.least_recently_used_idle()?;
            self.retire(victim, EvictionReason::Capacity);
        }
        Some(match self.reserve_create(ctx, true) {
            Ok(reserved) => {
                self.counters.misses += 1;
                self.metrics.misses.increment(1);
                Grant::Create(reserved)
            }
            Err(Refusal::NoEndpoint) => Grant::NoEndpoint,
            Err(Refusal::Capped(cap)) => Grant::Capped(cap),
            Err(Refusal::CircuitOpen(at)) => Grant::CircuitOpen(at),
        })
    }

    /// Reserves a creation slot on the endpoint the selector picks, counted against the
    /// pool-wide caps. An open circuit breaker lets an acquire (`for_acquire`) probe after
    /// its probe interval, background work after its backoff (see [`crate::breaker`]).
    fn reserve_create(
        &mut self,
        ctx: &SelectContext,
        for_acquire: bool,
    ) -> Result<Reserved, Refusal> {
        let now = Instant::now();
        let shared = self.shared.clone();
        let counters = self.server.counters.clone();
        let mut health = counters.health.lock();
        health.ensure(self.server.endpoints.len(), shared.breaker, now);
        // Endpoints of another transport than the key's, or whose circuit is open, are
        // unavailable to it.
        let transport = self.transport;
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
        let (endpoint, attempt) = loop {
            let Some(endpoint) = self.selector.select_endpoint(&self.endpoint_scratch, ctx) else {
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
                    refused = Some(
                        refused.map_or(open, |r| if open.retry_at < r.retry_at { open } else { r }),
                    );
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
        let affinity = (for_acquire && self.binds && self.pools).then_some(*ctx);
        if let Some(ctx) = affinity {
            self.creating_for.push(ctx);
        }
        Ok(Reserved {
            endpoint,
            target: self.server.endpoints[endpoint].clone(),
            attempt,
            token: shared.closing.token(),
            affinity,
            selector_epoch: self.selector_epoch,
            pooled: self.pools,
            rebound: false,
        })
    }

    /// Records an operation's outcome in the server's and the endpoint's health scores.
    fn server_record(&self, endpoint: Option<usize>, success: bool, now: Instant) {
        self.server
            .counters
            .health
            .lock()
            .record(endpoint, success, now);
    }

    /// Records a failure on `endpoint`, in words (no credentials), in the health scores and as
    /// the endpoint's last error.
    fn endpoint_failure(&self, endpoint: usize, error: &str) {
        self.server
            .counters
            .health
            .lock()
            .record_failure(endpoint, error, Instant::now());
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
                endpoint = %self.server.endpoints.get(endpoint).map_or("?".into(), |e| mcp_pool_traits::redact_url(&e.url)),
                "circuit breaker opened"
            );
        }
        match outcome {
            Outcome::Success => health.record(Some(endpoint), true, now),
            Outcome::Failure => health.record(Some(endpoint), false, now),
            Outcome::Cancelled => {}
        }
    }

    /// A creation ended (filled or not): its slot and its affinity's turn are free.
    ///
    /// `epoch` is the reservation's [`selector_epoch`](Self::selector_epoch): an affinity
    /// reserved under earlier rules was already forgotten (and may have a new creation now).
    fn end_creation(&mut self, endpoint: usize, affinity: Option<SelectContext>, epoch: u64) {
        self.creating -= 1;
        self.creating_by_endpoint[endpoint] -= 1;
        if let Some(ctx) = affinity
            && epoch == self.selector_epoch
            && let Some(i) = self.creating_for.iter().position(|c| *c == ctx)
        {
            self.creating_for.swap_remove(i);
        }
    }

    /// Gives back a creation slot whose session was never made.
    fn unreserve(&mut self, endpoint: usize, affinity: Option<SelectContext>, epoch: u64) {
        self.end_creation(endpoint, affinity, epoch);
        self.shared.limits.release(self.subject);
    }

    /// Closes a session that left the key, giving its place under the caps back.
    fn close(&self, slot: Slot, id: SessionId, reason: EvictionReason) {
        self.shared.limits.release(self.subject);
        self.shared.release_user_slot(self.subject, slot.user_slot);
        self.shared.close_session(slot.session, id, reason);
    }

    /// Closes a retiring session whose last lease (or check) returned.
    fn close_retired(&mut self, r: Retiring) {
        self.metrics.session(r.slot.gauge_active, -1.0);
        self.close(r.slot, r.id, r.reason);
    }

    /// Hands out one lease on active session `i`.
    #[inline]
    fn take(&mut self, i: usize) -> Grant {
        self.views[i].in_flight += 1;
        let (id, endpoint) = (self.views[i].id, self.views[i].endpoint);
        self.sync_gauge(i);
        self.observe_load();
        let slot = &mut self.slots[i];
        slot.use_count += 1;
        self.counters.hits += 1;
        self.metrics.hits.increment(1);
        Grant::Session {
            id,
            peer: slot.peer.clone(),
            endpoint,
            observes: self.observes,
            rebound: false,
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
            Grant::Create(reserved) => {
                self.record_creation(reserved.endpoint, reserved.attempt, Outcome::Cancelled);
                self.unreserve(
                    reserved.endpoint,
                    reserved.affinity,
                    reserved.selector_epoch,
                );
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
    #[inline]
    fn give_back(&mut self, id: SessionId, broken: bool) {
        self.released = true;
        if let Some(i) = self.views.iter().position(|v| v.id == id) {
            self.views[i].in_flight -= 1;
            self.release_seq += 1;
            self.slots[i].release_seq = self.release_seq;
            self.slots[i].released = true;
            self.sync_gauge(i);
            self.observe_load();
            let reason = if broken {
                Some(EvictionReason::Broken)
            } else if !self.pools || self.slots[i].per_request {
                Some(EvictionReason::Unpooled)
            } else if self.is_expired(i) {
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
            // What is left may be a check or the probe of an abandoned call: it holds no
            // conversation, and closing the session ends it too.
            if retiring.in_flight == retiring.slot.checking {
                let r = self.retiring.swap_remove(i);
                self.close_retired(r);
            }
        }
    }

    /// Takes back one lease of session `id` whose call was abandoned, and holds the session
    /// for a probe: every unit of its capacity taken, so no acquire picks it, and counted as
    /// `checking` so that [`KeyPool::health_checked`] gives it back (or closes it). Returns the
    /// session to probe; `None` when it needs no probe (it is retiring, or the release
    /// retires it anyway).
    fn hold_for_probe(&mut self, id: SessionId) -> Option<Arc<Link>> {
        let Some(i) = self.views.iter().position(|v| v.id == id) else {
            self.give_back(id, false);
            return None;
        };
        if !self.pools || self.slots[i].per_request || self.is_expired(i) {
            self.give_back(id, false);
            return None;
        }
        self.released = true;
        self.release_seq += 1;
        let view = &mut self.views[i];
        // The capacity may have been lowered under leases still out.
        let free = view.capacity.saturating_sub(view.in_flight);
        view.in_flight += free;
        let slot = &mut self.slots[i];
        slot.checking += free + 1;
        slot.probing = true;
        slot.release_seq = self.release_seq;
        slot.released = true;
        let link = slot.peer.clone();
        self.sync_gauge(i);
        Some(link)
    }

    /// Removes active session `i`: closed now if no lease is out on it, else retiring until its
    /// leases return.
    fn retire(&mut self, i: usize, reason: EvictionReason) {
        let view = self.views.remove(i);
        let slot = self.slots.remove(i);
        self.selector.on_removed(view.id, reason);
        if self.pins.holds(view.id) {
            self.pins.on_removed(view.id, reason);
        }
        // The conversations pinned to it (by a pin, or by a sticky binding) learn that their
        // state is gone: their channels close.
        slot.peer.handler.unpin_all();
        self.counters.evictions += 1;
        self.metrics.evicted(reason);
        if view.in_flight == slot.checking {
            // No lease out (a health check in progress holds no conversation: closing the
            // session ends the check too).
            self.metrics.session(slot.gauge_active, -1.0);
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
    /// wait for a specific session (sticky) does not block those behind it. Every transition
    /// that may free room ends here: releases, evictions, creations (with
    /// `session_concurrency` > 1 a new session serves more than the acquire it was made for),
    /// failed creations, reconfiguration (DESIGN §2.1, §2.10).
    #[inline]
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

    /// Whether any acquire could be served now: room to create, or a session with capacity
    /// (an idle one at `max_size` can be closed to make room).
    fn has_room(&self) -> bool {
        self.total() < self.server.config.max_size
            || self.views.iter().any(SessionView::has_capacity)
    }
}

/// How a finished creation was filled in.
#[derive(Debug)]
enum Filled {
    /// Handed to the acquire it was made for.
    Lease(Lease),
    /// A background creation, now idle in the key.
    Stored,
    /// Closed at once.
    Discarded(Discard),
}

#[derive(Debug, Clone, Copy)]
enum Discard {
    /// The key was removed (the pool closed).
    Closed,
    /// Its endpoint was removed or changed meanwhile.
    Stale,
}

/// A reserved creation slot: dropped unfilled (failure, cancellation), it gives the slot back
/// and wakes waiters.
struct Reservation {
    key: Arc<KeyPool>,
    endpoint: usize,
    target: Endpoint,
    armed: bool,
    user_slot: Option<StateId>,
    /// The endpoint breaker's permit: reported as a success (filled), a failure (`failed`) or
    /// a cancellation (dropped).
    attempt: Option<Attempt>,
    /// Keeps [`Pool::close`](crate::Pool::close) waiting until the creation ended.
    _token: TaskTrackerToken,
    affinity: Option<SelectContext>,
    selector_epoch: u64,
    pooled: bool,
    rebound: bool,
}

impl Reservation {
    fn new(key: Arc<KeyPool>, reserved: Reserved) -> Self {
        Self {
            key,
            endpoint: reserved.endpoint,
            target: reserved.target,
            armed: true,
            user_slot: None,
            attempt: Some(reserved.attempt),
            _token: reserved.token,
            affinity: reserved.affinity,
            selector_epoch: reserved.selector_epoch,
            pooled: reserved.pooled,
            rebound: reserved.rebound,
        }
    }

    /// The creation failed: counted, and the breaker and the scores hear of it when the
    /// endpoint caused it (a caller's bad credential must not open the circuit for everyone,
    /// DESIGN §2.11).
    fn failed(&mut self, st: &mut KeyState, error: &TransportError) {
        st.counters.create_failures += 1;
        st.server.counters.health.lock().record_error(
            self.endpoint,
            &format!("cannot open a session: {}", error.cause()),
            Instant::now(),
        );
        if let Some(attempt) = self.attempt.take() {
            let outcome = if error.counts_against_endpoint() {
                Outcome::Failure
            } else {
                Outcome::Cancelled
            };
            st.record_creation(self.endpoint, attempt, outcome);
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

    /// Turns the reservation into an active session, then serves the queue. `for_acquire`
    /// (the acquire's context and headers) hands one lease on it to that acquire and lets the
    /// strategy bind it; a background creation (`None`) binds to no affinity.
    fn fill(
        mut self,
        st: &mut KeyState,
        session: ClientSession,
        for_acquire: Option<(&SelectContext, &HeaderMap)>,
    ) -> Filled {
        self.armed = false;
        st.end_creation(self.endpoint, self.affinity, self.selector_epoch);
        if let Some(attempt) = self.attempt.take() {
            st.record_creation(self.endpoint, attempt, Outcome::Success);
        }
        let shared = &self.key.shared;
        let id = shared.session_id();
        let now = Instant::now();
        st.release_seq += 1;
        let mut slot = Slot::new(session, self.user_slot.take(), now, st.release_seq);
        // On an endpoint that still points where it did.
        let current = st
            .server
            .endpoints
            .get(self.endpoint)
            .is_some_and(|e| same_endpoint(e, &self.target));
        // Reserved under the current strategy and pooling mode.
        let same_rules = st.selector_epoch == self.selector_epoch;
        let discard = if st.removed || shared.is_closed() {
            Some((Discard::Closed, EvictionReason::Closed))
        } else if !current {
            Some((Discard::Stale, EvictionReason::Drained))
        } else if for_acquire.is_none() && !(st.pools && same_rules) {
            // Warm-up for a server whose strategy or pooling changed meanwhile.
            Some((Discard::Closed, EvictionReason::Drained))
        } else if for_acquire.is_none() && st.total() >= st.server.config.max_size {
            // Warm-up above a `max_size` lowered meanwhile.
            Some((Discard::Closed, EvictionReason::Drained))
        } else {
            None
        };
        if let Some((discard, reason)) = discard {
            st.close(slot, id, reason);
            st.serve_waiters();
            return Filled::Discarded(discard);
        }
        let lease = for_acquire.is_some();
        // A creation reserved under other rules serves its acquire once, as a per-request
        // session: it binds nothing and closes when released.
        let pooled = self.pooled && st.pools && same_rules;
        let binding = match for_acquire {
            Some((ctx, headers)) if pooled => {
                st.warm = true;
                if st.headers.0 != *headers {
                    st.headers = ForwardedHeaders(headers.clone());
                }
                st.selector.on_created(id, ctx)
            }
            // A per-request session binds nothing; a background one binds no affinity.
            _ => Binding::Unbound,
        };
        slot.per_request = !pooled;
        slot._watch = Some(self.key.watch_loss(id, &slot.peer.handler));
        if binding == Binding::Rebound {
            st.counters.rebinds += 1;
            st.metrics.rebinds.increment(1);
        }
        st.views.push(SessionView {
            id,
            endpoint: self.endpoint,
            in_flight: u32::from(lease),
            // A per-request session serves the acquire it was made for, and no other.
            capacity: if pooled {
                st.server.config.session_concurrency
            } else {
                1
            },
            weight: self.target.weight,
        });
        slot.use_count = u64::from(lease);
        slot.gauge_active = lease;
        let peer = slot.peer.clone();
        st.slots.push(slot);
        st.metrics.session(lease, 1.0);
        // `max_size` may have been lowered while this session was being created.
        st.shrink_to_max();
        let filled = if lease {
            Filled::Lease(Lease::new(
                self.key.clone(),
                id,
                peer,
                self.endpoint,
                false,
                binding == Binding::Rebound || self.rebound,
                st.observes,
            ))
        } else {
            Filled::Stored
        };
        st.serve_waiters();
        filled
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.key.state.lock();
            if let Some(attempt) = self.attempt.take() {
                st.record_creation(self.endpoint, attempt, Outcome::Cancelled);
            }
            st.unreserve(self.endpoint, self.affinity, self.selector_epoch);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mcp_pool_conformance::DuplexTransport;
    use mcp_pool_traits::{
        Endpoint, PoolConfig, Principal, SelectContext, ServerId, StrategyKind, TransportKind,
    };

    use crate::{Pool, ServerConfig, pool::KeyId};

    // Issue 9, item 9: an acquire that loaded an older server snapshot must not roll its key
    // back (retiring every session twice, re-admitting creations above a lowered max_size).
    #[tokio::test(start_paused = true)]
    async fn a_stale_snapshot_never_rolls_a_key_back() {
        let id = ServerId::new("stale").unwrap();
        let endpoint =
            Endpoint::new("http://stale.invalid/mcp", TransportKind::StreamableHttp).unwrap();
        let config = PoolConfig {
            max_size: 3,
            size: 3,
            ..PoolConfig::enabled()
        };
        let pool = Pool::builder()
            .transport(Arc::new(DuplexTransport::new(
                TransportKind::StreamableHttp,
            )))
            .server(ServerConfig::new(id.clone(), endpoint).pool(config.clone()))
            .build()
            .unwrap();
        let user = Principal::user("u");
        drop(pool.acquire(&id, user).await.unwrap());
        let stale = pool.inner.shared.server(&id).unwrap();
        pool.set_pool_config(
            &id,
            PoolConfig {
                strategy: StrategyKind::LeastConnections,
                max_size: 1,
                size: 1,
                ..config
            },
        )
        .unwrap();
        let newest = pool.inner.shared.server(&id).unwrap().generation;
        let key = pool
            .inner
            .keys
            .pin()
            .get(&KeyId {
                server: stale.index,
                principal: user,
                transport: TransportKind::StreamableHttp,
            })
            .cloned()
            .unwrap();
        let lease = key.try_acquire(&stale, &SelectContext::default());
        let st = key.state.lock();
        assert_eq!(st.server.generation, newest, "the key moved back");
        assert_eq!(st.server.config.max_size, 1);
        drop(st);
        drop(lease);
    }
    /// Fault injection: every connect waits `delay` on the paused clock first.
    #[derive(Debug)]
    struct Delayed(DuplexTransport, std::time::Duration);

    #[async_trait::async_trait]
    impl mcp_pool_traits::Transport for Delayed {
        fn kind(&self) -> TransportKind {
            TransportKind::StreamableHttp
        }

        async fn connect(
            &self,
            request: mcp_pool_traits::ConnectRequest<'_>,
        ) -> Result<mcp_pool_traits::ClientSession, mcp_pool_traits::TransportError> {
            tokio::time::sleep(self.1).await;
            self.0.connect(request).await
        }
    }

    // Issue 9, item 8: a key found idle by maintenance gets an acquire before it is removed:
    // the removal must not go ahead (the acquire would end with `PoolError::Closed` on an
    // open pool).
    #[tokio::test(start_paused = true)]
    async fn a_key_that_got_busy_after_it_was_found_idle_is_not_removed() {
        let id = ServerId::new("busy").unwrap();
        let endpoint =
            Endpoint::new("http://busy.invalid/mcp", TransportKind::StreamableHttp).unwrap();
        let inner = DuplexTransport::new(TransportKind::StreamableHttp);
        let pool = Pool::builder()
            .transport(Arc::new(Delayed(inner, std::time::Duration::from_secs(1))))
            .server(ServerConfig::new(id.clone(), endpoint).pool(PoolConfig::enabled()))
            .build()
            .unwrap();
        let user = Principal::user("u");
        let key_id = KeyId {
            server: 0,
            principal: user,
            transport: TransportKind::StreamableHttp,
        };
        // A key whose only session is gone: idle, with nothing in it.
        let lease = pool.acquire(&id, user).await.unwrap();
        lease.mark_broken();
        drop(lease);
        let key = pool.inner.keys.pin().get(&key_id).cloned().unwrap();
        let (idle, now) = (
            std::time::Duration::from_secs(600),
            tokio::time::Instant::now(),
        );
        assert!(
            !key.reap(now, idle).idle_key,
            "its release was just settled"
        );
        assert!(key.reap(now + idle, idle).idle_key);
        // Then an acquire reserves a creation on it.
        let acquire = tokio::spawn({
            let (pool, id) = (pool.clone(), id.clone());
            async move { pool.acquire(&id, user).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(key.stats().sessions_creating, 1);
        assert!(!key.try_remove(
            &pool.inner.keys,
            None,
            mcp_pool_traits::EvictionReason::KeyEvicted
        ));
        let lease = acquire.await.unwrap().expect("a lease, not Closed");
        assert!(!lease.is_hit());
    }
}
