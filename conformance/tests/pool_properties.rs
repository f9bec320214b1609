//! The pool property of DESIGN §10, on random interleavings of acquires, releases, broken
//! leases, drains and cancellations across 8 principals. 256 cases by default; set
//! `PROPTEST_CASES` for more.

use mcp_pool::PoolConfig;
use mcp_pool_conformance::pool::{check_pool_properties, pool_ops};
use proptest::prelude::*;

fn run(
    ops: &[mcp_pool_conformance::pool::PoolOp],
    config: PoolConfig,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime
        .block_on(check_pool_properties(ops, config, 8))
        .map_err(|v| TestCaseError::fail(v.to_string()))
}

fn config(max_size: u32, session_concurrency: u32) -> PoolConfig {
    PoolConfig {
        max_size,
        size: max_size,
        session_concurrency,
        ..PoolConfig::enabled()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn leases_never_cross_keys_and_keys_never_exceed_max_size(
        ops in pool_ops(8, 60),
        max_size in 1u32..=3,
        session_concurrency in 1u32..=2,
    ) {
        run(&ops, config(max_size, session_concurrency))?;
    }
}
