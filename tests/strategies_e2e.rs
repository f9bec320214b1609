//! Strategies end to end against the reference server running as 3 endpoints (3 instances).

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{AcquireRequest, Pool, PoolConfig, Principal, ServerConfig, StrategyKind};
use mcp_pool_conformance::ReferenceServer;

struct Replicas {
    servers: Vec<ReferenceServer>,
}

impl Replicas {
    async fn start(n: usize) -> Self {
        let mut servers = Vec::new();
        for _ in 0..n {
            servers.push(ReferenceServer::start().await.unwrap());
        }
        Self { servers }
    }

    fn pool(&self, weights: &[u32], config: PoolConfig) -> (Pool, mcp_pool::ServerId) {
        let id = server_id("replicated");
        let mut server = ServerConfig::new(
            id.clone(),
            self.servers[0].endpoint().with_weight(weights[0]).unwrap(),
        );
        for (upstream, &weight) in self.servers.iter().zip(weights).skip(1) {
            server = server.endpoint(upstream.endpoint().with_weight(weight).unwrap());
        }
        let pool = Pool::builder().server(server.pool(config)).build().unwrap();
        (pool, id)
    }

    fn opened(&self) -> Vec<u64> {
        self.servers.iter().map(|s| s.sessions_opened()).collect()
    }
}

fn config(strategy: StrategyKind, max_size: u32) -> PoolConfig {
    PoolConfig {
        strategy,
        max_size,
        size: max_size,
        ..PoolConfig::enabled()
    }
}

#[tokio::test]
async fn round_robin_spreads_sessions_evenly() {
    let replicas = Replicas::start(3).await;
    let (pool, id) = replicas.pool(&[1, 1, 1], config(StrategyKind::RoundRobin, 6));
    let user = Principal::user("u");
    let mut leases = Vec::new();
    for _ in 0..6 {
        leases.push(pool.acquire(&id, user).await.unwrap());
    }
    assert_eq!(replicas.opened(), [2, 2, 2]);
}

#[tokio::test]
async fn weighted_three_one_one_creates_sessions_in_that_proportion() {
    let replicas = Replicas::start(3).await;
    let (pool, id) = replicas.pool(&[3, 1, 1], config(StrategyKind::Weighted, 10));
    let user = Principal::user("u");
    let mut leases = Vec::new();
    for _ in 0..10 {
        leases.push(pool.acquire(&id, user).await.unwrap());
    }
    assert_eq!(replicas.opened(), [6, 2, 2]);
}

#[tokio::test]
async fn least_connections_sends_new_work_away_from_a_slow_endpoint() {
    let replicas = Replicas::start(3).await;
    let mut config = config(StrategyKind::LeastConnections, 3);
    config.session_concurrency = 2;
    let (pool, id) = replicas.pool(&[1, 1, 1], config);
    let user = Principal::user("u");
    // One session per endpoint: new sessions go to the endpoint with the least work.
    let first: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire(&id, user))).await;
    assert_eq!(replicas.opened(), [1, 1, 1]);
    let slow_session = first[0].as_ref().unwrap().session_id();
    let slow = first.into_iter().next().unwrap().unwrap();
    let slow_call = tokio::spawn(async move { slow.call_tool(sleep_for(2_000)).await.map(|_| ()) });
    replicas.servers[0]
        .wait_until(|s| s.tool_calls == 1, Duration::from_secs(5))
        .await
        .unwrap();
    // The slow endpoint's session has a call in flight: every new acquire goes elsewhere.
    for i in 0..20 {
        let lease = pool.acquire(&id, user).await.unwrap();
        assert_ne!(lease.session_id(), slow_session, "acquire {i}");
        lease.call_tool(echo("fast")).await.unwrap();
    }
    assert_eq!(replicas.servers[0].tool_calls(), 1, "only the slow call");
    assert_eq!(
        replicas.servers[1].tool_calls() + replicas.servers[2].tool_calls(),
        20
    );
    slow_call.await.unwrap().unwrap();
}

#[tokio::test]
async fn sticky_keeps_counter_per_conversation_and_isolates_conversations_of_one_user() {
    let replicas = Replicas::start(3).await;
    let (pool, id) = replicas.pool(&[1, 1, 1], config(StrategyKind::Sticky, 4));
    let user = Principal::user("alice");
    let count = |conversation: &'static str| {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let request = AcquireRequest::new(&id)
                .principal(user)
                .downstream_session(conversation);
            let lease = pool.acquire_with(request).await.unwrap();
            assert!(!lease.is_rebound());
            text(&lease.call_tool(counter()).await.unwrap())
        }
    };
    assert_eq!(count("conversation-a").await, "1");
    assert_eq!(
        count("conversation-b").await,
        "1",
        "b never sees a's counter"
    );
    assert_eq!(count("conversation-a").await, "2");
    assert_eq!(count("conversation-b").await, "2");
    assert_eq!(count("conversation-a").await, "3");
    assert!(pool.unbind(&id, user, "conversation-a"));
    assert_eq!(
        count("conversation-a").await,
        "1",
        "a new conversation starts fresh"
    );
}

#[tokio::test]
async fn a_dead_sticky_session_is_replaced_and_the_lease_says_rebound() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, config(StrategyKind::Sticky, 4));
    let request = AcquireRequest::new(&id)
        .principal(Principal::user("u"))
        .downstream_session("c");
    let lease = pool.acquire_with(request).await.unwrap();
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    drop(lease);
    upstream.expire_sessions().await;
    let lease = pool.acquire_with(request).await.unwrap();
    assert!(lease.call_tool(counter()).await.is_err());
    drop(lease);
    let lease = pool.acquire_with(request).await.unwrap();
    assert!(
        lease.is_rebound(),
        "server state was lost, and the caller is told"
    );
    assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    assert_eq!(pool.stats().servers[0].rebinds, 1);
}

