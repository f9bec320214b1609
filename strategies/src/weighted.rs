//! Weighted: smooth weighted round robin over sessions and endpoints.

use mcp_pool_traits::{
    EndpointView, SelectContext, Selection, Selector, SessionId, SessionView, Strategy,
    StrategyKind,
};

/// Endpoint weights decide where sessions are created and which sessions are picked, smoothly
/// (nginx's smooth weighted round robin: weights 2:1 give A B A, not A A B) and exactly over a
/// cycle of the total weight. A session weighs what its endpoint weighs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Weighted;

impl Strategy for Weighted {
    fn name(&self) -> &str {
        "weighted"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::Weighted)
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(WeightedSelector::default())
    }
}

/// The per-key state of [`Weighted`]: the current weight of each session (in the order of the
/// pool's session list) and of each endpoint.
#[derive(Debug, Default)]
pub struct WeightedSelector {
    ids: Vec<SessionId>,
    current: Vec<i64>,
    endpoints: Vec<i64>,
}

/// One round of smooth weighted round robin over the eligible items: every eligible item gains
/// its weight, the largest current weight wins (lowest index on ties) and loses the total.
pub fn smooth_pick<T>(
    items: &[T],
    current: &mut [i64],
    weight: impl Fn(&T) -> u32,
    eligible: impl Fn(&T) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        if !eligible(item) {
            continue;
        }
        let w = i64::from(weight(item));
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    current[best] -= total;
    Some(best)
}

impl WeightedSelector {
    /// Aligns the current weights with `sessions`, keeping those of sessions still present.
    /// Free of allocation while the session list is unchanged (the common case).
    fn align(&mut self, sessions: &[SessionView]) {
        let aligned = self.ids.len() == sessions.len()
            && self.ids.iter().zip(sessions).all(|(id, v)| *id == v.id);
        if aligned {
            return;
        }
        let current: Vec<i64> = sessions
            .iter()
            .map(|v| {
                self.ids
                    .iter()
                    .position(|id| *id == v.id)
                    .map_or(0, |i| self.current[i])
            })
            .collect();
        self.ids = sessions.iter().map(|v| v.id).collect();
        self.current = current;
    }
}

impl Selector for WeightedSelector {
    fn select(&mut self, sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        self.align(sessions);
        smooth_pick(
            sessions,
            &mut self.current,
            |s| s.weight,
            SessionView::has_capacity,
        )
        .map_or(Selection::Create, Selection::Session)
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        if self.endpoints.len() != endpoints.len() {
            self.endpoints = vec![0; endpoints.len()];
        }
        smooth_pick(
            endpoints,
            &mut self.endpoints,
            |e| e.weight,
            |e| e.available,
        )
    }
}
