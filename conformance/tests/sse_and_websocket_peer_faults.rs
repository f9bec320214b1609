//! Faults specific to the SSE and WebSocket transports, on both sides: a peer that sends
//! malformed frames ends that one session with an error (never a panic, never a hang), and
//! the server adapters reject malformed requests with the documented statuses and close
//! codes.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{State, WebSocketUpgrade, ws::Message as AxumMessage},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::{SinkExt as _, StreamExt as _};
use mcp_pool_conformance::{
    ReferenceServer,
    transport::{SIGNAL_TIMEOUT, call_text, connect, connect_to},
};
use mcp_pool_traits::{Endpoint, Transport, TransportKind, is_transport_failure};
use mcp_pool_transports::{Sse, WebSocket};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};

/// What a misbehaving server sends in reply to `tools/call`.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A message that is not JSON.
    NotJson,
    /// JSON that is not a JSON-RPC message.
    NotJsonRpc,
    /// A binary frame (WebSocket only).
    Binary,
    /// A close frame (WebSocket) or the end of the stream (SSE).
    Close,
}

/// The `initialize` result a hand-written server answers with.
fn initialize_result(request: &Value) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": request["id"],
        "result": {
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "misbehaving", "version": "0"}
        }
    })
    .to_string()
}

/// What the misbehaving server sends for `request`: `None` for nothing (notifications),
/// `Some(Err(fault))` for the fault.
fn answer(request: &Value, fault: Fault) -> Option<Result<String, Fault>> {
    match request["method"].as_str() {
        Some("initialize") => Some(Ok(initialize_result(request))),
        Some("tools/call") => Some(Err(fault)),
        _ => None,
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// An SSE server that answers `initialize` properly and `tools/call` with `fault`.
async fn misbehaving_sse_server(fault: Fault) -> SocketAddr {
    type Events = mpsc::UnboundedSender<Option<String>>;
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<parking_lot::Mutex<Option<Events>>>);

    async fn open(State(shared): State<Shared>) -> Response {
        let (tx, rx) = mpsc::unbounded_channel::<Option<String>>();
        tx.send(Some(
            "event: endpoint\ndata: /message?sessionId=1\n\n".to_owned(),
        ))
        .unwrap();
        *shared.0.lock() = Some(tx);
        let body = futures::stream::unfold(rx, |mut rx| async move {
            // `None` ends the stream.
            let chunk = rx.recv().await??;
            Some((Ok::<_, Infallible>(Bytes::from(chunk)), rx))
        });
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(body),
        )
            .into_response()
    }

    let post_message = move |State(shared): State<Shared>, body: Bytes| async move {
        let request: Value = serde_json::from_slice(&body).unwrap();
        let events = shared.0.lock().clone().unwrap();
        match answer(&request, fault) {
            None => {}
            Some(Ok(json)) => events
                .send(Some(format!("event: message\ndata: {json}\n\n")))
                .unwrap(),
            Some(Err(Fault::NotJson)) => events
                .send(Some("event: message\ndata: {not json\n\n".to_owned()))
                .unwrap(),
            Some(Err(Fault::NotJsonRpc)) => events
                .send(Some(
                    "event: message\ndata: {\"hello\": \"world\"}\n\n".to_owned(),
                ))
                .unwrap(),
            Some(Err(Fault::Close | Fault::Binary)) => events.send(None).unwrap(),
        }
        StatusCode::ACCEPTED
    };
    let router = Router::new()
        .route("/sse", get(open))
        .route("/message", post(post_message))
        .with_state(Shared::default());
    serve(router).await
}

