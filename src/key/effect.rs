//! What goes into the key's state besides its events ([`Env`]), and what comes out of it: the
//! outcome of an acquire ([`Grant`]), the effects the driver performs ([`Effect`]) and the
//! metric deltas it records ([`Tally`]).

use mcp_pool_traits::{Digest256, Endpoint, EvictionReason, SelectContext, SessionId};
use tokio::time::{Duration, Instant};

use super::session::Upstream;
use crate::{
    breaker::{Attempt, Open},
    limits::Cap,
    server::ServerHealth,
};

/// What the state may read or change outside itself, given by whoever drives it: the time of
/// the event (read at most once, and only when asked: a hit reads no clock), the server's
/// health (its scores and circuit breakers, shared by the server's keys) and the pool-wide
/// caps.
pub(crate) trait Env {
    /// The time of the event.
    fn now(&mut self) -> Instant;
    /// The server's health.
    fn health(&mut self) -> &mut ServerHealth;
    /// Counts one more session of `subject` under the pool-wide caps, unless one is reached.
    fn reserve(&mut self, subject: Option<Digest256>) -> Result<(), Cap>;
    /// Gives one session of `subject` back.
    fn release(&mut self, subject: Option<Digest256>);
    /// Whether the pool is closed: a session created now is closed at once.
    fn pool_closed(&self) -> bool;
}

/// Why an acquire gets no session now and cannot wait for one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Refusal {
    /// No endpoint of the key's transport.
    NoEndpoint,
    /// A pool-wide cap stops a new session: make room, or fail.
    Capped(Cap),
    /// Every endpoint's circuit is open; the earliest retry.
    CircuitOpen(Open),
}

/// The outcome of an acquire, from the state to the driver (at once, or later to a waiter).
#[derive(Debug)]
pub(crate) enum Grant<H> {
    /// A lease on an existing session (its `in_flight` already counts it).
    Lease(Granted<H>),
    /// Room reserved to create a session (boxed: a hit moves its grant a few times, and a
    /// miss allocates anyway).
    Create(Box<Ticket>),
    /// No session now, and waiting would not give one.
    Refused(Refusal),
}

/// A lease handed out by the state.
#[derive(Debug)]
pub(crate) struct Granted<H> {
    pub(crate) id: SessionId,
    pub(crate) handle: H,
    pub(crate) endpoint: usize,
    /// An existing session served the acquire (not one created for it).
    pub(crate) hit: bool,
    /// The conversation's session is gone and this one replaces it: its state was lost.
    pub(crate) rebound: bool,
    /// The selector observes leases: the lease times itself and reports its end.
    pub(crate) observed: bool,
}

/// Room reserved for one creation: the endpoint (as it was then: a reconfiguration may renumber
/// the list before the session exists) and its breaker's permit. Hand it back to the state
/// with [`created`](super::state::KeyState::created),
/// [`create_failed`](super::state::KeyState::create_failed) or
/// [`create_cancelled`](super::state::KeyState::create_cancelled): it holds room under
/// `max_size` and the pool-wide caps until then.
#[must_use = "a ticket holds room until it is handed back"]
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) endpoint: usize,
    pub(crate) target: Endpoint,
    pub(crate) attempt: Attempt,
    /// The conversation the session is created for, when the strategy binds: one
    /// conversation never gets two sessions created at once.
    pub(crate) affinity: Option<SelectContext>,
    /// The state's rules epoch at reservation (see `KeyState::rules_epoch`).
    pub(crate) epoch: u64,
    /// Whether the server pooled at reservation: a creation for a per-request acquire stays
    /// a per-request session even if pooling was turned on meanwhile.
    pub(crate) pooled: bool,
    /// Made for a conversation whose pinned session is gone: its lease is a rebind.
    pub(crate) rebound: bool,
}

/// Why a created session was closed at once instead of joining the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// The key was removed (the pool closed).
    Closed,
    /// Its endpoint was removed or changed meanwhile: try again.
    Stale,
}

/// What the driver does for the state, in order, after the event that asked for it.
#[derive(Debug)]
pub(crate) enum Effect<S: Upstream> {
    /// Close a session that left the key with nothing out on it (in the background: its
    /// transport's close; its place under the caps is already given back).
    Close {
        session: S,
        id: SessionId,
        reason: EvictionReason,
    },
    /// A session left the active set: the conversations pinned to it learn that their state
    /// is gone.
    Unpin(S::Handle),
    /// A session left the key (`mcp_pool_evictions_total{reason}`).
    Evicted(EvictionReason),
    /// An endpoint's circuit breaker opened.
    BreakerOpened { endpoint: usize },
    /// An autoscaler decision (`mcp_pool_autoscale_decisions_total{action}`).
    Autoscaled(&'static str),
    /// The strategy changed: the metrics move to its label set. `before` is what the old
    /// labels count up to here; `moved` what the new ones take over (retiring sessions and
    /// waiters).
    Relabel { before: Tally, moved: Tally },
}

/// Metric deltas of the events since the driver last took them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) timeouts: u64,
    pub(crate) rebinds: u64,
    pub(crate) health_failures: u64,
    /// `mcp_pool_sessions{state="active"}`.
    pub(crate) active: i64,
    /// `mcp_pool_sessions{state="idle"}`.
    pub(crate) idle: i64,
    pub(crate) waiters: i64,
}

impl Tally {
    /// The same deltas, opposite sign (gauges only: counters never move back).
    pub(crate) fn negated(&self) -> Tally {
        Tally {
            active: -self.active,
            idle: -self.idle,
            waiters: -self.waiters,
            ..Tally::default()
        }
    }

    /// Counts a session's gauge moving from `was` to `now` (`None`: not counted).
    #[inline]
    pub(crate) fn session(&mut self, was: Option<bool>, now: Option<bool>) {
        if was == now {
            return;
        }
        match was {
            Some(true) => self.active -= 1,
            Some(false) => self.idle -= 1,
            None => {}
        }
        match now {
            Some(true) => self.active += 1,
            Some(false) => self.idle += 1,
            None => {}
        }
    }
}

/// An acquire that ran out of time, for its error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimedOut {
    pub(crate) waited: Duration,
    pub(crate) in_use: u32,
    pub(crate) max_size: u32,
    pub(crate) waiters: usize,
}
