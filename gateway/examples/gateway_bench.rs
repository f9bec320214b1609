//! What the gateway hop costs: one downstream rmcp client (streamable HTTP, keep-alive) calling
//! the reference server's `echo` tool through the gateway's `/servers/{id}/mcp`, and the same
//! client calling the reference server directly, all over loopback, gateway auth on (a JWT
//! checked on every request).
//!
//! ```text
//! cargo run --release -p mcp-pool-gateway --example gateway_bench
//! ```
//!
//! Prints one table: sequential median and p99 per call (after a warm-up), calls/s with 64
//! concurrent downstream sessions, and the upstream HTTP requests per downstream call (the
//! reference server's own count), for: direct, through the gateway with pooling on (server
//! `pooled`), and through the gateway with pooling off (server `off`: a fresh upstream session
//! per call). Then three figures: the hop the gateway adds at the median, the gateway's calls/s
//! as a ratio of the direct ones, and how many times faster pooled calls are than unpooled ones
//! through the gateway. A benchmark, not a test: it exits non-zero only when a call fails.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::{AppState, Auth, Registry, auth};
use rmcp::{
    RoleClient, ServiceExt,
    model::CallToolRequestParams,
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Client = RunningService<RoleClient, ()>;

/// Sequential calls measured per target, after `WARM_UP` unmeasured ones.
const CALLS: usize = 2000;
/// Unpooled calls cost a fresh upstream session each: fewer suffice.
const UNPOOLED_CALLS: usize = 300;
const WARM_UP: usize = 200;
/// Downstream sessions calling at once in the concurrent phase.
const SESSIONS: usize = 64;
/// How long the concurrent phase of each target runs.
const CONCURRENT_FOR: Duration = Duration::from_secs(3);

/// Where a client calls: a name for the table and the URL of its MCP endpoint.
struct Target {
    name: &'static str,
    url: String,
    calls: usize,
}

/// One target's figures.
struct Figures {
    median_ms: f64,
    p99_ms: f64,
    calls_per_s: f64,
    requests_per_call: f64,
}

fn echo() -> CallToolRequestParams {
    let arguments = serde_json::json!({ "message": "bench" });
    CallToolRequestParams::new("echo")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

/// A downstream session on `url` over a keep-alive, TCP_NODELAY HTTP client, sending `token`.
async fn connect(url: &str, token: &str) -> Result<Client, Error> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let transport =
        StreamableHttpClientTransport::with_client(mcp_pool_transports::http_client()?, config);
    Ok(().serve(transport).await?)
}

/// Median and 99th percentile of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

async fn measure(
    target: &Target,
    token: &str,
    upstream: &ReferenceServer,
) -> Result<Figures, Error> {
    // Sequential: one session, warm-up first.
    let client = connect(&target.url, token).await?;
    for _ in 0..WARM_UP {
        client.call_tool(echo()).await?;
    }
    let before = upstream.http_requests();
    let mut samples = Vec::with_capacity(target.calls);
    for _ in 0..target.calls {
        let started = Instant::now();
        client.call_tool(echo()).await?;
        samples.push(started.elapsed());
    }
    let requests_per_call = (upstream.http_requests() - before) as f64 / target.calls as f64;
    client.cancel().await?;
    let (median_ms, p99_ms) = percentiles(&mut samples);

    // Concurrent: SESSIONS sessions, each warmed up, calling until the deadline.
    let mut clients = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let client = connect(&target.url, token).await?;
        client.call_tool(echo()).await?;
        clients.push(client);
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + CONCURRENT_FOR;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let done = done.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.call_tool(echo()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                client.cancel().await?;
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let calls_per_s = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok(Figures {
        median_ms,
        p99_ms,
        calls_per_s,
        requests_per_call,
    })
}

async fn run() -> Result<(), Error> {
    let upstream = ReferenceServer::start().await?;
    let server = |id: &str, pool: PoolConfig| -> Result<ServerConfig, Error> {
        Ok(ServerConfig::new(ServerId::new(id)?, upstream.endpoint()).pool(pool))
    };
    // As many upstream sessions as downstream ones may call at once (all of one user, whose
    // default limit is 10 sessions across servers).
    let pooled = PoolConfig {
        max_size: SESSIONS as u32,
        ..PoolConfig::enabled()
    };
    let servers = [
        server("pooled", pooled)?,
        server("off", PoolConfig::default())?,
    ];
    let pool = servers
        .iter()
        .fold(Pool::builder().user_limit(2 * SESSIONS as u32), |b, s| {
            b.server(s.clone())
        })
        .build()?;
    let registry = Registry::load(pool.clone(), &servers).await?;
    let secret = auth::JwtSecret::new("gateway-bench-secret-0123456789abcdef")?;
    let token = auth::mint(
        &secret,
        "bench",
        auth::Role::User,
        Duration::from_secs(3600),
        SystemTime::now(),
    )?;
    let app = mcp_pool_gateway::router(AppState::new(
        pool.clone(),
        registry,
        Auth::Required(secret.into()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = format!("http://{}", listener.local_addr()?);
    // Streamed responses stall ~40 ms per message under Nagle + delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let targets = [
        Target {
            name: "direct (no gateway)",
            url: upstream.url(),
            calls: CALLS,
        },
        Target {
            name: "gateway, pooled",
            url: format!("{gateway}/servers/pooled/mcp"),
            calls: CALLS,
        },
        Target {
            name: "gateway, pooling off",
            url: format!("{gateway}/servers/off/mcp"),
            calls: UNPOOLED_CALLS,
        },
    ];
    println!(
        "reference server {}, gateway {gateway} (auth on), {} cores\n",
        upstream.url(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| target               | seq calls | median ms | p99 ms | calls/s at {SESSIONS} sessions | upstream HTTP requests/call |"
    );
    println!(
        "|----------------------|----------:|----------:|-------:|------------------------:|----------------------------:|"
    );
    let mut figures = Vec::new();
    for target in &targets {
        let f = measure(target, &token, &upstream).await?;
        println!(
            "| {:<20} | {:>9} | {:>9.3} | {:>6.3} | {:>23.0} | {:>27.2} |",
            target.name, target.calls, f.median_ms, f.p99_ms, f.calls_per_s, f.requests_per_call
        );
        figures.push(f);
    }
    let [direct, pooled, off] = &figures[..] else {
        unreachable!("three targets")
    };
    println!();
    let hop = pooled.median_ms - direct.median_ms;
    println!("gateway hop at the median: {hop:+.3} ms");
    let ratio = pooled.calls_per_s / direct.calls_per_s;
    println!(
        "{SESSIONS} sessions: gateway {:.0} calls/s vs direct {:.0} calls/s = {ratio:.2}x",
        pooled.calls_per_s, direct.calls_per_s
    );
    let speedup = off.median_ms / pooled.median_ms;
    println!("pooled vs pooling off through the gateway: {speedup:.1}x faster at the median");
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway_bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}
