//! The official MCP SDK clients drive the gateway: the Python SDK's
//! `ClientSession` over `streamable_http_client` or `sse_client`
//! (`interop/python/gateway_client.py`) and the TypeScript SDK's `Client` over
//! `StreamableHTTPClientTransport` or `SSEClientTransport` (`interop/node/gateway_client.mjs`),
//! each run as a child process against the gateway served
//! in process on loopback, with the reference server (or the Python SDK server,
//! `interop/python/server.py`) as the upstream. The clients print one JSON object per line;
//! the tests assert on those lines and on the upstream's own counters.
//!
//! The SDKs are installed, pinned, by `interop/setup.sh` and found through
//! `MCP_POOL_INTEROP_PYTHON` and `MCP_POOL_INTEROP_NODE_DIR`; without them a test prints why it
//! skips that client, and with `MCP_POOL_REQUIRE_SERVICES=1` it fails instead.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use mcp_pool::{Endpoint, Pool, PoolConfig, ServerConfig, ServerId, StrategyKind, TransportKind};
use mcp_pool_conformance::{
    GREET_PROMPT, GREETING_RESOURCE, GREETING_TEXT, ReferenceServer, SERVER_NAME, services,
};
mod common;

use common::Served;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    time::timeout,
};

/// Bound on a client run or a line from it (interpreter start and imports included).
const BOUND: Duration = Duration::from_secs(60);

/// An official SDK client, installed.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    TypeScript,
}

impl Sdk {
    const ALL: [Sdk; 2] = [Sdk::Python, Sdk::TypeScript];

    /// The SDK's interpreter (Python) or npm prefix (TypeScript), or `None` after saying why
    /// the test skips it.
    fn setting(self) -> Option<String> {
        match self {
            Sdk::Python => services::interop_python(),
            Sdk::TypeScript => services::interop_node_dir(),
        }
    }

    /// The installed SDK clients; a missing one is skipped after saying why (a failure with
    /// `MCP_POOL_REQUIRE_SERVICES=1`).
    fn installed() -> Vec<Sdk> {
        Self::ALL
            .into_iter()
            .filter(|sdk| sdk.setting().is_some())
            .collect()
    }

