//! What a lease carries besides a tool call: per-call headers and rotated credentials,
//! deadlines with `notifications/cancelled` and a probe before reuse, the one safe retry. Real rmcp sessions: the reference server over
//! loopback HTTP, or in process on tokio's paused clock.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use http::{HeaderMap, HeaderValue};
use mcp_pool::{
    AcquireRequest, CallOptions, IdentityConfig, IdentityExtractor, Pool, PoolConfig, PoolError,
    Principal, ServerConfig, StrategyKind, TransportKind,
    rmcp::{
        ServiceError,
        model::{CallToolRequest, ClientRequest, ServerResult},
    },
};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer, ServerOptions};

/// The identity of a request is its `x-user` header: tokens rotate, the user stays (what a JWT
/// `sub` extractor does).
#[derive(Debug)]
struct UserHeader;

impl IdentityExtractor for UserHeader {
    fn extract(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }
}

fn request_headers(token: &str, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert("x-user", HeaderValue::from_static("alice"));
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert("x-request-id", HeaderValue::from_str(request_id).unwrap());
    h
}

fn echo_call(message: &str) -> ClientRequest {
    ClientRequest::CallToolRequest(CallToolRequest::new(echo(message)))
}

fn echoed(result: ServerResult) -> String {
    match result {
        ServerResult::CallToolResult(result) => text(&result),
        other => panic!("not a tool result: {other:?}"),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Trace headers travel with each call; a token rotated downstream replaces the session's
/// own on the next call (the session stays pooled) and on the `DELETE` at close.
async fn rotated_token_reaches_the_pooled_session(transport: TransportKind) {
    let server =
        ReferenceServer::start_with(ServerOptions::default().with_bearer_token(Some("t1")))
            .await
            .unwrap();
    let id = server_id("reference");
    let pool = Pool::builder()
        .identity(IdentityConfig::default().with_extractor(Arc::new(UserHeader)))
        .server(ServerConfig::new(id.clone(), server.endpoint_for(transport)).pool(pooled(2)))
        .build()
        .unwrap();

    let first = request_headers("t1", "req-1");
    let reply = pool
        .call(
            AcquireRequest::new(&id).headers(&first),
            echo_call("one"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(echoed(reply), "one");
    let seen = server.last_request_headers();
    assert_eq!(header(&seen, "x-request-id"), Some("req-1"));
    assert!(header(&seen, "traceparent").is_some_and(|v| v.starts_with("00-4bf9")));

    // The upstream revokes t1; the downstream client now presents t2.
    server.set_bearer_token(Some("t2"));
    let second = request_headers("t2", "req-2");
    let reply = pool
        .call(
            AcquireRequest::new(&id).headers(&second),
            echo_call("two"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(echoed(reply), "two");
    let seen = server.last_request_headers();
    assert_eq!(header(&seen, "x-request-id"), Some("req-2"));
    assert_eq!(header(&seen, "authorization"), Some("Bearer t2"));
    assert_eq!(
        server.sessions_opened(),
        1,
        "the pooled session served both calls"
    );

    pool.close().await;
    if transport == TransportKind::StreamableHttp {
        // The DELETE went out with the current token and was accepted.
        let seen = server.last_request_headers();
        assert_eq!(header(&seen, "authorization"), Some("Bearer t2"));
        assert!(
            header(&seen, "x-request-id").is_none(),
            "trace headers are per call"
        );
        server
            .wait_sessions_alive(0, Duration::from_secs(5))
            .await
            .expect("the DELETE closed the upstream session");
    }
}

#[tokio::test]
async fn rotated_token_reaches_a_pooled_streamable_http_session() {
    rotated_token_reaches_the_pooled_session(TransportKind::StreamableHttp).await;
}

#[tokio::test]
async fn rotated_token_reaches_a_pooled_sse_session() {
    rotated_token_reaches_the_pooled_session(TransportKind::Sse).await;
}

/// Credentials of another identity than the lease's never travel on its session: the upstream
/// refuses the call (401), the session is evicted and the call retried once on a session
/// created with the current request's credentials.
#[tokio::test]
async fn a_401_on_a_pooled_session_is_retried_once_with_the_current_credentials() {
    let server =
        ReferenceServer::start_with(ServerOptions::default().with_bearer_token(Some("t1")))
            .await
            .unwrap();
    let (pool, id) = http_pool(&server, pooled(2));
    // An explicit principal: the key is the user's, whatever the headers hash to.
    let alice = Principal::user("alice");
    let first = request_headers("t1", "req-1");
    pool.call(
        AcquireRequest::new(&id).principal(alice).headers(&first),
        echo_call("one"),
        CallOptions::new(),
    )
    .await
    .unwrap();

    server.set_bearer_token(Some("t2"));
    let second = request_headers("t2", "req-2");
    let reply = pool
        .call(
            AcquireRequest::new(&id).principal(alice).headers(&second),
            echo_call("two"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(echoed(reply), "two");
    assert_eq!(
        server.sessions_opened(),
        2,
        "the refused session was replaced"
    );
    let stats = pool.stats();
    let server_stats = &stats.servers[0];
    assert_eq!(server_stats.evictions, 1, "{server_stats:?}");
    assert_eq!(server_stats.call_retries, 1, "{server_stats:?}");
}

/// A session the server expired (HTTP 404) never ran the call: a non-sticky server retries it
/// on a new session, invisibly.
#[tokio::test]
async fn an_expired_session_is_retried_invisibly_on_a_stateless_server() {
    let server = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&server, pooled(2));
    let request = AcquireRequest::new(&id);
    pool.call(request, echo_call("one"), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(server.expire_sessions().await, 1);
    let reply = pool
        .call(request, echo_call("two"), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(echoed(reply), "two");
    assert_eq!(server.sessions_opened(), 2);
    assert_eq!(server.tool_calls(), 2, "the call ran once");
    assert_eq!(pool.stats().servers[0].call_retries, 1);
}

/// On a sticky server the expired session held the conversation's state: the caller gets the
/// error, and the conversation's next lease says it was rebound.
#[tokio::test]
async fn an_expired_sticky_session_is_reported_not_retried() {
    let server = ReferenceServer::start().await.unwrap();
    let config = PoolConfig {
        strategy: StrategyKind::Sticky,
        ..pooled(2)
    };
    let (pool, id) = http_pool(&server, config);
    let request = AcquireRequest::new(&id).downstream_session("conversation-1");
    pool.call(request, echo_call("one"), CallOptions::new())
        .await
        .unwrap();
    server.expire_sessions().await;
    let error = pool
        .call(request, echo_call("two"), CallOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            PoolError::Call { error, .. } if matches!(**error, ServiceError::TransportSend(_))
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("server reference: the call at http://127.0.0.1:")
            && !message.contains("Transport<")
            && std::error::Error::source(&error).is_none(),
        "{message}"
    );
    println!("expired sticky session: {message}");
    assert_eq!(server.tool_calls(), 1);
    let lease = pool.acquire_with(request).await.unwrap();
    assert!(lease.is_rebound());
}

/// A frozen server: the call fails at its deadline, the server is told
/// (`notifications/cancelled`), and the session, which does not answer the probe within the
/// grace period, is evicted instead of being handed to the next caller.
#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_on_a_frozen_server_evicts_the_session() {
    let (pool, id, transport) = duplex_pool(
        pooled(1),
        Pool::builder().cancel_grace(Duration::from_secs(1)),
    );
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let frozen = lease.session_id();
    let upstream = DuplexTransport::session_of(lease.peer()).unwrap();
    assert!(transport.hang_session(upstream, true));
    let started = tokio::time::Instant::now();
    let error = lease
        .call_tool_with(
            echo("x"),
            CallOptions::new().timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    drop(lease);

    // The next caller waits for the probe (1 s grace) and gets a new session.
    let next = pool.acquire(&id, user).await.unwrap();
    assert_ne!(next.session_id(), frozen);
    assert!(!next.is_hit());
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "served when the probe gave up"
    );
    let reply = next.call_tool(echo("y")).await.unwrap();
    assert_eq!(text(&reply), "y");
}

/// A slow call past its deadline on a live server: the probe answers, and the session serves
/// the next caller.
#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_on_a_live_server_keeps_the_session() {
    let (pool, id, transport) = duplex_pool(pooled(1), Pool::builder());
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let session = lease.session_id();
    let sleep = sleep_for(60_000);
    let error = lease
        .call_tool_with(
            sleep,
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
    drop(lease);
    let next = pool.acquire(&id, user).await.unwrap();
    assert_eq!(next.session_id(), session, "the probe cleared the session");
    assert_eq!(
        transport.stats().calls_cancelled,
        1,
        "the server was told to stop the call"
    );
    assert_eq!(text(&next.call_tool(echo("z")).await.unwrap()), "z");
}

/// The server's `call_timeout` bounds calls that name no deadline.
#[tokio::test(start_paused = true)]
async fn the_servers_call_timeout_bounds_every_call() {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    let id = server_id("duplex");
    let endpoint =
        mcp_pool::Endpoint::new("http://duplex.invalid/mcp", TransportKind::StreamableHttp)
            .unwrap();
    let pool = Pool::builder()
        .transport(transport.clone())
        .server(
            ServerConfig::new(id.clone(), endpoint)
                .pool(pooled(1))
                .call_timeout(Duration::from_secs(7)),
        )
        .build()
        .unwrap();
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let upstream = DuplexTransport::session_of(lease.peer()).unwrap();
    transport.hang_session(upstream, true);
    let started = tokio::time::Instant::now();
    let error = lease.call_tool(echo("x")).await.unwrap_err();
    assert!(
        matches!(error, ServiceError::Timeout { timeout } if timeout == Duration::from_secs(7))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(7));
}

/// A caller that drops its call future before the reply leaves the session in doubt: nobody
/// gets it until the probe shows the server answers.
#[tokio::test(start_paused = true)]
async fn a_dropped_call_puts_the_session_in_doubt_until_probed() {
    let (pool, id, transport) = duplex_pool(
        pooled(1),
        Pool::builder().cancel_grace(Duration::from_secs(1)),
    );
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let session = lease.session_id();
    let upstream = DuplexTransport::session_of(lease.peer()).unwrap();
    transport.hang_session(upstream, true);
    let call = lease.call_tool(echo("x"));
    // The caller gives up after 300 ms.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );
    drop(lease);
    // The server thaws during the probe: the probe's ping is answered, the session stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    transport.hang_session(upstream, false);
    let next = pool.acquire(&id, user).await.unwrap();
    assert_eq!(next.session_id(), session);
    assert_eq!(text(&next.call_tool(echo("y")).await.unwrap()), "y");
}

/// Over streamable HTTP: a call past its deadline, and a call whose caller gave up, are both
/// cancelled upstream (`notifications/cancelled` with the call's request id).
#[tokio::test]
async fn abandoned_calls_are_cancelled_upstream_over_streamable_http() {
    let server = ReferenceServer::start().await.unwrap();
    // One session: the next acquire waits for the probe instead of creating another.
    let (pool, id) = http_pool(&server, pooled(1));
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let error = lease
        .call_tool_with(
            sleep_for(60_000),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
    server
        .wait_until(|s| s.calls_cancelled == 1, Duration::from_secs(10))
        .await
        .expect("the timed-out call was cancelled upstream");

    let call = lease.call_tool(sleep_for(60_000));
    let before = server.tool_calls();
    tokio::select! {
        _ = call => panic!("a 60 s sleep answered"),
        stats = server.wait_until(|s| s.tool_calls > before, Duration::from_secs(10)) => {
            stats.expect("the call reached the server");
        }
    }
    // The call future is gone: the server is told.
    server
        .wait_until(|s| s.calls_cancelled == 2, Duration::from_secs(10))
        .await
        .expect("the dropped call was cancelled upstream");
    drop(lease);
    // The probe finds the server answering: the session serves the next caller.
    let next = pool.acquire(&id, user).await.unwrap();
    assert_eq!(text(&next.call_tool(echo("after")).await.unwrap()), "after");
    assert_eq!(server.sessions_opened(), 1);
}

/// No URL password and no per-call credential reaches what a failed call prints: the error,
/// its `Debug` and source chain, the lease's and the options' `Debug`, or the stats.
#[tokio::test]
async fn a_failed_call_prints_no_secret() {
    const PASSWORD: &str = "pw-s3cret";
    const TOKEN: &str = "t0ken-s3cret";
    let server = ReferenceServer::start().await.unwrap();
    let id = server_id("reference");
    let url = format!("http://alice:{PASSWORD}@{}/mcp", server.addr());
    let config = PoolConfig {
        strategy: StrategyKind::Sticky,
        ..pooled(1)
    };
    let pool = Pool::builder()
        .server(
            ServerConfig::new(
                id.clone(),
                mcp_pool::Endpoint::new(url.as_str(), TransportKind::StreamableHttp).unwrap(),
            )
            .pool(config),
        )
        .build()
        .unwrap();
    let mut headers = request_headers(TOKEN, "req-1");
    headers.insert("cookie", HeaderValue::from_static("sid=c00kie-s3cret"));
    let request = AcquireRequest::new(&id)
        .downstream_session("conversation")
        .headers(&headers);
    pool.call(request, echo_call("one"), CallOptions::new())
        .await
        .unwrap();
    let lease = pool.acquire_with(request).await.unwrap();
    server.stop().await;
    let options = CallOptions::new().headers(headers.clone());
    let mut printed = format!("{lease:?} {options:?}");
    drop(lease);
    // A sticky server: the refused call is reported, not retried.
    let error = pool
        .call(request, echo_call("two"), options)
        .await
        .unwrap_err();
    printed += &format!("{error} | {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        printed += &format!(" | {e} | {e:?}");
        source = e.source();
    }
    printed += &serde_json::to_string(&pool.stats()).unwrap();
    assert!(matches!(error, PoolError::Call { .. }), "{printed}");
    for secret in [PASSWORD, TOKEN, "c00kie-s3cret"] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    assert!(
        printed.contains("***@"),
        "the URL is shown redacted: {printed}"
    );
}
