//! Interop with peers no one here wrote: the official MCP SDKs as upstream servers.
//!
//! | peer | transport | script |
//! |---|---|---|
//! | Python SDK (`mcp` from PyPI), FastMCP / `MCPServer` | streamable HTTP, legacy SSE | `interop/python/server.py` |
//! | TypeScript SDK (`@modelcontextprotocol/sdk` from npm) | streamable HTTP | `interop/node/server.cjs` |
//!
//! Each test starts the peer as a child process on a free loopback port (the peer prints
//! `LISTENING <port>`), points a pool at it with the matching transport, makes pooled calls,
//! and reads the peer's own counters (`GET /stats`, counted from the JSON-RPC bodies it
//! received) to check that many calls went over one `initialize`, that identity headers
//! arrived and internal ones did not. Then it kills the peer and checks that the pooled
//! session fails its next call at once, as a transport failure.
//!
//! The peers are installed, pinned, by `interop/setup.sh`, and found through
//! `MCP_POOL_INTEROP_PYTHON` (the venv's python) and `MCP_POOL_INTEROP_NODE_DIR` (the npm
//! prefix holding `node_modules`), which `.ci/run` sets. Without them a test prints why it
//! skips and passes; with `MCP_POOL_REQUIRE_SERVICES=1` it fails instead.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::*;
use mcp_pool::{
    AcquireRequest, Endpoint, Pool, PoolConfig, PoolError, ServerConfig, TransportKind,
    traits::is_transport_failure,
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdin, Command},
    time::timeout,
};

/// The Python interpreter of a venv with the MCP Python SDK.
const PYTHON_VAR: &str = "MCP_POOL_INTEROP_PYTHON";
/// The npm prefix whose `node_modules` holds the MCP TypeScript SDK.
const NODE_DIR_VAR: &str = "MCP_POOL_INTEROP_NODE_DIR";
/// Set to `1` to fail, not skip, when a peer is not installed.
const REQUIRE_VAR: &str = "MCP_POOL_REQUIRE_SERVICES";

/// Pooled calls per test.
const CALLS: usize = 25;
/// How long a peer may take to start (interpreter start and imports on a loaded machine).
const STARTUP: Duration = Duration::from_secs(60);
/// Bound on a call or a stats request.
const BOUND: Duration = Duration::from_secs(15);

/// The value of `var`, or `None` after printing why the test skips. Panics instead of
/// skipping when `MCP_POOL_REQUIRE_SERVICES=1`.
fn peer_setting(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let why = format!(
                "{var} is not set: run `bash interop/setup.sh` and export {var} as it says \
                 (.ci/run does both)"
            );
            if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
                panic!("{why}; {REQUIRE_VAR}=1 makes a missing interop peer a failure");
            }
            eprintln!("skipping the interop test: {why}");
            None
        }
    }
}

/// A peer server running as a child process. Killed when dropped; it also exits by itself
/// when its stdin closes, so it never outlives the test process.
struct PeerServer {
    name: &'static str,
    child: Child,
    _stdin: ChildStdin,
    port: u16,
}

impl PeerServer {
    async fn start(name: &'static str, mut command: Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: could not start the peer server: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = timeout(STARTUP, async {
            while let Some(line) = lines.next_line().await.expect("the peer's stdout") {
                if let Some(port) = line.trim().strip_prefix("LISTENING ") {
                    return port.parse::<u16>().expect("a port number");
                }
                eprintln!("{name}: {line}");
            }
            panic!("{name}: the peer exited before listening");
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the peer did not listen within {STARTUP:?}"));
        // Keep reading its output, so a chatty peer never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{name}: {line}");
            }
        });
        Self {
            name,
            child,
            _stdin: stdin,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The peer's counters: `initializes`, `tool_calls`, `http_requests`, `header_names`.
    async fn stats(&self) -> Value {
        let request = async { reqwest::get(self.url("/stats")).await?.text().await };
        let body = timeout(BOUND, request)
            .await
            .unwrap_or_else(|_| panic!("{}: /stats did not answer", self.name))
            .unwrap_or_else(|e| panic!("{}: /stats: {e}", self.name));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: /stats {body:?}: {e}", self.name))
    }

    async fn kill(&mut self) {
        self.child.kill().await.expect("kill the peer");
    }
}