/// A WebSocket server (subprotocol `mcp`) that answers `initialize` properly and `tools/call`
/// with `fault`.
async fn misbehaving_ws_server(fault: Fault) -> SocketAddr {
    let upgrade = move |upgrade: WebSocketUpgrade| async move {
        upgrade
            .protocols(["mcp"])
            .on_upgrade(move |mut socket| async move {
                while let Some(Ok(AxumMessage::Text(text))) = socket.recv().await {
                    let request: Value = serde_json::from_str(text.as_str()).unwrap();
                    let reply = match answer(&request, fault) {
                        None => continue,
                        Some(Ok(json)) => AxumMessage::text(json),
                        Some(Err(Fault::NotJson)) => AxumMessage::text("{not json"),
                        Some(Err(Fault::NotJsonRpc)) => AxumMessage::text("[1, 2, 3]"),
                        Some(Err(Fault::Binary)) => AxumMessage::binary(b"{}".to_vec()),
                        Some(Err(Fault::Close)) => AxumMessage::Close(None),
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
                // Keep the connection open until the client goes: the client must not wait for
                // the server to hang up after a fault.
                while socket.recv().await.is_some() {}
            })
    };
    serve(Router::new().route("/ws", get(upgrade))).await
}

/// Connects to the misbehaving server, makes a call that meets `fault`, and checks that the
/// call fails promptly as a transport failure and the session is over, while a session on a
/// well-behaved server over the same transport keeps working.
async fn fault_ends_the_session(transport: &dyn Transport, addr: SocketAddr, fault: Fault) {
    let kind = transport.kind();
    let endpoint =
        Endpoint::new(mcp_pool_conformance::transport::url_on(addr, kind), kind).unwrap();
    let good = ReferenceServer::start().await.unwrap();
    let healthy = connect_to(transport, &good).await;

    let session = connect(transport, &endpoint, SIGNAL_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{kind} {fault:?}: connect: {e}"));
    let error = call_text(&session, "echo", json!({"message": "x"}))
        .await
        .expect_err("a call answered with a malformed frame must fail");
    assert!(
        is_transport_failure(&error),
        "{kind} {fault:?}: a transport failure, got {error:?}"
    );
    // The service is over: later calls fail at once too.
    let again = timeout(
        SIGNAL_TIMEOUT,
        session.call_tool(rmcp::model::CallToolRequestParams::new("echo")),
    )
    .await
    .expect("a call on a dead session must not hang");
    assert!(
        again.as_ref().is_err_and(is_transport_failure),
        "{kind} {fault:?}: {again:?}"
    );
    assert!(
        session.is_transport_closed(),
        "{kind} {fault:?}: the session reports its death"
    );

    assert_eq!(
        call_text(&healthy, "echo", json!({"message": "still here"}))
            .await
            .ok()
            .as_deref(),
        Some("still here"),
        "{kind} {fault:?}: other sessions are unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_malformed_or_ended_stream_ends_only_that_session() {
    let transport = Sse::new().unwrap();
    for fault in [Fault::NotJson, Fault::NotJsonRpc, Fault::Close] {
        let addr = misbehaving_sse_server(fault).await;
        fault_ends_the_session(&transport, addr, fault).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_malformed_frame_or_close_ends_only_that_session() {
    let transport = WebSocket::new();
    for fault in [
        Fault::NotJson,
        Fault::NotJsonRpc,
        Fault::Binary,
        Fault::Close,
    ] {
        let addr = misbehaving_ws_server(fault).await;
        fault_ends_the_session(&transport, addr, fault).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_endpoint_on_another_origin_is_refused() {
    let router = Router::new().route(
        "/sse",
        get(|| async {
            (
                [("content-type", "text/event-stream")],
                "event: endpoint\ndata: http://example.com/message?sessionId=1\n\n",
            )
        }),
    );
    let addr = serve(router).await;
    let endpoint = Endpoint::new(format!("http://{addr}/sse"), TransportKind::Sse).unwrap();
    let error = connect(&Sse::new().unwrap(), &endpoint, SIGNAL_TIMEOUT)
        .await
        .expect_err("identity headers must not follow an endpoint to another origin");
    let message = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(message.contains("another origin"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sse_and_non_websocket_endpoints_are_refused_clearly() {
    // The streamable HTTP endpoint is not an event stream, and not a WebSocket endpoint.
    let server = ReferenceServer::start().await.unwrap();
    let url = server.url();
    let sse = Endpoint::new(url.clone(), TransportKind::Sse).unwrap();
    let error = connect(&Sse::new().unwrap(), &sse, SIGNAL_TIMEOUT)
        .await
        .expect_err("/mcp is no SSE endpoint");
    let message = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(message.contains("text/event-stream"), "{message}");

    let ws = Endpoint::new(url.replace("http://", "ws://"), TransportKind::WebSocket).unwrap();
    let error = connect(&WebSocket::new(), &ws, SIGNAL_TIMEOUT)
        .await
        .expect_err("/mcp is no WebSocket endpoint");
    assert!(
        error.to_string().contains("handshake") || format!("{error:?}").contains("Handshake"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_adapter_rejects_bad_posts() {
    let server = ReferenceServer::start().await.unwrap();
    let client = reqwest::Client::new();
    let message_url = format!("http://{}/message", server.addr());
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();

    let status = |r: reqwest::Response| r.status();
    let no_id = client
        .post(&message_url)
        .body(initialize.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(status(no_id), StatusCode::BAD_REQUEST, "no sessionId");
    let unknown = client
        .post(format!("{message_url}?sessionId=nope"))
        .body(initialize.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(status(unknown), StatusCode::NOT_FOUND, "unknown session");

    // A real session: its endpoint event names the URL to POST to.
    let stream = client
        .get(server.url_for(TransportKind::Sse))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.bytes_stream();
    let first = timeout(SIGNAL_TIMEOUT, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    let endpoint = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("an endpoint event: {first:?}"));
    assert!(
        first.starts_with("event: endpoint") && endpoint.starts_with("/message?sessionId="),
        "{first:?}"
    );
    let garbage = client
        .post(format!("http://{}{endpoint}", server.addr()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(garbage),
        StatusCode::BAD_REQUEST,
        "a body that is no JSON-RPC"
    );
    server
        .wait_until(|s| s.sessions_alive == 1, SIGNAL_TIMEOUT)
        .await
        .expect("a bad POST does not end the session");
    drop(body);
    server
        .wait_sessions_alive(0, SIGNAL_TIMEOUT)
        .await
        .expect("the session ends when its stream's client goes away");
}

/// A raw WebSocket client of the reference server, offering `protocol` when given.
async fn raw_ws(
    server: &ReferenceServer,
    protocol: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let mut request = server
        .url_for(TransportKind::WebSocket)
        .into_client_request()
        .unwrap();
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_adapter_requires_the_mcp_subprotocol_and_closes_on_bad_frames() {
    let server = ReferenceServer::start().await.unwrap();
    match raw_ws(&server, None).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        other => panic!("an upgrade without the mcp subprotocol must get 400, got {other:?}"),
    }

    for (frame, code) in [
        (tungstenite::Message::text("{not json"), CloseCode::Invalid),
        (
            tungstenite::Message::binary(b"{}".to_vec()),
            CloseCode::Unsupported,
        ),
    ] {
        let mut socket = raw_ws(&server, Some("mcp"))
            .await
            .expect("upgrade with mcp");
        socket.send(frame).await.unwrap();
        let close = timeout(SIGNAL_TIMEOUT, async {
            loop {
                match socket.next().await {
                    Some(Ok(tungstenite::Message::Close(frame))) => break frame,
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("the server closes a session that sent a bad frame");
        assert_eq!(close.map(|f| f.code), Some(code));
    }
    server
        .wait_sessions_alive(0, SIGNAL_TIMEOUT)
        .await
        .expect("closed sessions are counted as ended");
    assert_eq!(server.sessions_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_websocket_sessions_with_going_away() {
    let server = ReferenceServer::start().await.unwrap();
    let mut socket = raw_ws(&server, Some("mcp"))
        .await
        .expect("upgrade with mcp");
    server
        .wait_until(|s| s.sessions_alive == 1, SIGNAL_TIMEOUT)
        .await
        .unwrap();
    let stop = tokio::spawn(async move {
        server.stop().await;
        server
    });
    let close = timeout(SIGNAL_TIMEOUT, socket.next())
        .await
        .expect("stop closes the connection at once");
    match close {
        Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away)
        }
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    let server = timeout(SIGNAL_TIMEOUT + Duration::from_secs(5), stop)
        .await
        .expect("stop returns")
        .unwrap();
    assert_eq!(
        server.sessions_alive(),
        0,
        "stop returns with every session ended"
    );
}
