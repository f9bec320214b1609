//! Conversations on a `sticky` server never lose their server-side state silently: when one's
//! upstream session is gone (evicted to make room, expired, dead, drained), its next request
//! gets HTTP 404, the MCP signal to initialize again, and the log and a metric say why.
//!
//! Black box, against the gateway binary with `--demo` (the reference server's `counter` tool
//! counts per upstream session): many conversations of one user, called in turn, each must see
//! `1, 2, 3, …` on its session, or a 404 and then `1, 2, …` on the session it initializes next.

mod common;

use std::time::{Duration, SystemTime};

use common::{Mcp, Process, messages};
use mcp_pool_gateway::auth::{self, JwtSecret, Role};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "conversations-test-secret-0123456789abcdef";

fn token(sub: &str, role: Role) -> String {
    auth::mint(
        &JwtSecret::new(SECRET).unwrap(),
        sub,
        role,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap()
}

/// What a conversation's `counter` call met.
enum Turn {
    /// The counter's value on the conversation's upstream session.
    Counted(u64),
    /// HTTP 404, or the JSON-RPC error of a conversation found lost on its way: start over.
    Lost,
}

async fn count(mcp: &Mcp<'_>) -> Turn {
    let (status, _, text) = mcp
        .post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "counter", "arguments": {}}}),
            None,
        )
        .await;
    if status == StatusCode::NOT_FOUND {
        return Turn::Lost;
    }
    assert_eq!(status, StatusCode::OK, "{text}");
    let answer: Value = messages(&text)
        .into_iter()
        .find(|m| m["id"] == 2)
        .unwrap_or_else(|| panic!("no answer: {text}"));
    if answer["error"]["code"] == mcp_pool_gateway::downstream::CONVERSATION_LOST_CODE {
        return Turn::Lost;
    }
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    Turn::Counted(text.parse().unwrap())
}

/// `conversations` sticky conversations of one user, three `counter` calls each, in turns.
/// Returns how many times a conversation was told its state was lost.
async fn converse(base: &str, http: &Client, conversations: usize) -> usize {
    let alice = token("alice", Role::User);
    let mut open = Vec::new();
    for _ in 0..conversations {
        let mut mcp = Mcp::new(http, base, "demo", &alice);
        assert_eq!(mcp.initialize(None).await.0, StatusCode::OK);
        open.push((mcp, 1u64));
    }
    let mut lost = 0;
    for _ in 0..3 {
        for (mcp, expected) in &mut open {
            match count(mcp).await {
                Turn::Counted(n) => {
                    assert_eq!(n, *expected, "a conversation's state was reset silently");
                    *expected += 1;
                }
                Turn::Lost => {
                    lost += 1;
                    // A session found lost on its way answers 404 from then on.
                    let (status, _, text) = mcp
                        .post(json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}), None)
                        .await;
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "a lost session stays lost: {text}"
                    );
                    let mut again = Mcp::new(http, base, "demo", &alice);
                    assert_eq!(again.initialize(None).await.0, StatusCode::OK);
                    match count(&again).await {
                        Turn::Counted(n) => assert_eq!(n, 1, "a new conversation starts at 1"),
                        Turn::Lost => panic!("a new conversation was lost at once"),
                    }
                    *mcp = again;
                    *expected = 2;
                }
            }
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_conversations_see_their_state_or_a_404_never_a_silent_reset() {
    let mut gw = Process::start(
        &["--demo"],
        &[("JWT_SECRET_KEY", SECRET)],
        &std::env::temp_dir(),
    )
    .await;
    let http = Client::new();
    let admin = token("admin", Role::Admin);
    let put = http
        .put(format!("{}/servers/demo/pool/config", gw.base))
        .bearer_auth(&admin)
        .json(&json!({"enabled": true, "strategy": "sticky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for conversations in [12, 40] {
        let lost = match tokio::spawn({
            let (base, http) = (gw.base.clone(), http.clone());
            async move { converse(&base, &http, conversations).await }
        })
        .await
        {
            Ok(lost) => lost,
            Err(panic) => {
                eprintln!("the gateway's log:\n{}", gw.log_so_far());
                std::panic::resume_unwind(panic.into_panic());
            }
        };
        eprintln!("{conversations} conversations, 3 calls each: {lost} told their state was lost");
    }
    // Sized for them (max_size: conversations per user on a sticky server), none is lost.
    let put = http
        .put(format!("{}/servers/demo/pool/config", gw.base))
        .bearer_auth(&admin)
        .json(&json!({"max_size": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let lost = converse(&gw.base, &http, 40).await;
    assert_eq!(
        lost, 0,
        "40 conversations fit max_size 50 and the user limit"
    );
    let metrics = http
        .get(format!("{}/metrics", gw.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mcp_gateway_sessions_lost_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("mcp_gateway_sessions_lost_total: {counted}");
    gw.stop().await;
    if counted > 0.0 {
        assert!(
            gw.log
                .contains("a downstream MCP session ended: its upstream session was lost"),
            "each loss is logged at WARN"
        );
        assert!(!gw.log.contains("alice"), "no identity in the log");
    }
}

/// A drain takes every upstream session: each conversation's next request is a 404, its
/// reason `drain` in the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_conversation_is_told_with_a_404() {
    let gw = Process::start(
        &["--demo"],
        &[("JWT_SECRET_KEY", SECRET)],
        &std::env::temp_dir(),
    )
    .await;
    let http = Client::new();
    let admin = token("admin", Role::Admin);
    let send = |method: &str, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method.parse().unwrap(), format!("{}{path}", gw.base))
            .bearer_auth(&admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let put = send(
        "PUT",
        "/servers/demo/pool/config",
        Some(json!({"enabled": true, "strategy": "sticky"})),
    )
    .await
    .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let alice = token("alice", Role::User);
    let mut mcp = Mcp::new(&http, &gw.base, "demo", &alice);
    assert_eq!(mcp.initialize(None).await.0, StatusCode::OK);
    assert!(matches!(count(&mcp).await, Turn::Counted(1)));
    assert!(matches!(count(&mcp).await, Turn::Counted(2)));
    let drained = send("POST", "/servers/demo/pool/drain", None)
        .await
        .unwrap();
    assert_eq!(drained.status(), StatusCode::OK);
    let (status, _, text) = mcp
        .post(json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("drained"), "the reason is given: {text}");
    let metrics = send("GET", "/metrics", None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_gateway_sessions_lost_total{")
                && l.contains("reason=\"drained\"")),
        "{metrics}"
    );
    // Starting over works, from 1.
    let mut again = Mcp::new(&http, &gw.base, "demo", &alice);
    assert_eq!(again.initialize(None).await.0, StatusCode::OK);
    assert!(matches!(count(&again).await, Turn::Counted(1)));
}
