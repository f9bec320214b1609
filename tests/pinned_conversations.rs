//! Conversations pinned to shared sessions: under round robin, a conversation
//! that created session-scoped state keeps its session while the others rotate; what that
//! session sends outside calls reaches it; when the session leaves the pool the conversation
//! is told (its channel closes, `affinity_state` says lost, its next lease is a rebind) — never
//! continued silently elsewhere; `unbind` ends a pin and keeps the shared session. Real rmcp
//! sessions with the reference server, in process on tokio's paused clock.

#![allow(deprecated)] // Logging is deprecated by SEP-2577; servers still send it.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    AcquireRequest, AffinityState, CallOptions, Conversation, EvictionReason, Pool, PoolConfig,
    PoolError, Principal, ServerId, StrategyKind,
    rmcp::model::{
        CallToolRequest, CallToolRequestParams, ClientRequest, ServerNotification, ServerResult,
    },
};
use tokio::sync::mpsc;

/// Round robin over two sessions, both open (warmed by two leases held at once).
async fn round_robin() -> (Pool, ServerId) {
    let (pool, id, _) = duplex_pool(
        PoolConfig {
            strategy: StrategyKind::RoundRobin,
            min_size: 2,
            size: 2,
            max_size: 2,
            ..PoolConfig::enabled()
        },
        Pool::builder(),
    );
    let request = AcquireRequest::new(&id);
    let (a, b) = tokio::join!(pool.acquire_with(request), pool.acquire_with(request));
    assert_ne!(a.unwrap().session_id(), b.unwrap().session_id());
    (pool, id)
}

/// The principal of requests without user or headers.
fn anyone(pool: &Pool) -> Principal {
    pool.principal(None, &http::HeaderMap::new())
}

fn call(params: CallToolRequestParams) -> ClientRequest {
    ClientRequest::CallToolRequest(CallToolRequest::new(params))
}

/// The `counter` tool's answer for conversation `conversation`: 1, 2, 3, … per session.
async fn count(pool: &Pool, id: &ServerId, conversation: &str, options: CallOptions) -> String {
    let request = AcquireRequest::new(id).downstream_session(conversation);
    match pool.call(request, call(counter()), options).await.unwrap() {
        ServerResult::CallToolResult(result) => text(&result),
        other => panic!("{other:?}"),
    }
}

