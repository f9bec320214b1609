//! Circuit breakers and health that tell the truth (issue 10, item 5), on tokio's paused clock
//! against the reference handler served in process: the open period backs off from 1 s, a
//! half-open probe in flight refuses others with `CircuitOpen` and a retry delay, refused
//! acquires count in the health score, and a server whose every endpoint is open is
//! `unhealthy`.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    Pool, PoolError, Principal, ServerStats,
    breaker::{BreakerConfig, DEFAULT_RESET_TIMEOUT},
    score::HealthStatus,
};
use mcp_pool_conformance::DuplexTransport;
use tokio::time::Instant;

/// How often the simulated clients try: ten acquires a second.
const TICK: Duration = Duration::from_millis(100);

fn server(pool: &Pool) -> ServerStats {
    pool.stats().servers.remove(0)
}

/// Ends every upstream session from the server side, as an upstream crash does.
fn kill_all(transport: &DuplexTransport) {
    for session in transport.upstream_sessions() {
        transport.kill_session(session.id);
    }
}

/// One client request: an acquire and, when it is served, an `echo` call on the lease.
/// Returns the acquire's error, or `Ok(true)` when the call succeeded.
async fn request(pool: &Pool, id: &mcp_pool::ServerId) -> Result<bool, PoolError> {
    let lease = pool.acquire(id, Principal::user("u")).await?;
    Ok(lease.call_tool(echo("ping")).await.is_ok())
}

#[tokio::test(start_paused = true)]
async fn a_server_down_for_3_s_is_served_again_within_2_s_of_coming_back() {
    // The default breaker: 5 consecutive failures, a 60 s cap.
    let (pool, id, transport) = duplex_pool(pooled(4), Pool::builder());
    assert_eq!(
        pool.acquire(&id, Principal::user("u"))
            .await
            .unwrap()
            .call_tool(echo("up"))
            .await
            .map(|r| text(&r))
            .unwrap(),
        "up"
    );
    let down_at = Instant::now();
    transport.set_fail_connects(true);
    kill_all(&transport);
    let back_at = down_at + Duration::from_secs(3);
    let mut retry_delays = Vec::new();
    let served_at = loop {
        if Instant::now() >= back_at {
            transport.set_fail_connects(false);
        }
        match request(&pool, &id).await {
            Ok(true) => break Instant::now(),
            Ok(false) | Err(PoolError::Create { .. }) => {}
            Err(PoolError::CircuitOpen { retry_in, .. }) => retry_delays.push(retry_in),
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert!(
            down_at.elapsed() < DEFAULT_RESET_TIMEOUT,
            "not served again within the 60 s cap"
        );
        tokio::time::sleep(TICK).await;
    };
    assert!(served_at >= back_at, "served while the server was down");
    let after = served_at - back_at;
    assert!(
        after <= Duration::from_secs(2),
        "served {after:?} after the server came back"
    );
    assert!(
        !retry_delays.is_empty(),
        "the breaker opened during the outage"
    );
    // Told to retry within the current backoff step (1 s, then 2 s), never the 60 s cap.
    assert!(
        retry_delays.iter().all(|d| *d <= Duration::from_secs(2)),
        "{retry_delays:?}"
    );
    let endpoint = &server(&pool).endpoints[0];
    assert_eq!(endpoint.circuit, "closed");
    assert!(
        endpoint.circuit_trips >= 2,
        "a failed probe reopened it: {}",
        endpoint.circuit_trips
    );
}

#[tokio::test(start_paused = true)]
async fn during_a_half_open_probe_other_acquires_get_circuit_open_with_a_retry_delay() {
    let builder = Pool::builder().circuit_breaker(BreakerConfig::new(3, Duration::from_secs(60)));
    let (pool, id, transport) = duplex_pool(pooled(4), builder);
    transport.set_fail_connects(true);
    for _ in 0..3 {
        let error = pool.acquire(&id, Principal::user("u")).await.unwrap_err();
        assert!(matches!(error, PoolError::Create { .. }), "{error}");
    }
    let error = pool.acquire(&id, Principal::user("u")).await.unwrap_err();
    assert!(
        matches!(
            error,
            PoolError::CircuitOpen {
                retry_in,
                probing: false,
                ..
            } if retry_in == Duration::from_secs(1)
        ),
        "the first open lasts 1 s: {error:?}"
    );

    // The period is over: the next acquire probes, and its connect hangs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    transport.set_fail_connects(false);
    transport.set_connect_hang(true);
    let probe = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, Principal::user("u")).await.map(drop) }
    });
    while server(&pool).endpoints[0].circuit != "half_open" {
        tokio::task::yield_now().await;
    }
    // Same key and another key: the breaker's error with its retry delay, never "no
    // available endpoint".
    for user in ["u", "v"] {
        let error = pool.acquire(&id, Principal::user(user)).await.unwrap_err();
        match &error {
            PoolError::CircuitOpen {
                retry_in, probing, ..
            } => {
                assert!(*probing, "{error:?}");
                assert_eq!(*retry_in, Duration::from_secs(1), "{error:?}");
            }
            other => panic!("{user}: expected CircuitOpen, got {other:?}"),
        }
        let message = error.to_string();
        assert_eq!(
            message,
            "server duplex (streamable_http): every endpoint's circuit breaker is open after \
             repeated connection failures and a probe is checking whether it is back; retry \
             in 1 s"
        );
    }
    assert_eq!(server(&pool).circuit_refusals, 3);

    transport.set_connect_hang(false);
    probe.await.unwrap().expect("the probe succeeds");
    assert_eq!(server(&pool).endpoints[0].circuit, "closed");
    drop(
        pool.acquire(&id, Principal::user("v"))
            .await
            .expect("closed again"),
    );
}

