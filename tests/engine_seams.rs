//! Regression tests for the engine's seams (issue 9): liveness, reconfiguration, background
//! work and secrets, each on tokio's paused clock with the in-process reference server. Every
//! test here failed (or panicked) on the engine before the fix it names.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    AcquireRequest, Endpoint, HealthCheckConfig, Pool, PoolConfig, PoolError, Principal,
    ServerConfig, StrategyKind, TransportKind,
    traits::{ClientSession, ConnectRequest, Transport, TransportError},
};
use mcp_pool_conformance::DuplexTransport;
use tokio::time::Instant;

/// Fault injection the real transport cannot do: every connect first waits `delay` (on the
/// paused clock), then connects in process.
#[derive(Debug)]
struct Delayed {
    inner: DuplexTransport,
    delay: Duration,
}

#[async_trait::async_trait]
impl Transport for Delayed {
    fn kind(&self) -> TransportKind {
        TransportKind::StreamableHttp
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        tokio::time::sleep(self.delay).await;
        self.inner.connect(request).await
    }
}

fn delayed(delay: Duration) -> (Arc<Delayed>, DuplexTransport) {
    let inner = DuplexTransport::new(TransportKind::StreamableHttp);
    (
        Arc::new(Delayed {
            inner: inner.clone(),
            delay,
        }),
        inner,
    )
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::new(url, TransportKind::StreamableHttp).expect("valid url")
}

fn config(max_size: u32) -> PoolConfig {
    PoolConfig {
        max_size,
        size: max_size,
        min_size: 1,
        timeout: Duration::from_secs(2),
        ..PoolConfig::enabled()
    }
}

/// Lets spawned work (closing, creating) run to its end on the paused clock.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// Item 1: a session created for one waiter serves the others queued behind it.
#[tokio::test(start_paused = true)]
async fn a_new_session_serves_every_waiter_it_has_room_for() {
    let cfg = PoolConfig {
        session_concurrency: 4,
        ..config(1)
    };
    let (pool, id, _transport) = duplex_pool(cfg, Pool::builder());
    let user = Principal::user("u");
    let acquires = (0..4).map(|_| {
        let (pool, id) = (pool.clone(), id.clone());
        tokio::spawn(async move { pool.acquire(&id, user).await })
    });
    let leases: Vec<_> = futures::future::join_all(acquires)
        .await
        .into_iter()
        .map(|r| r.expect("no panic").expect("served, not timed out"))
        .collect();
    assert!(
        leases
            .iter()
            .all(|l| l.session_id() == leases[0].session_id())
    );
    assert_eq!(pool.stats().servers[0].timeouts, 0);
}

