//! Gauges never drift: a strategy change (which changes the `strategy`
//! label), a health-check retirement and a drain with leases out all leave
//! `mcp_pool_sessions` and `mcp_pool_waiters` reading exactly the pool's state, and 0 after
//! `close()`. The recorder is local to the test's thread (the runtime is current-thread).

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{HealthCheckConfig, Pool, PoolConfig, Principal, StrategyKind, metrics as names};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Every sample of `name` in the exposition, with its labels.
fn samples(output: &str, name: &str) -> Vec<(String, f64)> {
    output
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            (labels.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn sum(output: &str, name: &str, label: &str) -> f64 {
    samples(output, name)
        .iter()
        .filter(|(l, _)| l.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(start_paused = true)]
async fn gauges_follow_reconfiguration_health_retirement_and_close() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let config = PoolConfig {
        max_size: 3,
        size: 3,
        health_check_interval: Duration::from_secs(10),
        ..PoolConfig::enabled()
    };
    let mut health = HealthCheckConfig::default();
    health.timeout = Duration::from_secs(1);
    let (pool, id, transport) = duplex_pool(
        config.clone(),
        Pool::builder().metrics(true).health_check(health),
    );
    let user = Principal::user("u");
    let held = pool.acquire(&id, user).await.unwrap();
    drop(pool.acquire(&id, user).await.unwrap());
    let out = handle.render();
    assert_eq!(sum(&out, names::SESSIONS, "state=\"active\""), 1.0, "{out}");
    assert_eq!(sum(&out, names::SESSIONS, "state=\"idle\""), 1.0, "{out}");

    // A new strategy while a lease is out: the label set changes under the session.
    pool.set_pool_config(
        &id,
        PoolConfig {
            strategy: StrategyKind::LeastConnections,
            ..config
        },
    )
    .unwrap();
    let other = pool.acquire(&id, user).await.unwrap();
    drop(other);
    // Health checks fail (the upstream hangs): the idle session is retired by the check.
    transport.set_hang(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    transport.set_hang(false);
    let out = handle.render();
    for (labels, value) in samples(&out, names::SESSIONS) {
        if labels.contains("round_robin") {
            assert_eq!(value, 0.0, "the old label set is left at 0: {labels}");
        }
    }
    let stats = pool.stats().servers[0].clone();
    let gauge_total = sum(&out, names::SESSIONS, "");
    assert_eq!(
        gauge_total,
        f64::from(stats.sessions_total),
        "{out}\n{stats:?}"
    );
    assert!(stats.evictions >= 2, "{stats:?}");

    pool.drain();
    drop(held);
    pool.close().await;
    let out = handle.render();
    for name in [names::SESSIONS, names::WAITERS] {
        for (labels, value) in samples(&out, name) {
            assert_eq!(value, 0.0, "{name}{labels} after close");
        }
    }
}
