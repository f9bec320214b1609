//! Prometheus metrics of a pool under load.
//!
//! ```text
//! cargo run --example metrics -- [--seconds N] [--addr 127.0.0.1:9464]
//! curl http://127.0.0.1:9464/metrics
//! ```
//!
//! Serves `/metrics` with `metrics-exporter-prometheus` while several users call the reference
//! MCP server through the pool, each with its own identity headers (`authorization: Bearer …`,
//! `x-user-id`). Two servers: `search` (round robin, up to 4 sessions per key) and `slow`
//! (least connections, 1 session per key, 1 s acquire timeout, called with 1.5 s tool calls, so
//! acquires wait and some time out). Every few seconds the upstream forgets its sessions, so
//! calls fail at the transport and their sessions are evicted. Runs `--seconds` (default 10),
//! prints the pool's own metric lines and exits.
//!
//! Metric labels are `server`, `transport`, `strategy` (plus `reason` and `state`): no
//! identity, raw or hashed, ever appears in the output.

use std::{net::SocketAddr, time::Duration};

use mcp_pool::{
    AcquireRequest, Pool, PoolConfig, ServerConfig, ServerId, StrategyKind, metrics as names,
    rmcp::model::CallToolRequestParams,
};
use mcp_pool_conformance::ReferenceServer;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bucket bounds of `mcp_pool_acquire_seconds`, in seconds: hits are sub-millisecond, creations
/// a few milliseconds on loopback, waits up to the acquire timeout.
const ACQUIRE_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

struct Args {
    seconds: u64,
    addr: SocketAddr,
}

fn args() -> Result<Args, Error> {
    let mut parsed = Args {
        seconds: 10,
        addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => parsed.seconds = value.parse()?,
            "--addr" => parsed.addr = value.parse()?,
            other => {
                return Err(format!("unknown argument {other}: use --seconds N, --addr").into());
            }
        }
    }
    Ok(parsed)
}

fn call(tool: &str, arguments: serde_json::Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_owned())
        .with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

/// The identity headers of `user`. Their values never reach the metrics.
fn headers(user: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let token = format!("Bearer secret-token-{user}-0a1b2c3d");
    headers.insert("authorization", token.parse().expect("ASCII header value"));
    headers.insert("x-user-id", user.parse().expect("ASCII header value"));
    headers
}

/// One user's task: `echo` on `search`, now and then a slow call on `slow`, until `until`.
async fn user_load(pool: Pool, user: &'static str, until: Instant) -> (u64, u64) {
    let search = ServerId::new("search").expect("valid id");
    let slow = ServerId::new("slow").expect("valid id");
    let headers = headers(user);
    let (mut ok, mut failed) = (0, 0);
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let (server, params) = if i.is_multiple_of(20) {
            (&slow, call("sleep", serde_json::json!({ "ms": 1500 })))
        } else {
            (
                &search,
                call("echo", serde_json::json!({ "message": i.to_string() })),
            )
        };
        let request = AcquireRequest::new(server).headers(&headers);
        match pool.acquire_with(request).await {
            Ok(lease) => match lease.call_tool(params).await {
                Ok(_) => ok += 1,
                // A transport failure marked the lease broken: its session is evicted.
                Err(_) => failed += 1,
            },
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = args()?;

    // The recorder goes in before the pool is built: the pool registers its handles per key.
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(args.addr)
        .set_buckets_for_metric(
            Matcher::Full(names::ACQUIRE_SECONDS.to_owned()),
            &ACQUIRE_BUCKETS,
        )?
        .build()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);

    let upstream = ReferenceServer::start().await?;
    let search =
        ServerConfig::new(ServerId::new("search")?, upstream.endpoint()).pool(PoolConfig {
            max_size: 4,
            size: 4,
            ..PoolConfig::enabled()
        });
    let slow = ServerConfig::new(ServerId::new("slow")?, upstream.endpoint()).pool(PoolConfig {
        strategy: StrategyKind::LeastConnections,
        max_size: 1,
        size: 1,
        timeout: Duration::from_secs(1),
        ..PoolConfig::enabled()
    });
    let pool = Pool::builder().server(search).server(slow).build()?;

    println!(
        "serving http://{}/metrics for {} s (upstream MCP server {})",
        args.addr,
        args.seconds,
        upstream.url()
    );
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for user in USERS {
        // Two concurrent tasks per user, so that a user's key has waiters now and then.
        for _ in 0..2 {
            tasks.push(tokio::spawn(user_load(pool.clone(), user, until)));
        }
    }
    // Sessions expire server-side every 3 s: the next call on each fails and is evicted.
    let mut expiries = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(3),
        Duration::from_secs(3),
    );
    loop {
        tokio::select! {
            _ = expiries.tick() => { upstream.expire_sessions().await; }
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await?;
        ok += o;
        failed += f;
    }
    pool.close().await;

    println!("{ok} calls succeeded, {failed} failed (timeouts and expired sessions)\n");
    for line in handle.render().lines() {
        if line.starts_with("mcp_pool_") && !line.contains("_bucket{") {
            println!("{line}");
        }
    }
    Ok(())
}
