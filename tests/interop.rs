//! Interop with peers no one here wrote: the official MCP SDKs as upstream servers.
//!
//! | peer | transport | script |
//! |---|---|---|
//! | Python SDK (`mcp` from PyPI), FastMCP / `MCPServer` | streamable HTTP, legacy SSE | `interop/python/server.py` |
//! | TypeScript SDK (`@modelcontextprotocol/sdk` from npm) | streamable HTTP | `interop/node/server.cjs` |
//! | `@modelcontextprotocol/server-everything` (npm, the MCP reference server) | streamable HTTP, legacy SSE | `interop/node/everything.mjs` |
//! | the same, as a stdio server | stdio (the pool starts `node dist/index.js stdio`) | — |
//!
//! Each test starts the peer as a child process on a free loopback port (the peer prints
//! `LISTENING <port>`), points a pool at it with the matching transport, makes pooled calls,
//! and reads the peer's own counters (`GET /stats`, counted from the JSON-RPC bodies it
//! received) to check that many calls went over one `initialize`, that identity headers
//! arrived and internal ones did not. Then it kills the peer and checks that the pooled
//! session fails its next call at once, as a transport failure. server-everything has no
//! counters of its own: its tests check pooled calls and session reuse from the pool's side.
//! The restart tests kill a peer between two pooled calls and start it again on the same port:
//! the next call answers on a fresh session (round robin) or tells a sticky conversation that
//! its state is gone, and never waits for the call timeout on the dead session.
//!
//! The peers are installed, pinned, by `interop/setup.sh`, and found through
//! `MCP_POOL_INTEROP_PYTHON` (the venv's python) and `MCP_POOL_INTEROP_NODE_DIR` (the npm
//! prefix holding `node_modules`), which `.ci/run` sets. Without them a test prints why it
//! skips and passes; with `MCP_POOL_REQUIRE_SERVICES=1` it fails instead.

mod common;

use std::{path::Path, time::Duration};

use common::{peers::*, *};
use mcp_pool::{
    AcquireRequest, Endpoint, Pool, PoolConfig, PoolError, Principal, ServerConfig, ServerId,
    StrategyKind, TransportKind, traits::is_transport_failure,
};
use mcp_pool_conformance::services;
use serde_json::Value;
use tokio::{process::Command, time::timeout};

/// Pooled calls per test.
const CALLS: usize = 25;

/// The peer tests' pool config: two sessions, both kept warm.
fn two_sessions() -> PoolConfig {
    PoolConfig {
        max_size: 2,
        size: 2,
        ..PoolConfig::enabled()
    }
}

/// A pool of `strategy` on `endpoint` for the restart tests ([`restart_pool`]).
fn peer_pool(endpoint: &Endpoint, strategy: StrategyKind) -> (Pool, ServerId) {
    let config = PoolConfig {
        strategy,
        ..two_sessions()
    };
    restart_pool("peer", endpoint, config)
}