// Item 2: disabling pooling (or strategy `none`) closes idle sessions at once.
#[tokio::test(start_paused = true)]
async fn disabling_pooling_or_switching_to_none_frees_the_idle_session_at_once() {
    for off in [
        PoolConfig {
            enabled: false,
            ..config(1)
        },
        PoolConfig {
            strategy: StrategyKind::None,
            ..config(1)
        },
    ] {
        let (pool, id, transport) = duplex_pool(config(1), Pool::builder());
        let user = Principal::user("u");
        drop(pool.acquire(&id, user).await.unwrap());
        pool.set_pool_config(&id, off.clone()).unwrap();
        settle().await;
        assert_eq!(transport.sessions_alive(), 0, "{off:?}");
        let started = Instant::now();
        let lease = pool.acquire(&id, user).await.expect("room was freed");
        assert!(!lease.is_hit());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

// Item 3: at max_size, a new sticky conversation takes the least recently used idle session's
// room; that conversation is told it was rebound.
#[tokio::test(start_paused = true)]
async fn a_new_sticky_conversation_at_max_size_takes_the_least_recently_used_idle_room() {
    let cfg = PoolConfig {
        strategy: StrategyKind::Sticky,
        ..config(2)
    };
    let (pool, id, _transport) = duplex_pool(cfg, Pool::builder());
    let user = Principal::user("u");
    let conv = |name: &'static str| {
        AcquireRequest::new(&id)
            .principal(user)
            .downstream_session(name)
    };
    let a = pool.acquire_with(conv("a")).await.unwrap().session_id();
    let b = pool.acquire_with(conv("b")).await.unwrap().session_id();
    let c = pool.acquire_with(conv("c")).await.expect("not starved");
    assert_ne!(c.session_id(), a);
    assert_ne!(c.session_id(), b);
    drop(c);
    // `a` was released first: its session made room; `b` keeps its own.
    let b_again = pool.acquire_with(conv("b")).await.unwrap();
    assert_eq!(b_again.session_id(), b);
    assert!(!b_again.is_rebound());
    drop(b_again);
    let a_again = pool.acquire_with(conv("a")).await.unwrap();
    assert!(a_again.is_rebound(), "a's server-side state was lost");
    assert_ne!(a_again.session_id(), a);
}

// Item 4: a health check round takes one session of a key out of service at a time.
#[tokio::test(start_paused = true)]
async fn health_checks_take_one_session_out_of_service_at_a_time() {
    let cfg = PoolConfig {
        health_check_interval: Duration::from_secs(10),
        ..config(3)
    };
    let mut health = HealthCheckConfig::default();
    health.timeout = Duration::from_secs(4);
    let (pool, id, transport) = duplex_pool(cfg, Pool::builder().health_check(health));
    let user = Principal::user("u");
    let leases: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire(&id, user)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(leases);
    transport.set_hang(true);
    // Releases are settled into `last_used` by the round at 10 s; the round at 20 s finds
    // the sessions due, and its first check hangs.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let key = &pool.stats().servers[0].keys[0];
    assert_eq!(key.sessions_checking, 1, "{key:?}");
    let lease = pool
        .acquire(&id, user)
        .await
        .expect("two sessions stayed in service");
    assert!(lease.is_hit());
}

// Items 5 and 10: an endpoint removed while a session is being created on it: no panic, the
// session is closed, the acquire retries on a remaining endpoint within its own timeout.
#[tokio::test(start_paused = true)]
async fn a_creation_on_a_removed_endpoint_is_closed_and_retried_within_the_timeout() {
    let (transport, upstream) = delayed(Duration::from_millis(500));
    let id = server_id("replicas");
    let server = |endpoints: &[&str]| {
        let mut s = ServerConfig::new(id.clone(), endpoint(endpoints[0])).pool(config(2));
        for e in &endpoints[1..] {
            s = s.endpoint(endpoint(e));
        }
        s
    };
    let pool = Pool::builder()
        .transport(transport)
        .server(server(&["http://x.invalid/mcp", "http://y.invalid/mcp"]))
        .build()
        .unwrap();
    let user = Principal::user("u");
    let first = pool.acquire(&id, user).await.unwrap();
    let started = Instant::now();
    let second = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, user).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats().servers[0].keys[0].sessions_creating, 1);
    // The second creation goes to the endpoint with fewer sessions: y, which now goes away.
    pool.add_server(server(&["http://x.invalid/mcp"])).unwrap();
    let second = second.await.expect("no panic").expect("retried on x");
    assert_eq!(second.endpoint_index(), 0);
    assert!(started.elapsed() <= Duration::from_secs(2));
    settle().await;
    assert_eq!(upstream.sessions_alive(), 2, "the session on y was closed");
    drop((first, second));
    pool.close().await;
    assert_eq!(upstream.sessions_alive(), 0);
    assert_eq!(pool.stats().servers[0].sessions_total, 0);
}

// Item 6: background creations never bind; a lost principal binding stays lost.
#[tokio::test(start_paused = true)]
async fn refills_do_not_bind_and_do_not_consume_a_lost_binding() {
    let cfg = PoolConfig {
        strategy: StrategyKind::Sticky,
        min_size: 2,
        ..config(3)
    };
    let builder = Pool::builder().cleanup_interval(Duration::from_secs(5));
    let (pool, id, _transport) = duplex_pool(cfg, builder);
    let user = Principal::user("u");
    let lease = pool.acquire(&id, user).await.unwrap();
    let first = lease.session_id();
    lease.mark_broken();
    drop(lease);
    // The refill creates warm sessions; none of them may become the principal's.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pool.stats().servers[0].keys[0].sessions_total, 2);
    let again = pool.acquire(&id, user).await.unwrap();
    assert_ne!(again.session_id(), first);
    assert!(again.is_rebound(), "the principal's state was lost");
    // A warm session is bound by the first new conversation that picks it.
    let other = pool
        .acquire_with(
            AcquireRequest::new(&id)
                .principal(user)
                .downstream_session("new"),
        )
        .await
        .unwrap();
    assert!(other.is_hit() && !other.is_rebound());
}

