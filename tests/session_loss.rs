//! A session reported gone by its transport (`SessionHandler::report_lost`, the connection is
//! gone; `report_forgotten`, the server no longer knows it), on tokio's paused clock against
//! the reference handler served in process: it is evicted at once with reason `lost` and
//! `min_size` refilled, no acquire gets it again, a call in flight fails at once (lost) or gets
//! the server's own answer (forgotten), a call on it afterwards is not sent, a sticky binding to
//! it is recorded as lost, and the endpoint's last error says why.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    AcquireRequest, AffinityState, EvictionReason, Pool, PoolConfig, Principal, ServerConfig,
    ServerId, ServerStats, StrategyKind, TransportKind,
    rmcp::ServiceError,
    traits::{
        ClientSession, ConnectRequest, SessionHandler, SessionLost, Transport, TransportError,
        async_trait,
    },
};
use mcp_pool_conformance::DuplexTransport;
use parking_lot::Mutex;
use tokio::time::Instant;

/// The in-process transport, keeping each session's handler: what a transport reports a loss
/// on.
#[derive(Debug)]
struct Watched {
    inner: DuplexTransport,
    handlers: Mutex<Vec<SessionHandler>>,
}

#[async_trait]
impl Transport for Watched {
    fn kind(&self) -> TransportKind {
        TransportKind::StreamableHttp
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        self.handlers.lock().push(request.handler());
        self.inner.connect(request).await
    }
}

impl Watched {
    /// The handler of the `n`th session opened.
    fn handler(&self, n: usize) -> SessionHandler {
        self.handlers.lock()[n].clone()
    }
}

fn pool_with(strategy: StrategyKind) -> (Pool, ServerId, Arc<Watched>) {
    let transport = Arc::new(Watched {
        inner: DuplexTransport::new(TransportKind::StreamableHttp),
        handlers: Mutex::default(),
    });
    let id = server_id("watched");
    let endpoint =
        mcp_pool::Endpoint::new("http://watched.invalid/mcp", TransportKind::StreamableHttp)
            .unwrap();
    let pool = Pool::builder()
        .transport(transport.clone())
        .server(ServerConfig::new(id.clone(), endpoint).pool(PoolConfig {
            strategy,
            ..pooled(4)
        }))
        .build()
        .unwrap();
    (pool, id, transport)
}

fn stats(pool: &Pool) -> ServerStats {
    pool.stats().servers.remove(0)
}

