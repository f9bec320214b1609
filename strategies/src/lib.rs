#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::sync::Arc;

use mcp_pool_traits::{Strategy, StrategyKind};

mod none;
mod round_robin;

pub use none::{NoPooling, NoPoolingSelector};
pub use round_robin::{RoundRobin, RoundRobinSelector};

/// The built-in strategy of `kind`, or `None` when this version does not ship it yet.
pub fn builtin(kind: StrategyKind) -> Option<Arc<dyn Strategy>> {
    match kind {
        StrategyKind::RoundRobin => Some(Arc::new(RoundRobin)),
        StrategyKind::None => Some(Arc::new(NoPooling)),
        StrategyKind::LeastConnections | StrategyKind::Sticky | StrategyKind::Weighted => None,
    }
}
