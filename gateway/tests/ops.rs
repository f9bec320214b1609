//! Pool operations (`/pool/sessions`, `/pool/resize`, `/pool/reset`) and the gateway's request
//! metrics, in process (`oneshot`) on a real pool over the reference server on loopback.

mod common;

use axum::http::StatusCode;
use common::Gateway;
use mcp_pool::{Pool, PoolConfig, Principal, ServerConfig, ServerId};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::{AppState, Auth, Registry, metrics::record_mcp};
use serde_json::Value;

struct Fixture {
    _upstream: ReferenceServer,
    pool: Pool,
    gateway: Gateway,
    plain: ServerId,
}

/// Servers `demo` (pooling off, as a server starts by default) and `plain` (pooling on); auth
/// off: the auth layer is `rest.rs`'s subject.
async fn fixture() -> Fixture {
    let upstream = ReferenceServer::start().await.unwrap();
    let plain = ServerId::new("plain").unwrap();
    let servers = [
        ServerConfig::new(ServerId::new("demo").unwrap(), upstream.endpoint())
            .pool(PoolConfig::default()),
        ServerConfig::new(plain.clone(), upstream.endpoint()).pool(PoolConfig::enabled()),
    ];
    let pool = servers
        .iter()
        .fold(Pool::builder(), |b, s| b.server(s.clone()))
        .build()
        .unwrap();
    let registry = Registry::load(pool.clone(), &servers).await.unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let app = mcp_pool_gateway::router(AppState {
        metrics: Some(recorder.handle()),
        ..AppState::new(pool.clone(), registry, Auth::Disabled)
    });
    Fixture {
        _upstream: upstream,
        pool,
        gateway: Gateway {
            app,
            token: String::new(),
            forbidden: Vec::new(),
        },
        plain,
    }
}

impl Fixture {
    /// `method path` without a token (auth is off) and a JSON `body`; the answer as JSON.
    async fn send(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (status, text) = self.gateway.send_as(None, method, path, body).await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, value)
    }
}

fn detail(v: &Value) -> &str {
    v["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {v}"))
}

