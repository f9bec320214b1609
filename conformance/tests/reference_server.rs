//! The reference server (over streamable HTTP, SSE and WebSocket) and the duplex transport,
//! exercised with real rmcp clients.

use std::{sync::Arc, time::Duration};

use mcp_pool_conformance::{DuplexTransport, ReferenceServer, ServerOptions};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Endpoint, FailureKind, Transport, TransportError, TransportKind,
    default_client_config, is_transport_failure,
};
use rmcp::{
    ServiceError, ServiceExt as _,
    model::{CallToolRequestParams, ClientConfig},
    transport::{
        StreamableHttpClientTransport,
        common::client_side_sse::NeverRetry,
        streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError},
    },
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The bound on anything expected to finish: generous, so a slow machine does not fail a test,
/// and finite, so a hang fails it instead of stalling the suite.
const BOUND: Duration = Duration::from_secs(10);

/// How long a request must stay unanswered to count as held.
const HELD: Duration = Duration::from_millis(300);

/// A keep-alive HTTP client, sending `headers` on every request.
fn http_client(headers: &[(&'static str, &'static str)]) -> reqwest::Client {
    let mut default_headers = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        default_headers.insert(*name, reqwest::header::HeaderValue::from_static(value));
    }
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .default_headers(default_headers)
        .build()
        .unwrap()
}

/// Opens an MCP session on `server` over a keep-alive connection, without silent
/// re-initialization on HTTP 404.
async fn connect(server: &ReferenceServer) -> ClientSession {
    connect_with(server, http_client(&[])).await
}

async fn connect_with(server: &ReferenceServer, client: reqwest::Client) -> ClientSession {
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(server.url())
            .reinit_on_expired_session(false),
    );
    tokio::time::timeout(BOUND, ClientConfig::default().serve(transport))
        .await
        .expect("initialize timed out")
        .expect("initialize failed")
}

/// Calls `tool` and returns the text of its single content block.
async fn call(
    session: &ClientSession,
    tool: &'static str,
    args: Value,
) -> Result<String, ServiceError> {
    let Value::Object(args) = args else {
        panic!("tool arguments must be a JSON object");
    };
    let result = tokio::time::timeout(
        BOUND,
        session.call_tool(CallToolRequestParams::new(tool).with_arguments(args)),
    )
    .await
    .expect("the call neither answered nor failed")?;
    assert_eq!(result.content.len(), 1, "{result:?}");
    Ok(result.content[0]
        .as_text()
        .expect("text content")
        .text
        .clone())
}

/// Whether `error` is the streamable HTTP client's "session expired" (HTTP 404) error.
fn is_session_expired(error: &ServiceError) -> bool {
    let ServiceError::TransportSend(error) = error else {
        return false;
    };
    matches!(
        error
            .error
            .downcast_ref::<StreamableHttpError<reqwest::Error>>(),
        Some(StreamableHttpError::SessionExpired)
    )
}

/// The raw body of an `initialize` POST: the SSE stream carrying its result.
async fn initialize_body(server: &ReferenceServer) -> String {
    let initialize = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}
        }
    });
    let response = http_client(&[])
        .post(server.url())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::timeout(BOUND, response.text())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn echo_returns_its_message() {
    let server = ReferenceServer::start().await.unwrap();
    assert_eq!(
        server.url(),
        format!("http://127.0.0.1:{}/mcp", server.port())
    );
    let session = connect(&server).await;

    let info = session.peer_info().expect("initialized");
    assert_eq!(
        info.server_info.as_ref().expect("server info").name,
        mcp_pool_conformance::server::SERVER_NAME
    );
    assert_eq!(
        call(&session, "echo", json!({"message": "hello"}))
            .await
            .unwrap(),
        "hello"
    );

    let stats = server.stats();
    assert_eq!(stats.sessions_opened, 1);
    assert_eq!(stats.initializes, 1);
    assert_eq!(stats.tool_calls, 1);
    // initialize, notifications/initialized and tools/call at least.
    assert!(stats.http_requests >= 3, "{stats:?}");
}