/// Lets the pool's tasks run (the eviction task wakes on the report) without moving the clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn lost_of(error: &ServiceError) -> &SessionLost {
    match error {
        ServiceError::TransportSend(send) => send
            .error
            .downcast_ref::<SessionLost>()
            .unwrap_or_else(|| panic!("not a lost session: {error:?}")),
        other => panic!("not a transport failure: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_reported_lost_is_evicted_at_once_and_min_size_refilled() {
    let (pool, id, transport) = pool_with(StrategyKind::RoundRobin);
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    lease.call_tool(echo("before")).await.unwrap();
    let dead = lease.session_id();
    drop(lease);

    transport
        .handler(0)
        .report_lost("the connection carrying the session closed");
    settle().await;
    let server = stats(&pool);
    assert_eq!(
        server.evictions, 1,
        "evicted without any call or maintenance pass"
    );
    let sessions = pool.sessions(&id).unwrap();
    assert_eq!(sessions.len(), 1, "min_size refilled: {sessions:?}");
    assert_ne!(sessions[0].session, dead.0);
    let endpoint = &server.endpoints[0];
    assert_eq!(
        endpoint.last_error.as_deref(),
        Some("session lost: the connection carrying the session closed")
    );
    assert_eq!(endpoint.last_error_age_secs, Some(0.0));

    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert!(lease.is_hit(), "the refilled session serves");
    assert_ne!(lease.session_id(), dead);
    assert_eq!(
        text(&lease.call_tool(echo("after")).await.unwrap()),
        "after"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_fails_at_once_when_the_connection_is_reported_gone() {
    let (pool, id, transport) = pool_with(StrategyKind::RoundRobin);
    let lease = Arc::new(pool.acquire(&id, Principal::user("u")).await.unwrap());
    let upstream = transport.inner.upstream_sessions()[0].id;
    transport.inner.hang_session(upstream, true);
    let call = tokio::spawn({
        let lease = lease.clone();
        async move { lease.call_tool(sleep_for(1)).await }
    });
    transport
        .inner
        .wait_until(|s| s.tool_calls == 1, Duration::from_secs(5))
        .await
        .unwrap();
    let reported = Instant::now();
    transport
        .handler(0)
        .report_lost("the server could not be reached");
    let error = call.await.unwrap().unwrap_err();
    assert_eq!(
        reported.elapsed(),
        Duration::ZERO,
        "not a moment of waiting"
    );
    let lost = lost_of(&error);
    assert_eq!(lost.cause(), "the server could not be reached");
    assert!(!lost.is_forgotten());
    assert!(lease.is_broken());
    // Evicted while the lease was out: retiring, closed when it returns.
    assert_eq!(stats(&pool).evictions, 1);
    let dead = lease.session_id();
    drop(Arc::into_inner(lease).unwrap());
    assert!(
        pool.sessions(&id)
            .unwrap()
            .iter()
            .all(|s| s.session != dead.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_on_a_forgotten_session_gets_the_servers_own_answer() {
    let (pool, id, transport) = pool_with(StrategyKind::RoundRobin);
    let lease = Arc::new(pool.acquire(&id, Principal::user("u")).await.unwrap());
    let upstream = transport.inner.upstream_sessions()[0].id;
    transport.inner.hang_session(upstream, true);
    let call = tokio::spawn({
        let lease = lease.clone();
        async move { lease.call_tool(echo("answered")).await }
    });
    transport
        .inner
        .wait_until(|s| s.tool_calls == 1, Duration::from_secs(5))
        .await
        .unwrap();
    transport.handler(0).report_forgotten("HTTP 404");
    settle().await;
    // Evicted at once: no acquire gets it, though the call is still out on it.
    assert_eq!(stats(&pool).evictions, 1);
    let other = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert_ne!(other.session_id(), lease.session_id());
    drop(other);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !call.is_finished(),
        "the server answers it: the call waits for that"
    );
    transport.inner.hang_session(upstream, false);
    let answer = call.await.unwrap().expect("the server's own answer");
    assert_eq!(text(&answer), "answered");
    // A call sent after the loss is not sent at all.
    let calls = transport.inner.tool_calls();
    let error = lease.call_tool(echo("never sent")).await.unwrap_err();
    assert!(lost_of(&error).is_forgotten());
    assert_eq!(
        transport.inner.tool_calls(),
        calls,
        "nothing reached the server"
    );
    assert!(lease.is_broken());
}

#[tokio::test(start_paused = true)]
async fn a_sticky_binding_to_a_forgotten_session_is_recorded_lost_and_rebound() {
    let (pool, id, transport) = pool_with(StrategyKind::Sticky);
    let conversation = || {
        pool.acquire_with(
            AcquireRequest::new(&id)
                .principal(Principal::user("u"))
                .downstream_session("conversation-1"),
        )
    };
    let lease = conversation().await.unwrap();
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    let bound = lease.session_id();
    drop(lease);
    assert_eq!(
        pool.affinity_state(&id, Principal::user("u"), "conversation-1"),
        Some(AffinityState::Bound(bound))
    );

    transport.handler(0).report_forgotten("HTTP 404");
    settle().await;
    assert_eq!(
        pool.affinity_state(&id, Principal::user("u"), "conversation-1"),
        Some(AffinityState::Lost(EvictionReason::Lost))
    );
    let lease = conversation().await.unwrap();
    assert!(lease.is_rebound(), "never silently reused");
    assert_ne!(lease.session_id(), bound);
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    assert_eq!(stats(&pool).rebinds, 1);
}