/// The reference server's `notify` tool: log and `resources/updated`, sent `after_ms` after
/// it answered, outside any request.
fn notify_later() -> CallToolRequestParams {
    let args = serde_json::json!({ "kinds": ["log", "updated"], "after_ms": 50 });
    CallToolRequestParams::new("notify").with_arguments(args.as_object().cloned().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_pinned_conversation_keeps_its_session_while_the_others_rotate() {
    let (pool, id) = round_robin().await;
    assert_eq!(
        count(&pool, &id, "a", CallOptions::new().pin(Conversation::new())).await,
        "1"
    );
    let Some(AffinityState::Bound(pinned)) = pool.affinity_state(&id, anyone(&pool), "a") else {
        panic!("pinned: {:?}", pool.affinity_state(&id, anyone(&pool), "a"));
    };
    // Another conversation, unpinned, alternates between the two sessions.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let lease = pool
            .acquire_with(AcquireRequest::new(&id).downstream_session("b"))
            .await
            .unwrap();
        seen.insert(lease.session_id());
    }
    assert_eq!(seen.len(), 2, "round robin rotates the others");
    // The pinned one stays where its state is: its session's counter goes on.
    for expected in 2..=6 {
        assert_eq!(
            count(&pool, &id, "a", CallOptions::new()).await,
            expected.to_string()
        );
        let lease = pool
            .acquire_with(AcquireRequest::new(&id).downstream_session("a"))
            .await
            .unwrap();
        assert_eq!(lease.session_id(), pinned);
        assert!(!lease.is_rebound());
    }
}

#[tokio::test(start_paused = true)]
async fn what_the_pinned_session_sends_outside_calls_reaches_the_conversation() {
    let (pool, id) = round_robin().await;
    let (sink, mut received) = mpsc::channel(16);
    let request = AcquireRequest::new(&id).downstream_session("a");
    let pin = CallOptions::new().pin(Conversation::new().notifications(sink));
    pool.call(request, call(notify_later()), pin).await.unwrap();
    // Sent 50 ms after the answer, outside any request: the pinned conversation gets both.
    let first = received.recv().await.unwrap();
    let second = received.recv().await.unwrap();
    assert!(
        matches!(first, ServerNotification::LoggingMessageNotification(_)),
        "{first:?}"
    );
    assert!(
        matches!(second, ServerNotification::ResourceUpdatedNotification(_)),
        "{second:?}"
    );
    // An unpinned conversation's call on the other session: nothing reaches the pinned one.
    let other = AcquireRequest::new(&id).downstream_session("b");
    pool.call(other, call(notify_later()), CallOptions::new())
        .await
        .unwrap();
    pool.call(other, call(notify_later()), CallOptions::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One of those two calls ran on the pinned session (round robin), one did not.
    assert_eq!(
        std::iter::from_fn(|| received.try_recv().ok()).count(),
        2,
        "only what the pinned session sent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_pinned_session_is_told_to_its_conversation_never_continued_silently() {
    let (pool, id) = round_robin().await;
    let (sink, mut received) = mpsc::channel(16);
    let pin = CallOptions::new().pin(Conversation::new().notifications(sink));
    assert_eq!(count(&pool, &id, "a", pin).await, "1");
    pool.drain();
    // The conversation's channel closes: its state is gone.
    assert!(received.recv().await.is_none());
    assert_eq!(
        pool.affinity_state(&id, anyone(&pool), "a"),
        Some(AffinityState::Lost(EvictionReason::Drained))
    );
    // A caller that refuses a rebind is refused, and nothing is sent.
    let request = AcquireRequest::new(&id).downstream_session("a");
    let refused = pool
        .call(request, call(counter()), CallOptions::new().refuse_rebind())
        .await;
    assert!(
        matches!(refused, Err(PoolError::ConversationLost { .. })),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_next_lease_of_a_conversation_whose_pin_was_lost_is_a_rebind_once() {
    let (pool, id) = round_robin().await;
    assert_eq!(
        count(&pool, &id, "a", CallOptions::new().pin(Conversation::new())).await,
        "1"
    );
    pool.drain();
    let request = AcquireRequest::new(&id).downstream_session("a");
    let lease = pool.acquire_with(request).await.unwrap();
    assert!(lease.is_rebound(), "the state is gone: the caller is told");
    drop(lease);
    let lease = pool.acquire_with(request).await.unwrap();
    assert!(
        !lease.is_rebound(),
        "told once: the conversation started over"
    );
}

#[tokio::test(start_paused = true)]
async fn unbind_ends_a_pin_and_keeps_the_shared_session() {
    let (pool, id) = round_robin().await;
    let (sink, mut received) = mpsc::channel(16);
    let pin = CallOptions::new().pin(Conversation::new().notifications(sink));
    count(&pool, &id, "a", pin).await;
    assert!(pool.unbind(&id, anyone(&pool), "a"));
    assert!(received.recv().await.is_none(), "the channel closes");
    assert_eq!(
        pool.affinity_state(&id, anyone(&pool), "a"),
        Some(AffinityState::Unknown)
    );
    assert_eq!(
        pool.stats().servers[0].sessions_total,
        2,
        "shared: it stays"
    );
    assert_eq!(pool.stats().servers[0].evictions, 0);
}

#[tokio::test(start_paused = true)]
async fn a_pinned_session_is_never_closed_for_idleness() {
    let (pool, id, _) = duplex_pool(
        PoolConfig {
            strategy: StrategyKind::RoundRobin,
            min_size: 1,
            size: 3,
            max_size: 3,
            max_idle_time: Duration::from_secs(60),
            ..PoolConfig::enabled()
        },
        Pool::builder(),
    );
    let request = AcquireRequest::new(&id);
    let (a, b, c) = tokio::join!(
        pool.acquire_with(request),
        pool.acquire_with(request),
        pool.acquire_with(request)
    );
    let leases = [a.unwrap(), b.unwrap(), c.unwrap()];
    // The newest session: the first the idle reaping would close.
    let newest = leases.iter().max_by_key(|l| l.session_id()).unwrap();
    assert!(newest.pin("a", Conversation::new()));
    let pinned = newest.session_id();
    drop(leases);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        pool.stats().servers[0].sessions_total,
        1,
        "the others were closed down to min_size"
    );
    assert_eq!(
        pool.affinity_state(&id, anyone(&pool), "a"),
        Some(AffinityState::Bound(pinned)),
        "the pinned one stays"
    );
}
