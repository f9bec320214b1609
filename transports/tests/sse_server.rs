//! The legacy SSE server adapter with an owner function takes a session's messages from the
//! session's owner only: with a leaked or guessed `sessionId`, another user can neither cancel
//! the owner's requests nor post anything else, and is answered as for a session that does not
//! exist.

use std::time::Duration;

use axum::http::{StatusCode, request::Parts};
use http::HeaderMap;
use mcp_pool_transports::{
    SseClientTransport,
    server::{SseServer, SseServerConfig},
};
use rmcp::{
    ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt as _,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, RequestId,
        ServerCapabilities, ServerConfig,
    },
    service::{RequestContext, RunningService},
};
use serde_json::json;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Bounds every wait of these tests; none takes a fraction of it when the server is right.
const PATIENCE: Duration = Duration::from_secs(10);

/// The header naming the user in these tests (a trusted proxy would set it).
const USER: &str = "x-user";

/// A server whose tool `wait` runs until its request is cancelled. Each call's request id and
/// cancellation token go to the test as the call starts.
struct Waiter {
    calls: mpsc::UnboundedSender<(RequestId, CancellationToken)>,
}

impl ServerHandler for Waiter {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let _ = self.calls.send((context.id.clone(), context.ct.clone()));
        context.ct.cancelled().await;
        Ok(CallToolResult::success(vec![ContentBlock::text("cancelled")]).into())
    }
}

/// Serves a [`Waiter`] per session with `config` on 127.0.0.1; returns its base URL and the
/// calls of its sessions.
async fn serve(
    config: SseServerConfig,
) -> (
    String,
    mpsc::UnboundedReceiver<(RequestId, CancellationToken)>,
) {
    let (calls, started) = mpsc::unbounded_channel();
    let server = SseServer::new(
        move || {
            Ok(Waiter {
                calls: calls.clone(),
            })
        },
        config.with_keep_alive(None),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, server.router()).into_future());
    (format!("http://{addr}"), started)
}

/// The owner function of these tests: the value of the `x-user` header.
fn user_of(parts: &Parts) -> Option<String> {
    let user = parts.headers.get(USER)?.to_str().ok()?;
    Some(user.to_owned())
}

fn headers_of(user: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(user) = user {
        headers.insert(USER, user.parse().unwrap());
    }
    headers
}

/// A victim's session: its client, its message URL (with its `sessionId`), and the id and
/// cancellation token of its call of `wait`, in flight.
struct Victim {
    client: RunningService<RoleClient, ()>,
    message_url: Url,
    call: JoinHandle<()>,
    request_id: RequestId,
    cancelled: CancellationToken,
}

impl Victim {
    /// `user` opens a session on the server at `base` and calls `wait`.
    async fn start(
        base: &str,
        user: &str,
        started: &mut mpsc::UnboundedReceiver<(RequestId, CancellationToken)>,
    ) -> Self {
        let transport = SseClientTransport::connect(
            reqwest::Client::new(),
            &format!("{base}/sse"),
            headers_of(Some(user)),
        )
        .await
        .expect("an SSE session");
        let message_url = transport.message_url().clone();
        let client = ().serve(transport).await.expect("initialized");
        let peer = client.peer().clone();
        let call = tokio::spawn(async move {
            // Never answered: cancelled at the end of the test.
            let _ = peer.call_tool(CallToolRequestParams::new("wait")).await;
        });
        let (request_id, cancelled) = tokio::time::timeout(PATIENCE, started.recv())
            .await
            .expect("the call reaches the handler")
            .expect("the server runs");
        Self {
            client,
            message_url,
            call,
            request_id,
            cancelled,
        }
    }

    /// A `notifications/cancelled` of the victim's call.
    fn cancel_message(&self) -> String {
        json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": self.request_id, "reason": "cancelled by its POSTer" },
        })
        .to_string()
    }

    /// Returns once the server is done with every message posted to the session before the
    /// call: one round trip, as the server reads a session's messages in order and applies a
    /// cancellation as it reads it.
    async fn round_trip(&self) {
        tokio::time::timeout(PATIENCE, self.client.list_tools(None))
            .await
            .expect("an answer in time")
            .expect("tools/list succeeds");
    }

    async fn end(self) {
        self.call.abort();
        self.client.cancel().await.expect("the client closes");
    }
}

/// POSTs `body` to `url` as `user`; returns the status and the answer's body.
async fn post(url: &Url, user: Option<&str>, body: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .post(url.clone())
        .headers(headers_of(user))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("an answer");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_messages_are_answered_as_for_no_session() {
    let config = SseServerConfig::default().with_owner(user_of);
    assert!(format!("{config:?}").contains("owner: true"), "{config:?}");
    let (base, mut started) = serve(config).await;
    let alice = Victim::start(&base, "alice", &mut started).await;
    let cancel = alice.cancel_message();
    let ping = json!({ "jsonrpc": "2.0", "id": 99, "method": "ping" }).to_string();

    let mut unknown = alice.message_url.clone();
    unknown.set_query(Some("sessionId=00000000000000000000000000000000"));
    let no_session = post(&unknown, Some("alice"), &cancel).await;
    assert_eq!(
        no_session,
        (StatusCode::NOT_FOUND, "no such session".to_owned())
    );
    for user in [Some("mallory"), None, Some("Alice")] {
        for body in [&cancel, &ping, "not JSON-RPC"] {
            assert_eq!(
                post(&alice.message_url, user, body).await,
                no_session,
                "{user:?} posted {body}"
            );
        }
    }
    // Had one of those reached the session, its cancellation would have been applied by now.
    alice.round_trip().await;
    assert!(
        !alice.cancelled.is_cancelled(),
        "another user cancelled alice's call"
    );

    // The same messages from alice herself do reach her session.
    assert_eq!(
        post(&alice.message_url, Some("alice"), "not JSON-RPC")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&alice.message_url, Some("alice"), &cancel).await,
        (StatusCode::ACCEPTED, "Accepted".to_owned())
    );
    tokio::time::timeout(PATIENCE, alice.cancelled.cancelled())
        .await
        .expect("alice's own cancellation reaches her call");
    alice.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_owner_function_whoever_knows_the_id_may_post() {
    let config = SseServerConfig::default();
    assert!(format!("{config:?}").contains("owner: false"), "{config:?}");
    let (base, mut started) = serve(config).await;
    let alice = Victim::start(&base, "alice", &mut started).await;
    assert_eq!(
        post(&alice.message_url, Some("mallory"), &alice.cancel_message()).await,
        (StatusCode::ACCEPTED, "Accepted".to_owned())
    );
    tokio::time::timeout(PATIENCE, alice.cancelled.cancelled())
        .await
        .expect("anyone's cancellation reaches the call");
    alice.end().await;
}