#[tokio::test]
async fn counter_is_per_session() {
    let server = ReferenceServer::start().await.unwrap();
    let first = connect(&server).await;
    let second = connect(&server).await;

    for expected in ["1", "2", "3"] {
        assert_eq!(call(&first, "counter", json!({})).await.unwrap(), expected);
    }
    assert_eq!(call(&second, "counter", json!({})).await.unwrap(), "1");
    assert_eq!(call(&first, "counter", json!({})).await.unwrap(), "4");
    assert_eq!(call(&second, "counter", json!({})).await.unwrap(), "2");
    assert_eq!(server.tool_calls(), 6);
}

#[tokio::test]
async fn sleep_waits_then_answers() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;

    let started = tokio::time::Instant::now();
    assert_eq!(
        call(&session, "sleep", json!({"ms": 50})).await.unwrap(),
        "slept"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn fail_returns_a_json_rpc_error_and_keeps_the_session() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;

    let error = call(&session, "fail", json!({"message": "boom"}))
        .await
        .unwrap_err();
    let ServiceError::McpError(error) = error else {
        panic!("expected a JSON-RPC error, got {error:?}");
    };
    assert_eq!(error.message, "boom");
    assert!(!mcp_pool_traits::is_transport_failure(
        &ServiceError::McpError(error)
    ));

    let error = call(&session, "fail", json!({})).await.unwrap_err();
    assert!(matches!(error, ServiceError::McpError(_)), "{error:?}");

    assert_eq!(
        call(&session, "echo", json!({"message": "still here"}))
            .await
            .unwrap(),
        "still here"
    );
    assert_eq!(server.tool_calls(), 3);
}

#[tokio::test]
async fn sessions_opened_and_alive_are_exact() {
    let server = ReferenceServer::start().await.unwrap();
    let mut first = connect(&server).await;
    let second = connect(&server).await;
    let third = connect(&server).await;
    assert_eq!(server.sessions_opened(), 3);
    assert_eq!(server.sessions_alive(), 3);

    // An explicit close sends DELETE.
    first.close().await.unwrap();
    server.wait_sessions_alive(2, BOUND).await.unwrap();
    // Dropping a session closes it too.
    drop(second);
    server.wait_sessions_alive(1, BOUND).await.unwrap();
    third.cancel().await.unwrap();
    server.wait_sessions_alive(0, BOUND).await.unwrap();

    let stats = server.stats();
    assert_eq!(stats.sessions_opened, 3);
    assert_eq!(stats.initializes, 3);
    assert_eq!(stats.sessions_alive, 0);

    // The wait reports the counters it saw when it gives up.
    let timeout = server
        .wait_sessions_alive(1, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(timeout.last, stats);
}

#[tokio::test]
async fn stop_ends_sessions_and_fails_calls() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;
    // The keep-alive connection this call used stays open and idle until `stop`.
    assert_eq!(
        call(&session, "echo", json!({"message": "before"}))
            .await
            .unwrap(),
        "before"
    );
    assert!(server.is_running().await);

    server.stop().await;
    assert!(!server.is_running().await);
    assert_eq!(server.sessions_alive(), 0);

    let error = call(&session, "echo", json!({"message": "after"}))
        .await
        .unwrap_err();
    assert!(mcp_pool_traits::is_transport_failure(&error), "{error:?}");
    let refused = TcpStream::connect(server.addr()).await;
    assert!(refused.is_err(), "the listener is still open");

    // Stopping twice is harmless.
    server.stop().await;
}

#[tokio::test]
async fn stop_closes_idle_keep_alive_connections() {
    let server = ReferenceServer::start().await.unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /elsewhere HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0; 1024];
    while !response.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tokio::time::timeout(BOUND, stream.read(&mut buffer))
            .await
            .expect("no response")
            .unwrap();
        assert_ne!(read, 0, "closed before responding");
        response.extend_from_slice(&buffer[..read]);
    }
    assert!(response.starts_with(b"HTTP/1.1 404"), "{response:?}");
    // Only requests on /mcp count.
    assert_eq!(server.http_requests(), 0);

    // The connection is now idle and kept alive; stop must close it.
    server.stop().await;
    let read = tokio::time::timeout(BOUND, stream.read(&mut buffer))
        .await
        .expect("the idle connection is still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn stop_answers_held_requests() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;
    let requests = server.http_requests();
    server.set_hang(true);
    let call =
        tokio::spawn(async move { call(&session, "echo", json!({"message": "held"})).await });
    server
        .wait_until(|stats| stats.http_requests > requests, BOUND)
        .await
        .unwrap();

    tokio::time::timeout(BOUND, server.stop())
        .await
        .expect("stop hung");
    let result = tokio::time::timeout(BOUND, call)
        .await
        .expect("the held call hung")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert_eq!(server.sessions_alive(), 0);
}

