//! The pool's model-based property test: the real engine, driven by
//! random sequences of [`PoolOp`]s, beside a small reference model of what it may and must do.
//!
//! [`check_pool_properties`] builds a [`Pool`] from a [`Scenario`] (one server, the in-process
//! [`DuplexTransport`] with its fault switches, a local metrics recorder) on a current-thread
//! runtime with tokio's paused clock, applies the ops one by one, lets every task run to
//! quiescence after each, and checks:
//!
//! - **isolation**: every lease comes from its principal's key, and no session (nor upstream
//!   session) ever appears under two keys;
//! - **sticky exclusivity**: under `sticky`, a session handed to one affinity (downstream
//!   session, else the principal) is never handed to another; an affinity never gets a second
//!   session while its bound one is alive (without the lease saying `is_rebound()`);
//!   `is_rebound()` only when the affinity had a bound session before, and always after its
//!   bound session was lost by death the model saw (marked broken, drained, killed upstream
//!   with no maintenance pass in between); never after `unbind`;
//! - **capacity**: `sessions_total + sessions_creating <= max_size` per key (sessions with
//!   leases out above a lowered `max_size` are allowed until released, idle ones are not);
//!   the pool's `user_limit`, `max_sessions` and `max_keys` never exceeded; at most one
//!   session per key out of service for a health check;
//! - **liveness**: at every quiescent point, a key with waiters has no session a waiter could
//!   use (`sessions_available` for pooling strategies; `sessions_idle` under `sticky`, whose
//!   idle sessions must be closed to make room; none without pooling) and no room to create
//!   one, unless a pool cap is exhausted or the waiters are sticky conversations whose bound
//!   session is alive and busy. No acquire outlives its `timeout`, nor ends in
//!   [`PoolError::Timeout`] before it;
//! - **retirement**: with pooling off (disabled or strategy `none`) no idle session exists;
//!   sessions retired by `drain()`, a strategy change or an endpoint change live on only
//!   while a lease is out on them (a strategy or endpoint change is given one
//!   `cleanup_interval` to take effect); no session is handed out past `max_lifetime`;
//! - **accounting**: the gauges `mcp_pool_sessions` and `mcp_pool_waiters` agree with the
//!   stats and never go negative; server totals (hits, misses, releases, timeouts,
//!   evictions) never decrease; upstream sessions alive never exceed the pool's sessions;
//! - **errors**: each error is one the model allows at that point (`Closed` only after
//!   `close()`, cap errors only under cap pressure, `Create`/`CircuitOpen` only while connect
//!   faults may be in effect); no task panics;
//! - **at rest**: when every lease is returned and `close()` has returned, nothing is alive
//!   upstream, and every gauge reads 0. Right after `close()` returns, only sessions with
//!   leases out are alive upstream.
//!
//! [`pool_ops`] and [`scenarios`] generate inputs for proptest; `tests/pool_properties.rs`
//! runs every strategy (see there for the case count and `PROPTEST_CASES`).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use mcp_pool::{
    AcquireRequest, Endpoint, HealthCheckConfig, Lease, Pool, PoolConfig, PoolError, PoolKey,
    Principal, ServerConfig, ServerId, SessionId, StrategyKind, TransportKind,
    rmcp::{ServiceError, model::CallToolRequestParams},
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use proptest::prelude::*;
use tokio::{task::JoinHandle, time::Instant};

use crate::DuplexTransport;

/// The endpoint URLs a scenario's server may list (the duplex transport ignores them, but
/// records them per upstream session).
pub const ENDPOINT_URLS: [&str; 3] = [
    "http://replica-a.invalid/mcp",
    "http://replica-b.invalid/mcp",
    "http://replica-c.invalid/mcp",
];

/// Longest time an op may take to act, beyond what the model expects (a quiescence step).
const SLACK: Duration = Duration::from_millis(20);

/// How long the circuit breaker stays open after connect failures (its default reset time),
/// plus margin: errors of an open circuit are accepted this long after the last fault.
const FAULT_AFTERMATH: Duration = Duration::from_secs(65);

/// A tool call a lease can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallTool {
    /// `echo`: answered at once.
    Echo,
    /// `sleep` this many seconds (tokio's clock).
    Sleep(u8),
    /// `fail`: a JSON-RPC error; the session stays pooled.
    Fail,
}

/// How connects behave from now on (the duplex transport's switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFault {
    /// Connects succeed at once.
    Healthy,
    /// Connects fail at once (connection refused).
    Fail,
    /// Connects take this many seconds.
    Slow(u8),
    /// Connects hang until their timeout.
    Hang,
}

/// A new pool configuration for the server: the scenario's durations, with these fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigChange {
    /// `enabled`.
    pub enabled: bool,
    /// `strategy`.
    pub strategy: StrategyKind,
    /// `min_size`, clamped to `size`.
    pub min_size: u32,
    /// `size`, clamped to `max_size`.
    pub size: u32,
    /// `max_size`.
    pub max_size: u32,
    /// `session_concurrency`.
    pub session_concurrency: u32,
    /// `timeout`, in seconds.
    pub timeout_secs: u8,
}

/// One step of a random pool workload. Indices wrap around the current lists (principals,
/// conversations, leases, pending acquires, calls, upstream sessions); an op on an empty list
/// does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    /// Starts an acquire in its own task for principal `principal`, with downstream session
    /// `conv-{conversation}` when given (`AcquireRequest::downstream_session`).
    Acquire {
        /// Principal index.
        principal: u8,
        /// Conversation index, if any.
        conversation: Option<u8>,
    },
    /// Drops lease `n`.
    Release(u8),
    /// Marks lease `n` broken, then drops it (its session is evicted).
    Break(u8),
    /// Starts a tool call on lease `n` in its own task; the lease comes back when it ends.
    Call(u8, CallTool),
    /// Aborts call `n`: its lease is dropped mid-call.
    AbortCall(u8),
    /// Aborts pending acquire `n`, wherever it is (queued, connecting).
    CancelAcquire(u8),
    /// `set_pool_config` on the server.
    Configure(ConfigChange),
    /// Replaces the server (`add_server`) with the endpoints of `ENDPOINT_URLS` whose bit is
    /// set in `mask` (at least one), of weights `weights`.
    Endpoints {
        /// Bit `i`: `ENDPOINT_URLS[i]` is listed.
        mask: u8,
        /// Weight of each URL.
        weights: [u8; 3],
    },
    /// `Pool::unbind` of a principal's conversation.
    Unbind {
        /// Principal index.
        principal: u8,
        /// Conversation index.
        conversation: u8,
    },
    /// `drain()`.
    Drain,
    /// Moves the clock this many tenths of a second, in steps of at most one second (and at
    /// most `cleanup_interval`), checking after each.
    Advance(u16),
    /// Ends upstream session `n` (of those alive) from the server side.
    Kill(u8),
    /// Makes upstream session `n` (of those alive) leave every request unanswered.
    Hang(u8),
    /// Sets the connect behaviour.
    Connect(ConnectFault),
    /// `close()`; the run ends with the final checks.
    Close,
}

/// Everything fixed for one run: the pool builder's knobs and the server's first
/// configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The server's configuration at start; its durations stay for the whole run.
    pub config: PoolConfig,
    /// Number of principals (keys), 1 or more.
    pub principals: u8,
    /// Conversations (downstream sessions) per principal; 0 means acquires carry none.
    pub conversations: u8,
    /// `PoolBuilder::cleanup_interval`.
    pub cleanup_interval: Duration,
    /// `PoolBuilder::key_idle_timeout`.
    pub key_idle_timeout: Duration,
    /// `PoolBuilder::create_timeout`.
    pub create_timeout: Duration,
    /// `PoolBuilder::user_limit`, if set.
    pub user_limit: Option<u32>,
    /// `PoolBuilder::max_sessions`, if set.
    pub max_sessions: Option<u32>,
    /// `PoolBuilder::max_keys`, if set.
    pub max_keys: Option<u32>,
}

/// A property that did not hold, with the step it broke at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the op after which the check failed (`ops.len()` for the final checks).
    pub step: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after step {}: {}", self.step, self.message)
    }
}

