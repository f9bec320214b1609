//! Background maintenance on tokio's paused clock: TTL, idle timeout, idle keys and min_size,
//! with no traffic at all (DESIGN §2.5).

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{Pool, PoolConfig, Principal};

const WAIT: Duration = Duration::from_secs(5);

fn config() -> PoolConfig {
    PoolConfig {
        max_size: 4,
        size: 2,
        min_size: 1,
        max_lifetime: Duration::from_secs(600),
        max_idle_time: Duration::from_secs(120),
        ..PoolConfig::enabled()
    }
}

fn builder() -> mcp_pool::PoolBuilder {
    Pool::builder()
        .cleanup_interval(Duration::from_secs(10))
        .key_idle_timeout(Duration::from_secs(3600))
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_close_down_to_min_size() {
    let (pool, id, transport) = duplex_pool(config(), builder());
    let user = Principal::user("u");
    let (a, b, c) = (
        pool.acquire(&id, user).await.unwrap(),
        pool.acquire(&id, user).await.unwrap(),
        pool.acquire(&id, user).await.unwrap(),
    );
    drop((a, b, c));
    assert_eq!(transport.sessions_alive(), 3);

    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(transport.sessions_alive(), 3, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(40)).await;
    transport.wait_sessions_alive(1, WAIT).await.unwrap();
    let server = &pool.stats().servers[0];
    assert_eq!(server.evictions, 2);
    assert_eq!(server.sessions_total, 1, "min_size stays warm");
}

#[tokio::test(start_paused = true)]
async fn sessions_past_max_lifetime_are_replaced_to_keep_min_size() {
    let (pool, id, transport) = duplex_pool(config(), builder());
    let user = Principal::user("u");
    let first = pool.acquire(&id, user).await.unwrap().session_id();
    // Keep it busy-then-idle so that only its age matters.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(pool.acquire(&id, user).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    // The expired session was closed and a new one created in the background for min_size.
    transport.wait_sessions_alive(1, WAIT).await.unwrap();
    assert_eq!(transport.sessions_opened(), 2);
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(
        lease.is_hit(),
        "the replacement was created ahead of demand"
    );
    assert_ne!(lease.session_id(), first);
    assert_eq!(pool.stats().servers[0].evictions, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_past_max_lifetime_is_closed_on_release() {
    let (pool, id, transport) = duplex_pool(config(), builder());
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    tokio::time::sleep(Duration::from_secs(700)).await;
    assert_eq!(
        transport.sessions_alive(),
        1,
        "in use: never closed under a lease"
    );
    assert!(lease.call_tool(echo("still works")).await.is_ok());
    drop(lease);
    transport.wait_sessions_alive(0, WAIT).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_removed_with_their_sessions() {
    let builder = Pool::builder()
        .cleanup_interval(Duration::from_secs(10))
        .key_idle_timeout(Duration::from_secs(300));
    let (pool, id, transport) = duplex_pool(config(), builder);
    for user in ["a", "b", "c"] {
        drop(pool.acquire(&id, Principal::user(user)).await.unwrap());
    }
    let busy = pool.acquire(&id, Principal::user("busy")).await.unwrap();
    assert_eq!(pool.stats().keys, 4);
    tokio::time::sleep(Duration::from_secs(320)).await;
    assert_eq!(pool.stats().keys, 1, "only the key with a lease out stays");
    transport.wait_sessions_alive(1, WAIT).await.unwrap();
    drop(busy);
}

#[tokio::test(start_paused = true)]
async fn strategy_none_opens_one_session_per_acquire_and_closes_it() {
    let config = PoolConfig {
        strategy: mcp_pool::StrategyKind::None,
        ..config()
    };
    let (pool, id, transport) = duplex_pool(config, builder());
    let user = Principal::user("u");
    for i in 0..3 {
        let lease = pool.acquire(&id, user).await.unwrap();
        assert!(!lease.is_hit());
        assert_eq!(
            text(&lease.call_tool(counter()).await.unwrap()),
            "1",
            "call {i}"
        );
    }
    transport.wait_sessions_alive(0, WAIT).await.unwrap();
    assert_eq!(transport.sessions_opened(), 3);
}

#[tokio::test(start_paused = true)]
async fn pooling_disabled_behaves_like_per_request_sessions() {
    let config = PoolConfig {
        enabled: false,
        ..config()
    };
    let (pool, id, transport) = duplex_pool(config, builder());
    for _ in 0..2 {
        let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
        assert!(!lease.is_hit());
    }
    transport.wait_sessions_alive(0, WAIT).await.unwrap();
    assert_eq!(transport.sessions_opened(), 2);
    assert!(!pool.stats().servers[0].pooling);
}
