//! An upstream that restarts, or goes down for a while, against real sockets: the reference
//! server stopped and restarted on the same port. A dead session is noticed at once (the
//! server answers its event stream with HTTP 404), no call waits for `call_timeout` on it, a
//! round-robin call answers on a fresh session, a sticky conversation is told its state is
//! gone (it fails, or its next lease is a rebind: never silently reused), and after an outage
//! the next call succeeds within a second of the server being back.
//!
//! `call_timeout` is 30 s here, so that a call that waited for it is told from one that did
//! not by a wide margin: the bounds asserted are 5 s (a restart) and 1 s (recovery), and each
//! test prints the figure it measured.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    AcquireRequest, Pool, PoolConfig, Principal, ServerId, ServerStats, StrategyKind,
    score::HealthStatus, traits::is_transport_failure,
};
use mcp_pool_conformance::ReferenceServer;
use tokio::time::Instant;

fn pool_for(upstream: &ReferenceServer, strategy: StrategyKind) -> (Pool, ServerId) {
    let config = PoolConfig {
        strategy,
        ..pooled(4)
    };
    restart_pool("restarting", &upstream.endpoint(), config)
}

fn stats(pool: &Pool) -> ServerStats {
    pool.stats().servers.remove(0)
}

/// Polls `done` every 10 ms until it holds, for at most `bound`; returns how long it took.
/// (The pool has no event for an eviction: its stats are what an operator sees.)
async fn within(what: &str, bound: Duration, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_noticed_at_once_and_the_next_round_robin_call_answers_on_a_fresh_session() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::RoundRobin);
    assert_eq!(pooled_echo(&pool, &id, "before").await.unwrap(), "before");
    let before = pool.sessions(&id).unwrap();
    assert_eq!(before.len(), 1);

    upstream.restart().await.unwrap();
    // No call: the session's event stream, refused with 404 by the new process, tells; the
    // pool evicts the session and brings the key back to `min_size` (1) with a new one.
    let noticed = within("the dead session evicted", RESTART_BOUND, || {
        stats(&pool).evictions == 1
    })
    .await;
    eprintln!("round_robin: the dead session was evicted {noticed:?} after the restart");
    within("min_size refilled", RESTART_BOUND, || {
        pool.sessions(&id)
            .unwrap()
            .iter()
            .any(|s| s.session != before[0].session)
    })
    .await;

    let started = Instant::now();
    assert_eq!(pooled_echo(&pool, &id, "after").await.unwrap(), "after");
    let took = started.elapsed();
    eprintln!("round_robin: the next call answered in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let after = pool.sessions(&id).unwrap();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].session, before[0].session, "a fresh session");
    assert_eq!(upstream.sessions_opened(), 2);
    assert_eq!(stats(&pool).evictions, 1);
    let server = stats(&pool);
    assert_eq!(server.call_retries, 0, "nothing to retry: the pool knew");
    let why = server.endpoints[0]
        .last_error
        .as_deref()
        .unwrap_or_default();
    assert!(why.starts_with("session lost: "), "{why:?}");
    assert!(why.contains("404"), "{why:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_robin_call_racing_the_restart_is_retried_once_on_a_fresh_session() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::RoundRobin);
    assert_eq!(pooled_echo(&pool, &id, "before").await.unwrap(), "before");
    let before = pool.sessions(&id).unwrap()[0].session;

    // At once: the session's event stream reconnects 250 ms after it ended, so the call
    // finds the session still pooled, and the server answers its POST with 404.
    upstream.restart().await.unwrap();
    let started = Instant::now();
    assert_eq!(pooled_echo(&pool, &id, "after").await.unwrap(), "after");
    let took = started.elapsed();
    eprintln!("round_robin, racing the restart: the call answered in {took:?}");
    assert!(took < RESTART_BOUND, "{took:?}");
    let server = stats(&pool);
    assert_eq!(server.evictions, 1, "the dead session left");
    assert!(server.call_retries <= 1);
    // The retry's session, and maybe the `min_size` refill's: never the dead one.
    let sessions = pool.sessions(&id).unwrap();
    assert!(!sessions.is_empty());
    assert!(sessions.iter().all(|s| s.session != before), "{sessions:?}");
}

/// A conversation's lease on the sticky server.
async fn conversation(pool: &Pool, id: &ServerId) -> mcp_pool::Lease {
    pool.acquire_with(
        AcquireRequest::new(id)
            .principal(Principal::user("u"))
            .downstream_session("conversation-1"),
    )
    .await
    .expect("a lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_conversation_is_told_its_session_is_gone_never_silently_continued() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::Sticky);
    let lease = conversation(&pool, &id).await;
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "2");
    let bound = lease.session_id();
    drop(lease);

    upstream.restart().await.unwrap();
    let started = Instant::now();
    let lease = conversation(&pool, &id).await;
    let first = lease.call_tool(counter()).await;
    let took = started.elapsed();
    eprintln!(
        "sticky: the next call {} in {took:?}",
        if first.is_ok() { "answered" } else { "failed" }
    );
    assert!(took < RESTART_BOUND, "{took:?}");
    match first {
        // The pool knew already: a new session, and the lease says the state is gone.
        Ok(result) => {
            assert!(lease.is_rebound(), "a fresh session must say so");
            assert_ne!(lease.session_id(), bound);
            assert_eq!(text(&result), "1", "the state is gone, visibly");
        }
        // The call found out: it fails (never retried for a bound conversation) ...
        Err(error) => {
            assert!(is_transport_failure(&error), "{error:?}");
            assert_eq!(lease.session_id(), bound);
            drop(lease);
            // ... and the conversation's next lease is a rebind.
            let next = conversation(&pool, &id).await;
            assert!(next.is_rebound());
            assert_ne!(next.session_id(), bound);
            assert_eq!(text(&next.call_tool(counter()).await.unwrap()), "1");
        }
    }
    let server = stats(&pool);
    assert_eq!(server.rebinds, 1);
    assert_eq!(server.call_retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_session_lost_while_idle_is_evicted_and_its_conversation_rebound() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::Sticky);
    let lease = conversation(&pool, &id).await;
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    drop(lease);

    upstream.restart().await.unwrap();
    within("the bound session evicted", RESTART_BOUND, || {
        stats(&pool).evictions == 1
    })
    .await;
    assert_eq!(
        pool.affinity_state(&id, Principal::user("u"), "conversation-1"),
        Some(mcp_pool::AffinityState::Lost(
            mcp_pool::EvictionReason::Lost
        )),
        "the binding is recorded as lost, with its reason"
    );
    let lease = conversation(&pool, &id).await;
    assert!(lease.is_rebound());
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_the_session_is_lost_fails_at_once() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::RoundRobin);
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let mut call = Box::pin(lease.call_tool(sleep_for(60_000)));
    tokio::select! {
        _ = &mut call => panic!("the sleep call cannot finish before the server restarts"),
        _ = upstream.wait_until(|s| s.tool_calls == 1, Duration::from_secs(5)) => {}
    }
    let restarted = Instant::now();
    upstream.restart().await.unwrap();
    let error = tokio::time::timeout(RESTART_BOUND, &mut call)
        .await
        .expect("the call fails long before its 30 s deadline")
        .unwrap_err();
    let took = restarted.elapsed();
    eprintln!("a call in flight failed {took:?} after the restart: {error}");
    assert!(is_transport_failure(&error), "{error:?}");
    assert!(lease.is_broken());
    drop(call);
    drop(lease);
    assert_eq!(stats(&pool).evictions, 1);
}

