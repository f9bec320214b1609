//! Reuse and isolation against the reference server over loopback.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::*;
use mcp_pool::{AcquireRequest, Endpoint, Pool, Principal, ServerConfig, TransportKind};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};

#[tokio::test]
async fn release_then_acquire_is_a_hit_on_the_same_session() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let alice = Principal::user("alice");

    let first = pool.acquire(&id, alice).await.unwrap();
    assert!(!first.is_hit());
    let session = first.session_id();
    assert_eq!(text(&first.call_tool(counter()).await.unwrap()), "1");
    drop(first);

    let second = pool.acquire(&id, alice).await.unwrap();
    assert!(second.is_hit());
    assert_eq!(second.session_id(), session);
    assert_eq!(
        text(&second.call_tool(counter()).await.unwrap()),
        "2",
        "server state continues"
    );
    drop(second);

    assert_eq!(upstream.sessions_opened(), 1);
    let stats = pool.stats();
    assert_eq!((stats.servers[0].hits, stats.servers[0].misses), (1, 1));
}

#[tokio::test]
async fn two_principals_never_share_a_session() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let (alice, bob) = (Principal::user("alice"), Principal::user("bob"));

    let mut alice_sessions = HashSet::new();
    let mut bob_sessions = HashSet::new();
    for _ in 0..5 {
        let a = pool.acquire(&id, alice).await.unwrap();
        let b = pool.acquire(&id, bob).await.unwrap();
        assert_eq!(a.key().principal(), alice);
        assert_eq!(b.key().principal(), bob);
        alice_sessions.insert(a.session_id());
        bob_sessions.insert(b.session_id());
        a.call_tool(counter()).await.unwrap();
    }
    assert!(alice_sessions.is_disjoint(&bob_sessions));
    let b = pool.acquire(&id, bob).await.unwrap();
    assert_eq!(
        text(&b.call_tool(counter()).await.unwrap()),
        "1",
        "bob never saw alice's counter"
    );
    assert_eq!(upstream.sessions_opened(), 2);
}

#[tokio::test]
async fn identity_headers_make_keys_and_are_forwarded_but_internal_headers_are_not() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let headers = |token: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h.insert("x-mcp-session-id", "downstream-1".parse().unwrap());
        h.insert("mcp-session-id", "downstream-2".parse().unwrap());
        h
    };
    let (h1, h2) = (headers("one"), headers("two"));
    let a = pool
        .acquire_with(AcquireRequest::new(&id).headers(&h1))
        .await
        .unwrap();
    let b = pool
        .acquire_with(AcquireRequest::new(&id).headers(&h2))
        .await
        .unwrap();
    assert_ne!(a.key(), b.key(), "different tokens are different keys");
    assert_ne!(a.session_id(), b.session_id());
    b.call_tool(echo("hi")).await.unwrap();

    let names = upstream.initialize_header_names();
    assert!(names.contains("authorization"), "{names:?}");
    assert!(!names.contains("x-mcp-session-id"), "{names:?}");
    assert!(!names.contains("mcp-session-id"), "{names:?}");
    assert_eq!(
        upstream.last_request_headers()["authorization"],
        "Bearer two"
    );
    assert!(!format!("{:?}", pool.stats()).contains("Bearer"));
}

#[tokio::test]
async fn the_same_url_over_two_transports_is_two_keys_and_two_sessions() {
    let upstream = ReferenceServer::start().await.unwrap();
    // The second transport kind is served in process: what matters is that the key differs.
    let sse = Arc::new(DuplexTransport::new(TransportKind::Sse));
    let id = server_id("reference");
    let same_url_over_sse = Endpoint::new(upstream.url(), TransportKind::Sse).unwrap();
    let pool = Pool::builder()
        .transport(sse.clone())
        .server(
            ServerConfig::new(id.clone(), upstream.endpoint())
                .endpoint(same_url_over_sse)
                .pool(pooled(4)),
        )
        .build()
        .unwrap();
    let alice = Principal::user("alice");
    let http = pool.acquire(&id, alice).await.unwrap();
    let over_sse = pool
        .acquire_with(
            AcquireRequest::new(&id)
                .principal(alice)
                .transport(TransportKind::Sse),
        )
        .await
        .unwrap();
    assert_eq!(http.key().transport, TransportKind::StreamableHttp);
    assert_eq!(over_sse.key().transport, TransportKind::Sse);
    assert_ne!(http.session_id(), over_sse.session_id());
    assert_eq!(upstream.sessions_opened(), 1);
    assert_eq!(sse.sessions_opened(), 1);
    assert_eq!(pool.stats().keys, 2);
    drop((http, over_sse));
    pool.close().await;
    upstream
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await
        .unwrap();
}

/// Only the identity headers and the allow-listed ones reach the upstream, and each of them is
/// part of the key: a header that is not forwarded does not split keys.
#[tokio::test]
async fn only_headers_in_the_key_are_forwarded_upstream() {
    let upstream = ReferenceServer::start().await.unwrap();
    let identity = mcp_pool::IdentityConfig::default()
        .with_forwarded_headers([http::HeaderName::from_static("x-region")]);
    let (pool, id) = http_pool_with(&upstream, warm(2), Pool::builder().identity(identity));
    let headers = |token: &str, region: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer t0ken".parse().unwrap());
        h.insert("x-auth-token", token.parse().unwrap());
        h.insert("x-region", region.parse().unwrap());
        h.insert("last-event-id", "42".parse().unwrap());
        h
    };
    let first = headers("creds-of-alice", "eu");
    let lease = pool
        .acquire_with(AcquireRequest::new(&id).headers(&first))
        .await
        .unwrap();
    let seen = upstream.last_request_headers();
    assert_eq!(seen.get("authorization").unwrap(), "Bearer t0ken");
    assert_eq!(seen.get("x-region").unwrap(), "eu");
    assert!(
        seen.get("x-auth-token").is_none(),
        "not in the key: not forwarded"
    );
    assert!(seen.get("last-event-id").is_none());
    let first_key = lease.key().clone();
    drop(lease);
    let other_token = headers("creds-of-bob", "eu");
    let same = pool
        .acquire_with(AcquireRequest::new(&id).headers(&other_token))
        .await
        .unwrap();
    assert_eq!(
        same.key(),
        &first_key,
        "a header that is not forwarded does not split keys"
    );
    let other_region = headers("creds-of-alice", "us");
    let other = pool
        .acquire_with(AcquireRequest::new(&id).headers(&other_region))
        .await
        .unwrap();
    assert_ne!(
        other.key(),
        &first_key,
        "a forwarded header is part of the key"
    );
}