/// Waits until the server has received a `tools/call` beyond the `before` it had.
async fn wait_tool_call(server: &ReferenceServer, before: u64) {
    server
        .wait_until(|stats| stats.tool_calls > before, BOUND)
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_fails_calls_in_flight() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;
    let before = server.tool_calls();
    let sleeping =
        tokio::spawn(async move { call(&session, "sleep", json!({"ms": 600_000})).await });
    wait_tool_call(&server, before).await;

    tokio::time::timeout(BOUND, server.stop())
        .await
        .expect("stop hung");
    assert_eq!(server.sessions_alive(), 0);
    // Without SSE priming events the client cannot resume the response stream: it fails the
    // call at once.
    let result = tokio::time::timeout(BOUND, sleeping)
        .await
        .expect("the call hung")
        .unwrap();
    assert!(
        matches!(result, Err(ServiceError::TransportClosed)),
        "{result:?}"
    );
}

#[tokio::test]
async fn priming_events_make_clients_resume_after_stop() {
    let retry = Duration::from_millis(100);
    let server = ReferenceServer::start_with(ServerOptions::default().with_sse_retry(Some(retry)))
        .await
        .unwrap();
    assert!(initialize_body(&server).await.contains("retry:"));
    // rmcp's default client retry policy retries forever, and the call never fails: bound it.
    let mut config = StreamableHttpClientTransportConfig::with_uri(server.url())
        .reinit_on_expired_session(false);
    config.retry_config = Arc::new(NeverRetry::default());
    let transport = StreamableHttpClientTransport::with_client(http_client(&[]), config);
    let session = ClientConfig::default().serve(transport).await.unwrap();
    let before = server.tool_calls();
    let sleeping =
        tokio::spawn(async move { call(&session, "sleep", json!({"ms": 600_000})).await });
    wait_tool_call(&server, before).await;

    let stopped = tokio::time::Instant::now();
    server.stop().await;
    let result = tokio::time::timeout(BOUND, sleeping)
        .await
        .expect("the call hung")
        .unwrap();
    assert!(
        matches!(result, Err(ServiceError::TransportClosed)),
        "{result:?}"
    );
    // The client waited the announced interval before trying to resume.
    assert!(stopped.elapsed() >= retry);
}

#[tokio::test]
async fn no_priming_events_by_default() {
    let server = ReferenceServer::start().await.unwrap();
    let body = initialize_body(&server).await;
    assert!(body.contains("\"result\""), "{body}");
    assert!(!body.contains("retry:"), "{body}");
}

#[tokio::test]
async fn idle_sessions_expire() {
    let options =
        ServerOptions::default().with_session_idle_timeout(Some(Duration::from_millis(200)));
    let server = ReferenceServer::start_with(options).await.unwrap();
    let session = connect(&server).await;
    assert_eq!(
        call(&session, "echo", json!({"message": "hi"}))
            .await
            .unwrap(),
        "hi"
    );

    server.wait_sessions_alive(0, BOUND).await.unwrap();
    let error = call(&session, "echo", json!({"message": "gone"}))
        .await
        .unwrap_err();
    assert!(is_session_expired(&error), "{error:?}");
    assert_eq!(server.sessions_opened(), 1);
}

#[tokio::test]
async fn restart_serves_the_same_port_with_fresh_sessions() {
    let server = ReferenceServer::start().await.unwrap();
    let port = server.port();
    let old = connect(&server).await;
    assert_eq!(call(&old, "counter", json!({})).await.unwrap(), "1");

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    assert!(server.is_running().await);
    assert_eq!(server.sessions_alive(), 0);

    let new = connect(&server).await;
    assert_eq!(call(&new, "counter", json!({})).await.unwrap(), "1");
    // The old session id is unknown to the restarted server: HTTP 404, an error with
    // re-initialization off.
    let error = call(&old, "counter", json!({})).await.unwrap_err();
    assert!(is_session_expired(&error), "{error:?}");

    // Counters carry over.
    assert_eq!(server.sessions_opened(), 2);
    assert_eq!(server.sessions_alive(), 1);

    // A stopped server restarts too.
    server.stop().await;
    server.restart().await.unwrap();
    let again = connect(&server).await;
    assert_eq!(
        call(&again, "echo", json!({"message": "back"}))
            .await
            .unwrap(),
        "back"
    );
}

