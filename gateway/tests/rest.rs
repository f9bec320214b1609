//! The REST API in process (`oneshot`) on a real pool over the reference server on loopback.

mod common;

use std::time::{Duration, SystemTime};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use common::*;
use http_body_util::BodyExt;
use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::auth;
use serde_json::{Value, json};
use tower::ServiceExt;

const FULL_POOL_CONFIG: &str = r#"{"enabled": true, "strategy": "round_robin", "size": 5, "min_size": 2, "max_size": 10, "timeout": 30, "max_idle_time": 3600, "auto_scale": false, "health_check_interval": 60, "rebalance_interval": 300}"#;

struct Fixture {
    _upstream: ReferenceServer,
    pool: Pool,
    gateway: Gateway,
}

async fn fixture(max_body_bytes: usize) -> Fixture {
    let upstream = ReferenceServer::start().await.unwrap();
    // A password in the upstream URL: it must never come back in a response.
    let url = upstream.url().replace("http://", "http://alice:hunter2pw@");
    let endpoint = mcp_pool::Endpoint::new(url, mcp_pool::TransportKind::StreamableHttp).unwrap();
    let servers = [
        // Pooling off, as a server starts by default.
        ServerConfig::new(ServerId::new("demo").unwrap(), endpoint).pool(PoolConfig::default()),
        ServerConfig::new(ServerId::new("plain").unwrap(), upstream.endpoint())
            .pool(PoolConfig::enabled()),
    ];
    let pool = pool_of(&servers, Pool::builder());
    let mut gateway = gateway(&pool, &servers, max_body_bytes).await;
    gateway.forbidden.push("hunter2pw".into());
    Fixture {
        _upstream: upstream,
        pool,
        gateway,
    }
}

