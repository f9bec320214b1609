//! Per-call latency of each transport against the reference server over loopback: on a held
//! session, on a pooled lease (acquire + call + release, a hit every time), and with a fresh
//! session per call (connect + `initialize` + call + close), as the pool's `none` strategy
//! would do.
//!
//! `cargo bench -p mcp-pool-conformance --bench transports`; prints criterion's figures, then
//! a table of the time per call with the ratios to the held session (read back from
//! criterion's `estimates.json` files).

use std::{path::PathBuf, sync::Arc, time::Duration};

use criterion::{BenchmarkId, Criterion};
use mcp_pool::{Pool, PoolConfig, Principal, ServerConfig, ServerId};
use mcp_pool_conformance::{
    ReferenceServer,
    transport::{connect, connect_to},
};
use mcp_pool_traits::{Transport, TransportKind};
use mcp_pool_transports::{Sse, StreamableHttp, WebSocket};
use rmcp::model::CallToolRequestParams;
use tokio::runtime::Runtime;

const GROUP: &str = "transport_call";
const MODES: [&str; 3] = ["held_session", "pooled_lease", "fresh_session"];

fn echo() -> CallToolRequestParams {
    let args = serde_json::json!({"message": "bench"});
    CallToolRequestParams::new("echo").with_arguments(args.as_object().cloned().unwrap_or_default())
}

fn transports() -> Vec<Arc<dyn Transport>> {
    vec![
        Arc::new(StreamableHttp::new().expect("an HTTP client")),
        Arc::new(Sse::new().expect("an HTTP client")),
        Arc::new(WebSocket::new()),
    ]
}

fn bench(c: &mut Criterion, rt: &Runtime) {
    let server = rt
        .block_on(ReferenceServer::start())
        .expect("reference server");
    let mut group = c.benchmark_group(GROUP);
    for transport in transports() {
        let kind = transport.kind();

        let session = rt.block_on(connect_to(&*transport, &server));
        group.bench_function(BenchmarkId::new("held_session", kind), |b| {
            b.to_async(rt).iter(|| async {
                session.call_tool(echo()).await.expect("echo");
            });
        });
        drop(session);

        let id = ServerId::new("bench").expect("valid id");
        let pool = rt.block_on(async {
            Pool::builder()
                .transport(transport.clone())
                .server(
                    ServerConfig::new(id.clone(), server.endpoint_for(kind)).pool(PoolConfig {
                        max_size: 1,
                        size: 1,
                        ..PoolConfig::enabled()
                    }),
                )
                .build()
                .expect("valid pool")
        });
        let alice = Principal::user("alice");
        group.bench_function(BenchmarkId::new("pooled_lease", kind), |b| {
            b.to_async(rt).iter(|| async {
                let lease = pool.acquire(&id, alice).await.expect("acquire");
                lease.call_tool(echo()).await.expect("echo");
            });
        });
        rt.block_on(pool.close());

        let endpoint = server.endpoint_for(kind);
        group.bench_function(BenchmarkId::new("fresh_session", kind), |b| {
            b.to_async(rt).iter(|| async {
                let mut session = connect(&*transport, &endpoint, Duration::from_secs(10))
                    .await
                    .expect("connect");
                session.call_tool(echo()).await.expect("echo");
                let _ = session.close().await;
            });
        });
    }
    group.finish();
}

/// Criterion's estimate of the time per call for `mode` over `kind`, in nanoseconds.
fn mean_ns(mode: &str, kind: TransportKind) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("criterion")
        .join(GROUP)
        .join(mode)
        .join(kind.as_str())
        .join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    // The slope (time per iteration from the linear fit over sample sizes) is the figure
    // criterion prints; the mean is there when there is no slope.
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}

fn print_table() {
    println!();
    println!(
        "| transport | held session | pooled lease | fresh session per call | pooled / held | fresh / held |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in TransportKind::ALL {
        let [held, pooled, fresh] = MODES.map(|mode| mean_ns(mode, kind));
        let us = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.0} µs", v / 1e3));
        let ratio = |v: Option<f64>| match (v, held) {
            (Some(v), Some(h)) if h > 0.0 => format!("{:.2}×", v / h),
            _ => "n/a".to_owned(),
        };
        println!(
            "| {kind} | {} | {} | {} | {} | {} |",
            us(held),
            us(pooled),
            us(fresh),
            ratio(pooled),
            ratio(fresh)
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    bench(&mut c, &rt);
    c.final_summary();
    print_table();
}
