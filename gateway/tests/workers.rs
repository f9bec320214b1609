//! Several gateway workers as real processes: the `mcp-pool-gateway` binary, three
//! workers on loopback sharing the machine's Redis or PostgreSQL (each test in a namespace of
//! its own), a reference server as the upstream.
//!
//! Needs `MCP_POOL_TEST_REDIS_URL` / `MCP_POOL_TEST_DATABASE_URL` (a PostgreSQL URL); without
//! them a test prints why it skips that backend, and with `MCP_POOL_REQUIRE_SERVICES=1` it
//! fails instead.

mod common;

use std::time::{Duration, Instant};

use common::Process;
use mcp_pool_conformance::{ReferenceServer, services::service_url};
use serde_json::{Value, json};

/// Bound on a change reaching another worker: the subscription delivers it in milliseconds,
/// the re-list (every 5 s) at the latest.
const PROPAGATION: Duration = Duration::from_secs(12);

/// A shared backend the workers can use: `CACHE_TYPE` and the variable holding its URL.
struct Shared {
    cache_type: &'static str,
    url_var: &'static str,
    url: String,
}

/// The shared backends configured for the tests; a missing one is skipped after saying why
/// (a failure with `MCP_POOL_REQUIRE_SERVICES=1`).
fn shared_backends() -> Vec<Shared> {
    [
        ("redis", "REDIS_URL", "MCP_POOL_TEST_REDIS_URL"),
        ("database", "DATABASE_URL", "MCP_POOL_TEST_DATABASE_URL"),
    ]
    .into_iter()
    .filter_map(|(cache_type, url_var, test_var)| {
        Some(Shared {
            cache_type,
            url_var,
            url: service_url(test_var)?,
        })
    })
    .collect()
}

/// `n` workers `w0`, `w1`, … on `shared`, in a fresh namespace, auth off.
async fn workers(shared: &Shared, n: usize, dir: &std::path::Path) -> Vec<Process> {
    let namespace = format!("gw-{}", uuid::Uuid::new_v4().simple());
    let mut started = Vec::new();
    for i in 0..n {
        let worker = format!("w{i}");
        let envs = [
            ("AUTH_REQUIRED", "false"),
            ("CACHE_TYPE", shared.cache_type),
            (shared.url_var, shared.url.as_str()),
            ("STATE_NAMESPACE", namespace.as_str()),
            ("WORKER_ID", worker.as_str()),
        ];
        let process = Process::start(&[], &envs, dir).await;
        let joined = format!("worker {worker} joined the workers sharing");
        assert!(process.log.contains(&joined), "{}", process.log);
        started.push(process);
    }
    started
}

