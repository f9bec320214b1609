//! API fuzzing: schemathesis (pinned in interop/python/requirements.txt) against the
//! binary's `/openapi.json` with a bearer token. Every response must be no server error (but
//! the documented 503 "Pooling not enabled for server", see tests/schemathesis.toml), have a
//! documented status, and conform to the document's schema and content type.
//!
//! Needs `MCP_POOL_INTEROP_PYTHON` (the interop venv's python; schemathesis is beside it),
//! which `.ci/run` sets after `interop/setup.sh`. Without it the test prints why it skips and
//! passes; with `MCP_POOL_REQUIRE_SERVICES=1` it fails instead.

mod common;

use std::{path::PathBuf, time::Duration};

use common::{BIN, Process};

const SECRET: &str = "schemathesis-test-secret-0123456789";
/// Test cases per operation and phase: about 1000 requests in all, well under 2 minutes.
const MAX_EXAMPLES: &str = "50";
/// A fixed seed: a failure reproduces with the same command.
const SEED: &str = "1";
/// Bound on the whole run.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_defect_in_the_rest_api() {
    let Some(python) = mcp_pool_conformance::services::interop_python() else {
        return;
    };
    let schemathesis = PathBuf::from(python).with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: rerun interop/setup.sh",
        schemathesis.display()
    );
    let dir = std::env::temp_dir().join(format!("mcp-pool-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut gw = Process::start(&["--demo"], &[("JWT_SECRET_KEY", SECRET)], &dir).await;
    let token = std::process::Command::new(BIN)
        .args([
            "token",
            "--sub",
            "fuzzer",
            "--role",
            "admin",
            "--exp-minutes",
            "30",
        ])
        .env("JWT_SECRET_KEY", SECRET)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    // Pooling on for `demo`, so that the pool operations reach past their 503 (until the
    // fuzzer's own PUTs turn it off).
    let enabled = reqwest::Client::new()
        .put(format!("{}/servers/demo/pool/config", gw.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.status(), 200);

    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let run = tokio::process::Command::new(&schemathesis)
        .args(["--config-file", config, "--no-color", "run"])
        .arg(format!("{}/openapi.json", gw.base))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            "--generation-database",
            "none",
            "--workers",
            "1",
        ])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran over {RUN_LIMIT:?}"))
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    // The summary line: "1016 generated" (other lines may say "generated" too).
    let generated = out
        .lines()
        .find(|l| {
            l.contains(" generated")
                && l.split_whitespace()
                    .next()
                    .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .unwrap_or_else(|| panic!("no count of test cases in:\n{out}"));
    println!("schemathesis: {}", generated.trim());
    assert!(
        run.status.success(),
        "schemathesis failed ({}):\n{out}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let count: u64 = generated
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= 100, "only {count} test cases: {generated}");
    assert!(!out.contains(SECRET));

    // The gateway took it all and still answers.
    let health = reqwest::get(format!("{}/health", gw.base)).await.unwrap();
    assert_eq!(health.status(), 200);
    gw.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
