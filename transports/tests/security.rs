//! Secrets stay with the origin the caller named and out of printed output: no redirect is
//! followed, and no token, cookie or URL password reaches an error, a `Debug` or a log line.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, header::LOCATION},
    response::IntoResponse,
};
use http::HeaderMap;
use mcp_pool_traits::{
    ConnectRequest, Endpoint, Transport, TransportError, TransportKind, default_client_config,
};
use mcp_pool_transports::{Sse, StreamableHttp, WebSocket};
use tokio::net::TcpListener;

const TOKEN: &str = "s3cr3t-t0ken";
const COOKIE: &str = "c00kie-v4lue";
const PASSWORD: &str = "pw123";

/// Serves `router` on 127.0.0.1 (an ephemeral port); returns its `host:port`.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr.to_string()
}

/// A server counting every request it receives.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "reached"
        }
    });
    (serve(router).await, hits)
}

/// A server answering every request `307 Temporary Redirect` to `target`.
async fn redirecting_server(target: String) -> String {
    let router = Router::new().fallback(move || {
        let target = target.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, target)]).into_response() }
    });
    serve(router).await
}

fn identity_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    h.insert("cookie", format!("sid={COOKIE}").parse().unwrap());
    h.insert("x-api-key", "k3y".parse().unwrap());
    h.insert("x-tenant-id", "acme".parse().unwrap());
    h
}

async fn connect(
    transport: &dyn Transport,
    url: &str,
    kind: TransportKind,
) -> Result<(), TransportError> {
    let endpoint = Endpoint::new(url, kind).unwrap();
    let handler = mcp_pool_traits::SessionHandler::new(default_client_config(), None);
    let request = ConnectRequest::new(
        &endpoint,
        &identity_headers(),
        Duration::from_secs(5),
        handler,
    );
    transport.connect(request).await.map(drop)
}

/// The error, its `Debug`, and every error of its source chain.
fn everything_printed(error: &TransportError) -> String {
    let mut out = format!("{error} | {error:?}");
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        out += &format!(" | {e} | {e:?}");
        source = e.source();
    }
    out
}

fn assert_no_secret(text: &str) {
    for secret in [TOKEN, COOKIE, PASSWORD] {
        assert!(!text.contains(secret), "{secret:?} printed: {text}");
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (target, hits) = counting_server().await;
    let redirector = redirecting_server(format!("http://{target}/mcp")).await;
    for (transport, kind) in [
        (
            Box::new(StreamableHttp::new().unwrap()) as Box<dyn Transport>,
            TransportKind::StreamableHttp,
        ),
        (Box::new(Sse::new().unwrap()), TransportKind::Sse),
    ] {
        let error = connect(&*transport, &format!("http://{redirector}/mcp"), kind)
            .await
            .expect_err("a redirect must fail the connect");
        let printed = everything_printed(&error);
        assert!(matches!(error, TransportError::Connect { .. }), "{printed}");
        assert!(printed.contains("307"), "{kind}: {printed}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{kind}: followed to {target}"
        );
    }
    // The set-up is sound: a client that follows redirects does reach the second server.
    let followed = reqwest::Client::new()
        .get(format!("http://{redirector}/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(followed.text().await.unwrap(), "reached");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failing_connects_print_and_log_no_secret() {
    let logs = mcp_pool_conformance::logs::capture();
    // Answers everything 500, the WebSocket upgrade included.
    let router = Router::new().fallback(|| async { StatusCode::INTERNAL_SERVER_ERROR });
    let server = serve(router).await;
    let http_url = format!("http://alice:{PASSWORD}@{server}/mcp");
    let ws_url = format!("ws://alice:{PASSWORD}@{server}/ws");
    let cases: [(Box<dyn Transport>, &str, TransportKind); 3] = [
        (
            Box::new(StreamableHttp::new().unwrap()),
            &http_url,
            TransportKind::StreamableHttp,
        ),
        (Box::new(Sse::new().unwrap()), &http_url, TransportKind::Sse),
        (
            Box::new(WebSocket::new()),
            &ws_url,
            TransportKind::WebSocket,
        ),
    ];
    for (transport, url, kind) in cases {
        let error = connect(&*transport, url, kind)
            .await
            .expect_err("the server answers 500");
        let printed = everything_printed(&error);
        assert_no_secret(&printed);
        assert!(
            printed.contains(&format!("***@{server}")),
            "{kind}: {printed}"
        );
        let endpoint = Endpoint::new(url, kind).unwrap();
        assert_no_secret(&format!("{endpoint} {endpoint:?} {transport:?}"));
    }
    // Refused connections too.
    let error = connect(
        &StreamableHttp::new().unwrap(),
        &format!("http://alice:{PASSWORD}@127.0.0.1:1/mcp"),
        TransportKind::StreamableHttp,
    )
    .await
    .unwrap_err();
    assert_no_secret(&everything_printed(&error));

    let logs = logs.text();
    assert!(logs.contains(&server), "nothing captured: {logs}");
    assert_no_secret(&logs);
}

#[tokio::test]
async fn the_answer_to_a_post_is_read_with_a_limit() {
    use axum::{body::Body, routing::get};
    use futures::StreamExt as _;
    use mcp_pool_transports::{SseClientTransport, SseError, sse::MAX_POST_RESPONSE_BYTES};
    use rmcp::transport::Transport as _;

    // An event stream that sends its `endpoint` event, then stays open; POSTs answered 202 with
    // a body of twice the limit, chunked (no content-length) or announced.
    let router = Router::new()
        .route(
            "/sse",
            get(|| async {
                let events = futures::stream::iter([Ok::<_, std::io::Error>(
                    "event: endpoint\ndata: /chunked\n\n",
                )])
                .chain(futures::stream::pending());
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(events),
                )
            }),
        )
        .route(
            "/chunked",
            axum::routing::post(|| async {
                let chunk = vec![b'x'; 64 * 1024];
                let chunks = (0..2 * MAX_POST_RESPONSE_BYTES / chunk.len())
                    .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
                (
                    StatusCode::ACCEPTED,
                    Body::from_stream(futures::stream::iter(chunks)),
                )
            }),
        );
    let server = serve(router).await;
    let mut transport = SseClientTransport::connect(
        reqwest::Client::new(),
        &format!("http://{server}/sse"),
        HeaderMap::new(),
    )
    .await
    .unwrap();
    let message = serde_json::from_value(serde_json::json!({
        "jsonrpc": "2.0", "method": "notifications/initialized"
    }))
    .unwrap();
    let error = transport.send(message).await.unwrap_err();
    assert!(matches!(error, SseError::PostResponseTooLarge), "{error}");
}
