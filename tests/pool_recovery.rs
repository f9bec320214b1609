//! A dead upstream: its sessions are evicted at their next use, acquires under load fail fast
//! and open the circuit breaker, and the pool recovers when the server comes back on the same
//! port, without a restart of the pool.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    Pool, PoolConfig, PoolError, Principal, breaker::BreakerConfig, traits::is_transport_failure,
};
use mcp_pool_conformance::ReferenceServer;

#[tokio::test]
async fn a_stopped_server_evicts_at_next_use_and_the_pool_recovers_after_restart() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let dead_session = lease.session_id();
    lease.call_tool(echo("before")).await.unwrap();
    drop(lease);

    upstream.stop().await;
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(lease.is_hit(), "the pool cannot know yet");
    let error = tokio::time::timeout(Duration::from_secs(10), lease.call_tool(echo("during")))
        .await
        .expect("a call to a stopped server fails instead of hanging")
        .unwrap_err();
    assert!(is_transport_failure(&error), "{error:?}");
    assert!(lease.is_broken());
    drop(lease);
    assert_eq!(pool.stats().servers[0].evictions, 1);
    assert_eq!(pool.stats().servers[0].sessions_total, 0);

    upstream.restart().await.unwrap();
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
    assert_ne!(lease.session_id(), dead_session);
    assert_eq!(
        text(&lease.call_tool(echo("after")).await.unwrap()),
        "after"
    );
}

#[tokio::test]
async fn a_server_error_leaves_the_session_pooled() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let session = lease.session_id();
    let error = lease
        .call_tool(mcp_pool::rmcp::model::CallToolRequestParams::new("fail"))
        .await
        .unwrap_err();
    assert!(!is_transport_failure(&error), "{error:?}");
    assert!(!lease.is_broken());
    drop(lease);
    let again = pool.acquire(&id, user).await.unwrap();
    assert_eq!(again.session_id(), session);
}

#[tokio::test]
async fn an_expired_session_is_evicted_never_silently_reinitialized() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    drop(lease);
    upstream.expire_sessions().await;

    let lease = pool.acquire(&id, user).await.unwrap();
    let error = lease.call_tool(counter()).await.unwrap_err();
    assert!(
        is_transport_failure(&error),
        "HTTP 404 surfaces as an error: {error:?}"
    );
    drop(lease);
    assert_eq!(upstream.sessions_opened(), 1, "no silent re-initialize");
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
    assert_eq!(
        text(&lease.call_tool(counter()).await.unwrap()),
        "1",
        "state loss is visible"
    );
}

#[tokio::test]
async fn a_call_in_flight_when_the_server_dies_fails_instead_of_hanging() {
    use mcp_pool_conformance::ServerOptions;
    // rmcp servers send SSE priming events by default: a client with rmcp's default retry
    // policy then resumes forever. The pool's transport gives up after a few resumes.
    let options = ServerOptions::default().with_sse_retry(Some(Duration::from_millis(100)));
    let upstream = ReferenceServer::start_with(options).await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let mut call = Box::pin(lease.call_tool(sleep_for(60_000)));
    tokio::select! {
        _ = &mut call => panic!("the sleep call cannot finish before the server stops"),
        _ = upstream.wait_until(|s| s.tool_calls == 1, Duration::from_secs(5)) => {}
    }
    upstream.stop().await;
    let error = tokio::time::timeout(Duration::from_secs(30), &mut call)
        .await
        .expect("the call fails within the bounded resume policy")
        .unwrap_err();
    assert!(is_transport_failure(&error), "{error:?}");
    drop(call);
    drop(lease);
    assert_eq!(pool.stats().servers[0].evictions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_under_load_fails_fast_opens_the_breaker_and_recovers_after_restart() {
    let upstream = ReferenceServer::start().await.unwrap();
    let config = PoolConfig {
        max_size: 4,
        size: 4,
        timeout: Duration::from_secs(2),
        health_check_interval: Duration::from_secs(10),
        ..PoolConfig::enabled()
    };
    let builder = Pool::builder().circuit_breaker(BreakerConfig::new(3, Duration::from_secs(1)));
    let (pool, id) = http_pool_with(&upstream, config, builder);
    let user = Principal::user("u");
    drop(pool.acquire(&id, user).await.unwrap());

    upstream.stop().await;
    // Load while the server is down: every acquire answers (a lease whose call fails, a
    // creation error, or an open circuit) within its timeout; none hangs.
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                let attempt = async {
                    match pool.acquire(&id, user).await {
                        Ok(lease) => lease
                            .call_tool(echo("down"))
                            .await
                            .map(|_| ())
                            .map_err(|_| ()),
                        Err(_) => Err(()),
                    }
                };
                tokio::time::timeout(Duration::from_secs(3), attempt).await
            })
        })
        .collect();
    for task in load {
        let answered = task.await.unwrap();
        assert!(answered.is_ok(), "an acquire or call hung past its timeout");
        assert!(
            answered.unwrap().is_err(),
            "nothing succeeds while the server is down"
        );
    }
    // The breaker is open now: acquires fail at once, saying when they will be retried.
    let error = pool.acquire(&id, user).await.unwrap_err();
    assert!(matches!(error, PoolError::CircuitOpen { .. }), "{error}");
    assert!(error.to_string().contains("retry in"), "{error}");
    let endpoint = &pool.stats().servers[0].endpoints[0];
    assert_eq!(endpoint.circuit, "open");
    assert!(endpoint.circuit_trips >= 1);

    upstream.restart().await.unwrap();
    // Recovery within one health interval, with no restart of the pool.
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(lease) = pool.acquire(&id, user).await
                && lease.call_tool(echo("back")).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the pool did not recover within one health interval"
    );
    assert_eq!(pool.stats().servers[0].endpoints[0].circuit, "closed");
}
