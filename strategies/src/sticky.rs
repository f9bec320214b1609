//! Sticky: one downstream session ↔ one upstream session, exclusively.

use std::collections::{HashMap, HashSet, VecDeque};

use mcp_pool_traits::{
    AffinityKey, AffinityState, Binding, Digest256, EndpointView, EvictionReason, SelectContext,
    Selection, Selector, SessionId, SessionView, Strategy, StrategyKind, least_loaded_endpoint,
};

/// The isolation mode for stateful servers (the cross-conversation leak that got the reference
/// Python pool removed upstream: ContextForge #4205).
///
/// Each affinity — the downstream session id given with the acquire, else the principal — is
/// bound to one upstream session, **exclusively**: no other affinity ever gets that session,
/// not even after the binding ended. The binding ends on `Pool::unbind` (the downstream
/// session ended) and when its
/// session closes for idleness. When a bound session is lost otherwise (a transport failure, a
/// failed health check, its lifetime, a drain), the next acquire of that affinity gets a new
/// session and the lease reports [`Binding::Rebound`]: the server-side state is gone.
///
/// A bound session with no free capacity makes its affinity wait, even if the key could grow:
/// two requests of one conversation never run on two upstream sessions.
///
/// A lost binding is remembered until [`MAX_LOST_BINDINGS`] more bindings of the key were
/// lost after it (100 000 conversations that bind and lose their sessions must not leave
/// 100 000 entries). A conversation forgotten that way gets a new session
/// reporting [`Binding::Bound`] instead of [`Binding::Rebound`]: its caller is not told that
/// the server-side state is gone. That needs thousands of losses in one key between two
/// requests of one conversation, and is the price of a bounded selector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sticky;

impl Strategy for Sticky {
    fn name(&self) -> &str {
        "sticky"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::Sticky)
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::<StickySelector>::default()
    }
}

/// How many lost bindings a key's [`StickySelector`] remembers: 4096. Each costs about 100
/// bytes (an affinity digest in a map and in a queue).
pub const MAX_LOST_BINDINGS: usize = 4096;

/// Where an affinity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Bound to a live session.
    Live(SessionId),
    /// Its session was lost, for the reason given: the next session created for it is a
    /// rebind. The number is the loss's place in [`StickySelector::lost`], so a stale queue
    /// entry is told from the affinity's latest loss.
    Lost(u64, EvictionReason),
}

/// The per-key state of [`Sticky`]: bindings both ways, every bound session still in the key,
/// and the most recent lost bindings.
///
/// Its size is bounded by the key's sessions plus [`MAX_LOST_BINDINGS`]: live bindings and
/// `by_session` / `spent` entries exist only for sessions that have not left the key
/// ([`on_removed`](Selector::on_removed) drops them), lost bindings are capped.
#[derive(Debug)]
pub struct StickySelector {
    by_affinity: HashMap<AffinityKey, Bound>,
    by_session: HashMap<SessionId, AffinityKey>,
    /// Bound sessions still in the key: never handed to another affinity.
    spent: HashSet<SessionId>,
    /// Lost bindings in the order they were lost, with their loss number; entries whose
    /// affinity was rebound, unbound or lost again since are stale and skipped.
    lost: VecDeque<(AffinityKey, u64)>,
    /// The loss number of the next lost binding.
    next_loss: u64,
    max_lost: usize,
}

impl Default for StickySelector {
    fn default() -> Self {
        Self::with_max_lost(MAX_LOST_BINDINGS)
    }
}

/// The affinity of requests without a downstream session id: their principal's. No digest of a
/// real id is `Anonymous`, so it cannot collide.
const PRINCIPAL: AffinityKey = AffinityKey(Digest256::Anonymous);

fn affinity(ctx: &SelectContext) -> AffinityKey {
    ctx.affinity.unwrap_or(PRINCIPAL)
}

impl StickySelector {
    /// A selector remembering up to `max_lost` lost bindings (at least 1) instead of
    /// [`MAX_LOST_BINDINGS`].
    pub fn with_max_lost(max_lost: usize) -> Self {
        Self {
            by_affinity: HashMap::new(),
            by_session: HashMap::new(),
            spent: HashSet::new(),
            lost: VecDeque::new(),
            next_loss: 0,
            max_lost: max_lost.max(1),
        }
    }

    /// How many entries the selector holds, over all its maps: bindings (live and lost),
    /// bound sessions both ways, and the queue of losses. At most
    /// 3 × the key's sessions + 2 × the lost-binding cap.
    pub fn tracked(&self) -> usize {
        self.by_affinity.len() + self.by_session.len() + self.spent.len() + self.lost.len()
    }

