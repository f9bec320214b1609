//! The gateway's README (`gateway/README.md`), "Run the gateway" section: its shell blocks run
//! as written by bash (with `cargo run -p mcp-pool-gateway --` standing for the binary cargo
//! test built), and the same steps against the binary as a child process with closer checks:
//! start-up log lines, 401, 413, SIGTERM shuts it down cleanly, no secret logged. The PUT body
//! is read from the README itself so the section stays true. Its "Several workers" section
//! runs too, and the workspace README's start of the gateway is checked to be the same block.

mod common;

use std::process::Stdio;

use common::{BIN, Process};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "readme-test-secret-9f8e7d6c5b4a-0123456789";

/// The gateway README: the crate's own `README.md`.
const GATEWAY_README: &str = include_str!("../README.md");

/// The workspace README, which starts the gateway with the same block.
const WORKSPACE_README: &str = include_str!("../../README.md");

/// The README section's `curl` lines: (the PUT body, the stats path).
fn readme_steps() -> (String, String) {
    let section = GATEWAY_README
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
    assert!(section.contains("token --sub admin --role admin --exp-minutes 60"));
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
        .args([
            "token",
            "--sub",
            "admin",
            "--role",
            "admin",
            "--exp-minutes",
            "60",
        ])
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

/// The ```sh blocks of the gateway README's section `title`.
fn shell_blocks(title: &str) -> Vec<String> {
    let section = GATEWAY_README
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("gateway/README.md has a \"{title}\" section"));
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

/// Runs `blocks` one after the other in one bash (`cargo run [-q] -p mcp-pool-gateway --`
/// standing for the binary cargo test built) with `envs`, then waits for its jobs: stdout and
/// stderr, once it exited successfully. Nothing it started outlives it.
async fn run_blocks(blocks: &[String], envs: &[(&str, &str)]) -> (String, String) {
    let script = format!(
        r#"set -euo pipefail
# `cargo run [-q] -p mcp-pool-gateway -- ARGS`: the binary this test run built.
cargo() {{
  [ "$1" = run ] || return 99; shift
  [ "$1" = -q ] && shift
  [ "$1 $2 $3" = "-p mcp-pool-gateway --" ] || return 98; shift 3
  exec "{BIN}" "$@"
}}
{}
wait
echo
echo README-DONE
"#,
        blocks.join("\n")
    );
    let child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(std::env::temp_dir())
        .env_remove("JWT_SECRET_KEY")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = child.id().unwrap();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await;
    // Whatever happened, nothing the script started outlives the test.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let output = output.expect("the README's steps finish").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("README-DONE\n"), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_section_runs_as_written() {
    let blocks = shell_blocks("Run the gateway");
    assert_eq!(blocks.len(), 2, "start, then use: {blocks:?}");
    let (stdout, stderr) = run_blocks(&blocks, &[]).await;
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("data: ").filter(|d| d.contains(r#""id":2"#)))
        .unwrap_or_else(|| panic!("a tools/call answer:\n{stdout}"));
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(
        result["result"]["content"][0]["text"],
        "hello through the gateway"
    );
    let stats: Value = stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str(l)
                .ok()
                .filter(|v: &Value| v.get("server_id").is_some())
        })
        .unwrap_or_else(|| panic!("the stats:\n{stdout}"));
    assert_eq!(stats["enabled"], true);
    assert!(stats["acquisitions"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stderr.contains("closing the pool"),
        "kill %1 shut it down cleanly:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_several_workers_section_runs_as_written_on_redis_and_postgres() {
    let blocks = shell_blocks("Several workers");
    assert_eq!(blocks.len(), 2, "start, then use: {blocks:?}");
    let redis = "CACHE_TYPE=redis REDIS_URL=redis://127.0.0.1:6379";
    assert!(blocks[0].contains(redis), "{}", blocks[0]);
    let mut backends = Vec::new();
    for (name, var) in [
        ("redis", "MCP_POOL_TEST_REDIS_URL"),
        ("postgres", "MCP_POOL_TEST_DATABASE_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => backends.push((name, url)),
            _ => {
                assert!(
                    std::env::var("MCP_POOL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "{var} is not set; MCP_POOL_REQUIRE_SERVICES=1 makes that a failure"
                );
                eprintln!("skipping the Several workers section on {name}: {var} is not set");
            }
        }
    }
    for (name, url) in backends {
        let start = match name {
            // The machine's Redis is the README's; PostgreSQL as the section says.
            "redis" => blocks[0].replace(redis, &format!("CACHE_TYPE=redis REDIS_URL={url}")),
            _ => blocks[0].replace(redis, &format!("CACHE_TYPE=database DATABASE_URL={url}")),
        };
        // A namespace of this run's own: the backend outlives the test.
        let namespace = format!("readme-{}", std::process::id());
        let (stdout, stderr) = run_blocks(
            &[start, blocks[1].clone()],
            &[("STATE_NAMESPACE", namespace.as_str())],
        )
        .await;
        let counters: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["id"] == 2)
            .map(|v| {
                v["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(counters, ["1", "2", "3"], "{name}: {stdout}\n{stderr}");
        assert_eq!(
            stderr.matches("closing the pool").count(),
            3,
            "{name}: kill %1 %2 %3 shut the three down cleanly:\n{stderr}"
        );
    }
}

#[test]
fn the_workspace_readme_starts_the_gateway_as_the_gateway_readme_does() {
    let start = &shell_blocks("Run the gateway")[0];
    let section = WORKSPACE_README
        .split("\n## The gateway\n")
        .nth(1)
        .expect("README.md has a \"The gateway\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```sh block");
    assert_eq!(block, start.as_str());
}
