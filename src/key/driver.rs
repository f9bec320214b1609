//! [`KeyPool`]: the async driver of one key's [`KeyState`]. The only code of the key that
//! awaits, locks, spawns, reads the clock and records metrics: each event runs under the key's
//! mutex, grants go to their waiters before it is released (a grant whose waiter is gone is
//! undone at once), and sessions to close are closed after.

use std::sync::Arc;

use http::HeaderMap;
use mcp_pool_traits::{
    AffinityState, ClientSession, ConnectRequest, Conversation, Digest256, Endpoint,
    EvictionReason, LeaseReport, PoolKey, SelectContext, SessionHandler, SessionId, StateId,
    TransportError,
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

use super::{
    effect::{Discard, Effect, Grant, Granted, Refusal},
    guards::{Reservation, WaiterGuard},
    locked::{ForwardedHeaders, KeyPool, Locked, LockedEnv, State, limits_subject},
    state::{KeySettings, KeyState, ReapOutcome},
    upstream::{Link, Live},
};
use crate::{
    PoolError,
    breaker::Open,
    health::HealthOutcome,
    limits::Cap,
    metrics::KeyMetrics,
    server::ServerEntry,
    shared::Shared,
    stats::{KeyStats, SessionInfo},
};

/// Why an acquire that was not served at once did not return a lease.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// The key was removed while the acquire used it, or the session was created on an
    /// endpoint a reconfiguration removed or changed meanwhile (it was closed): look the key
    /// up again and try again, within the same deadline.
    Again,
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

/// An acquire that was not served at once: what the rest of it starts from.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A creation to make, or a refusal.
    Grant(Grant<Arc<Link>>, Option<TaskTrackerToken>),
    /// Queued behind others, or for a busy session.
    Queued(WaiterGuard),
    /// The key was removed: look it up again.
    Removed,
    /// The pool is closed.
    Closed,
}

impl KeyPool {
    pub(crate) fn new(key: PoolKey, shared: Arc<Shared>, server: Arc<ServerEntry>) -> Self {
        let metrics = KeyMetrics::new(
            &server.id,
            key.transport,
            server.strategy.name(),
            shared.metrics_enabled,
        );
        let settings = KeySettings {
            cleanup_interval: shared.cleanup_interval,
            breaker: shared.breaker,
        };
        let server_index = server.index;
        let server_state = server.counters.clone();
        let state = KeyState::new(key.clone(), server, settings, Instant::now());
        Self {
            locked: Mutex::new(Locked {
                state,
                metrics,
                headers: ForwardedHeaders::default(),
            }),
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
    ) -> Result<Granted<Arc<Link>>, Pending> {
        self.with_state(|locked, env| {
            let st = &mut locked.state;
            if st.is_removed() {
                return Err(Pending::Removed);
            }
            if self.shared.is_closed() {
                return Err(Pending::Closed);
            }
            st.reconfigure(server, env);
            if self.key.identity.is_anonymous() {
                locked.metrics.anonymous.increment(1);
            }
            match locked.state.acquire(ctx, env) {
                Some(Grant::Lease(granted)) => {
                    // Hits are recorded as 0 s: this path reads no clock unless the strategy
                    // observes leases (its cost is the ~200 ns of `cargo bench --bench acquire`).
                    locked.metrics.acquire_seconds.record(0.0);
                    Ok(granted)
                }
                Some(grant) => {
                    let token =
                        matches!(grant, Grant::Create(_)).then(|| self.shared.closing.token());
                    Err(Pending::Grant(grant, token))
                }
                None => Err(Pending::Queued(self.enqueue(&mut locked.state, *ctx, env))),
            }
        })
    }

    fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        ctx: SelectContext,
        env: &mut LockedEnv<'_>,
    ) -> WaiterGuard {
        let (tx, rx) = oneshot::channel();
        let id = st.enqueue(ctx, tx, env);
        WaiterGuard::new(self.clone(), id, rx)
    }

    /// The rest of an acquire that was not a hit: create, or wait in the queue until the
    /// acquire timeout. Records the time it took in `mcp_pool_acquire_seconds`.
    pub(crate) async fn acquire_slow(
        self: &Arc<Self>,
        pending: Pending,
        args: AcquireArgs<'_>,
    ) -> Result<Granted<Arc<Link>>, AcquireError> {
        let result = self.acquire_slow_unrecorded(pending, args).await;
        if !matches!(result, Err(AcquireError::Again)) {
            let elapsed = args.started.elapsed();
            self.locked
                .lock()
                .metrics
                .acquire_seconds
                .record(elapsed.as_secs_f64());
        }
        result
    }