/// `method path` on `worker` with an optional JSON body: status and body.
async fn send(worker: &Process, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request =
        reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", worker.base));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `GET path` on `worker` until `done` holds for its status and body; how long that
/// took. Panics after [`PROPAGATION`]. (There is no signal to wait for in another process but
/// its API.)
async fn until(worker: &Process, path: &str, done: impl Fn(u16, &Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = send(worker, "GET", path, None).await;
        if done(status, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PROPAGATION,
            "{path} on {}: still {status} {body} after {PROPAGATION:?}",
            worker.base
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `counter` once through `worker`'s MCP endpoint of `server`: its text.
async fn call_counter(worker: &Process, server: &str) -> String {
    use rmcp::{ServiceExt as _, model::CallToolRequestParams};
    let url = format!("{}/servers/{server}/mcp", worker.base);
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url);
    let client = ().serve(transport).await.expect("initialize through the worker");
    let result = client
        .call_tool(CallToolRequestParams::new("counter"))
        .await
        .expect("counter through the worker");
    let text = result.content[0].as_text().unwrap().text.clone();
    client.cancel().await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_created_configured_or_deleted_on_one_worker_applies_on_every_worker() {
    for shared in shared_backends() {
        let upstream = ReferenceServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut group = workers(&shared, 3, dir.path()).await;
        let kind = shared.cache_type;

        let body = json!({
            "id": "s1",
            "endpoints": [{"url": upstream.url()}],
            "pool": {"enabled": true, "max_size": 4},
        });
        let (status, created) = send(&group[0], "POST", "/servers", Some(body)).await;
        assert_eq!(status, 201, "{kind}: {created}");
        for worker in &mut group[1..] {
            worker
                .wait_for("server s1 changed by another worker: applied")
                .await;
            let (status, stats) = send(worker, "GET", "/servers/s1/pool/stats", None).await;
            assert_eq!(status, 200, "{kind}: served on every worker: {stats}");
        }
        assert_eq!(call_counter(&group[2], "s1").await, "1", "{kind}");

        // A pool config saved through one worker is in force on the others.
        let update = json!({"max_size": 7, "strategy": "least_connections"});
        let (status, body) = send(&group[1], "PUT", "/servers/s1/pool/config", Some(update)).await;
        assert_eq!(status, 200, "{kind}: {body}");
        for worker in [&group[0], &group[2]] {
            let took = until(worker, "/servers/s1/pool/config", |_, config| {
                config["max_size"] == 7 && config["strategy"] == "least_connections"
            })
            .await;
            eprintln!("{kind}: a saved pool config was in force on another worker after {took:?}");
        }

        // A rename (cosmetic) and then a delete.
        let renamed = json!({"name": "Renamed", "endpoints": [{"url": upstream.url()}]});
        let (status, body) = send(&group[2], "PUT", "/servers/s1", Some(renamed)).await;
        assert_eq!(status, 200, "{kind}: {body}");
        let took = until(&group[0], "/servers/s1", |_, s| s["name"] == "Renamed").await;
        eprintln!("{kind}: a renamed server was renamed on another worker after {took:?}");
        let (status, _) = send(&group[2], "DELETE", "/servers/s1", None).await;
        assert_eq!(status, 204, "{kind}");
        for worker in &mut group[..2] {
            worker
                .wait_for("server s1 deleted or disabled by another worker: removed")
                .await;
            let (status, body) = send(worker, "GET", "/servers/s1/pool/stats", None).await;
            assert_eq!(status, 404, "{kind}: gone on every worker: {body}");
        }
        for worker in &mut group {
            worker.stop().await;
            assert!(!worker.log.contains("panicked"), "{kind}: {}", worker.log);
        }
        upstream.stop().await;
    }
}

/// A downstream MCP session over plain HTTP (streamable HTTP, 2025-06-18), whose requests can
/// go to any worker, as a load balancer would send them.
struct McpSession {
    server: String,
    user: String,
    id: String,
    next: u64,
}

/// The JSON-RPC response with `id` in a streamable HTTP response body (JSON or SSE).
fn response_with_id(body: &str, id: u64) -> Option<Value> {
    let candidates: Vec<Value> = match serde_json::from_str::<Value>(body) {
        Ok(value) => vec![value],
        Err(_) => body
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str(data.trim()).ok())
            .collect(),
    };
    candidates.into_iter().find(|v| v["id"] == id)
}

/// POSTs one JSON-RPC message as `user` to `worker`: the status, the session id header and
/// the body.
async fn post(
    worker: &Process,
    server: &str,
    user: &str,
    session: Option<&str>,
    message: Value,
) -> (u16, Option<String>, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/servers/{server}/mcp", worker.base))
        .header("accept", "application/json, text/event-stream")
        .header("x-user-id", user)
        .json(&message);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, id, response.text().await.unwrap())
}

impl McpSession {
    /// Initializes a session of `user` on `server` through `worker`.
    async fn initialize(worker: &Process, server: &str, user: &str) -> Self {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "workers-test", "version": "1"}}});
        let (status, id, body) = post(worker, server, user, None, init).await;
        assert_eq!(status, 200, "initialize: {body}");
        let id = id.expect("a session id");
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let (status, _, body) = post(worker, server, user, Some(&id), initialized).await;
        assert_eq!(status, 202, "initialized: {body}");
        Self {
            server: server.into(),
            user: user.into(),
            id,
            next: 1,
        }
    }

    /// Calls `counter` through `worker`: its text, or the HTTP status of a failure.
    async fn counter(&mut self, worker: &Process) -> Result<String, u16> {
        self.counter_as(worker, &self.user.clone()).await
    }

    /// Calls `counter` through `worker` as `user` (who may not be the session's).
    async fn counter_as(&mut self, worker: &Process, user: &str) -> Result<String, u16> {
        let id = self.next;
        self.next += 1;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "counter", "arguments": {}}});
        let (status, _, body) = post(worker, &self.server, user, Some(&self.id), call).await;
        if status != 200 {
            eprintln!("tools/call through {}: {status} {body}", worker.base);
            return Err(status);
        }
        let response = response_with_id(&body, id).unwrap_or_else(|| panic!("no reply: {body}"));
        Ok(response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("not a tool result: {response}"))
            .to_owned())
    }
}

