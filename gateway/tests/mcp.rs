//! The downstream MCP endpoint `/servers/{id}/mcp`: a real rmcp client over streamable HTTP,
//! the gateway served on loopback, the reference server as the upstream.
#![allow(deprecated)] // Sampling is deprecated by SEP-2577; servers still use it.

use std::{sync::Arc, time::Duration};

use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId, StrategyKind, TransportKind};
use mcp_pool_conformance::ReferenceServer;
mod common;

use common::Served;
use mcp_pool_transports::{SseClientTransport, WebSocketClientTransport};
use parking_lot::Mutex;
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        CreateMessageRequestParams, CreateMessageResult, ErrorCode, Implementation,
        ProgressNotificationParam, SamplingMessage,
    },
    service::{InboundStreamOrigin, NotificationContext, RequestContext, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::json;

struct Gateway {
    upstream: ReferenceServer,
    pool: Pool,
    url: String,
    served: Served,
}

/// A gateway with the servers `rr` (round robin), `sticky`, `off` (pooling disabled) and
/// `shared` (one session for four leases), all on one reference server.
async fn gateway() -> Gateway {
    gateway_with(Pool::builder()).await
}

async fn gateway_with(builder: mcp_pool::PoolBuilder) -> Gateway {
    let upstream = ReferenceServer::start().await.unwrap();
    let server = |id: &str, pool: PoolConfig| {
        ServerConfig::new(ServerId::new(id).unwrap(), upstream.endpoint()).pool(pool)
    };
    let servers = [
        server("rr", PoolConfig::enabled()),
        server(
            "sticky",
            PoolConfig {
                strategy: StrategyKind::Sticky,
                ..PoolConfig::enabled()
            },
        ),
        server("off", PoolConfig::default()),
        server(
            "shared",
            PoolConfig {
                size: 1,
                min_size: 1,
                max_size: 1,
                session_concurrency: 4,
                ..PoolConfig::enabled()
            },
        ),
    ];
    let served = Served::start(&servers, builder).await;
    Gateway {
        upstream,
        pool: served.pool.clone(),
        url: served.url.clone(),
        served,
    }
}

/// What the downstream client saw: progress notifications, and the sampling requests it
/// answered.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    sampled: Arc<Mutex<Vec<String>>>,
    /// The HTTP stream each sampling request arrived on.
    sampling_streams: Arc<Mutex<Vec<Option<InboundStreamOrigin>>>>,
    sampling: bool,
    tools_changed: Arc<tokio::sync::Notify>,
    progress_seen: Arc<tokio::sync::Notify>,
}

impl Recorder {
    /// The progress values seen, once there are `n` (bounded wait), in ascending order: this
    /// downstream rmcp client handles each notification in a task of its own, so they may
    /// reach the recorder after the result and in any order. (The SDK clients of
    /// sdk_clients.rs see them in order, before the result.)
    async fn progress(&self, n: usize) -> Vec<ProgressNotificationParam> {
        let enough = async {
            loop {
                let seen = self.progress_seen.notified();
                if self.progress.lock().len() >= n {
                    break;
                }
                seen.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), enough)
            .await
            .unwrap_or_else(|_| panic!("{n} progress notifications: {:?}", self.progress.lock()));
        let mut progress = self.progress.lock().clone();
        progress.sort_by(|a, b| a.progress.total_cmp(&b.progress));
        progress
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        let capabilities = if self.sampling {
            ClientCapabilities::builder().enable_sampling().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(capabilities, Implementation::new("gateway-test", "1.0"))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().push(params);
        self.progress_seen.notify_waiters();
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        let origin = context.extensions.get::<InboundStreamOrigin>().cloned();
        self.sampling_streams.lock().push(origin);
        let prompt = serde_json::to_string(&params.messages).unwrap();
        self.sampled.lock().push(prompt);
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text("a reply from downstream"),
            "test-model".into(),
        ))
    }
}

impl Gateway {
    fn token(&self, user: &str) -> String {
        self.served.token(user)
    }

    async fn client(
        &self,
        server: &str,
        user: &str,
        handler: Recorder,
    ) -> RunningService<RoleClient, Recorder> {
        let config = StreamableHttpClientTransportConfig::with_uri(format!(
            "{}/servers/{server}/mcp",
            self.url
        ))
        .auth_header(self.token(user));
        handler
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("initialize through the gateway")
    }
}

