//! The built-in stdio transport through a real pool, against the reference server served over
//! stdio by this crate's `mcp-pool-reference-stdio` binary, and a custom transport kind beside a
//! built-in one in one pool.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use mcp_pool::{Pool, PoolConfig, Principal, ServerConfig, ServerId, StrategyKind};
use mcp_pool_conformance::{DuplexTransport, ReferenceServer};
use mcp_pool_traits::{Endpoint, StdioCommand, TransportKind};
use rmcp::model::CallToolRequestParams;

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_mcp-pool-reference-stdio");

fn id(s: &str) -> ServerId {
    ServerId::new(s).unwrap()
}

/// An endpoint running `sh -c script` (the reference server is `$SERVER`).
fn sh(script: &str) -> Endpoint {
    Endpoint::stdio(StdioCommand {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([("SERVER".into(), SERVER_BIN.into())]),
        cwd: None,
    })
    .unwrap()
}

fn reference() -> Endpoint {
    Endpoint::stdio(StdioCommand {
        command: SERVER_BIN.into(),
        ..StdioCommand::default()
    })
    .unwrap()
}

fn pool_of(endpoint: Endpoint, config: PoolConfig) -> Pool {
    Pool::builder()
        .server(ServerConfig::new(id("local"), endpoint).pool(config))
        .build()
        .unwrap()
}

