//! Acquire timeouts and cancellation safety, on tokio's paused clock with the in-process
//! reference server.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{Pool, PoolConfig, PoolError, Principal};

fn one_session() -> PoolConfig {
    PoolConfig {
        max_size: 1,
        size: 1,
        timeout: Duration::from_secs(2),
        ..PoolConfig::enabled()
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquire_that_cannot_be_served_times_out_naming_the_server() {
    let (pool, id, _transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    let _held = pool.acquire(&id, user).await.unwrap();
    let started = tokio::time::Instant::now();
    let error = pool.acquire(&id, user).await.unwrap_err();
    assert!(matches!(error, PoolError::Timeout { .. }), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let message = error.to_string();
    assert!(message.contains("server duplex"), "{message}");
    assert!(message.contains("1 of max_size 1"), "{message}");
    assert_eq!(pool.stats().servers[0].timeouts, 1);
    assert_eq!(pool.stats().servers[0].keys[0].waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_future_leaves_the_queue() {
    let (pool, id, _transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    let held = pool.acquire(&id, user).await.unwrap();
    let session = held.session_id();
    {
        let waiting = pool.acquire(&id, user);
        tokio::pin!(waiting);
        // Poll once so that it queues, then drop it.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        assert_eq!(pool.stats().servers[0].keys[0].waiters, 1);
    }
    assert_eq!(pool.stats().servers[0].keys[0].waiters, 0);
    drop(held);
    let again = pool.acquire(&id, user).await.unwrap();
    assert!(again.is_hit());
    assert_eq!(again.session_id(), session);
}

#[tokio::test(start_paused = true)]
async fn a_grant_to_a_cancelled_waiter_is_handed_on() {
    let (pool, id, transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    let held = pool.acquire(&id, user).await.unwrap();
    let queued = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, user).await.map(|l| l.session_id()) }
    });
    while pool.stats().servers[0].keys[0].waiters == 0 {
        tokio::task::yield_now().await;
    }
    // The release grants the session to the queued task, which is aborted before it runs.
    drop(held);
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    let next = pool.acquire(&id, user).await.unwrap();
    assert!(next.is_hit(), "the grant came back to the pool");
    let key = &pool.stats().servers[0].keys[0];
    assert_eq!(
        (key.sessions_total, key.sessions_active, key.waiters),
        (1, 1, 0)
    );
    assert_eq!(transport.sessions_opened(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_creation_gives_its_slot_back() {
    let (pool, id, transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    transport.set_hang(true);
    let mut creating = Box::pin(pool.acquire(&id, user));
    assert!(futures::poll!(creating.as_mut()).is_pending());
    assert_eq!(pool.stats().servers[0].keys[0].sessions_creating, 1);
    drop(creating);
    transport.set_hang(false);
    assert_eq!(pool.stats().servers[0].keys[0].sessions_creating, 0);
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_lease_holder_leaks_nothing() {
    let (pool, id, transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    let panicked = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let _lease = pool.acquire(&id, user).await.unwrap();
            panic!("lease holder fails");
        }
    });
    assert!(panicked.await.unwrap_err().is_panic());
    // The session the panicking task held was evicted; the key has room again.
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
    transport
        .wait_sessions_alive(1, Duration::from_secs(5))
        .await
        .unwrap();
    let server = &pool.stats().servers[0];
    assert_eq!(server.evictions, 1);
    assert_eq!(server.keys[0].sessions_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_creation_wakes_the_next_waiter() {
    let (pool, id, transport) = duplex_pool(one_session(), Pool::builder());
    let user = Principal::user("u");
    transport.set_fail_connects(true);
    let error = pool.acquire(&id, user).await.unwrap_err();
    assert!(matches!(error, PoolError::Create { .. }), "{error}");
    assert!(error.to_string().contains("server duplex"), "{error}");
    transport.set_fail_connects(false);
    let lease = pool.acquire(&id, user).await.unwrap();
    assert_eq!(pool.stats().servers[0].create_failures, 1);
    drop(lease);
}
