//! The Admin UI in a real browser: `interop/browser/admin.mjs` drives Debian's
//! Chromium with playwright-core against the gateway binary, whose server `up` is the
//! reference MCP server running in this test process (so that the test can stop and restart
//! it). The script walks an operator's first setup (enable pooling in Pool Config, then check
//! Pool Stats, Pool Health and Metrics) item by item, prints
//! `STEP …` per checked item, and asks the test (`ASK …` on its stdout, `ok` on its stdin) for
//! what only the test can do: read the gateway's log, send MCP traffic, stop or start the
//! upstream. Each scenario saves screenshots under `target/admin-screenshots/`.
//!
//! Needs `MCP_POOL_BROWSER_DIR` (the npm prefix with playwright-core, installed by
//! `interop/setup.sh`) and `MCP_POOL_CHROMIUM` (Debian's `chromium`), which `.ci/run` sets.
//! Without them a test prints why it skips and passes; with `MCP_POOL_REQUIRE_SERVICES=1` it
//! fails instead.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::Process;
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::auth;
use rmcp::{
    ServiceExt,
    model::CallToolRequestParams,
    service::{RoleClient, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "admin-browser-test-secret-0123456789";
const SERVER: &str = "up";
/// `ADMIN_PASSWORD` of the gateway (`ADMIN_USERNAME` is `operator`).
const PASSWORD: &str = "admin-ui-password-for-tests";
/// The UI's refresh period in these tests, seconds (the default is 5).
const REFRESH: &str = "2";
/// Bound on one scenario, browser start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);

/// Where playwright-core and Chromium are, or `None` after printing why the test skips.
fn browser() -> Option<(PathBuf, String)> {
    let (dir, chromium) = mcp_pool_conformance::services::browser()?;
    Some((PathBuf::from(dir).join("node_modules"), chromium))
}

/// The gateway binary with server `up` on an in-process reference server.
struct Setup {
    gw: Process,
    upstream: ReferenceServer,
    token: String,
    /// A token of role `user` (the read-only view).
    user_token: String,
    /// An admin token that expired an hour ago: what the page's token becomes.
    expired_token: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// An environment value of the stdio server [`Setup::start_with`] may add: never on the page.
const STDIO_SECRET: &str = "stdio-secret-of-the-file";

impl Setup {
    async fn start(name: &str) -> Self {
        Self::start_with(name, "").await
    }

    /// As [`start`](Self::start), with `more` appended to the configuration file.
    async fn start_with(name: &str, more: &str) -> Self {
        let upstream = ReferenceServer::start().await.unwrap();
        let dir =
            std::env::temp_dir().join(format!("mcp-pool-admin-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[[servers]]\nid = \"{SERVER}\"\nendpoints = [{{ url = \"{}\", transport = \"streamable_http\" }}]\n{more}",
                upstream.endpoint().url
            ),
        )
        .unwrap();
        let gw = Process::start(
            &["--config", config.to_str().unwrap()],
            &[
                ("JWT_SECRET_KEY", SECRET),
                ("ADMIN_USERNAME", "operator"),
                ("ADMIN_PASSWORD", PASSWORD),
            ],
            &dir,
        )
        .await;
        let secret = auth::JwtSecret::new(SECRET).unwrap();
        let token = auth::mint(
            &secret,
            "admin",
            auth::Role::Admin,
            Duration::from_secs(1800),
            SystemTime::now(),
        )
        .unwrap();
        let user_token = auth::mint(
            &secret,
            "alice",
            auth::Role::User,
            Duration::from_secs(1800),
            SystemTime::now(),
        )
        .unwrap();
        let expired_token = auth::mint(
            &secret,
            "admin",
            auth::Role::Admin,
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap();
        Self {
            gw,
            upstream,
            token,
            user_token,
            expired_token,
            _dir: tempdir::Dir(dir),
        }
    }

    async fn put_config(&self, body: serde_json::Value) {
        let res = reqwest::Client::new()
            .put(format!("{}/servers/{SERVER}/pool/config", self.gw.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    /// A downstream MCP client of `up` through the gateway.
    async fn client(&self) -> Arc<RunningService<RoleClient, ()>> {
        let config = StreamableHttpClientTransportConfig::with_uri(format!(
            "{}/servers/{SERVER}/mcp",
            self.gw.base
        ))
        .auth_header(self.token.clone());
        Arc::new(
            ().serve(StreamableHttpClientTransport::from_config(config))
                .await
                .expect("initialize through the gateway"),
        )
    }
}

fn echo() -> CallToolRequestParams {
    CallToolRequestParams::new("echo")
        .with_arguments(json!({"message": "hi"}).as_object().unwrap().clone())
}

/// `calls` echo calls, each of which must succeed.
async fn traffic(client: &RunningService<RoleClient, ()>, calls: usize) {
    for _ in 0..calls {
        client
            .call_tool(echo())
            .await
            .expect("a call through the gateway");
    }
}

/// One echo call every `period_ms` until `stop`, going on after a failure (the upstream may be
/// down); returns how many calls were answered and how many failed.
fn steady_traffic(
    client: Arc<RunningService<RoleClient, ()>>,
    stop: CancellationToken,
    period_ms: u64,
) -> tokio::task::JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let (mut answered, mut failed) = (0, 0);
        while !stop.is_cancelled() {
            match client.call_tool(echo()).await {
                Ok(_) => answered += 1,
                Err(_) => failed += 1,
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(period_ms)) => {}
            }
        }
        (answered, failed)
    })
}

/// What a scenario measured (`MEASURE name value`).
type Measures = HashMap<String, f64>;

/// Runs `admin.mjs scenario`, answering its `ASK`s with `on_ask`; asserts it printed `DONE`
/// and exited 0.
async fn run_scenario<F>(setup: &mut Setup, scenario: &str, mut on_ask: F) -> Measures
where
    F: AsyncFnMut(&mut Setup, &str),
{
    let (node_path, chromium) = browser().expect("checked by the caller");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../admin-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/browser/admin.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(scenario)
        .env("NODE_PATH", &node_path)
        .env("ADMIN_BASE", &setup.gw.base)
        .env("ADMIN_TOKEN", &setup.token)
        .env("ADMIN_SERVER", SERVER)
        .env("ADMIN_SHOTS", &shots)
        .env("ADMIN_REFRESH", REFRESH)
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("ADMIN_USER_TOKEN", &setup.user_token)
        .env("ADMIN_EXPIRED_TOKEN", &setup.expired_token)
        .env("ADMIN_STDIO_SECRET", STDIO_SECRET)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Debian's nodejs) on PATH");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut measures = Measures::new();
    let mut done = false;
    let started = std::time::Instant::now();
    let walk = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("{scenario}: {line}");
            if let Some(what) = line.strip_prefix("ASK ") {
                on_ask(setup, what).await;
                stdin.write_all(b"ok\n").await.unwrap();
            } else if let Some(m) = line.strip_prefix("MEASURE ") {
                let (name, value) = m.split_once(' ').unwrap();
                measures.insert(name.to_owned(), value.parse().unwrap());
            } else if line == "DONE" {
                done = true;
            }
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(SCENARIO_LIMIT, walk)
        .await
        .unwrap_or_else(|_| panic!("{scenario}: not done within {SCENARIO_LIMIT:?}"));
    assert!(
        status.success() && done,
        "{scenario}: {status}\n{}",
        setup.gw.log
    );
    eprintln!("{scenario}: browser scenario took {:?}", started.elapsed());
    measures
}

/// [`run_scenario`] for a scenario that asks the test for nothing.
async fn run_without_asks(setup: &mut Setup, scenario: &str) -> Measures {
    run_scenario(setup, scenario, async |_, what| {
        panic!("unexpected ask {what}")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_pooling_in_the_browser_shows_its_stats_health_and_metrics() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("guide").await;
    let client = setup.client().await;
    let stop = CancellationToken::new();
    let mut background = None;
    let measures = run_scenario(&mut setup, "guide", async |setup, what| match what {
        "log-pool-created" => {
            let line = setup
                .gw
                .wait_for("creating/updating pool for server up")
                .await;
            assert!(
                line.contains("strategy=round_robin, min_size=2, max_size=10"),
                "{line}"
            );
        }
        "traffic" => traffic(&client, 20).await,
        "traffic-on" => background = Some(steady_traffic(client.clone(), stop.clone(), 50)),
        other => panic!("unexpected ask {other}"),
    })
    .await;
    stop.cancel();
    let (answered, failed) = background
        .expect("the walk asked for traffic")
        .await
        .unwrap();
    // The charts were drawn from traffic the gateway served, all of it.
    assert!(
        answered > 0 && failed == 0,
        "{answered} answered, {failed} failed"
    );
    // The walk includes five refresh periods of that traffic for the charts to gather points.
    let refresh_ms = REFRESH.parse::<f64>().unwrap() * 1000.0;
    assert!(measures["walk_ms"] >= 5.0 * refresh_ms, "{measures:?}");
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_zero_is_refused_next_to_its_field() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("invalid").await;
    run_without_asks(&mut setup, "invalid").await;
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_card_turns_red_when_the_upstream_stops_and_green_after_it_restarts() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("outage").await;
    setup
        .put_config(json!({"enabled": true, "min_size": 1, "size": 2, "max_size": 4}))
        .await;
    let client = setup.client().await;
    // A history of successes, so that the short outage leaves the score above the threshold.
    traffic(&client, 200).await;
    // Calls keep coming during the outage and after it: their failures trip the breaker, and
    // after the restart they carry the breaker's probe.
    let stop = CancellationToken::new();
    let background = steady_traffic(client.clone(), stop.clone(), 200);
    let measures = run_scenario(&mut setup, "outage", async |setup, what| match what {
        "upstream-stop" => setup.upstream.stop().await,
        "upstream-start" => setup.upstream.restart().await.unwrap(),
        other => panic!("unexpected ask {other}"),
    })
    .await;
    stop.cancel();
    background.await.unwrap();
    let period_ms = REFRESH.parse::<f64>().unwrap() * 1000.0;
    assert!(measures["red_after_ms"] <= 2.0 * period_ms, "{measures:?}");
    assert!(
        measures["green_after_ms"] <= 2.0 * period_ms,
        "{measures:?}"
    );
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_added_deactivated_activated_and_deleted_in_the_browser() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("crud").await;
    run_without_asks(&mut setup, "crud").await;
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_load_of_admin_is_weighed() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("weight").await;
    let measures = run_without_asks(&mut setup, "weight").await;
    let (ui, api) = (
        measures["first_load_ui_bytes"],
        measures["first_load_api_bytes"],
    );
    eprintln!(
        "first load of /admin: {:.1} KiB (page and assets {:.1} KiB, API {:.1} KiB); reload: page and assets {:.1} KiB",
        (ui + api) / 1024.0,
        ui / 1024.0,
        api / 1024.0,
        measures["reload_ui_bytes"] / 1024.0
    );
    // Loaded whole (uPlot alone is 20 KiB gzipped), and compressed (92 KiB without gzip).
    assert!((20.0 * 1024.0..64.0 * 1024.0).contains(&ui), "{measures:?}");
    // The reload revalidates the page and takes the versioned assets from the cache.
    assert!(measures["reload_ui_bytes"] < ui / 2.0, "{measures:?}");
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_gets_a_read_only_view() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("readonly").await;
    run_without_asks(&mut setup, "readonly").await;
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_username_and_password_sign_in_mints_a_token() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("password").await;
    run_without_asks(&mut setup, "password").await;
    // The log up to the refusal of the wrong password: no password in it, wrong or right.
    setup.gw.wait_for("admin sign-in refused").await;
    assert!(!setup.gw.log.contains(PASSWORD) && !setup.gw.log.contains("not the password"));
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivate_then_activate_keeps_a_sticky_pool_config_in_the_browser() {
    if browser().is_none() {
        return;
    }
    // A stdio server of the file (never started: nothing calls it), edited in the page.
    let tool = format!(
        "[[servers]]\nid = \"tool\"\nendpoints = [{{ transport = \"stdio\", command = \"mcp-server-nowhere\", \
         args = [\"--mode\", \"stdio\"], env = {{ API_KEY = \"{STDIO_SECRET}\" }} }}]\n"
    );
    let mut setup = Setup::start_with("toggle", &tool).await;
    let sticky = json!({"enabled": true, "strategy": "sticky", "min_size": 3, "max_size": 8,
        "size": 4, "max_idle_time": 600});
    setup.put_config(sticky.clone()).await;
    let config = async |setup: &Setup| -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/servers/{SERVER}/pool/config", setup.gw.base))
            .bearer_auth(&setup.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let before = config(&setup).await;
    run_without_asks(&mut setup, "toggle").await;
    let after = config(&setup).await;
    assert_eq!(
        after, before,
        "the whole pool config, not only what the page shows"
    );
    for (field, value) in sticky.as_object().unwrap() {
        assert_eq!(&after[field], value, "{field}");
    }
    setup.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_the_open_forms_values_until_signed_in_again() {
    if browser().is_none() {
        return;
    }
    let mut setup = Setup::start("expired").await;
    run_without_asks(&mut setup, "expired").await;
    setup.gw.stop().await;
}
