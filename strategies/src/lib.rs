#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::sync::Arc;

use mcp_pool_traits::{Strategy, StrategyKind};

mod least_connections;
mod none;
mod peak_ewma;
mod random;
mod round_robin;
mod sticky;
mod weighted;

pub use least_connections::{FULL_SCAN_MAX, LeastConnections, LeastConnectionsSelector};
pub use none::{NoPooling, NoPoolingSelector};
pub use peak_ewma::{DEFAULT_DECAY, MAX_TRACKED_ENDPOINTS, PeakEwma, PeakEwmaSelector};
pub use round_robin::{RoundRobin, RoundRobinSelector};
pub use sticky::{MAX_LOST_BINDINGS, Sticky, StickySelector};
pub use weighted::{Weighted, WeightedSelector, smooth_pick};

/// The built-in strategy of `kind`; `None` for a custom kind (a pool resolves those among the
/// strategies registered with it).
pub fn builtin_of(kind: StrategyKind) -> Option<Arc<dyn Strategy>> {
    Some(match kind {
        StrategyKind::RoundRobin => Arc::new(RoundRobin),
        StrategyKind::LeastConnections => Arc::new(LeastConnections),
        StrategyKind::Sticky => Arc::new(Sticky),
        StrategyKind::Weighted => Arc::new(Weighted),
        StrategyKind::None => Arc::new(NoPooling),
        StrategyKind::PeakEwma => Arc::new(PeakEwma::default()),
        _ => return None,
    })
}

/// The built-in strategy of `kind`.
///
/// # Panics
/// For a custom kind: use [`builtin_of`].
pub fn builtin(kind: StrategyKind) -> Arc<dyn Strategy> {
    builtin_of(kind).unwrap_or_else(|| panic!("{kind} is not a built-in strategy"))
}
