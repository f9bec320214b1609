//! Live reconfiguration: new sizes apply while leases are out, pooling switched off or to
//! strategy `none` frees idle sessions at once, and an endpoint removed while a session is being
//! created on it costs the acquire nothing but a retry.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{Pool, PoolConfig, Principal, ServerConfig, StrategyKind, TransportKind};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};
use tokio::time::Instant;

#[tokio::test]
async fn live_reconfiguration_keeps_leases_and_applies_new_sizes() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(1));
    let user = Principal::user("u");
    let held = pool.acquire(&id, user).await.unwrap();
    pool.set_pool_config(&id, pooled(2)).unwrap();
    let second = pool.acquire(&id, user).await.unwrap();
    assert_ne!(held.session_id(), second.session_id());
    held.call_tool(echo("still mine")).await.unwrap();
}

/// Disabling pooling, or switching to strategy `none`, closes the idle session at once, so that
/// the next acquire is served without waiting for its room.
#[tokio::test(start_paused = true)]
async fn disabling_pooling_or_switching_to_none_frees_the_idle_session_at_once() {
    for off in [
        PoolConfig {
            enabled: false,
            ..warm(1)
        },
        PoolConfig {
            strategy: StrategyKind::None,
            ..warm(1)
        },
    ] {
        let (pool, id, transport) = duplex_pool(warm(1), Pool::builder());
        let user = Principal::user("u");
        drop(pool.acquire(&id, user).await.unwrap());
        pool.set_pool_config(&id, off.clone()).unwrap();
        transport
            .wait_sessions_alive(0, Duration::from_millis(1))
            .await
            .unwrap_or_else(|e| panic!("{off:?}: {e}"));
        let started = Instant::now();
        let lease = pool.acquire(&id, user).await.expect("room was freed");
        assert!(!lease.is_hit());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

/// An endpoint removed while a session is being created on it: no panic, the new session is
/// closed, and the acquire retries on a remaining endpoint within its own timeout.
#[tokio::test(start_paused = true)]
async fn a_creation_on_a_removed_endpoint_is_closed_and_retried_within_the_timeout() {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    transport.set_connect_delay(Duration::from_millis(500));
    let id = server_id("replicas");
    let server = |endpoints: &[&str]| {
        let mut s = ServerConfig::new(id.clone(), http_endpoint(endpoints[0])).pool(warm(2));
        for e in &endpoints[1..] {
            s = s.endpoint(http_endpoint(e));
        }
        s
    };
    let pool = Pool::builder()
        .transport(transport.clone())
        .server(server(&["http://x.invalid/mcp", "http://y.invalid/mcp"]))
        .build()
        .unwrap();
    let user = Principal::user("u");
    let first = pool.acquire(&id, user).await.unwrap();
    let started = Instant::now();
    let second = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, user).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats().servers[0].keys[0].sessions_creating, 1);
    // The second creation goes to the endpoint with fewer sessions: y, which now goes away.
    pool.add_server(server(&["http://x.invalid/mcp"])).unwrap();
    let second = second.await.expect("no panic").expect("retried on x");
    assert_eq!(second.endpoint_index(), 0);
    assert!(started.elapsed() <= Duration::from_secs(2));
    transport
        .wait_sessions_alive(2, Duration::from_millis(1))
        .await
        .expect("the session on y was closed");
    drop((first, second));
    pool.close().await;
    assert_eq!(transport.sessions_alive(), 0);
    assert_eq!(pool.stats().servers[0].sessions_total, 0);
}
