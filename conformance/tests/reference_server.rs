//! The reference server (over streamable HTTP, SSE and WebSocket) and the duplex transport,
//! exercised with real rmcp clients.

use std::{sync::Arc, time::Duration};

use mcp_pool_conformance::{
    DuplexTransport, GREET_PROMPT, GREETING_RESOURCE, GREETING_TEXT, ReferenceServer, ServerOptions,
};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Endpoint, FailureKind, Transport, TransportError, TransportKind,
    default_client_config, is_transport_failure,
};
use rmcp::{
    ServiceError,
    model::{
        CallToolRequestParams, ErrorCode, GetPromptRequestParams, ReadResourceRequestParams,
        ResourceContents,
    },
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

/// The pool's session handler with its default client config.
fn handler() -> mcp_pool_traits::SessionHandler {
    mcp_pool_traits::SessionHandler::new(default_client_config(), None)
}

async fn connect_with(server: &ReferenceServer, client: reqwest::Client) -> ClientSession {
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(server.url())
            .reinit_on_expired_session(false),
    );
    tokio::time::timeout(BOUND, handler().serve(transport))
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
async fn one_resource_and_one_prompt_are_listed_and_read() {
    let server = ReferenceServer::start().await.unwrap();
    let session = connect(&server).await;

    let resources = session.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, [GREETING_RESOURCE]);
    let read = session
        .read_resource(ReadResourceRequestParams::new(GREETING_RESOURCE))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, uri, .. } = &read.contents[0] else {
        panic!("expected a text content: {read:?}");
    };
    assert_eq!(
        (text.as_str(), uri.as_str()),
        (GREETING_TEXT, GREETING_RESOURCE)
    );
    let error = session
        .read_resource(ReadResourceRequestParams::new("ref://nope"))
        .await
        .unwrap_err();
    let ServiceError::McpError(error) = error else {
        panic!("expected a JSON-RPC error, got {error:?}");
    };
    assert_eq!(error.code, ErrorCode::RESOURCE_NOT_FOUND);
    assert!(error.message.contains("ref://nope"), "{error:?}");

    let prompts = session.list_all_prompts().await.unwrap();
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [GREET_PROMPT]);
    let arguments = json!({"name": "Ada"}).as_object().unwrap().clone();
    let prompt = session
        .get_prompt(GetPromptRequestParams::new(GREET_PROMPT).with_arguments(arguments))
        .await
        .unwrap();
    assert_eq!(prompt.messages.len(), 1);
    assert_eq!(
        prompt.messages[0].content.as_text().unwrap().text,
        "Hello, Ada!"
    );
    let error = session
        .get_prompt(GetPromptRequestParams::new(GREET_PROMPT))
        .await
        .unwrap_err();
    let ServiceError::McpError(error) = error else {
        panic!("expected a JSON-RPC error, got {error:?}");
    };
    assert_eq!(error.code, ErrorCode::INVALID_PARAMS);
    assert!(error.message.contains("`name`"), "{error:?}");
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
    let session = handler().serve(transport).await.unwrap();
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
    let request = ConnectRequest::new(&endpoint, &Default::default(), timeout, handler());
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
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, required);
    let authorized = transport
        .connect(ConnectRequest::new(&endpoint, &headers, BOUND, handler()))
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
        other => unreachable!("no network transport {other}"),
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

