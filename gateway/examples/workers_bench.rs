//! What forwarding between gateway workers costs: three workers in this process,
//! each with its own pool, backend connection and listener, sharing Redis or PostgreSQL in a
//! namespace of their own, in front of one reference server; downstream MCP sessions over
//! plain HTTP (streamable HTTP, keep-alive), gateway auth off.
//!
//! ```text
//! cargo run --release -p mcp-pool-gateway --example workers_bench
//! ```
//!
//! Uses `MCP_POOL_TEST_REDIS_URL` and `MCP_POOL_TEST_DATABASE_URL` (default: the local
//! `redis://127.0.0.1:6379` and `postgres://postgres@127.0.0.1:5432/test`). Prints, per
//! backend: sequential `counter` calls on one sticky session sent to its owner and sent to
//! another worker (forwarded), median and p99; then calls/s with 64 downstream sessions and 50
//! calls each, all on one worker, and spread over three workers with every request sent to a
//! random one (two thirds forwarded), and the time forwarding adds at the median. A benchmark,
//! not a test: it exits non-zero only when a call fails.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId, StrategyKind, traits::StateId};
use mcp_pool_backends::BackendConfig;
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::{AppState, Auth, Registry, workers};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;

const CALLS: usize = 1000;
const WARM_UP: usize = 100;
const SESSIONS: usize = 64;
const SESSION_CALLS: usize = 50;

/// One worker: its base URL.
struct Worker {
    base: String,
}

/// Starts `n` workers on `backend` in `namespace`, each with server `s` (sticky) on `upstream`.
async fn start_workers(
    backend: &BackendConfig,
    namespace: &StateId,
    upstream: &ReferenceServer,
    n: usize,
    shutdown: &CancellationToken,
) -> Result<Vec<Worker>, Error> {
    let server = ServerConfig::new(ServerId::new("s")?, upstream.endpoint()).pool(PoolConfig {
        strategy: StrategyKind::Sticky,
        max_size: 100,
        ..PoolConfig::enabled()
    });
    let mut started = Vec::new();
    for i in 0..n {
        let shared = backend.connect(namespace.clone()).await?;
        let pool = Pool::builder()
            .backend(shared)
            .server(server.clone())
            .build()?;
        let registry = Registry::load(pool.clone(), std::slice::from_ref(&server)).await?;
        let mut state = AppState::new(pool, registry, Auth::Disabled);
        let worker = workers::WorkerId::new(&format!("bench-w{i}"))?;
        let _membership = workers::join(&mut state, worker, b"bench key", shutdown.child_token())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = mcp_pool_gateway::router(state);
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        started.push(Worker { base });
    }
    Ok(started)
}

/// A downstream session over plain HTTP whose requests can go to any worker.
struct Session {
    http: reqwest::Client,
    id: String,
    next: u64,
}

impl Session {
    async fn open(http: &reqwest::Client, worker: &Worker) -> Result<Self, Error> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "workers-bench", "version": "1"}}});
        let response = post(http, worker, None, &init).await?;
        let id = response
            .headers()
            .get("mcp-session-id")
            .ok_or("no session id")?
            .to_str()?
            .to_owned();
        response.bytes().await?;
        let mut session = Self {
            http: http.clone(),
            id,
            next: 1,
        };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        post(&session.http, worker, Some(&session.id), &initialized)
            .await?
            .bytes()
            .await?;
        session.next = 1;
        Ok(session)
    }

    /// One `counter` call through `worker`: its text.
    async fn counter(&mut self, worker: &Worker) -> Result<String, Error> {
        let id = self.next;
        self.next += 1;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "counter", "arguments": {}}});
        let response = post(&self.http, worker, Some(&self.id), &call).await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(format!("{status}: {body}").into());
        }
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v["id"] == id)
            .and_then(|v| {
                v["result"]["content"][0]["text"]
                    .as_str()
                    .map(str::to_owned)
            })
            .ok_or_else(|| format!("no result in {body}").into())
    }
}

async fn post(
    http: &reqwest::Client,
    worker: &Worker,
    session: Option<&str>,
    message: &Value,
) -> Result<reqwest::Response, Error> {
    let mut request = http
        .post(format!("{}/servers/s/mcp", worker.base))
        .header("accept", "application/json, text/event-stream")
        .json(message);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18");
    }
    Ok(request.send().await?)
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Median and p99 (ms) of `CALLS` sequential calls of `session` through `worker`.
async fn sequential(session: &mut Session, worker: &Worker) -> Result<(f64, f64), Error> {
    for _ in 0..WARM_UP {
        session.counter(worker).await?;
    }
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        session.counter(worker).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((quantile(&times, 0.5), quantile(&times, 0.99)))
}

/// Calls/s of `SESSIONS` sessions × `SESSION_CALLS` calls, each session opened on and each
/// call sent to a random one of `workers`.
async fn concurrent(http: &reqwest::Client, workers: Arc<Vec<Worker>>) -> Result<f64, Error> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let (http, workers) = (http.clone(), workers.clone());
            tokio::spawn(async move {
                let mut random = n as u64 * 2654435761 + 1;
                let count = workers.len() as u64;
                let mut pick = move || {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    (random % count) as usize
                };
                let mut session = Session::open(&http, &workers[pick()]).await?;
                for _ in 0..SESSION_CALLS {
                    session.counter(&workers[pick()]).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((SESSIONS * SESSION_CALLS) as f64 / started.elapsed().as_secs_f64())
}

async fn run() -> Result<(), Error> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let backends = [
        (
            "redis",
            BackendConfig::Redis {
                url: var("MCP_POOL_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            },
        ),
        (
            "postgres",
            BackendConfig::Database {
                url: var(
                    "MCP_POOL_TEST_DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                ),
            },
        ),
    ];
    let upstream = ReferenceServer::start().await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut ratios = Vec::new();
    println!(
        "| backend | owner median / p99 ms | forwarded median / p99 ms | added median ms | 1 worker calls/s | 3 workers calls/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, backend) in backends {
        let shutdown = CancellationToken::new();
        let namespace = StateId::new(format!("bench-{}", uuid::Uuid::new_v4().simple()))?;
        let group = start_workers(&backend, &namespace, &upstream, 3, &shutdown).await?;
        let mut session = Session::open(&http, &group[0]).await?;
        let (owner_p50, owner_p99) = sequential(&mut session, &group[0]).await?;
        let (fwd_p50, fwd_p99) = sequential(&mut session, &group[1]).await?;
        let group = Arc::new(group);
        let one = Arc::new(vec![Worker {
            base: group[0].base.clone(),
        }]);
        let one_rate = concurrent(&http, one).await?;
        let three_rate = concurrent(&http, group).await?;
        let added = fwd_p50 - owner_p50;
        println!(
            "| {name} | {owner_p50:.3} / {owner_p99:.3} | {fwd_p50:.3} / {fwd_p99:.3} | {added:.3} | {one_rate:.0} | {three_rate:.0} |"
        );
        ratios.push(format!(
            "{name}: forwarding adds {added:.3} ms at the median ({:.2}x the owner's median); 3 workers carry {:.2}x the calls/s of 1",
            fwd_p50 / owner_p50,
            three_rate / one_rate
        ));
        shutdown.cancel();
    }
    println!();
    for line in ratios {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("workers_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
