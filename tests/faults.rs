//! Faults (issue 6): a server stopped under load, a server that hangs, ten minutes of
//! simulated time, and the autoscaler under a burst.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    Pool, PoolConfig, PoolError, Principal, breaker::BreakerConfig, health::HealthCheckConfig,
    rmcp::model::CallToolRequestParams, score::HealthStatus,
};
use mcp_pool_conformance::ReferenceServer;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_under_load_fails_fast_opens_the_breaker_and_recovers_after_restart() {
    let upstream = ReferenceServer::start().await.unwrap();
    let config = PoolConfig {
        max_size: 4,
        size: 4,
        timeout: Duration::from_secs(2),
        health_check_interval: Duration::from_secs(10),
        ..PoolConfig::enabled()
    };
    let builder = Pool::builder().circuit_breaker(BreakerConfig::new(3, Duration::from_secs(1)));
    let (pool, id) = http_pool_with(&upstream, config, builder);
    let user = Principal::user("u");
    drop(pool.acquire(&id, user).await.unwrap());

    upstream.stop().await;
    // Load while the server is down: every acquire answers (a lease whose call fails, a
    // creation error, or an open circuit) within its timeout; none hangs.
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                let attempt = async {
                    match pool.acquire(&id, user).await {
                        Ok(lease) => lease
                            .call_tool(echo("down"))
                            .await
                            .map(|_| ())
                            .map_err(|_| ()),
                        Err(_) => Err(()),
                    }
                };
                tokio::time::timeout(Duration::from_secs(3), attempt).await
            })
        })
        .collect();
    for task in load {
        let answered = task.await.unwrap();
        assert!(answered.is_ok(), "an acquire or call hung past its timeout");
        assert!(
            answered.unwrap().is_err(),
            "nothing succeeds while the server is down"
        );
    }
    // The breaker is open now: acquires fail at once, saying when they will be retried.
    let error = pool.acquire(&id, user).await.unwrap_err();
    assert!(matches!(error, PoolError::CircuitOpen { .. }), "{error}");
    assert!(error.to_string().contains("retry in"), "{error}");
    let endpoint = &pool.stats().servers[0].endpoints[0];
    assert_eq!(endpoint.circuit, "open");
    assert!(endpoint.circuit_trips >= 1);

    upstream.restart().await.unwrap();
    // Recovery within one health interval, with no restart of the pool.
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(lease) = pool.acquire(&id, user).await
                && lease.call_tool(echo("back")).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the pool did not recover within one health interval"
    );
    assert_eq!(pool.stats().servers[0].endpoints[0].circuit, "closed");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_hangs_is_found_unhealthy_by_the_background_checks() {
    let config = PoolConfig {
        health_check_interval: Duration::from_secs(10),
        ..pooled(4)
    };
    let builder = Pool::builder()
        .health_check(HealthCheckConfig::default().with_timeout(Duration::from_secs(1)))
        .create_timeout(Duration::from_secs(2));
    let (pool, id, transport) = duplex_pool(config, builder);
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    lease.call_tool(echo("fine")).await.unwrap();
    drop(lease);
    assert_eq!(pool.stats().servers[0].health_status, HealthStatus::Healthy);

    transport.set_hang(true);
    // No traffic at all: the background check finds it, closes the session, and the
    // replacement's creation times out as well.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let server = &pool.stats().servers[0];
    assert!(server.evictions >= 1, "the hung session was closed");
    assert!(
        server.create_failures >= 1,
        "its replacement could not be created"
    );
    assert_eq!(
        server.health_status,
        HealthStatus::Unhealthy,
        "score {:?}",
        server.health_score
    );
    transport.wait_sessions_alive(0, WAIT).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ten_minutes_of_simulated_time_expire_sessions_and_keys_on_schedule() {
    let config = PoolConfig {
        min_size: 1,
        size: 2,
        max_size: 4,
        max_lifetime: Duration::from_secs(300),
        max_idle_time: Duration::from_secs(120),
        ..PoolConfig::enabled()
    };
    let builder = Pool::builder()
        .cleanup_interval(Duration::from_secs(10))
        .key_idle_timeout(Duration::from_secs(400));
    let (pool, id, transport) = duplex_pool(config, builder);
    let (busy, quiet) = (Principal::user("busy"), Principal::user("quiet"));
    let start = tokio::time::Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);

    // t=0: busy opens one session, quiet two at once.
    let first = pool.acquire(&id, busy).await.unwrap().session_id();
    let (q1, q2) = (
        pool.acquire(&id, quiet).await.unwrap(),
        pool.acquire(&id, quiet).await.unwrap(),
    );
    drop((q1, q2));
    assert_eq!(transport.sessions_alive(), 3);

    // busy uses its session every 30 s until t=270.
    for t in (30..=270).step_by(30) {
        tokio::time::sleep_until(at(t)).await;
        if t == 150 {
            // By now quiet's second session has been idle past max_idle_time (120 s) and is
            // closed; its first stays, for min_size.
            transport.wait_sessions_alive(2, WAIT).await.unwrap();
            assert_eq!(pool.stats().keys, 2);
        }
        drop(pool.acquire(&id, busy).await.unwrap());
    }

    // t=300: busy's session and quiet's remaining one reach max_lifetime: both are closed
    // and replaced, for min_size, ahead of demand.
    tokio::time::sleep_until(at(320)).await;
    let lease = pool.acquire(&id, busy).await.unwrap();
    assert!(
        lease.is_hit(),
        "the replacement was created ahead of demand"
    );
    assert_ne!(lease.session_id(), first);
    drop(lease);
    assert_eq!(transport.sessions_opened(), 5);
    assert_eq!(transport.sessions_alive(), 2);

    // t=400: quiet's key, unused since t=0, is removed with its session.
    tokio::time::sleep_until(at(420)).await;
    assert_eq!(pool.stats().keys, 1);
    transport.wait_sessions_alive(1, WAIT).await.unwrap();

    // t=590: busy's key (last used at t=320) still stands, on its replacement session.
    tokio::time::sleep_until(at(590)).await;
    assert_eq!(pool.stats().keys, 1);
    assert_eq!(transport.sessions_opened(), 5);
    // t=600: busy's replacement (created at t=300) reaches max_lifetime in turn.
    tokio::time::sleep_until(at(610)).await;
    assert_eq!(transport.sessions_opened(), 6);
    transport.wait_sessions_alive(1, WAIT).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_grows_under_a_burst_and_shrinks_back_after_it() {
    let config = PoolConfig {
        min_size: 2,
        size: 2,
        max_size: 16,
        auto_scale: true,
        rebalance_interval: Duration::from_secs(60),
        timeout: Duration::from_secs(300),
        ..PoolConfig::enabled()
    };
    let (pool, id, _transport) = duplex_pool(config, Pool::builder().user_limit(100));
    let user = Principal::user("u");
    drop(pool.acquire(&id, user).await.unwrap());
    let key = |pool: &Pool| pool.stats().servers[0].keys[0].clone();
    assert_eq!(key(&pool).target_size, 2);

    // 64 concurrent slow calls, for about four rebalance intervals.
    let slow = || {
        let args = serde_json::json!({ "ms": 20_000 });
        CallToolRequestParams::new("sleep").with_arguments(args.as_object().cloned().unwrap())
    };
    let burst: Vec<_> = (0..64)
        .map(|_| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    let lease = pool.acquire(&id, user).await.unwrap();
                    lease.call_tool(slow()).await.unwrap();
                }
            })
        })
        .collect();
    let mut peak_target = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let k = key(&pool);
        assert!(k.sessions_total <= 16, "never above max_size");
        peak_target = peak_target.max(k.target_size);
    }
    for task in burst {
        task.await.unwrap();
    }
    assert_eq!(
        peak_target, 16,
        "the target grew to max_size under the burst"
    );

    // After the burst the target shrinks step by step and idle sessions above it close.
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    let k = key(&pool);
    assert_eq!(k.target_size, 2);
    assert_eq!(k.sessions_total, 2);
}
