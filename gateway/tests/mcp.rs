//! The downstream MCP endpoint `/servers/{id}/mcp`: a real rmcp client over streamable HTTP,
//! the gateway served on loopback, the reference server as the upstream.
#![allow(deprecated)] // Sampling is deprecated by SEP-2577; servers still use it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId, StrategyKind};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::{AppState, Auth, auth};
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

const SECRET: &str = "mcp-test-secret-0123456789abcdef";

struct Gateway {
    upstream: ReferenceServer,
    pool: Pool,
    url: String,
    secret: auth::JwtSecret,
    _server: tokio::task::JoinHandle<()>,
}

/// A gateway with the servers `rr` (round robin), `sticky` and `off` (pooling disabled), all
/// on one reference server.
async fn gateway() -> Gateway {
    let upstream = ReferenceServer::start().await.unwrap();
    let server = |id: &str, pool: PoolConfig| {
        ServerConfig::new(ServerId::new(id).unwrap(), upstream.endpoint()).pool(pool)
    };
    let pool = Pool::builder()
        .server(server("rr", PoolConfig::enabled()))
        .server(server(
            "sticky",
            PoolConfig {
                strategy: StrategyKind::Sticky,
                ..PoolConfig::enabled()
            },
        ))
        .server(server("off", PoolConfig::default()))
        .build()
        .unwrap();
    let secret = auth::JwtSecret::new(SECRET).unwrap();
    let app = mcp_pool_gateway::router(AppState {
        pool: pool.clone(),
        auth: Auth::Required(secret.clone()),
        max_body_bytes: 4 << 20,
        metrics: None,
        mcp: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Gateway {
        upstream,
        pool,
        url,
        secret,
        _server: server,
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
        auth::mint(
            &self.secret,
            user,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap()
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
    let progress = recorder.progress.lock().clone();
    assert_eq!(
        progress.iter().map(|p| p.progress).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0],
        "every step, in order, before the result"
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
