//! The gateway's security suite: each test attacks the gateway binary from outside, as a token
//! holder or a browser page would, and asserts the attack fails (README "Security").
//!
//! Black box: the binary is started as a child process and spoken to over HTTP only, so the
//! suite runs against any build: `MCP_POOL_GATEWAY_BIN=/path/to/mcp-pool-gateway cargo test -p
//! mcp-pool-gateway --test security` attacks another one (an older release, say). Tokens are
//! signed here with the gateway's key, with whatever claims an attacker would try.
//!
//! The stdio test needs server-everything (`bash interop/setup.sh`, then
//! `MCP_POOL_INTEROP_NODE_DIR`); without it it says why and skips (a failure with
//! `MCP_POOL_REQUIRE_SERVICES=1`). The connection limits are attacked in
//! `security_connections.rs`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Mcp, Process, messages};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::auth::{self, Claims, JwtSecret, Role};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "security-suite-secret-0123456789-abcdef-do-not-leak";
const ADMIN_PASSWORD: &str = "admin-password-do-not-leak";

/// A gateway started with `--demo`, the suite's key and an admin password, plus `envs`.
async fn gateway(args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut all = vec![
        ("JWT_SECRET_KEY", SECRET),
        ("ADMIN_USERNAME", "ops"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
    ];
    all.extend_from_slice(envs);
    let mut args = args.to_vec();
    args.push("--demo");
    Process::start(&args, &all, &std::env::temp_dir()).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims`, signed with the gateway's key.
fn signed(claims: &Claims) -> String {
    auth::sign(&JwtSecret::new(SECRET).unwrap(), claims).unwrap()
}

fn token(sub: &str, role: Role) -> String {
    signed(&Claims::new(
        sub,
        role,
        Duration::from_secs(600),
        SystemTime::now(),
    ))
}

fn admin() -> String {
    token("admin", Role::Admin)
}

/// `method path` with `token` and a JSON `body`: the status and the body's text.
async fn send(
    http: &Client,
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut request = http
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(SECRET),
        "the signing key in a response: {text}"
    );
    assert!(
        !text.contains(ADMIN_PASSWORD),
        "the admin password in a response: {text}"
    );
    (status, text)
}

fn detail(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {{\"detail\"}} in {text}"))
}

/// A server body for `POST /servers` reaching `url`, with `extra` fields.
fn server_body(id: &str, url: &str, extra: Value) -> Value {
    let mut body = json!({"id": id, "endpoints": [{"url": url}], "pool": {"enabled": true}});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// A token holder names the gateway's own secrets as a server's credential: every name that is
/// not allowed, not set, or a gateway setting gets the same 422, and nothing reaches the
/// upstream; a variable the operator allowed does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_read_the_gateways_own_secrets() {
    let listener = ReferenceServer::start().await.unwrap();
    let envs = [
        (
            "CREDENTIALS_ENV_ALLOWED",
            "UPSTREAM_*,JWT_SECRET_KEY,ADMIN_*",
        ),
        ("UPSTREAM_TOKEN", "upstream-token-value"),
        ("NOT_ALLOWED_CANARY", "canary-value"),
    ];
    let gw = gateway(&[], &envs).await;
    let http = Client::new();
    let mut refusals = Vec::new();
    for (i, name) in [
        "JWT_SECRET_KEY",
        "ADMIN_PASSWORD",
        "DATABASE_URL",
        "REDIS_URL",
        "PATH",
        "NOT_ALLOWED_CANARY",
        "UPSTREAM_UNSET",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("leak{i}");
        let body = server_body(
            &id,
            &listener.url(),
            json!({"credentials": {"header": "x-leak", "env": name}}),
        );
        let (status, text) = send(&http, &gw.base, &admin(), "POST", "/servers", Some(body)).await;
        if status.is_success() {
            // What today's attack does next: one call, and the listener reads the header.
            let mut mcp = Mcp::new(&http, &gw.base, &id, &token("mallory", Role::User));
            mcp.initialize(None).await;
            let _ = mcp.call("echo", json!({"message": "x"})).await;
            let leaked = listener
                .last_request_headers()
                .get("x-leak")
                .is_some_and(|v| v.as_bytes() == SECRET.as_bytes());
            panic!(
                "credentials.env = {name} was accepted ({status}); the upstream received the \
                 signing key in x-leak: {leaked}"
            );
        }
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {text}");
        refusals.push(detail(&text).replace(&format!("server {id}:"), "server _:"));
    }
    let first = &refusals[0];
    assert!(first.contains("CREDENTIALS_ENV_ALLOWED"), "{first}");
    for (other, name) in refusals.iter().zip([
        "JWT_SECRET_KEY",
        "ADMIN_PASSWORD",
        "DATABASE_URL",
        "REDIS_URL",
        "PATH",
        "NOT_ALLOWED_CANARY",
        "UPSTREAM_UNSET",
    ]) {
        assert_eq!(
            other.replace(name, "NAME"),
            first.replace("JWT_SECRET_KEY", "NAME"),
            "one answer for disallowed, unset and settings alike (no oracle)"
        );
    }
    // An allowed variable reaches the upstream.
    let body = server_body(
        "allowed",
        &listener.url(),
        json!({"credentials": {"header": "x-upstream", "env": "UPSTREAM_TOKEN"}}),
    );
    let (status, text) = send(&http, &gw.base, &admin(), "POST", "/servers", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert!(!text.contains("upstream-token-value"), "{text}");
    let mut mcp = Mcp::new(&http, &gw.base, "allowed", &token("alice", Role::User));
    mcp.initialize(None).await;
    let answer = mcp.call("echo", json!({"message": "hi"})).await;
    assert_eq!(answer["result"]["content"][0]["text"], "hi", "{answer}");
    assert_eq!(
        listener.last_request_headers()["x-upstream"],
        "upstream-token-value"
    );
}

/// A stdio upstream (server-everything) started for an ordinary user prints its environment:
/// none of the gateway's secrets are in it, only the allow-listed variables and its own `env`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_upstreams_see_only_an_allow_listed_environment() {
    let Some(node_dir) = mcp_pool_conformance::services::interop_node_dir() else {
        return;
    };
    let everything =
        format!("{node_dir}/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[servers]]\nid = \"everything\"\nendpoints = [{{ transport = \"stdio\", command = \
             \"node\", args = [{everything:?}, \"stdio\"], env = {{ OWN_SETTING = \"own-value\" }} }}]\n\
             pool = {{ enabled = true, strategy = \"sticky\" }}\n"
        ),
    )
    .unwrap();
    let gw = gateway(
        &["--config", config.to_str().unwrap()],
        &[("GATEWAY_CANARY", "gateway-canary-value")],
    )
    .await;
    let http = Client::new();
    let mut mcp = Mcp::new(&http, &gw.base, "everything", &token("alice", Role::User));
    let (status, text) = mcp.initialize(None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, _, tools) = mcp
        .post(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
            None,
        )
        .await;
    let tools = messages(&tools);
    let env_tool = tools[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .find(|n| n.to_ascii_lowercase().contains("env"))
        .unwrap_or_else(|| panic!("server-everything has an env tool: {tools:?}"));
    let answer = mcp.call(&env_tool, json!({})).await;
    let printed = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned();
    assert!(
        printed.contains("PATH"),
        "the allow-list reaches it: {printed}"
    );
    assert!(
        printed.contains("own-value"),
        "its own env reaches it: {printed}"
    );
    let secrets = [
        ("the signing key", SECRET),
        ("the admin password", ADMIN_PASSWORD),
        ("a variable of the gateway's", "gateway-canary-value"),
        ("the key's variable", "JWT_SECRET_KEY"),
    ];
    for (what, secret) in secrets {
        assert!(!printed.contains(secret), "the stdio server saw {what}");
    }
}

/// A user's token against every admin route: 403 naming the role, nothing changed; the same
/// user still uses the MCP routes and reads stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_is_refused_on_every_admin_route() {
    let listener = ReferenceServer::start().await.unwrap();
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    let user = token("mallory", Role::User);
    let unlabelled = signed(&Claims {
        role: None,
        ..Claims::new(
            "mallory",
            Role::User,
            Duration::from_secs(600),
            SystemTime::now(),
        )
    });
    let create = server_body("mine", &listener.url(), json!({}));
    let replace = json!({"endpoints": [{"url": listener.url()}], "forward_token": true});
    let routes: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/servers", Some(create)),
        ("PUT", "/servers/demo", Some(replace)),
        ("DELETE", "/servers/demo", None),
        (
            "PUT",
            "/servers/demo/pool/config",
            Some(json!({"enabled": true})),
        ),
        ("POST", "/servers/demo/pool/drain", None),
        (
            "POST",
            "/servers/demo/pool/resize",
            Some(json!({"size": 2})),
        ),
        ("POST", "/servers/demo/pool/reset", None),
        ("GET", "/servers/demo/pool/sessions", None),
        ("GET", "/metrics", None),
    ];
    for token in [&user, &unlabelled] {
        for (method, path, body) in &routes {
            let (status, text) = send(&http, &gw.base, token, method, path, body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {text}");
            assert!(detail(&text).contains("admin role"), "{text}");
        }
    }
    // Nothing changed: demo is still there, pointing where it did.
    let (status, text) = send(&http, &gw.base, &admin(), "GET", "/servers/demo", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!text.contains(&listener.url()), "{text}");
    // The user keeps what is theirs.
    let mut mcp = Mcp::new(&http, &gw.base, "demo", &user);
    assert_eq!(mcp.initialize(None).await.0, StatusCode::OK);
    let answer = mcp.call("echo", json!({"message": "still works"})).await;
    assert_eq!(answer["result"]["content"][0]["text"], "still works");
    let (status, _) = send(&http, &gw.base, &user, "GET", "/servers", None).await;
    assert_eq!(status, StatusCode::OK);
    // An admin may.
    let (status, text) = send(&http, &gw.base, &admin(), "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

/// A server with an access list: callers it does not name cannot see it nor reach it (404, as
/// an unknown server); users and groups it names can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_an_access_list_is_invisible_to_others() {
    let listener = ReferenceServer::start().await.unwrap();
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    let body = server_body(
        "private",
        &listener.url(),
        json!({"access": {"users": ["bob"], "groups": ["ops"]}}),
    );
    let (status, text) = send(&http, &gw.base, &admin(), "POST", "/servers", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    let alice = token("alice", Role::User);
    let (_, list) = send(&http, &gw.base, &alice, "GET", "/servers", None).await;
    assert!(!list.contains("private"), "listed to alice: {list}");
    for path in [
        "/servers/private",
        "/servers/private/pool/stats",
        "/servers/private/pool/config",
    ] {
        let (status, text) = send(&http, &gw.base, &alice, "GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
    }
    let (_, health) = send(
        &http,
        &gw.base,
        &alice,
        "GET",
        "/servers/pools/health",
        None,
    )
    .await;
    assert!(!health.contains("private"), "{health}");
    let mut mcp = Mcp::new(&http, &gw.base, "private", &alice);
    let (status, text) = mcp.initialize(None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert_eq!(listener.initializes(), 0, "alice reached the upstream");

    let bob = token("bob", Role::User);
    let mut ops_member = Claims::new(
        "carol",
        Role::User,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    ops_member.groups = vec!["ops".into()];
    for token in [bob, signed(&ops_member)] {
        let mut mcp = Mcp::new(&http, &gw.base, "private", &token);
        assert_eq!(mcp.initialize(None).await.0, StatusCode::OK);
        let answer = mcp.call("echo", json!({"message": "in"})).await;
        assert_eq!(answer["result"]["content"][0]["text"], "in");
    }
    // Users do not see who else may use it, nor where its credential comes from.
    let (_, text) = send(
        &http,
        &gw.base,
        &token("bob", Role::User),
        "GET",
        "/servers/private",
        None,
    )
    .await;
    assert!(!text.contains("\"access\""), "{text}");
}

/// Tokens that name no user, or that are not valid yet, are refused; a token issued a few
/// seconds ahead of the gateway's clock is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_a_user_or_not_yet_valid_are_refused() {
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    let base = || {
        Claims::new(
            "alice",
            Role::User,
            Duration::from_secs(600),
            SystemTime::now(),
        )
    };
    let cases = [
        (
            "an empty sub",
            Claims {
                sub: Some(String::new()),
                ..base()
            },
        ),
        (
            "no sub, email or user_id",
            Claims {
                sub: None,
                ..base()
            },
        ),
        (
            "a blank email",
            Claims {
                sub: None,
                email: Some("  ".into()),
                ..base()
            },
        ),
        (
            "nbf an hour ahead",
            Claims {
                nbf: Some(now() + 3600),
                ..base()
            },
        ),
        (
            "iat an hour ahead",
            Claims {
                iat: now() + 3600,
                ..base()
            },
        ),
    ];
    for (what, claims) in cases {
        let (status, text) = send(&http, &gw.base, &signed(&claims), "GET", "/servers", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {text}");
    }
    let slightly_ahead = Claims {
        nbf: Some(now() + 5),
        iat: now() + 5,
        ..base()
    };
    let (status, text) = send(
        &http,
        &gw.base,
        &signed(&slightly_ahead),
        "GET",
        "/servers",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "within the clock leeway: {text}");
}

/// With `JWT_AUDIENCE` and `JWT_ISSUER` set, tokens must name both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_issuer_are_checked_when_configured() {
    let gw = gateway(
        &[],
        &[
            ("JWT_AUDIENCE", "mcp-gateway"),
            ("JWT_ISSUER", "https://idp.example"),
        ],
    )
    .await;
    let http = Client::new();
    let base = || {
        Claims::new(
            "alice",
            Role::User,
            Duration::from_secs(600),
            SystemTime::now(),
        )
    };
    let right = Claims {
        aud: Some(json!(["other", "mcp-gateway"])),
        iss: Some("https://idp.example".into()),
        ..base()
    };
    let (status, text) = send(&http, &gw.base, &signed(&right), "GET", "/servers", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for wrong in [
        base(),
        Claims {
            aud: Some(json!("another-service")),
            iss: right.iss.clone(),
            ..base()
        },
        Claims {
            aud: right.aud.clone(),
            iss: Some("https://evil.example".into()),
            ..base()
        },
    ] {
        let (status, text) = send(&http, &gw.base, &signed(&wrong), "GET", "/servers", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}: {text}");
    }
}

/// A signing key anyone could guess from one token stops start-up, saying how to make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_signing_key_stops_start_up() {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::bin())
            .args(["--port", "0"])
            .env("JWT_SECRET_KEY", "short-secret")
            .current_dir(std::env::temp_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the gateway exits instead of listening")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("32 bytes") && stderr.contains("openssl rand -hex 32"),
        "{stderr}"
    );
    assert!(!stderr.contains("short-secret"), "{stderr}");
}

/// One user opens sessions until the cap: the next `initialize` gets a JSON-RPC error naming
/// the limit (and the metric counts it), another user is not affected, ending a session frees
/// its slot, and idle sessions expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_sessions_per_user_are_capped_and_expire() {
    let gw = gateway(
        &[],
        &[
            ("DOWNSTREAM_SESSIONS_PER_USER", "3"),
            ("DOWNSTREAM_SESSION_IDLE_TIMEOUT", "5"),
        ],
    )
    .await;
    let http = Client::new();
    let alice = token("alice", Role::User);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut mcp = Mcp::new(&http, &gw.base, "demo", &alice);
        let (status, text) = mcp.initialize(None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        open.push(mcp);
    }
    let mut fourth = Mcp::new(&http, &gw.base, "demo", &alice);
    let (_, text) = fourth.initialize(None).await;
    let refusal = messages(&text)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(refusal["id"], 1, "{refusal}");
    let words = refusal["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a JSON-RPC error: {refusal}"));
    assert!(
        words.contains("DOWNSTREAM_SESSIONS_PER_USER") && words.contains('3'),
        "{words}"
    );
    assert!(fourth.session.is_none(), "no session was created");
    // Other identity headers do not open more for the same user.
    let mut disguised = Mcp::new(&http, &gw.base, "demo", &alice);
    disguised.headers = vec![("x-user-id", "someone-else"), ("x-tenant-id", "t2")];
    let (_, text) = disguised.initialize(None).await;
    assert!(text.contains("DOWNSTREAM_SESSIONS_PER_USER"), "{text}");

    let mut bob = Mcp::new(&http, &gw.base, "demo", &token("bob", Role::User));
    assert_eq!(
        bob.initialize(None).await.0,
        StatusCode::OK,
        "bob has his own slots"
    );

    assert!(open.pop().unwrap().delete().await.is_success());
    let mut again = Mcp::new(&http, &gw.base, "demo", &alice);
    assert_eq!(
        again.initialize(None).await.0,
        StatusCode::OK,
        "a closed session frees its slot"
    );

    let (status, metrics) = send(&http, &gw.base, &admin(), "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_gateway_sessions_refused_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Idle sessions expire (DOWNSTREAM_SESSION_IDLE_TIMEOUT = 5 s) and their slots come
    // back. A child process's clock cannot be paused: an `initialize` every second (a refused
    // one touches no session) until the three slots the idle sessions held are taken again,
    // within 30 s. Nothing touches the old sessions meanwhile (a request would keep one alive).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut reopened = Vec::new();
    while reopened.len() < 3 {
        let mut mcp = Mcp::new(&http, &gw.base, "demo", &alice);
        let (status, text) = mcp.initialize(None).await;
        if mcp.session.is_some() {
            reopened.push(mcp);
            continue;
        }
        assert!(
            text.contains("DOWNSTREAM_SESSIONS_PER_USER"),
            "{status}: {text}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 3 slots came back within 30 s",
            reopened.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The expired sessions' ids answer 404 (the MCP signal to initialize again) once the
    // gateway has forgotten them, which follows the freed slot within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for expired in &open {
        loop {
            let (status, _, text) = expired
                .post(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}), None)
                .await;
            if status == StatusCode::NOT_FOUND {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "an expired session's id still answers {status}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Four wrong passwords from one address: the next attempt waits, even with the right
/// password (429 with `Retry-After`); another username is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sign_in_is_throttled() {
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    let login = |username: &str, password: &str| {
        http.post(format!("{}/admin/login", gw.base))
            .json(&json!({"username": username, "password": password}))
            .send()
    };
    for _ in 0..4 {
        let response = login("ops", "wrong-password-guess").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let held = login("ops", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(
        held.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the right password waits too"
    );
    let retry: u64 = held.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    let words = detail(&held.text().await.unwrap());
    assert!(words.contains("try again"), "{words}");
    let other = login("someone-else", "wrong-password-guess").await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::UNAUTHORIZED,
        "another username is not held up"
    );
}

/// A page on another origin (DNS rebinding, a malicious site) cannot reach the MCP routes;
/// clients without `Origin`, the gateway's own origin and listed origins can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_on_the_mcp_routes() {
    let gw = gateway(&[], &[("ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let http = Client::new();
    let alice = token("alice", Role::User);
    let mut mcp = Mcp::new(&http, &gw.base, "demo", &alice);
    let (status, text) = mcp.initialize(Some("https://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(detail(&text).contains("ALLOWED_ORIGINS"), "{text}");
    let sse = http
        .get(format!("{}/servers/demo/sse", gw.base))
        .bearer_auth(&alice)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::FORBIDDEN);
    let own = gw.base.clone();
    for origin in [None, Some("https://app.example.com"), Some(own.as_str())] {
        let mut mcp = Mcp::new(&http, &gw.base, "demo", &alice);
        assert_eq!(mcp.initialize(origin).await.0, StatusCode::OK, "{origin:?}");
    }
}

/// Mallory learns the id of Alice's HTTP+SSE session and posts `notifications/cancelled` for
/// Alice's running call into it: refused as an unknown session, and Alice's call answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_post_into_an_sse_session() {
    use futures::StreamExt;
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    let alice = token("alice", Role::User);
    let stream = http
        .get(format!("{}/servers/demo/sse", gw.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut events = stream.bytes_stream();
    let mut buffer = String::new();
    let mut next_data = async || -> String {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    return data.trim().to_owned();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .expect("an event within 30 s")
                .expect("the stream is open")
                .unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    };
    let endpoint = next_data().await;
    let message_url = format!("{}{endpoint}", gw.base);
    let post = |token: &str, body: Value| {
        http.post(&message_url)
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let accepted = post(
        &alice,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "alice", "version": "1"}}}),
    )
    .await
    .unwrap();
    assert!(accepted.status().is_success());
    let _initialized = next_data().await;
    post(
        &alice,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    post(
        &alice,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "sleep", "arguments": {"ms": 500}}}),
    )
    .await
    .unwrap();
    let mallory = token("mallory", Role::User);
    let attack = post(
        &mallory,
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 7, "reason": "mallory"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        attack.status(),
        StatusCode::NOT_FOUND,
        "as an unknown session"
    );
    let answer: Value = serde_json::from_str(&next_data().await).unwrap();
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "slept", "{answer}");
}

/// Endpoint URLs with CR/LF (a header or log line smuggled in) and upstreams at cloud metadata
/// addresses are refused with 422; loopback is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_breaks_and_metadata_addresses_are_refused_as_endpoints() {
    let gw = gateway(&[], &[]).await;
    let http = Client::new();
    for (i, (url, words)) in [
        (
            "http://127.0.0.1:9/mcp\r\nX-Injected: 1",
            "control characters",
        ),
        ("http://127.0.0.1:9/m\ncp", "control characters"),
        ("http://169.254.169.254/latest/mcp", "169.254.0.0/16"),
        ("http://[fd00:ec2::254]/mcp", "fd00:ec2::254"),
        ("http://[::ffff:169.254.169.254]/mcp", "169.254.0.0/16"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = server_body(&format!("bad{i}"), url, json!({}));
        let (status, text) = send(&http, &gw.base, &admin(), "POST", "/servers", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url:?}: {text}");
        assert!(detail(&text).contains(words), "{url:?}: {text}");
        assert!(!text.contains("X-Injected: 1\r"), "{text}");
    }
    let body = server_body("local", "http://127.0.0.1:9/mcp", json!({}));
    let (status, text) = send(&http, &gw.base, &admin(), "POST", "/servers", Some(body)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "loopback stays allowed: {text}"
    );
}
