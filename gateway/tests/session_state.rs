//! Session-scoped MCP state under pooling, with third-party parts on both sides:
//! the official MCP Python SDK as the downstream client (`interop/python/session_state.py`)
//! and `@modelcontextprotocol/server-everything` over streamable HTTP as the upstream, behind
//! the gateway (in process) on `round_robin` with two warm upstream sessions per user, so that
//! every request of a downstream session that was not pinned would alternate between them.
//!
//! - `resources/subscribe` + updates: a downstream session gets the updates of the URIs it
//!   subscribed to, sent outside any call by the upstream session that holds the
//!   subscription, and never another session's;
//! - `logging/setLevel` + logs outside calls: the toggles and the logs name one upstream
//!   session, the one the level was set on;
//! - roots: the server's `roots/list` outside any call (after the client's
//!   `notifications/roots/list_changed`) is asked of that client, and the server's answer
//!   lists that client's roots only;
//!
//! each for one user's sessions and for two users at once.
//!
//! The peers are installed by `interop/setup.sh` and found through `MCP_POOL_INTEROP_PYTHON`
//! and `MCP_POOL_INTEROP_NODE_DIR`; without them a test says why and skips (a failure with
//! `MCP_POOL_REQUIRE_SERVICES=1`).

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::Served;
use mcp_pool::{
    AcquireRequest, Endpoint, Pool, PoolConfig, ServerConfig, ServerId, StrategyKind,
    TransportKind, rmcp::model::ClientCapabilities,
};
use mcp_pool_conformance::services;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    time::timeout,
};

/// Bound on a client run (interpreter start, imports and server-everything's 5 s timers
/// included) and on the upstream's start.
const BOUND: Duration = Duration::from_secs(90);

/// server-everything over streamable HTTP on a loopback port; killed on drop.
struct Everything {
    _child: Child,
    url: String,
}

impl Everything {
    async fn start(node_dir: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/node/everything.mjs");
        let dist =
            Path::new(node_dir).join("node_modules/@modelcontextprotocol/server-everything/dist");
        let mut child = Command::new("node")
            .arg(script)
            .arg("streamableHttp")
            .arg(dist)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = timeout(BOUND, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(port) = line.strip_prefix("LISTENING ") {
                    return port.to_owned();
                }
            }
            panic!("server-everything ended before listening")
        })
        .await
        .expect("server-everything listens");
        Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

/// The gateway in front of server-everything: server `rr`, round robin over two upstream
/// sessions per user, advertising roots upstream.
struct Setup {
    _upstream: Everything,
    gateway: Served,
    python: String,
    id: ServerId,
}

impl Setup {
    async fn start() -> Option<Self> {
        let python = services::interop_python()?;
        let node_dir = services::interop_node_dir()?;
        let upstream = Everything::start(&node_dir).await;
        let id = ServerId::new("rr").unwrap();
        let endpoint = Endpoint::new(upstream.url.as_str(), TransportKind::StreamableHttp).unwrap();
        // Roots are deprecated by SEP-2577, and 2025-era servers still ask for them.
        #[allow(deprecated)]
        let roots = ClientCapabilities::builder().enable_roots().build();
        let config = ServerConfig::new(id.clone(), endpoint)
            .pool(PoolConfig {
                strategy: StrategyKind::RoundRobin,
                min_size: 2,
                size: 2,
                max_size: 2,
                ..PoolConfig::enabled()
            })
            .client_capabilities(roots);
        let gateway = Served::start(&[config], Pool::builder()).await;
        Some(Self {
            _upstream: upstream,
            gateway,
            python,
            id,
        })
    }

