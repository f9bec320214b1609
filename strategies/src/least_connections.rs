//! Least connections: the session with the fewest leases in flight.

use mcp_pool_traits::{
    EndpointView, SelectContext, Selection, Selector, SessionView, Strategy, StrategyKind,
};

use crate::random::XorShift;

/// Sessions up to this many are scanned whole; above it, power of two choices.
pub const FULL_SCAN_MAX: usize = 32;

/// Picks a session with the fewest in-flight leases (ties rotate, so equal sessions share the
/// work); above [`FULL_SCAN_MAX`] sessions, the less loaded of two random eligible sessions
/// (power of two choices, as tower's `p2c`), which is never the strictly most loaded one.
/// New sessions go to the available endpoint with the fewest leases in flight, then the fewest
/// sessions: work moves away from an endpoint whose calls are slow.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Strategy for LeastConnections {
    fn name(&self) -> &str {
        "least_connections"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::LeastConnections)
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(LeastConnectionsSelector::default())
    }
}

/// The per-key state of [`LeastConnections`]: a tie-breaking cursor and a xorshift state.
#[derive(Debug, Default)]
pub struct LeastConnectionsSelector {
    cursor: usize,
    rng: XorShift,
}

impl LeastConnectionsSelector {
    fn scan(&mut self, sessions: &[SessionView]) -> Option<usize> {
        let n = sessions.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let s = &sessions[i];
            if s.has_capacity() && best.is_none_or(|b| s.in_flight < sessions[b].in_flight) {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            self.cursor = i + 1;
        }
        best
    }

    fn two_choices(&mut self, sessions: &[SessionView]) -> Option<usize> {
        let pick = self
            .rng
            .two_choices(sessions, |a, b| b.in_flight < a.in_flight);
        // Both full: fall back to the exact scan rather than report nothing eligible.
        pick.or_else(|| self.scan(sessions))
    }
}

impl Selector for LeastConnectionsSelector {
    fn select(&mut self, sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        let pick = if sessions.len() <= FULL_SCAN_MAX {
            self.scan(sessions)
        } else {
            self.two_choices(sessions)
        };
        pick.map_or(Selection::Create, Selection::Session)
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.available)
            .min_by_key(|(i, e)| (e.in_flight, e.sessions, *i))
            .map(|(i, _)| i)
    }
}