/// The peer restarted between two pooled calls (killed, then started again by `restart` on
/// the same port). Round robin: the next call answers, on a fresh session. Sticky: the
/// conversation's next call fails or runs on a session whose lease says it was rebound, never
/// silently on a new one. Neither waits for the 30 s call timeout. `echoed` is the peer's
/// answer to `echo`.
async fn restart_between_calls(
    mut peer: PeerServer,
    endpoint: Endpoint,
    restart: impl FnOnce(u16) -> Command,
    echoed: impl Fn(&str) -> String,
) {
    let name = peer.name;
    let (round_robin, rr) = peer_pool(&endpoint, StrategyKind::RoundRobin);
    let (sticky, st) = peer_pool(&endpoint, StrategyKind::Sticky);
    let conversation = || {
        sticky.acquire_with(
            AcquireRequest::new(&st)
                .principal(Principal::user("u"))
                .downstream_session("conversation-1"),
        )
    };
    assert_eq!(
        pooled_echo(&round_robin, &rr, "before").await.unwrap(),
        echoed("before"),
        "{name}"
    );
    let dead_rr = round_robin.sessions(&rr).unwrap()[0].session;
    let lease = conversation().await.unwrap();
    assert_eq!(
        text(&lease.call_tool(echo("before")).await.unwrap()),
        echoed("before")
    );
    let dead_sticky = lease.session_id();
    drop(lease);

    let port = peer.port;
    peer.restart(restart(port)).await;

    let started = tokio::time::Instant::now();
    let answer = timeout(RESTART_BOUND, pooled_echo(&round_robin, &rr, "after"))
        .await
        .unwrap_or_else(|_| panic!("{name}: round robin: the call after the restart hung"));
    let took = started.elapsed();
    eprintln!("{name}: round robin: the call after the restart answered in {took:?}");
    assert_eq!(answer.unwrap(), echoed("after"), "{name}");
    let sessions = round_robin.sessions(&rr).unwrap();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|s| s.session != dead_rr),
        "{name}: answered on a fresh session: {sessions:?}"
    );

    let started = tokio::time::Instant::now();
    let lease = conversation().await.unwrap();
    let first = timeout(RESTART_BOUND, lease.call_tool(echo("after")))
        .await
        .unwrap_or_else(|_| panic!("{name}: sticky: the call after the restart hung"));
    let took = started.elapsed();
    eprintln!(
        "{name}: sticky: the call after the restart {} in {took:?}",
        if first.is_ok() { "answered" } else { "failed" }
    );
    match first {
        Ok(result) => {
            assert!(lease.is_rebound(), "{name}: a fresh session must say so");
            assert_ne!(lease.session_id(), dead_sticky, "{name}");
            assert_eq!(text(&result), echoed("after"), "{name}");
        }
        Err(error) => {
            assert!(is_transport_failure(&error), "{name}: {error:?}");
            assert_eq!(lease.session_id(), dead_sticky, "{name}");
            drop(lease);
            let next = conversation().await.unwrap();
            assert!(
                next.is_rebound(),
                "{name}: the conversation's next lease is a rebind"
            );
            assert_ne!(next.session_id(), dead_sticky, "{name}");
        }
    }
    assert_eq!(sticky.stats().servers[0].rebinds, 1, "{name}");
    round_robin.close().await;
    sticky.close().await;
}