// Item 7: close() waits for a creation in flight and closes its session.
#[tokio::test(start_paused = true)]
async fn close_waits_for_creations_in_flight() {
    let (transport, upstream) = delayed(Duration::from_secs(1));
    let id = server_id("slow");
    let pool = Pool::builder()
        .transport(transport)
        .server(ServerConfig::new(id.clone(), endpoint("http://slow.invalid/mcp")).pool(config(2)))
        .build()
        .unwrap();
    let acquire = tokio::spawn({
        let (pool, id) = (pool.clone(), id.clone());
        async move { pool.acquire(&id, Principal::user("u")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.close().await;
    assert_eq!(upstream.sessions_alive(), 0);
    assert_eq!(upstream.sessions_opened(), 1);
    assert!(matches!(acquire.await.unwrap(), Err(PoolError::Closed)));
}

// Item 13: a session past max_lifetime is never handed out, even before maintenance ran.
#[tokio::test(start_paused = true)]
async fn an_expired_session_is_not_handed_out() {
    let cfg = PoolConfig {
        max_lifetime: Duration::from_secs(60),
        ..config(1)
    };
    let builder = Pool::builder().cleanup_interval(Duration::from_secs(3600));
    let (pool, id, _transport) = duplex_pool(cfg, builder);
    let user = Principal::user("u");
    let first = pool.acquire(&id, user).await.unwrap().session_id();
    tokio::time::advance(Duration::from_secs(61)).await;
    let lease = pool.acquire(&id, user).await.unwrap();
    assert!(!lease.is_hit());
    assert_ne!(lease.session_id(), first);
}

// Item 14: the key cap removes the least recently used idle key.
#[tokio::test(start_paused = true)]
async fn the_key_cap_removes_the_least_recently_used_idle_key() {
    let builder = Pool::builder()
        .max_keys(3)
        .cleanup_interval(Duration::from_secs(5));
    let (pool, id, _transport) = duplex_pool(config(1), builder);
    for name in ["a", "b", "c", "a"] {
        drop(pool.acquire(&id, Principal::user(name)).await.unwrap());
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    drop(pool.acquire(&id, Principal::user("d")).await.unwrap());
    let users: Vec<String> = pool.stats().servers[0]
        .keys
        .iter()
        .map(|k| k.user.clone())
        .collect();
    let short = |name: &str| Principal::user(name).user.short();
    assert_eq!(users.len(), 3);
    assert!(!users.contains(&short("b")), "b was least recently used");
    for kept in ["a", "c", "d"] {
        assert!(users.contains(&short(kept)), "{kept} kept");
    }
}

// Item 15: totals survive key removal and close().
#[tokio::test(start_paused = true)]
async fn server_totals_never_go_down() {
    let builder = Pool::builder()
        .cleanup_interval(Duration::from_secs(5))
        .key_idle_timeout(Duration::from_secs(10));
    let (pool, id, _transport) = duplex_pool(config(1), builder);
    for _ in 0..3 {
        drop(pool.acquire(&id, Principal::user("u")).await.unwrap());
    }
    let before = pool.stats().servers[0].clone();
    assert_eq!((before.acquisitions, before.releases), (3, 3));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_removal = pool.stats().servers[0].clone();
    assert!(after_removal.keys.is_empty(), "the idle key was removed");
    assert_eq!(after_removal.acquisitions, 3);
    assert_eq!(after_removal.releases, 3);
    drop(pool.acquire(&id, Principal::user("v")).await.unwrap());
    pool.close().await;
    let closed = pool.stats().servers[0].clone();
    assert_eq!((closed.acquisitions, closed.releases), (4, 4));
    assert!(closed.evictions >= 2);
}

// Item 17: no header value in Debug.
#[tokio::test(start_paused = true)]
async fn debug_output_carries_no_credential() {
    let (pool, id, _transport) = duplex_pool(config(1), Pool::builder());
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
    headers.insert("cookie", "session=c00kie-value".parse().unwrap());
    let request = AcquireRequest::new(&id)
        .headers(&headers)
        .user("alice@example.test");
    let lease = pool.acquire_with(request).await.unwrap();
    let endpoint = Endpoint::new("http://127.0.0.1:9/mcp", TransportKind::StreamableHttp).unwrap();
    let server = ServerConfig::new(id.clone(), endpoint).headers(headers.clone());
    assert_eq!(server.header_names().count(), 2);
    for text in [
        format!("{pool:?}"),
        format!("{server:?}"),
        format!("{request:?}"),
        format!("{lease:?}"),
        format!("{:?}", pool.stats()),
        serde_json::to_string(&pool.stats()).unwrap(),
    ] {
        for secret in ["s3cr3t-t0ken", "c00kie-value", "alice@example.test"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

// Item 18: only the identity headers and the allow-listed ones reach the upstream, and each of
// them is part of the key.
#[tokio::test]
async fn only_headers_in_the_key_are_forwarded_upstream() {
    let upstream = mcp_pool_conformance::ReferenceServer::start()
        .await
        .unwrap();
    let identity = mcp_pool::IdentityConfig::default()
        .with_forwarded_headers([http::HeaderName::from_static("x-region")]);
    let (pool, id) = http_pool_with(&upstream, config(2), Pool::builder().identity(identity));
    let headers = |token: &str, region: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer t0ken".parse().unwrap());
        h.insert("x-auth-token", token.parse().unwrap());
        h.insert("x-region", region.parse().unwrap());
        h.insert("last-event-id", "42".parse().unwrap());
        h
    };
    let first = headers("creds-of-alice", "eu");
    let lease = pool
        .acquire_with(AcquireRequest::new(&id).headers(&first))
        .await
        .unwrap();
    let seen = upstream.last_request_headers();
    assert_eq!(seen.get("authorization").unwrap(), "Bearer t0ken");
    assert_eq!(seen.get("x-region").unwrap(), "eu");
    assert!(
        seen.get("x-auth-token").is_none(),
        "not in the key: not forwarded"
    );
    assert!(seen.get("last-event-id").is_none());
    let first_key = lease.key().clone();
    drop(lease);
    let other_token = headers("creds-of-bob", "eu");
    let same = pool
        .acquire_with(AcquireRequest::new(&id).headers(&other_token))
        .await
        .unwrap();
    assert_eq!(
        same.key(),
        &first_key,
        "a header that is not forwarded does not split keys"
    );
    let other_region = headers("creds-of-alice", "us");
    let other = pool
        .acquire_with(AcquireRequest::new(&id).headers(&other_region))
        .await
        .unwrap();
    assert_ne!(
        other.key(),
        &first_key,
        "a forwarded header is part of the key"
    );
}

// Item 12: a caller's bad credential does not open the circuit for everyone; the endpoint's
// own failures still do.
#[tokio::test(start_paused = true)]
async fn a_callers_401s_do_not_open_the_circuit_for_other_callers() {
    let mut breaker = mcp_pool::breaker::BreakerConfig::default();
    breaker.failure_threshold = 2;
    let (pool, id, transport) = duplex_pool(config(2), Pool::builder().circuit_breaker(breaker));
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

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Item 17: a token and a URL password appear in no Debug, Display, error, log line, metric or
// stats output of the pool, also when a creation fails.
#[tokio::test]
async fn secrets_reach_no_log_error_metric_or_stats() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let id = server_id("guarded");
    // Nothing listens on port 1: the creation fails and is reported.
    let endpoint = endpoint("http://alice:pw123hunter@127.0.0.1:1/mcp");
    let pool = Pool::builder()
        .metrics(true)
        .server(ServerConfig::new(id.clone(), endpoint).pool(config(1)))
        .build()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
    let error = pool
        .acquire_with(AcquireRequest::new(&id).headers(&headers))
        .await
        .unwrap_err();
    let mut outputs = vec![
        error.to_string(),
        format!("{error:?}"),
        format!("{pool:?}"),
        format!("{:?}", pool.stats()),
        serde_json::to_string(&pool.stats()).unwrap(),
        metrics.render(),
    ];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        outputs.push(cause.to_string());
        source = cause.source();
    }
    pool.close().await;
    outputs.push(String::from_utf8(logs.0.lock().unwrap().clone()).unwrap());
    assert!(
        outputs.last().is_some_and(|l| !l.is_empty()),
        "something was logged"
    );
    for text in &outputs {
        for secret in ["pw123hunter", "s3cr3t-t0ken"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
