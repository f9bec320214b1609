//! A session as its key sees it: where it is in its life ([`Phase`]), how it was used, and the
//! per-key counters that stats and servers read.
//!
//! ```text
//!             created (for an acquire: leased at once; in the background: idle)
//!                │
//!                ▼
//!    ┌────────► Open ◄───────────────────────────────┐   idle: in_flight 0
//!    │          │  │                                 │   leased: in_flight > 0
//!    │   check  │  │ a call abandoned                │
//!    │   due    │  │ (timed out, dropped)            │ probe answered
//!    │  (idle)  ▼  ▼                                 │
//!    └─ ok ─ Checking   Probing ──────────────────────┘
//!               │          │
//!               └────┬─────┘  failed check or probe, lost, broken, past its lifetime or
//!                    │        idle time, drained, unbound, unpooled, closed for room,
//!                    ▼        reconfigured, key removed (from any phase above)
//!            Retiring(reason) ── its last lease or check is back ──► closed
//!
//!   A session with nothing out on it skips Retiring: it is closed when it leaves.
//! ```
//!
//! Capacity is counted in the session's [`SessionView::in_flight`](mcp_pool_traits::SessionView):
//! one unit per lease, and, while `Checking` or `Probing`, the units the check holds so that no
//! acquire picks the session.

use mcp_pool_traits::{EvictionReason, SessionId};
use tokio::time::Instant;

/// What the key's state needs of a session whose I/O it does not do: a handle for leases and
/// checks, and whether the session can still be handed out.
pub(crate) trait Upstream: std::fmt::Debug {
    /// What a lease or a health check holds of the session (shared by every lease on it).
    type Handle: Clone + std::fmt::Debug;

    /// The handle given to leases and checks.
    fn handle(&self) -> &Self::Handle;

    /// Why the session must not be handed out any more, if so: reported
    /// [lost](EvictionReason::Lost), or its transport [closed](EvictionReason::Broken). One
    /// atomic load each: read on the hit path.
    fn gone(&self) -> Option<EvictionReason>;
}

/// Where a session is in its life (see the diagram in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// In the key's active set, idle or leased (its `in_flight` says).
    Open,
    /// Out of use for a periodic health check, which holds `held` units of its `in_flight`
    /// (its whole capacity).
    Checking { held: u32 },
    /// Out of use for the probe of an abandoned call, which holds `held` units of its
    /// `in_flight` (every free unit plus the abandoned lease's); leases taken before it may
    /// still be out.
    Probing { held: u32 },
    /// Out of the active set: closed when its last lease (or check) comes back.
    Retiring(Retiring),
}

/// A session that left the key's active set while something was out on it. It still counts
/// against `max_size` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retiring {
    pub(crate) reason: EvictionReason,
    /// Leases and held units still out.
    pub(crate) in_flight: u32,
    /// The units of `in_flight` a check or probe holds (it ends with the session).
    pub(crate) held: u32,
    /// Whether the `mcp_pool_sessions` gauge counted it `active` when it left.
    pub(crate) active: bool,
}

impl Phase {
    /// The units of `in_flight` a check or probe holds.
    #[inline]
    pub(crate) fn held(self) -> u32 {
        match self {
            Phase::Open => 0,
            Phase::Checking { held } | Phase::Probing { held } => held,
            Phase::Retiring(r) => r.held,
        }
    }
}

/// Whether a session serves many requests or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Pooled: handed out again after its release.
    Pooled,
    /// Created while the server did not pool (pooling off, strategy `none`): closed when
    /// released, even if pooling was turned on meanwhile — it served one request and belongs
    /// to no conversation.
    PerRequest,
}

/// A session of a key: what the driver owns of it (`S`), its phase and its use.
#[derive(Debug)]
pub(crate) struct Session<S> {
    pub(crate) id: SessionId,
    pub(crate) upstream: S,
    pub(crate) phase: Phase,
    pub(crate) usage: Use,
    pub(crate) created_at: Instant,
    pub(crate) last_used: Instant,
    /// Leases handed out on it.
    pub(crate) use_count: u64,
    /// Released since `last_used` was last brought up to date: releases read no clock, the
    /// maintenance and health passes fold this into `last_used`.
    pub(crate) released: bool,
    /// The key's release sequence number at its last release (or creation): the exact
    /// least-recently-used order, without a clock read on the release path.
    pub(crate) release_seq: u64,
    /// When its last health check ended.
    pub(crate) last_checked: Instant,
}

impl<S> Session<S> {
    pub(crate) fn new(id: SessionId, upstream: S, usage: Use, now: Instant, seq: u64) -> Self {
        Self {
            id,
            upstream,
            phase: Phase::Open,
            usage,
            created_at: now,
            last_used: now,
            use_count: 0,
            released: false,
            release_seq: seq,
            last_checked: now,
        }
    }
}

/// Per-key counters for stats, kept under the key's lock (no shared atomics on the hit path).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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
