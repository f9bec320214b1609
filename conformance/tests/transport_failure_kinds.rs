//! Failure categories the conformance suite does not check for every transport (they need TLS,
//! DNS or a server that is not an MCP server): each built-in transport reports them with the
//! [`FailureKind`] a circuit breaker needs. The status categories (401,
//! 403, 404, 429, 5xx), refused ports and timeouts are checked by the suite itself
//! (`transport_conformance.rs`).

use std::sync::Arc;

use axum::{Router, http::header::CONTENT_TYPE, response::IntoResponse};
use mcp_pool_conformance::{
    ReferenceServer,
    transport::{SIGNAL_TIMEOUT, TIMEOUT_SLACK, connect},
};
use mcp_pool_traits::{Endpoint, FailureKind, Transport, TransportError, TransportKind};
use mcp_pool_transports::{Sse, StreamableHttp, WebSocket};
use tokio::{net::TcpListener, time::timeout};

fn transports() -> Vec<Arc<dyn Transport>> {
    vec![
        Arc::new(StreamableHttp::new().expect("an HTTP client")),
        Arc::new(Sse::new().expect("an HTTP client")),
        Arc::new(WebSocket::new()),
    ]
}

/// Connects `url` with `transport` and returns the error, which must be a
/// [`TransportError::Connect`] that came before the create timeout.
async fn connect_error(transport: &dyn Transport, url: &str) -> TransportError {
    let kind = transport.kind();
    let endpoint = Endpoint::new(url, kind).expect("a valid endpoint");
    let result = timeout(
        SIGNAL_TIMEOUT + TIMEOUT_SLACK,
        connect(transport, &endpoint, SIGNAL_TIMEOUT),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: a connect to {url} ignored its timeout"));
    match result {
        Ok(_) => panic!("{kind}: a connect to {url} succeeded"),
        Err(error @ TransportError::Connect { .. }) => error,
        Err(other) => panic!("{kind}: a connect to {url} must fail at once, got {other}"),
    }
}

/// The URL of `kind` on `authority` with the reference server's paths, over TLS.
fn tls_url(authority: &str, kind: TransportKind) -> String {
    match kind {
        TransportKind::StreamableHttp => format!("https://{authority}/mcp"),
        TransportKind::Sse => format!("https://{authority}/sse"),
        TransportKind::WebSocket => format!("wss://{authority}/ws"),
        other => unreachable!("no {other} here"),
    }
}

/// TLS to a server that speaks plain HTTP: the handshake fails, [`FailureKind::Tls`], and it
/// counts against the endpoint (its TLS set-up is broken for everyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failure_counts() {
    let server = ReferenceServer::start().await.expect("a reference server");
    for transport in transports() {
        let kind = transport.kind();
        let error = connect_error(&*transport, &tls_url(&server.addr().to_string(), kind)).await;
        assert_eq!(error.kind(), FailureKind::Tls, "{kind}: {error}");
        assert!(error.counts_against_endpoint(), "{kind}: TLS counts");
    }
}

/// A host name that does not resolve (`.invalid`, RFC 2606): [`FailureKind::Unreachable`],
/// counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_is_unreachable() {
    for transport in transports() {
        let kind = transport.kind();
        let url = mcp_pool_conformance::transport::url_on(
            "127.0.0.1:1".parse().expect("an address"),
            kind,
        )
        .replace("127.0.0.1:1", "mcp-pool-test.invalid:1");
        let error = connect_error(&*transport, &url).await;
        assert_eq!(error.kind(), FailureKind::Unreachable, "{kind}: {error}");
        assert!(
            error.counts_against_endpoint(),
            "{kind}: DNS failure counts"
        );
    }
}

/// An HTTP server that is not an MCP server (every request answered `200 text/html`): the
/// reply makes no sense to the transport, [`FailureKind::Protocol`], which counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_mcp_server_is_a_protocol_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let app = Router::new().fallback(|| async {
        ([(CONTENT_TYPE, "text/html")], "<html>a web page</html>").into_response()
    });
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    for transport in transports() {
        let kind = transport.kind();
        let url = mcp_pool_conformance::transport::url_on(addr, kind);
        let error = connect_error(&*transport, &url).await;
        assert_eq!(error.kind(), FailureKind::Protocol, "{kind}: {error}");
        assert!(error.counts_against_endpoint(), "{kind}: protocol counts");
    }
    served.abort();
}