    async fn acquire_slow_unrecorded(
        self: &Arc<Self>,
        pending: Pending,
        args: AcquireArgs<'_>,
    ) -> Result<Granted<Arc<Link>>, AcquireError> {
        let (grant, token) = match pending {
            Pending::Grant(grant, token) => (grant, token),
            Pending::Queued(guard) => match guard.wait(args.deadline).await {
                Ok(Some(delivery)) => delivery,
                // Senders are dropped without a grant only when the key is removed, and a key
                // is removed with waiters only by close().
                Ok(None) if self.shared.is_closed() => return Err(PoolError::Closed.into()),
                Ok(None) => return Err(AcquireError::Again),
                Err(()) => return Err(self.timed_out().into()),
            },
            Pending::Removed => return Err(AcquireError::Again),
            Pending::Closed => return Err(PoolError::Closed.into()),
        };
        match grant {
            Grant::Lease(granted) => Ok(granted),
            Grant::Create(ticket) => {
                let token = token.unwrap_or_else(|| self.shared.closing.token());
                self.create_for(Reservation::new(self.clone(), *ticket, token), args)
                    .await
            }
            Grant::Refused(Refusal::CircuitOpen(open)) => Err(self.circuit_open(open).into()),
            Grant::Refused(Refusal::NoEndpoint) => Err(PoolError::NoEndpoint {
                server: self.key.server.clone(),
                transport: self.key.transport,
            }
            .into()),
            Grant::Refused(Refusal::Capped(cap)) => Err(AcquireError::Capped(cap)),
        }
    }

    /// The error of an acquire refused by open circuits, counted as a failed operation in
    /// the server's health score (an outage seen only as refusals must not leave the score at
    /// 99).
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

    fn timed_out(&self) -> PoolError {
        let timed_out = self.with_state(|locked, _| locked.state.timed_out());
        tracing::debug!(key = %self.key.short(), "acquire timed out");
        PoolError::Timeout {
            server: self.key.server.clone(),
            transport: self.key.transport,
            waited: timed_out.waited,
            in_use: timed_out.in_use,
            max_size: timed_out.max_size,
            waiters: timed_out.waiters,
        }
    }

    /// Creates a session for an acquire (its room is reserved) and hands it out.
    async fn create_for(
        self: &Arc<Self>,
        mut reservation: Reservation,
        args: AcquireArgs<'_>,
    ) -> Result<Granted<Arc<Link>>, AcquireError> {
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
        match self
            .connect(reservation.target(), args.headers, timeout)
            .await
        {
            Ok(session) => {
                match self.created(reservation, session, Some((&args.ctx, args.headers))) {
                    Ok(Some(granted)) => Ok(granted),
                    Err(Discard::Stale) => Err(AcquireError::Again),
                    Ok(None) | Err(Discard::Closed) => Err(AcquireError::Pool(PoolError::Closed)),
                }
            }
            Err(source) => {
                reservation.failed(&source);
                Err(PoolError::Create {
                    server: self.key.server.clone(),
                    error: source,
                }
                .into())
            }
        }
    }

