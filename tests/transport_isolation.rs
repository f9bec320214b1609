//! Pooling over every transport, end to end against the reference server with the real
//! client transports (streamable HTTP, legacy SSE, WebSocket): the transport is part of the
//! pool key, so one server over two transports is two keys and two sessions; sessions are
//! reused on each; a dead SSE or WebSocket session fails its call at once and is evicted.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    AcquireRequest, Endpoint, Pool, PoolError, Principal, ServerConfig, TransportKind,
    traits::is_transport_failure,
};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};

const BOUND: Duration = Duration::from_secs(10);

/// One server reachable over all three transports of the reference server.
fn all_transports_pool(upstream: &ReferenceServer) -> (Pool, mcp_pool::ServerId) {
    let id = server_id("reference");
    let server = ServerConfig::new(
        id.clone(),
        upstream.endpoint_for(TransportKind::StreamableHttp),
    )
    .endpoint(upstream.endpoint_for(TransportKind::Sse))
    .endpoint(upstream.endpoint_for(TransportKind::WebSocket))
    .pool(pooled(4));
    let pool = Pool::builder().server(server).build().expect("valid pool");
    (pool, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_over_three_transports_is_three_keys_and_three_sessions() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = all_transports_pool(&upstream);
    let alice = Principal::user("alice");

    let mut sessions = HashSet::new();
    for round in 1..=3 {
        for kind in TransportKind::ALL {
            let lease = pool
                .acquire_with(AcquireRequest::new(&id).principal(alice).transport(kind))
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(lease.key().transport, kind);
            assert_eq!(lease.is_hit(), round > 1, "{kind} round {round}");
            // Each transport's session has its own server-side state, continued on reuse.
            assert_eq!(
                text(&lease.call_tool(counter()).await.unwrap()),
                round.to_string(),
                "{kind} round {round}"
            );
            sessions.insert((kind, lease.session_id()));
        }
    }
    assert_eq!(
        sessions.len(),
        3,
        "one session per transport, reused: {sessions:?}"
    );
    assert_eq!(upstream.sessions_opened(), 3);
    assert_eq!(upstream.sessions_alive(), 3);
    let stats = pool.stats();
    assert_eq!(stats.keys, 3);
    let transports: HashSet<_> = stats.servers[0].keys.iter().map(|k| k.transport).collect();
    assert_eq!(transports, HashSet::from(TransportKind::ALL));
    assert_eq!((stats.servers[0].hits, stats.servers[0].misses), (6, 3));

    pool.close().await;
    upstream
        .wait_sessions_alive(0, BOUND)
        .await
        .expect("closing the pool ends the sessions of every transport");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_url_over_two_transports_is_two_keys() {
    // Literally one URL for two transport kinds: each kind's in-process transport counts
    // the sessions it opens.
    let http = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    let sse = Arc::new(DuplexTransport::new(TransportKind::Sse));
    let url = "http://same.invalid/mcp";
    let id = server_id("same-url");
    let server = ServerConfig::new(
        id.clone(),
        Endpoint::new(url, TransportKind::StreamableHttp).unwrap(),
    )
    .endpoint(Endpoint::new(url, TransportKind::Sse).unwrap())
    .pool(pooled(4));
    let pool = Pool::builder()
        .transport(http.clone())
        .transport(sse.clone())
        .server(server)
        .build()
        .unwrap();
    let bob = Principal::user("bob");
    let over = |kind| AcquireRequest::new(&id).principal(bob).transport(kind);

    let a = pool
        .acquire_with(over(TransportKind::StreamableHttp))
        .await
        .unwrap();
    let b = pool.acquire_with(over(TransportKind::Sse)).await.unwrap();
    assert_ne!(a.key(), b.key());
    assert_ne!(a.session_id(), b.session_id());
    assert_eq!(text(&a.call_tool(counter()).await.unwrap()), "1");
    assert_eq!(
        text(&b.call_tool(counter()).await.unwrap()),
        "1",
        "no state crosses transports"
    );
    assert_eq!((http.sessions_opened(), sse.sessions_opened()), (1, 1));
    drop((a, b));
    let again = pool.acquire_with(over(TransportKind::Sse)).await.unwrap();
    assert!(again.is_hit());
    assert_eq!(text(&again.call_tool(counter()).await.unwrap()), "2");
    assert_eq!(pool.stats().keys, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_reach_sse_and_websocket_upstreams_and_internal_ones_do_not() {
    for kind in [TransportKind::Sse, TransportKind::WebSocket] {
        let upstream = ReferenceServer::start().await.unwrap();
        let (pool, id) = all_transports_pool(&upstream);
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer via-pool".parse().unwrap());
        headers.insert("x-mcp-session-id", "downstream-1".parse().unwrap());
        headers.insert("mcp-session-id", "downstream-2".parse().unwrap());
        let lease = pool
            .acquire_with(AcquireRequest::new(&id).headers(&headers).transport(kind))
            .await
            .unwrap();
        lease.call_tool(echo("hi")).await.unwrap();
        let opened = upstream.initialize_header_names();
        assert!(opened.contains("authorization"), "{kind}: {opened:?}");
        let seen = upstream.seen_header_names();
        assert!(!seen.contains("x-mcp-session-id"), "{kind}: {seen:?}");
        assert!(!seen.contains("mcp-session-id"), "{kind}: {seen:?}");
        assert_eq!(
            upstream.last_request_headers()["authorization"],
            "Bearer via-pool",
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sse_or_websocket_session_fails_at_once_and_is_evicted() {
    for kind in [TransportKind::Sse, TransportKind::WebSocket] {
        let upstream = ReferenceServer::start().await.unwrap();
        let (pool, id) = all_transports_pool(&upstream);
        let user = Principal::user("u");
        let over = || AcquireRequest::new(&id).principal(user).transport(kind);
        let lease = pool.acquire_with(over()).await.unwrap();
        let dead = lease.session_id();
        lease.call_tool(echo("before")).await.unwrap();
        drop(lease);

        upstream.stop().await;
        // SSE and WebSocket sessions report their death: once the client has seen the stream
        // end, the pool never hands the session out (the acquire then fails to create a
        // replacement, the server being down); before that, the first call fails at once.
        match pool.acquire_with(over()).await {
            Err(PoolError::Create { .. }) => {}
            Err(other) => panic!("{kind}: {other}"),
            Ok(lease) => {
                let error = tokio::time::timeout(BOUND, lease.call_tool(echo("during")))
                    .await
                    .unwrap_or_else(|_| panic!("{kind}: a call on a dead session hung"))
                    .unwrap_err();
                assert!(is_transport_failure(&error), "{kind}: {error:?}");
                assert!(lease.is_broken(), "{kind}");
                // The rmcp service stops on its own task: give it the moment it needs, bounded.
                let closed = tokio::time::timeout(BOUND, async {
                    while !lease.peer().is_transport_closed() {
                        tokio::task::yield_now().await;
                    }
                })
                .await;
                assert!(
                    closed.is_ok(),
                    "{kind}: the session itself knows it is dead"
                );
            }
        }
        assert_eq!(pool.stats().servers[0].evictions, 1, "{kind}");

        upstream.restart().await.unwrap();
        let lease = pool.acquire_with(over()).await.unwrap();
        assert!(!lease.is_hit(), "{kind}");
        assert_ne!(lease.session_id(), dead, "{kind}");
        assert_eq!(
            text(&lease.call_tool(echo("after")).await.unwrap()),
            "after",
            "{kind}"
        );
    }
}