#[tokio::test]
async fn expire_sessions_fails_old_sessions_only() {
    let server = ReferenceServer::start().await.unwrap();
    let first = connect(&server).await;
    let second = connect(&server).await;

    assert_eq!(server.expire_sessions().await, 2);
    assert_eq!(server.sessions_alive(), 0);
    for session in [&first, &second] {
        let error = call(session, "echo", json!({"message": "expired"}))
            .await
            .unwrap_err();
        assert!(is_session_expired(&error), "{error:?}");
    }

    // The server keeps serving new sessions.
    let fresh = connect(&server).await;
    assert_eq!(call(&fresh, "counter", json!({})).await.unwrap(), "1");
    assert_eq!(server.sessions_alive(), 1);
    assert_eq!(server.sessions_opened(), 3);
}

#[tokio::test]
async fn hang_holds_requests_until_switched_off() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;
    let before = server.stats();

    server.set_hang(true);
    assert!(server.is_hanging());
    let mut held =
        tokio::spawn(async move { call(&session, "echo", json!({"message": "late"})).await });
    // The request arrives: it is accepted, just not answered.
    server
        .wait_until(|stats| stats.http_requests > before.http_requests, BOUND)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(HELD, &mut held).await.is_err(),
        "the call was answered while the server hangs"
    );
    assert_eq!(server.tool_calls(), before.tool_calls);

    server.set_hang(false);
    let answer = tokio::time::timeout(BOUND, held)
        .await
        .expect("still held")
        .unwrap();
    assert_eq!(answer.unwrap(), "late");
    assert_eq!(server.tool_calls(), before.tool_calls + 1);
}

#[tokio::test]
async fn headers_are_recorded() {
    let server = ReferenceServer::start().await.unwrap();
    assert!(server.last_request_headers().is_empty());
    let session = connect_with(&server, http_client(&[("x-user-id", "alice")])).await;
    assert_eq!(
        call(&session, "echo", json!({"message": "hi"}))
            .await
            .unwrap(),
        "hi"
    );

    let on_initialize = server.initialize_header_names();
    assert!(on_initialize.contains("x-user-id"), "{on_initialize:?}");
    assert!(
        !on_initialize.contains("mcp-session-id"),
        "{on_initialize:?}"
    );
    // Later requests carry the session id the server issued.
    assert!(server.seen_header_names().contains("mcp-session-id"));
    assert_eq!(server.last_request_headers()["x-user-id"], "alice");
}

#[tokio::test]
async fn dropping_the_server_closes_the_listener() {
    let server = ReferenceServer::start().await.unwrap();
    let addr = server.addr();
    drop(server);
    // The accept task is aborted, and drops the listener, the next time the runtime runs it.
    let mut refused = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the listener outlived the server");
}

fn duplex_endpoint() -> Endpoint {
    Endpoint::new("http://duplex.invalid/mcp", TransportKind::StreamableHttp).unwrap()
}

async fn duplex_connect(
    transport: &DuplexTransport,
    timeout: Duration,
) -> Result<ClientSession, TransportError> {
    let endpoint = duplex_endpoint();
    let client = default_client_config();
    let request = ConnectRequest::new(&endpoint, &Default::default(), timeout, &client);
    transport.connect(request).await
}