impl std::ops::Deref for Fixture {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

#[tokio::test]
async fn servers_list_and_get_redact_urls_and_404() {
    let f = fixture(4 << 20).await;
    let (s, body) = f.send("GET", "/servers", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!("demo"), json!("plain")]);
    assert!(
        v[0]["endpoints"][0]["url"]
            .as_str()
            .unwrap()
            .contains("***@"),
        "{body}"
    );
    assert_eq!(v[0]["endpoints"][0]["transport"], "streamable_http");
    assert_eq!(v[1]["pooling_enabled"], true);
    let (s, body) = f.send("GET", "/servers/demo", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = f.send("GET", "/servers/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(detail(&body).contains("Server not found"), "{body}");
}

#[tokio::test]
async fn a_full_pool_config_put_is_applied_and_saved_in_the_backend() {
    let f = fixture(4 << 20).await;
    let (s, body) = f.send("GET", "/servers/demo/pool/stats", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(detail(&body), "Pooling not enabled for server");

    let (s, body) = f
        .send("PUT", "/servers/demo/pool/config", Some(FULL_POOL_CONFIG))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["enabled"].clone(),
            v["min_size"].clone(),
            v["max_size"].clone()
        ),
        (json!(true), json!(2), json!(10))
    );
    let id = ServerId::new("demo").unwrap();
    let applied = f.pool.server_config(&id).unwrap();
    assert!(
        applied.enabled && applied.min_size == 2 && applied.rebalance_interval.as_secs() == 300
    );
    let saved = f.pool.backend().get_config(&id).await.unwrap();
    assert!(saved.is_some(), "the config is in the backend");

    let (s, body) = f.send("GET", "/servers/demo/pool/config", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["strategy"],
        "round_robin"
    );

    // Absent fields keep their current value.
    let (s, body) = f
        .send(
            "PUT",
            "/servers/demo/pool/config",
            Some(r#"{"strategy": "sticky"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["strategy"].clone(), v["min_size"].clone()),
        (json!("sticky"), json!(2))
    );

    // A call through the pool shows in the stats.
    let principal = f.pool.principal(Some("u"), &http::HeaderMap::new());
    let lease = f.pool.acquire(&id, principal).await.unwrap();
    drop(lease);
    let (s, body) = f.send("GET", "/servers/demo/pool/stats", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pool_id"], "demo");
    assert_eq!(v["strategy"], "sticky");
    assert_eq!(v["acquisitions"], 1);
    assert_eq!(v["misses"], 1);
    assert!(v["sessions_total"].as_u64().unwrap() >= 1, "{body}");
    let (s, _) = f.send("GET", "/servers/nope/pool/stats", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn out_of_range_fields_are_422_naming_field_value_and_range() {
    let f = fixture(4 << 20).await;
    let before = f
        .pool
        .server_config(&ServerId::new("plain").unwrap())
        .unwrap();
    for (field, value, range) in [
        ("size", 0, "1 to 1000"),
        ("min_size", 1001, "1 to 1000"),
        ("max_size", 5000, "1 to 1000"),
        ("timeout", 301, "1 to 300"),
        ("max_idle_time", 59, "60 to 86400"),
        ("health_check_interval", 5, "10 to 3600"),
        ("rebalance_interval", 4000, "60 to 3600"),
        ("max_lifetime", 10, "60 to 86400"),
        ("health_check_threshold", 101, "0 to 100"),
        ("session_concurrency", 257, "1 to 256"),
    ] {
        let body = format!(r#"{{"enabled": false, "{field}": {value}}}"#);
        let (s, text) = f
            .send("PUT", "/servers/plain/pool/config", Some(&body))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {text}");
        let d = detail(&text);
        assert!(
            d.contains(field) && d.contains(&value.to_string()) && d.contains(range),
            "{d}"
        );
    }
    let (s, text) = f
        .send(
            "PUT",
            "/servers/plain/pool/config",
            Some(r#"{"strategy": "fastest"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&text).contains("round_robin"), "{text}");
    let (s, text) = f
        .send(
            "PUT",
            "/servers/plain/pool/config",
            Some(r#"{"min_size": 8, "max_size": 4}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&text).contains("min_size"), "{text}");
    // Nothing applied (not even `enabled: false` of the rejected bodies).
    assert_eq!(
        f.pool
            .server_config(&ServerId::new("plain").unwrap())
            .unwrap(),
        before
    );
    let (s, text) = f
        .send("PUT", "/servers/plain/pool/config", Some("{not json"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(!detail(&text).is_empty());
    let (s, text) = f
        .send(
            "PUT",
            "/servers/plain/pool/config",
            Some(r#"{"colour": 1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail(&text).contains("colour"), "{text}");
    let (s, _) = f.send("PUT", "/servers/nope/pool/config", Some("{}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sizes_a_body_leaves_out_follow_the_sizes_it_sets() {
    let f = fixture(4 << 20).await;
    // `plain` runs sizes 1 / 5 / 10 (min / target / max); each body applies over the last.
    for (body, sizes) in [
        (r#"{"max_size": 4}"#, (1, 4, 4)),
        (r#"{"min_size": 6}"#, (6, 6, 6)),
        (r#"{"size": 2, "max_size": 3}"#, (2, 2, 3)),
    ] {
        let (s, text) = f
            .send("PUT", "/servers/plain/pool/config", Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (
                v["min_size"].clone(),
                v["size"].clone(),
                v["max_size"].clone()
            ),
            (json!(sizes.0), json!(sizes.1), json!(sizes.2)),
            "{body}"
        );
    }
    // The same rule for a server's `pool`.
    let (s, text) = f
        .send(
            "PUT",
            "/servers/plain",
            Some(r#"{"pool": {"max_size": 2}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["pool"]["size"].clone(), v["pool"]["max_size"].clone()),
        (json!(2), json!(2))
    );
}

#[tokio::test]
async fn auth_401_without_with_expired_and_with_foreign_token() {
    let f = fixture(4 << 20).await;
    let expired = auth::mint(
        &auth::JwtSecret::new(SECRET).unwrap(),
        "admin",
        auth::Role::Admin,
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    )
    .unwrap();
    let foreign = auth::mint(
        &auth::JwtSecret::new("another-key-of-at-least-32-bytes-0123").unwrap(),
        "admin",
        auth::Role::Admin,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    for (token, words) in [
        (None, "Not authenticated"),
        (Some(expired.as_str()), "expired"),
        (Some(foreign.as_str()), "signature"),
    ] {
        for path in ["/servers", "/servers/pools", "/metrics", "/openapi.json"] {
            let req = Request::builder().uri(path);
            let req = match token {
                Some(t) => req.header(header::AUTHORIZATION, format!("Bearer {t}")),
                None => req,
            };
            let resp = f
                .app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let d = detail(std::str::from_utf8(&bytes).unwrap());
            assert!(d.contains(words), "{d}");
        }
    }
    for path in ["/health", "/ready"] {
        let (s, _) = f.send_as(None, "GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn big_body_is_413_and_unknown_routes_are_json() {
    let f = fixture(1024).await;
    let big = format!(r#"{{"enabled": true, "strategy": "{}"}}"#, "x".repeat(4096));
    let (s, text) = f
        .send("PUT", "/servers/plain/pool/config", Some(&big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(detail(&text).contains("1024"), "{text}");
    let (s, text) = f.send("GET", "/nowhere", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!detail(&text).is_empty());
    let (s, text) = f.send("DELETE", "/servers/pools", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!detail(&text).is_empty());
}

#[tokio::test]
async fn pools_health_strategies_drain_metrics() {
    let f = fixture(4 << 20).await;
    let id = ServerId::new("plain").unwrap();
    let lease = f
        .pool
        .acquire(&id, f.pool.principal(None, &http::HeaderMap::new()))
        .await
        .unwrap();
    drop(lease);
    let (s, body) = f.send("GET", "/servers/pools", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["server_id"], "plain");
    assert_eq!(v[1]["sessions_total"], 1);
    let (s, body) = f.send("GET", "/servers/pools/health", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["status"], "unknown", "{body}");
    assert_eq!(v[1]["status"], "healthy", "{body}");
    let (s, body) = f.send("GET", "/servers/pools/strategies", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "round_robin",
            "least_connections",
            "sticky",
            "weighted",
            "none",
            "peak_ewma"
        ]
    );
    assert!(v[2]["when_to_use"].as_str().unwrap().contains("stateful"));

    let (s, _) = f.send("POST", "/servers/plain/pool/drain", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = f.send("GET", "/servers/plain/pool/stats", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["sessions_total"],
        0,
        "{body}"
    );
    let (s, _) = f.send("POST", "/servers/nope/pool/drain", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = f.send("GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    f.pool.close().await;
    let (s, body) = f.send_as(None, "GET", "/ready", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail(&body).contains("closed"));
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let f = fixture(4 << 20).await;
    let (s, body) = f.send("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        v["openapi"]
    );
    for (path, method) in [
        ("/servers", "get"),
        ("/servers", "post"),
        ("/servers/{id}", "get"),
        ("/servers/{id}", "put"),
        ("/servers/{id}", "delete"),
        ("/servers/{id}/pool/config", "get"),
        ("/servers/{id}/pool/config", "put"),
        ("/servers/{id}/pool/stats", "get"),
        ("/servers/{id}/pool/drain", "post"),
        ("/servers/pools", "get"),
        ("/servers/pools/health", "get"),
        ("/servers/pools/strategies", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            v["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(v["paths"]["/servers/{id}/pool/stats"]["get"]["responses"]["503"].is_object());
    assert!(v["components"]["schemas"]["PoolConfigUpdate"].is_object());
    assert!(v["components"]["schemas"]["ServerBody"].is_object());
    assert!(v["paths"]["/servers"]["post"]["responses"]["409"].is_object());
}

#[test]
fn config_errors_name_variable_value_and_allowed() {
    use mcp_pool_gateway::GatewayConfig;
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let e = GatewayConfig::from_lookup(None, None, vars(&[])).unwrap_err();
    assert_eq!(e.setting, "JWT_SECRET_KEY");
    assert!(
        e.to_string().contains("AUTH_REQUIRED") && e.to_string().contains("not set"),
        "{e}"
    );
    let e = GatewayConfig::from_lookup(
        None,
        None,
        vars(&[("JWT_SECRET_KEY", SECRET), ("PORT", "99999")]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("PORT")
            && e.to_string().contains("99999")
            && e.to_string().contains("65535"),
        "{e}"
    );
    let e =
        GatewayConfig::from_lookup(None, None, vars(&[("AUTH_REQUIRED", "maybe")])).unwrap_err();
    assert!(e.to_string().contains("true or false"), "{e}");
    let e = GatewayConfig::from_lookup(
        None,
        None,
        vars(&[("JWT_SECRET_KEY", SECRET), ("MAX_BODY_BYTES", "0")]),
    )
    .unwrap_err();
    assert_eq!(e.setting, "MAX_BODY_BYTES");
    let c = GatewayConfig::from_lookup(
        Some("0.0.0.0"),
        Some("0"),
        vars(&[("JWT_SECRET_KEY", "sekrit-value-sekrit-value-sekrit-value")]),
    )
    .unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.max_body_bytes),
        ("0.0.0.0", 0, 4 << 20)
    );
    assert!(!format!("{c:?}").contains("sekrit-value"));
    // A short key stops start-up, saying how to make one (RFC 7518 §3.2: 256 bits for HS256).
    let e = GatewayConfig::from_lookup(None, None, vars(&[("JWT_SECRET_KEY", "short-key")]))
        .unwrap_err();
    assert!(
        e.to_string().contains("at least 32 bytes") && e.to_string().contains("openssl rand"),
        "{e}"
    );
    assert!(!e.to_string().contains("short-key"), "{e}");
}