    /// How many lost bindings are remembered (at most the cap).
    pub fn lost_bindings(&self) -> usize {
        self.by_affinity
            .values()
            .filter(|bound| matches!(bound, Bound::Lost(..)))
            .count()
    }

    /// The session `ctx`'s affinity is bound to, if it is live.
    pub fn bound_session(&self, ctx: &SelectContext) -> Option<SessionId> {
        match self.by_affinity.get(&affinity(ctx)) {
            Some(Bound::Live(id)) => Some(*id),
            _ => None,
        }
    }

    fn bind(&mut self, affinity: AffinityKey, id: SessionId) -> Binding {
        let previous = self.by_affinity.insert(affinity, Bound::Live(id));
        self.by_session.insert(id, affinity);
        self.spent.insert(id);
        match previous {
            Some(Bound::Lost(..)) => Binding::Rebound,
            _ => Binding::Bound,
        }
    }

    /// Marks `affinity`'s binding lost for `reason`, forgetting the oldest lost binding beyond
    /// the cap.
    fn lose(&mut self, affinity: AffinityKey, reason: EvictionReason) {
        let loss = self.next_loss;
        self.next_loss += 1;
        self.by_affinity.insert(affinity, Bound::Lost(loss, reason));
        self.lost.push_back((affinity, loss));
        // The queue holds one entry per loss of the last `max_lost`, so every remembered loss
        // is in it and the lost bindings never exceed the cap.
        while self.lost.len() > self.max_lost {
            let Some((oldest, loss)) = self.lost.pop_front() else {
                break;
            };
            if matches!(self.by_affinity.get(&oldest), Some(Bound::Lost(l, _)) if *l == loss) {
                self.by_affinity.remove(&oldest);
            }
        }
    }
}

impl Selector for StickySelector {
    fn binds(&self) -> bool {
        true
    }

    fn affinity_state(&self, ctx: &SelectContext) -> AffinityState {
        match self.by_affinity.get(&affinity(ctx)) {
            Some(Bound::Live(id)) => AffinityState::Bound(*id),
            Some(Bound::Lost(_, reason)) => AffinityState::Lost(*reason),
            None => AffinityState::Unknown,
        }
    }

    fn select(&mut self, sessions: &[SessionView], ctx: &SelectContext) -> Selection {
        let affinity = affinity(ctx);
        match self.by_affinity.get(&affinity) {
            Some(Bound::Live(id)) => match sessions.iter().position(|s| s.id == *id) {
                Some(i) if sessions[i].has_capacity() => Selection::Session(i),
                Some(_) => Selection::Wait,
                // Gone without notice (never expected): treat it as lost.
                None => Selection::Create,
            },
            Some(Bound::Lost(..)) => Selection::Create,
            None => {
                // A session that was never bound (kept warm by min_size) may be bound now.
                let fresh = sessions
                    .iter()
                    .position(|s| s.has_capacity() && !self.spent.contains(&s.id));
                match fresh {
                    Some(i) => {
                        self.bind(affinity, sessions[i].id);
                        Selection::Session(i)
                    }
                    None => Selection::Create,
                }
            }
        }
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        least_loaded_endpoint(endpoints)
    }

    fn on_created(&mut self, session: SessionId, ctx: &SelectContext) -> Binding {
        self.bind(affinity(ctx), session)
    }

    fn on_removed(&mut self, session: SessionId, reason: EvictionReason) {
        self.spent.remove(&session);
        let Some(affinity) = self.by_session.remove(&session) else {
            return;
        };
        if self.by_affinity.get(&affinity) != Some(&Bound::Live(session)) {
            return;
        }
        match reason {
            // The conversation went quiet or ended: the binding ends with its session.
            EvictionReason::Idle | EvictionReason::Unbound | EvictionReason::KeyEvicted => {
                self.by_affinity.remove(&affinity);
            }
            // Lost otherwise (broken, health, lifetime, drain, closed to make room at
            // `max_size` or under a cap): the next session of this affinity is a rebind.
            _ => self.lose(affinity, reason),
        }
    }

