//! `close()`: every session closed upstream, waiters and creations in flight ended with
//! `Closed`; and configurations checked whole before anything applies.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{Pool, PoolConfig, PoolError, Principal, ServerConfig, TransportKind};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};

#[tokio::test]
async fn close_leaves_zero_sessions_alive_on_the_server() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    for user in ["a", "b", "c"] {
        let p = Principal::user(user);
        let (x, y) = (
            pool.acquire(&id, p).await.unwrap(),
            pool.acquire(&id, p).await.unwrap(),
        );
        x.call_tool(echo("x")).await.unwrap();
        drop((x, y));
    }
    assert_eq!(upstream.sessions_alive(), 6);
    pool.close().await;
    upstream
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(pool.is_closed());
    let error = pool.acquire(&id, Principal::user("a")).await.unwrap_err();
    assert!(matches!(error, PoolError::Closed), "{error}");
}

#[tokio::test]
async fn close_wakes_waiters_with_closed() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(1));
    let user = Principal::user("u");
    let held = pool.acquire(&id, user).await.unwrap();
    let waiter = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, user).await.map(|_| ()) }
    });
    while pool.stats().servers[0]
        .keys
        .first()
        .is_none_or(|k| k.waiters == 0)
    {
        tokio::task::yield_now().await;
    }
    pool.close().await;
    let error = waiter.await.unwrap().unwrap_err();
    assert!(matches!(error, PoolError::Closed), "{error}");
    drop(held);
    upstream
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_invalid_config_is_rejected_whole() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let bad = PoolConfig {
        max_size: 2,
        timeout: Duration::from_secs(500),
        ..PoolConfig::enabled()
    };
    let error = pool.set_pool_config(&id, bad).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: timeout = 500 is out of range: must be 1 to 300 seconds"
    );
    assert_eq!(
        pool.server_config(&id).unwrap().max_size,
        4,
        "nothing was applied"
    );

    let other = server_id("other");
    let error = pool
        .add_server(
            ServerConfig::new(other.clone(), upstream.endpoint()).pool(PoolConfig {
                min_size: 0,
                ..PoolConfig::enabled()
            }),
        )
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("min_size = 0 is out of range: must be 1 to 1000"),
        "{error}"
    );
    assert!(matches!(
        pool.acquire(&other, Principal::user("u"))
            .await
            .unwrap_err(),
        PoolError::UnknownServer(_)
    ));
    let error = Pool::builder()
        .cleanup_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains("cleanup_interval = 0"),
        "{error}"
    );
}

/// `close()` waits for a creation in flight and closes the session it opens; the acquire that
/// started it ends with `Closed`.
#[tokio::test(start_paused = true)]
async fn close_waits_for_creations_in_flight() {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    transport.set_connect_delay(Duration::from_secs(1));
    let id = server_id("slow");
    let pool = Pool::builder()
        .transport(transport.clone())
        .server(
            ServerConfig::new(id.clone(), http_endpoint("http://slow.invalid/mcp")).pool(warm(2)),
        )
        .build()
        .unwrap();
    let acquire = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, Principal::user("u")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats().servers[0].keys[0].sessions_creating, 1);
    pool.close().await;
    assert_eq!(transport.sessions_alive(), 0);
    assert_eq!(transport.sessions_opened(), 1);
    assert!(matches!(acquire.await.unwrap(), Err(PoolError::Closed)));
}
