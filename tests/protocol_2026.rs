//! Upstreams on protocol 2026-07-28: endpoints with `lifecycle = "discover"`
//! or `"auto"` against rmcp 3.9 servers that speak 2026-07-28 only, both, or only the
//! `initialize` lifecycle.

mod common;

use common::*;
use mcp_pool::{
    Endpoint, Lifecycle, Pool, PoolConfig, Principal, ServerConfig,
    health::{HealthCheckConfig, HealthCheckMethod, HealthOutcome, check_session},
    rmcp::model::ProtocolVersion,
};
use mcp_pool_conformance::{Protocols, ReferenceServer, ServerOptions};

async fn upstream(protocols: Protocols) -> ReferenceServer {
    ReferenceServer::start_with(ServerOptions::default().with_protocols(protocols))
        .await
        .unwrap()
}

fn pool(upstream: &ReferenceServer, lifecycle: Lifecycle) -> (Pool, mcp_pool::ServerId) {
    let id = server_id("modern");
    let endpoint = upstream.endpoint().with_lifecycle(lifecycle).unwrap();
    let config = PoolConfig {
        min_size: 1,
        size: 1,
        max_size: 1,
        ..PoolConfig::enabled()
    };
    let pool = Pool::builder()
        .server(ServerConfig::new(id.clone(), endpoint).pool(config))
        .build()
        .unwrap();
    (pool, id)
}

fn version(lease: &mcp_pool::Lease) -> Option<ProtocolVersion> {
    lease.peer_info().map(|info| info.protocol_version.clone())
}

#[tokio::test]
async fn a_discover_endpoint_is_pooled_without_initialize_or_server_sessions() {
    let server = upstream(Protocols::ModernOnly).await;
    let (pool, id) = pool(&server, Lifecycle::Discover);
    let user = Principal::user("u");
    let mut sessions = Vec::new();
    for i in 0..10 {
        let lease = pool.acquire(&id, user).await.unwrap();
        assert_eq!(version(&lease), Some(ProtocolVersion::V_2026_07_28));
        let reply = lease.call_tool(echo(&format!("call {i}"))).await.unwrap();
        assert_eq!(text(&reply), format!("call {i}"));
        sessions.push(lease.session_id());
    }
    sessions.dedup();
    assert_eq!(sessions.len(), 1, "one pooled session served every call");
    let stats = server.stats();
    assert_eq!(stats.initializes, 0, "2026-07-28 has no initialize");
    assert_eq!(
        stats.discovers, 1,
        "one server/discover, when the session was made"
    );
    assert_eq!(stats.sessions_opened, 0, "the server keeps no session");
    assert_eq!(stats.tool_calls, 10);

    // The health check sends tools/list, never a session-less ping.
    let lease = pool.acquire(&id, user).await.unwrap();
    assert_eq!(
        check_session(&lease, &HealthCheckConfig::default()).await,
        HealthOutcome::Healthy {
            method: HealthCheckMethod::ListTools
        }
    );
    assert_eq!(server.stats().pings, 0);
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn progress_of_a_2026_call_reaches_its_caller_before_the_result() {
    let server = upstream(Protocols::ModernOnly).await;
    let (pool, id) = pool(&server, Lifecycle::Discover);
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let args = serde_json::json!({"steps": 3});
    let call = mcp_pool::rmcp::model::CallToolRequestParams::new("progress")
        .with_arguments(args.as_object().cloned().unwrap());
    let result = lease
        .call_tool_with(call, mcp_pool::CallOptions::new().notifications(tx))
        .await
        .unwrap();
    assert_eq!(text(&result), "done 3");
    // Every step is in the channel when the result is back: routed in wire order.
    let mut steps = Vec::new();
    while let Ok(notification) = rx.try_recv() {
        if let mcp_pool::rmcp::model::ServerNotification::ProgressNotification(p) = notification {
            steps.push(p.params.progress);
        }
    }
    assert_eq!(steps, [1.0, 2.0, 3.0]);
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn an_auto_endpoint_speaks_2026_07_28_to_a_server_that_can() {
    let server = upstream(Protocols::All).await;
    let (pool, id) = pool(&server, Lifecycle::Auto);
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert_eq!(version(&lease), Some(ProtocolVersion::V_2026_07_28));
    lease.call_tool(echo("hi")).await.unwrap();
    assert_eq!(server.stats().initializes, 0);
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn an_auto_endpoint_falls_back_to_initialize_on_an_older_server() {
    let server = upstream(Protocols::LegacyOnly).await;
    let (pool, id) = pool(&server, Lifecycle::Auto);
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    assert_eq!(version(&lease), Some(ProtocolVersion::V_2025_11_25));
    // A real session: the counter keeps its state across pooled calls.
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    drop(lease);
    let lease = pool.acquire(&id, user).await.unwrap();
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "2");
    let stats = server.stats();
    assert_eq!((stats.initializes, stats.sessions_opened), (1, 1));
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn a_discover_endpoint_on_an_older_server_fails_to_connect() {
    let server = upstream(Protocols::LegacyOnly).await;
    let (pool, id) = pool(&server, Lifecycle::Discover);
    let error = pool.acquire(&id, Principal::user("u")).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&server.url()), "{message}");
    assert_eq!(server.stats().initializes, 0, "discover never falls back");
    pool.close().await;
}

#[tokio::test]
async fn an_initialize_endpoint_on_a_2026_only_server_fails_to_connect() {
    let server = upstream(Protocols::ModernOnly).await;
    let (pool, id) = pool(&server, Lifecycle::Initialize);
    let error = pool.acquire(&id, Principal::user("u")).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.ends_with(
            "the server refused initialize: it supports protocol versions 2026-07-28; an \
             endpoint of a 2026-07-28 server takes lifecycle = \"discover\" (or \"auto\")"
        ),
        "{message}"
    );
    pool.close().await;
}

#[test]
fn lifecycle_is_read_from_configuration_and_refused_on_sse() {
    let endpoint: Endpoint = serde_json::from_value(serde_json::json!({
        "url": "http://127.0.0.1:9/mcp",
        "transport": "streamable_http",
        "lifecycle": "discover",
    }))
    .unwrap();
    assert_eq!(endpoint.lifecycle, Lifecycle::Discover);
    endpoint.validate().unwrap();
    let back = serde_json::to_value(&endpoint).unwrap();
    assert_eq!(back["lifecycle"], "discover");
    // The default is not written out.
    let plain = Endpoint::new(
        "http://127.0.0.1:9/mcp",
        mcp_pool::TransportKind::StreamableHttp,
    )
    .unwrap();
    assert!(
        serde_json::to_value(&plain)
            .unwrap()
            .get("lifecycle")
            .is_none()
    );

    let sse = Endpoint::new("http://127.0.0.1:9/sse", mcp_pool::TransportKind::Sse).unwrap();
    let error = sse.with_lifecycle(Lifecycle::Auto).unwrap_err().to_string();
    assert_eq!(
        error,
        "lifecycle auto does not fit transport sse: it speaks only initialize (protocol \
         2024-11-05); use streamable_http for discover or auto"
    );
    let bad = serde_json::from_value::<Endpoint>(serde_json::json!({
        "url": "http://127.0.0.1:9/mcp",
        "transport": "streamable_http",
        "lifecycle": "handshake",
    }))
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("initialize, discover, auto") || bad.contains("`initialize`"),
        "{bad}"
    );
}
