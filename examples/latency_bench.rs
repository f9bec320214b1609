//! An endpoint that turns slow: `peak_ewma` against `least_connections`.
//!
//! ```text
//! cargo run --release --example latency_bench
//! ```
//!
//! One server with two endpoints, two instances of the reference MCP server; endpoint B is
//! reached through a TCP proxy that can hold each chunk of the server's answers for a while.
//! 8 concurrent callers of one user make `echo` calls through the pool (4 sessions kept, two
//! per endpoint, `session_concurrency` 4: room for twice the callers) for 2 s with both
//! endpoints fast, then B turns slow (each answer held
//! 10 ms) for 4 s. For each strategy it prints, over the slow phase, calls/s, the median and
//! 99th percentile latency, and the share of calls that went to B. Exits non-zero when
//! `peak_ewma` does not beat `least_connections` on p99 and on the share sent to B. (Calls/s
//! are CPU-bound on a small machine, where callers, servers and proxy share the cores: they
//! show that routing around B costs no throughput.)

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use mcp_pool::{
    Pool, PoolConfig, Principal, ServerConfig, ServerId, StrategyKind,
    rmcp::model::CallToolRequestParams,
};
use mcp_pool_conformance::ReferenceServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const CALLERS: usize = 8;
const WARM: Duration = Duration::from_secs(2);
const SLOW_PHASE: Duration = Duration::from_secs(4);
const SLOW_BY: Duration = Duration::from_millis(10);

fn echo() -> CallToolRequestParams {
    let arguments = serde_json::json!({ "message": "hi" });
    CallToolRequestParams::new("echo")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

/// A TCP proxy to `upstream` that holds each chunk of the server's answers `delay_us`
/// microseconds (0: none), read at each chunk, so that the endpoint can turn slow at runtime.
async fn slowable_proxy(
    upstream: SocketAddr,
    delay_us: Arc<AtomicU64>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay_us = delay_us.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                };
                let down = async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                        let delay = delay_us.load(Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_micros(delay)).await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = client_write.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(addr)
}

/// What one strategy did during the slow phase.
struct Outcome {
    calls_per_s: f64,
    median_ms: f64,
    p99_ms: f64,
    share_on_b: f64,
}

async fn run(strategy: StrategyKind) -> Result<Outcome, Error> {
    let a = ReferenceServer::start().await?;
    let b = ReferenceServer::start().await?;
    let delay_us = Arc::new(AtomicU64::new(0));
    let proxy = slowable_proxy(b.addr(), delay_us.clone()).await?;
    let id = ServerId::new("replicated")?;
    let config = PoolConfig {
        strategy,
        min_size: 4,
        size: 4,
        max_size: 4,
        session_concurrency: 4,
        ..PoolConfig::enabled()
    };
    let b_endpoint = mcp_pool::Endpoint::new(
        format!("http://{proxy}/mcp"),
        mcp_pool::TransportKind::StreamableHttp,
    )?;
    let server = ServerConfig::new(id.clone(), a.endpoint())
        .endpoint(b_endpoint)
        .pool(config);
    let pool = Pool::builder().server(server).build()?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (pool, id, measuring, stop) =
            (pool.clone(), id.clone(), measuring.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut on_b = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let lease = pool.acquire(&id, Principal::user("bench")).await?;
                lease.call_tool(echo()).await?;
                let endpoint = lease.endpoint_index();
                drop(lease);
                if measuring.load(Ordering::Relaxed) {
                    samples.push(started.elapsed());
                    on_b += u64::from(endpoint == 1);
                }
            }
            Ok::<_, Error>((samples, on_b))
        }));
    }
    tokio::time::sleep(WARM).await;
    delay_us.store(SLOW_BY.as_micros() as u64, Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(SLOW_PHASE).await;
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut on_b = 0;
    for caller in callers {
        let (s, b) = caller.await??;
        samples.extend(s);
        on_b += b;
    }
    pool.close().await;
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    Ok(Outcome {
        calls_per_s: samples.len() as f64 / SLOW_PHASE.as_secs_f64(),
        median_ms: at(0.5),
        p99_ms: at(0.99),
        share_on_b: on_b as f64 / samples.len() as f64,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    println!(
        "{CALLERS} callers, 4 sessions of session_concurrency 4; endpoint B answers {} ms \
         slower after {} s; figures over the {} s slow phase",
        SLOW_BY.as_millis(),
        WARM.as_secs(),
        SLOW_PHASE.as_secs()
    );
    println!("| strategy | calls/s | median ms | p99 ms | calls on B |");
    println!("|---|---|---|---|---|");
    let mut results = Vec::new();
    for strategy in [StrategyKind::LeastConnections, StrategyKind::PeakEwma] {
        match run(strategy).await {
            Ok(o) => {
                println!(
                    "| {strategy} | {:.0} | {:.2} | {:.2} | {:.1} % |",
                    o.calls_per_s,
                    o.median_ms,
                    o.p99_ms,
                    o.share_on_b * 100.0
                );
                results.push(o);
            }
            Err(error) => {
                eprintln!("{strategy}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (lc, ewma) = (&results[0], &results[1]);
    if ewma.p99_ms < lc.p99_ms && ewma.share_on_b < lc.share_on_b {
        ExitCode::SUCCESS
    } else {
        eprintln!("peak_ewma did not beat least_connections on p99 and on the calls sent to B");
        ExitCode::FAILURE
    }
}
