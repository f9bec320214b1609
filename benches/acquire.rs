//! Pool bookkeeping per acquire + release on a hit, against deadpool in the same
//! run: `cargo bench --bench acquire`.
//!
//! Sessions are real rmcp sessions served in process (no I/O happens on a hit), so the figures
//! are the pool's own cost. deadpool runs with a no-op manager: its cost is pure bookkeeping.
//! Groups: one task uncontended; 8 tasks on a 2-thread runtime (time per acquire + release);
//! and one acquire among 10 000 live keys, to show the cost does not grow with the key count.

use std::{convert::Infallible, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use deadpool::managed::{self, Metrics, RecycleResult};
use mcp_pool::{Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerId, TransportKind};
use mcp_pool_conformance::DuplexTransport;
use tokio::runtime::Runtime;

struct NoopManager;

impl managed::Manager for NoopManager {
    type Type = ();
    type Error = Infallible;

    async fn create(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn recycle(&self, _: &mut (), _: &Metrics) -> RecycleResult<Infallible> {
        Ok(())
    }
}

fn runtime(threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn mcp_pool(rt: &Runtime, max_size: u32) -> (Pool, ServerId) {
    let id = ServerId::new("bench").expect("valid id");
    let endpoint = Endpoint::new("http://bench.invalid/mcp", TransportKind::StreamableHttp)
        .expect("valid url");
    let config = PoolConfig {
        max_size,
        size: max_size.min(1000),
        ..PoolConfig::enabled()
    };
    let pool = rt.block_on(async {
        Pool::builder()
            // Room for the 10 000-key group: no cap makes an acquire close another session.
            .max_sessions(20_000)
            .max_keys(20_000)
            .transport(Arc::new(DuplexTransport::new(
                TransportKind::StreamableHttp,
            )))
            .server(ServerConfig::new(id.clone(), endpoint).pool(config))
            .build()
            .expect("a pool")
    });
    (pool, id)
}

fn deadpool(max_size: usize) -> managed::Pool<NoopManager> {
    managed::Pool::builder(NoopManager)
        .max_size(max_size)
        .build()
        .expect("a pool")
}

/// Runs `tasks` tasks doing `per_task` acquire + release each; returns the wall time.
fn contended<F, Fut>(rt: &Runtime, tasks: usize, per_task: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async {
        let started = std::time::Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let op = op.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        op().await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = runtime(2);
    let principal = Principal::user("bench");

    let mut group = c.benchmark_group("acquire_release_hit/1_task");
    let (pool, id) = mcp_pool(&rt, 10);
    rt.block_on(async { drop(pool.acquire(&id, principal).await.expect("warm")) });
    group.bench_function("mcp-pool", |b| {
        b.to_async(&rt).iter(|| async {
            drop(pool.acquire(&id, principal).await.expect("hit"));
        })
    });
    let dp = deadpool(10);
    group.bench_function("deadpool", |b| {
        b.to_async(&rt).iter(|| async {
            drop(dp.get().await.expect("object"));
        })
    });
    group.finish();

    // 8 tasks on 2 threads, 8 sessions: every acquire is a hit, contention is on the key.
    let mut group = c.benchmark_group("acquire_release_hit/8_tasks_2_threads");
    let (pool, id) = mcp_pool(&rt, 8);
    rt.block_on(async {
        let leases: Vec<_> =
            futures::future::join_all((0..8).map(|_| pool.acquire(&id, principal))).await;
        drop(leases);
    });
    group.bench_function("mcp-pool", |b| {
        b.iter_custom(|iters| {
            let (pool, id) = (pool.clone(), id.clone());
            let per_task = iters.div_ceil(8);
            contended(&rt, 8, per_task, move || {
                let (pool, id) = (pool.clone(), id.clone());
                async move { drop(pool.acquire(&id, principal).await.expect("hit")) }
            })
        })
    });
    let dp = deadpool(8);
    group.bench_function("deadpool", |b| {
        b.iter_custom(|iters| {
            let dp = dp.clone();
            let per_task = iters.div_ceil(8);
            contended(&rt, 8, per_task, move || {
                let dp = dp.clone();
                async move { drop(dp.get().await.expect("object")) }
            })
        })
    });
    group.finish();

    // One acquire among many live keys.
    let mut group = c.benchmark_group("acquire_release_hit/10000_keys");
    let (pool, id) = mcp_pool(&rt, 1);
    rt.block_on(async {
        for user in 0..10_000 {
            drop(
                pool.acquire(&id, Principal::user(&format!("u{user}")))
                    .await
                    .expect("key"),
            );
        }
    });
    assert_eq!(pool.stats().keys, 10_000);
    let target = Principal::user("u5000");
    group.bench_function("mcp-pool", |b| {
        b.to_async(&rt).iter(|| async {
            drop(pool.acquire(&id, target).await.expect("hit"));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
