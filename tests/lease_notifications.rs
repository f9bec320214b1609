//! What an upstream server sends besides replies reaches the lease holder:
//! progress by token (also with several leases on one session), logging during a call,
//! session-level notifications to the session's and the server's subscribers (debounced), and
//! the server's requests (sampling, elicitation, roots) to the call's handler — a JSON-RPC
//! error without one. Real rmcp sessions with the reference server: over loopback streamable
//! HTTP, and in process on tokio's paused clock.

#![allow(deprecated)] // Sampling and logging are deprecated by SEP-2577; servers still use them.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    CallOptions, Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerEventKind,
    ServerRequestHandler, TransportKind,
    rmcp::{
        ErrorData,
        model::{
            CallToolRequestParams, CallToolResult, ClientCapabilities, ClientResult,
            CreateMessageResult, ElicitResult, ElicitationAction, ListRootsResult, Root,
            SamplingMessage, ServerNotification, ServerRequest,
        },
    },
};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer, UPDATED_RESOURCE};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn tool(name: &'static str, args: serde_json::Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(args.as_object().cloned().unwrap_or_default())
}

fn capabilities() -> ClientCapabilities {
    let mut capabilities = ClientCapabilities::default();
    capabilities.sampling = Some(Default::default());
    capabilities.elicitation = Some(Default::default());
    capabilities.roots = Some(Default::default());
    capabilities
}

/// A pool on `server` over streamable HTTP advertising sampling, elicitation and roots.
fn http(server: &ReferenceServer, config: PoolConfig) -> (Pool, mcp_pool::ServerId) {
    let id = server_id("reference");
    let pool = Pool::builder()
        .server(
            ServerConfig::new(id.clone(), server.endpoint())
                .pool(config)
                .client_capabilities(capabilities()),
        )
        .build()
        .unwrap();
    (pool, id)
}

/// The same in process, for the paused clock.
fn duplex(config: PoolConfig) -> (Pool, mcp_pool::ServerId) {
    let id = server_id("duplex");
    let endpoint =
        Endpoint::new("http://duplex.invalid/mcp", TransportKind::StreamableHttp).unwrap();
    let pool = Pool::builder()
        .transport(Arc::new(DuplexTransport::new(
            TransportKind::StreamableHttp,
        )))
        .server(
            ServerConfig::new(id.clone(), endpoint)
                .pool(config)
                .client_capabilities(capabilities()),
        )
        .build()
        .unwrap();
    (pool, id)
}

fn drain(rx: &mut mpsc::Receiver<ServerNotification>) -> Vec<ServerNotification> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn progress_tokens(notifications: &[ServerNotification]) -> Vec<String> {
    notifications
        .iter()
        .map(|n| match n {
            ServerNotification::ProgressNotification(p) => {
                format!("{:?}", p.params.progress_token)
            }
            other => panic!("not progress: {other:?}"),
        })
        .collect()
}

/// Two calls on one session (`session_concurrency` 2) each get their own progress, and only
/// theirs.
async fn progress_reaches_only_its_call(pool: Pool, id: mcp_pool::ServerId) {
    let user = Principal::user("u");
    let a = pool.acquire(&id, user).await.unwrap();
    let b = pool.acquire(&id, user).await.unwrap();
    assert_eq!(
        a.session_id(),
        b.session_id(),
        "both leases share one session"
    );
    let (tx_a, mut rx_a) = mpsc::channel(64);
    let (tx_b, mut rx_b) = mpsc::channel(64);
    let (ra, rb) = tokio::join!(
        a.call_tool_with(
            tool("progress", json!({"steps": 3, "delay_ms": 5})),
            CallOptions::new().notifications(tx_a)
        ),
        b.call_tool_with(
            tool("progress", json!({"steps": 5, "delay_ms": 3})),
            CallOptions::new().notifications(tx_b)
        ),
    );
    assert_eq!(text(&ra.unwrap()), "done 3");
    assert_eq!(text(&rb.unwrap()), "done 5");
    let (got_a, got_b) = (drain(&mut rx_a), drain(&mut rx_b));
    let (tokens_a, tokens_b) = (progress_tokens(&got_a), progress_tokens(&got_b));
    assert_eq!(tokens_a.len(), 3, "{tokens_a:?}");
    assert_eq!(tokens_b.len(), 5, "{tokens_b:?}");
    assert!(tokens_a.iter().all(|t| t == &tokens_a[0]));
    assert!(tokens_b.iter().all(|t| t == &tokens_b[0]));
    assert_ne!(tokens_a[0], tokens_b[0]);
}

