//! Helpers shared by the pool's integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod peers;

use std::{sync::Arc, time::Duration};

use mcp_pool::{
    AcquireRequest, CallOptions, Endpoint, Pool, PoolBuilder, PoolConfig, PoolError, ServerConfig,
    ServerId, TransportKind,
    rmcp::model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, ServerResult,
    },
};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};

pub fn server_id(name: &str) -> ServerId {
    ServerId::new(name).expect("valid test server id")
}

pub fn echo(message: &str) -> CallToolRequestParams {
    let args = serde_json::json!({ "message": message });
    CallToolRequestParams::new("echo").with_arguments(args.as_object().cloned().unwrap_or_default())
}

/// A call of the reference server's `sleep` tool: it answers after `ms` milliseconds.
pub fn sleep_for(ms: u64) -> CallToolRequestParams {
    let args = serde_json::json!({ "ms": ms });
    CallToolRequestParams::new("sleep")
        .with_arguments(args.as_object().cloned().unwrap_or_default())
}

pub fn counter() -> CallToolRequestParams {
    CallToolRequestParams::new("counter")
}

pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

/// A pool with one server, `name`, on `endpoint` with `config`.
pub fn one_server_pool(name: &str, endpoint: Endpoint, config: PoolConfig) -> (Pool, ServerId) {
    let id = server_id(name);
    let pool = Pool::builder()
        .server(ServerConfig::new(id.clone(), endpoint).pool(config))
        .build()
        .expect("valid pool");
    (pool, id)
}

/// A pool with one server, `reference`, on `upstream` over streamable HTTP.
pub fn http_pool(upstream: &ReferenceServer, config: PoolConfig) -> (Pool, ServerId) {
    http_pool_with(upstream, config, Pool::builder())
}

pub fn http_pool_with(
    upstream: &ReferenceServer,
    config: PoolConfig,
    builder: PoolBuilder,
) -> (Pool, ServerId) {
    let id = server_id("reference");
    let pool = builder
        .server(ServerConfig::new(id.clone(), upstream.endpoint()).pool(config))
        .build()
        .expect("valid pool");
    (pool, id)
}

/// A pool whose `streamable_http` endpoints are served in process by the reference handler,
/// for tests on tokio's paused clock.
pub fn duplex_pool(
    config: PoolConfig,
    builder: PoolBuilder,
) -> (Pool, ServerId, Arc<DuplexTransport>) {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    let id = server_id("duplex");
    let endpoint = Endpoint::new("http://duplex.invalid/mcp", TransportKind::StreamableHttp)
        .expect("valid url");
    let pool = builder
        .transport(transport.clone())
        .server(ServerConfig::new(id.clone(), endpoint).pool(config))
        .build()
        .expect("valid pool");
    (pool, id, transport)
}

/// A `streamable_http` endpoint at `url`.
pub fn http_endpoint(url: &str) -> Endpoint {
    Endpoint::new(url, TransportKind::StreamableHttp).expect("valid url")
}

/// `max_size` sessions, all of them kept warm (`size` = `max_size`, `min_size` 1), an acquire
/// bounded by 2 s: the paused-clock tests' pool config.
pub fn warm(max_size: u32) -> PoolConfig {
    PoolConfig {
        max_size,
        size: max_size,
        min_size: 1,
        timeout: Duration::from_secs(2),
        ..PoolConfig::enabled()
    }
}

pub fn pooled(max_size: u32) -> PoolConfig {
    PoolConfig {
        max_size,
        size: max_size.min(5),
        ..PoolConfig::enabled()
    }
}

/// `echo` of `message` through [`Pool::call`], as a gateway forwards a request.
pub async fn pooled_echo(pool: &Pool, id: &ServerId, message: &str) -> Result<String, PoolError> {
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(echo(message)));
    match pool
        .call(
            AcquireRequest::new(id).user("u"),
            request,
            CallOptions::new(),
        )
        .await?
    {
        ServerResult::CallToolResult(result) => Ok(text(&result)),
        other => panic!("not a tool result: {other:?}"),
    }
}

/// The call deadline of the upstream-restart tests' pools: a call that waits for it fails them.
pub const RESTART_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What a call after an upstream restart may take at most: well below the call deadline.
pub const RESTART_BOUND: Duration = Duration::from_secs(5);

/// A pool of one server `name` on `endpoint` with `config`, its calls bounded by
/// [`RESTART_CALL_TIMEOUT`].
pub fn restart_pool(name: &str, endpoint: &Endpoint, config: PoolConfig) -> (Pool, ServerId) {
    let id = server_id(name);
    let pool = Pool::builder()
        .server(
            ServerConfig::new(id.clone(), endpoint.clone())
                .pool(config)
                .call_timeout(RESTART_CALL_TIMEOUT),
        )
        .build()
        .expect("valid pool");
    (pool, id)
}
