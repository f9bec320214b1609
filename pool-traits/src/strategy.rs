//! The [`Strategy`] trait: which session serves an acquire, and where new sessions go.
//!
//! A strategy is chosen per server and can be swapped on a live pool. The pool asks it for one
//! [`Selector`] per pool key (so per-key state such as a rotation cursor or sticky bindings
//! lives in the selector) and calls the selector under that key's lock: methods are synchronous,
//! take `&mut self`, and must not allocate on the hot path ([`Selector::select`]).

use std::{fmt, time::Duration};

use crate::{Digest256, StrategyKind};

/// A pooled session's id, unique within the process for its lifetime (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// What a selector sees of one session of its key. `Copy`, built by the pool without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The session.
    pub id: SessionId,
    /// Index of its endpoint in the server's endpoint list.
    pub endpoint: usize,
    /// Leases currently out on it.
    pub in_flight: u32,
    /// Leases it may serve at once (`session_concurrency`).
    pub capacity: u32,
    /// Its endpoint's weight.
    pub weight: u32,
}

impl SessionView {
    /// Whether it can take one more lease.
    pub fn has_capacity(&self) -> bool {
        self.in_flight < self.capacity
    }
}

/// What a selector sees of one endpoint of the server when a session is to be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointView {
    /// Relative share (1-1000).
    pub weight: u32,
    /// Sessions of this key on it, being created included.
    pub sessions: u32,
    /// Leases out on its sessions of this key.
    pub in_flight: u32,
    /// `false` when the endpoint must not get a session now (its circuit is open, or its
    /// transport is not the key's). A selector must never pick an unavailable endpoint.
    pub available: bool,
}

/// The affinity of a request for the sticky strategy: a digest of the downstream session id
/// given with the acquire. Requests without one share the affinity of their principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey(pub Digest256);

impl AffinityKey {
    /// The affinity of a downstream (client-facing) MCP session id.
    pub fn downstream_session(id: &str) -> Self {
        Self(Digest256::of(id))
    }
}

/// Facts about the acquire being served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectContext {
    /// The downstream session's affinity; `None` means the principal's own affinity.
    pub affinity: Option<AffinityKey>,
}

/// What serves an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The session at this index of the slice given to [`Selector::select`]; it must have
    /// capacity.
    Session(usize),
    /// Create a new session (the pool waits instead when the key is at `max_size`).
    Create,
    /// Wait for a release even if the key could grow: the only session this request may use is
    /// busy (sticky).
    Wait,
}

/// How a newly created session relates to the request's affinity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// The strategy does not bind.
    #[default]
    Unbound,
    /// Bound to the request's affinity for the first time.
    Bound,
    /// Bound to replace a session of the same affinity that died: server-side state was lost.
    Rebound,
}

/// Why a session left its pool: the `reason` label of `mcp_pool_evictions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EvictionReason {
    /// A lease was marked broken (a transport error was seen).
    Broken,
    /// Older than `max_lifetime`.
    Lifetime,
    /// Unused for `max_idle_time`.
    Idle,
    /// A health check failed.
    Health,
    /// `drain()` or a configuration change retired it.
    Drained,
    /// `close()`.
    Closed,
    /// Not pooled (strategy `none` or pooling off): closed on release.
    Unpooled,
    /// Its sticky binding ended (`unbind`), so no other affinity may ever get it.
    Unbound,
    /// Its key was removed as idle.
    KeyEvicted,
    /// Closed while idle to make room under a pool-wide cap (total sessions, sessions per
    /// user, keys).
    Capacity,
    /// Reported gone by its transport or by a call's answer
    /// ([`SessionHandler::report_lost`](crate::SessionHandler::report_lost)): the server no
    /// longer knows it (HTTP 404, or 400 naming the session), its event stream could not be
    /// re-established, or its connection closed.
    Lost,
}

impl EvictionReason {
    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Broken => "broken",
            Self::Lifetime => "lifetime",
            Self::Idle => "idle",
            Self::Health => "health",
            Self::Drained => "drained",
            Self::Closed => "closed",
            Self::Unpooled => "unpooled",
            Self::Unbound => "unbound",
            Self::KeyEvicted => "key_evicted",
            Self::Capacity => "capacity",
            Self::Lost => "lost",
        }
    }

    /// Whether the session died rather than being retired on purpose: a sticky binding to it
    /// is then replaced with [`Binding::Rebound`].
    pub const fn is_death(self) -> bool {
        matches!(self, Self::Broken | Self::Health | Self::Lost)
    }
}

/// How a lease ended, as [`Selector::on_released`] learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseOutcome {
    /// No call of the lease failed. A JSON-RPC error counts here: the server answered.
    Ok,
    /// A call timed out or was abandoned before its reply: the session is probed before it
    /// serves again.
    InDoubt,
    /// The session failed at the transport (or the lease was marked broken): it is evicted,
    /// and [`Selector::on_removed`] follows.
    Broken,
}