impl std::error::Error for Violation {}

/// What a run did, for volume accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Ops applied (a run ends at its first `Close`).
    pub ops: usize,
    /// Leases handed out.
    pub leases: u64,
    /// Acquires that ended in an error (timeouts included).
    pub errors: u64,
}

/// The configurations [`scenarios`] draws from for `strategy`: sizes 1-4, concurrency 1-3,
/// acquire timeouts 1-5 s, idle times 60-120 s, lifetimes 60-240 s, health checks every
/// 10-40 s.
pub fn pool_configs(strategy: StrategyKind) -> impl Strategy<Value = PoolConfig> {
    (
        1u32..=4,
        0u32..4,
        0u32..4,
        1u32..=3,
        1u64..=5,
        60u64..=120,
        60u64..=240,
        10u64..=40,
        prop::bool::weighted(0.9),
    )
        .prop_map(
            move |(max, size, min, concurrency, timeout, idle, lifetime, health, enabled)| {
                let size = 1 + size % max;
                PoolConfig {
                    enabled,
                    strategy,
                    max_size: max,
                    size,
                    min_size: 1 + min % size,
                    session_concurrency: concurrency,
                    timeout: Duration::from_secs(timeout),
                    max_idle_time: Duration::from_secs(idle),
                    max_lifetime: Duration::from_secs(lifetime),
                    health_check_interval: Duration::from_secs(health),
                    ..PoolConfig::enabled()
                }
            },
        )
}

/// Scenarios whose server starts with `strategy`: 1-3 principals, 0-2 conversations each,
/// cleanup every 1-5 s, keys idle after 20-120 s, creations bounded by 2-10 s, and each pool
/// cap set low (user 1-4, sessions 2-6, keys 1-2) in a quarter of the runs.
pub fn scenarios(strategy: StrategyKind) -> impl Strategy<Value = Scenario> {
    let cap = |range: std::ops::RangeInclusive<u32>| prop::option::weighted(0.25, range);
    (
        pool_configs(strategy),
        1u8..=3,
        0u8..=2,
        1u64..=5,
        20u64..=120,
        2u64..=10,
        cap(1..=4),
        cap(2..=6),
        cap(1..=2),
    )
        .prop_map(
            |(
                config,
                principals,
                conversations,
                cleanup,
                key_idle,
                create,
                user,
                sessions,
                keys,
            )| {
                Scenario {
                    config,
                    principals,
                    conversations,
                    cleanup_interval: Duration::from_secs(cleanup),
                    key_idle_timeout: Duration::from_secs(key_idle),
                    create_timeout: Duration::from_secs(create),
                    user_limit: user,
                    max_sessions: sessions,
                    max_keys: keys,
                }
            },
        )
}

fn strategy_kinds() -> impl Strategy<Value = StrategyKind> {
    prop_oneof![
        Just(StrategyKind::RoundRobin),
        Just(StrategyKind::LeastConnections),
        Just(StrategyKind::Sticky),
        Just(StrategyKind::Weighted),
        Just(StrategyKind::None),
    ]
}

fn config_changes(strategy: StrategyKind) -> impl Strategy<Value = ConfigChange> {
    (
        prop::bool::weighted(0.85),
        prop_oneof![3 => Just(strategy), 1 => strategy_kinds()],
        1u32..=4,
        0u32..4,
        0u32..4,
        1u32..=3,
        1u8..=5,
    )
        .prop_map(
            |(enabled, strategy, max_size, size, min, concurrency, timeout)| {
                let size = 1 + size % max_size;
                ConfigChange {
                    enabled,
                    strategy,
                    min_size: 1 + min % size,
                    size,
                    max_size,
                    session_concurrency: concurrency,
                    timeout_secs: timeout,
                }
            },
        )
}

/// Sequences of 1 to `max_len` ops (a `Close` ends a run: about one op in 110 is one) whose configuration changes mostly keep `strategy` (one in
/// four switches to any of the five). Acquires and releases dominate, so keys fill up and
/// queue; clock advances are mostly short (under 5 s) and sometimes cross idle times and
/// lifetimes (up to 250 s).
pub fn pool_ops(strategy: StrategyKind, max_len: usize) -> impl Strategy<Value = Vec<PoolOp>> {
    let tool = prop_oneof![
        Just(CallTool::Echo),
        (1u8..=4).prop_map(CallTool::Sleep),
        Just(CallTool::Fail),
    ];
    let fault = prop_oneof![
        3 => Just(ConnectFault::Healthy),
        1 => Just(ConnectFault::Fail),
        1 => (1u8..=3).prop_map(ConnectFault::Slow),
        1 => Just(ConnectFault::Hang),
    ];
    let advance = prop_oneof![
        6 => 1u16..=50,
        2 => 50u16..=200,
        1 => 200u16..=2500,
    ];
    let op = prop_oneof![
        32 => (any::<u8>(), prop::option::weighted(0.6, any::<u8>()))
            .prop_map(|(principal, conversation)| PoolOp::Acquire { principal, conversation }),
        20 => any::<u8>().prop_map(PoolOp::Release),
        4 => any::<u8>().prop_map(PoolOp::Break),
        8 => (any::<u8>(), tool).prop_map(|(n, tool)| PoolOp::Call(n, tool)),
        4 => any::<u8>().prop_map(PoolOp::AbortCall),
        4 => any::<u8>().prop_map(PoolOp::CancelAcquire),
        4 => config_changes(strategy).prop_map(PoolOp::Configure),
        2 => (1u8..8, [1u8..=3, 1u8..=3, 1u8..=3])
            .prop_map(|(mask, weights)| PoolOp::Endpoints { mask, weights }),
        2 => (any::<u8>(), any::<u8>())
            .prop_map(|(principal, conversation)| PoolOp::Unbind { principal, conversation }),
        2 => Just(PoolOp::Drain),
        14 => advance.prop_map(PoolOp::Advance),
        2 => any::<u8>().prop_map(PoolOp::Kill),
        2 => any::<u8>().prop_map(PoolOp::Hang),
        4 => fault.prop_map(PoolOp::Connect),
        1 => Just(PoolOp::Close),
    ];
    prop::collection::vec(op, 1..=max_len.max(1))
}

/// What a user plugs into the model run: a strategy of their own (registered with the pool;
/// scenarios then name it) and a state backend (a fresh one per run). The transport stays the
/// in-process [`DuplexTransport`]: the model injects connect failures, hangs and deaths through
/// it, which no real medium allows (a transport proves itself with
/// [`transport_conformance!`](crate::transport_conformance)).
#[derive(Clone, Default)]
pub struct Plugins {
    strategy: Option<Arc<dyn mcp_pool::Strategy>>,
    backend: Option<Arc<dyn Fn() -> Arc<dyn mcp_pool::StateBackend> + Send + Sync>>,
    start: Option<StrategyKind>,
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugins")
            .field(
                "strategy",
                &self.strategy.as_ref().map(|s| s.name().to_owned()),
            )
            .field("backend", &self.backend.is_some())
            .field("start", &self.start)
            .finish()
    }
}

