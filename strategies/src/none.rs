//! None: no pooling.

use mcp_pool_traits::{
    EndpointView, SelectContext, Selection, Selector, SessionView, Strategy, StrategyKind,
    least_loaded_endpoint,
};

/// No pooling: every acquire creates a fresh session and every release closes it — the
/// per-request behaviour of a gateway without a pool, kept for backward compatibility and for
/// servers that must not share sessions at all. `max_size` still caps concurrent sessions per
/// key. New sessions go to the available endpoint with the fewest sessions.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPooling;

impl Strategy for NoPooling {
    fn name(&self) -> &str {
        "none"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::None)
    }

    fn pools(&self) -> bool {
        false
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(NoPoolingSelector)
    }
}

/// The selector of [`NoPooling`]: stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPoolingSelector;

impl Selector for NoPoolingSelector {
    fn select(&mut self, _sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        Selection::Create
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        least_loaded_endpoint(endpoints)
    }
}
