//! Health checks of single sessions (`mcp_pool::health`): against the reference server over
//! streamable HTTP (alive, stopped, hanging, expired), and in process on tokio's paused clock
//! for exact timeouts, METHOD_NOT_FOUND and protocol 2026-07-28 (no `ping`).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::*;
use mcp_pool::{
    Principal,
    health::{
        HealthCheckConfig, HealthCheckMethod, HealthCheckMethod::*, HealthFailure, HealthOutcome,
        check_session, lacks_ping,
    },
    rmcp::{
        ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt,
        model::{
            ListPromptsRequestMethod, ListPromptsResult, ListToolsResult, PaginatedRequestParams,
            ProtocolVersion, ServerCapabilities, ServerConfig,
        },
        service::{
            ClientCacheConfig, ClientLifecycleMode, RequestContext, RunningService,
            serve_client_with_lifecycle,
        },
    },
};
use mcp_pool_conformance::{ReferenceHandler, ReferenceServer};
use tokio::time::Instant;

const SHORT: Duration = Duration::from_secs(1);

fn healthy(method: HealthCheckMethod) -> HealthOutcome {
    HealthOutcome::Healthy { method }
}

fn failed(method: HealthCheckMethod, failure: HealthFailure) -> HealthOutcome {
    HealthOutcome::Failed { method, failure }
}

#[tokio::test]
async fn a_live_session_is_healthy_by_ping() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(2));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert!(!lacks_ping(&lease), "rmcp servers negotiate 2025-11-25");
    let before = upstream.http_requests();
    for _ in 0..5 {
        let outcome = check_session(&lease, &HealthCheckConfig::default()).await;
        assert_eq!(outcome, healthy(Ping));
    }
    // Each check is one POST to the server (the session's GET stream may add one more).
    assert!(upstream.http_requests() >= before + 5);
}

/// rmcp's client response cache keeps `tools/list` answers that carry a TTL (the server's
/// `ttlMs`, or the client's `default_ttl`) and, by default, serves them stale when the server
/// fails: a health check through it would find a dead server alive.
#[tokio::test]
async fn list_tools_is_never_answered_from_the_response_cache() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(2));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    // A lease user turns caching on for servers that send no TTL, and fills the cache.
    let users_config = ClientCacheConfig::default().with_default_ttl(Duration::from_secs(600));
    lease.set_response_cache_config(users_config.clone()).await;
    let tools = lease.peer().list_tools(None).await.unwrap();
    assert!(tools.tools.iter().any(|t| t.name == "echo"));
    let list_tools = HealthCheckConfig::default().with_chain([ListTools]);
    assert_eq!(check_session(&lease, &list_tools).await, healthy(ListTools));

    upstream.stop().await;
    // The cache answers for the dead server: what a cached check would have believed.
    let cached = lease.peer().list_tools(None).await;
    assert!(cached.is_ok(), "{cached:?}");
    // The health check asks the server itself.
    let outcome = check_session(&lease, &list_tools).await;
    assert!(
        matches!(
            outcome,
            HealthOutcome::Failed {
                method: ListTools,
                failure: HealthFailure::Transport(_)
            }
        ),
        "{outcome:?}"
    );
    // The lease users' cache and its configuration are untouched.
    assert_eq!(lease.peer().response_cache_config().await, users_config);
    assert!(lease.peer().list_tools(None).await.is_ok());
}

#[tokio::test]
async fn a_stopped_server_fails_with_a_transport_error_not_a_timeout() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(2));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    upstream.stop().await;
    let config = HealthCheckConfig::default().with_timeout(Duration::from_secs(30));
    let outcome = check_session(&lease, &config).await;
    // A transport failure, so it came before the 30 s timeout, and the chain stopped at ping.
    assert!(
        matches!(
            outcome,
            HealthOutcome::Failed {
                method: Ping,
                failure: HealthFailure::Transport(_)
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_expired_session_fails_and_is_not_reinitialized() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(2));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert_eq!(upstream.expire_sessions().await, 1);
    let outcome = check_session(&lease, &HealthCheckConfig::default()).await;
    assert!(
        matches!(
            outcome,
            HealthOutcome::Failed {
                method: Ping,
                failure: HealthFailure::Transport(_)
            }
        ),
        "HTTP 404 is a failure: {outcome:?}"
    );
    assert_eq!(upstream.sessions_opened(), 1, "no silent re-initialize");
}

/// A session on the reference server, then the server hangs: it accepts requests and never
/// answers them.
async fn hanging() -> (ReferenceServer, mcp_pool::Pool, mcp_pool::Lease) {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(2));
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    upstream.set_hang(true);
    (upstream, pool, lease)
}

#[tokio::test]
async fn a_hanging_server_fails_by_timeout() {
    let (upstream, _pool, lease) = hanging().await;
    let config = HealthCheckConfig::default().with_timeout(SHORT);
    let before = upstream.http_requests();
    assert_eq!(
        check_session(&lease, &config).await,
        failed(Ping, HealthFailure::Timeout(SHORT)),
        "a timeout fails; list_tools is not tried"
    );
    assert!(upstream.http_requests() > before, "the ping was sent");
}