/// Pooled calls against `peer` at `endpoint`: `CALLS` echo calls, each on a lease of the same
/// key, all over one upstream session (one `initialize` at the peer); identity headers
/// forwarded, internal ones not; then the peer dies and the pooled session's next call fails
/// at once as a transport failure.
async fn pooled_calls_reuse_one_session(mut peer: PeerServer, endpoint: Endpoint) {
    let name = peer.name;
    let (pool, id) = one_server_pool("peer", endpoint, two_sessions());
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

/// The Python SDK peer over `kind` (streamable HTTP or SSE) and its endpoint; `None` (after
/// saying why) when the peer is not installed.
async fn python(kind: TransportKind) -> Option<(PeerServer, Endpoint)> {
    let python = services::interop_python()?;
    let (name, transport, path) = match kind {
        TransportKind::Sse => ("python sse", "sse", "/sse"),
        _ => ("python streamable-http", "streamable-http", "/mcp"),
    };
    let peer = PeerServer::start(name, python_peer(&python, transport)).await;
    let endpoint = Endpoint::new(peer.url(path), kind).unwrap();
    Some((peer, endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_streamable_http() {
    let Some((peer, endpoint)) = python(TransportKind::StreamableHttp).await else {
        return;
    };
    pooled_calls_reuse_one_session(peer, endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_restarted_between_calls_over_streamable_http() {
    let Some((peer, endpoint)) = python(TransportKind::StreamableHttp).await else {
        return;
    };
    let python = services::interop_python().expect("set: the peer started");
    let restart = move |port: u16| {
        let mut command = python_peer(&python, "streamable-http");
        command.args(["--port", &port.to_string()]);
        command
    };
    restart_between_calls(peer, endpoint, restart, str::to_owned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_sse() {
    let Some((peer, endpoint)) = python(TransportKind::Sse).await else {
        return;
    };
    pooled_calls_reuse_one_session(peer, endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_over_streamable_http() {
    let Some(node_dir) = services::interop_node_dir() else {
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

/// Pooled calls of server-everything's `echo` tool, which answers `"Echo: <message>"`: each
/// on a lease of the same key, all over one upstream session (one miss, then hits).
async fn pooled_echo_through_everything(name: &str, endpoint: Endpoint) {
    const ECHOES: usize = 5;
    let (pool, id) = one_server_pool("everything", endpoint, two_sessions());
    let mut first_session = None;
    for i in 0..ECHOES {
        let lease = timeout(BOUND, pool.acquire_with(AcquireRequest::new(&id)))
            .await
            .unwrap_or_else(|_| panic!("{name}: acquire hung"))
            .unwrap_or_else(|e| panic!("{name}: acquire {i}: {e}"));
        let session = *first_session.get_or_insert(lease.session_id());
        assert_eq!(
            lease.session_id(),
            session,
            "{name}: call {i} reuses the session"
        );
        let message = format!("everything-{i}");
        let result = timeout(BOUND, lease.call_tool(echo(&message)))
            .await
            .unwrap_or_else(|_| panic!("{name}: call {i} hung"))
            .unwrap_or_else(|e| panic!("{name}: call {i}: {e}"));
        assert_eq!(
            text(&result),
            format!("Echo: {message}"),
            "{name}: call {i}"
        );
    }
    let server = &pool.stats().servers[0];
    assert_eq!(
        (server.hits, server.misses),
        (ECHOES as u64 - 1, 1),
        "{name}"
    );
    pool.close().await;
}

/// server-everything over `kind` (streamable HTTP or SSE) and its endpoint; `None` (after
/// saying why) when it is not installed.
async fn everything(kind: TransportKind) -> Option<(PeerServer, Endpoint)> {
    let node_dir = services::interop_node_dir()?;
    let (name, transport, path) = match kind {
        TransportKind::Sse => ("everything sse", "sse", "/sse"),
        _ => ("everything streamable-http", "streamableHttp", "/mcp"),
    };
    let peer = PeerServer::start(name, everything_peer(&node_dir, transport)).await;
    let endpoint = Endpoint::new(peer.url(path), kind).unwrap();
    Some((peer, endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http() {
    let Some((peer, endpoint)) = everything(TransportKind::StreamableHttp).await else {
        return;
    };
    pooled_echo_through_everything(peer.name, endpoint).await;
    drop(peer);
}

/// server-everything answers a session it does not know with HTTP 400 and a JSON-RPC error
/// without an `id`: the call must fail (and be retried) at once, not wait for its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_restarted_between_calls_over_streamable_http() {
    let Some((peer, endpoint)) = everything(TransportKind::StreamableHttp).await else {
        return;
    };
    let node_dir = services::interop_node_dir().expect("set: the peer started");
    let restart = move |port: u16| {
        let mut command = everything_peer(&node_dir, "streamableHttp");
        command.arg(port.to_string());
        command
    };
    restart_between_calls(peer, endpoint, restart, |m| format!("Echo: {m}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_sse() {
    let Some((peer, endpoint)) = everything(TransportKind::Sse).await else {
        return;
    };
    pooled_echo_through_everything(peer.name, endpoint).await;
    drop(peer);
}

/// server-everything over MCP's stdio transport: the pool starts `node <dist>/index.js stdio`
/// itself, one process per session, and reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_stdio() {
    let Some(node_dir) = services::interop_node_dir() else {
        return;
    };
    let index = Path::new(&node_dir)
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let endpoint = Endpoint::stdio(mcp_pool::traits::StdioCommand {
        command: "node".into(),
        args: vec![index.display().to_string(), "stdio".into()],
        ..Default::default()
    })
    .unwrap();
    pooled_echo_through_everything("everything stdio", endpoint).await;
}

// What a third-party server sends besides replies reaches the lease holder.

mod exchange {
    #![allow(deprecated)] // Sampling and logging are deprecated by SEP-2577; servers use them.

    use std::sync::Arc;

    use mcp_pool::{
        CallOptions, Principal, ServerEventKind, ServerId, ServerRequestHandler,
        rmcp::{
            ErrorData,
            model::{
                CallToolRequestParams, CallToolResult, ClientCapabilities, ClientResult,
                CreateMessageResult, ListRootsResult, Root, SamplingMessage, ServerNotification,
                ServerRequest,
            },
        },
    };
    use tokio::sync::{broadcast, mpsc};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// The downstream client's answers: a sampling reply and one root.
    #[derive(Debug)]
    struct Downstream;

    /// The text of the downstream client's sampling reply.
    const SAMPLED: &str = "a reply from the downstream client";

    #[async_trait::async_trait]
    impl ServerRequestHandler for Downstream {
        async fn handle(
            &self,
            request: ServerRequest,
            _cancel: CancellationToken,
        ) -> Result<ClientResult, ErrorData> {
            match request {
                ServerRequest::CreateMessageRequest(_) => Ok(ClientResult::CreateMessageResult(
                    Box::new(CreateMessageResult::new(
                        SamplingMessage::assistant_text(SAMPLED),
                        "interop-model".to_owned(),
                    )),
                )),
                ServerRequest::ListRootsRequest(_) => {
                    Ok(ClientResult::ListRootsResult(ListRootsResult::new(vec![
                        Root::new("file:///interop"),
                    ])))
                }
                other => Err(ErrorData::invalid_request(
                    format!("not answered here: {other:?}"),
                    None,
                )),
            }
        }
    }

    fn tool(name: &'static str, args: Value) -> CallToolRequestParams {
        CallToolRequestParams::new(name)
            .with_arguments(args.as_object().cloned().unwrap_or_default())
    }

    fn pool_for(endpoint: Endpoint) -> (Pool, ServerId) {
        let id = server_id("peer");
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.roots = Some(Default::default());
        let pool = Pool::builder()
            .server(
                ServerConfig::new(id.clone(), endpoint)
                    .pool(PoolConfig::enabled())
                    .client_capabilities(capabilities),
            )
            .build()
            .expect("valid pool");
        (pool, id)
    }

    /// Calls `params` on a lease with a notification sink and the downstream handler; returns
    /// the result and what reached the sink.
    async fn call(
        name: &str,
        lease: &mcp_pool::Lease,
        params: CallToolRequestParams,
    ) -> (CallToolResult, Vec<ServerNotification>) {
        let (tx, mut rx) = mpsc::channel(256);
        let options = CallOptions::new()
            .notifications(tx)
            .requests(Arc::new(Downstream));
        let tool = params.name.clone();
        let result = timeout(
            Duration::from_secs(30),
            lease.call_tool_with(params, options),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: {tool} hung"))
        .unwrap_or_else(|e| panic!("{name}: {tool}: {e}"));
        (result, std::iter::from_fn(|| rx.try_recv().ok()).collect())
    }

    fn progress_count(notifications: &[ServerNotification]) -> usize {
        notifications
            .iter()
            .filter(|n| matches!(n, ServerNotification::ProgressNotification(_)))
            .count()
    }

    fn is_log(notification: &ServerNotification) -> bool {
        matches!(
            notification,
            ServerNotification::LoggingMessageNotification(_)
        )
    }

    /// Waits (bounded: a failure guard, not synchronization) for a notification of the
    /// session that `wanted` accepts.
    async fn session_sees(
        name: &str,
        session: &mut broadcast::Receiver<ServerNotification>,
        wanted: impl Fn(&ServerNotification) -> bool,
    ) {
        timeout(Duration::from_secs(15), async {
            loop {
                match session.recv().await {
                    Ok(n) if wanted(&n) => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("{name}: session closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the notification never came"));
    }

    async fn server_sees(
        name: &str,
        events: &mut broadcast::Receiver<mcp_pool::ServerEvent>,
        kind: ServerEventKind,
    ) {
        timeout(Duration::from_secs(15), async {
            loop {
                if events.recv().await.expect("the pool is alive").kind == kind {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no {kind:?} event"));
    }

    /// server-everything: progress of `trigger-long-running-operation`, its simulated logging,
    /// a `resources/list_changed` from `gzip-file-as-resource`, and `trigger-sampling-request`.
    async fn everything_exchange(peer: PeerServer, endpoint: Endpoint) {
        let name = peer.name;
        let (pool, id) = pool_for(endpoint);
        let mut events = pool.server_events(&id).unwrap();
        let lease = pool.acquire(&id, Principal::ANONYMOUS).await.unwrap();
        let mut session = lease.subscribe();

        let (result, got) = call(
            name,
            &lease,
            tool(
                "trigger-long-running-operation",
                serde_json::json!({"duration": 1, "steps": 3}),
            ),
        )
        .await;
        assert!(
            text(&result).contains("Steps: 3"),
            "{name}: {}",
            text(&result)
        );
        assert_eq!(progress_count(&got), 3, "{name}: {got:?}");

        let (result, _) = call(
            name,
            &lease,
            tool(
                "trigger-sampling-request",
                serde_json::json!({"prompt": "hi", "maxTokens": 10}),
            ),
        )
        .await;
        assert!(
            text(&result).contains("LLM sampling result") && text(&result).contains(SAMPLED),
            "{name}: {}",
            text(&result)
        );

        // Logging on the session's standalone stream: after the call, it is the session's.
        let (_, during) = call(
            name,
            &lease,
            tool("toggle-simulated-logging", serde_json::json!({})),
        )
        .await;
        if !during.iter().any(is_log) {
            session_sees(name, &mut session, is_log).await;
        }
        call(
            name,
            &lease,
            tool("toggle-simulated-logging", serde_json::json!({})),
        )
        .await;

        call(
            name,
            &lease,
            tool(
                "gzip-file-as-resource",
                serde_json::json!({
                    "name": "interop.txt.gz",
                    "data": "data:text/plain;base64,aGVsbG8gaW50ZXJvcA==",
                    "outputType": "resourceLink",
                }),
            ),
        )
        .await;
        server_sees(name, &mut events, ServerEventKind::ResourcesListChanged).await;
        drop(lease);
        pool.close().await;
        drop(peer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_everything_exchange_over_streamable_http() {
        let Some((peer, endpoint)) = everything(TransportKind::StreamableHttp).await else {
            return;
        };
        everything_exchange(peer, endpoint).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_everything_exchange_over_sse() {
        let Some((peer, endpoint)) = everything(TransportKind::Sse).await else {
            return;
        };
        everything_exchange(peer, endpoint).await;
    }

    /// The Python SDK server's `progress`, `log`, `notify` and `sample` tools.
    async fn python_exchange(peer: PeerServer, endpoint: Endpoint) {
        let name = peer.name;
        let (pool, id) = pool_for(endpoint);
        let mut events = pool.server_events(&id).unwrap();
        let lease = pool.acquire(&id, Principal::ANONYMOUS).await.unwrap();
        let mut session = lease.subscribe();

        let (result, got) = call(
            name,
            &lease,
            tool("progress", serde_json::json!({"steps": 3})),
        )
        .await;
        assert_eq!(text(&result), "done 3", "{name}");
        assert_eq!(progress_count(&got), 3, "{name}: {got:?}");

        let (result, got) = call(
            name,
            &lease,
            tool("log", serde_json::json!({"messages": ["one", "two"]})),
        )
        .await;
        assert_eq!(text(&result), "logged 2", "{name}");
        let mut logs = got.iter().filter(|n| is_log(n)).count();
        while logs < 2 {
            session_sees(name, &mut session, is_log).await;
            logs += 1;
        }

        let (result, _) = call(
            name,
            &lease,
            tool("sample", serde_json::json!({"prompt": "hi"})),
        )
        .await;
        assert_eq!(text(&result), format!("sampled: {SAMPLED}"), "{name}");

        call(
            name,
            &lease,
            tool("notify", serde_json::json!({"kinds": ["tools"]})),
        )
        .await;
        server_sees(name, &mut events, ServerEventKind::ToolsListChanged).await;
        drop(lease);
        pool.close().await;
        drop(peer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_sdk_exchange_over_streamable_http() {
        let Some((peer, endpoint)) = python(TransportKind::StreamableHttp).await else {
            return;
        };
        python_exchange(peer, endpoint).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_sdk_exchange_over_sse() {
        let Some((peer, endpoint)) = python(TransportKind::Sse).await else {
            return;
        };
        python_exchange(peer, endpoint).await;
    }
}
