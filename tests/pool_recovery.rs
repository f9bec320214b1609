//! A dead upstream: its sessions are evicted at their next use, and the pool recovers when the
//! server comes back on the same port, without a restart of the pool.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{Principal, traits::is_transport_failure};
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
    let args = serde_json::json!({ "ms": 60_000 });
    let slow = mcp_pool::rmcp::model::CallToolRequestParams::new("sleep")
        .with_arguments(args.as_object().cloned().unwrap());
    let mut call = Box::pin(lease.call_tool(slow));
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