    fn command(self, url: &str, token: &str, scenario: &str) -> Command {
        let setting = self.setting().expect("checked by installed()");
        let mut command = match self {
            Sdk::Python => {
                let mut command = Command::new(setting);
                command.arg(interop("python/gateway_client.py"));
                command
            }
            Sdk::TypeScript => {
                let mut command = Command::new("node");
                command
                    .arg(interop("node/gateway_client.mjs"))
                    .env("NODE_PATH", Path::new(&setting).join("node_modules"));
                command
            }
        };
        command
            .args([url, token, scenario])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    fn spawn(self, url: &str, token: &str, scenario: &str) -> Client {
        let mut child = self
            .command(url, token, scenario)
            .spawn()
            .unwrap_or_else(|e| panic!("{self:?}: could not start the client: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
                .await
                .map(|_| text)
                .unwrap_or_default()
        });
        Client {
            sdk: self,
            child,
            lines,
            stderr,
            events: Vec::new(),
        }
    }

    /// Runs `scenario` to its end; its events. Panics when the client fails.
    async fn run(self, url: &str, token: &str, scenario: &str) -> Vec<Value> {
        self.spawn(url, token, scenario).finish().await
    }
}

fn interop(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../interop")
        .join(script)
}

/// A running SDK client and the events it printed so far.
struct Client {
    sdk: Sdk,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Everything the client wrote on stderr, once it exits.
    stderr: tokio::task::JoinHandle<String>,
    events: Vec<Value>,
}

impl Client {
    /// Reads events until one named `event`; panics on an `error` event or the end.
    async fn until(&mut self, event: &str) -> &Value {
        loop {
            let line = timeout(BOUND, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{:?}: no {event:?} within {BOUND:?}", self.sdk))
                .expect("the client's stdout")
                .unwrap_or_else(|| {
                    panic!("{:?}: ended before {event:?}: {:?}", self.sdk, self.events)
                });
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{:?}: {line:?} is not JSON: {e}", self.sdk));
            assert_ne!(value["event"], "error", "{:?}: {value}", self.sdk);
            self.events.push(value);
            if self.events.last().unwrap()["event"] == event {
                return self.events.last().unwrap();
            }
        }
    }

    /// Reads every remaining event and checks that the client exits with success and logged
    /// no failure (the SDKs log what they do not raise, such as a failed session termination).
    async fn finish(mut self) -> Vec<Value> {
        while let Some(line) = timeout(BOUND, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{:?}: hung: {:?}", self.sdk, self.events))
            .expect("the client's stdout")
        {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{:?}: {line:?} is not JSON: {e}", self.sdk));
            self.events.push(value);
        }
        let status = timeout(BOUND, self.child.wait()).await.unwrap().unwrap();
        let stderr = self.stderr.await.unwrap();
        eprint!("{stderr}");
        assert!(
            status.success(),
            "{:?}: {status}: {:?}",
            self.sdk,
            self.events
        );
        assert!(
            !stderr.to_lowercase().contains("failed"),
            "{:?} logged a failure: {stderr}",
            self.sdk
        );
        self.events
    }
}

impl Client {
    /// Waits for the client to fail; its `error` event.
    async fn failure(mut self) -> Value {
        let mut events = Vec::new();
        while let Some(line) = timeout(BOUND, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{:?}: hung", self.sdk))
            .expect("the client's stdout")
        {
            events.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        let status = timeout(BOUND, self.child.wait()).await.unwrap().unwrap();
        assert!(!status.success(), "{:?}: {events:?}", self.sdk);
        named(&events, "error")
            .first()
            .map(|e| (*e).clone())
            .unwrap_or_else(|| panic!("{:?}: no error event: {events:?}", self.sdk))
    }
}

/// The events named `name`.
fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// The texts of the `call` events, in order.
fn call_texts(events: &[Value]) -> Vec<String> {
    named(events, "call")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The gateway in process: servers `rr` (round robin), `sticky` and `off` (pooling disabled),
/// all on `endpoint`.
struct Gateway(Served);

impl Gateway {
    async fn start(endpoint: Endpoint) -> Self {
        let server = |id: &str, pool: PoolConfig| {
            ServerConfig::new(ServerId::new(id).unwrap(), endpoint.clone()).pool(pool)
        };
        let sticky = PoolConfig {
            strategy: StrategyKind::Sticky,
            ..PoolConfig::enabled()
        };
        let servers = [
            server("rr", PoolConfig::enabled()),
            server("sticky", sticky),
            server("off", PoolConfig::default()),
        ];
        Self(Served::start(&servers, Pool::builder()).await)
    }

    fn mcp(&self, server: &str) -> String {
        format!("{}/servers/{server}/mcp", self.0.url)
    }

    fn token(&self, user: &str) -> String {
        self.0.token(user)
    }

    /// Runs `scenario` with `sdk` on `server` as `user`.
    async fn run(&self, sdk: Sdk, server: &str, user: &str, scenario: &str) -> Vec<Value> {
        sdk.run(&self.mcp(server), &self.token(user), scenario)
            .await
    }

    /// Runs `scenario` with `sdk` on `server`'s HTTP+SSE endpoint as `user`.
    async fn run_sse(&self, sdk: Sdk, server: &str, user: &str, scenario: &str) -> Vec<Value> {
        let url = format!("{}/servers/{server}/sse", self.0.url);
        sdk.run(&url, &self.token(user), scenario).await
    }
}

/// A fresh reference server and a gateway in front of it.
async fn reference() -> (ReferenceServer, Gateway) {
    let upstream = ReferenceServer::start().await.unwrap();
    let gateway = Gateway::start(upstream.endpoint()).await;
    (upstream, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_list_and_call_tools_and_read_resources_and_prompts() {
    for sdk in Sdk::installed() {
        let (_upstream, gw) = reference().await;
        let events = gw.run(sdk, "rr", "alice", "basics").await;
        let init = assert_basics(sdk, &events);
        eprintln!(
            "{sdk:?} SDK client negotiated protocol {}",
            init["protocol"]
        );
        let protocol = init["protocol"].as_str().unwrap_or_default();
        assert!(
            ["2025-03-26", "2025-06-18", "2025-11-25"].contains(&protocol),
            "{sdk:?}: a session-based streamable HTTP version: {init}"
        );
    }
}

/// The `basics` scenario's events against the reference server: its `initialized` event.
fn assert_basics(sdk: Sdk, events: &[Value]) -> &Value {
    let init = named(events, "initialized")[0];
    assert_eq!(init["server"], SERVER_NAME, "{sdk:?}: {init}");
    for capability in ["tools", "resources", "prompts"] {
        let listed = init["capabilities"].as_array().unwrap();
        assert!(listed.contains(&capability.into()), "{sdk:?}: {init}");
    }
    let tools = &named(events, "tools")[0]["names"];
    for tool in ["echo", "counter", "sleep", "progress"] {
        assert!(
            tools.as_array().unwrap().contains(&tool.into()),
            "{sdk:?}: {tools}"
        );
    }
    assert_eq!(call_texts(events), ["hello through the gateway"], "{sdk:?}");
    assert_eq!(
        named(events, "resources")[0]["uris"],
        serde_json::json!([GREETING_RESOURCE])
    );
    assert_eq!(
        named(events, "resource")[0]["text"],
        GREETING_TEXT,
        "{sdk:?}"
    );
    assert_eq!(
        named(events, "prompts")[0]["names"],
        serde_json::json!([GREET_PROMPT])
    );
    assert_eq!(named(events, "prompt")[0]["text"], "Hello, Ada!", "{sdk:?}");
    init
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_over_sse_call_tools_get_progress_and_keep_sticky_sessions_apart() {
    // The legacy HTTP+SSE transport (2024-11-05) downstream: `/servers/{id}/sse` and its
    // message endpoint, with the SDKs' own SSE clients.
    for sdk in Sdk::installed() {
        let (upstream, gw) = reference().await;
        assert_basics(sdk, &gw.run_sse(sdk, "rr", "alice", "basics").await);
        let progress = gw.run_sse(sdk, "rr", "alice", "progress").await;
        match sdk {
            Sdk::Python => assert_progress(sdk, &progress),
            // A known gap: over the HTTP+SSE adapter the call's last progress notification
            // can reach the TypeScript SDK after the result, which it then drops. The first
            // ones and the result arrive, in order.
            Sdk::TypeScript => {
                assert_eq!(call_texts(&progress), ["done 3"], "{sdk:?}");
                assert!(
                    !named(&progress, "progress").is_empty(),
                    "{sdk:?}: {progress:?}"
                );
            }
        }
        let opened = upstream.sessions_opened();
        let events = gw.run_sse(sdk, "sticky", "alice", "counters").await;
        assert_eq!(
            call_texts(&events),
            ["1", "2", "1", "3", "2"],
            "{sdk:?}: each downstream SSE session has its own upstream session"
        );
        assert_eq!(upstream.sessions_opened(), opened + 2, "{sdk:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_drive_the_gateway_in_front_of_the_python_sdk_server() {
    let sdks = Sdk::installed();
    if !sdks.iter().any(|sdk| matches!(sdk, Sdk::Python)) {
        return; // the upstream is the Python SDK's server
    }
    let python = Sdk::Python.setting().unwrap();
    let mut command = Command::new(python);
    command
        .arg(interop("python/server.py"))
        .args(["--transport", "streamable-http"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut upstream = command.spawn().expect("start the Python SDK server");
    let mut lines = BufReader::new(upstream.stdout.take().unwrap()).lines();
    let port = timeout(BOUND, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(port) = line.strip_prefix("LISTENING ") {
                return port.trim().to_owned();
            }
        }
        panic!("the Python SDK server exited before listening");
    })
    .await
    .expect("the Python SDK server listens");
    let endpoint = Endpoint::new(
        format!("http://127.0.0.1:{port}/mcp"),
        TransportKind::StreamableHttp,
    )
    .unwrap();
    let gw = Gateway::start(endpoint).await;
    for sdk in sdks {
        let events = gw.run(sdk, "rr", "alice", "basics").await;
        let init = named(&events, "initialized")[0];
        assert_eq!(init["server"], "mcp-pool-interop-python", "{sdk:?}: {init}");
        assert_eq!(
            call_texts(&events),
            ["hello through the gateway"],
            "{sdk:?}"
        );
        assert_eq!(
            named(&events, "resources")[0]["uris"],
            serde_json::json!(["ref://greeting"])
        );
        let resource = named(&events, "resource")[0];
        assert_eq!(
            resource["text"], "hello from the Python SDK server",
            "{sdk:?}"
        );
        assert_eq!(
            named(&events, "prompt")[0]["text"],
            "Hello, Ada!",
            "{sdk:?}"
        );

        let events = gw.run(sdk, "rr", "alice", "progress").await;
        assert_progress(sdk, &events);

        let events = gw.run(sdk, "rr", "alice", "exchange").await;
        assert_exchange(sdk, &events);
    }
    let stdin = upstream.stdin.take();
    drop(stdin); // the server exits when its stdin closes
}

/// Progress of 3 arrived during the call, every step, in order, before its result. (The pool
/// routes notifications as its transports receive them, in wire order: rmcp's client hands
/// each one to a task of its own, which could let the last step trail the reply.)
fn assert_progress(sdk: Sdk, events: &[Value]) {
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"initialized"), "{sdk:?}: {events:?}");
    assert_eq!(
        kinds.last(),
        Some(&"call"),
        "{sdk:?}: the result comes last: {events:?}"
    );
    let progress: Vec<(f64, f64)> = named(events, "progress")
        .iter()
        .map(|e| {
            (
                e["progress"].as_f64().unwrap(),
                e["total"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)],
        "{sdk:?}: {events:?}"
    );
    assert_eq!(call_texts(events), ["done 3"], "{sdk:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_sdk_clients_during_a_slow_call() {
    for sdk in Sdk::installed() {
        let (_upstream, gw) = reference().await;
        let events = gw.run(sdk, "rr", "alice", "progress").await;
        assert_progress(sdk, &events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_an_sdk_client_cancels_is_cancelled_upstream() {
    for sdk in Sdk::installed() {
        let (upstream, gw) = reference().await;
        let mut client = sdk.spawn(&gw.mcp("rr"), &gw.token("alice"), "cancel");
        client.until("sent").await;
        upstream
            .wait_until(|s| s.tool_calls >= 1, BOUND)
            .await
            .unwrap_or_else(|_| panic!("{sdk:?}: the sleep call reached the upstream"));
        assert_eq!(upstream.stats().calls_cancelled, 0, "{sdk:?}");
        let mut stdin = client.child.stdin.take().unwrap();
        stdin.write_all(b"cancel\n").await.unwrap();
        let stats = upstream
            .wait_until(|s| s.calls_cancelled >= 1, BOUND)
            .await
            .unwrap_or_else(|_| panic!("{sdk:?}: the upstream's sleep was not cancelled"));
        assert_eq!(stats.calls_cancelled, 1, "{sdk:?}");
        client.until("cancelled").await;
        client.finish().await;
    }
}

/// The `exchange` scenario went through: the ping, and the calls whose upstream asked the
/// client (sampling, elicitation, roots) answered with what the client answered; the `log`
/// call's lines never duplicated nor foreign.
///
/// A line may be missing or out of order (a known gap, not asserted): the pool's rmcp client
/// handles each notification in a task of its own, so lines can overtake each other and trail
/// the reply even when the upstream sent them first on the request's stream (the Python SDK
/// server does; the reference server sends logging on its standalone stream). A line that
/// trails the reply belongs to the upstream session, not the call
/// (tests/lease_notifications.rs), and the gateway relays only the call's notifications. Under
/// a loaded test run about one run in four loses or swaps a line.
fn assert_exchange(sdk: Sdk, events: &[Value]) {
    assert_eq!(named(events, "pong").len(), 1, "{sdk:?}: {events:?}");
    let mut logs = logs(events);
    logs.sort_unstable();
    logs.dedup();
    assert!(
        logs.len() == named(events, "log").len() && logs.iter().all(|l| ["one", "two"].contains(l)),
        "{sdk:?}: {events:?}"
    );
    assert_eq!(
        call_texts(events)[..4],
        [
            "logged 2",
            "sampled: reply to hello upstream",
            r#"elicited: accept {"answer":"yes"}"#,
            "roots: file:///sdk-root",
        ],
        "{sdk:?}: {events:?}"
    );
}

/// The data of the logging notifications the client received.
fn logs(events: &[Value]) -> Vec<&str> {
    named(events, "log")
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_answer_the_upstreams_requests_and_get_its_errors() {
    for sdk in Sdk::installed() {
        let (_upstream, gw) = reference().await;
        let events = gw.run(sdk, "rr", "alice", "exchange").await;
        assert_exchange(sdk, &events);
        let error = named(&events, "call_error")[0];
        assert_eq!(error["code"], -32603, "{sdk:?}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("boom-7"),
            "{sdk:?}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_without_a_valid_token_are_refused_with_401() {
    for sdk in Sdk::installed() {
        let (upstream, gw) = reference().await;
        let error = sdk
            .spawn(&gw.mcp("rr"), "not-a-jwt", "basics")
            .failure()
            .await;
        eprintln!("{sdk:?} without a valid token: {error}");
        // The Python SDK reports an HTTP status only through the client's response hook.
        assert!(error.to_string().contains("401"), "{sdk:?}: {error}");
        assert!(
            !error.to_string().contains("not-a-jwt"),
            "{sdk:?}: the token is never echoed: {error}"
        );
        assert_eq!(upstream.sessions_opened(), 0, "{sdk:?}");
    }
}

/// The `counters` scenario of `sdk` as alice on `server` of a fresh gateway and reference
/// server: the client's events, and the upstream.
async fn counters(sdk: Sdk, server: &str) -> (Vec<Value>, ReferenceServer) {
    let (upstream, gw) = reference().await;
    (gw.run(sdk, server, "alice", "counters").await, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_sdk_clients_never_share_an_upstream_session() {
    for sdk in Sdk::installed() {
        let (upstream, gw) = reference().await;
        let alice = gw.run(sdk, "rr", "alice", "counters").await;
        let bob = gw.run(sdk, "rr", "bob", "counters").await;
        assert_eq!(call_texts(&alice), ["1", "2", "3", "4", "5"], "{sdk:?}");
        assert_eq!(
            call_texts(&bob),
            ["1", "2", "3", "4", "5"],
            "{sdk:?}: bob's calls never reach alice's session"
        );
        assert_eq!(upstream.sessions_opened(), 2, "{sdk:?}: one per user");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sdk_sessions_of_one_user_keep_separate_counters_on_a_sticky_server() {
    // The reproducer of ContextForge #4205, with official SDK clients.
    for sdk in Sdk::installed() {
        let (events, upstream) = counters(sdk, "sticky").await;
        let sessions: Vec<u64> = named(&events, "call")
            .iter()
            .map(|e| e["session"].as_u64().unwrap())
            .collect();
        assert_eq!(sessions, [0, 0, 1, 0, 1], "{sdk:?}");
        assert_eq!(
            call_texts(&events),
            ["1", "2", "1", "3", "2"],
            "{sdk:?}: each downstream session has its own upstream session"
        );
        assert_eq!(upstream.sessions_opened(), 2, "{sdk:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_sdk_sessions_reuse_an_upstream_session_on_a_round_robin_server() {
    for sdk in Sdk::installed() {
        let (events, upstream) = counters(sdk, "rr").await;
        assert_eq!(call_texts(&events), ["1", "2", "3", "4", "5"], "{sdk:?}");
        assert_eq!(upstream.sessions_opened(), 1, "{sdk:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pooling_disabled_every_sdk_call_is_a_new_upstream_session() {
    for sdk in Sdk::installed() {
        let (events, upstream) = counters(sdk, "off").await;
        assert_eq!(
            call_texts(&events),
            ["1"; 5],
            "{sdk:?}: no state survives between calls"
        );
        // Every forwarded request has an upstream session of its own: besides the five
        // calls, each downstream session's `initialize` and whatever else the SDK asks (the
        // Python SDK lists tools before its first call, to validate results).
        let stats = upstream.stats();
        assert_eq!(stats.tool_calls, 5, "{sdk:?}");
        assert!(stats.sessions_opened >= 5 + 2, "{sdk:?}: {stats:?}");
        upstream
            .wait_sessions_alive(0, BOUND)
            .await
            .unwrap_or_else(|e| panic!("{sdk:?}: each is closed after its request: {e:?}"));
    }
}
