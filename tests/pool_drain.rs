//! Capacity stays exact across drain: releases of leases taken before a drain never raise the
//! capacity after it, so no more than `max_size` sessions are ever out.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use mcp_pool::{PoolConfig, Principal};
use mcp_pool_conformance::ReferenceServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_leases_out_never_over_admits() {
    let upstream = ReferenceServer::start().await.unwrap();
    let config = PoolConfig {
        max_size: 2,
        size: 2,
        timeout: Duration::from_secs(10),
        ..PoolConfig::enabled()
    };
    let (pool, id) = http_pool(&upstream, config);
    let user = Principal::user("u");
    let old = [
        pool.acquire(&id, user).await.unwrap(),
        pool.acquire(&id, user).await.unwrap(),
    ];
    let old_sessions = [old[0].session_id(), old[1].session_id()];

    pool.drain();
    let stats = pool.stats();
    assert_eq!(
        stats.servers[0].sessions_total, 2,
        "drained sessions in use still count"
    );

    let in_use = Arc::new(AtomicUsize::new(2));
    let most = Arc::new(AtomicUsize::new(2));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (pool, id, in_use, most) = (pool.clone(), id.clone(), in_use.clone(), most.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..25 {
                    let lease = pool.acquire(&id, user).await.unwrap();
                    let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let total = pool.stats().servers[0].sessions_total;
                    assert!(total <= 2, "{total} sessions exist with max_size 2");
                    lease.call_tool(echo(&format!("load {i}"))).await.unwrap();
                    seen.push(lease.session_id());
                    in_use.fetch_sub(1, Ordering::SeqCst);
                }
                seen
            })
        })
        .collect();
    // Let the load queue up behind the two old leases, then return them.
    tokio::task::yield_now().await;
    for lease in old {
        in_use.fetch_sub(1, Ordering::SeqCst);
        drop(lease);
    }
    for task in load {
        let seen = task.await.unwrap();
        assert!(
            seen.iter().all(|s| !old_sessions.contains(s)),
            "drained sessions are never reused"
        );
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} leases at once",
        most.load(Ordering::SeqCst)
    );
    let server = &pool.stats().servers[0];
    assert_eq!(server.sessions_active, 0);
    assert!(server.sessions_total <= 2);
}
