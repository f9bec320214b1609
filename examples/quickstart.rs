//! The main job of mcp-pool, end to end: pooled MCP tool calls against a real MCP server over
//! loopback, compared with a fresh session per call (what a gateway without a pool does).
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --rtt-ms 2
//! ```
//!
//! Starts the reference MCP server on an ephemeral port, makes 200 sequential `echo` calls for
//! each of two users through the pool and 200 with a fresh session per call (connect,
//! `initialize`, call, close), prints per-call latency and the HTTP requests the server saw per
//! call, then shows that a user's `counter` state continues across pooled calls while another
//! user's starts at 1. Exits non-zero when reuse or isolation fails.
//!
//! `--rtt-ms N` puts a TCP proxy between the clients and the server that delays each direction
//! by N/2 ms (a network round-trip time of N ms; this kernel has no netem), and adds a second
//! fresh row: a fresh session per call over an HTTP client without keep-alive, one TCP
//! connection per request, as rmcp's `StreamableHttpClientTransport::from_uri` does.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use mcp_pool::{
    Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerId, Transport,
    rmcp::model::{CallToolRequestParams, CallToolResult},
    traits::{ConnectRequest, SessionHandler, default_client_config},
};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_transports::StreamableHttp;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    time::Instant,
};

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

async fn fresh_calls(
    endpoint: &Endpoint,
    transport: &StreamableHttp,
) -> Result<Vec<Duration>, Error> {
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

async fn run(rtt: Option<Duration>) -> Result<bool, Error> {
    let upstream = ReferenceServer::start().await?;
    let endpoint = match rtt {
        Some(rtt) => {
            let proxy = delay_proxy(upstream.addr(), rtt).await?;
            let url = upstream
                .url()
                .replace(&upstream.addr().to_string(), &proxy.to_string());
            Endpoint::new(url, upstream.endpoint().transport)?
        }
        None => upstream.endpoint(),
    };
    let server = ServerId::new("reference")?;
    let pool = Pool::builder()
        .server(
            ServerConfig::new(server.clone(), endpoint.clone()).pool(PoolConfig {
                size: 4,
                max_size: 4,
                ..PoolConfig::enabled()
            }),
        )
        .build()?;
    match rtt {
        Some(rtt) => println!(
            "reference MCP server at {}, reached through {} (RTT {} ms)\n",
            upstream.url(),
            endpoint.url,
            rtt.as_secs_f64() * 1e3
        ),
        None => println!("reference MCP server at {}\n", upstream.url()),
    }
    let keep_alive = StreamableHttp::new()?;

    // Warm up both paths (first connections, lazy statics) outside the measurement.
    counter(&pool, &server, "warm-up").await?;
    fresh_calls_warm_up(&endpoint, &keep_alive).await?;

    let before = upstream.http_requests();
    let mut pooled = pooled_calls(&pool, &server, "alice").await?;
    pooled.extend(pooled_calls(&pool, &server, "bob").await?);
    let pooled_requests = upstream.http_requests() - before;

    upstream
        .wait_sessions_alive(3, Duration::from_secs(5))
        .await?;
    let before = upstream.http_requests();
    let mut fresh = fresh_calls(&endpoint, &keep_alive).await?;
    upstream
        .wait_sessions_alive(3, Duration::from_secs(5))
        .await?;
    let fresh_requests = upstream.http_requests() - before;
    // Under a round-trip time: also without keep-alive, a TCP connect before every request.
    let no_keep_alive = match rtt {
        Some(_) => {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            let before = upstream.http_requests();
            let mut samples = fresh_calls(&endpoint, &StreamableHttp::with_client(client)).await?;
            upstream
                .wait_sessions_alive(3, Duration::from_secs(5))
                .await?;
            let requests = upstream.http_requests() - before;
            let (n50, n99) = percentiles(&mut samples);
            Some((n50, n99, requests as f64 / samples.len() as f64))
        }
        None => None,
    };

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
    if let Some((n50, n99, requests)) = no_keep_alive {
        println!(
            "| fresh, no keep-alive  | {CALLS:>5} | {n50:>9.3} | {n99:>6.3} | {requests:>18.2} |"
        );
    }
    println!("\nfresh / pooled at the median: {:.1}x", f50 / p50);
    if let Some((n50, _, _)) = no_keep_alive {
        println!(
            "fresh without keep-alive / pooled at the median: {:.1}x",
            n50 / p50
        );
    }
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

async fn fresh_calls_warm_up(endpoint: &Endpoint, transport: &StreamableHttp) -> Result<(), Error> {
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

/// A TCP proxy on 127.0.0.1 to `upstream` that delays each direction by `rtt / 2`, and a new
/// connection's first bytes by one `rtt` more (the handshake), as a link of that round-trip
/// time would; returns its address. Bytes in flight overlap (a chunk is not
/// held up by the one before it beyond its own delay).
async fn delay_proxy(upstream: SocketAddr, rtt: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The kernel completed the client's handshake at once: its first bytes are
                // held one RTT more, as a real TCP handshake would.
                let handshake_done = Instant::now() + rtt;
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    delayed(client_read, server_write, rtt / 2, handshake_done),
                    delayed(server_read, client_write, rtt / 2, Instant::now()),
                );
            });
        }
    });
    Ok(addr)
}

/// Copies `from` to `to`, writing each chunk `delay` after it was read (or after `not_before`,
/// when later), until `from` ends; then shuts `to` down. The wait is a blocking-pool sleep:
/// tokio's timer rounds up to whole milliseconds, which would add up to 1 ms per direction.
async fn delayed(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
) {
    let (chunks, mut due_chunks) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            let due = Instant::now().max(not_before) + delay;
            if chunks.send((due, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = due_chunks.recv().await {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// `--rtt-ms N` (N > 0, milliseconds, fractions allowed), or nothing.
fn rtt_from_args() -> Result<Option<Duration>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, value] if flag == "--rtt-ms" => value
            .parse::<f64>()
            .ok()
            .filter(|ms| ms.is_finite() && *ms > 0.0 && *ms <= 10_000.0)
            .map(|ms| Some(Duration::from_secs_f64(ms / 1e3)))
            .ok_or_else(|| {
                format!("--rtt-ms: {value:?} is not a round-trip time; allowed: milliseconds in (0, 10000]")
            }),
        _ => Err(format!(
            "unexpected arguments {args:?}; usage: quickstart [--rtt-ms N]"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let rtt = match rtt_from_args() {
        Ok(rtt) => rtt,
        Err(error) => {
            eprintln!("quickstart: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(rtt).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("quickstart failed: {error}");
            ExitCode::FAILURE
        }
    }
}
