//! The gateway's own metrics, through the `metrics` facade and exported by `/metrics` beside
//! the pool's (docs/observability.md). Labels are bounded: route templates (never raw
//! paths), HTTP methods, statuses, server ids, known MCP methods; never an identity.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Counter of REST requests, labelled `route` (the matched path template, e.g.
/// `/servers/{id}/pool/stats`, or `unmatched`), `method` and `status`.
pub const REQUESTS_TOTAL: &str = "mcp_gateway_requests_total";
/// Histogram of REST request durations in seconds, labelled `route` and `method`.
pub const REQUEST_DURATION_SECONDS: &str = "mcp_gateway_request_duration_seconds";
/// Counter of forwarded MCP requests, labelled `server`, `method` (a JSON-RPC method of MCP,
/// or `other`) and `outcome`.
pub const MCP_REQUESTS_TOTAL: &str = "mcp_gateway_mcp_requests_total";
/// Histogram of forwarded MCP request durations in seconds, labelled `server` and `method`.
pub const MCP_REQUEST_DURATION_SECONDS: &str = "mcp_gateway_mcp_request_duration_seconds";

/// Counter of downstream MCP sessions refused because their user holds
/// `DOWNSTREAM_SESSIONS_PER_USER` already, labelled `transport` (`streamable_http`, `sse`,
/// `websocket`).
pub const SESSIONS_REFUSED_TOTAL: &str = "mcp_gateway_sessions_refused_total";

/// Counter of downstream MCP sessions ended because their conversation's upstream session was
/// lost, labelled `server` and `reason` (an eviction reason such as `broken`, `lifetime`,
/// `drain`, `user_limit`; `gone` when the pool no longer knows the binding; `rebound` when a
/// request found it replaced).
pub const SESSIONS_LOST_TOTAL: &str = "mcp_gateway_sessions_lost_total";

/// Bucket bounds of the duration histograms, seconds (0.5 ms to 30 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The MCP methods that get their own `method` label; any other is counted as `other`, so a
/// client sending made-up methods cannot grow the label set.
const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
];

/// A Prometheus builder with [`DURATION_BUCKETS`] for the gateway's duration metrics (they
/// render as histograms, not summaries). Install it, or build a recorder from it in tests.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".to_owned()),
            DURATION_BUCKETS,
        )
        .expect("the bucket list is not empty")
}

/// Middleware recording [`REQUESTS_TOTAL`] and [`REQUEST_DURATION_SECONDS`] for every
/// request, the ones refused by auth or the body limit included.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "method" => method.clone(),
        "status" => status)
    .increment(1);
    ::metrics::histogram!(REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(elapsed);
    response
}

/// Records one forwarded MCP request: [`MCP_REQUESTS_TOTAL`] and
/// [`MCP_REQUEST_DURATION_SECONDS`]. `method` is the JSON-RPC method (an unknown one is
/// labelled `other`); `outcome` a short fixed word of the caller's (`ok`, `error`,
/// `timeout`, …), never a message.
pub fn record_mcp(server: &str, method: &str, outcome: &'static str, elapsed: Duration) {
    let method = MCP_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other");
    let server = server.to_owned();
    ::metrics::counter!(MCP_REQUESTS_TOTAL, "server" => server.clone(), "method" => method,
        "outcome" => outcome)
    .increment(1);
    ::metrics::histogram!(MCP_REQUEST_DURATION_SECONDS, "server" => server, "method" => method)
        .record(elapsed);
}
