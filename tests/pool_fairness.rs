//! Waiters are served FIFO and woken by every release, so that no acquire times out while an
//! idle session sits in the queue; and a session created for one waiter serves the others it
//! has room for.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use mcp_pool::{Pool, PoolConfig, Principal};
use mcp_pool_conformance::ReferenceServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_on_ten_sessions_never_time_out() {
    let upstream = ReferenceServer::start().await.unwrap();
    let config = PoolConfig {
        max_size: 10,
        size: 5,
        timeout: Duration::from_secs(5),
        ..PoolConfig::enabled()
    };
    let (pool, id) = http_pool(&upstream, config);
    let calls = Arc::new(AtomicUsize::new(0));
    let in_use = Arc::new(AtomicUsize::new(0));
    let most_in_use = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (pool, id, calls) = (pool.clone(), id.clone(), calls.clone());
            let (in_use, most_in_use) = (in_use.clone(), most_in_use.clone());
            tokio::spawn(async move {
                let mut timeouts = 0;
                while calls.fetch_add(1, Ordering::Relaxed) < 1000 {
                    match pool.acquire(&id, Principal::user("shared")).await {
                        Ok(lease) => {
                            let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                            most_in_use.fetch_max(now, Ordering::SeqCst);
                            let reply = lease.call_tool(echo(&format!("task {t}"))).await.unwrap();
                            assert_eq!(text(&reply), format!("task {t}"));
                            in_use.fetch_sub(1, Ordering::SeqCst);
                        }
                        Err(e) if e.is_timeout() => timeouts += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                timeouts
            })
        })
        .collect();
    let mut timeouts = 0;
    for task in tasks {
        timeouts += task.await.unwrap();
    }
    assert_eq!(timeouts, 0);
    assert!(most_in_use.load(Ordering::SeqCst) <= 10);
    let stats = pool.stats();
    let server = &stats.servers[0];
    assert_eq!(server.hits + server.misses, 1000);
    assert!(
        server.misses <= 10,
        "at most max_size sessions were created: {}",
        server.misses
    );
    assert_eq!(server.timeouts, 0);
    assert_eq!(upstream.sessions_opened(), server.misses);
}

/// A session created for one waiter serves the others queued behind it, up to its
/// `session_concurrency`: four acquires on `max_size` 1 are all served by one session.
#[tokio::test(start_paused = true)]
async fn a_new_session_serves_every_waiter_it_has_room_for() {
    let cfg = PoolConfig {
        session_concurrency: 4,
        ..warm(1)
    };
    let (pool, id, _transport) = duplex_pool(cfg, Pool::builder());
    let user = Principal::user("u");
    let acquires = (0..4).map(|_| {
        let (pool, id) = (pool.clone(), id.clone());
        tokio::spawn(async move { pool.acquire(&id, user).await })
    });
    let leases: Vec<_> = futures::future::join_all(acquires)
        .await
        .into_iter()
        .map(|r| r.expect("no panic").expect("served, not timed out"))
        .collect();
    assert!(
        leases
            .iter()
            .all(|l| l.session_id() == leases[0].session_id())
    );
    assert_eq!(pool.stats().servers[0].timeouts, 0);
}