    /// Opens `user`'s two upstream sessions, as the gateway's requests of `user` will find
    /// them (the key of the JWT's user without other identity headers).
    async fn warm(&self, user: &str) {
        let pool = &self.gateway.pool;
        let principal = pool.principal(Some(user), &http::HeaderMap::new());
        let acquire = || pool.acquire_with(AcquireRequest::new(&self.id).principal(principal));
        let (a, b) = tokio::join!(acquire(), acquire());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.session_id(), b.session_id());
    }

    /// Runs `session_state.py` as `user` with `args`: its events, after checking that it
    /// succeeded.
    async fn run(&self, user: &str, args: &[&str]) -> Vec<Value> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/python/session_state.py");
        let url = format!("{}/servers/{}/mcp", self.gateway.url, self.id);
        let output = timeout(
            BOUND,
            Command::new(&self.python)
                .arg(script)
                .arg(url)
                .arg(self.gateway.token(user))
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{user} {args:?}: hung"))
        .expect("python starts");
        let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
            .collect();
        assert!(
            output.status.success(),
            "{user} {args:?}: {}\n{events:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        events
    }

    /// The upstream sessions of `user` the pool holds: still the two warmed ones.
    fn sessions(&self) -> u32 {
        self.gateway.pool.stats().servers[0].sessions_total
    }
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn texts(events: &[Value]) -> Vec<String> {
    named(events, "call")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The upstream session id a server-everything toggle's answer names ("… for session ID" and
/// then a space, a period or the end).
fn session_named(text: &str) -> String {
    let (_, rest) = text
        .split_once("for session ")
        .unwrap_or_else(|| panic!("{text:?} names no session"));
    rest.split([' ', '.']).next().unwrap().to_owned()
}

/// The URIs of the updates session `index` received.
fn updates(events: &[Value], index: u64) -> Vec<String> {
    named(events, "updated")
        .iter()
        .filter(|e| e["session"] == index)
        .map(|e| e["uri"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_get_their_own_updates_sent_outside_calls_on_round_robin() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    setup.warm("alice").await;
    setup.warm("bob").await;
    // Two sessions of alice (a-0 and a-1, maybe on one upstream session, maybe on two), one of
    // bob, at once.
    let (alice, bob) = tokio::join!(
        setup.run("alice", &["subscribe", "2", "a"]),
        setup.run("bob", &["subscribe", "1", "b"]),
    );
    for (who, events, own) in [
        ("alice", &alice, "demo://session-state/a-0"),
        ("bob", &bob, "demo://session-state/b-0"),
    ] {
        let first = updates(events, 0);
        assert!(!first.is_empty(), "{who}: updates reach the subscriber");
        assert!(
            first.iter().all(|uri| uri == own),
            "{who}: only the URI it subscribed to: {first:?}"
        );
        // The toggle went where the subscription is: started, then stopped, on one session.
        let toggles = texts(events);
        assert_eq!(toggles.len(), 2, "{who}: {toggles:?}");
        assert!(toggles[0].starts_with("Started"), "{who}: {toggles:?}");
        assert!(toggles[1].starts_with("Stopped"), "{who}: {toggles:?}");
    }
    // Alice's second session gets a-1's updates or none (when its upstream session is not
    // the toggled one), never a-0's.
    let second = updates(&alice, 1);
    assert!(
        second.iter().all(|uri| uri == "demo://session-state/a-1"),
        "{second:?}"
    );
    assert_eq!(
        setup.sessions(),
        4,
        "no upstream session was opened or lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_level_and_the_logs_sent_outside_calls_stay_with_their_upstream_session() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    setup.warm("alice").await;
    setup.warm("bob").await;
    let (alice, bob) = tokio::join!(
        setup.run("alice", &["logging"]),
        setup.run("bob", &["logging"]),
    );
    let mut seen = Vec::new();
    for (who, events) in [("alice", &alice), ("bob", &bob)] {
        let toggles = texts(events);
        assert_eq!(toggles.len(), 2, "{who}: {toggles:?}");
        assert!(toggles[0].starts_with("Started"), "{who}: {toggles:?}");
        assert!(toggles[1].starts_with("Stopped"), "{who}: {toggles:?}");
        let session = session_named(&toggles[0]);
        assert_eq!(
            session_named(&toggles[1]),
            session,
            "{who}: both toggles on the session the level was set on"
        );
        let during = named(events, "logs_during_call")[0]["count"]
            .as_u64()
            .unwrap();
        let logs: Vec<&str> = named(events, "log")
            .iter()
            .filter_map(|e| e["data"].as_str())
            .filter(|data| data.contains("-level message") || data.contains("level-message"))
            .collect();
        assert!(
            logs.len() as u64 > during,
            "{who}: a log sent outside any call arrived: {logs:?}"
        );
        assert!(
            logs.iter()
                .all(|log| log.ends_with(&format!("SessionId {session}"))),
            "{who}: only its upstream session's logs: {logs:?}"
        );
        seen.push(session);
    }
    assert_ne!(
        seen[0], seen[1],
        "two users never share an upstream session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_asked_outside_calls_are_answered_by_the_client_pinned_to_the_session() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    setup.warm("alice").await;
    setup.warm("bob").await;
    let (alice, bob) = tokio::join!(
        setup.run("alice", &["roots", "file:///alice-root"]),
        setup.run("bob", &["roots", "file:///bob-root"]),
    );
    for (who, events, own, other) in [
        ("alice", &alice, "file:///alice-root", "file:///bob-root"),
        ("bob", &bob, "file:///bob-root", "file:///alice-root"),
    ] {
        assert!(
            !named(events, "roots_asked").is_empty(),
            "{who}: the server's roots/list outside any call reached the client"
        );
        let listed = texts(events);
        assert_eq!(listed.len(), 1, "{who}: {listed:?}");
        assert!(listed[0].contains(own), "{who}: {listed:?}");
        assert!(!listed[0].contains(other), "{who}: {listed:?}");
    }
}

/// When a pinned upstream session leaves the pool, its downstream session is told at once:
/// its event stream ends, and its next request gets HTTP 404 (re-initialize), not an answer
/// from a session without its state. The reference server in process, no third-party peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_session_ends_when_its_pinned_upstream_session_leaves_the_pool() {
    let upstream = mcp_pool_conformance::ReferenceServer::start()
        .await
        .unwrap();
    let id = ServerId::new("rr").unwrap();
    let config = ServerConfig::new(id.clone(), upstream.endpoint()).pool(PoolConfig {
        strategy: StrategyKind::RoundRobin,
        ..PoolConfig::enabled()
    });
    let gateway = Served::start(&[config], Pool::builder()).await;
    let http = reqwest::Client::new();
    let mut mcp = common::Mcp::new(&http, &gateway.url, "rr", &gateway.token("alice"));
    let (status, text) = mcp.initialize(None).await;
    assert!(status.is_success(), "{text}");
    let (status, _, text) = mcp
        .post(
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel",
                               "params": {"level": "debug"}}),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    // The client's standalone event stream, as SDK clients hold it.
    let stream = http
        .get(format!("{}/servers/rr/mcp", gateway.url))
        .bearer_auth(gateway.token("alice"))
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", mcp.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), reqwest::StatusCode::OK);
    gateway.pool.drain();
    timeout(BOUND, stream.bytes())
        .await
        .expect("the event stream ends when the pinned upstream session is gone")
        .ok();
    let (status, _, text) = mcp
        .post(
            serde_json::json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                               "params": {"name": "counter", "arguments": {}}}),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{text}");
}
