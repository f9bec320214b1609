//! The README's "Run the gateway" steps, run against the binary as a child process: start it
//! with `--demo`, mint a token with the `token` subcommand, PUT the README's body, read the
//! stats; then SIGTERM shuts it down cleanly. The PUT body is read from the README itself so
//! the section stays true.

mod common;

use common::{BIN, Process};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "readme-test-secret-9f8e7d6c5b4a";

/// The README section's `curl` lines: (the PUT body, the stats path).
fn readme_steps() -> (String, String) {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Run the gateway")
        .nth(1)
        .expect("README has a \"Run the gateway\" section");
    let section = section.split("\n## ").next().unwrap();
    let put = section
        .lines()
        .find(|l| l.starts_with("curl -s -X PUT"))
        .expect("a PUT line");
    assert!(
        put.contains("http://127.0.0.1:4444/servers/demo/pool/config"),
        "{put}"
    );
    let body = put
        .split("-d '")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'')
        .to_owned();
    let get = section
        .lines()
        .find(|l| l.starts_with("curl -s http://127.0.0.1:4444/servers/demo/pool/stats"))
        .expect("a stats line");
    assert!(get.contains("Bearer $TOKEN"));
    assert!(section.contains("cargo run -p mcp-pool-gateway -- --demo"));
    assert!(section.contains("token --sub admin --exp-minutes 60"));
    (body, "/servers/demo/pool/stats".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_steps_work_against_the_binary() {
    let (put_body, stats_path) = readme_steps();
    let dir = std::env::temp_dir();
    let mut gateway = Process::start(&["--demo"], &[("JWT_SECRET_KEY", SECRET)], &dir).await;
    let (base, log) = (gateway.base.clone(), gateway.log.clone());
    assert!(
        log.contains("pool manager initialized with 1 servers"),
        "{log}"
    );
    assert!(
        log.contains("creating/updating pool for server demo with strategy=round_robin"),
        "{log}"
    );

    let token = std::process::Command::new(BIN)
        .args(["token", "--sub", "admin", "--exp-minutes", "60"])
        .env("JWT_SECRET_KEY", SECRET)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let http = reqwest::Client::new();
    let put = http
        .put(format!("{base}/servers/demo/pool/config"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(put_body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let applied: Value = put.json().await.unwrap();
    assert_eq!(applied["enabled"], true);
    assert_eq!(applied["min_size"], 2);

    let stats = http
        .get(format!("{base}{stats_path}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    let stats: Value = stats.json().await.unwrap();
    assert_eq!(stats["server_id"], "demo");
    assert_eq!(stats["strategy"], "round_robin");
    assert_eq!(stats["enabled"], true);

    // Without the token: 401.
    let denied = http
        .get(format!("{base}{stats_path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // A declared body above the default MAX_BODY_BYTES (4 MiB): 413 in JSON before the body
    // is read (raw HTTP: a client writing the whole body would see the connection closed).
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /servers/demo/pool/config HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        5 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("4194304 bytes (MAX_BODY_BYTES)"),
        "{response}"
    );

    // SIGTERM: graceful shutdown, exit 0.
    gateway.stop().await;
    let log = &gateway.log;
    assert!(log.contains("closing the pool"), "{log}");
    assert!(!log.contains(SECRET), "the secret was logged");
    assert!(!log.contains(&token), "the token was logged");
}