impl Plugins {
    /// Registers `strategy` with every pool of the run.
    pub fn with_strategy(mut self, strategy: Arc<dyn mcp_pool::Strategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Gives every pool of the run a backend made by `backend` (called once per run). It
    /// must work on tokio's paused clock: an in-process backend, not a networked one.
    pub fn with_backend(
        mut self,
        backend: impl Fn() -> Arc<dyn mcp_pool::StateBackend> + Send + Sync + 'static,
    ) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Scenarios start on the built-in `kind` (nothing registered).
    pub fn starting_on(mut self, kind: StrategyKind) -> Self {
        self.start = Some(kind);
        self
    }

    /// Whether `kind` is the registered strategy (the pool reuses its instance).
    fn registered(&self, kind: StrategyKind) -> bool {
        self.strategy.is_some() && self.registered_kind() == Some(kind)
    }

    fn registered_kind(&self) -> Option<StrategyKind> {
        self.strategy.as_ref().map(|s| {
            s.kind().unwrap_or_else(|| {
                StrategyKind::custom(s.name()).expect("a registered strategy has a valid name")
            })
        })
    }

    /// The kind scenarios start on: [`starting_on`](Self::starting_on)'s, else the plugged-in
    /// strategy's, else round robin.
    pub fn strategy_kind(&self) -> StrategyKind {
        if let Some(kind) = self.start {
            return kind;
        }
        match &self.strategy {
            None => StrategyKind::RoundRobin,
            Some(s) => s.kind().unwrap_or_else(|| {
                StrategyKind::custom(s.name()).expect("a registered strategy has a valid name")
            }),
        }
    }

    /// Whether `kind` pools and binds, as the model needs to know.
    fn traits_of(&self, kind: StrategyKind) -> (bool, bool) {
        match &self.strategy {
            Some(s) if s.kind().is_none() && self.registered_kind() == Some(kind) => {
                (s.pools(), s.selector().binds())
            }
            _ => (kind != StrategyKind::None, kind == StrategyKind::Sticky),
        }
    }
}

/// Runs `ops` against a fresh pool built from `scenario`, on a new current-thread runtime with
/// a paused clock and a local metrics recorder (so runs on one thread do not share gauges).
///
/// # Errors
/// The first [`Violation`].
pub fn check_pool_properties(scenario: &Scenario, ops: &[PoolOp]) -> Result<RunReport, Violation> {
    check_pool_properties_with(scenario, ops, &Plugins::default())
}

/// [`check_pool_properties`] with a user's strategy or backend plugged in.
///
/// # Errors
/// The first [`Violation`].
pub fn check_pool_properties_with(
    scenario: &Scenario,
    ops: &[PoolOp],
    plugins: &Plugins,
) -> Result<RunReport, Violation> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| Violation {
            step: 0,
            message: format!("no runtime: {e}"),
        })?;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    runtime.block_on(run(scenario, ops, snapshotter, plugins))
}

/// Runs the model `cases` times (proptest, shrinking on failure) with `plugins`, scenarios
/// starting on the plugged-in strategy ([`Plugins::strategy_kind`]), sequences of up to
/// `max_ops` ops; prints the ops and leases applied. Failures are saved (and replayed first)
/// in `{source_file}.proptest-regressions`-style files next to `source_file` when given
/// (`Some(file!())`). What `pool_conformance!` and this crate's `tests/pool_properties.rs`
/// run.
///
/// # Panics
/// On the first (shrunk) violation, naming the strategy.
pub fn run_model(plugins: &Plugins, cases: u32, max_ops: usize, source_file: Option<&'static str>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let strategy = plugins.strategy_kind();
    let (ops, leases) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        source_file,
        failure_persistence: source_file.map(|_| {
            Box::new(
                proptest::test_runner::FileFailurePersistence::SourceParallel(
                    "proptest-regressions",
                ),
            ) as Box<dyn proptest::test_runner::FailurePersistence>
        }),
        // Shrinking deletes ops first (the sequence comes first in the tuple); the default
        // budget (4 × cases) is far too small for sequences of 160 ops.
        max_shrink_iters: 4096,
        max_shrink_time: 300_000,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(
        &(pool_ops(strategy, max_ops), scenarios(strategy)),
        |(sequence, scenario)| {
            let report = check_pool_properties_with(&scenario, &sequence, plugins)
                .map_err(|v| proptest::test_runner::TestCaseError::fail(v.to_string()))?;
            ops.fetch_add(report.ops as u64, Ordering::Relaxed);
            leases.fetch_add(report.leases, Ordering::Relaxed);
            Ok(())
        },
    );
    eprintln!(
        "{strategy}: {} ops, {} leases over the passing cases",
        ops.load(Ordering::Relaxed),
        leases.load(Ordering::Relaxed)
    );
    if let Err(error) = result {
        panic!("{strategy}: {error}");
    }
}

/// Emits a `#[test]` that runs the pool's model-based properties ([`run_model`]) with a
/// user's strategy and/or state backend plugged in:
///
/// ```ignore
/// mcp_pool_conformance::pool_conformance! {
///     name: lru_pool,
///     // Optional: a `Strategy` expression; scenarios start on it (and switch among it and
///     // the built-ins).
///     strategy: LeastRecentlyUsed,
///     // Optional: makes a fresh in-process `StateBackend` per run.
///     backend: || std::sync::Arc::new(MyBackend::new()),
///     // Optional: cases (default 64; `PROPTEST_CASES` overrides).
///     cases: 64,
/// }
/// ```
#[macro_export]
macro_rules! pool_conformance {
    (
        name: $name:ident
        $(, strategy: $strategy:expr)?
        $(, backend: $backend:expr)?
        $(, cases: $cases:expr)?
        $(,)?
    ) => {
        #[test]
        fn $name() {
            #[allow(unused_mut)]
            let mut plugins = $crate::pool::Plugins::default();
            $(plugins = plugins.with_strategy(::std::sync::Arc::new($strategy));)?
            $(
                let backend = $backend;
                plugins = plugins.with_backend(move || {
                    let backend: $crate::pool::SharedBackend = backend();
                    backend
                });
            )?
            #[allow(unused_mut, unused_assignments)]
            let mut cases: u32 = 64;
            $(cases = $cases;)?
            let cases = ::std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(cases);
            $crate::pool::run_model(&plugins, cases, 200, ::std::option::Option::Some(file!()));
        }
    };
}

/// A shared state backend, named for [`pool_conformance!`](crate::pool_conformance).
pub type SharedBackend = Arc<dyn mcp_pool::StateBackend>;

/// An affinity: a principal and its downstream session, if any.
type Affinity = (usize, Option<u8>);

/// What the model expects of an affinity's next lease under `sticky`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Its bound session was lost by death: `is_rebound()`. `strong`: whatever the clock
    /// does meanwhile; else only if no clock advance (maintenance pass) came first.
    Rebound { strong: bool, why: &'static str },
    /// Its binding ended by `unbind`: not `is_rebound()`.
    NotRebound,
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    session: SessionId,
    tag: Option<u64>,
}

struct Pending {
    task: JoinHandle<Result<Lease, PoolError>>,
    info: Acquiring,
}

/// What the model knows of a pending acquire.
struct Acquiring {
    affinity: Affinity,
    started: Instant,
    /// The longest acquire timeout configured while it was pending.
    timeout: Duration,
    /// The shortest, for "timed out too early".
    min_timeout: Duration,
    /// A connect fault may have affected it.
    faulted: bool,
    /// The pool configuration epoch (strategy, enabled, endpoints) when it started.
    epoch: u64,
}

struct Held {
    affinity: Affinity,
    lease: Lease,
    tag: Option<u64>,
}

struct Call {
    affinity: Affinity,
    session: SessionId,
    tag: Option<u64>,
    task: JoinHandle<(Lease, Result<(), ServiceError>)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    hits: u64,
    misses: u64,
    releases: u64,
    timeouts: u64,
    evictions: u64,
}

struct Model {
    plugins: Plugins,
    scenario: Scenario,
    pool: Pool,
    transport: DuplexTransport,
    snapshotter: Snapshotter,
    server: ServerId,
    principals: Vec<Principal>,
    key_names: Vec<String>,
    config: PoolConfig,
    urls: Vec<&'static str>,
    closed: bool,
    fault: ConnectFault,
    /// Until when an open circuit breaker may still refuse creations.
    fault_aftermath: Option<Instant>,
    /// Bumped by every change of strategy, pooling or endpoints: sticky bindings start over.
    epoch: u64,
    /// The first upstream session number of the current epoch: a session from here on was
    /// created (and so bound, under sticky) in this epoch, even for an acquire that queued
    /// before it began.
    epoch_tag: u64,
    pending: Vec<Pending>,
    held: Vec<Held>,
    calls: Vec<Call>,
    owner: HashMap<SessionId, usize>,
    tag_owner: HashMap<u64, SessionId>,
    /// Under sticky: who each session was handed to.
    affinity_of: HashMap<SessionId, Affinity>,
    bound: HashMap<Affinity, Bound>,
    /// Upstream sessions killed, and when: a pool learns of a death with a lease out only when
    /// the lease comes back or at its next maintenance pass (rmcp signals it by no event), so a
    /// conversation may wait on its dead bound session for up to one `cleanup_interval`.
    killed: HashMap<u64, Instant>,
    /// Affinities whose next lease the model knows nothing about (after an epoch change).
    known: HashSet<Affinity>,
    expect: HashMap<Affinity, Expect>,
    /// Upstream sessions retired (drain, reconfiguration): alive only with a lease out, from
    /// the given instant on.
    retired: HashMap<u64, Instant>,
    /// When each upstream session was first seen alive.
    first_seen: HashMap<u64, Instant>,
    /// Per principal: the key's counters at the last check (`None`: no key).
    key_seen: Vec<Option<Totals>>,
    /// Per principal: the most sessions (with creations) the key may hold now.
    ceiling: Vec<u32>,
    totals: Totals,
    started: Instant,
    /// Running values of the gauges (see [`Model::gauges`]).
    gauge_values: HashMap<metrics::Key, f64>,
    report: RunReport,
    step: usize,
}

