//! The in-process harness of the REST tests: a router on a real pool, requests sent with
//! `oneshot`, and every response checked for secrets.
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
use serde_json::Value;
use tower::ServiceExt;

/// The JWT secret of every harness; never in a response.
pub const SECRET: &str = "test-secret-0123456789abcdef-do-not-leak";

/// A router on `pool` with the registry seeded by `seeds` and the backend's records, auth
/// required; and a token for it.
pub async fn gateway(pool: &Pool, seeds: &[ServerConfig], max_body_bytes: usize) -> Gateway {
    let secret = auth::JwtSecret::new(SECRET).unwrap();
    let token = auth::mint(
        &secret,
        "admin",
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let registry = Registry::load(pool.clone(), seeds).await.unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let app = mcp_pool_gateway::router(AppState {
        pool: pool.clone(),
        registry,
        auth: Auth::Required(secret),
        max_body_bytes,
        metrics: Some(recorder.handle()),
    });
    Gateway {
        app,
        token,
        forbidden: Vec::new(),
    }
}

/// A pool with `seeds` as its servers.
pub fn pool_of(seeds: &[ServerConfig], builder: mcp_pool::PoolBuilder) -> Pool {
    seeds
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

/// The gateway binary, run as a child process.
pub struct Process {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// Its log (stderr) so far.
    pub log: String,
    /// `http://ADDR` it listens on.
    pub base: String,
}

/// The gateway binary's path.
pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-pool-gateway");

impl Process {
    /// Starts the binary with `args` (a free port is added) and `envs` in `dir`, and waits for
    /// its "gateway listening on" line.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], dir: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .args(["--port", "0"])
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        let base = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("exited before listening:\n{log}"));
            log.push_str(&line);
            log.push('\n');
            if let Some(addr) = line.split("gateway listening on ").nth(1) {
                break addr.trim().to_owned();
            }
        };
        Self {
            child,
            lines,
            log,
            base,
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0), reading the rest of the log.
    pub async fn stop(&mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        while let Some(line) = self.lines.next_line().await.unwrap() {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}\n{}", self.log);
    }
}
