//! Sticky: one downstream session ↔ one upstream session, exclusively.

use std::collections::{HashMap, HashSet};

use mcp_pool_traits::{
    AffinityKey, Binding, Digest256, EndpointView, EvictionReason, SelectContext, Selection,
    Selector, SessionId, SessionView, Strategy, StrategyKind, least_loaded_endpoint,
};

/// The isolation mode for stateful servers (DESIGN §5, and the cross-conversation leak that got
/// the reference Python pool removed upstream, ContextForge #4205).
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

/// Where an affinity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Bound to a live session.
    Live(SessionId),
    /// Its session was lost: the next session created for it is a rebind.
    Lost,
}

/// The per-key state of [`Sticky`]: bindings both ways, and every session ever bound.
#[derive(Debug, Default)]
pub struct StickySelector {
    by_affinity: HashMap<AffinityKey, Bound>,
    by_session: HashMap<SessionId, AffinityKey>,
    /// Sessions that were ever bound: never handed to another affinity.
    spent: HashSet<SessionId>,
}

/// The affinity of requests without a downstream session id: their principal's. No digest of a
/// real id is `Anonymous`, so it cannot collide.
const PRINCIPAL: AffinityKey = AffinityKey(Digest256::Anonymous);

fn affinity(ctx: &SelectContext) -> AffinityKey {
    ctx.affinity.unwrap_or(PRINCIPAL)
}

impl StickySelector {
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
            Some(Bound::Lost) => Binding::Rebound,
            _ => Binding::Bound,
        }
    }
}

impl Selector for StickySelector {
    fn select(&mut self, sessions: &[SessionView], ctx: &SelectContext) -> Selection {
        let affinity = affinity(ctx);
        match self.by_affinity.get(&affinity) {
            Some(Bound::Live(id)) => match sessions.iter().position(|s| s.id == *id) {
                Some(i) if sessions[i].has_capacity() => Selection::Session(i),
                Some(_) => Selection::Wait,
                // Gone without notice (never expected): treat it as lost.
                None => Selection::Create,
            },
            Some(Bound::Lost) => Selection::Create,
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
            _ => {
                self.by_affinity.insert(affinity, Bound::Lost);
            }
        }
    }

    fn unbind(&mut self, ctx: &SelectContext) -> Option<SessionId> {
        match self.by_affinity.remove(&affinity(ctx))? {
            // `spent` keeps the session: it must never serve another affinity.
            Bound::Live(id) => {
                self.by_session.remove(&id);
                Some(id)
            }
            Bound::Lost => None,
        }
    }
}
