//! `Pool::sessions` (one row per upstream session, never an identity) and
//! `Pool::reset_server` (drain and zero the server's counters), on tokio's paused clock.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{PoolConfig, PoolError, Principal, SessionState};

#[tokio::test(start_paused = true)]
async fn sessions_show_keys_as_hash_prefixes_with_age_idle_uses_and_state() {
    let (pool, id, _transport) = duplex_pool(pooled(4), mcp_pool::Pool::builder());
    let (alice, bob) = (
        Principal::user("alice@example.com"),
        Principal::user("bob@example.com"),
    );
    assert!(pool.sessions(&id).unwrap().is_empty());

    let first = pool.acquire(&id, alice).await.unwrap();
    drop(first);
    tokio::time::advance(Duration::from_secs(5)).await;
    let again = pool.acquire(&id, alice).await.unwrap();
    let held = pool.acquire(&id, bob).await.unwrap();
    drop(again);
    tokio::time::advance(Duration::from_secs(10)).await;

    let sessions = pool.sessions(&id).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let (of_alice, of_bob): (Vec<_>, Vec<_>) =
        sessions.iter().partition(|s| s.state == SessionState::Idle);
    let (a, b) = (of_alice[0], of_bob[0]);
    assert_ne!(a.key, b.key, "two users, two keys");
    for s in [a, b] {
        assert_eq!(s.key.len(), 8, "{s:?}");
        assert!(s.key.chars().all(|c| c.is_ascii_hexdigit()), "{s:?}");
        assert_eq!(s.endpoint, Some(0));
        assert_eq!(s.url.as_deref(), Some("http://duplex.invalid/mcp"));
    }
    assert_eq!(a.use_count, 2, "alice's session served both of her leases");
    assert_eq!(a.in_flight, 0);
    assert!(a.age_secs >= 15.0, "{a:?}");
    assert!(a.idle_secs > 0.0 && a.idle_secs <= a.age_secs, "{a:?}");
    assert_eq!(b.state, SessionState::Leased);
    assert_eq!((b.in_flight, b.use_count, b.idle_secs), (1, 1, 0.0));
    assert!(b.age_secs >= 10.0, "{b:?}");

    // No identity anywhere in what the API would show.
    let shown = format!("{sessions:?}{}", serde_json::to_string(&sessions).unwrap());
    for secret in ["alice", "bob", "example.com"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }

    // Drained with a lease out: the leased session is retiring until released.
    pool.drain_server(&id).unwrap();
    let sessions = pool.sessions(&id).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].state, SessionState::Retiring);
    assert_eq!((sessions[0].endpoint, sessions[0].in_flight), (None, 1));
    drop(held);
    assert!(pool.sessions(&id).unwrap().is_empty());

    let unknown = server_id("nope");
    assert!(matches!(
        pool.sessions(&unknown),
        Err(PoolError::UnknownServer(s)) if s == unknown
    ));
}

#[tokio::test(start_paused = true)]
async fn reset_server_drains_and_zeroes_its_counters_only() {
    let config = PoolConfig {
        size: 2,
        max_size: 2,
        ..PoolConfig::enabled()
    };
    let (pool, id, _transport) = duplex_pool(config, mcp_pool::Pool::builder());
    let user = Principal::user("u");
    for _ in 0..3 {
        drop(pool.acquire(&id, user).await.unwrap());
    }
    let held = pool.acquire(&id, user).await.unwrap();
    let before = pool.stats().servers[0].clone();
    assert_eq!((before.acquisitions, before.releases), (4, 3));

    pool.reset_server(&id).unwrap();
    let after = pool.stats().servers[0].clone();
    assert_eq!(
        (after.hits, after.misses, after.acquisitions, after.releases),
        (0, 0, 0, 0),
        "{after:?}"
    );
    assert_eq!((after.evictions, after.timeouts), (0, 0));
    assert_eq!(
        after.sessions_total, 1,
        "the leased session retires on release"
    );
    drop(held);
    let after = pool.stats().servers[0].clone();
    assert_eq!((after.sessions_total, after.releases), (0, 1));

    // Counting starts again from zero, and the pool stays usable.
    drop(pool.acquire(&id, user).await.unwrap());
    let after = pool.stats().servers[0].clone();
    assert_eq!(
        (after.misses, after.acquisitions, after.releases),
        (1, 1, 2)
    );
    assert!(matches!(
        pool.reset_server(&server_id("nope")),
        Err(PoolError::UnknownServer(_))
    ));
}