#[tokio::test]
async fn sessions_list_each_session_without_identity() {
    let f = fixture().await;
    let (s, v) = f.send("GET", "/servers/plain/pool/sessions", None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 0));

    let lease = f
        .pool
        .acquire(&f.plain, Principal::user("alice@example.com"))
        .await
        .unwrap();
    let (s, v) = f.send("GET", "/servers/plain/pool/sessions", None).await;
    assert_eq!(s, StatusCode::OK);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    let row = &rows[0];
    assert_eq!(row["state"], "leased");
    assert_eq!(
        (row["in_flight"].as_u64(), row["use_count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(row["endpoint"], 0);
    assert_eq!(row["transport"], "streamable_http");
    let key = row["key"].as_str().unwrap();
    assert!(
        key.len() == 8 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "{row}"
    );
    assert!(!v.to_string().contains("alice"), "identity in {v}");
    drop(lease);
    let (_, v) = f.send("GET", "/servers/plain/pool/sessions", None).await;
    assert_eq!(v[0]["state"], "idle", "{v}");

    let (s, v) = f.send("GET", "/servers/nope/pool/sessions", None).await;
    assert_eq!(
        (s, detail(&v)),
        (StatusCode::NOT_FOUND, "Server not found: nope")
    );
}

#[tokio::test]
async fn resize_applies_size_within_min_and_max_else_422() {
    let f = fixture().await;
    let (s, v) = f
        .send("POST", "/servers/plain/pool/resize", Some(r#"{"size": 7}"#))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["size"], 7);
    assert_eq!(f.pool.server_config(&f.plain).unwrap().size, 7);

    let c = f.pool.server_config(&f.plain).unwrap();
    let (s, v) = f
        .send(
            "POST",
            "/servers/plain/pool/resize",
            Some(r#"{"size": 11}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        detail(&v),
        format!(
            "size = 11 is out of range: must be {} to {} (the pool's min_size to max_size)",
            c.min_size, c.max_size
        )
    );
    assert_eq!(
        f.pool.server_config(&f.plain).unwrap().size,
        7,
        "nothing applied"
    );
    for bad in [
        r#"{"size": -1}"#,
        r#"{"size": "5"}"#,
        r#"{}"#,
        r#"{"size": 5, "x": 1}"#,
    ] {
        let (s, v) = f
            .send("POST", "/servers/plain/pool/resize", Some(bad))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
    }
    let (s, v) = f
        .send("POST", "/servers/demo/pool/resize", Some(r#"{"size": 5}"#))
        .await;
    assert_eq!(
        (s, detail(&v)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Pooling not enabled for server"
        )
    );
    let (s, _) = f
        .send("POST", "/servers/nope/pool/resize", Some(r#"{"size": 5}"#))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reset_drains_and_zeroes_the_stats_counters() {
    let f = fixture().await;
    for _ in 0..3 {
        drop(
            f.pool
                .acquire(&f.plain, Principal::user("u"))
                .await
                .unwrap(),
        );
    }
    let (_, v) = f.send("GET", "/servers/plain/pool/stats", None).await;
    assert_eq!(
        (v["acquisitions"].as_u64(), v["sessions_total"].as_u64()),
        (Some(3), Some(1))
    );

    let (s, v) = f.send("POST", "/servers/plain/pool/reset", None).await;
    assert_eq!((s, &v["status"]), (StatusCode::OK, &Value::from("reset")));
    let (_, v) = f.send("GET", "/servers/plain/pool/stats", None).await;
    for field in [
        "acquisitions",
        "releases",
        "hits",
        "misses",
        "evictions",
        "sessions_total",
    ] {
        assert_eq!(v[field], 0, "{field}: {v}");
    }
    let (s, v) = f.send("POST", "/servers/demo/pool/reset", None).await;
    assert_eq!(
        (s, detail(&v)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Pooling not enabled for server"
        )
    );
    let (s, _) = f.send("POST", "/servers/nope/pool/reset", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let f = fixture().await;
    // A current-thread test: every handler records into this thread's recorder.
    let recorder = mcp_pool_gateway::metrics::prometheus_builder().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    f.send("GET", "/servers/plain/pool/stats", None).await;
    f.send("GET", "/servers/plain/pool/stats", None).await;
    f.send("GET", "/servers/secret-looking-id/pool/stats", None)
        .await;
    f.send("GET", "/no/such/route", None).await;
    record_mcp(
        "plain",
        "tools/call",
        "ok",
        std::time::Duration::from_millis(3),
    );
    record_mcp(
        "plain",
        "x-made-up/method",
        "error",
        std::time::Duration::from_millis(1),
    );

    let text = handle.render();
    for line in [
        r#"mcp_gateway_requests_total{route="/servers/{id}/pool/stats",method="GET",status="200"} 2"#,
        r#"mcp_gateway_requests_total{route="/servers/{id}/pool/stats",method="GET",status="404"} 1"#,
        r#"mcp_gateway_requests_total{route="unmatched",method="GET",status="404"} 1"#,
        r#"mcp_gateway_request_duration_seconds_count{route="/servers/{id}/pool/stats",method="GET"} 3"#,
        r#"mcp_gateway_mcp_requests_total{server="plain",method="tools/call",outcome="ok"} 1"#,
        r#"mcp_gateway_mcp_requests_total{server="plain",method="other",outcome="error"} 1"#,
        r#"mcp_gateway_mcp_request_duration_seconds_count{server="plain",method="tools/call"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(
        text.contains("mcp_gateway_request_duration_seconds_bucket{"),
        "a histogram:\n{text}"
    );
    for raw in ["secret-looking-id", "/no/such/route", "made-up"] {
        assert!(!text.contains(raw), "{raw} in:\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_has_the_operations_and_what_schemathesis_found() {
    let f = fixture().await;
    let (s, doc) = f.send("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = &doc["paths"];
    for (path, method) in [
        ("/servers/{id}/pool/sessions", "get"),
        ("/servers/{id}/pool/resize", "post"),
        ("/servers/{id}/pool/reset", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{path} {method}");
    }
    // Found by schemathesis: /health and /ready need no token, the PUT answers 415 without
    // a JSON body, and integer fields carry their ranges.
    for path in ["/health", "/ready"] {
        assert_eq!(
            paths[path]["get"]["security"],
            serde_json::json!([{}]),
            "{path}"
        );
    }
    assert!(paths["/servers/{id}/pool/config"]["put"]["responses"]["415"].is_object());
    let size = &doc["components"]["schemas"]["ResizeBody"]["properties"]["size"];
    assert_eq!(
        (&size["minimum"], &size["maximum"]),
        (&Value::from(1), &Value::from(1000))
    );
    let max_idle = &doc["components"]["schemas"]["PoolConfigUpdate"]["properties"]["max_idle_time"];
    assert_eq!(
        (&max_idle["minimum"], &max_idle["maximum"]),
        (&Value::from(60), &Value::from(86400))
    );
}
