//! A stdio server starts with a minimal environment, not the gateway's: a secret in the
//! gateway's environment never reaches it; `PATH` and the locale do; the endpoint's `env` is
//! added and wins.
//!
//! This binary is both the test and the stdio server the test starts (`harness = false`:
//! libtest would print to the stdout that carries JSON-RPC). Started with [`SERVE_VAR`] set,
//! which only the endpoint's `env` sets, it serves MCP on its stdin and stdout and answers
//! `initialize` with its own environment, as a JSON object, for `instructions`. Either way it
//! ignores its arguments: `cargo test` filters do not apply to its one test.

use std::{collections::BTreeMap, ffi::OsString, time::Duration};

use http::HeaderMap;
use mcp_pool_traits::{
    ConnectRequest, Endpoint, SessionHandler, StdioCommand, Transport as _, default_client_config,
};
use mcp_pool_transports::{Stdio, stdio::child_env};
use rmcp::{
    ServerHandler, ServiceExt as _,
    model::{ServerCapabilities, ServerConfig},
};

/// Set in the endpoint's `env`: this process is the stdio server.
const SERVE_VAR: &str = "MCP_POOL_TEST_STDIO_SERVER";
/// Set in the test's environment (the gateway's) only.
const CANARY: &str = "MCP_POOL_TEST_SECRET_CANARY";

fn main() {
    if std::env::var_os(SERVE_VAR).is_some() {
        return serve();
    }
    // SAFETY: no other thread exists yet (the runtime is built after), so nothing reads the
    // environment while it changes.
    unsafe {
        std::env::set_var(CANARY, "the gateway's secret");
        std::env::set_var("LC_MESSAGES", "C");
        std::env::set_var("TZ", "Europe/Paris");
        // An inherited name, holding an exported shell function.
        std::env::set_var("TERM", "() { echo pwned; }");
    }
    runtime().block_on(a_stdio_server_gets_a_minimal_environment());
    println!("test a_stdio_server_gets_a_minimal_environment ... ok");
}

async fn a_stdio_server_gets_a_minimal_environment() {
    let program = std::env::current_exe().expect("the path of this test");
    let own = BTreeMap::from([
        (SERVE_VAR.to_owned(), "1".to_owned()),
        ("TZ".to_owned(), "UTC".to_owned()),
    ]);
    let endpoint = Endpoint::stdio(StdioCommand {
        command: program.to_string_lossy().into_owned(),
        env: own.clone(),
        ..StdioCommand::default()
    })
    .expect("a valid stdio endpoint");
    let request = ConnectRequest::new(
        &endpoint,
        &HeaderMap::new(),
        Duration::from_secs(30),
        SessionHandler::new(default_client_config(), None),
    );
    let session = Stdio::new()
        .connect(request)
        .await
        .expect("the stdio server starts and answers initialize");
    let instructions = session
        .peer_info()
        .and_then(|info| info.instructions.clone())
        .expect("the server's environment in its instructions");
    let seen: BTreeMap<String, String> =
        serde_json::from_str(&instructions).expect("a JSON object of strings");

    assert!(
        !seen.contains_key(CANARY),
        "the gateway's secret reached the server: {seen:?}"
    );
    assert!(
        seen.keys().any(|name| name.eq_ignore_ascii_case("PATH")),
        "no PATH to find programs with: {seen:?}"
    );
    assert_eq!(seen.get("LC_MESSAGES").map(String::as_str), Some("C"));
    assert_eq!(
        seen.get("TZ").map(String::as_str),
        Some("UTC"),
        "the endpoint's env wins"
    );
    assert!(
        !seen.contains_key("TERM"),
        "a shell function was inherited: {seen:?}"
    );
    // Nothing else: the server's environment is exactly the documented one.
    let expected: BTreeMap<String, String> = child_env(std::env::vars_os(), &own)
        .into_iter()
        .map(lossy)
        .collect();
    assert_eq!(seen, expected);

    session.cancel().await.expect("the session closes");
}

/// The stdio server: serves [`EnvReporter`] until its stdin ends.
fn serve() {
    runtime().block_on(async {
        let server = EnvReporter
            .serve(rmcp::transport::stdio())
            .await
            .expect("initialized by the test");
        // Ends when the test closes the session (or kills the process).
        let _ = server.waiting().await;
    });
}

/// An MCP server whose `instructions` are its process's environment, as a JSON object.
struct EnvReporter;

impl ServerHandler for EnvReporter {
    fn get_info(&self) -> ServerConfig {
        let env: BTreeMap<String, String> = std::env::vars_os().map(lossy).collect();
        let env = serde_json::to_string(&env).expect("strings serialize");
        ServerConfig::new(ServerCapabilities::default()).with_instructions(env)
    }
}

fn lossy((name, value): (OsString, OsString)) -> (String, String) {
    (
        name.to_string_lossy().into_owned(),
        value.to_string_lossy().into_owned(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}