#[tokio::test(start_paused = true)]
async fn duplex_transport_serves_and_counts() {
    let transport = DuplexTransport::new(TransportKind::WebSocket);
    assert_eq!(transport.kind(), TransportKind::WebSocket);

    let first = duplex_connect(&transport, BOUND).await.unwrap();
    let second = duplex_connect(&transport, BOUND).await.unwrap();
    assert_eq!(
        call(&first, "echo", json!({"message": "in-process"}))
            .await
            .unwrap(),
        "in-process"
    );
    assert_eq!(call(&first, "counter", json!({})).await.unwrap(), "1");
    assert_eq!(call(&first, "counter", json!({})).await.unwrap(), "2");
    assert_eq!(call(&second, "counter", json!({})).await.unwrap(), "1");
    // On the paused clock the sleep takes no real time; the virtual clock moves by 5 s.
    let started = tokio::time::Instant::now();
    assert_eq!(
        call(&first, "sleep", json!({"ms": 5_000})).await.unwrap(),
        "slept"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(matches!(
        call(&first, "fail", json!({})).await.unwrap_err(),
        ServiceError::McpError(_)
    ));

    let stats = transport.stats();
    assert_eq!(stats.sessions_opened, 2);
    assert_eq!(stats.sessions_alive, 2);
    assert_eq!(stats.initializes, 2);
    assert_eq!(stats.tool_calls, 6);
    assert_eq!(stats.http_requests, 0);

    drop(first);
    transport.wait_sessions_alive(1, BOUND).await.unwrap();
    // A clone shares the counters.
    let clone = transport.clone();
    second.cancel().await.unwrap();
    clone.wait_sessions_alive(0, BOUND).await.unwrap();
    assert_eq!(clone.sessions_opened(), 2);
}

#[tokio::test(start_paused = true)]
async fn duplex_transport_faults() {
    let transport = DuplexTransport::new(TransportKind::StreamableHttp);

    transport.set_fail_connects(true);
    let error = duplex_connect(&transport, BOUND).await.unwrap_err();
    assert!(matches!(error, TransportError::Connect { .. }), "{error:?}");
    assert_eq!(error.kind(), FailureKind::ConnectionRefused);
    assert!(error.counts_against_endpoint());
    assert_eq!(transport.sessions_opened(), 0);
    transport.set_fail_connects(false);

    // One caller's bad token: Unauthorized, which does not count against the endpoint.
    let required = http::HeaderValue::from_static("Bearer right");
    transport.set_required_authorization(Some(required.clone()));
    let error = duplex_connect(&transport, BOUND).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Unauthorized, "{error}");
    assert!(!error.counts_against_endpoint());
    assert_eq!(transport.sessions_opened(), 0);
    let endpoint = duplex_endpoint();
    let client = default_client_config();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, required);
    let authorized = transport
        .connect(ConnectRequest::new(&endpoint, &headers, BOUND, &client))
        .await
        .unwrap();
    drop(authorized);
    transport.set_required_authorization(None);
    transport.wait_sessions_alive(0, BOUND).await.unwrap();

    // A hanging upstream leaves initialize unanswered: the connect times out.
    transport.set_hang(true);
    let timeout = Duration::from_secs(5);
    let error = duplex_connect(&transport, timeout).await.unwrap_err();
    assert!(
        matches!(error, TransportError::Timeout { timeout: t, .. } if t == timeout),
        "{error:?}"
    );
    assert!(error.counts_against_endpoint());
    // The abandoned session ends with its client side.
    transport.wait_sessions_alive(0, BOUND).await.unwrap();

    // Calls on an open session are held too, and answered once the switch is off.
    transport.set_hang(false);
    let session = duplex_connect(&transport, BOUND).await.unwrap();
    transport.set_hang(true);
    let mut held =
        tokio::spawn(async move { call(&session, "echo", json!({"message": "late"})).await });
    assert!(tokio::time::timeout(HELD, &mut held).await.is_err());
    transport.set_hang(false);
    assert_eq!(held.await.unwrap().unwrap(), "late");
}

/// The client transport of `kind`.
fn transport_for(kind: TransportKind) -> Arc<dyn Transport> {
    match kind {
        TransportKind::StreamableHttp => {
            Arc::new(mcp_pool_transports::StreamableHttp::new().unwrap())
        }
        TransportKind::Sse => Arc::new(mcp_pool_transports::Sse::new().unwrap()),
        TransportKind::WebSocket => Arc::new(mcp_pool_transports::WebSocket::new()),
    }
}

/// Opens a session on `server` over `kind`.
async fn connect_over(server: &ReferenceServer, kind: TransportKind) -> ClientSession {
    mcp_pool_conformance::transport::connect_to(&*transport_for(kind), server).await
}