/// Pooled calls against `peer` at `endpoint`: `CALLS` echo calls, each on a lease of the same
/// key, all over one upstream session (one `initialize` at the peer); identity headers
/// forwarded, internal ones not; then the peer dies and the pooled session's next call fails
/// at once as a transport failure.
async fn pooled_calls_reuse_one_session(mut peer: PeerServer, endpoint: Endpoint) {
    let name = peer.name;
    let id = server_id("peer");
    let pool = Pool::builder()
        .server(ServerConfig::new(id.clone(), endpoint).pool(PoolConfig {
            max_size: 2,
            size: 2,
            ..PoolConfig::enabled()
        }))
        .build()
        .expect("valid pool");
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer interop".parse().unwrap());
    headers.insert("x-mcp-session-id", "downstream-session".parse().unwrap());

    let mut first_session = None;
    for i in 0..CALLS {
        let lease = timeout(
            BOUND,
            pool.acquire_with(AcquireRequest::new(&id).headers(&headers)),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: acquire hung"))
        .unwrap_or_else(|e| panic!("{name}: acquire {i}: {e}"));
        let session = *first_session.get_or_insert(lease.session_id());
        assert_eq!(
            lease.session_id(),
            session,
            "{name}: call {i} reuses the session"
        );
        assert_eq!(lease.is_hit(), i > 0, "{name}: call {i}");
        let message = format!("interop-{i}");
        let result = timeout(BOUND, lease.call_tool(echo(&message)))
            .await
            .unwrap_or_else(|_| panic!("{name}: call {i} hung"))
            .unwrap_or_else(|e| panic!("{name}: call {i}: {e}"));
        assert_eq!(text(&result), message, "{name}: call {i}");
    }

    let stats = peer.stats().await;
    assert_eq!(
        stats["initializes"], 1,
        "{name}: one initialize for {CALLS} calls: {stats}"
    );
    assert_eq!(stats["tool_calls"], CALLS, "{name}: {stats}");
    let header_names: Vec<&str> = stats["header_names"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(header_names.contains(&"authorization"), "{name}: {stats}");
    assert!(
        !header_names.contains(&"x-mcp-session-id"),
        "{name}: {stats}"
    );
    let server = &pool.stats().servers[0];
    assert_eq!(
        (server.hits, server.misses),
        (CALLS as u64 - 1, 1),
        "{name}"
    );

    peer.kill().await;
    // The pooled session is dead now. Either the pool already knows (SSE and WebSocket report
    // a closed stream: it is never handed out, and creating a replacement fails), or its next
    // call fails as a transport failure and evicts it. Nothing hangs either way.
    let acquired = timeout(
        BOUND,
        pool.acquire_with(AcquireRequest::new(&id).headers(&headers)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: an acquire after the kill hung"));
    match acquired {
        Err(PoolError::Create { .. }) => {
            assert_eq!(
                pool.stats().servers[0].evictions,
                1,
                "{name}: the dead session left"
            );
        }
        Err(other) => panic!("{name}: acquire after the kill: {other}"),
        Ok(lease) => {
            let error = timeout(BOUND, lease.call_tool(echo("after")))
                .await
                .unwrap_or_else(|_| panic!("{name}: a call to a killed peer hung"))
                .expect_err("a call to a killed peer fails");
            assert!(is_transport_failure(&error), "{name}: {error:?}");
            assert!(lease.is_broken(), "{name}: the lease is evicted");
            drop(lease);
        }
    }
    pool.close().await;
}

fn python_peer(python: &str, transport: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/server.py");
    let mut command = Command::new(python);
    command.arg(script).args(["--transport", transport]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_streamable_http() {
    let Some(python) = peer_setting(PYTHON_VAR) else {
        return;
    };
    let peer = PeerServer::start(
        "python streamable-http",
        python_peer(&python, "streamable-http"),
    )
    .await;
    let endpoint = Endpoint::new(peer.url("/mcp"), TransportKind::StreamableHttp).unwrap();
    pooled_calls_reuse_one_session(peer, endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_sse() {
    let Some(python) = peer_setting(PYTHON_VAR) else {
        return;
    };
    let peer = PeerServer::start("python sse", python_peer(&python, "sse")).await;
    let endpoint = Endpoint::new(peer.url("/sse"), TransportKind::Sse).unwrap();
    pooled_calls_reuse_one_session(peer, endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_over_streamable_http() {
    let Some(node_dir) = peer_setting(NODE_DIR_VAR) else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node/server.cjs");
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("NODE_PATH", Path::new(&node_dir).join("node_modules"));
    let peer = PeerServer::start("typescript streamable-http", command).await;
    let endpoint = Endpoint::new(peer.url("/mcp"), TransportKind::StreamableHttp).unwrap();
    pooled_calls_reuse_one_session(peer, endpoint).await;
}
