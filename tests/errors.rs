//! Errors a user can act on: a failed acquire names the server, the endpoint
//! URL (user-info redacted) and the root cause in words, with no Rust type names, no text
//! repeated through the source chain, and HTML bodies cut to a short excerpt. Each case runs a
//! real `Pool` acquire against a real loopback endpoint (or a real name lookup) over every
//! transport. `cargo test --test errors -- --nocapture` prints the messages.

mod common;

use std::{error::Error, net::SocketAddr, time::Duration};

use axum::{
    Router,
    http::{StatusCode, header::CONTENT_TYPE},
};
use common::server_id;
use mcp_pool::{Endpoint, Pool, PoolConfig, PoolError, Principal, ServerConfig, TransportKind};

const TRANSPORTS: [TransportKind; 3] = [
    TransportKind::StreamableHttp,
    TransportKind::Sse,
    TransportKind::WebSocket,
];

/// User-info put in every URL: it must never be shown.
const USER_INFO: &str = "alice:pw123@";

/// `host_port` as an endpoint URL of `transport`, with [`USER_INFO`].
fn url_of(transport: TransportKind, host_port: &str) -> String {
    let (scheme, path) = match transport {
        TransportKind::StreamableHttp => ("http", "mcp"),
        TransportKind::Sse => ("http", "sse"),
        TransportKind::WebSocket => ("ws", "ws"),
        other => unreachable!("no {other} here"),
    };
    format!("{scheme}://{USER_INFO}{host_port}/{path}")
}

/// The error, then each `source()`, one per line.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str("\n  caused by: ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// What every message must be: (a) it names the server and the redacted URL (never the
/// user-info), (b) it contains each of `cause` (the cause in words), (c) no Rust type names
/// or generics, (d) no clause twice and no `source()` whose text its parent already shows,
/// (e) at most `max_len` characters.
#[track_caller]
fn check(error: &PoolError, server: &str, url: &str, cause: &[&str], max_len: usize) -> String {
    let text = chain(error);
    println!("{text}\n");
    let redacted = url.replace(USER_INFO, "***@");
    assert!(
        text.contains(&format!("server {server}")),
        "(a) server: {text}"
    );
    assert!(text.contains(&redacted), "(a) {redacted}: {text}");
    assert!(!text.contains("pw123") && !text.contains("alice"), "{text}");
    for words in cause {
        assert!(text.contains(words), "(b) {words:?}: {text}");
    }
    for type_name in [
        "<",
        ">",
        "::",
        "WorkerTransport",
        "StreamableHttpError",
        "reqwest",
        "Error {",
        "Some(",
    ] {
        assert!(!text.contains(type_name), "(c) {type_name:?}: {text}");
    }
    let mut parent = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let message = cause.to_string();
        assert!(!parent.contains(&message), "(d) repeated cause: {text}");
        parent = message;
        next = cause.source();
    }
    let clauses: Vec<&str> = text
        .split(['\n', ':', ',', ';', '(', ')'])
        .map(str::trim)
        .filter(|c| c.split_whitespace().count() >= 3)
        .collect();
    for (i, clause) in clauses.iter().enumerate() {
        assert!(
            !clauses[..i].contains(clause),
            "(d) {clause:?} twice: {text}"
        );
    }
    assert!(
        text.chars().count() <= max_len,
        "(e) {} chars: {text}",
        text.chars().count()
    );
    text
}

/// A failed acquire of a pool with one server, `demo`, at `url`; `Err` when the URL is
/// rejected before any acquire (when endpoints are configured or the pool is built).
async fn acquire_error(url: &str, transport: TransportKind) -> Result<PoolError, String> {
    let endpoint = Endpoint::new(url, transport).map_err(|e| chain(&e))?;
    let pool = Pool::builder()
        .create_timeout(Duration::from_secs(10))
        .server(ServerConfig::new(server_id("demo"), endpoint).pool(PoolConfig::enabled()))
        .build()
        .map_err(|e| chain(&e))?;
    let error = pool
        .acquire(&server_id("demo"), Principal::user("u"))
        .await
        .expect_err("the endpoint cannot serve MCP");
    pool.close().await;
    Ok(error)
}

