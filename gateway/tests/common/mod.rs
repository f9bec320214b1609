//! Test harnesses: the router in process on a real pool (requests sent with `oneshot`, every
//! response checked for secrets), and the binary as a child process (start it, read its log,
//! signal it, stop it).
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use mcp_pool::{Pool, ServerConfig};
use mcp_pool_gateway::{AppState, Auth, Registry, auth};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The JWT secret of every harness; never in a response.
pub const SECRET: &str = "test-secret-0123456789abcdef-do-not-leak";

/// A router on `pool` with the registry loaded from `file_servers` and the backend's records, auth
/// required; and a token for it.
pub async fn gateway(pool: &Pool, file_servers: &[ServerConfig], max_body_bytes: usize) -> Gateway {
    let secret = auth::JwtSecret::new(SECRET).unwrap();
    let token = auth::mint(
        &secret,
        "admin",
        auth::Role::Admin,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    // The registry tests name `CARGO_PKG_NAME` (set by cargo for every test) as a credential.
    let credentials = mcp_pool_gateway::policy::CredentialsPolicy::parse(
        "CREDENTIALS_ENV_ALLOWED",
        "CARGO_PKG_NAME",
    )
    .unwrap();
    let registry = Registry::load_with(pool.clone(), file_servers, credentials)
        .await
        .unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let app = mcp_pool_gateway::router(AppState {
        max_body_bytes,
        metrics: Some(recorder.handle()),
        ..AppState::new(pool.clone(), registry, Auth::Required(secret.into()))
    });
    Gateway {
        app,
        token,
        forbidden: Vec::new(),
    }
}

/// A pool with `file_servers` as its servers.
pub fn pool_of(file_servers: &[ServerConfig], builder: mcp_pool::PoolBuilder) -> Pool {
    file_servers
        .iter()
        .fold(builder, |b, s| b.server(s.clone()))
        .build()
        .unwrap()
}

/// A router and a valid token.
pub struct Gateway {
    pub app: Router,
    pub token: String,
    /// Texts no response may contain besides [`SECRET`] (passwords, credential values).
    pub forbidden: Vec<String>,
}

impl Gateway {
    /// `method path` with the token and a JSON `body`.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, String) {
        self.send_as(Some(&self.token), method, path, body).await
    }

    /// `method path` with `token` (none: no `Authorization`) and a JSON `body`; fails the test
    /// when the response holds [`SECRET`] or a [`forbidden`](Self::forbidden) text.
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_owned())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains(SECRET), "JWT secret in a response: {text}");
        for secret in &self.forbidden {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in a response: {text}"
            );
        }
        (status, text)
    }
}

/// The `detail` of an error body.
pub fn detail(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {body}"))
        .to_owned()
}

use std::{path::Path, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, Command},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-pool-gateway");

/// The binary the process tests start: `MCP_POOL_GATEWAY_BIN` when set (to run a suite against
/// another build, such as an older release), else [`BIN`].
pub fn bin() -> String {
    std::env::var("MCP_POOL_GATEWAY_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| BIN.to_owned())
}
/// Bound on waiting for a log line (start-up on a loaded 2-core machine included).
pub const LOG_WAIT: Duration = Duration::from_secs(60);

/// The gateway binary running as a child process: its base URL and its log (stderr) so far.
pub struct Process {
    pub child: Child,
    pub base: String,
    pub log: String,
    /// Its stderr, line by line: read by a task of its own as it comes, so that a chatty
    /// gateway never blocks on a full pipe while the test is busy elsewhere.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts the binary on a free port with `args` and `envs`, in `dir` (no stray `.env`),
    /// and returns once it listens.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            .args(["--port", "0"])
            // The start-up checks open a session on each upstream, which would throw off the
            // tests that count an upstream's sessions; the tests of the checks turn them on.
            .env("SERVER_CHECKS", "false")
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr: Lines<BufReader<ChildStderr>> =
            BufReader::new(child.stderr.take().unwrap()).lines();
        let (sink, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if sink.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gateway = Self {
            child,
            base: String::new(),
            log: String::new(),
            lines,
        };
        let line = gateway.wait_for("gateway listening on ").await;
        gateway.base = line
            .split("gateway listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_owned();
        gateway
    }

    /// The next log line containing `needle` (bounded by [`LOG_WAIT`]); panics with the log
    /// when the process exits or the wait runs out.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(LOG_WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.log.push_str(&line);
                self.log.push('\n');
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("exited before logging {needle:?}:\n{}", self.log),
            Err(_) => panic!("no {needle:?} within {LOG_WAIT:?}:\n{}", self.log),
        }
    }

    /// Waits until a log line containing each of `needles` has appeared, in any order
    /// (bounded by [`LOG_WAIT`]).
    #[allow(dead_code)] // not every test binary uses it
    pub async fn wait_for_all(&mut self, needles: &[&str]) {
        let mut missing: Vec<&str> = needles.to_vec();
        let found = tokio::time::timeout(LOG_WAIT, async {
            while !missing.is_empty() {
                let Some(line) = self.lines.recv().await else {
                    return false;
                };
                self.log.push_str(&line);
                self.log.push('\n');
                missing.retain(|needle| !line.contains(needle));
            }
            true
        })
        .await;
        assert!(
            found == Ok(true),
            "no {missing:?} within {LOG_WAIT:?}:\n{}",
            self.log
        );
    }

    /// Everything it logged so far, without waiting.
    pub fn log_so_far(&mut self) -> &str {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        &self.log
    }

    /// Sends `signal` (`HUP`, `TERM`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM, then the exit status; asserts a clean exit.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        while let Some(line) = self.lines.recv().await {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}\n{}", self.log);
    }
}