async fn counter(pool: &Pool, downstream: Option<&str>) -> String {
    let server = id("local");
    let mut request = mcp_pool::AcquireRequest::new(&server).principal(Principal::user("u"));
    if let Some(session) = downstream {
        request = request.downstream_session(session);
    }
    let lease = pool.acquire_with(request).await.expect("a stdio session");
    let result = lease
        .call_tool(CallToolRequestParams::new("counter"))
        .await
        .expect("counter over stdio");
    result.content[0].as_text().unwrap().text.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_stdio_sessions_and_their_state() {
    let pool = pool_of(reference(), PoolConfig::enabled());
    assert_eq!(counter(&pool, None).await, "1");
    assert_eq!(
        counter(&pool, None).await,
        "2",
        "the same process served both calls"
    );
    let stats = pool.stats();
    let server = &stats.servers[0];
    assert_eq!(server.endpoints[0].transport, TransportKind::Stdio);
    assert_eq!(server.endpoints[0].url, format!("stdio:{SERVER_BIN}"));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_downstream_sessions_get_processes_of_their_own() {
    let sticky = PoolConfig {
        strategy: StrategyKind::Sticky,
        ..PoolConfig::enabled()
    };
    let pool = pool_of(reference(), sticky);
    assert_eq!(counter(&pool, Some("a")).await, "1");
    assert_eq!(counter(&pool, Some("b")).await, "1");
    assert_eq!(counter(&pool, Some("a")).await, "2");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_reported_in_words() {
    let missing = Endpoint::stdio(StdioCommand {
        command: "/nonexistent/mcp-server".into(),
        ..StdioCommand::default()
    })
    .unwrap();
    let pool = pool_of(missing, PoolConfig::enabled());
    let error = pool
        .acquire(&id("local"), Principal::user("u"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("stdio server `/nonexistent/mcp-server` could not be started")
            && error.contains("No such file or directory"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_at_once_is_reported_with_its_last_stderr_line() {
    let failing = sh("echo 'loading config' >&2; echo 'fatal: API_KEY is not set' >&2; exit 3");
    let pool = pool_of(failing, PoolConfig::enabled());
    let error = pool
        .acquire(&id("local"), Principal::user("u"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("stdio server `sh` ended before it answered initialize")
            && error.contains("fatal: API_KEY is not set"),
        "{error}"
    );
}

/// Whether process `pid` is gone (or a zombie nobody reaped: dead all the same).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_kills_the_whole_process_group() {
    let dir = tempfile_dir();
    let pid_file = dir.join("grandchild.pid");
    // The server starts a grandchild (a long sleep) before it becomes the reference server.
    let script = format!(
        "sleep 300 & echo $! > {}; exec \"$SERVER\"",
        pid_file.display()
    );
    let pool = pool_of(sh(&script), PoolConfig::enabled());
    assert_eq!(counter(&pool, None).await, "1");
    let grandchild = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !gone(&grandchild),
        "the grandchild runs while the session lives"
    );
    pool.close().await;
    // Killing a process group is asynchronous: wait for the kernel to say so, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gone(&grandchild) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "grandchild {grandchild} outlived its session's process group"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcp-pool-stdio-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every `tracing` event's target and message, for the stderr test.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let target = event.metadata().target().to_owned();
        self.0.lock().unwrap().push((target, message.0));
    }
}

/// On a current-thread runtime: the subscriber set here is this thread's, and every task of
/// the pool runs on it.
#[tokio::test]
async fn stderr_lines_become_tracing_events() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let pool = pool_of(
        sh("echo 'ready on stdio, token=abc' >&2; exec \"$SERVER\""),
        PoolConfig::enabled(),
    );
    assert_eq!(counter(&pool, None).await, "1");
    pool.close().await;
    let seen = events.0.lock().unwrap().clone();
    assert!(
        seen.iter().any(
            |(target, message)| target == mcp_pool_transports::stdio::STDERR_TARGET
                && message.contains("ready on stdio")
        ),
        "{seen:?}"
    );
}

#[test]
fn stdio_endpoints_come_from_configuration_and_hide_what_may_be_secret() {
    let endpoint: Endpoint = serde_json::from_value(serde_json::json!({
        "transport": "stdio",
        "command": "uvx",
        "args": ["mcp-server-time", "--token", "s3cret-arg"],
        "env": {"API_KEY": "s3cret-env"},
        "cwd": "/srv"
    }))
    .unwrap();
    assert_eq!(&*endpoint.url, "stdio:uvx");
    let shown = format!("{endpoint:?} {endpoint}");
    assert!(
        shown.contains("API_KEY") && shown.contains("uvx"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    let round_trip: Endpoint =
        serde_json::from_value(serde_json::to_value(&endpoint).unwrap()).unwrap();
    assert_eq!(round_trip, endpoint);

    // The shape is checked when reading, the values by `validate` (which `Settings` and
    // `Pool::add_server` call, naming the field).
    for (bad, expected) in [
        (
            serde_json::json!({"transport": "stdio", "url": "http://x/mcp", "command": "a"}),
            "an endpoint of transport stdio takes command",
        ),
        (
            serde_json::json!({"transport": "streamable_http", "url": "http://x/mcp", "command": "a"}),
            "takes url, not command",
        ),
    ] {
        let error = serde_json::from_value::<Endpoint>(bad.clone()).unwrap_err();
        assert!(error.to_string().contains(expected), "{bad}: {error}");
    }
    for (bad, expected) in [
        (
            serde_json::json!({"transport": "stdio", "command": ""}),
            "command must be a program name or path",
        ),
        (
            serde_json::json!({"transport": "stdio", "command": "a", "env": {"A=B": "x"}}),
            "env name \"A=B\" is invalid",
        ),
    ] {
        let endpoint = serde_json::from_value::<Endpoint>(bad.clone()).unwrap();
        let error = endpoint.validate().unwrap_err();
        assert!(error.to_string().contains(expected), "{bad}: {error}");
    }
    let file = "[[servers]]\nid = \"time\"\nendpoints = [\n  \
                { transport = \"stdio\", command = \"uvx\", args = [\"mcp-server-time\"] },\n  \
                { transport = \"stdio\", command = \"\" },\n]\n";
    let error = mcp_pool::Settings::from_toml("pool.toml", file, |_| None).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "pool.toml:5:36: servers[0].endpoints[1].command: stdio endpoint: command must be"
        ),
        "{error}"
    );
    let file = file.replace(", command = \"\"", ", command = \"npx\"");
    let settings = mcp_pool::Settings::from_toml("pool.toml", &file, |_| None).unwrap();
    assert_eq!(&*settings.servers[0].endpoints()[0].url, "stdio:uvx");
}

/// A custom transport kind beside the built-in streamable HTTP in one pool: each endpoint
/// reaches its own transport, and stats name the custom kind by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_transport_kind_serves_beside_the_built_in_ones() {
    let duplex_kind = TransportKind::custom("duplex").unwrap();
    assert_eq!(
        duplex_kind,
        "duplex".parse().unwrap(),
        "parsed once declared"
    );
    let upstream = ReferenceServer::start().await.unwrap();
    let pool = Pool::builder()
        .transport(Arc::new(DuplexTransport::new(duplex_kind)))
        .server(ServerConfig::new(id("http"), upstream.endpoint()).pool(PoolConfig::enabled()))
        .server(
            ServerConfig::new(
                id("mem"),
                Endpoint::new("mem://reference", duplex_kind).unwrap(),
            )
            .pool(PoolConfig::enabled()),
        )
        .build()
        .unwrap();
    for server in ["http", "mem"] {
        let lease = pool
            .acquire(&id(server), Principal::user("u"))
            .await
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        let echoed = lease
            .call_tool(
                CallToolRequestParams::new("echo").with_arguments(
                    serde_json::json!({"message": server})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(echoed.content[0].as_text().unwrap().text, server);
    }
    let stats = pool.stats();
    let kinds: Vec<(String, String)> = stats
        .servers
        .iter()
        .map(|s| (s.server.to_string(), s.endpoints[0].transport.to_string()))
        .collect();
    assert!(
        kinds.contains(&("mem".into(), "duplex".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("http".into(), "streamable_http".into())),
        "{kinds:?}"
    );
    assert_eq!(
        upstream.sessions_opened(),
        1,
        "the HTTP server is reached over HTTP"
    );

    // An endpoint of a kind the pool has no transport for is refused when it is added.
    let error = pool
        .add_server(ServerConfig::new(
            id("quic"),
            Endpoint::new("quic://x", TransportKind::custom("quic").unwrap()).unwrap(),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("names transport quic, which this pool has no transport for")
            && error.contains("duplex")
            && error.contains("stdio"),
        "{error}"
    );
    pool.close().await;
}
