//! Conversations pinned to shared sessions: the bookkeeping of one key.
//!
//! The MCP spec scopes resource subscriptions, the log level and the client's roots to a
//! session. Under a strategy that shares sessions (round robin, least connections, weighted,
//! …) a conversation that creates such state upstream pins itself to the session that holds
//! it: its later acquires get that session whatever the strategy would pick, so its requests
//! meet their own state. Unlike a sticky binding a pin is not exclusive: the session keeps
//! serving everyone the strategy sends to it.
//!
//! A pinned session leaving the key (whatever the reason) loses the pinned conversations'
//! state: their pins become lost, and the next acquire of each is served by the strategy and
//! says [`is_rebound`](crate::Lease::is_rebound), as a sticky rebind does. A lost pin is
//! remembered until [`MAX_LOST_PINS`] more pins of the key were lost after it.
//!
//! Pure bookkeeping under the key's lock: no clock, no I/O, no allocation when no
//! conversation of the key is pinned.

use std::collections::{HashMap, VecDeque};

use mcp_pool_traits::{AffinityKey, AffinityState, EvictionReason, SessionId};

/// How many lost pins a key remembers: 4096, as sticky's lost bindings
/// (`mcp_pool_strategies::sticky::MAX_LOST_BINDINGS`).
pub(crate) const MAX_LOST_PINS: usize = 4096;

/// Where a pinned conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// On this live session.
    Live(SessionId),
    /// Its session left the key for this reason; the number is the loss's place in
    /// [`Pins::lost`].
    Lost(u64, EvictionReason),
}

/// Where an acquire of a conversation goes ([`Pins::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Not pinned: the strategy chooses.
    Free,
    /// Pinned to this session.
    Session(SessionId),
    /// Its pinned session is gone: the strategy chooses, and the lease is a rebind.
    Lost,
}

/// The pins of one key.
#[derive(Debug)]
pub(crate) struct Pins {
    by_affinity: HashMap<AffinityKey, Pin>,
    /// Live pins per session: what a session's removal loses.
    by_session: HashMap<SessionId, Vec<AffinityKey>>,
    lost: VecDeque<(AffinityKey, u64)>,
    next_loss: u64,
    max_lost: usize,
}

impl Default for Pins {
    fn default() -> Self {
        Self::with_max_lost(MAX_LOST_PINS)
    }
}

impl Pins {
    /// Pins remembering up to `max_lost` lost ones (at least 1).
    pub(crate) fn with_max_lost(max_lost: usize) -> Self {
        Self {
            by_affinity: HashMap::new(),
            by_session: HashMap::new(),
            lost: VecDeque::new(),
            next_loss: 0,
            max_lost: max_lost.max(1),
        }
    }

    /// Whether no conversation is pinned or lost: the acquire path's only cost then.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_affinity.is_empty()
    }

    /// Where an acquire of `affinity` goes.
    pub(crate) fn route(&self, affinity: &AffinityKey) -> Route {
        match self.by_affinity.get(affinity) {
            None => Route::Free,
            Some(Pin::Live(id)) => Route::Session(*id),
            Some(Pin::Lost(..)) => Route::Lost,
        }
    }

    /// Where `affinity` stands, if it is pinned or lost.
    pub(crate) fn state(&self, affinity: &AffinityKey) -> Option<AffinityState> {
        Some(match self.by_affinity.get(affinity)? {
            Pin::Live(id) => AffinityState::Bound(*id),
            Pin::Lost(_, reason) => AffinityState::Lost(*reason),
        })
    }

    /// Pins `affinity` to `session`, unless it is pinned to a live session already (returns
    /// `false` then). A lost pin is replaced: the conversation started over.
    pub(crate) fn pin(&mut self, affinity: AffinityKey, session: SessionId) -> bool {
        if let Some(Pin::Live(_)) = self.by_affinity.get(&affinity) {
            return false;
        }
        self.by_affinity.insert(affinity, Pin::Live(session));
        self.by_session.entry(session).or_default().push(affinity);
        true
    }

    /// Forgets a lost pin: the acquire it was reported to starts the conversation over.
    pub(crate) fn forget_lost(&mut self, affinity: &AffinityKey) {
        if let Some(Pin::Lost(..)) = self.by_affinity.get(affinity) {
            self.by_affinity.remove(affinity);
        }
    }

    /// Ends `affinity`'s pin, live or lost; returns the session of a live one.
    pub(crate) fn unpin(&mut self, affinity: &AffinityKey) -> Option<SessionId> {
        match self.by_affinity.remove(affinity)? {
            Pin::Live(id) => {
                if let Some(pinned) = self.by_session.get_mut(&id) {
                    pinned.retain(|a| a != affinity);
                    if pinned.is_empty() {
                        self.by_session.remove(&id);
                    }
                }
                Some(id)
            }
            Pin::Lost(..) => None,
        }
    }

    /// Whether a conversation is pinned to `session`: it is in use, and never closed for
    /// idleness.
    #[inline]
    pub(crate) fn holds(&self, session: SessionId) -> bool {
        !self.by_session.is_empty() && self.by_session.contains_key(&session)
    }

    /// `session` left the key for `reason`: its pins are lost.
    pub(crate) fn on_removed(&mut self, session: SessionId, reason: EvictionReason) {
        let Some(pinned) = self.by_session.remove(&session) else {
            return;
        };
        for affinity in pinned {
            let loss = self.next_loss;
            self.next_loss += 1;
            self.by_affinity.insert(affinity, Pin::Lost(loss, reason));
            self.lost.push_back((affinity, loss));
        }
        // One queue entry per loss of the last `max_lost`: the lost pins never exceed the cap.
        while self.lost.len() > self.max_lost {
            let Some((oldest, loss)) = self.lost.pop_front() else {
                break;
            };
            if matches!(self.by_affinity.get(&oldest), Some(Pin::Lost(l, _)) if *l == loss) {
                self.by_affinity.remove(&oldest);
            }
        }
    }

    /// Entries over all maps (a bound for memory tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_affinity.len()
            + self.by_session.values().map(Vec::len).sum::<usize>()
            + self.lost.len()
    }
}