/// Creates `server` on `worker` (pooling on, `strategy`) and waits until every other worker
/// of `group` serves it.
async fn create_server(
    group: &mut [Process],
    upstream: &ReferenceServer,
    server: &str,
    strategy: &str,
) {
    let body = json!({
        "id": server,
        "endpoints": [{"url": upstream.url()}],
        "pool": {"enabled": true, "strategy": strategy, "max_size": 8},
    });
    let (status, created) = send(&group[0], "POST", "/servers", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let applied = format!("server {server} changed by another worker: applied");
    for worker in &mut group[1..] {
        worker.wait_for(&applied).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_served_by_its_owner_whichever_worker_receives_its_requests() {
    for shared in shared_backends() {
        let kind = shared.cache_type;
        let upstream = ReferenceServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut group = workers(&shared, 3, dir.path()).await;
        create_server(&mut group, &upstream, "st", "sticky").await;

        let mut session = McpSession::initialize(&group[0], "st", "alice").await;
        let mut texts = Vec::new();
        for i in 0..9 {
            // Every request lands on another worker: w0, w1, w2, w0, …
            texts.push(session.counter(&group[i % 3]).await.unwrap());
        }
        let expected: Vec<String> = (1..=9).map(|n| n.to_string()).collect();
        assert_eq!(
            texts, expected,
            "{kind}: every call reached the owner's upstream session"
        );
        assert_eq!(upstream.sessions_opened(), 1, "{kind}");

        // Another identity with alice's session id is refused, on the owner and elsewhere.
        for worker in &group {
            assert_eq!(
                session.counter_as(worker, "mallory").await,
                Err(404),
                "{kind}"
            );
        }
        assert_eq!(session.counter(&group[1]).await.unwrap(), "10", "{kind}");
        for worker in &mut group {
            worker.stop().await;
        }
        upstream.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_sessions_are_taken_over_and_a_paused_owner_keeps_them() {
    for shared in shared_backends() {
        let kind = shared.cache_type;
        let upstream = ReferenceServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut group = workers(&shared, 3, dir.path()).await;
        create_server(&mut group, &upstream, "st", "sticky").await;
        create_server(&mut group, &upstream, "rr", "round_robin").await;

        // A live owner paused (SIGSTOP) for less than the heartbeat TTL keeps its session: a
        // request forwarded meanwhile is served when it resumes.
        let mut paused = McpSession::initialize(&group[1], "st", "carol").await;
        assert_eq!(paused.counter(&group[1]).await.unwrap(), "1", "{kind}");
        group[1].signal("STOP");
        let resume = {
            let pid = group[1].child.id().unwrap().to_string();
            tokio::spawn(async move {
                // The pause itself is the fault being injected, not a synchronization.
                tokio::time::sleep(Duration::from_secs(2)).await;
                std::process::Command::new("kill")
                    .args(["-CONT", &pid])
                    .status()
                    .unwrap();
            })
        };
        assert_eq!(
            paused.counter(&group[2]).await,
            Ok("2".into()),
            "{kind}: the paused owner's session was not taken"
        );
        resume.await.unwrap();

        let mut sticky = McpSession::initialize(&group[0], "st", "alice").await;
        let mut stateless = McpSession::initialize(&group[0], "rr", "alice").await;
        assert_eq!(sticky.counter(&group[0]).await.unwrap(), "1", "{kind}");
        assert_eq!(stateless.counter(&group[0]).await.unwrap(), "1", "{kind}");
        group[0].child.start_kill().unwrap();
        group[0].child.wait().await.unwrap();
        let killed = Instant::now();

        // A stateless server's session is simply served by the worker that takes it over.
        let served = stateless.counter(&group[1]).await;
        let took = killed.elapsed();
        assert_eq!(
            served,
            Ok("1".into()),
            "{kind}: served on a new upstream session"
        );
        eprintln!(
            "{kind}: a dead owner's session was taken over and served {took:?} after kill -9"
        );
        assert_eq!(
            stateless.counter(&group[2]).await,
            Ok("2".into()),
            "{kind}: and stays on its new owner"
        );
        // A sticky server's session lost its upstream state: 404, then a new session works.
        assert_eq!(
            sticky.counter(&group[2]).await,
            Err(404),
            "{kind}: the client must initialize again"
        );
        let mut again = McpSession::initialize(&group[2], "st", "alice").await;
        assert_eq!(again.counter(&group[1]).await, Ok("1".into()), "{kind}");

        // A worker stopped gracefully leaves the group: its sessions are taken over by the
        // next request at once, not after its heartbeat's TTL (no wait for a silent owner).
        let mut leaving = McpSession::initialize(&group[1], "rr", "dave").await;
        assert_eq!(leaving.counter(&group[1]).await, Ok("1".into()), "{kind}");
        group[1].stop().await;
        let before = group[2].log.len();
        assert_eq!(leaving.counter(&group[2]).await, Ok("1".into()), "{kind}");
        group[2]
            .wait_for("took over a session of server rr from a dead worker: restored")
            .await;
        assert!(
            !group[2].log[before..].contains("died before answering"),
            "{kind}: the request did not wait for the left worker: {}",
            &group[2].log[before..]
        );
        group[2].stop().await;
        upstream.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_resumes_after_redis_restarts_and_local_pooling_never_stops() {
    use mcp_pool_conformance::redis_process::{spare_port, start_redis};
    let port = spare_port();
    let Some(mut redis) = start_redis(port).await else {
        return;
    };
    let shared = Shared {
        cache_type: "redis",
        url_var: "REDIS_URL",
        url: format!("redis://127.0.0.1:{port}"),
    };
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = workers(&shared, 2, dir.path()).await;
    create_server(&mut group, &upstream, "st", "sticky").await;
    let mut session = McpSession::initialize(&group[0], "st", "alice").await;
    assert_eq!(
        session.counter(&group[1]).await,
        Ok("1".into()),
        "forwarded"
    );

    redis.kill().await.unwrap();
    // Local pooling goes on without the backend: a request at the session's owner.
    assert_eq!(
        session.counter(&group[0]).await,
        Ok("2".into()),
        "served while Redis is down"
    );
    let _redis = start_redis(port)
        .await
        .expect("Redis again on the same port");

    // The restarted Redis lost everything: the owner claims its session again, and both
    // workers subscribe to their channels again.
    let resubscribed = "subscribed to this worker's channel again";
    group[0]
        .wait_for_all(&["claimed 1 sessions again", resubscribed])
        .await;
    group[1].wait_for(resubscribed).await;
    assert_eq!(
        session.counter(&group[1]).await,
        Ok("3".into()),
        "forwarding resumed"
    );
    for worker in &mut group {
        worker.stop().await;
        assert!(!worker.log.contains("panicked"), "{}", worker.log);
    }
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sessions_over_three_workers_at_random_never_cross_identities() {
    const SESSIONS: usize = 64;
    const CALLS: usize = 50;
    const USERS: usize = 16;
    let Some(shared) = shared_backends().into_iter().next() else {
        return;
    };
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = workers(&shared, 3, dir.path()).await;
    create_server(&mut group, &upstream, "st", "sticky").await;
    let group = std::sync::Arc::new(group);

    // Sessions of 16 users (4 each), each initialized on a random worker, then 50 `counter`
    // calls, each to a random worker. A call that reached any other upstream session (another
    // user's, or another session's of the same user) breaks its counter's sequence.
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let group = group.clone();
            tokio::spawn(async move {
                let mut random = n as u64 * 2654435761 + 1;
                let mut pick = move || {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    (random % 3) as usize
                };
                let user = format!("user{}", n % USERS);
                let mut session = McpSession::initialize(&group[pick()], "st", &user).await;
                let mut texts = Vec::new();
                for _ in 0..CALLS {
                    texts.push(session.counter(&group[pick()]).await);
                }
                texts
            })
        })
        .collect();
    let expected: Vec<Result<String, u16>> = (1..=CALLS).map(|n| Ok(n.to_string())).collect();
    for (n, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), expected, "session {n}");
    }
    // Sticky: one upstream session per downstream session, no more.
    assert_eq!(upstream.sessions_opened(), SESSIONS as u64);
    let mut group = std::sync::Arc::into_inner(group).unwrap();
    let (status, metrics) = {
        let response = reqwest::get(format!("{}/metrics", group[0].base))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(
        metrics.contains("mcp_pool_gateway_forwards_total{outcome=\"ok\"}"),
        "forwards are counted: {metrics}"
    );
    for worker in &mut group {
        worker.stop().await;
    }
    upstream.stop().await;
}

/// 16 sticky conversations for each of two users over three workers, every request sent to a
/// random worker, on a server whose `max_size` (3 per worker) cannot hold them all: a conversation sees
/// `1, 2, 3, …` on its session, or a 404 — its upstream session was closed to make room — and
/// then counts from 1 on the session it initializes next. Never a silent reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_over_three_workers_see_their_state_or_a_404() {
    for shared in shared_backends() {
        let kind = shared.cache_type;
        let upstream = ReferenceServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut group = workers(&shared, 3, dir.path()).await;
        create_server(&mut group, &upstream, "st", "sticky").await;
        // Three conversations of a user per worker at most: most have to make room.
        let (status, body) = send(
            &group[0],
            "PUT",
            "/servers/st/pool/config",
            Some(json!({"max_size": 3, "size": 3})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for worker in &group {
            until(worker, "/servers/st/pool/config", |status, config| {
                status == 200 && config["max_size"] == 3
            })
            .await;
        }
        let mut random = 0x2545_f491_4f6c_dd1d_u64;
        let mut pick = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            (random % 3) as usize
        };
        let mut conversations = Vec::new();
        for user in ["alice", "bob"] {
            for _ in 0..16 {
                let session = McpSession::initialize(&group[pick()], "st", user).await;
                conversations.push((session, 1u64));
            }
        }
        let mut lost = 0;
        for _ in 0..3 {
            for (session, expected) in &mut conversations {
                match session.counter(&group[pick()]).await {
                    Ok(text) => {
                        assert_eq!(
                            text,
                            expected.to_string(),
                            "{kind}: a conversation's state was reset silently"
                        );
                        *expected += 1;
                    }
                    Err(404) => {
                        lost += 1;
                        let (server, user) = (session.server.clone(), session.user.clone());
                        *session = McpSession::initialize(&group[pick()], &server, &user).await;
                        assert_eq!(
                            session.counter(&group[pick()]).await.unwrap(),
                            "1",
                            "{kind}"
                        );
                        *expected = 2;
                    }
                    Err(status) => panic!("{kind}: {status}"),
                }
            }
        }
        eprintln!("{kind}: 32 conversations over 3 workers, 3 calls each: {lost} told with a 404");
        for worker in &mut group {
            worker.stop().await;
        }
        upstream.stop().await;
    }
}
