//! The `[gateway]` table of the `--config` file: read by the binary (variables and flags win
//! over it), checked whole at start-up, ignored by the pool's own settings.

mod common;

use common::{BIN, Process};
use mcp_pool_gateway::config::GatewayTable;

const SERVERS: &str = "[[servers]]\nid = \"alpha\"\nendpoints = [{ url = \"http://127.0.0.1:7/mcp\", transport = \"streamable_http\" }]\n";

#[test]
fn the_table_gives_the_variables_their_file_values() {
    let table = GatewayTable::parse(
        "gw.toml",
        "[gateway]\nhost = \"0.0.0.0\"\nport = 4445\nauth_required = false\nmax_body_bytes = 1024\n",
    )
    .unwrap();
    assert_eq!(table.var("HOST").as_deref(), Some("0.0.0.0"));
    assert_eq!(table.var("PORT").as_deref(), Some("4445"));
    assert_eq!(table.var("AUTH_REQUIRED").as_deref(), Some("false"));
    assert_eq!(table.var("MAX_BODY_BYTES").as_deref(), Some("1024"));
    assert_eq!(
        table.var("JWT_SECRET_KEY"),
        None,
        "the key never comes from the file"
    );
    let absent = GatewayTable::parse("gw.toml", SERVERS).unwrap();
    assert_eq!(absent.var("PORT"), None);
}

#[test]
fn the_table_gives_the_hardening_settings_and_variables_win_over_it() {
    use mcp_pool_gateway::{GatewayConfig, policy::Policy};
    let table = GatewayTable::parse(
        "gw.toml",
        "[gateway]\ncredentials_env_allowed = [\"GITHUB_TOKEN\", \"UPSTREAM_*\"]\n\
         allowed_origins = [\"https://app.example.com\"]\nupstream_deny_cidrs = []\n\
         downstream_sessions_per_user = 7\ndownstream_session_idle_timeout = 60\n",
    )
    .unwrap();
    let config = |env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        GatewayConfig::from_lookup(None, None, |name| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| table.var(name))
        })
        .unwrap()
    };
    let secret = ("JWT_SECRET_KEY", "config-file-test-secret-0123456789abcdef");
    let policy: Policy = config(&[secret]).policy;
    assert!(policy.credentials.allows("UPSTREAM_A") && policy.credentials.allows("GITHUB_TOKEN"));
    assert_eq!(policy.sessions.per_user, 7);
    assert_eq!(policy.sessions.idle_timeout.as_secs(), 60);
    assert!(
        policy
            .upstream
            .refuses("169.254.169.254".parse().unwrap())
            .is_none(),
        "an empty deny list in the file replaces the default"
    );
    let policy = config(&[secret, ("DOWNSTREAM_SESSIONS_PER_USER", "3")]).policy;
    assert_eq!(policy.sessions.per_user, 3, "the variable wins");
    let error = GatewayConfig::from_lookup(None, None, |name| match name {
        "JWT_SECRET_KEY" => Some(secret.1.to_owned()),
        "DOWNSTREAM_SESSIONS_PER_USER" => Some("0".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("DOWNSTREAM_SESSIONS_PER_USER")
            && error.to_string().contains("1 to 100000"),
        "{error}"
    );
}

#[test]
fn a_bad_table_is_named_with_its_line() {
    let error = GatewayTable::parse(
        "gw.toml",
        "[gateway]\nhost = \"h\"\njwt_secret_key = \"s3cr3t\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("gw.toml, line 3, [gateway]"), "{error}");
    assert!(error.contains("jwt_secret_key"), "{error}");
    assert!(!error.contains("s3cr3t"), "{error}");
    let error = GatewayTable::parse("gw.toml", "[gateway]\nport = \"high\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn the_pool_settings_accept_a_file_with_a_gateway_table() {
    let settings = mcp_pool::Settings::from_toml(
        "gw.toml",
        &format!("[gateway]\nport = 4445\n\n{SERVERS}"),
        |_| None,
    )
    .unwrap();
    assert_eq!(settings.servers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_applies_the_table_and_rejects_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("mcp-pool-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!("[gateway]\nauth_required = false\nmax_body_bytes = 1000\n\n{SERVERS}"),
    )
    .unwrap();
    // No JWT_SECRET_KEY: start-up succeeds only because the file turned auth off.
    let mut gw = Process::start(&["--config", path.to_str().unwrap()], &[], &dir).await;
    let http = reqwest::Client::new();
    let servers = http
        .get(format!("{}/servers", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(servers.status(), 200);
    let big = http
        .put(format!("{}/servers/alpha/pool/config", gw.base))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"size\": 5, \"pad\": \"{}\"}}",
            "x".repeat(2000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413, "max_body_bytes came from the file");
    gw.stop().await;

    std::fs::write(&path, format!("[gateway]\nport = \"high\"\n\n{SERVERS}")).unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("AUTH_REQUIRED", "false")
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[gateway]") && stderr.contains("line 2"),
        "{stderr}"
    );
}