fn principal_key_name(principal: Principal, server: &ServerId) -> String {
    PoolKey::new(principal, server.clone(), TransportKind::StreamableHttp).short()
}

fn endpoint(url: &str, weight: u8) -> Endpoint {
    let mut e = Endpoint::new(url, TransportKind::StreamableHttp).expect("a valid url");
    e.weight = u32::from(weight);
    e
}

async fn run(
    scenario: &Scenario,
    ops: &[PoolOp],
    snapshotter: Snapshotter,
    plugins: &Plugins,
) -> Result<RunReport, Violation> {
    let fail0 = |message: String| Violation { step: 0, message };
    let transport = DuplexTransport::new(TransportKind::StreamableHttp);
    let server = ServerId::new("model").expect("a valid id");
    let mut builder = Pool::builder();
    if let Some(strategy) = &plugins.strategy {
        builder = builder.strategy(strategy.clone());
    }
    if let Some(backend) = &plugins.backend {
        builder = builder.backend(backend());
    }
    let mut builder = builder
        .transport(Arc::new(transport.clone()))
        .server(
            ServerConfig::new(server.clone(), endpoint(ENDPOINT_URLS[0], 1))
                .pool(scenario.config.clone()),
        )
        .cleanup_interval(scenario.cleanup_interval)
        .key_idle_timeout(scenario.key_idle_timeout)
        .create_timeout(scenario.create_timeout)
        .health_check(HealthCheckConfig::default().with_timeout(Duration::from_secs(1)))
        .metrics(true);
    if let Some(limit) = scenario.user_limit {
        builder = builder.user_limit(limit);
    }
    if let Some(max) = scenario.max_sessions {
        builder = builder.max_sessions(max);
    }
    if let Some(max) = scenario.max_keys {
        builder = builder.max_keys(max);
    }
    let pool = builder
        .build()
        .map_err(|e| fail0(format!("pool did not build: {e}")))?;
    let principals: Vec<Principal> = (0..scenario.principals.max(1))
        .map(|i| Principal::user(&format!("principal-{i}")))
        .collect();
    let key_names = principals
        .iter()
        .map(|p| principal_key_name(*p, &server))
        .collect();
    let n = principals.len();
    let mut model = Model {
        plugins: plugins.clone(),
        scenario: scenario.clone(),
        pool,
        transport,
        snapshotter,
        server,
        principals,
        key_names,
        config: scenario.config.clone(),
        urls: vec![ENDPOINT_URLS[0]],
        closed: false,
        fault: ConnectFault::Healthy,
        fault_aftermath: None,
        epoch: 0,
        epoch_tag: 0,
        pending: Vec::new(),
        held: Vec::new(),
        calls: Vec::new(),
        owner: HashMap::new(),
        tag_owner: HashMap::new(),
        affinity_of: HashMap::new(),
        bound: HashMap::new(),
        killed: HashMap::new(),
        known: HashSet::new(),
        expect: HashMap::new(),
        retired: HashMap::new(),
        first_seen: HashMap::new(),
        key_seen: vec![None; n],
        ceiling: vec![scenario.config.max_size; n],
        totals: Totals::default(),
        started: Instant::now(),
        gauge_values: HashMap::new(),
        report: RunReport::default(),
        step: 0,
    };
    for (step, &op) in ops.iter().enumerate() {
        model.step = step;
        model.report.ops += 1;
        let fail = |message| Violation { step, message };
        if op == PoolOp::Close {
            return model.finish_closed().await.map_err(fail);
        }
        if trace() {
            eprintln!("step {step} at {:?}: {op:?}", model.started.elapsed());
        }
        model.apply(op).await.map_err(fail)?;
        if !matches!(op, PoolOp::Advance(_)) {
            settle().await;
            model.observe().await.map_err(fail)?;
        }
    }
    model.step = ops.len();
    let step = ops.len();
    model
        .finish_open()
        .await
        .map_err(|message| Violation { step, message })
}

/// Lets every task run until all are idle: on a paused clock, a sleep returns only once
/// nothing else can run (the clock then moves 1 ms); the yields let tasks woken at that
/// instant run too.
async fn settle() {
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
}

/// Environment variable: a comma-separated list of check names (the bracketed tag of a
/// violation, e.g. `totals,gauges`) to skip while exploring other failures. Never set it in CI.
pub const SKIP_CHECKS_ENV: &str = "MCP_POOL_MODEL_SKIP";

/// Environment variable: when set, every step and the state seen after it are printed to
/// stderr (for reading a shrunk failure).
pub const TRACE_ENV: &str = "MCP_POOL_MODEL_TRACE";

fn trace() -> bool {
    std::env::var_os(TRACE_ENV).is_some()
}

/// A violation of check `check`, unless `MCP_POOL_MODEL_SKIP` names it.
fn fail(check: &str, message: String) -> Result<(), String> {
    let skipped =
        std::env::var(SKIP_CHECKS_ENV).is_ok_and(|skip| skip.split(',').any(|s| s.trim() == check));
    if skipped {
        Ok(())
    } else {
        Err(format!("[{check}] {message}"))
    }
}

fn is_cancelled(error: &tokio::task::JoinError) -> Result<(), String> {
    if error.is_cancelled() {
        Ok(())
    } else {
        fail("panic", format!("a task panicked: {error}"))
    }
}

impl Model {
    fn pools(&self) -> bool {
        self.config.enabled && self.plugins.traits_of(self.config.strategy).0
    }

    /// Whether the strategy binds conversations (sticky, or a plugged-in one that binds): the
    /// model then checks sticky's exclusivity rules for it.
    fn sticky(&self) -> bool {
        self.pools() && self.plugins.traits_of(self.config.strategy).1
    }

    fn leased_tags(&self) -> HashMap<u64, u32> {
        let mut tags = HashMap::new();
        for tag in self
            .held
            .iter()
            .map(|h| h.tag)
            .chain(self.calls.iter().map(|c| c.tag))
            .flatten()
        {
            *tags.entry(tag).or_default() += 1;
        }
        tags
    }

    fn leases_on(&self, session: SessionId) -> u32 {
        let held = self
            .held
            .iter()
            .filter(|h| h.lease.session_id() == session)
            .count();
        let calls = self.calls.iter().filter(|c| c.session == session).count();
        (held + calls) as u32
    }

