//! Pool-wide caps: sessions per user across servers, total sessions, total keys (idle ones
//! included; at the cap, the least recently used idle key makes room), against rotating tokens
//! and runaway users.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    AcquireRequest, Endpoint, Pool, PoolBuilder, PoolConfig, PoolError, Principal, ServerConfig,
    ServerId, TransportKind,
};
use mcp_pool_conformance::DuplexTransport;

const WAIT: Duration = Duration::from_secs(5);

/// Two servers served in process.
fn two_servers(builder: PoolBuilder) -> (Pool, [ServerId; 2], Arc<DuplexTransport>) {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    let ids = [server_id("one"), server_id("two")];
    let mut builder = builder.transport(transport.clone());
    for id in &ids {
        let endpoint = Endpoint::new(
            format!("http://{id}.invalid/mcp"),
            TransportKind::StreamableHttp,
        )
        .unwrap();
        builder = builder.server(ServerConfig::new(id.clone(), endpoint).pool(pooled(4)));
    }
    (builder.build().unwrap(), ids, transport)
}

#[tokio::test(start_paused = true)]
async fn the_user_limit_counts_sessions_across_servers() {
    let (pool, [one, two], transport) = two_servers(Pool::builder().user_limit(2));
    let alice = Principal::user("alice");
    let a = pool.acquire(&one, alice).await.unwrap();
    let b = pool.acquire(&two, alice).await.unwrap();
    let error = pool.acquire(&one, alice).await.unwrap_err();
    assert!(
        matches!(error, PoolError::UserLimit { limit: 2, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("SESSION_POOL_USER_LIMIT"),
        "{error}"
    );
    // Another user is not affected.
    let bob = pool.acquire(&one, Principal::user("bob")).await.unwrap();
    // An idle session of alice's makes room: it is closed for the new one.
    drop(b);
    let c = pool.acquire(&one, alice).await.unwrap();
    assert!(!c.is_hit());
    transport.wait_sessions_alive(3, WAIT).await.unwrap();
    assert_eq!(
        pool.stats().servers[1].evictions,
        1,
        "alice's idle session on two"
    );
    drop((a, bob, c));
}

#[tokio::test(start_paused = true)]
async fn the_session_cap_counts_idle_sessions_and_makes_room_from_them() {
    let (pool, [one, two], transport) = two_servers(Pool::builder().max_sessions(2));
    let a = pool.acquire(&one, Principal::user("a")).await.unwrap();
    drop(pool.acquire(&two, Principal::user("b")).await.unwrap());
    assert_eq!(transport.sessions_alive(), 2);
    // At the cap, b's idle session is closed to make room for c.
    let c = pool.acquire(&one, Principal::user("c")).await.unwrap();
    transport.wait_sessions_alive(2, WAIT).await.unwrap();
    // Now both sessions are in use: nothing can be closed.
    let error = pool.acquire(&two, Principal::user("d")).await.unwrap_err();
    assert!(
        matches!(error, PoolError::SessionLimit { max_sessions: 2 }),
        "{error}"
    );
    drop((a, c));
}

#[tokio::test(start_paused = true)]
async fn the_key_cap_removes_idle_keys_and_refuses_when_none_is_idle() {
    let (pool, [one, _], _transport) = two_servers(Pool::builder().max_keys(2));
    let rotating = |token: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers
    };
    let (t1, t2, t3, t4) = (rotating("1"), rotating("2"), rotating("3"), rotating("4"));
    drop(
        pool.acquire_with(AcquireRequest::new(&one).headers(&t1))
            .await
            .unwrap(),
    );
    let held = pool
        .acquire_with(AcquireRequest::new(&one).headers(&t2))
        .await
        .unwrap();
    assert_eq!(pool.stats().keys, 2);
    let third = pool
        .acquire_with(AcquireRequest::new(&one).headers(&t3))
        .await
        .unwrap();
    assert_eq!(pool.stats().keys, 2, "the idle key of token 1 made room");
    let error = pool
        .acquire_with(AcquireRequest::new(&one).headers(&t4))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PoolError::KeyLimit { max_keys: 2 }),
        "{error}"
    );
    drop((held, third));
}

#[tokio::test(start_paused = true)]
async fn lowering_max_size_live_closes_idle_sessions_above_it() {
    let (pool, [one, _], transport) = two_servers(Pool::builder());
    let user = Principal::user("u");
    let leases: Vec<_> = futures::future::join_all((0..4).map(|_| pool.acquire(&one, user))).await;
    let mut leases: Vec<_> = leases.into_iter().map(Result::unwrap).collect();
    pool.set_pool_config(
        &one,
        PoolConfig {
            max_size: 2,
            size: 2,
            ..PoolConfig::enabled()
        },
    )
    .unwrap();
    leases.truncate(1);
    // The next acquire picks the change up; releases above the new max close their session.
    drop(pool.acquire(&one, user).await.unwrap());
    transport.wait_sessions_alive(2, WAIT).await.unwrap();
    assert!(pool.stats().servers[0].sessions_total <= 2);
}

/// At the key cap, a new key takes the room of the least recently used idle key.
#[tokio::test(start_paused = true)]
async fn the_key_cap_removes_the_least_recently_used_idle_key() {
    let builder = Pool::builder()
        .max_keys(3)
        .cleanup_interval(Duration::from_secs(5));
    let (pool, id, _transport) = duplex_pool(warm(1), builder);
    for name in ["a", "b", "c", "a"] {
        drop(pool.acquire(&id, Principal::user(name)).await.unwrap());
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    drop(pool.acquire(&id, Principal::user("d")).await.unwrap());
    let users: Vec<String> = pool.stats().servers[0]
        .keys
        .iter()
        .map(|k| k.user.clone())
        .collect();
    let short = |name: &str| Principal::user(name).user.short();
    assert_eq!(users.len(), 3);
    assert!(!users.contains(&short("b")), "b was least recently used");
    for kept in ["a", "c", "d"] {
        assert!(users.contains(&short(kept)), "{kept} kept");
    }
}