/// Serves `body` as `content_type` with `status` to every request, on a loopback port.
async fn serve(status: StatusCode, content_type: &'static str, body: String) -> SocketAddr {
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { (status, [(CONTENT_TYPE, content_type)], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A loopback port nobody listens on: bound, then let go.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_refused_connection_says_so() {
    let port = refused_port();
    for transport in TRANSPORTS {
        let url = url_of(transport, &format!("127.0.0.1:{port}"));
        let error = acquire_error(&url, transport).await.unwrap();
        assert!(matches!(&error, PoolError::Create { .. }), "{error:?}");
        check(&error, "demo", &url, &["connection refused"], 300);
    }
}

#[tokio::test]
async fn an_unknown_host_is_a_dns_failure_naming_the_host() {
    for transport in TRANSPORTS {
        let url = url_of(transport, "does-not-exist.invalid");
        let error = acquire_error(&url, transport).await.unwrap();
        check(
            &error,
            "demo",
            &url,
            &["DNS failure: does-not-exist.invalid could not be resolved"],
            300,
        );
    }
}

#[tokio::test]
async fn an_invalid_port_is_named_as_such() {
    for transport in TRANSPORTS {
        let url = url_of(transport, "127.0.0.1:99999");
        match acquire_error(&url, transport).await {
            // Rejected when configured: the error names the URL and the port.
            Err(rejected) => {
                println!("{rejected}\n");
                assert!(rejected.contains("port"), "{rejected}");
                assert!(!rejected.contains("pw123"), "{rejected}");
            }
            // Rejected at connect; WebSocket used to try port 80 instead and report "refused".
            Ok(error) => {
                check(&error, "demo", &url, &["invalid port number"], 300);
            }
        }
    }
}

#[tokio::test]
async fn an_html_404_page_is_cut_to_its_title() {
    let page = format!(
        "<!DOCTYPE html><html><head><title>404 Not Found</title><style>body {{ color: red }}\
         </style></head><body><h1>Not Found</h1><p>{}</p></body></html>",
        "The requested URL was not found on this server. ".repeat(200)
    );
    let addr = serve(StatusCode::NOT_FOUND, "text/html; charset=utf-8", page).await;
    for transport in TRANSPORTS {
        let url = url_of(transport, &addr.to_string());
        let error = acquire_error(&url, transport).await.unwrap();
        // rmcp 3.9 keeps no content type for an error status on streamable HTTP: the body
        // tells it is a page.
        let kind = match transport {
            TransportKind::StreamableHttp => "(an HTML page)",
            _ => "(text/html)",
        };
        let text = check(
            &error,
            "demo",
            &url,
            &["HTTP 404 Not Found", kind, "\"404 Not Found\""],
            300,
        );
        assert!(!text.contains("requested URL"), "only the title: {text}");
    }
}

#[tokio::test]
async fn a_json_answer_that_is_not_mcp_is_shown() {
    let addr = serve(
        StatusCode::OK,
        "application/json",
        r#"{"hello":"world"}"#.into(),
    )
    .await;
    for transport in TRANSPORTS {
        let url = url_of(transport, &addr.to_string());
        let error = acquire_error(&url, transport).await.unwrap();
        let cause: &[&str] = match transport {
            TransportKind::StreamableHttp => &[
                "the answer to initialize is JSON but not JSON-RPC",
                "MCP endpoint",
                r#"{"hello":"world"}"#,
            ],
            _ => &["HTTP 200 OK (application/json)", r#"{"hello":"world"}"#],
        };
        check(&error, "demo", &url, cause, 300);
    }
}

#[tokio::test]
async fn http_401_and_500_give_the_status_and_what_came_with_it() {
    let unauthorized = serve(
        StatusCode::UNAUTHORIZED,
        "application/json",
        r#"{"error":"invalid token"}"#.into(),
    )
    .await;
    let failing = serve(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/plain",
        "database is down".into(),
    )
    .await;
    for transport in TRANSPORTS {
        let url = url_of(transport, &unauthorized.to_string());
        let error = acquire_error(&url, transport).await.unwrap();
        let kind = match transport {
            TransportKind::StreamableHttp => "(JSON)",
            _ => "(application/json)",
        };
        check(
            &error,
            "demo",
            &url,
            &[
                "HTTP 401 Unauthorized",
                kind,
                r#"{"error":"invalid token"}"#,
            ],
            300,
        );

        let url = url_of(transport, &failing.to_string());
        let error = acquire_error(&url, transport).await.unwrap();
        // rmcp 3.9 drops the body and content type of a 5xx on streamable HTTP.
        let cause: &[&str] = match transport {
            TransportKind::StreamableHttp => &["HTTP 500 Internal Server Error"],
            _ => &[
                "HTTP 500 Internal Server Error (text/plain)",
                "\"database is down\"",
            ],
        };
        check(&error, "demo", &url, cause, 300);
    }
}
