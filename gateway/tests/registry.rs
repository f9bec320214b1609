//! The server registry through the REST API (issue 11 item 2): `POST /servers`,
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

/// A gateway with one file seed, `seed`, on `upstream`, over `backend`.
async fn started(upstream: &ReferenceServer, backend: Arc<dyn StateBackend>) -> (Pool, Gateway) {
    let seeds = [ServerConfig::new(id("seed"), upstream.endpoint()).pool(PoolConfig::enabled())];
    let pool = pool_of(&seeds, Pool::builder().backend(backend));
    let mut gateway = gateway(&pool, &seeds, 4 << 20).await;
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
            Some(&server_body("seed", &url, json!({}))),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a file seed's id is taken too: {body}"
    );

    let (s, body) = gw.send("GET", "/servers", None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<Value> = json_of(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!("api1"), json!("seed")]);
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
            .all(|s| s.server.as_str() == "seed"),
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
            Some(&server_body("svc", &b.url(), json!({}))),
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
            "/servers/seed",
            Some(&server_body(
                "seed",
                &upstream.url(),
                json!({"name": "Seed, renamed"}),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, before) = gw.send("GET", "/servers", None).await;
    pool.close().await;
    drop((pool, gw));

    // The same file and the same seed: the API's changes win over the file.
    let (pool, gw) = started(&upstream, connect().await).await;
    let (_, after) = gw.send("GET", "/servers", None).await;
    assert_eq!(
        json_of(&after),
        json_of(&before),
        "the registry after a restart"
    );
    assert_eq!(json_of(&after)[1]["name"], "Seed, renamed");
    pool.acquire(&id("api1"), Principal::user("u"))
        .await
        .expect("a server created through the API is served after a restart");

    let (s, _) = gw.send("DELETE", "/servers/seed", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    pool.close().await;
    drop((pool, gw));
    let (pool, gw) = started(&upstream, connect().await).await;
    let (s, _) = gw.send("GET", "/servers/seed", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a deleted file seed stays deleted after a restart"
    );
    assert!(
        pool.stats()
            .servers
            .iter()
            .all(|s| s.server.as_str() != "seed")
    );
}

#[tokio::test]
async fn a_saved_pool_config_holds_until_the_record_changes_its_pool() {
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

    let rename = server_body("svc", &url, json!({"name": "Renamed"}));
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