    fn alive_tags(&self) -> HashSet<u64> {
        self.transport
            .upstream_sessions()
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    /// Starts a new epoch: sticky bindings start over, what the model knew of them is void.
    /// The `n`-th (wrapping) initialized upstream session alive now, if any.
    fn pick_initialized(&self, n: u8) -> Option<u64> {
        let alive: Vec<u64> = self
            .transport
            .upstream_sessions()
            .into_iter()
            .filter(|s| s.initialized)
            .map(|s| s.id)
            .collect();
        (!alive.is_empty()).then(|| alive[usize::from(n) % alive.len()])
    }

    fn new_epoch(&mut self) {
        self.epoch += 1;
        self.epoch_tag = self.transport.sessions_started();
        self.bound.clear();
        self.known.clear();
        self.expect.clear();
    }

    /// Every upstream session alive now is retired from `from` on.
    fn retire_all_upstream(&mut self, from: Instant) {
        for s in self.transport.upstream_sessions() {
            if s.initialized {
                self.retired.entry(s.id).or_insert(from);
            }
        }
    }

    fn fault_on(&mut self) {
        for p in &mut self.pending {
            p.info.faulted = true;
        }
    }

    async fn apply(&mut self, op: PoolOp) -> Result<(), String> {
        match op {
            PoolOp::Acquire {
                principal,
                conversation,
            } => {
                let p = usize::from(principal) % self.principals.len();
                let conv = match self.scenario.conversations {
                    0 => None,
                    n => conversation.map(|c| c % n),
                };
                let (pool, server, principal) =
                    (self.pool.clone(), self.server.clone(), self.principals[p]);
                let task = tokio::spawn(async move {
                    let name = conv.map(|c| format!("conv-{c}"));
                    let mut request = AcquireRequest::new(&server).principal(principal);
                    if let Some(name) = &name {
                        request = request.downstream_session(name);
                    }
                    pool.acquire_with(request).await
                });
                let now = Instant::now();
                let faulted = self.fault != ConnectFault::Healthy
                    || self.fault_aftermath.is_some_and(|t| t > now);
                self.pending.push(Pending {
                    task,
                    info: Acquiring {
                        affinity: (p, conv),
                        started: now,
                        timeout: self.config.timeout,
                        min_timeout: self.config.timeout,
                        faulted,
                        epoch: self.epoch,
                    },
                });
            }
            PoolOp::Release(n) if !self.held.is_empty() => {
                let n = usize::from(n) % self.held.len();
                drop(self.held.swap_remove(n));
            }
            PoolOp::Break(n) if !self.held.is_empty() => {
                let n = usize::from(n) % self.held.len();
                let held = self.held.swap_remove(n);
                if self.sticky()
                    && self
                        .bound
                        .get(&held.affinity)
                        .is_some_and(|b| b.session == held.lease.session_id())
                {
                    self.expect.insert(
                        held.affinity,
                        Expect::Rebound {
                            strong: true,
                            why: "its bound session was marked broken",
                        },
                    );
                }
                held.lease.mark_broken();
            }
            PoolOp::Call(n, tool) if !self.held.is_empty() => {
                let n = usize::from(n) % self.held.len();
                let held = self.held.swap_remove(n);
                let (name, args) = match tool {
                    CallTool::Echo => ("echo", serde_json::json!({ "message": "model" })),
                    CallTool::Sleep(s) => {
                        ("sleep", serde_json::json!({ "ms": u64::from(s) * 1000 }))
                    }
                    CallTool::Fail => ("fail", serde_json::json!({})),
                };
                let params = CallToolRequestParams::new(name)
                    .with_arguments(args.as_object().cloned().unwrap_or_default());
                let lease = held.lease;
                let session = lease.session_id();
                let task = tokio::spawn(async move {
                    let result = lease.call_tool(params).await.map(drop);
                    (lease, result)
                });
                self.calls.push(Call {
                    affinity: held.affinity,
                    session,
                    tag: held.tag,
                    task,
                });
            }
            PoolOp::AbortCall(n) if !self.calls.is_empty() => {
                let n = usize::from(n) % self.calls.len();
                let call = self.calls.swap_remove(n);
                call.task.abort();
                // Its lease is dropped with the task; what the call returned no longer matters.
                if let Err(e) = call.task.await {
                    is_cancelled(&e)?;
                }
            }
            PoolOp::CancelAcquire(n) if !self.pending.is_empty() => {
                let n = usize::from(n) % self.pending.len();
                self.pending[n].task.abort();
            }
            PoolOp::Configure(change) => {
                let config = PoolConfig {
                    enabled: change.enabled,
                    strategy: change.strategy,
                    min_size: change.min_size,
                    size: change.size,
                    max_size: change.max_size,
                    session_concurrency: change.session_concurrency,
                    timeout: Duration::from_secs(change.timeout_secs.into()),
                    ..self.scenario.config.clone()
                };
                self.pool
                    .set_pool_config(&self.server, config.clone())
                    .map_err(|e| format!("set_pool_config({change:?}) refused: {e}"))?;
                self.configure(config);
            }
            PoolOp::Endpoints { mask, weights } => {
                let mask = if mask & 7 == 0 { 1 } else { mask & 7 };
                let listed: Vec<usize> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
                let mut server = ServerConfig::new(
                    self.server.clone(),
                    endpoint(ENDPOINT_URLS[listed[0]], weights[listed[0]]),
                );
                for &i in &listed[1..] {
                    server = server.endpoint(endpoint(ENDPOINT_URLS[i], weights[i]));
                }
                self.pool
                    .add_server(server.pool(self.config.clone()))
                    .map_err(|e| format!("add_server refused: {e}"))?;
                let urls: Vec<&'static str> = listed.iter().map(|&i| ENDPOINT_URLS[i]).collect();
                let from = Instant::now() + self.scenario.cleanup_interval;
                if self.plugins.registered(self.config.strategy) {
                    // A registered strategy is the same instance in the replaced server: only
                    // sessions whose endpoint changed (another URL at its index) are retired.
                    for s in self.transport.upstream_sessions() {
                        let index = self.urls.iter().position(|u| *u == s.url);
                        let kept = index.is_some_and(|i| urls.get(i) == Some(&s.url.as_str()));
                        if s.initialized && !kept {
                            self.retired.entry(s.id).or_insert(from);
                        }
                    }
                } else {
                    // A built-in strategy is a new instance in a replaced server: sessions are
                    // retired (given one cleanup interval), bindings start over.
                    self.retire_all_upstream(from);
                }
                self.urls = urls;
                self.new_epoch();
            }
            PoolOp::Unbind {
                principal,
                conversation,
            } if self.scenario.conversations > 0 => {
                let p = usize::from(principal) % self.principals.len();
                let c = conversation % self.scenario.conversations;
                self.pool
                    .unbind(&self.server, self.principals[p], &format!("conv-{c}"));
                let affinity = (p, Some(c));
                self.bound.remove(&affinity);
                if self.sticky() {
                    self.expect.insert(affinity, Expect::NotRebound);
                    self.known.insert(affinity);
                }
            }
            PoolOp::Drain => {
                let alive = self.alive_tags();
                if self.sticky() {
                    for (affinity, bound) in &self.bound {
                        if bound.tag.is_some_and(|t| alive.contains(&t)) {
                            self.expect.insert(
                                *affinity,
                                Expect::Rebound {
                                    strong: true,
                                    why: "its bound session was drained",
                                },
                            );
                        }
                    }
                }
                self.pool.drain();
                self.retire_all_upstream(Instant::now());
            }
            PoolOp::Advance(tenths) => {
                self.expect
                    .retain(|_, e| !matches!(e, Expect::Rebound { strong: false, .. }));
                let step = self.scenario.cleanup_interval.min(Duration::from_secs(1));
                let end = Instant::now() + Duration::from_millis(u64::from(tenths) * 100);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    tokio::time::sleep(step.min(end - now)).await;
                    settle().await;
                    self.observe().await?;
                }
            }
            PoolOp::Kill(n) => {
                if let Some(tag) = self.pick_initialized(n) {
                    if self.sticky() {
                        for (affinity, bound) in &self.bound {
                            if bound.tag == Some(tag) {
                                self.expect.insert(
                                    *affinity,
                                    Expect::Rebound {
                                        strong: false,
                                        why: "its bound session died upstream",
                                    },
                                );
                            }
                        }
                    }
                    self.transport.kill_session(tag);
                    self.killed.insert(tag, Instant::now());
                }
            }
            PoolOp::Hang(n) => {
                if let Some(tag) = self.pick_initialized(n) {
                    self.transport.hang_session(tag, true);
                }
            }
            PoolOp::Connect(fault) => {
                let was = self.fault;
                self.fault = fault;
                self.transport
                    .set_fail_connects(fault == ConnectFault::Fail);
                self.transport.set_connect_hang(fault == ConnectFault::Hang);
                self.transport.set_connect_delay(match fault {
                    ConnectFault::Slow(s) => Duration::from_secs(s.into()),
                    _ => Duration::ZERO,
                });
                if fault != ConnectFault::Healthy {
                    self.fault_on();
                } else if was != ConnectFault::Healthy {
                    self.fault_aftermath = Some(Instant::now() + FAULT_AFTERMATH);
                }
            }
            PoolOp::Release(_)
            | PoolOp::Break(_)
            | PoolOp::Call(..)
            | PoolOp::AbortCall(_)
            | PoolOp::CancelAcquire(_)
            | PoolOp::Unbind { .. }
            | PoolOp::Close => {}
        }
        Ok(())
    }

