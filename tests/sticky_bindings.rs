//! Sticky bindings at the pool's limits, on tokio's paused clock with the in-process reference
//! server: a new conversation at `max_size` takes an idle session's room and the conversation
//! that loses it is told, and background refills never bind a session nor consume a lost
//! binding.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{AcquireRequest, Pool, PoolConfig, Principal, StrategyKind};

/// At `max_size`, a new sticky conversation takes the least recently used idle session's room
/// instead of waiting; the conversation whose session that was is told it was rebound.
#[tokio::test(start_paused = true)]
async fn a_new_sticky_conversation_at_max_size_takes_the_least_recently_used_idle_room() {
    let cfg = PoolConfig {
        strategy: StrategyKind::Sticky,
        ..warm(2)
    };
    let (pool, id, _transport) = duplex_pool(cfg, Pool::builder());
    let user = Principal::user("u");
    let conv = |name: &'static str| {
        AcquireRequest::new(&id)
            .principal(user)
            .downstream_session(name)
    };
    let a = pool.acquire_with(conv("a")).await.unwrap().session_id();
    let b = pool.acquire_with(conv("b")).await.unwrap().session_id();
    let c = pool.acquire_with(conv("c")).await.expect("not starved");
    assert_ne!(c.session_id(), a);
    assert_ne!(c.session_id(), b);
    drop(c);
    // `a` was released first: its session made room; `b` keeps its own.
    let b_again = pool.acquire_with(conv("b")).await.unwrap();
    assert_eq!(b_again.session_id(), b);
    assert!(!b_again.is_rebound());
    drop(b_again);
    let a_again = pool.acquire_with(conv("a")).await.unwrap();
    assert!(a_again.is_rebound(), "a's server-side state was lost");
    assert_ne!(a_again.session_id(), a);
}

/// Background creations (the `min_size` refill) never bind: a lost principal binding stays
/// lost (the principal's next lease says `is_rebound()`), and a warm session is bound by the
/// first new conversation that picks it.
#[tokio::test(start_paused = true)]
async fn refills_do_not_bind_and_do_not_consume_a_lost_binding() {
    let cfg = PoolConfig {
        strategy: StrategyKind::Sticky,
        min_size: 2,
        ..warm(3)
    };
    let builder = Pool::builder().cleanup_interval(Duration::from_secs(5));
    let (pool, id, _transport) = duplex_pool(cfg, builder);
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let first = lease.session_id();
    lease.mark_broken();
    drop(lease);
    // The refill creates warm sessions; none of them may become the principal's.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pool.stats().servers[0].keys[0].sessions_total, 2);
    let again = pool.acquire(&id, user).await.unwrap();
    assert_ne!(again.session_id(), first);
    assert!(again.is_rebound(), "the principal's state was lost");
    // A warm session is bound by the first new conversation that picks it.
    let other = pool
        .acquire_with(
            AcquireRequest::new(&id)
                .principal(user)
                .downstream_session("new"),
        )
        .await
        .unwrap();
    assert!(other.is_hit() && !other.is_rebound());
}