impl Gateway {
    /// A client over the gateway's HTTP+SSE or WebSocket endpoint of `server`.
    async fn legacy_client(
        &self,
        kind: TransportKind,
        server: &str,
        user: &str,
    ) -> RunningService<RoleClient, Recorder> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {}", self.token(user)).parse().unwrap(),
        );
        let base = format!("{}/servers/{server}", self.url);
        match kind {
            TransportKind::Sse => {
                let transport = SseClientTransport::connect(
                    reqwest::Client::new(),
                    &format!("{base}/sse"),
                    headers,
                )
                .await
                .unwrap();
                Recorder::default().serve(transport).await.unwrap()
            }
            _ => {
                let url = format!("{}/ws", base.replacen("http", "ws", 1));
                let transport =
                    WebSocketClientTransport::connect(&url, &headers, Default::default())
                        .await
                        .unwrap();
                Recorder::default().serve(transport).await.unwrap()
            }
        }
    }
}

fn tool(name: &str, arguments: serde_json::Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned())
        .with_arguments(arguments.as_object().unwrap().clone())
}

fn text(result: &CallToolResult) -> String {
    result.content[0].as_text().unwrap().text.clone()
}

async fn counter(client: &RunningService<RoleClient, Recorder>) -> String {
    text(&client.call_tool(tool("counter", json!({}))).await.unwrap())
}