/// Stops the server for `outage` while a client calls every 100 ms, restarts it, and returns
/// how long after the restart the first call succeeded. Checks, at every call, that the
/// server's health status follows its score.
async fn recovery_after(outage: Duration) -> Duration {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = pool_for(&upstream, StrategyKind::RoundRobin);
    let threshold = pool.server_config(&id).unwrap().health_check_threshold;
    assert_eq!(pooled_echo(&pool, &id, "up").await.unwrap(), "up");

    upstream.stop().await;
    let down_at = Instant::now();
    let mut back_at = None;
    loop {
        if back_at.is_none() && down_at.elapsed() >= outage {
            upstream.restart().await.unwrap();
            back_at = Some(Instant::now());
        }
        let attempt = Instant::now();
        let result = pooled_echo(&pool, &id, "ping").await;
        assert!(
            attempt.elapsed() < RESTART_BOUND,
            "a call took {:?}: {result:?}",
            attempt.elapsed()
        );
        let server = stats(&pool);
        assert_eq!(
            server.health_status,
            HealthStatus::from_score(server.health_score, threshold),
            "status {:?} with score {:?}",
            server.health_status,
            server.health_score
        );
        match (result, back_at) {
            (Ok(_), Some(back)) => return back.elapsed(),
            (Ok(echo), None) => panic!("served while down: {echo}"),
            (Err(error), Some(back)) => assert!(
                back.elapsed() < Duration::from_secs(2),
                "still failing {:?} after the restart: {error}",
                back.elapsed()
            ),
            (Err(_), None) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_3_s_outage_the_next_call_succeeds_within_1_s_of_the_server_being_back() {
    let after = recovery_after(Duration::from_secs(3)).await;
    eprintln!("3 s outage: served {after:?} after the server was back");
    assert!(after < Duration::from_secs(1), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_10_s_outage_the_next_call_succeeds_within_1_s_of_the_server_being_back() {
    let after = recovery_after(Duration::from_secs(10)).await;
    eprintln!("10 s outage: served {after:?} after the server was back");
    assert!(after < Duration::from_secs(1), "{after:?}");
}