#[tokio::test(start_paused = true)]
async fn a_20_s_outage_reports_unhealthy_counts_refusals_and_recovers() {
    let (pool, id, transport) = duplex_pool(pooled(4), Pool::builder());
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    for _ in 0..100 {
        lease.call_tool(echo("warm")).await.unwrap();
    }
    drop(lease);
    let before = server(&pool);
    assert_eq!(before.health_status, HealthStatus::Healthy);
    assert_eq!(before.health_score, Some(100));

    transport.set_fail_connects(true);
    kill_all(&transport);
    let down_at = Instant::now();
    // At the moment the breaker opens, the window still holds 100 good calls: the score is
    // high, yet the server is down.
    while server(&pool).endpoints[0].circuit == "closed" {
        let _ = request(&pool, &id).await;
        tokio::time::sleep(TICK).await;
    }
    let tripped = server(&pool);
    assert!(
        tripped.health_score.unwrap() >= 90,
        "{:?}",
        tripped.health_score
    );
    assert_eq!(
        tripped.health_status,
        HealthStatus::Unhealthy,
        "every endpoint open means unhealthy, score {:?}",
        tripped.health_score
    );
    assert_eq!(tripped.endpoints[0].health_status, HealthStatus::Unhealthy);

    let mut refused = 0u64;
    while down_at.elapsed() < Duration::from_secs(20) {
        if let Err(PoolError::CircuitOpen { .. }) = request(&pool, &id).await {
            refused += 1;
        }
        tokio::time::sleep(TICK).await;
    }
    let outage = server(&pool);
    assert_eq!(outage.health_status, HealthStatus::Unhealthy);
    assert!(
        outage.health_score.unwrap() < 35,
        "score after a 20 s outage: {:?}",
        outage.health_score
    );
    assert!(refused > 100, "{refused} acquires refused");
    assert_eq!(outage.circuit_refusals, refused + tripped.circuit_refusals);

    // Back: served within the breaker's current step, then healthy again once the successes
    // outweigh the outage in the window.
    transport.set_fail_connects(false);
    let back_at = Instant::now();
    while !matches!(request(&pool, &id).await, Ok(true)) {
        assert!(back_at.elapsed() < Duration::from_secs(60), "never served");
        tokio::time::sleep(TICK).await;
    }
    let served = server(&pool);
    assert_eq!(served.endpoints[0].circuit, "closed");
    assert_ne!(
        served.endpoints[0].health_status,
        HealthStatus::Unhealthy,
        "a closed endpoint is judged by its score again"
    );
    while server(&pool).health_status != HealthStatus::Healthy {
        assert!(
            back_at.elapsed() <= Duration::from_secs(310),
            "still {:?} ({:?}) after the outage left the 5-minute window",
            server(&pool).health_status,
            server(&pool).health_score
        );
        let served = request(&pool, &id).await;
        assert!(matches!(served, Ok(true)), "{served:?}");
        tokio::time::sleep(TICK).await;
    }
    assert_eq!(
        server(&pool).circuit_refusals,
        served.circuit_refusals,
        "no refusal once closed"
    );
}