/// The router served on a loopback port over a pool of `servers` (their registry loaded from
/// them), auth on with [`SECRET`]: what MCP clients connect to.
pub struct Served {
    pub pool: Pool,
    /// `http://ADDR`.
    pub url: String,
    pub secret: auth::JwtSecret,
    _task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(servers: &[ServerConfig], builder: mcp_pool::PoolBuilder) -> Self {
        let pool = pool_of(servers, builder);
        let secret = auth::JwtSecret::new(SECRET).unwrap();
        let registry = Registry::load(pool.clone(), servers).await.unwrap();
        let app = mcp_pool_gateway::router(AppState::new(
            pool.clone(),
            registry,
            Auth::Required(secret.clone().into()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            pool,
            url,
            secret,
            _task: task,
        }
    }

    /// A token for `user` (role `user`), valid 10 minutes.
    pub fn token(&self, user: &str) -> String {
        auth::mint(
            &self.secret,
            user,
            auth::Role::User,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap()
    }
}

/// The JSON-RPC messages of an MCP answer: a JSON body, or the `data:` lines of an event
/// stream.
pub fn messages(text: &str) -> Vec<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return vec![value];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// An MCP client over streamable HTTP, spoken by hand with reqwest: the black-box tests'
/// client, version-independent (any build of the gateway answers it).
pub struct Mcp<'a> {
    http: &'a reqwest::Client,
    url: String,
    token: String,
    /// The session id the gateway gave, once initialized.
    pub session: Option<String>,
    /// More request headers (identity headers, say).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl<'a> Mcp<'a> {
    pub fn new(http: &'a reqwest::Client, base: &str, server: &str, token: &str) -> Self {
        Self {
            http,
            url: format!("{base}/servers/{server}/mcp"),
            token: token.to_owned(),
            session: None,
            headers: Vec::new(),
        }
    }

    /// POSTs `message` (with `origin`, if any): the status, the session header, the body.
    pub async fn post(
        &self,
        message: Value,
        origin: Option<&str>,
    ) -> (reqwest::StatusCode, Option<String>, String) {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&message);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        for (name, value) in &self.headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, session, response.text().await.unwrap())
    }

    /// `initialize` then `notifications/initialized`: the answer to `initialize`.
    pub async fn initialize(&mut self, origin: Option<&str>) -> (reqwest::StatusCode, String) {
        let (status, session, text) = self
            .post(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "attacker", "version": "1"}}}),
                origin,
            )
            .await;
        if status.is_success() && session.is_some() {
            self.session = session;
            let (s, _, _) = self
                .post(
                    json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                    origin,
                )
                .await;
            assert!(s.is_success(), "notifications/initialized: {s}");
        }
        (status, text)
    }

    /// `tools/call name arguments`: the JSON-RPC answer.
    pub async fn call(&self, name: &str, arguments: Value) -> Value {
        let (status, _, text) = self
            .post(
                json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{text}");
        messages(&text)
            .into_iter()
            .find(|m| m["id"] == 2)
            .unwrap_or_else(|| panic!("no answer to tools/call: {text}"))
    }

    pub async fn delete(&self) -> reqwest::StatusCode {
        self.http
            .delete(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", self.session.as_deref().unwrap())
            .send()
            .await
            .unwrap()
            .status()
    }
}
