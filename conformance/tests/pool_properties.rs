//! The pool's model-based property test: random op sequences against the real pool on the
//! duplex transport and a paused clock, checked after every step by `mcp_pool_conformance::pool`
//! (see its docs for the ops and the checks), once per strategy.
//!
//! Volume: each strategy runs `PROPTEST_CASES` cases (default 384) of up to 200 ops; a run
//! ends at its first `Close` (about one op in 110), so a case applies about 60 ops: some
//! 22 000 ops per strategy, about 110 000 per CI run (each test prints its count with
//! `--nocapture`), in about 80 s on 2 cores in a debug build. A longer run:
//!
//! ```text
//! PROPTEST_CASES=5000 cargo test -p mcp-pool-conformance --release --test pool_properties
//! ```
//!
//! `MCP_POOL_MODEL_TRACE=1` prints every step and the state after it (for reading a shrunk
//! failure); `MCP_POOL_MODEL_SKIP=check,…` skips named checks while exploring (never in CI).
//!
//! Failures are shrunk and saved in `pool_properties.proptest-regressions` next to this file
//! (check it in: saved cases run first on every later run).

use std::sync::Arc;

use mcp_pool::StrategyKind;
use mcp_pool_conformance::pool::{Plugins, run_model};

/// Cases per strategy unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 384;
/// Longest op sequence generated.
const MAX_OPS: usize = 200;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn run(strategy: StrategyKind) {
    run_model(
        &Plugins::default().starting_on(strategy),
        cases(),
        MAX_OPS,
        Some(file!()),
    );
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

#[test]
fn model_peak_ewma() {
    run(StrategyKind::PeakEwma);
}

// The model with a strategy of a third party's: `pool_conformance!` registers it and starts
// scenarios on it (a round robin under a custom name here; `tests/custom_strategy_by_name.rs`
// runs a least-recently-used one).
#[derive(Debug)]
struct Renamed;

impl mcp_pool::Strategy for Renamed {
    fn name(&self) -> &str {
        "renamed_round_robin"
    }

    fn selector(&self) -> Box<dyn mcp_pool::traits::Selector> {
        mcp_pool::Strategy::selector(&mcp_pool_strategies::RoundRobin)
    }
}

mcp_pool_conformance::pool_conformance! {
    name: model_custom_strategy_and_backend,
    strategy: Renamed,
    backend: || Arc::new(mcp_pool_backends::MemoryBackend::new()),
    cases: 32,
}

/// Pinned sequences: the shortest known reproductions of defects the engine once had, each a
/// test named by the property it broke, so that each runs whatever proptest draws.
mod pinned {
    use std::time::Duration;

    use mcp_pool::{PoolConfig, StrategyKind};
    use mcp_pool_conformance::pool::{
        CallTool, ConfigChange, ConnectFault, PoolOp, Scenario, check_pool_properties,
    };

    const A: PoolOp = PoolOp::Acquire {
        principal: 0,
        conversation: None,
    };

    fn conv(c: u8) -> PoolOp {
        PoolOp::Acquire {
            principal: 0,
            conversation: Some(c),
        }
    }

    fn scenario(strategy: StrategyKind, max_size: u32, session_concurrency: u32) -> Scenario {
        Scenario {
            config: PoolConfig {
                strategy,
                max_size,
                size: 1,
                min_size: 1,
                session_concurrency,
                timeout: Duration::from_secs(5),
                max_idle_time: Duration::from_secs(60),
                max_lifetime: Duration::from_secs(60),
                health_check_interval: Duration::from_secs(10),
                ..PoolConfig::enabled()
            },
            principals: 1,
            conversations: 2,
            cleanup_interval: Duration::from_secs(1),
            key_idle_timeout: Duration::from_secs(20),
            create_timeout: Duration::from_secs(2),
            user_limit: None,
            max_sessions: None,
            max_keys: None,
        }
    }

    fn config(enabled: bool, strategy: StrategyKind) -> PoolOp {
        PoolOp::Configure(ConfigChange {
            enabled,
            strategy,
            min_size: 1,
            size: 1,
            max_size: 1,
            session_concurrency: 1,
            timeout_secs: 5,
        })
    }

    fn check(scenario: &Scenario, ops: &[PoolOp]) {
        if let Err(violation) = check_pool_properties(scenario, ops) {
            panic!("{violation}\nops: {ops:?}");
        }
    }

    /// A session created for one waiter serves the others queued behind it
    /// (`max_size` 1, `session_concurrency` 4, four acquires while the connect is slow).
    #[test]
    fn a_session_created_for_one_waiter_serves_the_waiters_queued_behind_it() {
        check(
            &scenario(StrategyKind::RoundRobin, 1, 4),
            &[
                PoolOp::Connect(ConnectFault::Slow(1)),
                A,
                A,
                A,
                A,
                PoolOp::Advance(15),
            ],
        );
    }

    /// Disabling pooling closes the idle session at once and frees its room.
    #[test]
    fn disabling_pooling_closes_the_idle_session_and_frees_its_room() {
        check(
            &scenario(StrategyKind::RoundRobin, 1, 1),
            &[
                A,
                PoolOp::Release(0),
                config(false, StrategyKind::RoundRobin),
                A,
            ],
        );
    }

    /// The same for a switch to strategy `none`.
    #[test]
    fn switching_to_strategy_none_closes_the_idle_session_and_frees_its_room() {
        check(
            &scenario(StrategyKind::RoundRobin, 1, 1),
            &[A, PoolOp::Release(0), config(true, StrategyKind::None), A],
        );
    }

    /// Sticky at `max_size`, a new conversation takes the least recently used
    /// idle session's room instead of waiting.
    #[test]
    fn a_new_sticky_conversation_at_max_size_takes_an_idle_sessions_room() {
        check(
            &scenario(StrategyKind::Sticky, 1, 1),
            &[conv(0), PoolOp::Release(0), conv(1)],
        );
    }

    /// The `min_size` refill does not consume the lost binding of the
    /// principal's affinity: its next lease says `is_rebound()`.
    #[test]
    fn min_size_refills_never_take_a_lost_principal_binding() {
        check(
            &scenario(StrategyKind::Sticky, 2, 1),
            &[A, PoolOp::Break(0), PoolOp::Advance(20), A],
        );
    }

    /// Shrinking the endpoint list while a creation on a removed endpoint is
    /// in flight neither panics nor leaks.
    #[test]
    fn removing_the_endpoint_of_a_creation_in_flight_neither_panics_nor_leaks() {
        let mut scenario = scenario(StrategyKind::RoundRobin, 2, 1);
        scenario.config.enabled = false;
        check(
            &scenario,
            &[
                PoolOp::Endpoints {
                    mask: 3,
                    weights: [1, 1, 1],
                },
                PoolOp::Connect(ConnectFault::Slow(1)),
                A,
                A,
                PoolOp::Endpoints {
                    mask: 1,
                    weights: [1, 1, 1],
                },
                config(false, StrategyKind::RoundRobin),
            ],
        );
    }

    /// A session past `max_lifetime` is not handed out (here: shared under
    /// `session_concurrency` 2 while its first lease is held across the lifetime).
    #[test]
    fn a_session_past_max_lifetime_is_not_handed_out() {
        check(
            &scenario(StrategyKind::RoundRobin, 1, 2),
            &[A, PoolOp::Advance(700), A],
        );
    }

    /// Server totals survive the removal of an idle key.
    #[test]
    fn server_totals_survive_the_removal_of_an_idle_key() {
        check(
            &scenario(StrategyKind::RoundRobin, 1, 1),
            &[A, PoolOp::Release(0), PoolOp::Advance(300), A],
        );
    }

    /// A strategy change leaves no gauge negative or stuck.
    #[test]
    fn a_strategy_change_leaves_no_gauge_negative_or_stuck() {
        check(
            &scenario(StrategyKind::None, 1, 1),
            &[
                A,
                PoolOp::Call(0, CallTool::Echo),
                config(false, StrategyKind::Weighted),
                PoolOp::Advance(50),
            ],
        );
    }
}
