//! Configuration only moves forward, under real concurrency: the model test
//! runs on one thread, where no acquire can hold a server snapshot while another installs a
//! newer one, so this test covers what it cannot.
//!
//! One task installs sizes 1, 2, …, 1000 in order (`set_pool_config`, same strategy), while
//! four tasks on a multi-threaded runtime acquire and release on one key and read the key's
//! `target_size` (its applied `size`), all reads serialized under one lock. The sizes are
//! installed in increasing order, so the key's applied size must never go down between two
//! reads: a decrease is a key rolled back to an older snapshot.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mcp_pool::{Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerId, TransportKind};
use mcp_pool_conformance::DuplexTransport;

const INSTALLS: u32 = 1000;
/// Rounds, each on a fresh pool: a stale snapshot needs an install to land in a window of
/// a few hundred nanoseconds.
const ROUNDS: u32 = 40;

fn config(size: u32) -> PoolConfig {
    PoolConfig {
        size,
        min_size: 1,
        max_size: 1000,
        timeout: Duration::from_secs(30),
        ..PoolConfig::enabled()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_never_applies_an_older_configuration() {
    for _ in 0..ROUNDS {
        round().await;
    }
}

async fn round() {
    let transport = DuplexTransport::new(TransportKind::StreamableHttp);
    let server = ServerId::new("order").unwrap();
    let pool = Pool::builder()
        .transport(Arc::new(transport))
        .server(
            ServerConfig::new(
                server.clone(),
                Endpoint::new("http://order.invalid/mcp", TransportKind::StreamableHttp).unwrap(),
            )
            .pool(config(1)),
        )
        .build()
        .unwrap();
    let principal = Principal::user("order");
    // The last applied size read, under the lock that serializes the reads.
    let seen = Arc::new(parking_lot::Mutex::new(0u32));
    let done = Arc::new(AtomicBool::new(false));
    let mut acquirers = Vec::new();
    for _ in 0..4 {
        let (pool, server, seen, done) = (pool.clone(), server.clone(), seen.clone(), done.clone());
        acquirers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let lease = pool.acquire(&server, principal).await.unwrap();
                drop(lease);
                {
                    let mut last = seen.lock();
                    let applied = pool.stats().servers[0]
                        .keys
                        .first()
                        .map_or(0, |k| k.target_size);
                    assert!(
                        applied >= *last,
                        "the key went back from size {} to size {applied}: an older \
                         configuration was applied after a newer one",
                        *last
                    );
                    *last = applied;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for size in 1..=INSTALLS {
        pool.set_pool_config(&server, config(size)).unwrap();
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::Relaxed);
    for task in acquirers {
        task.await.unwrap();
    }
    drop(pool.acquire(&server, principal).await.unwrap());
    assert_eq!(pool.stats().servers[0].keys[0].target_size, INSTALLS);
    pool.close().await;
}
