//! What every key of a pool shares: the runtime, the transports, the session-closing tasks.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::HeaderName;
use mcp_pool_traits::{
    ClientSession, Digest256, EvictionReason, IdentityConfig, ServerId, SessionId, StateId,
    Strategy, StrategyKind, Transport, TransportKind, rmcp::model::ClientConfig,
};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::{
    breaker::BreakerConfig, health::HealthCheckConfig, limits::Limits, server::ServerEntry,
};

/// The hasher of the pool's maps: keys are hashes and validated ids, not attacker-chosen
/// strings, so a fast seeded hash is enough (foldhash is randomly seeded per map).
pub(crate) type FastHash = foldhash::fast::RandomState;

/// How long closing one session (the DELETE of streamable HTTP) may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) runtime: Handle,
    pub(crate) closing: TaskTracker,
    pub(crate) transports: HashMap<TransportKind, Arc<dyn Transport>>,
    /// Strategies registered with the builder, by the kind configuration names them with.
    pub(crate) strategies: HashMap<StrategyKind, Arc<dyn Strategy>>,
    pub(crate) client_config: ClientConfig,
    pub(crate) create_timeout: Duration,
    /// Read on every acquire, written on (re)configuration only: a snapshot swapped whole.
    pub(crate) servers: ArcSwap<HashMap<ServerId, Arc<ServerEntry>, FastHash>>,
    pub(crate) closed: AtomicBool,
    pub(crate) limits: Limits,
    pub(crate) metrics_enabled: bool,
    /// Settings of every endpoint's circuit breaker.
    pub(crate) breaker: BreakerConfig,
    /// The maintenance period.
    pub(crate) cleanup_interval: Duration,
    /// The user limit across workers, when the backend is shared.
    pub(crate) user_slots: std::sync::OnceLock<Arc<crate::user_slots::UserSlots>>,
    /// How identities are derived: per-call credentials are only sent on a session of their
    /// own identity.
    pub(crate) identity: IdentityConfig,
    /// Headers of a downstream request that travel with each call (trace, correlation).
    pub(crate) trace_headers: Vec<HeaderName>,
    /// The check of a session whose call was abandoned (its timeout: the cancel grace).
    pub(crate) probe: HealthCheckConfig,
    /// The window that coalesces a burst of a server's `*/list_changed` notifications.
    pub(crate) event_debounce: Duration,
    next_session: AtomicU64,
}

/// The pool-wide settings a [`Shared`] is made with.
#[derive(Debug)]
pub(crate) struct SharedSettings {
    pub(crate) client_config: ClientConfig,
    pub(crate) create_timeout: Duration,
    pub(crate) limits: Limits,
    pub(crate) metrics_enabled: bool,
    pub(crate) breaker: BreakerConfig,
    pub(crate) cleanup_interval: Duration,
    pub(crate) identity: IdentityConfig,
    pub(crate) trace_headers: Vec<HeaderName>,
    pub(crate) probe: HealthCheckConfig,
    pub(crate) event_debounce: Duration,
    pub(crate) strategies: HashMap<StrategyKind, Arc<dyn Strategy>>,
}

impl Shared {
    pub(crate) fn new(
        runtime: Handle,
        transports: HashMap<TransportKind, Arc<dyn Transport>>,
        settings: SharedSettings,
    ) -> Self {
        let SharedSettings {
            client_config,
            create_timeout,
            limits,
            metrics_enabled,
            breaker,
            cleanup_interval,
            identity,
            trace_headers,
            probe,
            event_debounce,
            strategies,
        } = settings;
        Self {
            runtime,
            closing: TaskTracker::new(),
            transports,
            strategies,
            client_config,
            create_timeout,
            servers: ArcSwap::from_pointee(HashMap::default()),
            closed: AtomicBool::new(false),
            limits,
            metrics_enabled,
            breaker,
            cleanup_interval,
            user_slots: std::sync::OnceLock::new(),
            identity,
            trace_headers,
            probe,
            event_debounce,
            next_session: AtomicU64::new(1),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn server(&self, id: &ServerId) -> Option<Arc<ServerEntry>> {
        self.servers.load().get(id).cloned()
    }

    /// Gives a user slot of the backend back, in the background.
    pub(crate) fn release_user_slot(&self, subject: Option<Digest256>, slot: Option<StateId>) {
        if let (Some(slots), Some(subject), Some(slot)) = (self.user_slots.get(), subject, slot) {
            let slots = slots.clone();
            self.closing.spawn_on(
                async move { slots.release(&subject, &slot).await },
                &self.runtime,
            );
        }
    }

    /// Closes `session` in the background (cancel the service loop, send DELETE), tracked so
    /// that [`Pool::close`](crate::Pool::close) can wait for it. Never blocks: callable under
    /// a key lock.
    pub(crate) fn close_session(
        &self,
        mut session: ClientSession,
        id: SessionId,
        reason: EvictionReason,
    ) {
        tracing::debug!(session = %id, reason = reason.as_str(), "closing session");
        self.closing.spawn_on(
            async move {
                let _ = session.close_with_timeout(CLOSE_TIMEOUT).await;
            },
            &self.runtime,
        );
    }
}