    pub(crate) async fn connect(
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
            let locked = self.locked.lock();
            let server = locked.state.server();
            (server.client.clone(), server.headers.clone())
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

    /// Session `id` joins the key (see [`KeyState::created`]); with `for_acquire`, the
    /// acquire's headers become what background creations send.
    fn created(
        self: &Arc<Self>,
        mut reservation: Reservation,
        session: ClientSession,
        for_acquire: Option<(&SelectContext, &HeaderMap)>,
    ) -> Result<Option<Granted<Arc<Link>>>, Discard> {
        let (reservation_ticket, user_slot) = reservation.fill();
        let mut live = Live::new(session, user_slot);
        let id = self.shared.session_id();
        live._watch = Some(self.watch_loss(id, &live.link.handler));
        let result = self.with_state(|locked, env| {
            let created = locked.state.created(
                reservation_ticket,
                id,
                live,
                for_acquire.map(|(ctx, _)| ctx),
                env,
            )?;
            if created.keep_headers
                && let Some((_, headers)) = for_acquire
                && locked.headers.0 != *headers
            {
                locked.headers = ForwardedHeaders(headers.clone());
            }
            Ok(created.lease)
        });
        drop(reservation);
        result
    }

    /// Evicts session `id` when its handler is reported [lost](SessionHandler::report_lost) or
    /// [forgotten](SessionHandler::report_forgotten), from a task that ends when the returned
    /// guard is dropped (with the session): an idle session that died is gone from the key at
    /// once, not at its next acquire or at the maintenance's next pass.
    fn watch_loss(self: &Arc<Self>, id: SessionId, handler: &SessionHandler) -> DropGuard {
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let key = Arc::downgrade(self);
        let handler = handler.clone();
        // Not tracked by `closing`: it holds nothing to close, and ends with the session.
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
    /// leases return (their calls in flight fail at once: see [`Lease`](crate::Lease)) — so no
    /// acquire gets it again, a sticky binding to it is recorded as lost (the next session of
    /// its conversation is a rebind), and `min_size` is refilled. With `record`, the loss
    /// counts as a failure in the health scores and becomes the endpoint's last error (a call
    /// that found out has recorded its own failure already). Does nothing when the session
    /// already left the key.
    pub(crate) fn session_lost(self: &Arc<Self>, id: SessionId, cause: &str, record: bool) {
        let lost = self.with_state(|locked, env| locked.state.session_lost(id, cause, record, env));
        if lost {
            tracing::info!(
                key = %self.key.short(),
                session = %id,
                cause,
                "the session is gone: evicting it"
            );
            self.refill_min_size();
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

    /// Returns the session of a lease whose call was abandoned (timed out, or dropped before
    /// its reply): the session stays out of use, as if checked, until a probe (the health
    /// check chain within [`PoolBuilder::cancel_grace`](crate::PoolBuilder::cancel_grace))
    /// shows the server still answers; else it is evicted.
    pub(crate) fn release_in_doubt(self: &Arc<Self>, id: SessionId, report: Option<&LeaseReport>) {
        let Some(link) =
            self.with_state(|locked, env| locked.state.release_in_doubt(id, report, env))
        else {
            return;
        };
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
        let mut locked = self.locked.lock();
        locked.state.count_retry();
        locked.metrics.retried(reason);
    }

    /// The URL of endpoint `i` of the server, user-info redacted (empty when the server no
    /// longer has it).
    pub(crate) fn endpoint_url(&self, i: usize) -> String {
        self.locked
            .lock()
            .state
            .server()
            .endpoints
            .get(i)
            .map(|e| mcp_pool_traits::redact_url(&e.url).into_owned())
            .unwrap_or_default()
    }

    /// `text` with endpoint `i`'s URL, as configured and redacted, replaced by `the endpoint`:
    /// a cause in words may quote the URL, credentials included.
    pub(crate) fn without_url(&self, i: usize, text: &str) -> String {
        let locked = self.locked.lock();
        let Some(url) = locked.state.server().endpoints.get(i).map(|e| &e.url[..]) else {
            return text.to_owned();
        };
        let redacted = mcp_pool_traits::redact_url(url);
        text.replace(url, "the endpoint")
            .replace(redacted.as_ref(), "the endpoint")
    }

    /// The server's `call_timeout`.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.locked.lock().state.server().call_timeout
    }

    /// Whether the server's strategy binds conversations to sessions (sticky): a call that
    /// failed on one must not be retried invisibly on another.
    pub(crate) fn binds(&self) -> bool {
        self.locked.lock().state.binds()
    }

    /// The per-call headers of a downstream request's `headers`: its trace headers, and its
    /// forwarded credentials when they hash to this key's identity (a session never carries
    /// another identity's credentials).
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
            for name in self.locked.lock().state.server().headers.keys() {
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
        self.with_state(|locked, env| locked.state.release(id, broken, report, env));
    }

    /// Creates one session in the background (to reach `min_size` or the autoscaler's
    /// target), if the key is pooled and has room. The session binds to no conversation: the
    /// first new conversation that picks it binds it.
    pub(crate) fn spawn_create(self: &Arc<Self>) {
        if self.shared.is_closed() {
            return;
        }
        let Some((ticket, token)) = self.with_state(|locked, env| {
            let ticket = locked.state.reserve_background(env)?;
            Some((ticket, self.shared.closing.token()))
        }) else {
            return;
        };
        let key = self.clone();
        self.shared.closing.spawn_on(
            async move {
                let mut reservation = Reservation::new(key.clone(), ticket, token);
                if !reservation.take_user_slot().await {
                    return;
                }
                let headers = key.locked.lock().headers.0.clone();
                let result = key
                    .connect(reservation.target(), &headers, key.shared.create_timeout)
                    .await;
                match result {
                    Ok(session) => {
                        let _ = key.created(reservation, session, None);
                    }
                    Err(error) => {
                        reservation.failed(&error);
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
        self.with_state(|locked, env| {
            if !locked.state.is_removed() {
                locked.state.reconfigure(server, env);
            }
        });
    }

    /// The maintenance pass (see [`KeyState::reap`]), after picking up the server's latest
    /// configuration.
    pub(crate) fn reap(&self, now: Instant, key_idle: Duration) -> ReapOutcome {
        // The server map is read before the key's lock is taken, never under it: the acquire
        // path takes them in the other order.
        let server = self.shared.server(&self.key.server);
        self.with_state(|locked, env| {
            if let Some(server) = server {
                locked.state.reconfigure(&server, env);
            }
            locked.state.reap(now, key_idle, env)
        })
    }

    /// Removes the key if it is still idle (for `idle_for` as of `now`, when given): marked
    /// removed and taken out of the pool's map by `unlist` under its own lock, so an acquire
    /// either got its lease before or looks the key up again after — never a creation into a
    /// removed key. Its sessions close and its counters join the server's totals.
    pub(crate) fn try_remove(
        &self,
        unlist: impl FnOnce() -> bool,
        idle_for: Option<(Instant, Duration)>,
        reason: EvictionReason,
    ) -> bool {
        self.with_state(|locked, env| {
            if !locked.state.removable(idle_for) || !unlist() {
                return false;
            }
            self.remove(locked, reason, env);
            true
        })
    }

    /// Marks the key removed (see [`KeyState::remove`]); its counters join the server's totals
    /// now, so that the totals never go down (stats show live keys and these totals).
    fn remove(&self, locked: &mut Locked, reason: EvictionReason, env: &mut LockedEnv<'_>) {
        locked.state.remove(reason, env);
        let counters = locked.state.take_counters();
        self.server_state.retired.lock().absorb(&counters);
    }

    /// `close()`: the key is removed, its sessions close (in-use ones when released) and its
    /// queued acquires are woken with nothing (they see the pool closed).
    pub(crate) fn close(&self) {
        self.with_state(|locked, env| {
            if !locked.state.is_removed() {
                self.remove(locked, EvictionReason::Closed, env);
            }
        });
    }

    /// Retires every session (`drain()`); in-use ones close on release.
    pub(crate) fn drain(&self) {
        self.with_state(|locked, env| locked.state.drain(env));
    }

    /// Starts a health check round if one is due (see [`KeyState::health_round`]).
    pub(crate) fn health_round(&self, now: Instant) -> bool {
        self.locked.lock().state.health_round(now)
    }

    /// The next session due for a health check (see [`KeyState::health_take`]).
    pub(crate) fn health_take(&self) -> Option<(SessionId, Arc<Link>)> {
        self.with_state(|locked, env| locked.state.health_take(env))
    }

    /// Gives a checked session back; a failed one is closed (and `min_size` refilled by the
    /// caller). Returns whether it failed.
    pub(crate) fn health_checked(&self, id: SessionId, outcome: &HealthOutcome) -> bool {
        let failed = self.with_state(|locked, env| locked.state.health_checked(id, outcome, env));
        if failed {
            tracing::info!(
                key = %self.key.short(),
                session = %id,
                method = outcome.method().as_str(),
                "health check failed: closing the session"
            );
        }
        failed
    }

    /// Runs the autoscaler (see [`KeyState::rebalance`]) and returns how many sessions to
    /// create ahead of demand.
    pub(crate) fn rebalance(&self, now: Instant) -> u32 {
        let Some(decision) = self.with_state(|locked, env| locked.state.rebalance(now, env)) else {
            return 0;
        };
        tracing::info!(
            key = %self.key.short(),
            stats = ?decision.stats,
            from = decision.from,
            to = decision.to,
            action = decision.action,
            reason = decision.reason,
            "autoscaler decision"
        );
        decision.missing
    }

    /// Creates, in the background, the sessions missing to reach `min_size` (after sessions
    /// failed their checks).
    pub(crate) fn refill_min_size(self: &Arc<Self>) {
        let missing = self.locked.lock().state.missing_for_min_size();
        for _ in 0..missing {
            self.spawn_create();
        }
    }

    /// Closes the least recently used idle session of the key, to make room under a pool-wide
    /// cap. `None` when there was none; else the session's slot of the user limit across
    /// workers, which the caller gives back before retrying (so the room is there at once).
    pub(crate) fn evict_one_idle(&self) -> Option<Option<StateId>> {
        let mut locked = self.locked.lock();
        let mut env = self.env();
        let evicted = locked.state.evict_one_idle(&mut env);
        let mut io = self.finish(&mut locked, &mut env);
        drop(env);
        drop(locked);
        let id = evicted?;
        // The caller gives the user slot back itself, before it retries.
        let mut user_slot = None;
        for effect in io.iter_mut().flatten() {
            if let Effect::Close {
                session,
                id: closed,
                ..
            } = effect
                && *closed == id
            {
                user_slot = session.user_slot.take();
            }
        }
        if let Some(io) = io {
            self.perform(io);
        }
        Some(user_slot)
    }

    /// The slots of the user limit across workers held by this key's sessions.
    pub(crate) fn user_slots(&self) -> (Option<Digest256>, Vec<StateId>) {
        let locked = self.locked.lock();
        let slots = locked
            .state
            .upstreams()
            .filter_map(|live| live.user_slot.clone())
            .collect();
        (locked.state.subject(), slots)
    }

    /// Whose sessions these are for the user limit.
    pub(crate) fn subject(&self) -> Option<Digest256> {
        limits_subject(&self.key)
    }

    /// Whether the key was removed.
    pub(crate) fn is_removed(&self) -> bool {
        self.locked.lock().state.is_removed()
    }

    /// When the key was last used, if it has an idle session (a candidate to close under a
    /// pool-wide cap).
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let locked = self.locked.lock();
        locked
            .state
            .has_idle_session()
            .then(|| locked.state.last_used())
    }

    /// Where `ctx`'s conversation stands: pinned ([`crate::pins`]), else with the selector.
    pub(crate) fn affinity_state(&self, ctx: &SelectContext) -> AffinityState {
        self.locked.lock().state.affinity_state(ctx)
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
        let Some(link) = self.locked.lock().state.pin(affinity, id) else {
            return false;
        };
        link.handler.pin(affinity, conversation);
        true
    }

    /// Ends `ctx`'s pin, if any, and its sticky binding, if any, retiring the bound session
    /// (a pinned one is shared: it stays). Returns whether there was either.
    pub(crate) fn unbind(&self, ctx: &SelectContext) -> bool {
        let (any, unpinned) = self.with_state(|locked, env| locked.state.unbind(ctx, env));
        if let (Some(link), Some(affinity)) = (unpinned, ctx.affinity) {
            link.handler.unpin(&affinity);
        }
        any
    }

    pub(crate) fn stats(&self) -> KeyStats {
        let locked = self.locked.lock();
        KeyStats::new(&self.key, locked.state.sizes(), locked.state.counters())
    }

    /// Its sessions as [`SessionInfo`]s: active ones, then retiring ones.
    pub(crate) fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        self.locked.lock().state.sessions(now)
    }

    /// Zeroes its counters (`Pool::reset_server`).
    pub(crate) fn reset_counters(&self) {
        self.locked.lock().state.reset_counters();
    }

    /// The locked state, for tests.
    #[cfg(test)]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Locked> {
        self.locked.lock()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mcp_pool_conformance::DuplexTransport;
    use mcp_pool_traits::{
        Endpoint, EvictionReason, PoolConfig, Principal, SelectContext, ServerId, StrategyKind,
        TransportKind,
    };

    use crate::{Pool, ServerConfig, key::KeyId};

    /// An acquire that loaded an older server snapshot must not roll its key back (retiring
    /// every session twice, re-admitting creations above a lowered `max_size`).
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
        let locked = key.lock();
        assert_eq!(
            locked.state.server().generation,
            newest,
            "the key moved back"
        );
        assert_eq!(locked.state.server().config.max_size, 1);
        drop(locked);
        drop(lease);
    }

    /// A key found idle by maintenance gets an acquire before it is removed: the removal must
    /// not go ahead (the acquire would end with `PoolError::Closed` on an open pool).
    #[tokio::test(start_paused = true)]
    async fn a_key_that_got_busy_after_it_was_found_idle_is_not_removed() {
        let id = ServerId::new("busy").unwrap();
        let endpoint =
            Endpoint::new("http://busy.invalid/mcp", TransportKind::StreamableHttp).unwrap();
        let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
        transport.set_connect_delay(std::time::Duration::from_secs(1));
        let pool = Pool::builder()
            .transport(transport)
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
        while key.stats().sessions_creating == 0 {
            tokio::task::yield_now().await;
        }
        let keys = &pool.inner.keys;
        assert!(!key.try_remove(
            || crate::pool::unlist(keys, &key),
            None,
            EvictionReason::KeyEvicted
        ));
        let lease = acquire.await.unwrap().expect("a lease, not Closed");
        assert!(!lease.is_hit());
    }
}
