//! Circuit breakers and health that tell the truth, on tokio's paused clock
//! against the reference handler served in process: demand probes an open breaker every
//! 500 ms, so a server that comes back is served within a second; a half-open probe in flight
//! refuses others with `CircuitOpen` and a retry delay; refused acquires count in the health
//! score; and a server whose every endpoint is open shows score 0 and `unhealthy`, the status
//! always following the score shown. A caller's bad credential does not open the circuit for
//! the others, and a server that hangs is found unhealthy by the background checks alone.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{
    AcquireRequest, Pool, PoolConfig, PoolError, Principal, ServerStats,
    breaker::{BreakerConfig, DEFAULT_RESET_TIMEOUT, PROBE_INTERVAL},
    health::HealthCheckConfig,
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

/// Takes the upstream down for `outage` under a client trying every [`TICK`], brings it back,
/// and returns how long after it was back the first request succeeded, with the retry delays
/// the refused acquires were told.
async fn serve_through_an_outage(outage: Duration) -> (Duration, Vec<Duration>) {
    // The default breaker: 5 consecutive failures, a 60 s cap on the background backoff.
    let (pool, id, transport) = duplex_pool(pooled(4), Pool::builder());
    assert!(matches!(request(&pool, &id).await, Ok(true)));
    let down_at = Instant::now();
    transport.set_fail_connects(true);
    kill_all(&transport);
    let back_at = down_at + outage;
    // Back at that instant, whatever the clients are doing.
    tokio::spawn({
        let transport = transport.clone();
        async move {
            tokio::time::sleep_until(back_at).await;
            transport.set_fail_connects(false);
        }
    });
    let mut retry_delays = Vec::new();
    let served_at = loop {
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
    let endpoint = &server(&pool).endpoints[0];
    assert_eq!(endpoint.circuit, "closed");
    assert!(
        endpoint.circuit_trips >= 2,
        "failed probes reopened it: {}",
        endpoint.circuit_trips
    );
    (served_at - back_at, retry_delays)
}

#[tokio::test(start_paused = true)]
async fn a_server_down_for_3_s_is_served_again_within_1_s_of_coming_back() {
    let (after, retry_delays) = serve_through_an_outage(Duration::from_secs(3)).await;
    eprintln!("3 s outage: served {after:?} after the server came back (tokio's clock)");
    assert!(
        after < Duration::from_secs(1),
        "served {after:?} after the server came back"
    );
    assert!(
        !retry_delays.is_empty(),
        "the breaker opened during the outage"
    );
    // Told to retry within the probe interval, never a backoff step or the 60 s cap.
    assert!(
        retry_delays.iter().all(|d| *d <= PROBE_INTERVAL),
        "{retry_delays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_down_for_10_s_is_served_again_within_1_s_of_coming_back() {
    // Where the old backoff (1, 2, 4, 8 s) served it 5.9 s after it was back.
    let (after, retry_delays) = serve_through_an_outage(Duration::from_secs(10)).await;
    eprintln!("10 s outage: served {after:?} after the server came back (tokio's clock)");
    assert!(
        after < Duration::from_secs(1),
        "served {after:?} after the server came back"
    );
    assert!(
        retry_delays.iter().all(|d| *d <= PROBE_INTERVAL),
        "{retry_delays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn demand_probes_at_most_twice_a_second_one_probe_at_a_time() {
    let builder = Pool::builder().circuit_breaker(BreakerConfig::new(1, Duration::from_secs(60)));
    let (pool, id, transport) = duplex_pool(pooled(4), builder);
    transport.set_fail_connects(true);
    let started = transport.sessions_started();
    let attempts_before = server(&pool).create_failures;
    // 8 clients hammering for 10 s: every acquire is refused at once, except one probe per
    // probe interval.
    let begin = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                while begin.elapsed() < Duration::from_secs(10) {
                    let user = Principal::user(&format!("client-{n}"));
                    let _ = pool.acquire(&id, user).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let failures = server(&pool).create_failures - attempts_before;
    // The trip, then one probe per 500 ms: about 21 in 10 s, from ~8000 acquires.
    assert!(
        (15..=22).contains(&failures),
        "{failures} connection attempts in 10 s"
    );
    assert_eq!(transport.sessions_started(), started, "nothing got through");
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
            } if retry_in == PROBE_INTERVAL
        ),
        "acquires may probe after 500 ms: {error:?}"
    );

    // The probe interval is over: the next acquire probes, and its connect hangs.
    tokio::time::sleep(PROBE_INTERVAL).await;
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
                assert_eq!(*retry_in, PROBE_INTERVAL, "{error:?}");
            }
            other => panic!("{user}: expected CircuitOpen, got {other:?}"),
        }
        let message = error.to_string();
        assert_eq!(
            message,
            "server duplex (streamable_http): every endpoint's circuit breaker is open after \
             repeated connection failures and a probe is checking whether it is back; retry \
             in 0.5 s"
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

/// The status shown always follows the score shown, for the server and each endpoint.
fn assert_status_follows_score(stats: &ServerStats, threshold: u8) {
    assert_eq!(
        stats.health_status,
        HealthStatus::from_score(stats.health_score, threshold),
        "server: {:?} with score {:?}",
        stats.health_status,
        stats.health_score
    );
    for e in &stats.endpoints {
        assert_eq!(
            e.health_status,
            HealthStatus::from_score(e.health_score, threshold),
            "endpoint {}: {:?} with score {:?}",
            e.url,
            e.health_status,
            e.health_score
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_20_s_outage_shows_unhealthy_with_score_0_says_why_and_recovers() {
    let threshold = pooled(4).health_check_threshold;
    let (pool, id, transport) = duplex_pool(pooled(4), Pool::builder());
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    for _ in 0..100 {
        lease.call_tool(echo("warm")).await.unwrap();
    }
    drop(lease);
    let before = server(&pool);
    assert_eq!(before.health_status, HealthStatus::Healthy);
    assert_eq!(before.health_score, Some(100));
    assert_eq!(before.endpoints[0].last_error, None);

    transport.set_fail_connects(true);
    kill_all(&transport);
    let down_at = Instant::now();
    while server(&pool).endpoints[0].circuit == "closed" {
        let _ = request(&pool, &id).await;
        assert_status_follows_score(&server(&pool), threshold);
        tokio::time::sleep(TICK).await;
    }
    // The window still holds 100 good calls, yet the server cannot serve: it shows 0 and
    // unhealthy, never "unhealthy with a score of 93".
    let tripped = server(&pool);
    assert_eq!(tripped.health_score, Some(0));
    assert_eq!(tripped.health_status, HealthStatus::Unhealthy);
    assert_eq!(tripped.endpoints[0].health_score, Some(0));
    assert_eq!(tripped.endpoints[0].health_status, HealthStatus::Unhealthy);
    // And it says why, in words.
    let why = tripped.endpoints[0]
        .last_error
        .as_deref()
        .unwrap_or_default();
    assert!(why.starts_with("cannot open a session: "), "{why:?}");
    assert!(
        tripped.endpoints[0]
            .last_error_age_secs
            .is_some_and(|age| age < 1.0)
    );

    let mut refused = 0u64;
    while down_at.elapsed() < Duration::from_secs(20) {
        if let Err(PoolError::CircuitOpen { .. }) = request(&pool, &id).await {
            refused += 1;
        }
        assert_status_follows_score(&server(&pool), threshold);
        tokio::time::sleep(TICK).await;
    }
    let outage = server(&pool);
    assert_eq!(outage.health_status, HealthStatus::Unhealthy);
    assert_eq!(outage.health_score, Some(0));
    assert!(refused > 100, "{refused} acquires refused");
    assert_eq!(outage.circuit_refusals, refused + tripped.circuit_refusals);

    // Back: served within a second, then judged by the window again, the status following
    // the score at every step until healthy once the successes outweigh the outage.
    transport.set_fail_connects(false);
    let back_at = Instant::now();
    while !matches!(request(&pool, &id).await, Ok(true)) {
        assert!(
            back_at.elapsed() < Duration::from_secs(1),
            "not served within 1 s"
        );
        tokio::time::sleep(TICK).await;
    }
    let served = server(&pool);
    assert_eq!(served.endpoints[0].circuit, "closed");
    assert_ne!(served.health_score, Some(0), "judged by the window again");
    assert_status_follows_score(&served, threshold);
    while server(&pool).health_status != HealthStatus::Healthy {
        assert!(
            back_at.elapsed() <= Duration::from_secs(310),
            "still {:?} ({:?}) after the outage left the 5-minute window",
            server(&pool).health_status,
            server(&pool).health_score
        );
        let served = request(&pool, &id).await;
        assert!(matches!(served, Ok(true)), "{served:?}");
        assert_status_follows_score(&server(&pool), threshold);
        tokio::time::sleep(TICK).await;
    }
    assert_eq!(
        server(&pool).circuit_refusals,
        served.circuit_refusals,
        "no refusal once closed"
    );
    // The last error stays, ageing: the status says the endpoint is fine again.
    let healthy = server(&pool);
    assert!(healthy.endpoints[0].last_error.is_some());
    assert!(
        healthy.endpoints[0]
            .last_error_age_secs
            .is_some_and(|age| age >= 1.0)
    );
}

/// A caller's bad credential does not open the circuit for everyone; the endpoint's own
/// failures still do.
#[tokio::test(start_paused = true)]
async fn a_callers_401s_do_not_open_the_circuit_for_other_callers() {
    let mut breaker = mcp_pool::breaker::BreakerConfig::default();
    breaker.failure_threshold = 2;
    let (pool, id, transport) = duplex_pool(warm(2), Pool::builder().circuit_breaker(breaker));
    transport.set_required_authorization(Some("Bearer good".parse().unwrap()));
    let with_token = |token: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", token.parse().unwrap());
        h
    };
    let (bad, good) = (with_token("Bearer bad"), with_token("Bearer good"));
    for _ in 0..3 {
        let error = pool
            .acquire_with(AcquireRequest::new(&id).headers(&bad))
            .await
            .unwrap_err();
        assert!(matches!(error, PoolError::Create { .. }), "{error}");
    }
    let lease = pool
        .acquire_with(AcquireRequest::new(&id).headers(&good))
        .await
        .expect("another caller is served");
    drop(lease);
    assert_eq!(pool.stats().servers[0].endpoints[0].circuit, "closed");
    // The endpoint refusing everyone does open it.
    transport.set_fail_connects(true);
    let other = with_token("Bearer other");
    for _ in 0..2 {
        let _ = pool
            .acquire_with(AcquireRequest::new(&id).headers(&other))
            .await;
    }
    let error = pool
        .acquire_with(AcquireRequest::new(&id).headers(&other))
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::CircuitOpen { .. }), "{error}");
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
    transport
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await
        .unwrap();
}