    /// Applies a new configuration to the model.
    fn configure(&mut self, config: PoolConfig) {
        let now = Instant::now();
        let old = std::mem::replace(&mut self.config, config);
        let new = self.config.clone();
        for p in &mut self.pending {
            p.info.timeout = p.info.timeout.max(new.timeout);
            p.info.min_timeout = p.info.min_timeout.min(new.timeout);
        }
        if old.pools() && !new.pools() {
            // Pooling off: idle sessions close at once, in-use ones on release.
            self.retire_all_upstream(now);
        } else if old.pools() && new.pools() && old.strategy != new.strategy {
            self.retire_all_upstream(now + self.scenario.cleanup_interval);
        }
        if old.pools() != new.pools() || old.strategy != new.strategy {
            self.new_epoch();
        }
        for ceiling in &mut self.ceiling {
            // A raise applies at once; a cut leaves what the key holds until it shrinks (the
            // next checks lower the ceiling as the key does).
            *ceiling = (*ceiling).max(new.max_size);
        }
    }

    /// Harvests finished tasks and checks everything; called at every quiescent point.
    async fn observe(&mut self) -> Result<(), String> {
        self.harvest().await?;
        self.check_state()
    }

    async fn harvest(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.calls.len() {
            if !self.calls[i].task.is_finished() {
                i += 1;
                continue;
            }
            let call = self.calls.swap_remove(i);
            match call.task.await {
                Ok((lease, _result)) => self.held.push(Held {
                    affinity: call.affinity,
                    lease,
                    tag: call.tag,
                }),
                Err(e) => is_cancelled(&e)?,
            }
        }
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if !self.pending[i].task.is_finished() {
                let pending = &self.pending[i].info;
                if now > pending.started + pending.timeout + SLACK {
                    fail(
                        "deadline",
                        format!(
                            "an acquire for principal {} (conversation {:?}) is still pending {:?} \
                         after it started, beyond its timeout of {:?}",
                            pending.affinity.0,
                            pending.affinity.1,
                            now - pending.started,
                            pending.timeout
                        ),
                    )?;
                }
                i += 1;
                continue;
            }
            let Pending {
                task,
                info: pending,
            } = self.pending.swap_remove(i);
            match task.await {
                Ok(Ok(lease)) => finished.push((pending, lease)),
                Ok(Err(error)) => {
                    self.report.errors += 1;
                    self.check_error(&pending, &error)?;
                }
                Err(e) => is_cancelled(&e)?,
            }
        }
        // Leases granted since the last look are checked in grant order as far as it can be
        // told: a rebound lease first (when several leases of one conversation were granted
        // at once, the first one on the new session is the one that says so).
        finished.sort_by_key(|(_, lease)| !lease.is_rebound());
        for (pending, lease) in finished {
            self.check_lease(&pending, lease)?;
        }
        Ok(())
    }

    fn check_error(&self, pending: &Acquiring, error: &PoolError) -> Result<(), String> {
        let who = format!(
            "an acquire for principal {} (conversation {:?})",
            pending.affinity.0, pending.affinity.1
        );
        let allowed = match error {
            PoolError::Timeout { .. } => {
                let waited = Instant::now() - pending.started;
                if waited + SLACK < pending.min_timeout {
                    fail(
                        "deadline",
                        format!(
                            "{who} timed out after {waited:?}, before its timeout of {:?}: {error}",
                            pending.min_timeout
                        ),
                    )?;
                }
                // Liveness was checked at every quiescent point while it waited.
                true
            }
            PoolError::Closed => self.closed,
            PoolError::Create { .. } | PoolError::CircuitOpen { .. } => pending.faulted,
            PoolError::SessionLimit { .. } => self.scenario.max_sessions.is_some(),
            PoolError::UserLimit { .. } => self.scenario.user_limit.is_some(),
            PoolError::KeyLimit { .. } => self.scenario.max_keys.is_some(),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            fail(
                "errors",
                format!(
                    "{who} failed with an error the model does not allow here \
                 (closed: {}, connect faults: {}, caps: user {:?} sessions {:?} keys {:?}): \
                 {error:?}",
                    self.closed,
                    pending.faulted,
                    self.scenario.user_limit,
                    self.scenario.max_sessions,
                    self.scenario.max_keys
                ),
            )
        }
    }

    fn check_lease(&mut self, pending: &Acquiring, lease: Lease) -> Result<(), String> {
        self.report.leases += 1;
        let p = pending.affinity.0;
        let id = lease.session_id();
        if lease.key().principal() != self.principals[p] || lease.key().server != self.server {
            fail(
                "isolation",
                format!(
                    "a lease for principal {p} came from key {}",
                    lease.key().short()
                ),
            )?;
        }
        let owner = *self.owner.entry(id).or_insert(p);
        if owner != p {
            fail(
                "isolation",
                format!("session {id} was handed to principal {owner} and to principal {p}"),
            )?;
        }
        let tag = DuplexTransport::session_of(lease.peer());
        if let Some(tag) = tag {
            let session = *self.tag_owner.entry(tag).or_insert(id);
            if session != id {
                fail(
                    "isolation",
                    format!("upstream session {tag} is behind pool sessions {session} and {id}"),
                )?;
            }
            // Handed out no earlier than the acquire started; created no later than first seen.
            if let Some(first) = self.first_seen.get(&tag)
                && pending.started > *first + self.scenario.config.max_lifetime + SLACK
            {
                fail(
                    "lifetime",
                    format!(
                        "session {id} was handed out to an acquire that started {:?} after the \
                     session was first seen alive, past max_lifetime {:?}",
                        pending.started - *first,
                        self.scenario.config.max_lifetime
                    ),
                )?;
            }
        }
        let affinity = pending.affinity;
        let rebound = lease.is_rebound();
        let same_epoch = pending.epoch == self.epoch || tag.is_some_and(|t| t >= self.epoch_tag);
        if same_epoch && !self.sticky() && self.pools() && rebound {
            fail(
                "rebound",
                format!(
                    "a lease under strategy {:?} says is_rebound()",
                    self.config.strategy
                ),
            )?;
        }
        if same_epoch && self.sticky() {
            if let Some(other) = self.affinity_of.insert(id, affinity)
                && other != affinity
            {
                fail(
                    "sticky",
                    format!(
                        "sticky session {id} was handed to affinity {other:?} and to {affinity:?}"
                    ),
                )?;
            }
            let known = self.known.contains(&affinity);
            let before = self.bound.get(&affinity).copied();
            if rebound && known && before.is_none_or(|b| b.session == id) {
                fail(
                    "rebound",
                    format!(
                        "the lease of affinity {affinity:?} on session {id} says is_rebound() but \
                     the affinity had no other bound session before ({before:?})"
                    ),
                )?;
            }
            match self.expect.remove(&affinity) {
                Some(Expect::Rebound { why, .. }) if !rebound => {
                    fail(
                        "rebound",
                        format!(
                            "the lease of affinity {affinity:?} on session {id} does not say \
                         is_rebound(), but {why}"
                        ),
                    )?;
                }
                Some(Expect::NotRebound) if rebound => {
                    fail(
                        "rebound",
                        format!(
                            "the lease of affinity {affinity:?} on session {id} says is_rebound() \
                         after the affinity was unbound"
                        ),
                    )?;
                }
                _ => {}
            }
            if let Some(b) = before
                && b.session != id
                && !rebound
                && b.tag.is_some_and(|t| {
                    self.alive_tags().contains(&t) && !self.retired.contains_key(&t)
                })
            {
                fail(
                    "sticky",
                    format!(
                        "affinity {affinity:?} got session {id} (not rebound) while its bound \
                     session {} is alive: one conversation on two upstream sessions",
                        b.session
                    ),
                )?;
            }
            self.bound.insert(affinity, Bound { session: id, tag });
            self.known.insert(affinity);
        }
        self.held.push(Held {
            affinity,
            lease,
            tag,
        });
        Ok(())
    }

    /// Sums of the session gauges (active, idle) and the waiter gauge over every label set,
    /// and the label sets below zero.
    fn gauges(&mut self) -> (f64, f64, f64, Vec<String>) {
        // A debugging snapshot swaps each gauge to 0: keep the running values here (the pool
        // only increments and decrements them).
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if let DebugValue::Gauge(v) = value {
                *self.gauge_values.entry(key.key().clone()).or_default() += v.into_inner();
            }
        }
        let (mut active, mut idle, mut waiters) = (0.0, 0.0, 0.0);
        let mut negative = Vec::new();
        for (key, &v) in &self.gauge_values {
            let state = key
                .labels()
                .find(|l| l.key() == "state")
                .map(|l| l.value().to_owned());
            match (key.name(), state.as_deref()) {
                (mcp_pool::metrics::SESSIONS, Some("active")) => active += v,
                (mcp_pool::metrics::SESSIONS, _) => idle += v,
                (mcp_pool::metrics::WAITERS, _) => waiters += v,
                _ => continue,
            }
            if v < 0.0 {
                negative.push(format!("{key:?} = {v}"));
            }
        }
        (active, idle, waiters, negative)
    }

    fn check_state(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let stats = self.pool.stats();
        if trace() {
            for k in stats.servers.iter().flat_map(|s| &s.keys) {
                eprintln!(
                    "  key {}: total {} active {} idle {} available {} checking {} creating {} \
                     waiters {}",
                    k.key,
                    k.sessions_total,
                    k.sessions_active,
                    k.sessions_idle,
                    k.sessions_available,
                    k.sessions_checking,
                    k.sessions_creating,
                    k.waiters
                );
            }
            eprintln!(
                "  upstream {:?}; held {:?}; calls {:?}; pending {}",
                self.transport.upstream_sessions(),
                self.held
                    .iter()
                    .map(|h| (h.lease.session_id(), h.tag))
                    .collect::<Vec<_>>(),
                self.calls
                    .iter()
                    .map(|c| (c.session, c.tag))
                    .collect::<Vec<_>>(),
                self.pending.len()
            );
        }
        let server = stats
            .servers
            .iter()
            .find(|s| s.server == self.server)
            .ok_or("the server is missing from stats")?;
        // Totals never decrease.
        let totals = Totals {
            hits: server.hits,
            misses: server.misses,
            releases: server.releases,
            timeouts: server.timeouts,
            evictions: server.evictions,
        };
        let t0 = self.totals;
        if totals.hits < t0.hits
            || totals.misses < t0.misses
            || totals.releases < t0.releases
            || totals.timeouts < t0.timeouts
            || totals.evictions < t0.evictions
        {
            fail(
                "totals",
                format!("server totals went down: {t0:?} -> {totals:?}"),
            )?;
        }
        self.totals = totals;
        // Gauges agree with the stats.
        let (active, idle, waiters, negative) = self.gauges();
        if !negative.is_empty() {
            fail("gauges", format!("gauges below zero: {negative:?}"))?;
        }
        let stats_waiters: u32 = server.keys.iter().map(|k| k.waiters).sum();
        if !self.closed && (waiters - f64::from(stats_waiters)).abs() > 0.5 {
            fail(
                "gauges",
                format!(
                    "gauge {} reads {waiters}, stats count {stats_waiters} waiters",
                    mcp_pool::metrics::WAITERS
                ),
            )?;
        }
        if !self.closed && (active + idle - f64::from(server.sessions_total)).abs() > 0.5 {
            fail(
                "gauges",
                format!(
                    "gauges {} read {active} active + {idle} idle, stats count {} sessions",
                    mcp_pool::metrics::SESSIONS,
                    server.sessions_total
                ),
            )?;
        }
        // Upstream: what is alive, what may be.
        let upstream = self.transport.upstream_sessions();
        for s in &upstream {
            self.first_seen.entry(s.id).or_insert(now);
        }
        let alive: HashSet<u64> = upstream.iter().map(|s| s.id).collect();
        self.retired.retain(|tag, _| alive.contains(tag));
        self.first_seen.retain(|tag, _| alive.contains(tag));
        let leased = self.leased_tags();
        let initialized = upstream.iter().filter(|s| s.initialized).count() as u32;
        if !self.closed && initialized > stats.sessions_total {
            fail(
                "upstream",
                format!(
                    "{initialized} upstream sessions are alive, the pool counts {}",
                    stats.sessions_total
                ),
            )?;
        }
        for s in upstream.iter().filter(|s| s.initialized) {
            if leased.contains_key(&s.id) {
                continue;
            }
            if let Some(from) = self.retired.get(&s.id)
                && now >= *from + SLACK
            {
                fail(
                    "retire",
                    format!(
                        "upstream session {} was retired (drain or reconfiguration) but is still \
                     alive with no lease out",
                        s.id
                    ),
                )?;
            }
            if !self.pools() {
                fail(
                    "retire",
                    format!(
                        "pooling is off (enabled {}, strategy {:?}) but upstream session {} is \
                     alive with no lease out",
                        self.config.enabled, self.config.strategy, s.id
                    ),
                )?;
            }
            if !self.urls.contains(&s.url.as_str())
                && self.retired.get(&s.id).is_none_or(|from| now >= *from)
            {
                fail(
                    "retire",
                    format!(
                        "upstream session {} to {} (no longer an endpoint) is alive with no lease \
                     out",
                        s.id, s.url
                    ),
                )?;
            }
        }
        // Caps.
        let mut pool_sessions = 0;
        let mut keys_alive = 0;
        for (p, name) in self.key_names.clone().iter().enumerate() {
            let Some(key) = server.keys.iter().find(|k| &k.key == name) else {
                if self.key_seen[p].take().is_some() {
                    self.forget_principal(p);
                }
                continue;
            };
            keys_alive += 1;
            let counts = Totals {
                hits: key.hits,
                misses: key.misses,
                releases: key.releases,
                timeouts: key.timeouts,
                evictions: key.evictions,
            };
            if let Some(seen) = self.key_seen[p]
                && (counts.hits < seen.hits
                    || counts.misses < seen.misses
                    || counts.releases < seen.releases)
            {
                // A new key in place of one removed since the last check.
                self.forget_principal(p);
            }
            self.key_seen[p] = Some(counts);
            let size = key.sessions_total + key.sessions_creating;
            pool_sessions += size;
            let max = self.config.max_size;
            self.ceiling[p] = self.ceiling[p].min(size.max(max)).max(max);
            if size > self.ceiling[p] {
                fail(
                    "capacity",
                    format!(
                        "key of principal {p} holds {} sessions and {} being created, max_size {max} \
                     (allowed now: {})",
                        key.sessions_total, key.sessions_creating, self.ceiling[p]
                    ),
                )?;
            }
            if key.sessions_total > max && key.sessions_idle > 0 {
                fail(
                    "capacity",
                    format!(
                        "key of principal {p} holds {} sessions, {} of them idle, above max_size {max}",
                        key.sessions_total, key.sessions_idle
                    ),
                )?;
            }
            if let Some(limit) = self.scenario.user_limit
                && size > limit
            {
                fail(
                    "caps",
                    format!(
                        "principal {p} holds {size} sessions (creating included), user_limit {limit}"
                    ),
                )?;
            }
            if key.sessions_checking > 1 {
                fail(
                    "health",
                    format!(
                        "key of principal {p} has {} sessions out of service for health checks",
                        key.sessions_checking
                    ),
                )?;
            }
            if !self.pools() && key.sessions_idle > 0 {
                fail(
                    "retire",
                    format!(
                        "pooling is off but the key of principal {p} holds {} idle sessions",
                        key.sessions_idle
                    ),
                )?;
            }
            self.check_liveness(p, key, size)?;
        }
        if let Some(max) = self.scenario.max_sessions
            && pool_sessions > max
        {
            fail(
                "caps",
                format!(
                    "the pool holds {pool_sessions} sessions (creating included), max_sessions {max}"
                ),
            )?;
        }
        if let Some(max) = self.scenario.max_keys
            && keys_alive > max
        {
            fail(
                "caps",
                format!("the pool holds {keys_alive} keys, max_keys {max}"),
            )?;
        }
        Ok(())
    }

    fn forget_principal(&mut self, p: usize) {
        self.bound.retain(|a, _| a.0 != p);
        self.known.retain(|a| a.0 != p);
        self.expect.retain(|a, _| a.0 != p);
    }

    /// A key with waiters: nothing a waiter could use, no room, or a cap in the way.
    fn check_liveness(&self, p: usize, key: &mcp_pool::KeyStats, size: u32) -> Result<(), String> {
        if key.waiters == 0 || self.closed {
            return Ok(());
        }
        let alive = self.alive_tags();
        // A killed session the pool may not have noticed yet (see `killed`).
        let unnoticed = |t: &u64| {
            self.killed
                .get(t)
                .is_some_and(|at| at.elapsed() <= self.scenario.cleanup_interval)
        };
        // Sticky conversations whose bound session is alive (or not yet noticed dead) and
        // busy wait by design.
        let busy_binding = |affinity: &Affinity| {
            self.bound.get(affinity).is_some_and(|b| {
                b.tag.is_some_and(|t| alive.contains(&t) || unnoticed(&t))
                    && (self.leases_on(b.session) >= self.config.session_concurrency
                        || key.sessions_checking > 0
                        || key.sessions_probing > 0)
            })
        };
        let legit = if self.sticky() {
            self.pending
                .iter()
                .map(|w| &w.info)
                // Also a waiter that queued before an epoch change: it waits on its
                // affinity's binding of the current epoch (`bound` holds only those).
                .filter(|w| w.affinity.0 == p && busy_binding(&w.affinity))
                .count() as u32
        } else {
            0
        };
        // A conversation has at most one session created for it at a time: while a creation
        // is in flight, all but one of an unbound conversation's acquires wait for it.
        let legit = legit
            + if self.sticky() && self.pools() && key.sessions_creating > 0 {
                let mut per_affinity: HashMap<Affinity, u32> = HashMap::new();
                for w in self.pending.iter().map(|w| &w.info) {
                    if w.affinity.0 == p && !busy_binding(&w.affinity) {
                        *per_affinity.entry(w.affinity).or_default() += 1;
                    }
                }
                per_affinity.values().map(|n| n - 1).sum()
            } else {
                0
            };
        if key.waiters <= legit {
            return Ok(());
        }
        let max = self.config.max_size;
        let room = size < max;
        let usable = if !self.pools() {
            0
        } else if self.sticky() {
            key.sessions_idle
        } else {
            key.sessions_available
        };
        if !room && usable == 0 {
            return Ok(());
        }
        let user_capped = self.scenario.user_limit.is_some_and(|l| size >= l);
        let pool_capped = self.scenario.max_sessions.is_some_and(|m| {
            let stats = self.pool.stats();
            let total: u32 = stats
                .servers
                .iter()
                .flat_map(|s| &s.keys)
                .map(|k| k.sessions_total + k.sessions_creating)
                .sum();
            total >= m
        });
        if usable == 0 && (user_capped || pool_capped) {
            return Ok(());
        }
        fail(
            "liveness",
            format!(
                "the key of principal {p} ({:?}, pooling {}) has {} waiters ({legit} of \
             them sticky conversations whose session is busy) while it has {} sessions, {} \
             idle, {} available, {} being created, max_size {max}",
                self.config.strategy,
                self.pools(),
                key.waiters,
                key.sessions_total,
                key.sessions_idle,
                key.sessions_available,
                key.sessions_creating
            ),
        )
    }

    /// Aborts every tool call still running (their leases drop with them).
    async fn abort_calls(&mut self) -> Result<(), String> {
        for call in std::mem::take(&mut self.calls) {
            call.task.abort();
            if let Err(e) = call.task.await {
                is_cancelled(&e)?;
            }
        }
        Ok(())
    }

    /// The run ended without `close()`: every lease comes back, every pending acquire ends
    /// (served, or timed out with a legitimate wait), the keys settle, then `close()`.
    async fn finish_open(mut self) -> Result<RunReport, String> {
        self.transport.set_fail_connects(false);
        self.transport.set_connect_hang(false);
        self.transport.set_connect_delay(Duration::ZERO);
        self.abort_calls().await?;
        self.held.clear();
        settle().await;
        self.observe().await?;
        // Pending acquires get leases (dropped at once) or time out.
        let limit = Instant::now() + Duration::from_secs(30);
        while !self.pending.is_empty() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(500)).await;
            settle().await;
            self.observe().await?;
            self.held.clear();
        }
        self.held.clear();
        // Background creations (min_size refills) started under a slow connect end within the
        // create timeout.
        tokio::time::sleep(self.scenario.create_timeout).await;
        settle().await;
        self.observe().await?;
        self.held.clear();
        if !self.pending.is_empty() {
            fail(
                "settle",
                format!(
                    "{} acquires still pending 30 s after every lease was returned",
                    self.pending.len()
                ),
            )?;
        }
        settle().await;
        self.observe().await?;
        for key in &self.pool.stats().servers[0].keys {
            if key.sessions_active != 0 || key.waiters != 0 || key.sessions_creating != 0 {
                fail(
                    "settle",
                    format!(
                        "key {} did not settle: {} active, {} waiters, {} creating",
                        key.key, key.sessions_active, key.waiters, key.sessions_creating
                    ),
                )?;
            }
        }
        self.finish_closed().await
    }

    /// `close()`, then the final checks.
    async fn finish_closed(mut self) -> Result<RunReport, String> {
        let closed = tokio::time::timeout(Duration::from_secs(600), self.pool.close()).await;
        if closed.is_err() {
            return Err("close() did not return within 600 s".into());
        }
        self.closed = true;
        // Right when close() returns: only sessions with leases out are alive upstream.
        let leased = self.leased_tags();
        let stray: Vec<_> = self
            .transport
            .upstream_sessions()
            .into_iter()
            .filter(|s| !leased.contains_key(&s.id))
            .collect();
        if !stray.is_empty() {
            fail(
                "close",
                format!(
                    "close() returned while upstream sessions without a lease were alive: {stray:?}"
                ),
            )?;
        }
        settle().await;
        self.harvest().await?;
        // Whatever was pending ends with Closed (checked by harvest), by its timeout at the
        // latest.
        let until = self
            .pending
            .iter()
            .map(|p| p.info.started + p.info.timeout)
            .max();
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
            settle().await;
            self.harvest().await?;
        }
        if !self.pending.is_empty() {
            fail(
                "close",
                format!(
                    "{} acquires still pending past their timeout after close()",
                    self.pending.len()
                ),
            )?;
        }
        self.check_state()?;
        self.abort_calls().await?;
        self.held.clear();
        settle().await;
        // Creations still in flight (slow connects) end and are closed too.
        tokio::time::sleep(self.scenario.create_timeout + Duration::from_secs(1)).await;
        settle().await;
        self.check_state()?;
        let alive = self.transport.upstream_sessions();
        if !alive.is_empty() {
            fail(
                "close",
                format!(
                    "after close() and every lease returned, upstream sessions are alive: {alive:?}"
                ),
            )?;
        }
        let (active, idle, waiters, _) = self.gauges();
        if active != 0.0 || idle != 0.0 || waiters != 0.0 {
            fail(
                "gauges",
                format!(
                    "at rest after close(): gauges read {active} active, {idle} idle sessions, \
                 {waiters} waiters"
                ),
            )?;
        }
        Ok(self.report)
    }
}