#[cfg(test)]
mod tests {
    use mcp_pool_traits::Digest256;

    use super::*;

    fn conversation(n: u64) -> AffinityKey {
        let mut digest = [0; 32];
        digest[..8].copy_from_slice(&n.to_le_bytes());
        AffinityKey(Digest256::Sha256(digest))
    }

    #[test]
    fn a_pin_routes_until_its_session_leaves_then_is_lost_once() {
        let mut pins = Pins::default();
        let (a, b) = (conversation(1), conversation(2));
        assert!(pins.is_empty());
        assert_eq!(pins.route(&a), Route::Free);
        assert!(pins.pin(a, SessionId(7)));
        assert!(pins.pin(b, SessionId(7)), "not exclusive");
        assert!(!pins.pin(a, SessionId(8)), "a live pin stays");
        assert_eq!(pins.route(&a), Route::Session(SessionId(7)));
        assert!(pins.holds(SessionId(7)));
        assert!(!pins.holds(SessionId(8)));

        pins.on_removed(SessionId(7), EvictionReason::Lost);
        assert!(!pins.holds(SessionId(7)));
        assert_eq!(pins.route(&a), Route::Lost);
        assert_eq!(
            pins.state(&b),
            Some(AffinityState::Lost(EvictionReason::Lost))
        );
        pins.forget_lost(&a);
        assert_eq!(pins.route(&a), Route::Free, "told once");
        assert!(pins.pin(b, SessionId(9)), "a lost pin is replaced");
        assert_eq!(pins.route(&b), Route::Session(SessionId(9)));
    }

    #[test]
    fn unpin_ends_live_and_lost_pins() {
        let mut pins = Pins::default();
        let (a, b) = (conversation(1), conversation(2));
        pins.pin(a, SessionId(1));
        pins.pin(b, SessionId(2));
        assert_eq!(pins.unpin(&a), Some(SessionId(1)));
        assert!(!pins.holds(SessionId(1)));
        pins.on_removed(SessionId(2), EvictionReason::Capacity);
        assert_eq!(pins.unpin(&b), None);
        assert_eq!(pins.state(&b), None);
        // Removing a session nobody pinned changes nothing.
        pins.on_removed(SessionId(3), EvictionReason::Idle);
        assert!(pins.is_empty());
    }

    #[test]
    fn lost_pins_stay_bounded() {
        let mut pins = Pins::with_max_lost(8);
        for n in 0..1000 {
            pins.pin(conversation(n), SessionId(n));
            pins.on_removed(SessionId(n), EvictionReason::Broken);
        }
        assert!(pins.tracked() <= 2 * 8, "{}", pins.tracked());
        assert_eq!(pins.route(&conversation(999)), Route::Lost);
        assert_eq!(pins.route(&conversation(0)), Route::Free, "forgotten");
    }
}
