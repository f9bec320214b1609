//! Problems show at start, not at the first client: the gateway binary checks each server's
//! endpoints in the background (one connection and `initialize` each) at start and when a
//! server is added (through the API or the file, on SIGHUP), logs one line per server, and
//! shows a failure in `/servers/pools/health`.

mod common;

use std::time::{Duration, SystemTime};

use common::Process;
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::auth::{self, JwtSecret, Role};
use serde_json::{Value, json};

const SECRET: &str = "server-checks-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_checked_at_start_and_when_added() {
    let upstream = ReferenceServer::start().await.unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[servers]]\nid = \"live\"\nendpoints = [{{ url = \"{}\", transport = \"streamable_http\" }}]\n\n\
             [[servers]]\nid = \"down\"\nendpoints = [{{ url = \"http://{dead}/mcp\", transport = \"streamable_http\" }}]\n",
            upstream.url()
        ),
    )
    .unwrap();
    let mut gw = Process::start(
        &["--config", config.to_str().unwrap()],
        &[("JWT_SECRET_KEY", SECRET), ("SERVER_CHECKS", "true")],
        dir.path(),
    )
    .await;
    // The checks run beside the start-up: a result logged before "gateway listening" was read
    // by `Process::start` already.
    let results = [
        "server live: every endpoint (1) connected and initialized",
        "server down: 1 of 1 endpoints cannot serve: endpoints[0]",
    ];
    let pending: Vec<&str> = results
        .into_iter()
        .filter(|result| !gw.log.contains(result))
        .collect();
    gw.wait_for_all(&pending).await;
    assert!(gw.log.contains("connection refused"), "{}", gw.log);
    assert_eq!(upstream.initializes(), 1, "one check, before any client");

    let admin = auth::mint(
        &JwtSecret::new(SECRET).unwrap(),
        "admin",
        Role::Admin,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let health: Vec<Value> = http
        .get(format!("{}/servers/pools/health", gw.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let down = health.iter().find(|h| h["server_id"] == "down").unwrap();
    let why = down["endpoints"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("connection refused"), "{down}");
    // The words may quote the upstream: an operator's, not a user's.
    let user = auth::mint(
        &JwtSecret::new(SECRET).unwrap(),
        "alice",
        Role::User,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let seen: Vec<Value> = http
        .get(format!("{}/servers/pools/health", gw.base))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let down_for_user = seen.iter().find(|h| h["server_id"] == "down").unwrap();
    assert!(
        down_for_user["endpoints"][0]["last_error"].is_null(),
        "{down_for_user}"
    );
    assert_eq!(down_for_user["status"], down["status"]);
    let live = health.iter().find(|h| h["server_id"] == "live").unwrap();
    assert!(live["endpoints"][0]["last_error"].is_null(), "{live}");

    // A server added through the API is checked too.
    let created = http
        .post(format!("{}/servers", gw.base))
        .bearer_auth(&admin)
        .json(&json!({"id": "added", "endpoints": [{"url": format!("http://{dead}/other")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    gw.wait_for("server added: 1 of 1 endpoints cannot serve")
        .await;

    // So is one the file adds, on SIGHUP.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[servers]]\nid = \"later\"\nendpoints = [{{ url = \"http://{dead}/later\", transport = \"streamable_http\" }}]\n"
    ));
    std::fs::write(&config, text).unwrap();
    gw.signal("HUP");
    gw.wait_for("server later: 1 of 1 endpoints cannot serve")
        .await;
    gw.stop().await;
    upstream
        .wait_sessions_alive(0, Duration::from_secs(10))
        .await
        .expect("the check closed its session");
}