#[tokio::test]
async fn tools_are_listed_and_called_through_the_gateway() {
    let gw = gateway().await;
    let client = gw.client("rr", "alice", Recorder::default()).await;
    let info = client.peer_info().unwrap();
    assert!(
        info.capabilities.tools.is_some(),
        "the upstream's capabilities are advertised downstream"
    );
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let result = client
        .call_tool(tool("echo", json!({"message": "via the gateway"})))
        .await
        .unwrap();
    assert_eq!(text(&result), "via the gateway");

    let stats = gw.pool.stats();
    let rr = stats
        .servers
        .iter()
        .find(|s| s.server.as_str() == "rr")
        .unwrap();
    assert!(rr.hits >= 2, "later calls reuse the pooled session: {rr:?}");
    assert_eq!(gw.upstream.sessions_opened(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_upstream_error_reaches_the_client_as_its_json_rpc_error() {
    let gw = gateway().await;
    let client = gw.client("rr", "alice", Recorder::default()).await;
    let error = client
        .call_tool(tool("fail", json!({"message": "boom-7"})))
        .await
        .unwrap_err();
    let rmcp::ServiceError::McpError(data) = error else {
        panic!("expected a JSON-RPC error, got {error:?}");
    };
    assert_eq!(data.code, ErrorCode::INTERNAL_ERROR);
    assert!(data.message.contains("boom-7"), "{data:?}");
    // The session survives an application error.
    assert_eq!(counter(&client).await, "1");
}

#[tokio::test]
async fn progress_reaches_the_calling_client_with_its_own_token() {
    let gw = gateway().await;
    let recorder = Recorder::default();
    let client = gw.client("rr", "alice", recorder.clone()).await;
    let result = client
        .call_tool(tool("progress", json!({"steps": 3, "delay_ms": 1})))
        .await
        .unwrap();
    assert_eq!(text(&result), "done 3");
    let progress = recorder.progress(3).await;
    assert_eq!(
        progress.iter().map(|p| p.progress).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0],
        "every step, none twice"
    );
    // rmcp's client numbers its progress tokens per session; the upstream saw the pool's.
    let tokens: Vec<_> = progress.iter().map(|p| p.progress_token.clone()).collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
}

#[tokio::test]
async fn sampling_is_asked_of_the_downstream_client() {
    let gw = gateway().await;
    let recorder = Recorder {
        sampling: true,
        ..Recorder::default()
    };
    let client = gw.client("rr", "alice", recorder.clone()).await;
    let result = client
        .call_tool(tool("sample", json!({"prompt": "hello upstream"})))
        .await
        .unwrap();
    assert_eq!(text(&result), "sampled: a reply from downstream");
    let sampled = recorder.sampled.lock().clone();
    assert_eq!(sampled.len(), 1);
    assert!(sampled[0].contains("hello upstream"), "{sampled:?}");
    // MCP 2025-11-25: a request related to the client's call SHOULD come on that call's
    // stream, not the standalone one.
    let streams = recorder.sampling_streams.lock().clone();
    assert!(
        matches!(streams[..], [Some(InboundStreamOrigin::OutboundRequest(_))]),
        "sampling came on the call's stream: {streams:?}"
    );
}

#[tokio::test]
async fn two_sessions_of_one_user_on_a_sticky_server_keep_separate_counters() {
    // The reproducer of ContextForge #4205: one user, two conversations, each with its own
    // upstream state.
    let gw = gateway().await;
    let first = gw.client("sticky", "alice", Recorder::default()).await;
    let second = gw.client("sticky", "alice", Recorder::default()).await;
    assert_eq!(counter(&first).await, "1");
    assert_eq!(counter(&first).await, "2");
    assert_eq!(
        counter(&second).await,
        "1",
        "the second conversation has its own session"
    );
    assert_eq!(counter(&first).await, "3");
    assert_eq!(counter(&second).await, "2");
}

#[tokio::test]
async fn two_users_never_share_an_upstream_session() {
    let gw = gateway().await;
    let alice = gw.client("rr", "alice", Recorder::default()).await;
    let bob = gw.client("rr", "bob", Recorder::default()).await;
    assert_eq!(counter(&alice).await, "1");
    assert_eq!(
        counter(&bob).await,
        "1",
        "bob's calls never reach alice's session"
    );
    assert_eq!(counter(&alice).await, "2");
    assert_eq!(gw.upstream.sessions_opened(), 2);
}

#[tokio::test]
async fn one_users_conversations_reuse_sessions_on_a_round_robin_server() {
    let gw = gateway().await;
    let first = gw.client("rr", "alice", Recorder::default()).await;
    counter(&first).await;
    first.cancel().await.unwrap();
    let second = gw.client("rr", "alice", Recorder::default()).await;
    counter(&second).await;
    assert_eq!(
        gw.upstream.sessions_opened(),
        1,
        "the second conversation reuses the first one's upstream session"
    );
}

#[tokio::test]
async fn with_pooling_disabled_every_call_is_a_new_upstream_session() {
    let gw = gateway().await;
    let client = gw.client("off", "alice", Recorder::default()).await;
    let before = gw.upstream.sessions_opened();
    for _ in 0..3 {
        assert_eq!(
            counter(&client).await,
            "1",
            "no state survives between calls"
        );
    }
    assert_eq!(gw.upstream.sessions_opened() - before, 3);
}

#[tokio::test]
async fn a_cancelled_call_is_cancelled_upstream() {
    let gw = gateway().await;
    let client = gw.client("rr", "alice", Recorder::default()).await;
    let request = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(tool(
        "sleep",
        json!({"ms": 60_000}),
    )));
    let handle = client
        .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
        .await
        .unwrap();
    gw.upstream
        .wait_until(|s| s.tool_calls >= 1, Duration::from_secs(10))
        .await
        .unwrap();
    handle
        .cancel(Some("the user gave up".into()))
        .await
        .unwrap();
    let stats = gw
        .upstream
        .wait_until(|s| s.calls_cancelled >= 1, Duration::from_secs(10))
        .await
        .expect("the upstream's sleep was cancelled");
    assert_eq!(stats.calls_cancelled, 1);
}

#[tokio::test]
async fn mcp_requests_need_a_token_and_a_known_server() {
    let gw = gateway().await;
    let http = reqwest::Client::new();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let response = http
        .post(format!("{}/servers/rr/mcp", gw.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .post(format!("{}/servers/nope/mcp", gw.url))
        .bearer_auth(gw.token("alice"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let detail: serde_json::Value = response.json().await.unwrap();
    assert_eq!(detail, json!({"detail": "Server not found"}));
}

#[tokio::test]
async fn tools_list_changed_upstream_reaches_every_downstream_session_of_the_server() {
    let gw = gateway().await;
    let alice = gw.client("rr", "alice", Recorder::default()).await;
    let bob_seen = Recorder::default();
    let bob = gw.client("rr", "bob", bob_seen.clone()).await;
    // Bob's session exists upstream too (users never share one), and his stream is open.
    counter(&bob).await;
    alice
        .call_tool(tool("notify", json!({"kinds": ["tools"]})))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), bob_seen.tools_changed.notified())
        .await
        .expect("bob hears that the server's tools changed");
}

#[tokio::test]
async fn another_identitys_session_id_is_an_unknown_session() {
    let gw = gateway().await;
    let http = reqwest::Client::new();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}});
    let post = |token: String, body: serde_json::Value, session: Option<String>| {
        let mut request = http
            .post(format!("{}/servers/sticky/mcp", gw.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let response = post(gw.token("alice"), initialize, None).await.unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let stolen = post(gw.token("mallory"), ping.clone(), Some(session.clone()))
        .await
        .unwrap();
    assert_eq!(
        stolen.status(),
        404,
        "a session id is worth nothing to another user"
    );
    assert_eq!(
        stolen.json::<serde_json::Value>().await.unwrap(),
        json!({"detail": "Session not found"})
    );
    let own = post(gw.token("alice"), ping, Some(session)).await.unwrap();
    assert_eq!(own.status(), 200, "its owner still uses it");
}

#[tokio::test]
async fn malformed_json_rpc_gets_a_parse_error_and_harms_no_session() {
    let gw = gateway().await;
    let client = gw.client("rr", "alice", Recorder::default()).await;
    assert_eq!(counter(&client).await, "1");
    let response = reqwest::Client::new()
        .post(format!("{}/servers/rr/mcp", gw.url))
        .bearer_auth(gw.token("alice"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc": "2.0", "id": 1, "method": "#)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(
        body["error"]["code"], -32700,
        "a JSON-RPC parse error: {body}"
    );
    assert_eq!(counter(&client).await, "2", "the other session goes on");
}

#[tokio::test]
async fn a_body_above_the_limit_is_413() {
    let gw = gateway().await;
    let huge = "x".repeat((4 << 20) + 1);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": huge}});
    let response = reqwest::Client::new()
        .post(format!("{}/servers/rr/mcp", gw.url))
        .bearer_auth(gw.token("alice"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn sixteen_clients_get_errors_not_hangs_when_the_upstream_dies_then_recover() {
    let builder = Pool::builder()
        .create_timeout(Duration::from_secs(2))
        .circuit_breaker(mcp_pool::breaker::BreakerConfig::new(
            3,
            Duration::from_millis(200),
        ));
    let gw = gateway_with(builder).await;
    let mut clients = Vec::new();
    for i in 0..16 {
        clients.push(
            gw.client("rr", &format!("user-{i}"), Recorder::default())
                .await,
        );
    }
    gw.upstream.stop().await;
    let calls = clients.iter().map(|c| {
        tokio::time::timeout(
            Duration::from_secs(30),
            c.call_tool(tool("echo", json!({"message": "x"}))),
        )
    });
    for outcome in futures::future::join_all(calls).await {
        let result = outcome.expect("no client hangs while the upstream is down");
        let Err(rmcp::ServiceError::McpError(error)) = result else {
            panic!("a JSON-RPC error, got {result:?}");
        };
        assert_eq!(error.code, ErrorCode::INTERNAL_ERROR, "{error:?}");
    }
    gw.upstream.restart().await.unwrap();
    for client in &clients {
        // The breaker lets a probe through after 200 ms: bounded retries until it closes.
        let mut last = None;
        for _ in 0..100 {
            match client
                .call_tool(tool("echo", json!({"message": "back"})))
                .await
            {
                Ok(result) => {
                    last = Some(text(&result));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert_eq!(last.as_deref(), Some("back"), "every client recovers");
    }
}

#[tokio::test]
async fn the_sse_and_websocket_endpoints_forward_to_the_pool() {
    let gw = gateway().await;
    for kind in [TransportKind::Sse, TransportKind::WebSocket] {
        let first = gw.legacy_client(kind, "sticky", "alice").await;
        let second = gw.legacy_client(kind, "sticky", "alice").await;
        let echoed = first
            .call_tool(tool("echo", json!({"message": "legacy"})))
            .await
            .unwrap();
        assert_eq!(text(&echoed), "legacy", "{kind}");
        assert_eq!(counter(&first).await, "1", "{kind}");
        assert_eq!(
            counter(&second).await,
            "1",
            "{kind}: each connection is its own session"
        );
        assert_eq!(counter(&first).await, "2", "{kind}");
        first.cancel().await.unwrap();
        second.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn the_sse_endpoint_needs_a_token() {
    let gw = gateway().await;
    let response = reqwest::get(format!("{}/servers/rr/sse", gw.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_2026_07_28_client_without_sessions_is_served_through_the_pool() {
    use rmcp::{
        model::ProtocolVersion,
        service::{ClientLifecycleMode, ClientServiceExt},
    };
    let gw = gateway().await;
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{}/servers/rr/mcp", gw.url))
            .auth_header(gw.token("alice"));
    let client = Recorder::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover through the gateway");
    let info = client.peer_info().unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::V_2026_07_28);
    assert!(
        info.capabilities.tools.is_some(),
        "the upstream's tools are advertised"
    );
    for message in ["one", "two"] {
        let result = client
            .call_tool(tool("echo", json!({ "message": message })))
            .await
            .unwrap();
        assert_eq!(text(&result), message);
    }
    assert_eq!(
        gw.upstream.sessions_opened(),
        1,
        "stateless downstream requests share the pooled upstream session"
    );
}

#[tokio::test]
async fn concurrent_calls_sharing_one_upstream_session_get_only_their_own_progress() {
    let gw = gateway().await;
    let (first_seen, second_seen) = (Recorder::default(), Recorder::default());
    let first = gw.client("shared", "alice", first_seen.clone()).await;
    let second = gw.client("shared", "alice", second_seen.clone()).await;
    let (a, b) = tokio::join!(
        first.call_tool(tool("progress", json!({"steps": 4, "delay_ms": 5}))),
        second.call_tool(tool("progress", json!({"steps": 6, "delay_ms": 3}))),
    );
    assert_eq!(text(&a.unwrap()), "done 4");
    assert_eq!(text(&b.unwrap()), "done 6");
    assert_eq!(
        gw.upstream.sessions_opened(),
        1,
        "both calls ran on one upstream session"
    );
    let steps = |seen: Vec<ProgressNotificationParam>| -> Vec<f64> {
        seen.iter().map(|p| p.progress).collect()
    };
    assert_eq!(steps(first_seen.progress(4).await), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        steps(second_seen.progress(6).await),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "none of the other call's"
    );
}

#[tokio::test]
async fn deleting_a_session_answers_200_and_ends_it() {
    // The Python SDK client logs any status but 200 and 204 as a failed termination; rmcp
    // answers 202.
    let gw = gateway().await;
    let http = reqwest::Client::new();
    let url = format!("{}/servers/rr/mcp", gw.url);
    let token = gw.token("alice");
    let post = |body: serde_json::Value| {
        http.post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&body)
    };
    let initialize = post(json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}
        }
    }))
    .send()
    .await
    .unwrap();
    assert_eq!(initialize.status(), 200);
    let session = initialize.headers()["mcp-session-id"].clone();
    let deleted = http
        .delete(&url)
        .bearer_auth(&token)
        .header("mcp-session-id", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let ping = post(json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        .header("mcp-session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 404, "the session is gone");
}

impl Gateway {
    /// A client of `server` sending `token` as its bearer token.
    async fn client_with_token(
        &self,
        server: &str,
        token: &str,
    ) -> RunningService<RoleClient, Recorder> {
        let url = format!("{}/servers/{server}/mcp", self.url);
        let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
        Recorder::default()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("initialize through the gateway")
    }

    /// A token for `user` valid `minutes`: tokens of one user differing by their expiry.
    fn token_for(&self, user: &str, minutes: u64) -> String {
        let valid = Duration::from_secs(60 * minutes);
        mcp_pool_gateway::auth::mint(
            &self.served.secret,
            user,
            mcp_pool_gateway::auth::Role::User,
            valid,
            std::time::SystemTime::now(),
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_token_goes_upstream_only_to_a_server_that_forwards_it() {
    let gw = gateway().await;
    let authorization = || {
        gw.upstream
            .last_request_headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (first, rotated) = (gw.token_for("alice", 10), gw.token_for("alice", 20));
    assert_ne!(first, rotated);

    // By default the token stops at the gateway, and a rotated token keeps its upstream
    // session (the user is the JWT's `sub`).
    for token in [&first, &rotated] {
        let client = gw.client_with_token("rr", token).await;
        assert_ne!(counter(&client).await, "");
        assert_eq!(
            authorization(),
            None,
            "the gateway's token is not forwarded"
        );
    }
    assert_eq!(gw.upstream.sessions_opened(), 1);

    let operator = mcp_pool_gateway::auth::mint(
        &gw.served.secret,
        "operator",
        mcp_pool_gateway::auth::Role::Admin,
        std::time::Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/servers", gw.url))
        .bearer_auth(&operator)
        .json(&json!({
            "id": "fwd",
            "endpoints": [{"url": gw.upstream.url()}],
            "pool": {"enabled": true},
            "forward_token": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.unwrap();
    assert_eq!(body["forward_token"], true, "{body}");

    let client = gw.client_with_token("fwd", &first).await;
    assert_eq!(counter(&client).await, "1");
    assert_eq!(counter(&client).await, "2");
    assert_eq!(authorization(), Some(format!("Bearer {first}")));
    // A token sent upstream is part of the pool key: a rotated one gets a session of its own.
    let other = gw.client_with_token("fwd", &rotated).await;
    assert_eq!(counter(&other).await, "1");
    assert_eq!(authorization(), Some(format!("Bearer {rotated}")));
    assert_eq!(gw.upstream.sessions_opened(), 3);
}