/// What a selector learns when a lease ends ([`Selector::on_released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseReport {
    /// The session the lease held.
    pub session: SessionId,
    /// Index of its endpoint in the server's endpoint list.
    pub endpoint: usize,
    /// From the acquire's return to the lease's drop. For the usual acquire, call, drop, this
    /// is the call's latency plus microseconds: what latency-aware strategies (peak EWMA, as
    /// Finagle, linkerd and tower's `PeakEwma` do) feed on.
    pub held: Duration,
    /// How it ended.
    pub outcome: LeaseOutcome,
}

impl LeaseReport {
    /// A report (for strategy tests; the pool builds its own).
    pub fn new(session: SessionId, endpoint: usize, held: Duration, outcome: LeaseOutcome) -> Self {
        Self {
            session,
            endpoint,
            held,
            outcome,
        }
    }
}

/// A session selection strategy. Cheap to share; one per server.
///
/// Implementations hand out one [`Selector`] per pool key. Custom strategies implement this trait
/// and prove themselves with `mcp_pool_conformance::strategy_conformance!`.
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// The name used in logs, stats and the `strategy` metric label.
    fn name(&self) -> &str;

    /// The built-in kind this strategy is, if any.
    fn kind(&self) -> Option<StrategyKind> {
        None
    }

    /// `false` for strategies that do not pool: every acquire then creates a session and every
    /// release closes it ([`StrategyKind::None`]).
    fn pools(&self) -> bool {
        true
    }

    /// A fresh selector for one pool key.
    fn selector(&self) -> Box<dyn Selector>;
}

/// Per-key selection state. Called under the key's lock: never block, and never allocate in
/// [`select`](Self::select) while the key's sessions are unchanged (the first selection after
/// they changed may size per-session state; the strategy suite counts allocations).
pub trait Selector: Send + fmt::Debug + 'static {
    /// Chooses what serves an acquire among `sessions` (every live session of the key, those
    /// without capacity included). Must return [`Selection::Session`] only for an index whose
    /// session [`has_capacity`](SessionView::has_capacity), and must not panic on an empty slice.
    fn select(&mut self, sessions: &[SessionView], ctx: &SelectContext) -> Selection;

    /// Chooses the endpoint for a new session: an index into `endpoints` whose entry is
    /// [`available`](EndpointView::available), or `None` when none is.
    fn select_endpoint(&mut self, endpoints: &[EndpointView], ctx: &SelectContext)
    -> Option<usize>;

    /// A session was created for an acquire with `ctx` and is about to be handed to it.
    fn on_created(&mut self, _session: SessionId, _ctx: &SelectContext) -> Binding {
        Binding::Unbound
    }

    /// A session left the key.
    fn on_removed(&mut self, _session: SessionId, _reason: EvictionReason) {}

    /// A lease of one of the key's sessions ended, before the session is given back (and
    /// before [`on_removed`](Self::on_removed) when the release evicts it). Latency-aware
    /// selectors learn from it. Called under the key's lock, once per lease, and only for
    /// selectors whose [`observes_leases`](Self::observes_leases) is `true`: keep it short. The
    /// session may already have left the key (drained while leased, or the strategy changed).
    fn on_released(&mut self, _report: &LeaseReport) {}

    /// Whether [`on_released`](Self::on_released) is wanted. Only then does a lease read the
    /// clock when it is handed out and returned: the hit path of the other strategies reads
    /// none. Read once per selector. Default `false`.
    fn observes_leases(&self) -> bool {
        false
    }

    /// Whether [`on_created`](Self::on_created) binds the new session to the request's
    /// affinity (sticky). The pool then creates at most one session at a time per affinity:
    /// other acquires of that affinity wait for it instead of creating a second session for
    /// the same conversation. Read once per selector.
    fn binds(&self) -> bool {
        false
    }

    /// Ends the binding of `affinity`, if any, returning the session it was bound to. The pool
    /// then retires that session: a session once bound is never handed to another affinity.
    fn unbind(&mut self, _affinity: &SelectContext) -> Option<SessionId> {
        None
    }

    /// Where `affinity` stands: bound to a live session, lost with its session, or unknown.
    /// A gateway asks before forwarding a conversation's request, so that a conversation whose
    /// server-side state is gone is told (MCP: HTTP 404, the client initializes again) rather
    /// than continued on a fresh session. Selectors that [bind](Self::binds) should answer it;
    /// the default, for those that do not, is [`AffinityState::Unknown`].
    fn affinity_state(&self, _affinity: &SelectContext) -> AffinityState {
        AffinityState::Unknown
    }
}

/// Where an affinity key stands with a selector ([`Selector::affinity_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AffinityState {
    /// Bound to this live session.
    Bound(SessionId),
    /// Its session left the pool for this reason while bound: the conversation's server-side
    /// state is gone, and the next acquire for it creates a session that
    /// [rebinds](Binding::Rebound).
    Lost(EvictionReason),
    /// Not bound: never bound, unbound, ended with its session's idleness or its key, lost
    /// long enough ago to be forgotten, or the selector does not bind.
    Unknown,
}

/// The index among `endpoints` an available endpoint with the fewest sessions, ties broken by
/// the lowest index. A building block for selectors.
pub fn least_loaded_endpoint(endpoints: &[EndpointView]) -> Option<usize> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.available)
        .min_by_key(|(i, e)| (e.sessions, *i))
        .map(|(i, _)| i)
}