#[tokio::test]
async fn none_opens_one_session_per_call_and_closes_it() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, config(StrategyKind::None, 4));
    for _ in 0..5 {
        let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
        assert_eq!(text(&lease.call_tool(counter()).await.unwrap()), "1");
    }
    upstream
        .wait_sessions_alive(0, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(upstream.sessions_opened(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_live_pool_from_round_robin_to_sticky_loses_no_lease_and_breaks_no_call() {
    let replicas = Replicas::start(3).await;
    let (pool, id) = replicas.pool(&[1, 1, 1], config(StrategyKind::RoundRobin, 8));
    let load: Vec<_> = (0..8)
        .map(|t| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                let conversation = format!("conversation-{t}");
                for i in 0..40 {
                    let request = AcquireRequest::new(&id)
                        .principal(Principal::user("u"))
                        .downstream_session(&conversation);
                    let lease = pool.acquire_with(request).await.expect("no acquire fails");
                    let reply = lease
                        .call_tool(echo(&format!("{t}-{i}")))
                        .await
                        .expect("no call breaks");
                    assert_eq!(text(&reply), format!("{t}-{i}"));
                }
            })
        })
        .collect();
    let switcher = {
        let (pool, id) = (pool.clone(), id.clone());
        tokio::spawn(async move {
            while pool.stats().servers[0].acquisitions < 60 {
                tokio::task::yield_now().await;
            }
            pool.set_pool_config(&id, config(StrategyKind::Sticky, 8))
                .unwrap();
        })
    };
    for task in load {
        task.await.unwrap();
    }
    switcher.await.unwrap();
    let server = &pool.stats().servers[0];
    assert_eq!(server.strategy, "sticky");
    assert_eq!(server.acquisitions, 320);
    assert_eq!(server.releases, 320);
    assert_eq!(server.sessions_active, 0);
}

#[tokio::test]
async fn peak_ewma_keeps_work_off_an_endpoint_that_answered_slowly() {
    let replicas = Replicas::start(2).await;
    let mut config = config(StrategyKind::PeakEwma, 2);
    config.session_concurrency = 1;
    let (pool, id) = replicas.pool(&[1, 1], config);
    let user = Principal::user("u");
    // Two leases at once: one session per endpoint (an unmeasured endpoint is tried first).
    let a = pool.acquire(&id, user).await.unwrap();
    let b = pool.acquire(&id, user).await.unwrap();
    assert_eq!(replicas.opened(), [1, 1]);
    let (fast, slow) = if a.endpoint_index() == 0 {
        (a, b)
    } else {
        (b, a)
    };
    let fast_session = fast.session_id();
    fast.call_tool(echo("fast")).await.unwrap();
    drop(fast);
    slow.call_tool(sleep_for(300)).await.unwrap();
    drop(slow);
    // Both sessions are free; least connections would alternate, peak EWMA stays on the
    // endpoint that answered fast.
    for i in 0..20 {
        let lease = pool.acquire(&id, user).await.unwrap();
        assert_eq!(lease.session_id(), fast_session, "acquire {i}");
        lease.call_tool(echo("fast")).await.unwrap();
    }
    assert_eq!(replicas.servers[0].tool_calls(), 21);
    assert_eq!(replicas.servers[1].tool_calls(), 1, "only the slow call");
}

/// A round robin that counts the lease reports it gets.
#[derive(Debug)]
struct Counting {
    observes: bool,
    reports: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct CountingSelector {
    inner: Box<dyn mcp_pool::traits::Selector>,
    observes: bool,
    reports: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl mcp_pool::Strategy for Counting {
    fn name(&self) -> &str {
        if self.observes {
            "counting_observer"
        } else {
            "counting_blind"
        }
    }

    fn selector(&self) -> Box<dyn mcp_pool::traits::Selector> {
        Box::new(CountingSelector {
            inner: mcp_pool::Strategy::selector(&mcp_pool_strategies::RoundRobin),
            observes: self.observes,
            reports: self.reports.clone(),
        })
    }
}

impl mcp_pool::traits::Selector for CountingSelector {
    fn select(
        &mut self,
        sessions: &[mcp_pool::traits::SessionView],
        ctx: &mcp_pool::traits::SelectContext,
    ) -> mcp_pool::traits::Selection {
        self.inner.select(sessions, ctx)
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[mcp_pool::traits::EndpointView],
        ctx: &mcp_pool::traits::SelectContext,
    ) -> Option<usize> {
        self.inner.select_endpoint(endpoints, ctx)
    }

    fn on_released(&mut self, report: &mcp_pool::traits::LeaseReport) {
        assert!(report.held > Duration::ZERO, "{report:?}");
        self.reports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn observes_leases(&self) -> bool {
        self.observes
    }
}

#[tokio::test]
async fn only_selectors_that_observe_leases_get_their_reports() {
    let upstream = ReferenceServer::start().await.unwrap();
    for observes in [false, true] {
        let reports = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let strategy = std::sync::Arc::new(Counting {
            observes,
            reports: reports.clone(),
        });
        let kind = StrategyKind::custom(mcp_pool::Strategy::name(&*strategy)).unwrap();
        let id = server_id("counted");
        let pool = Pool::builder()
            .strategy(strategy)
            .server(ServerConfig::new(id.clone(), upstream.endpoint()).pool(config(kind, 2)))
            .build()
            .unwrap();
        for _ in 0..5 {
            let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
            lease.call_tool(echo("x")).await.unwrap();
        }
        let expected = if observes { 5 } else { 0 };
        assert_eq!(reports.load(std::sync::atomic::Ordering::Relaxed), expected);
        pool.close().await;
    }
}
