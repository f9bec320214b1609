//! The main job of mcp-pool, end to end: pooled MCP tool calls against a real MCP server over
//! loopback, compared with a fresh session per call (what a gateway without a pool does).
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Starts the reference MCP server on an ephemeral port, makes 200 sequential `echo` calls for
//! each of two users through the pool and 200 with a fresh session per call (connect,
//! `initialize`, call, close), prints per-call latency and the HTTP requests the server saw per
//! call, then shows that a user's `counter` state continues across pooled calls while another
//! user's starts at 1. Exits non-zero when reuse or isolation fails.

use std::{process::ExitCode, time::Duration};

use mcp_pool::{
    Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerId, Transport,
    rmcp::model::{CallToolRequestParams, CallToolResult},
    traits::{ConnectRequest, SessionHandler, default_client_config},
};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_transports::StreamableHttp;
use tokio::time::Instant;

const CALLS: usize = 200;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn echo(message: &str) -> CallToolRequestParams {
    let arguments = serde_json::json!({ "message": message });
    CallToolRequestParams::new("echo")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

/// Median and 99th percentile of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

async fn pooled_calls(pool: &Pool, server: &ServerId, user: &str) -> Result<Vec<Duration>, Error> {
    let principal = Principal::user(user);
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let started = Instant::now();
        let lease = pool.acquire(server, principal).await?;
        let result = lease.call_tool(echo(&format!("{user} {i}"))).await?;
        drop(lease);
        samples.push(started.elapsed());
        assert_eq!(text(&result), format!("{user} {i}"));
    }
    Ok(samples)
}

async fn fresh_calls(endpoint: &Endpoint) -> Result<Vec<Duration>, Error> {
    let transport = StreamableHttp::new()?;
    let handler = SessionHandler::new(default_client_config(), None);
    let headers = http::HeaderMap::new();
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let started = Instant::now();
        let request =
            ConnectRequest::new(endpoint, &headers, Duration::from_secs(10), handler.clone());
        let mut session = transport.connect(request).await?;
        let result = session.call_tool(echo(&format!("fresh {i}"))).await?;
        session.close().await?;
        samples.push(started.elapsed());
        assert_eq!(text(&result), format!("fresh {i}"));
    }
    Ok(samples)
}

async fn counter(pool: &Pool, server: &ServerId, user: &str) -> Result<String, Error> {
    let lease = pool.acquire(server, Principal::user(user)).await?;
    Ok(text(
        &lease
            .call_tool(CallToolRequestParams::new("counter"))
            .await?,
    ))
}

async fn run() -> Result<bool, Error> {
    let upstream = ReferenceServer::start().await?;
    let server = ServerId::new("reference")?;
    let pool = Pool::builder()
        .server(
            ServerConfig::new(server.clone(), upstream.endpoint()).pool(PoolConfig {
                size: 4,
                max_size: 4,
                ..PoolConfig::enabled()
            }),
        )
        .build()?;
    println!("reference MCP server at {}\n", upstream.url());

    // Warm up both paths (first connections, lazy statics) outside the measurement.
    counter(&pool, &server, "warm-up").await?;
    fresh_calls_warm_up(&upstream.endpoint()).await?;

    let before = upstream.http_requests();
    let mut pooled = pooled_calls(&pool, &server, "alice").await?;
    pooled.extend(pooled_calls(&pool, &server, "bob").await?);
    let pooled_requests = upstream.http_requests() - before;

    upstream
        .wait_sessions_alive(3, Duration::from_secs(5))
        .await?;
    let before = upstream.http_requests();
    let mut fresh = fresh_calls(&upstream.endpoint()).await?;
    upstream
        .wait_sessions_alive(3, Duration::from_secs(5))
        .await?;
    let fresh_requests = upstream.http_requests() - before;

    let (p50, p99) = percentiles(&mut pooled);
    let (f50, f99) = percentiles(&mut fresh);
    let stats = pool.stats();
    let s = &stats.servers[0];
    println!("| mode                  | calls | median ms | p99 ms | HTTP requests/call |");
    println!("|-----------------------|------:|----------:|-------:|-------------------:|");
    println!(
        "| pooled (2 users)      | {:>5} | {p50:>9.3} | {p99:>6.3} | {:>18.2} |",
        pooled.len(),
        pooled_requests as f64 / pooled.len() as f64
    );
    println!(
        "| fresh session per call| {:>5} | {f50:>9.3} | {f99:>6.3} | {:>18.2} |",
        fresh.len(),
        fresh_requests as f64 / fresh.len() as f64
    );
    println!("\nfresh / pooled at the median: {:.1}x", f50 / p50);
    println!(
        "pool: {} hits, {} misses, hit rate {:.1} % ({} keys)\n",
        s.hits,
        s.misses,
        s.hit_rate * 100.0,
        s.keys.len()
    );

    // State continuity and isolation: alice's counter continues, bob's starts at 1.
    let alice: Vec<String> = vec![
        counter(&pool, &server, "alice").await?,
        counter(&pool, &server, "alice").await?,
        counter(&pool, &server, "alice").await?,
    ];
    let bob = counter(&pool, &server, "bob").await?;
    println!(
        "alice's counter over three pooled calls: {}",
        alice.join(", ")
    );
    println!("bob's counter on his first call:        {bob}");

    pool.close().await;
    upstream
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await?;
    println!(
        "after close(): {} sessions alive on the server",
        upstream.sessions_alive()
    );

    // One miss per user (alice, bob) plus the warm-up's.
    let reused = s.misses == 3 && s.hits as usize == 2 * CALLS - 2;
    let continuous = alice == ["1", "2", "3"];
    let isolated = bob == "1";
    if !reused {
        eprintln!("FAIL: expected 3 misses and {} hits", 2 * CALLS - 2);
    }
    if !continuous || !isolated {
        eprintln!("FAIL: counter continuity {continuous}, isolation {isolated}");
    }
    Ok(reused && continuous && isolated)
}

async fn fresh_calls_warm_up(endpoint: &Endpoint) -> Result<(), Error> {
    let transport = StreamableHttp::new()?;
    let handler = SessionHandler::new(default_client_config(), None);
    let request = ConnectRequest::new(
        endpoint,
        &http::HeaderMap::new(),
        Duration::from_secs(10),
        handler,
    );
    transport.connect(request).await?.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("quickstart failed: {error}");
            ExitCode::FAILURE
        }
    }
}
