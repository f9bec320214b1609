//! Backend operations per second, per backend, with 1 and 16 concurrent tasks.
//!
//! ```text
//! MCP_POOL_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//! MCP_POOL_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p mcp-pool-backends
//! ```
//!
//! Redis and PostgreSQL are skipped when their variable is unset; SQLite uses a temporary file.
//! Each task works on its own session, slot and counter, so the figures are throughput of
//! independent operations, not contention on one key. Throughput is in operations ("elements")
//! per second; `slot_acquire_release` counts one acquire plus one release as one operation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mcp_pool_backends::MemoryBackend;
use mcp_pool_conformance::backend::fresh_namespace;
use mcp_pool_traits::{PoolConfig, ServerId, StateBackend, StateId};
use tokio::runtime::Runtime;

const LONG: Duration = Duration::from_secs(600);
const CONCURRENCY: [u64; 2] = [1, 16];

#[derive(Clone, Copy, Debug)]
enum Op {
    Claim,
    Refresh,
    SlotAcquireRelease,
    ConfigGet,
}

impl Op {
    const ALL: [Op; 4] = [
        Op::Claim,
        Op::Refresh,
        Op::SlotAcquireRelease,
        Op::ConfigGet,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Claim => "claim",
            Op::Refresh => "refresh",
            Op::SlotAcquireRelease => "slot_acquire_release",
            Op::ConfigGet => "config_get",
        }
    }
}

/// What task `task` needs before it runs `op` in a loop.
async fn prepare(b: &dyn StateBackend, task: u64) -> (StateId, StateId) {
    let session = StateId::new(format!("session-{task}")).unwrap();
    let worker = StateId::new(format!("worker-{task}")).unwrap();
    b.heartbeat(&worker, LONG).await.unwrap();
    assert!(b.claim(&session, &worker, LONG).await.unwrap().is_owned());
    (session, worker)
}

async fn run(b: &dyn StateBackend, op: Op, session: &StateId, worker: &StateId, n: u64) {
    let server = ServerId::new("bench").unwrap();
    for _ in 0..n {
        match op {
            Op::Claim => assert!(b.claim(session, worker, LONG).await.unwrap().is_owned()),
            Op::Refresh => assert!(b.refresh(session, worker, LONG).await.unwrap()),
            Op::SlotAcquireRelease => {
                assert!(
                    b.try_acquire_slot(worker, session, 1000, LONG)
                        .await
                        .unwrap()
                );
                assert!(b.release_slot(worker, session).await.unwrap());
            }
            Op::ConfigGet => assert!(b.get_config(&server).await.unwrap().is_some()),
        }
    }
}

fn bench_backend(c: &mut Criterion, rt: &Runtime, name: &str, backend: Arc<dyn StateBackend>) {
    rt.block_on(async {
        let server = ServerId::new("bench").unwrap();
        backend
            .put_config(&server, &PoolConfig::default())
            .await
            .unwrap();
    });
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for op in Op::ALL {
        for tasks in CONCURRENCY {
            let ids: Vec<(StateId, StateId)> = rt.block_on(async {
                let mut ids = Vec::new();
                for t in 0..tasks {
                    ids.push(prepare(&*backend, t).await);
                }
                ids
            });
            group.bench_with_input(BenchmarkId::new(op.name(), tasks), &tasks, |bencher, _| {
                bencher.to_async(rt).iter_custom(|iters| {
                    let (backend, ids) = (Arc::clone(&backend), ids.clone());
                    async move {
                        let per_task = iters.div_ceil(tasks);
                        let start = Instant::now();
                        let handles: Vec<_> = ids
                            .into_iter()
                            .map(|(session, worker)| {
                                let b = Arc::clone(&backend);
                                tokio::spawn(async move {
                                    run(&*b, op, &session, &worker, per_task).await;
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                        // Report the time per requested iteration.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per_task * tasks) as f64)
                    }
                });
            });
        }
    }
    group.finish();
}

fn backends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ns = fresh_namespace();

    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new().with_namespace(ns.clone()));
    bench_backend(c, &rt, "memory", memory);

    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("bench.db").display());
        let config = mcp_pool_backends::DatabaseConfig::new(url).namespace(ns.clone());
        let sqlite = rt
            .block_on(mcp_pool_backends::DatabaseBackend::connect(config))
            .unwrap();
        bench_backend(c, &rt, "sqlite", Arc::new(sqlite));
    }

    #[cfg(feature = "redis")]
    match std::env::var("MCP_POOL_TEST_REDIS_URL") {
        Ok(url) => {
            let config = mcp_pool_backends::RedisConfig::new(url).namespace(ns.clone());
            let redis = rt
                .block_on(mcp_pool_backends::RedisBackend::connect(config))
                .unwrap();
            bench_backend(c, &rt, "redis", Arc::new(redis));
        }
        Err(_) => eprintln!("redis skipped: MCP_POOL_TEST_REDIS_URL is not set"),
    }

    #[cfg(feature = "postgres")]
    match std::env::var("MCP_POOL_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            let config = mcp_pool_backends::DatabaseConfig::new(url)
                .namespace(ns)
                .max_connections(16);
            let pg = rt
                .block_on(mcp_pool_backends::DatabaseBackend::connect(config))
                .unwrap();
            bench_backend(c, &rt, "postgres", Arc::new(pg));
        }
        _ => eprintln!("postgres skipped: MCP_POOL_TEST_DATABASE_URL is not a postgres URL"),
    }
}

criterion_group!(benches, backends);
criterion_main!(benches);
