//! Round robin: rotate over sessions with free capacity.

use mcp_pool_traits::{
    EndpointView, SelectContext, Selection, Selector, SessionView, Strategy, StrategyKind,
};

/// Rotates over the sessions of a key that have free capacity: over k·n picks with n free
/// sessions each is picked k times. New sessions rotate over the available
/// endpoints.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::RoundRobin)
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::<RoundRobinSelector>::default()
    }
}

/// The per-key state of [`RoundRobin`]: two cursors.
#[derive(Debug, Default)]
pub struct RoundRobinSelector {
    next_session: usize,
    next_endpoint: usize,
}

/// The first index at or after `start` (cyclically) whose item satisfies `ok`.
pub(crate) fn rotate_find<T>(items: &[T], start: usize, ok: impl Fn(&T) -> bool) -> Option<usize> {
    let n = items.len();
    (0..n).map(|i| (start + i) % n).find(|&i| ok(&items[i]))
}

impl Selector for RoundRobinSelector {
    fn select(&mut self, sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        match rotate_find(sessions, self.next_session, SessionView::has_capacity) {
            Some(i) => {
                self.next_session = i + 1;
                Selection::Session(i)
            }
            None => Selection::Create,
        }
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        let i = rotate_find(endpoints, self.next_endpoint, |e| e.available)?;
        self.next_endpoint = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_pool_traits::SessionId;

    fn views(in_flight: &[u32]) -> Vec<SessionView> {
        in_flight
            .iter()
            .enumerate()
            .map(|(i, &f)| SessionView {
                id: SessionId(i as u64),
                endpoint: 0,
                in_flight: f,
                capacity: 1,
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn golden_sequence_skips_busy_sessions() {
        let mut s = RoundRobin.selector();
        let v = views(&[0, 1, 0, 0]);
        let picks: Vec<_> = (0..6)
            .map(|_| s.select(&v, &SelectContext::default()))
            .collect();
        use Selection::Session as S;
        assert_eq!(picks, [S(0), S(2), S(3), S(0), S(2), S(3)]);
        assert_eq!(
            s.select(&views(&[1, 1]), &SelectContext::default()),
            Selection::Create
        );
        assert_eq!(s.select(&[], &SelectContext::default()), Selection::Create);
    }

    #[test]
    fn endpoints_rotate_over_available_ones() {
        let e = |available| EndpointView {
            weight: 1,
            sessions: 0,
            in_flight: 0,
            available,
        };
        let eps = [e(true), e(false), e(true)];
        let mut s = RoundRobin.selector();
        let ctx = SelectContext::default();
        let picks: Vec<_> = (0..4).map(|_| s.select_endpoint(&eps, &ctx)).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(s.select_endpoint(&[e(false)], &ctx), None);
        assert_eq!(s.select_endpoint(&[], &ctx), None);
    }
}
