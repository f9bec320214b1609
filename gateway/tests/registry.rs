//! The server registry through the REST API: `POST /servers`,
//! `GET/PUT/DELETE /servers/{id}` in process on real pools over reference servers on loopback,
//! persisted in real backends (memory, an SQLite file).

mod common;

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use common::*;
use mcp_pool::{Pool, PoolConfig, PoolError, Principal, ServerConfig, ServerId, StateBackend};
use mcp_pool_backends::{DatabaseBackend, DatabaseConfig, MemoryBackend};
use mcp_pool_conformance::ReferenceServer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
/// The variable the credential tests reference: one set wherever the tests run (cargo sets it
/// for the test process), since the gateway reads the credential when it applies the server.
const TOKEN_ENV: &str = "CARGO_PKG_NAME";
/// A credential value: a body carrying a value is rejected, and no response ever holds it.
const TOKEN_VALUE: &str = "upstream-token-value-must-not-leak";

fn id(s: &str) -> ServerId {
    ServerId::new(s).unwrap()
}

fn server_body(id: &str, url: &str, extra: Value) -> String {
    let mut body = json!({
        "id": id,
        "endpoints": [{"url": url, "transport": "streamable_http"}],
        "pool": {"enabled": true, "strategy": "round_robin", "min_size": 1, "max_size": 4},
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body.to_string()
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A gateway with one server from the file, `from_file`, on `upstream`, over `backend`.
async fn started(upstream: &ReferenceServer, backend: Arc<dyn StateBackend>) -> (Pool, Gateway) {
    let file_servers =
        [ServerConfig::new(id("from_file"), upstream.endpoint()).pool(PoolConfig::enabled())];
    let pool = pool_of(&file_servers, Pool::builder().backend(backend));
    let mut gateway = gateway(&pool, &file_servers, 4 << 20).await;
    gateway.forbidden.push(TOKEN_VALUE.into());
    (pool, gateway)
}

#[tokio::test]
async fn create_read_replace_delete_and_their_errors() {
    let upstream = ReferenceServer::start().await.unwrap();
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (pool, gw) = started(&upstream, backend.clone()).await;
    let url = upstream.url();
    let creds =
        json!({"credentials": {"header": "Authorization", "env": TOKEN_ENV}, "name": "API one"});

    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("api1", &url, creds.clone())),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let created = json_of(&body);
    assert_eq!(created["id"], "api1");
    assert_eq!(created["name"], "API one");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["pooling_enabled"], true);
    assert_eq!(created["strategy"], "round_robin");
    assert_eq!(
        created["credentials"],
        json!({"header": "authorization", "env": TOKEN_ENV})
    );
    let lease = pool.acquire(&id("api1"), Principal::user("u")).await;
    assert!(lease.is_ok(), "the created server is served at once");
    drop(lease);

    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("api1", &url, json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains("api1"), "{body}");
    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("from_file", &url, json!({}))),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "the id of a server from the file is taken too: {body}"
    );

    let (s, body) = gw.send("GET", "/servers", None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<Value> = json_of(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!("api1"), json!("from_file")]);
    let (s, body) = gw.send("GET", "/servers/api1", None).await;
    assert_eq!(
        (s, json_of(&body)["name"].clone()),
        (StatusCode::OK, json!("API one"))
    );

    let saved = backend.get_server(&id("api1")).await.unwrap().unwrap();
    assert_eq!(saved.record.credentials.as_ref().unwrap().env, TOKEN_ENV);
    assert!(
        !format!("{saved:?}").contains(TOKEN_VALUE),
        "a stored record holds only the variable's name"
    );

    let (s, body) = gw
        .send(
            "PUT",
            "/servers/api1",
            Some(&server_body("other", &url, json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(detail(&body).contains("\"other\""), "{body}");
    let (s, body) = gw
        .send(
            "PUT",
            "/servers/nope",
            Some(&server_body("nope", &url, json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    let (s, body) = gw.send("DELETE", "/servers/api1", None).await;
    assert_eq!((s, body.as_str()), (StatusCode::NO_CONTENT, ""));
    for (method, path) in [
        ("GET", "/servers/api1"),
        ("DELETE", "/servers/api1"),
        ("GET", "/servers/api1/pool/stats"),
    ] {
        let (s, body) = gw.send(method, path, None).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{method} {path} after the delete: {body}"
        );
    }
    assert!(matches!(
        pool.acquire(&id("api1"), Principal::user("u")).await,
        Err(PoolError::UnknownServer(_))
    ));
    let listed = backend.list_servers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record, None, "the delete is kept as a tombstone");
}

#[tokio::test]
async fn invalid_bodies_get_422_naming_field_value_and_what_is_allowed() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, gw) = started(&upstream, Arc::new(MemoryBackend::new())).await;
    let url = upstream.url();
    let cases: Vec<(String, &[&str])> = vec![
        (
            server_body("bad id", &url, json!({})),
            &["id", "\"bad id\"", "[a-zA-Z0-9_-]"],
        ),
        (
            json!({"endpoints": [{"url": url}]}).to_string(),
            &["id is missing"],
        ),
        (
            json!({"id": "x", "endpoints": []}).to_string(),
            &["endpoints", "at least one"],
        ),
        (
            json!({"id": "x", "endpoints": [{"url": url, "transport": "pigeon"}]}).to_string(),
            &[
                "endpoints[0].transport",
                "\"pigeon\"",
                "streamable_http, sse or websocket",
            ],
        ),
        (
            json!({"id": "x", "endpoints": [{"url": url, "weight": 0}]}).to_string(),
            &["endpoints[0].weight", "0", "1 to 1000"],
        ),
        (
            json!({"id": "x", "endpoints": [{"url": url, "lifecycle": "handshake"}]}).to_string(),
            &[
                "endpoints[0].lifecycle",
                "\"handshake\"",
                "initialize, discover or auto",
            ],
        ),
        (
            json!({"id": "x", "endpoints": [{"url": url, "transport": "sse", "lifecycle": "discover"}]})
                .to_string(),
            &["endpoints[0].lifecycle", "does not fit transport sse"],
        ),
        (
            json!({"id": "x", "endpoints": [{"url": "ftp://h/mcp"}]}).to_string(),
            &["endpoints[0].url", "ftp://h/mcp", "http:// or https://"],
        ),
        (
            server_body("x", &url, json!({"pool": {"max_size": 0}})),
            &["pool", "max_size", "0"],
        ),
        (
            server_body(
                "x",
                &url,
                json!({"credentials": {"header": "host", "env": "T"}}),
            ),
            &["credentials.header", "\"host\""],
        ),
        (
            server_body(
                "x",
                &url,
                json!({"credentials": {"header": "x-key", "env": "1BAD"}}),
            ),
            &["credentials.env", "\"1BAD\"", "[A-Za-z_][A-Za-z0-9_]*"],
        ),
        (
            // A credential's value is never accepted: only where to read it.
            server_body(
                "x",
                &url,
                json!({"credentials": {"header": "x-key", "env": "T", "value": TOKEN_VALUE}}),
            ),
            &["value"],
        ),
    ];
    for (body, words) in cases {
        let (s, answer) = gw.send("POST", "/servers", Some(&body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
        let detail = detail(&answer);
        for word in words {
            assert!(
                detail.contains(word),
                "{body}: {detail:?} does not name {word:?}"
            );
        }
    }
    assert!(
        pool.stats()
            .servers
            .iter()
            .all(|s| s.server.as_str() == "from_file"),
        "nothing invalid reached the pool"
    );
    let (_, body) = gw.send("GET", "/servers", None).await;
    assert_eq!(json_of(&body).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_or_credentials_change_drains_a_rename_does_not() {
    let (a, b) = (
        ReferenceServer::start().await.unwrap(),
        ReferenceServer::start().await.unwrap(),
    );
    let (pool, gw) = started(&a, Arc::new(MemoryBackend::new())).await;
    let svc = id("svc");
    let user = Principal::user("u");
    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("svc", &a.url(), json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let first = pool.acquire(&svc, user).await.unwrap().session_id();
    a.wait_sessions_alive(1, WAIT).await.unwrap();

    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(&server_body("svc", &a.url(), json!({"name": "Renamed"}))),
        )
        .await;
    assert_eq!(
        (s, json_of(&body)["name"].clone()),
        (StatusCode::OK, json!("Renamed"))
    );
    let stats = pool.stats();
    let svc_stats = stats.servers.iter().find(|s| s.server == svc).unwrap();
    assert_eq!(svc_stats.sessions_total, 1, "a rename must not drain");
    let lease = pool.acquire(&svc, user).await.unwrap();
    assert_eq!(lease.session_id(), first, "the session survives a rename");
    drop(lease);
    assert_eq!(a.sessions_opened(), 1);

    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(&server_body("svc", &b.url(), json!({"name": "Renamed"}))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    a.wait_sessions_alive(0, WAIT)
        .await
        .expect("the old URL's session closes");
    let lease = pool.acquire(&svc, user).await.unwrap();
    assert_ne!(lease.session_id(), first);
    drop(lease);
    assert_eq!(
        (a.sessions_opened(), b.sessions_opened()),
        (1, 1),
        "the new session is on B"
    );
    b.wait_sessions_alive(1, WAIT).await.unwrap();

    let creds = json!({"credentials": {"header": "x-api-key", "env": TOKEN_ENV}});
    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(&server_body("svc", &b.url(), creds)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    b.wait_sessions_alive(0, WAIT)
        .await
        .expect("a credentials change drains");

    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(&server_body("svc", &b.url(), json!({"enabled": false}))),
        )
        .await;
    assert_eq!(
        (s, json_of(&body)["enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    let (s, _) = gw.send("GET", "/servers/svc/pool/stats", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a disabled server has no pool");
    let (s, body) = gw.send("GET", "/servers/svc", None).await;
    assert_eq!(
        (s, json_of(&body)["enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    assert!(matches!(
        pool.acquire(&svc, user).await,
        Err(PoolError::UnknownServer(_))
    ));
    let (s, _) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(&server_body("svc", &b.url(), json!({"enabled": true}))),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    pool.acquire(&svc, user)
        .await
        .expect("a re-enabled server is served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_survive_a_restart_on_sqlite() {
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("registry.db").display());
    let connect = || async {
        let backend = DatabaseBackend::connect(DatabaseConfig::new(url.clone()))
            .await
            .unwrap();
        Arc::new(backend) as Arc<dyn StateBackend>
    };

    let (pool, gw) = started(&upstream, connect().await).await;
    let creds = json!({"credentials": {"header": "x-api-key", "env": TOKEN_ENV}});
    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("api1", &upstream.url(), creds)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = gw
        .send(
            "PUT",
            "/servers/from_file",
            Some(&server_body(
                "from_file",
                &upstream.url(),
                json!({"name": "From file, renamed"}),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, before) = gw.send("GET", "/servers", None).await;
    pool.close().await;
    drop((pool, gw));

    // The same file and the same server: the API's changes win over the file.
    let (pool, gw) = started(&upstream, connect().await).await;
    let (_, after) = gw.send("GET", "/servers", None).await;
    assert_eq!(
        json_of(&after),
        json_of(&before),
        "the registry after a restart"
    );
    assert_eq!(json_of(&after)[1]["name"], "From file, renamed");
    pool.acquire(&id("api1"), Principal::user("u"))
        .await
        .expect("a server created through the API is served after a restart");

    let (s, _) = gw.send("DELETE", "/servers/from_file", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    pool.close().await;
    drop((pool, gw));
    let (pool, gw) = started(&upstream, connect().await).await;
    let (s, _) = gw.send("GET", "/servers/from_file", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a deleted server from the file stays deleted after a restart"
    );
    assert!(
        pool.stats()
            .servers
            .iter()
            .all(|s| s.server.as_str() != "from_file")
    );
}

#[tokio::test]
async fn a_saved_pool_config_holds_until_a_put_names_the_pool() {
    let upstream = ReferenceServer::start().await.unwrap();
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (_pool, gw) = started(&upstream, backend.clone()).await;
    let url = upstream.url();
    let (s, _) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("svc", &url, json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc/pool/config",
            Some(r#"{"max_size": 8}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let rename = json!({"name": "Renamed"}).to_string();
    let (s, _) = gw.send("PUT", "/servers/svc", Some(&rename)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = gw.send("GET", "/servers/svc/pool/config", None).await;
    assert_eq!(
        json_of(&body)["max_size"],
        8,
        "a rename keeps the saved config"
    );

    let resized = server_body(
        "svc",
        &url,
        json!({"pool": {"enabled": true, "min_size": 1, "max_size": 6}}),
    );
    let (s, _) = gw.send("PUT", "/servers/svc", Some(&resized)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = gw.send("GET", "/servers/svc/pool/config", None).await;
    assert_eq!(
        json_of(&body)["max_size"],
        6,
        "the record's new pool applies"
    );
    let saved = backend.get_config(&id("svc")).await.unwrap().unwrap();
    assert_eq!(
        saved.config.max_size, 6,
        "and is saved over the old saved config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_api_changes_in_its_sqlite_file() {
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("AUTH_REQUIRED", "false"),
        ("CACHE_TYPE", "database"),
        ("DATABASE_URL", "sqlite:gateway.db"),
    ];
    let http = reqwest::Client::new();
    let mut first = Process::start(&["--demo"], &envs, dir.path()).await;
    let created = http
        .post(format!("{}/servers", first.base))
        .header("content-type", "application/json")
        .body(server_body("api1", &upstream.url(), json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deleted = http
        .delete(format!("{}/servers/demo", first.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    first.stop().await;

    let mut second = Process::start(&["--demo"], &envs, dir.path()).await;
    let listed: Value = http
        .get(format!("{}/servers", second.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&json!("api1")], "{listed}");
    let log = &second.log;
    assert!(
        log.contains("creating/updating pool for server api1 with strategy=round_robin"),
        "{log}"
    );
    assert!(
        log.contains("pool manager initialized with 1 servers"),
        "{log}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_own_credential_reaches_the_upstream_and_nowhere_else() {
    const TOKEN: &str = "upstream-s3cret-7f2a";
    let upstream = ReferenceServer::start().await.unwrap();
    upstream.set_bearer_token(Some(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    // The variable holds the header's whole value.
    let header_value = format!("Bearer {TOKEN}");
    let mut gateway = Process::start(
        &[],
        &[
            ("AUTH_REQUIRED", "false"),
            ("UPSTREAM_TOKEN", &header_value),
            ("CREDENTIALS_ENV_ALLOWED", "UPSTREAM_TOKEN"),
        ],
        dir.path(),
    )
    .await;
    let http = reqwest::Client::new();
    let create = |id: &str, credentials: Value| {
        http.post(format!("{}/servers", gateway.base))
            .header("content-type", "application/json")
            .body(server_body(
                id,
                &upstream.url(),
                json!({ "credentials": credentials }),
            ))
            .send()
    };
    let missing = create(
        "nokey",
        json!({"header": "authorization", "env": "NOT_SET_ANYWHERE"}),
    )
    .await
    .unwrap();
    assert_eq!(missing.status(), 422);
    let detail = missing.text().await.unwrap();
    assert!(detail.contains("NOT_SET_ANYWHERE"), "{detail}");
    let created = create(
        "keyed",
        json!({"header": "authorization", "env": "UPSTREAM_TOKEN"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let plain = create("plain", Value::Null).await.unwrap();
    assert_eq!(plain.status(), 201);

    let call = |server: &str| {
        let url = format!("{}/servers/{server}/mcp", gateway.base);
        async move {
            let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url);
            let client = rmcp::ServiceExt::serve((), transport).await?;
            let result = client
                .call_tool(
                    rmcp::model::CallToolRequestParams::new("echo").with_arguments(
                        json!({"message": "authorized"})
                            .as_object()
                            .unwrap()
                            .clone(),
                    ),
                )
                .await;
            Ok::<_, Box<dyn std::error::Error>>(result.is_ok())
        }
    };
    assert!(
        call("keyed").await.unwrap(),
        "the server's credential opened the upstream"
    );
    assert!(
        !call("plain").await.unwrap_or(false),
        "without it the upstream refuses"
    );

    let listed = http
        .get(format!("{}/servers", gateway.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("UPSTREAM_TOKEN"),
        "the reference is shown: {listed}"
    );
    assert!(!listed.contains(TOKEN), "the value never is: {listed}");
    gateway.stop().await;
    assert!(!gateway.log.contains(TOKEN), "the value is never logged");
}

/// An environment value of the stdio endpoint below: masked in every response.
const STDIO_SECRET: &str = "stdio-env-value-must-not-leak";

/// A server with every field a record and the file can give it: an HTTP endpoint with a
/// password in its URL (weight 3, lifecycle `auto`), a WebSocket one (weight 2) and a stdio one
/// (command, args, env, cwd; weight 5), a call timeout and client capabilities. A server from the file:
/// the only way to a stdio endpoint and to the file's own settings. (Its endpoints are never
/// connected: nothing here acquires a session of it.)
fn full_file_server(upstream: &ReferenceServer) -> ServerConfig {
    use mcp_pool::{Endpoint, Lifecycle, TransportKind, rmcp::model::ClientCapabilities};
    let http = Endpoint::new(
        upstream.url().replace("http://", "http://alice:hunter2pw@"),
        TransportKind::StreamableHttp,
    )
    .and_then(|e| e.with_weight(3))
    .and_then(|e| e.with_lifecycle(Lifecycle::Auto))
    .unwrap();
    let ws = upstream
        .endpoint_for(TransportKind::WebSocket)
        .with_weight(2)
        .unwrap();
    let stdio = Endpoint::stdio(mcp_pool::traits::StdioCommand {
        command: "mcp-server-nowhere".into(),
        args: vec!["--mode".into(), "stdio".into()],
        env: [("API_KEY", STDIO_SECRET), ("TZ", "UTC")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        cwd: Some("/tmp".into()),
    })
    .and_then(|e| e.with_weight(5))
    .unwrap();
    let mut capabilities = ClientCapabilities::default();
    capabilities.sampling = Some(Default::default());
    capabilities.roots = Some(Default::default());
    ServerConfig::new(id("full"), http)
        .endpoint(ws)
        .endpoint(stdio)
        .pool(PoolConfig::enabled())
        .call_timeout(Duration::from_secs(120))
        .client_capabilities(capabilities)
}

/// A gateway over `backend` whose file holds `file_servers`; no response may hold a password or a
/// secret of theirs.
async fn gateway_of(
    file_servers: &[ServerConfig],
    backend: Arc<dyn StateBackend>,
) -> (Pool, Gateway) {
    let pool = pool_of(file_servers, Pool::builder().backend(backend));
    let mut gateway = gateway(&pool, file_servers, 4 << 20).await;
    gateway.forbidden.extend([
        TOKEN_VALUE.to_owned(),
        "hunter2pw".to_owned(),
        STDIO_SECRET.to_owned(),
    ]);
    (pool, gateway)
}

/// The pool config every test below gives a server: sticky 3/8/4 (min/max/target), idle 600 s,
/// and no other field at its default.
const STICKY: &str = r#"{"enabled": true, "strategy": "sticky", "min_size": 3, "max_size": 8, "size": 4, "max_idle_time": 600, "timeout": 20, "max_lifetime": 7200, "auto_scale": true, "health_check_interval": 30, "rebalance_interval": 120, "health_check_threshold": 80, "session_concurrency": 2}"#;

#[tokio::test]
async fn a_get_body_put_back_unchanged_changes_nothing_for_every_field() {
    let upstream = ReferenceServer::start().await.unwrap();
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (_pool, gw) = gateway_of(&[full_file_server(&upstream)], backend.clone()).await;
    // The API's fields on top of the file's.
    let mut set = json!({
        "name": "Everything",
        "credentials": {"header": "x-api-key", "env": TOKEN_ENV},
        "access": {"users": ["alice"], "groups": ["ops"]},
        "forward_token": true,
    });
    set["pool"] = json_of(STICKY);
    let (s, body) = gw
        .send("PUT", "/servers/full", Some(&set.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let mut in_force = None;
    for enabled in [true, false] {
        if !enabled {
            let (s, body) = gw
                .send("PUT", "/servers/full", Some(r#"{"enabled": false}"#))
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
        }
        let (s, body) = gw.send("GET", "/servers/full", None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let before = json_of(&body);
        let endpoints = &before["endpoints"];
        assert!(
            endpoints[0]["url"].as_str().unwrap().contains("***@"),
            "{before}"
        );
        assert_eq!(
            (&endpoints[0]["weight"], &endpoints[0]["lifecycle"]),
            (&json!(3), &json!("auto"))
        );
        assert_eq!(
            (&endpoints[1]["transport"], &endpoints[1]["weight"]),
            (&json!("websocket"), &json!(2))
        );
        assert_eq!(
            endpoints[2],
            json!({"url": "stdio:mcp-server-nowhere", "transport": "stdio", "weight": 5,
                "lifecycle": "initialize", "command": "mcp-server-nowhere",
                "args": ["--mode", "stdio"], "env": {"API_KEY": "***", "TZ": "***"}, "cwd": "/tmp"})
        );
        assert_eq!(before["name"], "Everything");
        assert_eq!(before["enabled"], enabled);
        assert_eq!(before["forward_token"], true);
        assert_eq!(
            before["credentials"],
            json!({"header": "x-api-key", "env": TOKEN_ENV})
        );
        assert_eq!(
            before["access"],
            json!({"users": ["alice"], "groups": ["ops"]})
        );
        assert_eq!(before["pool"], json_of(STICKY), "the pool in force");
        assert_eq!(
            (&before["pooling_enabled"], &before["strategy"]),
            (&json!(true), &json!("sticky"))
        );
        assert_eq!(before["call_timeout"], 120);
        assert_eq!(before["client_capabilities"], json!(["sampling", "roots"]));
        let (s, config) = gw.send("GET", "/servers/full/pool/config", None).await;
        if enabled {
            assert_eq!((s, json_of(&config)), (StatusCode::OK, json_of(STICKY)));
            in_force = Some(config);
        } else {
            assert_eq!(s, StatusCode::NOT_FOUND, "a disabled server has no pool");
        }

        let (s, answer) = gw.send("PUT", "/servers/full", Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "enabled {enabled}: {answer}");
        assert_eq!(json_of(&answer), before, "the PUT's answer");
        let (_, after) = gw.send("GET", "/servers/full", None).await;
        assert_eq!(
            json_of(&after),
            before,
            "enabled {enabled}: GET after the PUT"
        );
        let (s, config) = gw.send("GET", "/servers/full/pool/config", None).await;
        if enabled {
            assert_eq!(
                (s, config.as_str()),
                (StatusCode::OK, in_force.as_deref().unwrap())
            );
        }
        let stored = backend
            .get_server(&id("full"))
            .await
            .unwrap()
            .unwrap()
            .record;
        assert!(
            stored.endpoints[0].url.contains("alice:hunter2pw@"),
            "the masked URL stood for the stored one"
        );
        let command = stored.endpoints[2].stdio.as_deref().unwrap();
        assert_eq!(
            command.env["API_KEY"], STDIO_SECRET,
            "and the masked env value"
        );
    }

    let (s, body) = gw
        .send("PUT", "/servers/full", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, config) = gw.send("GET", "/servers/full/pool/config", None).await;
    assert_eq!(
        Some(config),
        in_force,
        "enabled again, it runs the same pool config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivate_then_activate_keeps_the_pool_config_across_a_restart() {
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("registry.db").display());
    let connect = || async {
        let backend = DatabaseBackend::connect(DatabaseConfig::new(url.clone()))
            .await
            .unwrap();
        Arc::new(backend) as Arc<dyn StateBackend>
    };
    let backend = connect().await;
    let (pool, gw) = started(&upstream, backend.clone()).await;
    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("svc", &upstream.url(), json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // Saved through the pool config route: the record still has the body's round_robin 1/4.
    let (s, body) = gw
        .send("PUT", "/servers/svc/pool/config", Some(STICKY))
        .await;
    assert_eq!((s, json_of(&body)), (StatusCode::OK, json_of(STICKY)));

    let (s, body) = gw
        .send("PUT", "/servers/svc", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(json_of(&body)["pool"], json_of(STICKY), "{body}");
    assert_eq!(
        backend.get_config(&id("svc")).await.unwrap(),
        None,
        "while disabled, the record holds the config"
    );
    let stored = backend.get_server(&id("svc")).await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&stored.record.pool).unwrap(),
        json_of(STICKY)
    );
    pool.close().await;
    drop((pool, gw));

    let (pool, gw) = started(&upstream, connect().await).await;
    let (_, body) = gw.send("GET", "/servers/svc", None).await;
    let mut server = json_of(&body);
    assert_eq!(
        (&server["enabled"], &server["pool"]),
        (&json!(false), &json_of(STICKY)),
        "after a restart"
    );
    // The Admin UI's toggle before this was fixed: the GET body with `enabled` flipped.
    server["enabled"] = json!(true);
    let (s, body) = gw
        .send("PUT", "/servers/svc", Some(&server.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, config) = gw.send("GET", "/servers/svc/pool/config", None).await;
    assert_eq!(
        json_of(&config),
        json_of(STICKY),
        "activated from its GET body"
    );
    pool.acquire(&id("svc"), Principal::user("u"))
        .await
        .expect("served again");

    // The toggle now: a body naming `enabled` only.
    for enabled in [false, true] {
        let body = json!({ "enabled": enabled }).to_string();
        let (s, answer) = gw.send("PUT", "/servers/svc", Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{answer}");
        assert_eq!(json_of(&answer)["pool"], json_of(STICKY), "{answer}");
    }
    let (_, config) = gw.send("GET", "/servers/svc/pool/config", None).await;
    assert_eq!(
        json_of(&config),
        json_of(STICKY),
        "deactivated and activated"
    );
    pool.close().await;
}

#[tokio::test]
async fn a_put_keeps_what_it_does_not_name_and_null_sets_the_default() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (_pool, gw) = started(&upstream, Arc::new(MemoryBackend::new())).await;
    let every = json!({
        "name": "Named",
        "credentials": {"header": "x-api-key", "env": TOKEN_ENV},
        "access": {"users": ["alice"], "groups": []},
        "forward_token": true,
        "pool": {"enabled": true, "strategy": "sticky", "min_size": 2, "max_size": 6},
    });
    let (s, body) = gw
        .send(
            "POST",
            "/servers",
            Some(&server_body("svc", &upstream.url(), every)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let full = json_of(&body);

    // Each field alone: only it changes.
    let pool_merged = {
        let mut pool = full["pool"].clone();
        pool["max_size"] = json!(9);
        pool
    };
    let cases = [
        (json!({"name": "Renamed"}), "name", json!("Renamed")),
        (json!({"pool": {"max_size": 9}}), "pool", pool_merged),
        (
            json!({"forward_token": false}),
            "forward_token",
            json!(false),
        ),
        (
            json!({"access": {"users": [], "groups": ["ops"]}}),
            "access",
            json!({"users": [], "groups": ["ops"]}),
        ),
        (json!({"enabled": false}), "enabled", json!(false)),
    ];
    let mut expected = full.clone();
    for (put, field, value) in cases {
        let (s, body) = gw.send("PUT", "/servers/svc", Some(&put.to_string())).await;
        assert_eq!(s, StatusCode::OK, "{put}: {body}");
        expected[field] = value;
        assert_eq!(json_of(&body), expected, "{put} changes {field} alone");
    }

    // `null`: back to the default a POST gives.
    let (s, body) = gw
        .send(
            "PUT",
            "/servers/svc",
            Some(
                r#"{"name": null, "enabled": null, "credentials": null, "access": null, "forward_token": null, "pool": null}"#,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let reset = json_of(&body);
    assert_eq!(reset["name"], "svc");
    assert_eq!(reset["enabled"], true);
    assert_eq!(reset["forward_token"], false);
    assert!(
        reset.get("credentials").is_none() && reset.get("access").is_none(),
        "{reset}"
    );
    assert_eq!(
        serde_json::from_value::<PoolConfig>(reset["pool"].clone()).unwrap(),
        PoolConfig::default()
    );
    assert_eq!(reset["endpoints"], full["endpoints"], "endpoints kept");

    let (s, body) = gw
        .send("PUT", "/servers/svc", Some(r#"{"endpoints": null}"#))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        detail(&body),
        "endpoints = null is invalid: must be at least one endpoint"
    );
}

#[tokio::test]
async fn masked_secrets_stand_for_stored_values_and_read_only_fields_must_agree() {
    let upstream = ReferenceServer::start().await.unwrap();
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (_pool, gw) = gateway_of(&[full_file_server(&upstream)], backend.clone()).await;
    let (_, body) = gw.send("GET", "/servers/full", None).await;
    let server = json_of(&body);
    let masked = server["endpoints"][0]["url"].as_str().unwrap().to_owned();
    let stdio = server["endpoints"][2].clone();
    let with = |field: &str, value: Value| {
        let mut body = server.clone();
        body[field] = value;
        body.to_string()
    };

    // A masked URL moved to another position still stands for its stored URL.
    let moved = json!([server["endpoints"][1], server["endpoints"][0], stdio]);
    let (s, body) = gw
        .send("PUT", "/servers/full", Some(&with("endpoints", moved)))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let stored = backend
        .get_server(&id("full"))
        .await
        .unwrap()
        .unwrap()
        .record;
    assert!(stored.endpoints[1].url.contains("alice:hunter2pw@"));

    let mut other_args = stdio.clone();
    other_args["args"] = json!(["--evil"]);
    let refused: Vec<(String, &[&str])> = vec![
        (
            with(
                "endpoints",
                json!([{"url": masked.replace("127.0.0.1", "127.0.0.2")}]),
            ),
            &[
                "endpoints[0].url",
                "***",
                "not the hidden form",
                "send the whole URL",
            ],
        ),
        (
            with("endpoints", json!([other_args])),
            &["endpoints[0]", "mcp-server-nowhere", "configuration file"],
        ),
        (
            with(
                "endpoints",
                json!([{"transport": "stdio", "command": "mcp-server-nowhere",
                    "args": ["--mode", "stdio"], "env": {"API_KEY": "other", "TZ": "***"}, "cwd": "/tmp"}]),
            ),
            &["endpoints[0]", "not one of this server's stdio endpoints"],
        ),
        (
            with(
                "endpoints",
                json!([{"url": upstream.url(), "command": "sh"}]),
            ),
            &["endpoints[0].command", "only a stdio endpoint"],
        ),
        (
            with("pooling_enabled", json!(false)),
            &["pooling_enabled = false", "must be true", "pool.enabled"],
        ),
        (
            with("strategy", json!("sticky")),
            &["strategy = \"sticky\"", "\"round_robin\"", "pool.strategy"],
        ),
        (
            with("call_timeout", json!(30)),
            &["call_timeout = 30", "must be 120", "configuration file"],
        ),
        (
            with("client_capabilities", json!(["sampling"])),
            &["client_capabilities", "[\"roots\", \"sampling\"]"],
        ),
    ];
    for (body, words) in refused {
        let (s, answer) = gw.send("PUT", "/servers/full", Some(&body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
        let detail = detail(&answer);
        for word in words {
            assert!(detail.contains(word), "{detail:?} does not name {word:?}");
        }
    }
    // Read-only fields that agree, in any order, and a pool change they agree with.
    let agreeing = json!({"strategy": "sticky", "pool": {"strategy": "sticky"},
        "client_capabilities": ["roots", "sampling"], "call_timeout": 120});
    let (s, body) = gw
        .send("PUT", "/servers/full", Some(&agreeing.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // A new server has no stored value a mask could stand for, and no stdio endpoint.
    for endpoint in [json!({"url": masked}), stdio] {
        let body = json!({"id": "new", "endpoints": [endpoint]}).to_string();
        let (s, answer) = gw.send("POST", "/servers", Some(&body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {answer}");
    }
    let (s, _) = gw.send("GET", "/servers/new", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_a_file_servers_stdio_endpoint_and_own_settings_across_edits_and_a_restart()
 {
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[[servers]]\nid = \"files\"\nendpoints = [\n  {{ url = \"{}\", transport = \"streamable_http\", weight = 2 }},\n  \
             {{ transport = \"stdio\", command = \"mcp-server-nowhere\", args = [\"--mode\", \"stdio\"], \
             env = {{ API_KEY = \"{STDIO_SECRET}\" }} }},\n]\npool = {{ enabled = true, strategy = \"sticky\" }}\n\
             call_timeout = 120\nclient_capabilities = [\"roots\", \"sampling\"]\n",
            upstream.url()
        ),
    )
    .unwrap();
    let envs = [
        ("AUTH_REQUIRED", "false"),
        ("CACHE_TYPE", "database"),
        ("DATABASE_URL", "sqlite:gateway.db"),
    ];
    let http = reqwest::Client::new();
    let get = async |gw: &Process| -> Value {
        let res = http
            .get(format!("{}/servers/files", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    };
    let put = async |gw: &Process, body: &Value| -> Value {
        let res = http
            .put(format!("{}/servers/files", gw.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains(STDIO_SECRET), "{text}");
        json_of(&text)
    };

    let mut first = Process::start(&["--config", "gateway.toml"], &envs, dir.path()).await;
    let edited = put(
        &first,
        &json!({"name": "Edited", "access": {"users": ["alice"], "groups": []}, "pool": {"max_size": 4}}),
    )
    .await;
    assert_eq!(
        (&edited["call_timeout"], &edited["client_capabilities"]),
        (&json!(120), &json!(["sampling", "roots"])),
        "the file's own settings: {edited}"
    );
    assert_eq!(
        edited["endpoints"][1]["env"],
        json!({"API_KEY": "***"}),
        "{edited}"
    );
    assert_eq!(
        (&edited["pool"]["strategy"], &edited["pool"]["max_size"]),
        (&json!("sticky"), &json!(4))
    );
    let before = get(&first).await;
    assert_eq!(put(&first, &before).await, before, "GET, then PUT back");
    assert_eq!(get(&first).await, before);
    first.stop().await;

    // The backend's record wins over the file's table; the file's own settings still apply.
    let mut second = Process::start(&["--config", "gateway.toml"], &envs, dir.path()).await;
    assert_eq!(get(&second).await, before, "after a restart");
    assert_eq!(put(&second, &before).await, before);
    second.stop().await;
}

#[tokio::test]
async fn a_reload_gives_a_server_the_api_changed_the_files_new_own_settings() {
    let upstream = ReferenceServer::start().await.unwrap();
    let file_server = |secs| {
        ServerConfig::new(id("from_file"), upstream.endpoint())
            .pool(PoolConfig::enabled())
            .call_timeout(Duration::from_secs(secs))
    };
    let before = [file_server(120)];
    let pool = pool_of(
        &before,
        Pool::builder().backend(Arc::new(MemoryBackend::new())),
    );
    let registry = mcp_pool_gateway::Registry::load(pool.clone(), &before)
        .await
        .unwrap();
    let renamed = registry
        .update(&id("from_file"), |record, _| {
            Ok::<_, mcp_pool_gateway::registry::RegistryError>(mcp_pool::traits::ServerRecord {
                name: "Renamed".into(),
                ..record.clone()
            })
        })
        .await
        .unwrap();
    assert_eq!(renamed.name, "Renamed");
    assert_eq!(
        registry
            .file_settings(&id("from_file"))
            .call_timeout
            .as_secs(),
        120
    );

    let done = registry
        .reload_seeds(&before, &[file_server(30)])
        .await
        .unwrap();
    assert_eq!(done.updated, ["from_file"], "{done:?}");
    assert_eq!(
        registry
            .file_settings(&id("from_file"))
            .call_timeout
            .as_secs(),
        30
    );
    let record = registry.get(&id("from_file")).await.unwrap();
    assert_eq!(record.name, "Renamed", "the API's record still wins");
    pool.close().await;
}
