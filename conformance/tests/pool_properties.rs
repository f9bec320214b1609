//! The pool's model-based property test (DESIGN §10, issue 9): random op sequences against the
//! real pool on the duplex transport and a paused clock, checked after every step by
//! `mcp_pool_conformance::pool` (see its docs for the ops and the checks), once per strategy.
//!
//! Volume: each strategy runs `PROPTEST_CASES` cases (default 128) of up to 160 ops; a run
//! ends at its first `Close`, so a case applies about 80 ops on average: some 50 000 ops per
//! strategy, over 250 000 per CI run. The test prints the exact count. A longer run:
//!
//! ```text
//! PROPTEST_CASES=2000 cargo test -p mcp-pool-conformance --release --test pool_properties
//! ```
//!
//! Failures are shrunk and saved in `pool_properties.proptest-regressions` next to this file
//! (check it in: saved cases run first on every later run).

use std::sync::atomic::{AtomicU64, Ordering};

use mcp_pool::StrategyKind;
use mcp_pool_conformance::pool::{check_pool_properties, pool_ops, scenarios};
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

/// Cases per strategy unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 128;
/// Longest op sequence generated.
const MAX_OPS: usize = 160;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn run(strategy: StrategyKind) {
    let ops = AtomicU64::new(0);
    let leases = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        // Shrinking deletes ops first (the sequence comes first in the tuple); the default
        // budget (4 × cases) is far too small for sequences of 160 ops.
        max_shrink_iters: 4096,
        max_shrink_time: 300_000,
        ..Config::default()
    });
    let result = runner.run(
        &(pool_ops(strategy, MAX_OPS), scenarios(strategy)),
        |(sequence, scenario)| {
            let report = check_pool_properties(&scenario, &sequence)
                .map_err(|v| proptest::test_runner::TestCaseError::fail(v.to_string()))?;
            ops.fetch_add(report.ops as u64, Ordering::Relaxed);
            leases.fetch_add(report.leases, Ordering::Relaxed);
            Ok(())
        },
    );
    eprintln!(
        "{strategy:?}: {} ops, {} leases over the passing cases",
        ops.load(Ordering::Relaxed),
        leases.load(Ordering::Relaxed)
    );
    if let Err(error) = result {
        panic!("{strategy:?}: {error}");
    }
}

#[test]
fn model_round_robin() {
    run(StrategyKind::RoundRobin);
}

#[test]
fn model_least_connections() {
    run(StrategyKind::LeastConnections);
}

#[test]
fn model_sticky() {
    run(StrategyKind::Sticky);
}

#[test]
fn model_weighted() {
    run(StrategyKind::Weighted);
}

#[test]
fn model_none() {
    run(StrategyKind::None);
}
