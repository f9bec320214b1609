//! The Prometheus output of a pool under load, as `examples/metrics.rs` serves it: every metric
//! the engine records (the names in `mcp_pool::metrics`) is there, with the `server`, `transport` and
//! `strategy` labels, and no identity (raw header values, user names, nor their SHA-256) appears
//! anywhere in it.
//!
//! A process has one global recorder: everything that needs it stays in this file (one
//! integration test binary = one process) and in this one test.

use std::time::Duration;

use mcp_pool::{
    AcquireRequest, Digest256, Endpoint, Pool, PoolConfig, PoolError, Principal, ServerConfig,
    ServerId, StrategyKind, TransportKind, metrics as names, rmcp::model::CallToolRequestParams,
};
use mcp_pool_conformance::ReferenceServer;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn token(user: &str) -> String {
    format!("Bearer secret-token-{user}-0a1b2c3d")
}

fn headers(user: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", token(user).parse().unwrap());
    headers.insert("x-user-id", format!("{user}-id").parse().unwrap());
    headers
}

fn echo(message: &str) -> CallToolRequestParams {
    let args = serde_json::json!({ "message": message });
    CallToolRequestParams::new("echo").with_arguments(args.as_object().cloned().unwrap())
}

/// The sum of the samples of `name` (exactly, not its `_bucket`/`_sum` siblings) whose labels
/// include every `key="value"` of `labels`; `None` when there is no such sample.
fn sample(output: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in output.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_has_every_metric_and_label_and_no_identity() {
    // Installed before the pool is built: handles are registered per key.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::ACQUIRE_SECONDS.to_owned()),
            &[0.001, 0.01, 0.1, 1.0, 5.0],
        )
        .unwrap()
        .install_recorder()
        .expect("the only recorder of this process");

    let upstream = ReferenceServer::start().await.unwrap();
    let search = ServerId::new("search").unwrap();
    let slow = ServerId::new("slow").unwrap();
    let pool = Pool::builder()
        .server(
            ServerConfig::new(search.clone(), upstream.endpoint()).pool(PoolConfig {
                max_size: 4,
                size: 4,
                ..PoolConfig::enabled()
            }),
        )
        .server(
            ServerConfig::new(slow.clone(), upstream.endpoint()).pool(PoolConfig {
                strategy: StrategyKind::LeastConnections,
                max_size: 1,
                size: 1,
                timeout: Duration::from_secs(1),
                ..PoolConfig::enabled()
            }),
        )
        .server(ServerConfig::new(
            ServerId::new("down").unwrap(),
            Endpoint::new("http://127.0.0.1:1/mcp", TransportKind::StreamableHttp).unwrap(),
        ))
        .build()
        .unwrap();

    // A server nothing listens for: its creations fail until its circuit breaker opens.
    let down = ServerId::new("down").unwrap();
    for _ in 0..6 {
        let _ = pool.acquire(&down, Principal::user("alice")).await;
    }

    // Load: each user makes concurrent calls (misses, then hits) with their identity headers
    // and an explicit user name.
    let mut tasks = Vec::new();
    for user in USERS {
        for task in 0..3 {
            let (pool, search) = (pool.clone(), search.clone());
            tasks.push(tokio::spawn(async move {
                let headers = headers(user);
                for i in 0..10 {
                    let request = AcquireRequest::new(&search).headers(&headers).user(user);
                    let lease = pool.acquire_with(request).await.unwrap();
                    let message = format!("{user} {task} {i}");
                    lease.call_tool(echo(&message)).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    // An acquire timeout: alice holds the only session of `slow`, her second acquire waits 1 s.
    let alice = headers("alice");
    let held = pool
        .acquire_with(AcquireRequest::new(&slow).headers(&alice).user("alice"))
        .await
        .unwrap();
    let error = pool
        .acquire_with(AcquireRequest::new(&slow).headers(&alice).user("alice"))
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::Timeout { .. }), "{error}");

    // An eviction: a session marked broken leaves the pool when its lease is dropped.
    held.mark_broken();
    drop(held);

    let output = handle.render();

    // Every metric the engine records, with a value that reflects the load.
    let search_labels = [
        ("server", "search"),
        ("transport", "streamable_http"),
        ("strategy", "round_robin"),
    ];
    let slow_labels = [
        ("server", "slow"),
        ("transport", "streamable_http"),
        ("strategy", "least_connections"),
    ];
    let hits = sample(&output, names::HITS_TOTAL, &search_labels).unwrap_or_default();
    let misses = sample(&output, names::MISSES_TOTAL, &search_labels).unwrap_or_default();
    assert_eq!(
        hits + misses,
        90.0,
        "every acquire is a hit or a miss\n{output}"
    );
    assert!(
        misses >= 3.0,
        "one key per user, each created a session\n{output}"
    );
    assert!(hits > 0.0, "{output}");
    assert_eq!(
        sample(&output, names::ACQUIRE_TIMEOUTS_TOTAL, &slow_labels),
        Some(1.0),
        "{output}"
    );
    let broken = [slow_labels.as_slice(), &[("reason", "broken")]].concat();
    assert_eq!(
        sample(&output, names::EVICTIONS_TOTAL, &broken),
        Some(1.0),
        "{output}"
    );
    let active = [search_labels.as_slice(), &[("state", "active")]].concat();
    let idle = [search_labels.as_slice(), &[("state", "idle")]].concat();
    assert_eq!(
        sample(&output, names::SESSIONS, &active),
        Some(0.0),
        "{output}"
    );
    let idle_sessions = sample(&output, names::SESSIONS, &idle).unwrap_or_default();
    assert!(
        (3.0..=12.0).contains(&idle_sessions),
        "1-4 idle sessions for each of 3 keys: {idle_sessions}\n{output}"
    );
    assert_eq!(
        sample(&output, names::WAITERS, &slow_labels),
        Some(0.0),
        "{output}"
    );
    let acquires = sample(
        &output,
        &format!("{}_count", names::ACQUIRE_SECONDS),
        &search_labels,
    );
    assert_eq!(acquires, Some(90.0), "{output}");
    assert!(
        sample(
            &output,
            &format!("{}_bucket", names::ACQUIRE_SECONDS),
            &slow_labels
        )
        .is_some(),
        "a real histogram\n{output}"
    );

    // The breaker of `down` opened once; health-check failures are registered per key (the
    // background checks run every health_check_interval, at least 10 s: tests/breaker.rs
    // exercises them on the paused clock).
    let down_labels = [
        ("server", "down"),
        ("transport", "streamable_http"),
        ("strategy", "round_robin"),
    ];
    assert_eq!(
        sample(&output, names::CIRCUIT_BREAKER_TRIPS_TOTAL, &down_labels),
        Some(1.0),
        "{output}"
    );
    assert_eq!(
        sample(&output, names::HEALTH_CHECK_FAILURES_TOTAL, &search_labels),
        Some(0.0),
        "{output}"
    );

    // Every sample of the pool carries the three labels.
    let pool_lines: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("mcp_pool_"))
        .collect();
    assert!(!pool_lines.is_empty());
    for line in &pool_lines {
        for label in ["server=\"", "transport=\"", "strategy=\""] {
            assert!(line.contains(label), "{label} missing in {line}");
        }
    }

    // No identity value anywhere: raw header values, user names, and their SHA-256 hex, alone
    // or as the pool hashes them into keys.
    let mut secrets: Vec<String> = Vec::new();
    for user in USERS {
        let headers = headers(user);
        let principal = pool.principal(Some(user), &headers);
        secrets.push(user.to_owned());
        secrets.push(format!("{user}-id"));
        secrets.push(token(user));
        secrets.push("secret-token".to_owned());
        secrets.push(principal.user.to_string());
        secrets.push(principal.identity.to_string());
        for value in [user.to_owned(), format!("{user}-id"), token(user)] {
            secrets.push(Digest256::of(&value).to_string());
        }
    }
    for secret in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "identity value {secret:?} in the metrics output"
        );
    }
    // The hashed forms are 64 hex characters: check that the check would see one.
    assert_eq!(secrets[4].len(), 64);

    pool.close().await;
}