#[tokio::test]
async fn with_timeout_moves_on_a_hanging_server_still_fails_when_every_method_hangs() {
    let (_upstream, _pool, lease) = hanging().await;
    let config = HealthCheckConfig::default()
        .with_timeout(SHORT)
        .with_timeout_moves_on(true);
    assert_eq!(
        check_session(&lease, &config).await,
        failed(ListTools, HealthFailure::Timeout(SHORT))
    );
}

/// `timeout_moves_on` + `skip` lets a server that never answers pass its health check. That is
/// possible only as this explicit choice; without `timeout_moves_on` the same chain fails.
#[tokio::test]
async fn skip_after_a_hang_passes_only_with_timeout_moves_on() {
    let (_upstream, _pool, lease) = hanging().await;
    let chain = HealthCheckConfig::default()
        .with_chain([Ping, Skip])
        .with_timeout(SHORT);
    assert_eq!(
        check_session(&lease, &chain).await,
        failed(Ping, HealthFailure::Timeout(SHORT))
    );
    let defect = chain.with_timeout_moves_on(true);
    assert_eq!(check_session(&lease, &defect).await, healthy(Skip));
}

/// An in-process client session to `handler` (a `tokio::io::duplex` pipe), with `lifecycle`.
async fn in_process<H: ServerHandler>(
    handler: H,
    lifecycle: ClientLifecycleMode,
) -> RunningService<RoleClient, ()> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(server) = handler.serve(server_io).await {
            let _ = server.waiting().await;
        }
    });
    serve_client_with_lifecycle((), client_io, lifecycle)
        .await
        .expect("the in-process session initializes")
}

/// A server with tools only, as many non-rmcp servers are: `prompts/list` is answered with
/// METHOD_NOT_FOUND. Its `ping` and `tools/list` can be made to hang; it counts pings.
#[derive(Clone, Default)]
struct Partial {
    hang: bool,
    pings: Arc<AtomicU64>,
}

impl Partial {
    fn hanging() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }
}

impl ServerHandler for Partial {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn ping(&self, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.pings.fetch_add(1, Ordering::Relaxed);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(ListToolsResult::default())
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Err(ErrorData::method_not_found::<ListPromptsRequestMethod>())
    }
}

#[tokio::test(start_paused = true)]
async fn method_not_found_moves_to_the_next_method() {
    let session = in_process(Partial::default(), ClientLifecycleMode::Initialize).await;
    let check = |chain: &[HealthCheckMethod]| {
        let config = HealthCheckConfig::default().with_chain(chain.to_vec());
        let session = &session;
        async move { check_session(session, &config).await }
    };
    assert_eq!(check(&[ListPrompts, ListTools]).await, healthy(ListTools));
    assert_eq!(check(&[ListPrompts, Skip]).await, healthy(Skip));
    assert_eq!(
        check(&[ListPrompts]).await,
        failed(ListPrompts, HealthFailure::MethodNotFound),
        "a chain that runs out fails"
    );
    // rmcp servers answer prompts/list with an empty list even without the capability.
    let reference = in_process(ReferenceHandler::new(), ClientLifecycleMode::Initialize).await;
    let prompts_only = HealthCheckConfig::default().with_chain([ListPrompts, ListResources]);
    assert_eq!(
        check_session(&reference, &prompts_only).await,
        healthy(ListPrompts)
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_session_fails_after_exactly_the_timeout_per_method() {
    let session = in_process(Partial::hanging(), ClientLifecycleMode::Initialize).await;
    let config = HealthCheckConfig::default();
    let started = Instant::now();
    assert_eq!(
        check_session(&session, &config).await,
        failed(Ping, HealthFailure::Timeout(Duration::from_secs(5)))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    let moves_on = config.with_timeout_moves_on(true);
    let started = Instant::now();
    assert_eq!(
        check_session(&session, &moves_on).await,
        failed(ListTools, HealthFailure::Timeout(Duration::from_secs(5)))
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "chain length × timeout"
    );
    // METHOD_NOT_FOUND after a hang: the chain runs out with that.
    let chain = moves_on.with_chain([Ping, ListPrompts]);
    assert_eq!(
        check_session(&session, &chain).await,
        failed(ListPrompts, HealthFailure::MethodNotFound)
    );
}

#[tokio::test(start_paused = true)]
async fn protocol_2026_07_28_has_no_ping_so_list_tools_is_used() {
    let server = Partial::default();
    let discover = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let session = in_process(server.clone(), discover).await;
    let version = session.peer_info().map(|i| i.protocol_version.clone());
    assert_eq!(version, Some(ProtocolVersion::V_2026_07_28));
    assert!(lacks_ping(&session));
    assert_eq!(
        check_session(&session, &HealthCheckConfig::default()).await,
        healthy(ListTools)
    );
    let ping_only = HealthCheckConfig::default().with_chain([Ping]);
    assert_eq!(
        check_session(&session, &ping_only).await,
        healthy(ListTools)
    );
    assert_eq!(server.pings.load(Ordering::Relaxed), 0, "no ping was sent");

    // The same server on a session that negotiated with `initialize` is pinged.
    let legacy = in_process(server.clone(), ClientLifecycleMode::Initialize).await;
    assert!(!lacks_ping(&legacy));
    assert_eq!(check_session(&legacy, &ping_only).await, healthy(Ping));
    assert_eq!(server.pings.load(Ordering::Relaxed), 1);
}