    fn unbind(&mut self, ctx: &SelectContext) -> Option<SessionId> {
        match self.by_affinity.remove(&affinity(ctx))? {
            // `spent` keeps the session: it must never serve another affinity.
            Bound::Live(id) => {
                self.by_session.remove(&id);
                Some(id)
            }
            Bound::Lost(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use mcp_pool_traits::Digest256;

    use super::*;

    /// The context of conversation `n` (a downstream session).
    fn conversation(n: u64) -> SelectContext {
        let mut digest = [0; 32];
        digest[..8].copy_from_slice(&n.to_le_bytes());
        SelectContext {
            affinity: Some(AffinityKey(Digest256::Sha256(digest))),
        }
    }

    fn view(id: SessionId, in_flight: u32) -> SessionView {
        SessionView {
            id,
            endpoint: 0,
            in_flight,
            capacity: 1,
            weight: 1,
        }
    }

    #[test]
    fn lost_bindings_stay_bounded() {
        const CONVERSATIONS: u64 = 100_000;
        let mut s = StickySelector::default();
        for n in 0..CONVERSATIONS {
            let ctx = conversation(n);
            let id = SessionId(n);
            assert_eq!(s.select(&[], &ctx), Selection::Create);
            assert_eq!(s.on_created(id, &ctx), Binding::Bound);
            s.on_removed(id, EvictionReason::Broken);
            // No session outlives its conversation: lost bindings and their queue only.
            assert!(
                s.tracked() <= 2 * MAX_LOST_BINDINGS,
                "after {n} conversations the selector tracks {} entries",
                s.tracked()
            );
        }
        assert_eq!(s.lost_bindings(), MAX_LOST_BINDINGS);
        // No session is alive: nothing but the capped lost bindings and their queue is left.
        assert!(s.by_session.is_empty() && s.spent.is_empty());
        assert_eq!(s.tracked(), 2 * MAX_LOST_BINDINGS);

        // The most recent losses are remembered: a rebind.
        let recent = conversation(CONVERSATIONS - 1);
        assert_eq!(s.select(&[], &recent), Selection::Create);
        assert_eq!(
            s.on_created(SessionId(CONVERSATIONS), &recent),
            Binding::Rebound
        );
        // The oldest were forgotten: a plain bind (the documented trade-off).
        let oldest = conversation(0);
        assert_eq!(
            s.on_created(SessionId(CONVERSATIONS + 1), &oldest),
            Binding::Bound
        );
    }

    #[test]
    fn churn_of_rebinds_and_unbinds_stays_bounded() {
        // Few conversations, each losing, rebinding and unbinding many times: the queue's
        // stale entries are dropped with the live ones, never accumulated.
        let mut s = StickySelector::with_max_lost(8);
        for round in 0..10_000u64 {
            let ctx = conversation(round % 5);
            let id = SessionId(round);
            s.on_created(id, &ctx);
            if round % 3 == 0 {
                assert_eq!(s.unbind(&ctx), Some(id));
            }
            s.on_removed(id, EvictionReason::Health);
            assert!(s.lost.len() <= 8 && s.lost_bindings() <= 5);
            assert!(s.by_session.is_empty() && s.spent.is_empty());
        }
        assert!(s.tracked() <= 8 + 5);
    }

    #[test]
    fn a_session_closed_to_make_room_is_a_rebind() {
        // Key at max_size 1: conversation A is bound to the only session, idle; conversation B
        // needs a session, so the pool closes A's (least recently used idle) for capacity.
        let mut s = StickySelector::default();
        let (a, b) = (conversation(1), conversation(2));
        let first = SessionId(1);
        assert_eq!(s.select(&[], &a), Selection::Create);
        assert_eq!(s.on_created(first, &a), Binding::Bound);
        // B may not take A's session, idle as it is.
        assert_eq!(s.select(&[view(first, 0)], &b), Selection::Create);
        s.on_removed(first, EvictionReason::Capacity);
        assert_eq!(s.on_created(SessionId(2), &b), Binding::Bound);
        // A's next acquire needs a new session, and its lease says the state is gone.
        assert_eq!(s.bound_session(&a), None);
        assert_eq!(s.select(&[view(SessionId(2), 0)], &a), Selection::Create);
        assert_eq!(s.on_created(SessionId(3), &a), Binding::Rebound);
        assert_eq!(s.bound_session(&a), Some(SessionId(3)));
        // B is still bound to its own session.
        assert_eq!(s.bound_session(&b), Some(SessionId(2)));
    }

    #[test]
    fn idle_and_unbound_endings_forget_the_binding() {
        let mut s = StickySelector::default();
        let a = conversation(1);
        s.on_created(SessionId(1), &a);
        s.on_removed(SessionId(1), EvictionReason::Idle);
        assert_eq!(s.on_created(SessionId(2), &a), Binding::Bound);
        assert_eq!(s.tracked(), 3);
        s.on_removed(SessionId(2), EvictionReason::Lifetime);
        assert_eq!(s.lost_bindings(), 1);
        assert_eq!(s.unbind(&a), None);
        assert_eq!(s.lost_bindings(), 0);
    }
}
