//! Background maintenance on tokio's paused clock: TTL, idle timeout, idle keys and `min_size`
//! keep working with no traffic at all, on schedule over ten simulated minutes; a session past its lifetime is never handed out; a
//! health check round takes one session out of service at a time; and server totals survive
//! the removal of keys and `close()`.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{HealthCheckConfig, Pool, PoolConfig, Principal};

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

/// A health check round takes one session of a key out of service at a time: while its check
/// hangs, the other sessions keep serving.
#[tokio::test(start_paused = true)]
async fn health_checks_take_one_session_out_of_service_at_a_time() {
    let cfg = PoolConfig {
        health_check_interval: Duration::from_secs(10),
        ..warm(3)
    };
    let mut health = HealthCheckConfig::default();
    health.timeout = Duration::from_secs(4);
    let (pool, id, transport) = duplex_pool(cfg, Pool::builder().health_check(health));
    let user = Principal::user("u");
    let leases: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire(&id, user)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(leases);
    transport.set_hang(true);
    // Releases are settled into `last_used` by the round at 10 s; the round at 20 s finds
    // the sessions due, and its first check hangs.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let key = &pool.stats().servers[0].keys[0];
    assert_eq!(key.sessions_checking, 1, "{key:?}");
    let lease = pool
        .acquire(&id, user)
        .await
        .expect("two sessions stayed in service");
    assert!(lease.is_hit());
}

/// A session past `max_lifetime` is never handed out, even before maintenance ran.
#[tokio::test(start_paused = true)]
async fn an_expired_session_is_not_handed_out() {
    let cfg = PoolConfig {
        max_lifetime: Duration::from_secs(60),
        ..warm(1)
    };
    let builder = Pool::builder().cleanup_interval(Duration::from_secs(3600));
    let (pool, id, _transport) = duplex_pool(cfg, builder);
    let user = Principal::user("u");
    let first = pool.acquire(&id, user).await.unwrap().session_id();
    tokio::time::advance(Duration::from_secs(61)).await;
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
    assert_ne!(lease.session_id(), first);
}

/// A server's totals (acquisitions, releases, evictions) survive the removal of its keys and
/// `close()`.
#[tokio::test(start_paused = true)]
async fn server_totals_never_go_down() {
    let builder = Pool::builder()
        .cleanup_interval(Duration::from_secs(5))
        .key_idle_timeout(Duration::from_secs(10));
    let (pool, id, _transport) = duplex_pool(warm(1), builder);
    for _ in 0..3 {
        drop(pool.acquire(&id, Principal::user("u")).await.unwrap());
    }
    let before = pool.stats().servers[0].clone();
    assert_eq!((before.acquisitions, before.releases), (3, 3));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_removal = pool.stats().servers[0].clone();
    assert!(after_removal.keys.is_empty(), "the idle key was removed");
    assert_eq!(after_removal.acquisitions, 3);
    assert_eq!(after_removal.releases, 3);
    drop(pool.acquire(&id, Principal::user("v")).await.unwrap());
    pool.close().await;
    let closed = pool.stats().servers[0].clone();
    assert_eq!((closed.acquisitions, closed.releases), (4, 4));
    assert!(closed.evictions >= 2);
}

#[tokio::test(start_paused = true)]
async fn ten_minutes_of_simulated_time_expire_sessions_and_keys_on_schedule() {
    let config = PoolConfig {
        min_size: 1,
        size: 2,
        max_size: 4,
        max_lifetime: Duration::from_secs(300),
        max_idle_time: Duration::from_secs(120),
        ..PoolConfig::enabled()
    };
    let builder = Pool::builder()
        .cleanup_interval(Duration::from_secs(10))
        .key_idle_timeout(Duration::from_secs(400));
    let (pool, id, transport) = duplex_pool(config, builder);
    let (busy, quiet) = (Principal::user("busy"), Principal::user("quiet"));
    let start = tokio::time::Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);

    // t=0: busy opens one session, quiet two at once.
    let first = pool.acquire(&id, busy).await.unwrap().session_id();
    let (q1, q2) = (
        pool.acquire(&id, quiet).await.unwrap(),
        pool.acquire(&id, quiet).await.unwrap(),
    );
    drop((q1, q2));
    assert_eq!(transport.sessions_alive(), 3);

    // busy uses its session every 30 s until t=270.
    for t in (30..=270).step_by(30) {
        tokio::time::sleep_until(at(t)).await;
        if t == 150 {
            // By now quiet's second session has been idle past max_idle_time (120 s) and is
            // closed; its first stays, for min_size.
            transport.wait_sessions_alive(2, WAIT).await.unwrap();
            assert_eq!(pool.stats().keys, 2);
        }
        drop(pool.acquire(&id, busy).await.unwrap());
    }

    // t=300: busy's session and quiet's remaining one reach max_lifetime: both are closed
    // and replaced, for min_size, ahead of demand.
    tokio::time::sleep_until(at(320)).await;
    let lease = pool.acquire(&id, busy).await.unwrap();
    assert!(
        lease.is_hit(),
        "the replacement was created ahead of demand"
    );
    assert_ne!(lease.session_id(), first);
    drop(lease);
    assert_eq!(transport.sessions_opened(), 5);
    assert_eq!(transport.sessions_alive(), 2);

    // t=400: quiet's key, unused since t=0, is removed with its session.
    tokio::time::sleep_until(at(420)).await;
    assert_eq!(pool.stats().keys, 1);
    transport.wait_sessions_alive(1, WAIT).await.unwrap();

    // t=590: busy's key (last used at t=320) still stands, on its replacement session.
    tokio::time::sleep_until(at(590)).await;
    assert_eq!(pool.stats().keys, 1);
    assert_eq!(transport.sessions_opened(), 5);
    // t=600: busy's replacement (created at t=300) reaches max_lifetime in turn.
    tokio::time::sleep_until(at(610)).await;
    assert_eq!(transport.sessions_opened(), 6);
    transport.wait_sessions_alive(1, WAIT).await.unwrap();
}
