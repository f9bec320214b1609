//! A custom strategy in a few lines, proven by the conformance suite.
//!
//! ```text
//! cargo run --example custom_strategy     # uses it in a pool against the reference server
//! cargo test --example custom_strategy    # runs the strategy conformance checks on it
//! ```
//!
//! `Random` picks a uniformly random session among those with free capacity, and a random
//! available endpoint for new sessions.

use std::sync::Arc;

use mcp_pool::{
    Pool, PoolConfig, Principal, ServerConfig, ServerId, Strategy,
    traits::{EndpointView, SelectContext, Selection, Selector, SessionView},
};

/// Uniformly random selection (xorshift; per key, no shared state).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Strategy for Random {
    fn name(&self) -> &str {
        "random"
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(RandomSelector(0x2545_F491_4F6C_DD1D))
    }
}

#[derive(Debug)]
struct RandomSelector(u64);

impl RandomSelector {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random index among those `ok` accepts, without allocating: reservoir sampling.
    fn pick<T>(&mut self, items: &[T], ok: impl Fn(&T) -> bool) -> Option<usize> {
        let mut chosen = None;
        let mut seen = 0u64;
        for (i, _) in items.iter().enumerate().filter(|(_, item)| ok(item)) {
            seen += 1;
            if self.next().is_multiple_of(seen) {
                chosen = Some(i);
            }
        }
        chosen
    }
}

impl Selector for RandomSelector {
    fn select(&mut self, sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        self.pick(sessions, SessionView::has_capacity)
            .map_or(Selection::Create, Selection::Session)
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        self.pick(endpoints, |e| e.available)
    }
}

#[cfg(test)]
mcp_pool_conformance::counting_allocator!();
#[cfg(test)]
mcp_pool_conformance::strategy_conformance!(name: random, strategy: crate::Random);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream = mcp_pool_conformance::ReferenceServer::start().await?;
    let server = ServerId::new("reference")?;
    let pool = Pool::builder()
        .server(
            ServerConfig::new(server.clone(), upstream.endpoint())
                .pool(PoolConfig {
                    max_size: 3,
                    size: 3,
                    ..PoolConfig::enabled()
                })
                .strategy(Arc::new(Random)),
        )
        .build()?;
    let user = Principal::user("alice");
    let leases = [
        pool.acquire(&server, user).await?,
        pool.acquire(&server, user).await?,
        pool.acquire(&server, user).await?,
    ];
    drop(leases);
    let mut picks = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let lease = pool.acquire(&server, user).await?;
        *picks.entry(lease.session_id()).or_insert(0) += 1;
    }
    println!(
        "strategy {}: picks per session over 300 acquires: {picks:?}",
        pool.stats().servers[0].strategy
    );
    pool.close().await;
    Ok(())
}