/// The tools that make the reference server talk to its client besides replying (`progress`,
/// `log`, `notify`, `sample`, `elicit`, `roots`), seen by a plain rmcp client of our own that
/// records what it receives, over streamable HTTP (real clock) and an in-process duplex pipe
/// (paused clock).
mod exchange {
    #![expect(
        deprecated,
        reason = "logging, sampling and roots are MCP 2025-11-25 features under test"
    )]

    use std::collections::BTreeMap;

    use mcp_pool_conformance::{
        ReferenceHandler, ReferenceServer,
        server::{LOGGER, MAX_PROGRESS_STEPS, SAMPLE_MAX_TOKENS, UPDATED_RESOURCE},
    };
    use rmcp::{
        ClientHandler, ErrorData as McpError, RoleClient, ServiceError, ServiceExt as _,
        model::{
            CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities,
            ClientConfig, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
            ElicitRequestParams, ElicitResult, ElicitationAction, Implementation, ListRootsResult,
            LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam,
            ProgressToken, Root, SamplingMessage, ServerResult,
        },
        service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService},
        transport::{
            StreamableHttpClientTransport,
            streamable_http_client::StreamableHttpClientTransportConfig,
        },
    };
    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
        sync::mpsc,
        time::Instant,
    };

    use super::{BOUND, http_client};

    /// What the test client received from the server besides replies, in arrival order.
    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Progress(ProgressNotificationParam),
        Log(LoggingMessageNotificationParam),
        ToolsChanged,
        ResourcesChanged,
        PromptsChanged,
        ResourceUpdated(String),
        Sampling(CreateMessageRequestParams),
        Elicitation(ElicitRequestParams),
        Roots,
    }

    /// The text the test client's "model" answers a sampling request with.
    const SAMPLED: &str = "a reply from the client";

    /// An rmcp client that records every notification and request from the server, and
    /// answers sampling, elicitation and roots requests — or refuses them with a JSON-RPC
    /// error carrying `refuse`.
    struct Recorder {
        events: mpsc::UnboundedSender<Event>,
        refuse: Option<&'static str>,
    }

    impl Recorder {
        fn record(&self, event: Event) {
            // The receiver lives as long as the test that reads it.
            let _ = self.events.send(event);
        }

        fn refusal(&self) -> Result<(), McpError> {
            match self.refuse {
                Some(message) => Err(McpError::internal_error(message, None)),
                None => Ok(()),
            }
        }
    }

    impl ClientHandler for Recorder {
        fn get_info(&self) -> ClientConfig {
            ClientConfig::new(
                ClientCapabilities::builder()
                    .enable_roots()
                    .enable_sampling()
                    .enable_elicitation()
                    .build(),
                Implementation::new("recorder", "0"),
            )
        }

        async fn create_message(
            &self,
            params: CreateMessageRequestParams,
            _context: RequestContext<RoleClient>,
        ) -> Result<CreateMessageResult, McpError> {
            self.record(Event::Sampling(params));
            self.refusal()?;
            Ok(CreateMessageResult::new(
                SamplingMessage::assistant_text(SAMPLED),
                "test-model".to_owned(),
            ))
        }

        async fn create_elicitation(
            &self,
            request: ElicitRequestParams,
            _context: RequestContext<RoleClient>,
        ) -> Result<ElicitResult, McpError> {
            self.record(Event::Elicitation(request));
            self.refusal()?;
            Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"answer": "yes"})))
        }

        async fn list_roots(
            &self,
            _context: RequestContext<RoleClient>,
        ) -> Result<ListRootsResult, McpError> {
            self.record(Event::Roots);
            self.refusal()?;
            Ok(ListRootsResult::new(vec![
                Root::new("file:///work/a"),
                Root::new("file:///work/b").with_name("b"),
            ]))
        }

        async fn on_progress(
            &self,
            params: ProgressNotificationParam,
            _context: NotificationContext<RoleClient>,
        ) {
            self.record(Event::Progress(params));
        }

        async fn on_logging_message(
            &self,
            params: LoggingMessageNotificationParam,
            _context: NotificationContext<RoleClient>,
        ) {
            self.record(Event::Log(params));
        }

        async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
            self.record(Event::ToolsChanged);
        }

        async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
            self.record(Event::ResourcesChanged);
        }

        async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
            self.record(Event::PromptsChanged);
        }

        async fn on_resource_updated(
            &self,
            params: rmcp::model::ResourceUpdatedNotificationParam,
            _context: NotificationContext<RoleClient>,
        ) {
            self.record(Event::ResourceUpdated(params.uri));
        }
    }

    type Session = RunningService<RoleClient, Recorder>;

    /// A session with the recorder on one side and the reference server on the other, and
    /// what the recorder receives. Holds the server, when there is one, as long as the session.
    struct Peer {
        session: Session,
        events: mpsc::UnboundedReceiver<Event>,
        _server: Option<ReferenceServer>,
    }

    /// How a test reaches the reference server.
    #[derive(Debug, Clone, Copy)]
    enum Via {
        /// A fresh [`ReferenceServer`] over streamable HTTP.
        Http,
        /// A [`ReferenceHandler`] on the other end of a `tokio::io::duplex` pipe.
        Duplex,
    }

    async fn open(via: Via, refuse: Option<&'static str>) -> Peer {
        let (sender, events) = mpsc::unbounded_channel();
        let recorder = Recorder {
            events: sender,
            refuse,
        };
        let (session, server) = match via {
            Via::Http => {
                let server = ReferenceServer::start().await.unwrap();
                let transport = StreamableHttpClientTransport::with_client(
                    http_client(&[]),
                    StreamableHttpClientTransportConfig::with_uri(server.url())
                        .reinit_on_expired_session(false),
                );
                let session = tokio::time::timeout(BOUND, recorder.serve(transport))
                    .await
                    .expect("initialize timed out")
                    .expect("initialize failed");
                (session, Some(server))
            }
            Via::Duplex => {
                let (client, server) = tokio::io::duplex(64 * 1024);
                tokio::spawn(async move {
                    if let Ok(running) = ReferenceHandler::new().serve(server).await {
                        let _ = running.waiting().await;
                    }
                });
                let session = tokio::time::timeout(BOUND, recorder.serve(client))
                    .await
                    .expect("initialize timed out")
                    .expect("initialize failed");
                (session, None)
            }
        };
        Peer {
            session,
            events,
            _server: server,
        }
    }

    impl Peer {
        /// Calls `tool` and returns its whole result.
        async fn call(
            &self,
            tool: &'static str,
            args: Value,
        ) -> Result<CallToolResult, ServiceError> {
            let Value::Object(args) = args else {
                panic!("tool arguments must be a JSON object");
            };
            tokio::time::timeout(
                BOUND,
                self.session
                    .call_tool(CallToolRequestParams::new(tool).with_arguments(args)),
            )
            .await
            .expect("the call neither answered nor failed")
        }

        /// Calls `tool` and returns the progress token rmcp gave the request and the result.
        async fn call_with_token(
            &self,
            tool: &'static str,
            args: Value,
        ) -> (ProgressToken, CallToolResult) {
            let Value::Object(args) = args else {
                panic!("tool arguments must be a JSON object");
            };
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(
                CallToolRequestParams::new(tool).with_arguments(args),
            ));
            let handle = self
                .session
                .send_request_with_option(request, PeerRequestOptions::no_options())
                .await
                .unwrap();
            let token = handle.progress_token.clone();
            let result = tokio::time::timeout(BOUND, handle.await_response())
                .await
                .expect("the call neither answered nor failed")
                .unwrap();
            let ServerResult::CallToolResult(result) = result else {
                panic!("not a tools/call result: {result:?}");
            };
            (token, result)
        }

        /// The next event; fails the test when none comes within [`BOUND`].
        async fn next(&mut self) -> Event {
            tokio::time::timeout(BOUND, self.events.recv())
                .await
                .expect("no event arrived")
                .expect("the recorder is gone")
        }

        /// The next `count` events.
        async fn take(&mut self, count: usize) -> Vec<Event> {
            let mut events = Vec::with_capacity(count);
            for _ in 0..count {
                events.push(self.next().await);
            }
            events
        }
    }

    /// The text of a result's single content block.
    fn text_of(result: &CallToolResult) -> &str {
        assert_eq!(result.content.len(), 1, "{result:?}");
        &result.content[0].as_text().expect("text content").text
    }

    fn is_error(result: &CallToolResult) -> bool {
        result.is_error == Some(true)
    }

    /// Emits one test over streamable HTTP (real clock) and one over a duplex pipe (paused
    /// clock) running `$scenario`.
    macro_rules! over_both {
        ($name:ident, $scenario:expr) => {
            mod $name {
                use super::*;

                #[tokio::test]
                async fn http() {
                    $scenario(Via::Http).await;
                }

                #[tokio::test(start_paused = true)]
                async fn duplex() {
                    $scenario(Via::Duplex).await;
                }
            }
        };
    }

    async fn declares_capabilities_and_tools(via: Via) {
        let peer = open(via, None).await;
        let info = peer.session.peer_info().expect("initialized");
        let capabilities = &info.capabilities;
        assert!(capabilities.logging.is_some(), "{capabilities:?}");
        for list_changed in [
            capabilities.tools.as_ref().and_then(|c| c.list_changed),
            capabilities.resources.as_ref().and_then(|c| c.list_changed),
            capabilities.prompts.as_ref().and_then(|c| c.list_changed),
        ] {
            assert_eq!(list_changed, Some(true), "{capabilities:?}");
        }
        let tools = peer.session.list_all_tools().await.unwrap();
        let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "counter", "echo", "elicit", "fail", "log", "notify", "progress", "roots",
                "sample", "sleep"
            ]
        );
        // The declared logging capability holds: setLevel is accepted.
        peer.session
            .set_level(rmcp::model::SetLevelRequestParams::new(LoggingLevel::Debug))
            .await
            .unwrap();
    }
    over_both!(capabilities_and_tools, declares_capabilities_and_tools);

    async fn progress_carries_the_call_token(via: Via) {
        let mut peer = open(via, None).await;
        let started = Instant::now();
        let (token, result) = peer
            .call_with_token("progress", json!({"steps": 3, "delay_ms": 20}))
            .await;
        assert_eq!(text_of(&result), "done 3");
        assert!(started.elapsed() >= std::time::Duration::from_millis(60));
        let events = peer.take(3).await;
        for (step, event) in (1..=3).zip(events) {
            let Event::Progress(progress) = event else {
                panic!("expected progress, got {event:?}");
            };
            assert_eq!(progress.progress_token, token);
            assert_eq!(progress.progress, f64::from(step));
            assert_eq!(progress.total, Some(3.0));
            assert_eq!(
                progress.message.as_deref(),
                Some(&*format!("step {step} of 3"))
            );
        }
    }
    over_both!(progress, progress_carries_the_call_token);

    /// Two progress calls at once on one session: each notification carries the token of the
    /// call it belongs to, and each call gets exactly its own steps.
    async fn concurrent_progress_calls_keep_their_tokens(via: Via) {
        let mut peer = open(via, None).await;
        let ((first, first_result), (second, second_result)) = tokio::join!(
            peer.call_with_token("progress", json!({"steps": 2, "delay_ms": 10})),
            peer.call_with_token("progress", json!({"steps": 4, "delay_ms": 5})),
        );
        assert_ne!(first, second);
        assert_eq!(text_of(&first_result), "done 2");
        assert_eq!(text_of(&second_result), "done 4");
        let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for event in peer.take(6).await {
            let Event::Progress(progress) = event else {
                panic!("expected progress, got {event:?}");
            };
            assert!(
                progress.progress_token == first || progress.progress_token == second,
                "{progress:?}"
            );
            steps
                .entry(format!("{:?}", progress.progress_token))
                .or_default()
                .push(progress.progress);
        }
        assert_eq!(steps[&format!("{first:?}")], [1.0, 2.0]);
        assert_eq!(steps[&format!("{second:?}")], [1.0, 2.0, 3.0, 4.0]);
    }
    over_both!(
        concurrent_progress,
        concurrent_progress_calls_keep_their_tokens
    );

    async fn progress_refuses_too_many_steps(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer
            .call("progress", json!({"steps": MAX_PROGRESS_STEPS + 1}))
            .await
            .unwrap();
        assert!(is_error(&result), "{result:?}");
        assert_eq!(
            text_of(&result),
            format!(
                "progress: steps must be at most 10000, got {}",
                MAX_PROGRESS_STEPS + 1
            )
        );
        assert!(peer.events.try_recv().is_err(), "progress was sent");
    }
    over_both!(progress_bound, progress_refuses_too_many_steps);

    async fn log_sends_one_message_per_string(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer
            .call(
                "log",
                json!({"messages": ["first", "second"], "level": "warning"}),
            )
            .await
            .unwrap();
        assert_eq!(text_of(&result), "logged 2");
        for (expected, event) in ["first", "second"].into_iter().zip(peer.take(2).await) {
            let Event::Log(log) = event else {
                panic!("expected a logging message, got {event:?}");
            };
            assert_eq!(log.level, LoggingLevel::Warning);
            assert_eq!(log.logger.as_deref(), Some(LOGGER));
            assert_eq!(log.data, json!(expected));
        }

        // The default level is info.
        let result = peer
            .call("log", json!({"messages": ["third"]}))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "logged 1");
        let Event::Log(log) = peer.next().await else {
            panic!("expected a logging message");
        };
        assert_eq!((log.level, log.data), (LoggingLevel::Info, json!("third")));

        // A level MCP does not define is refused, naming the allowed ones.
        let result = peer
            .call("log", json!({"messages": ["x"], "level": "loud"}))
            .await
            .unwrap();
        assert!(is_error(&result), "{result:?}");
        assert_eq!(
            text_of(&result),
            "failed to deserialize parameters: unknown variant `loud`, expected one of `debug`, \
             `info`, `notice`, `warning`, `error`, `critical`, `alert`, `emergency`"
        );
        assert!(peer.events.try_recv().is_err(), "a message was logged");
    }
    over_both!(log, log_sends_one_message_per_string);

    /// Every kind `notify` knows, in the order asked.
    const ALL_KINDS: [&str; 5] = ["tools", "resources", "prompts", "updated", "log"];

    fn expected_notifications() -> Vec<Event> {
        vec![
            Event::ToolsChanged,
            Event::ResourcesChanged,
            Event::PromptsChanged,
            Event::ResourceUpdated(UPDATED_RESOURCE.to_owned()),
            Event::Log(
                LoggingMessageNotificationParam::new(LoggingLevel::Info, json!("session-level"))
                    .with_logger(LOGGER),
            ),
        ]
    }

    async fn notify_sends_each_kind_during_the_call(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer
            .call("notify", json!({"kinds": ALL_KINDS}))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "notified");
        assert_eq!(peer.take(5).await, expected_notifications());

        // An unknown kind is refused, naming the allowed ones.
        let result = peer
            .call("notify", json!({"kinds": ["tools", "everything"]}))
            .await
            .unwrap();
        assert!(is_error(&result), "{result:?}");
        assert_eq!(
            text_of(&result),
            "failed to deserialize parameters: unknown variant `everything`, expected one of \
             `tools`, `resources`, `prompts`, `updated`, `log`"
        );
        assert!(peer.events.try_recv().is_err(), "a notification was sent");
    }
    over_both!(notify_now, notify_sends_each_kind_during_the_call);

    /// With `after_ms`, the call answers first and the notifications come later, outside any
    /// request.
    async fn notify_later_sends_after_the_reply(via: Via) {
        let mut peer = open(via, None).await;
        let started = Instant::now();
        let result = peer
            .call("notify", json!({"kinds": ALL_KINDS, "after_ms": 200}))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "notified");
        if matches!(via, Via::Duplex) {
            // On the paused clock nothing moves the clock 200 ms while the reply travels.
            assert!(peer.events.try_recv().is_err(), "a notification came first");
        }
        assert_eq!(peer.take(5).await, expected_notifications());
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
        // The session still serves calls.
        let result = peer
            .call("echo", json!({"message": "after"}))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "after");
    }
    over_both!(notify_later, notify_later_sends_after_the_reply);

    async fn sample_asks_the_client(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer
            .call("sample", json!({"prompt": "say hi"}))
            .await
            .unwrap();
        assert!(!is_error(&result), "{result:?}");
        assert_eq!(text_of(&result), format!("sampled: {SAMPLED}"));
        let Event::Sampling(request) = peer.next().await else {
            panic!("expected a sampling request");
        };
        assert_eq!(request.max_tokens, SAMPLE_MAX_TOKENS);
        assert_eq!(request.messages, [SamplingMessage::user_text("say hi")]);
    }
    over_both!(sample, sample_asks_the_client);

    async fn elicit_asks_the_client(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer
            .call("elicit", json!({"message": "ok?"}))
            .await
            .unwrap();
        assert!(!is_error(&result), "{result:?}");
        assert_eq!(text_of(&result), r#"elicited: accept {"answer":"yes"}"#);
        let Event::Elicitation(ElicitRequestParams::FormElicitationParams {
            message,
            requested_schema,
            ..
        }) = peer.next().await
        else {
            panic!("expected a form elicitation request");
        };
        assert_eq!(message, "ok?");
        assert!(requested_schema.properties.contains_key("answer"));
    }
    over_both!(elicit, elicit_asks_the_client);

    async fn roots_asks_the_client(via: Via) {
        let mut peer = open(via, None).await;
        let result = peer.call("roots", json!({})).await.unwrap();
        assert!(!is_error(&result), "{result:?}");
        assert_eq!(text_of(&result), "roots: file:///work/a,file:///work/b");
        assert_eq!(peer.next().await, Event::Roots);
    }
    over_both!(roots, roots_asks_the_client);

    /// A client that answers each request with a JSON-RPC error: each tool returns an error
    /// result carrying the client's message, and the session keeps working.
    async fn client_errors_become_error_results(via: Via) {
        let mut peer = open(via, Some("no model here")).await;
        for (tool, args, expected, event) in [
            (
                "sample",
                json!({"prompt": "p"}),
                "sampling failed: no model here",
                "sampling",
            ),
            (
                "elicit",
                json!({"message": "m"}),
                "elicitation failed: no model here",
                "elicitation",
            ),
            ("roots", json!({}), "roots failed: no model here", "roots"),
        ] {
            let result = peer.call(tool, args).await.unwrap();
            assert!(is_error(&result), "{tool}: {result:?}");
            assert_eq!(text_of(&result), expected);
            let received = peer.next().await;
            let name = match received {
                Event::Sampling(_) => "sampling",
                Event::Elicitation(_) => "elicitation",
                Event::Roots => "roots",
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(name, event);
        }
        let result = peer
            .call("echo", json!({"message": "still"}))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "still");
    }
    over_both!(client_errors, client_errors_become_error_results);

    /// rmcp's default client handler, which declares no capabilities, answers sampling with
    /// "method not found": the tool reports it rather than hanging.
    #[tokio::test]
    async fn sample_without_a_client_handler_fails_cleanly() {
        let server = ReferenceServer::start().await.unwrap();
        let transport = StreamableHttpClientTransport::with_client(
            http_client(&[]),
            StreamableHttpClientTransportConfig::with_uri(server.url()),
        );
        let session = tokio::time::timeout(BOUND, ClientConfig::default().serve(transport))
            .await
            .unwrap()
            .unwrap();
        let result = tokio::time::timeout(
            BOUND,
            session.call_tool(
                CallToolRequestParams::new("sample")
                    .with_arguments(json!({"prompt": "p"}).as_object().unwrap().clone()),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(is_error(&result), "{result:?}");
        let text = text_of(&result);
        assert!(text.starts_with("sampling failed: "), "{text}");
        assert!(text.contains("sampling/createMessage"), "{text}");
    }

    /// Over a raw JSON-lines pipe: a `tools/call` without `_meta.progressToken` gets no
    /// progress notifications; one with a token gets them before its result.
    #[tokio::test(start_paused = true)]
    async fn progress_without_a_token_sends_nothing() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            if let Ok(running) = ReferenceHandler::new().serve(server).await {
                let _ = running.waiting().await;
            }
        });
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        let mut send = async |message: Value| {
            let mut line = message.to_string();
            line.push('\n');
            write.write_all(line.as_bytes()).await.unwrap();
        };
        send(json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}
            }
        }))
        .await;
        send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        send(json!({
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "progress", "arguments": {"steps": 3}}
        }))
        .await;
        send(json!({
            "jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {
                "name": "progress",
                "arguments": {"steps": 2},
                "_meta": {"progressToken": "mine"}
            }
        }))
        .await;

        // Everything the server writes, until the answer to request 3.
        let mut received = Vec::new();
        loop {
            let line = tokio::time::timeout(BOUND, lines.next_line())
                .await
                .expect("the server went quiet")
                .unwrap()
                .expect("the server closed the pipe");
            let message: Value = serde_json::from_str(&line).unwrap();
            let done = message["id"] == 3;
            received.push(message);
            if done {
                break;
            }
        }
        let answer = |id: u64| {
            received
                .iter()
                .position(|message| message["id"] == id && message.get("result").is_some())
                .unwrap_or_else(|| panic!("no answer to {id}: {received:#?}"))
        };
        let (second, third) = (answer(2), answer(3));
        assert_eq!(received[second]["result"]["content"][0]["text"], "done 3");
        assert_eq!(received[third]["result"]["content"][0]["text"], "done 2");
        let progress: Vec<(usize, &Value)> = received
            .iter()
            .enumerate()
            .filter(|(_, message)| message["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 2, "{received:#?}");
        for (step, (at, notification)) in (1..=2).zip(progress) {
            assert!(at < third, "progress after the result: {received:#?}");
            assert_eq!(notification["params"]["progressToken"], "mine");
            assert_eq!(
                notification["params"]["progress"].as_f64(),
                Some(step.into())
            );
        }
    }
}