fn two_per_session() -> PoolConfig {
    PoolConfig {
        session_concurrency: 2,
        ..pooled(1)
    }
}

#[tokio::test]
async fn progress_reaches_only_its_call_over_streamable_http() {
    let server = ReferenceServer::start().await.unwrap();
    let (pool, id) = http(&server, two_per_session());
    progress_reaches_only_its_call(pool, id).await;
}

#[tokio::test(start_paused = true)]
async fn progress_reaches_only_its_call_in_process() {
    let (pool, id) = duplex(two_per_session());
    progress_reaches_only_its_call(pool, id).await;
}

#[allow(deprecated)] // Logging is deprecated by SEP-2577; servers still send it.
fn logged(notification: &ServerNotification) -> Option<String> {
    match notification {
        ServerNotification::LoggingMessageNotification(log) => {
            Some(log.params.data.as_str().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// Logging sent during the only call in flight reaches that call.
#[tokio::test(start_paused = true)]
async fn logging_during_a_call_reaches_the_call() {
    let (pool, id) = duplex(pooled(1));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let mut session = lease.subscribe();
    let (tx, mut rx) = mpsc::channel(16);
    let reply = lease
        .call_tool_with(
            tool("log", json!({"messages": ["first", "second"]})),
            CallOptions::new().notifications(tx),
        )
        .await
        .unwrap();
    assert_eq!(text(&reply), "logged 2");
    let lines: Vec<_> = drain(&mut rx).iter().filter_map(logged).collect();
    assert_eq!(lines, ["first", "second"]);
    assert!(session.try_recv().is_err(), "nothing leaked to the session");
}

/// Over streamable HTTP an rmcp server sends logging on the session's standalone stream, which
/// may overtake or trail the reply: each line reaches the call or, after it, the session —
/// never nowhere, never twice.
#[tokio::test]
async fn logging_over_streamable_http_is_never_lost() {
    let server = ReferenceServer::start().await.unwrap();
    let (pool, id) = http(&server, pooled(1));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let mut session = lease.subscribe();
    let (tx, mut rx) = mpsc::channel(16);
    lease
        .call_tool_with(
            tool("log", json!({"messages": ["first", "second"]})),
            CallOptions::new().notifications(tx),
        )
        .await
        .unwrap();
    let mut lines: Vec<_> = drain(&mut rx).iter().filter_map(logged).collect();
    while lines.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), session.recv())
            .await
            .expect("a logging line went missing")
            .unwrap();
        lines.extend(logged(&next));
    }
    assert_eq!(lines, ["first", "second"]);
}

/// Notifications outside any call reach the session's subscribers, and list changes the
/// server's, whichever lease (or none) is out.
#[tokio::test(start_paused = true)]
async fn session_level_notifications_reach_the_session_and_the_server() {
    let (pool, id) = duplex(pooled(1));
    let mut server_events = pool.server_events(&id).unwrap();
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    let mut session = lease.subscribe();
    lease
        .call_tool(tool(
            "notify",
            json!({"kinds": ["tools", "resources", "updated", "log"], "after_ms": 50}),
        ))
        .await
        .unwrap();
    drop(lease); // The notifications come later, with no lease out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut kinds = Vec::new();
    while let Ok(n) = session.try_recv() {
        kinds.push(match n {
            ServerNotification::ToolListChangedNotification(_) => "tools".to_owned(),
            ServerNotification::ResourceListChangedNotification(_) => "resources".to_owned(),
            ServerNotification::ResourceUpdatedNotification(u) => u.params.uri,
            other => logged(&other).expect("a logging line"),
        });
    }
    assert_eq!(
        kinds,
        ["tools", "resources", UPDATED_RESOURCE, "session-level"]
    );
    let mut events = Vec::new();
    while let Ok(event) = server_events.try_recv() {
        assert_eq!(event.server, id);
        events.push(event.kind);
    }
    assert_eq!(
        events,
        [
            ServerEventKind::ToolsListChanged,
            ServerEventKind::ResourcesListChanged,
            ServerEventKind::ResourceUpdated {
                uri: UPDATED_RESOURCE.to_owned()
            },
        ]
    );
}

/// `tools/list_changed` from the sessions of three users within the debounce window: the
/// server's subscribers see one event at once and one when the window closes.
#[tokio::test(start_paused = true)]
async fn a_burst_of_list_changes_across_sessions_is_debounced() {
    let (pool, id) = duplex(pooled(1));
    let mut events = pool.server_events(&id).unwrap();
    for user in ["a", "b", "c"] {
        let lease = pool.acquire(&id, Principal::user(user)).await.unwrap();
        lease
            .call_tool(tool("notify", json!({"kinds": ["tools"]})))
            .await
            .unwrap();
    }
    let mut count = 0;
    while events.try_recv().is_ok() {
        count += 1;
    }
    assert_eq!(count, 1, "the first of the burst, at once");
    // The window closes 250 ms after its first event (the timer of the same instant may run
    // after this task: one more millisecond).
    tokio::time::sleep(mcp_pool::DEFAULT_EVENT_DEBOUNCE + Duration::from_millis(1)).await;
    assert_eq!(
        events.try_recv().unwrap().kind,
        ServerEventKind::ToolsListChanged
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(events.try_recv().is_err(), "nothing more");
}

/// Answers the reference server's requests as a downstream client would.
#[derive(Debug)]
struct Client;

#[async_trait::async_trait]
impl ServerRequestHandler for Client {
    async fn handle(
        &self,
        request: ServerRequest,
        _cancel: CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        Ok(match request {
            ServerRequest::CreateMessageRequest(_) => {
                ClientResult::CreateMessageResult(Box::new(CreateMessageResult::new(
                    SamplingMessage::assistant_text("from the downstream client"),
                    "test-model".to_owned(),
                )))
            }
            ServerRequest::ElicitRequest(_) => ClientResult::ElicitResult(
                ElicitResult::new(ElicitationAction::Accept).with_content(json!({"answer": "yes"})),
            ),
            ServerRequest::ListRootsRequest(_) => {
                ClientResult::ListRootsResult(ListRootsResult::new(vec![Root::new("file:///work")]))
            }
            other => return Err(ErrorData::invalid_request(format!("{other:?}"), None)),
        })
    }
}

async fn call_text(
    pool: &Pool,
    id: &mcp_pool::ServerId,
    params: CallToolRequestParams,
    options: CallOptions,
) -> CallToolResult {
    let lease = pool.acquire(id, Principal::user("u")).await.unwrap();
    lease.call_tool_with(params, options).await.unwrap()
}

/// The server's requests during a call reach the handler the call registered; without one
/// the server gets an error at once and the call still ends.
async fn server_requests_reach_the_calls_handler(pool: Pool, id: mcp_pool::ServerId) {
    let with = || CallOptions::new().requests(Arc::new(Client));
    let sampled = call_text(&pool, &id, tool("sample", json!({"prompt": "hi"})), with()).await;
    assert_eq!(text(&sampled), "sampled: from the downstream client");
    let elicited = call_text(
        &pool,
        &id,
        tool("elicit", json!({"message": "ok?"})),
        with(),
    )
    .await;
    assert!(
        text(&elicited).starts_with("elicited: accept"),
        "{}",
        text(&elicited)
    );
    let roots = call_text(&pool, &id, tool("roots", json!({})), with()).await;
    assert_eq!(text(&roots), "roots: file:///work");

    let refused = call_text(
        &pool,
        &id,
        tool("sample", json!({"prompt": "hi"})),
        CallOptions::new(),
    )
    .await;
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused)
            .starts_with("sampling failed: sampling/createMessage: the client has no handler"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn server_requests_reach_the_calls_handler_over_streamable_http() {
    let server = ReferenceServer::start().await.unwrap();
    let (pool, id) = http(&server, pooled(1));
    server_requests_reach_the_calls_handler(pool, id).await;
}

#[tokio::test(start_paused = true)]
async fn server_requests_reach_the_calls_handler_in_process() {
    let (pool, id) = duplex(pooled(1));
    server_requests_reach_the_calls_handler(pool, id).await;
}