#[tokio::test]
async fn every_transport_is_served_on_one_port() {
    let server = ReferenceServer::start().await.unwrap();
    let port = server.port();
    assert_eq!(
        server.url_for(TransportKind::StreamableHttp),
        format!("http://127.0.0.1:{port}/mcp")
    );
    assert_eq!(
        server.url_for(TransportKind::Sse),
        format!("http://127.0.0.1:{port}/sse")
    );
    assert_eq!(
        server.url_for(TransportKind::WebSocket),
        format!("ws://127.0.0.1:{port}/ws")
    );
    for kind in TransportKind::ALL {
        let endpoint = server.endpoint_for(kind);
        assert_eq!((endpoint.transport, endpoint.weight), (kind, 1));
    }

    let mut sessions = Vec::new();
    for kind in TransportKind::ALL {
        let session = connect_over(&server, kind).await;
        assert_eq!(
            call(&session, "counter", json!({})).await.unwrap(),
            "1",
            "{kind}"
        );
        sessions.push(session);
    }
    let stats = server.stats();
    assert_eq!(stats.sessions_opened, 3, "{stats:?}");
    assert_eq!(stats.sessions_alive, 3, "{stats:?}");
    assert_eq!(stats.initializes, 3, "{stats:?}");
    assert_eq!(stats.tool_calls, 3, "{stats:?}");
    // Streamable HTTP: initialize, initialized, call (at least 3); SSE: the stream GET plus a
    // POST per message (4); WebSocket: the upgrade only (1).
    let at_least = 3 + 4 + 1;
    assert!(stats.http_requests >= at_least, "{stats:?}");

    drop(sessions);
    server.wait_sessions_alive(0, BOUND).await.unwrap();
}

#[tokio::test]
async fn expire_and_restart_end_sse_and_websocket_sessions_too() {
    let server = ReferenceServer::start().await.unwrap();
    let sse = connect_over(&server, TransportKind::Sse).await;
    let ws = connect_over(&server, TransportKind::WebSocket).await;
    assert_eq!(server.expire_sessions().await, 2);
    server.wait_sessions_alive(0, BOUND).await.unwrap();
    for session in [&sse, &ws] {
        let error = call(session, "echo", json!({"message": "x"}))
            .await
            .unwrap_err();
        assert!(is_transport_failure(&error), "{error:?}");
    }
    // Still serving: new sessions work, and the stop + restart cycle ends them as well.
    let sse = connect_over(&server, TransportKind::Sse).await;
    let ws = connect_over(&server, TransportKind::WebSocket).await;
    server.restart().await.unwrap();
    assert_eq!(server.sessions_alive(), 0, "a restart ends every session");
    for session in [&sse, &ws] {
        let error = call(session, "echo", json!({"message": "x"}))
            .await
            .unwrap_err();
        assert!(is_transport_failure(&error), "{error:?}");
    }
    for kind in [TransportKind::Sse, TransportKind::WebSocket] {
        let session = connect_over(&server, kind).await;
        assert_eq!(
            call(&session, "counter", json!({})).await.unwrap(),
            "1",
            "{kind}"
        );
    }
    assert_eq!(server.sessions_opened(), 6);
}

#[tokio::test]
async fn hang_holds_connects_and_calls_over_every_transport() {
    let server = ReferenceServer::start().await.unwrap();
    let mut sessions = Vec::new();
    for kind in TransportKind::ALL {
        sessions.push((kind, connect_over(&server, kind).await));
    }
    let before = server.tool_calls();
    server.set_hang(true);
    let mut held: Vec<_> = sessions
        .into_iter()
        .map(|(kind, session)| {
            tokio::spawn(async move {
                (
                    kind,
                    call(&session, "echo", json!({"message": "late"})).await,
                )
            })
        })
        .collect();
    for call in &mut held {
        assert!(
            tokio::time::timeout(HELD, call).await.is_err(),
            "a call was answered while the server hangs"
        );
    }
    server.set_hang(false);
    for call in held {
        let (kind, answer) = tokio::time::timeout(BOUND, call)
            .await
            .expect("still held")
            .unwrap();
        assert_eq!(answer.unwrap(), "late", "{kind}");
    }
    assert_eq!(server.tool_calls(), before + 3);
}
