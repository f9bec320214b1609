//! A custom strategy registered with the builder and named by configuration:
//! in a `PoolConfig`, in `SESSION_POOL_STRATEGY`, and on a live pool; an unknown name is
//! refused naming the registered ones. The strategy, least recently used, passes the strategy
//! suite.

use std::{collections::HashMap, sync::Arc};

use mcp_pool::{
    Pool, PoolConfig, Principal, ServerConfig, ServerId, Settings, StrategyKind,
    traits::{
        EndpointView, SelectContext, Selection, Selector, SessionId, SessionView, Strategy,
        least_loaded_endpoint,
    },
};
use mcp_pool_conformance::{ReferenceServer, strategy_conformance};

/// Picks the free session picked least recently.
#[derive(Debug)]
struct LeastRecentlyUsed;

#[derive(Debug, Default)]
struct LruSelector {
    tick: u64,
    last: HashMap<SessionId, u64>,
}

impl Strategy for LeastRecentlyUsed {
    fn name(&self) -> &str {
        "lru"
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(LruSelector::default())
    }
}

impl Selector for LruSelector {
    fn select(&mut self, sessions: &[SessionView], _: &SelectContext) -> Selection {
        let picked = sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.has_capacity())
            .min_by_key(|(_, s)| self.last.get(&s.id).copied().unwrap_or(0));
        match picked {
            Some((i, session)) => {
                self.tick += 1;
                self.last.insert(session.id, self.tick);
                Selection::Session(i)
            }
            None => Selection::Create,
        }
    }

    fn select_endpoint(&mut self, endpoints: &[EndpointView], _: &SelectContext) -> Option<usize> {
        least_loaded_endpoint(endpoints)
    }

    fn on_removed(&mut self, session: SessionId, _: mcp_pool::traits::EvictionReason) {
        self.last.remove(&session);
    }
}

mcp_pool_conformance::counting_allocator!();
strategy_conformance!(name: lru_suite, strategy: LeastRecentlyUsed);

// The pool's model-based properties with the LRU strategy registered and scenarios on it.
mcp_pool_conformance::pool_conformance! {
    name: lru_pool_model,
    strategy: LeastRecentlyUsed,
    cases: 32,
}

fn id(s: &str) -> ServerId {
    ServerId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_strategy_is_chosen_by_name() {
    let upstream = ReferenceServer::start().await.unwrap();
    let lru = StrategyKind::custom("lru").unwrap();
    assert_eq!("lru".parse::<StrategyKind>().unwrap(), lru);
    let config = PoolConfig {
        strategy: lru,
        ..PoolConfig::enabled()
    };
    let pool = Pool::builder()
        .strategy(Arc::new(LeastRecentlyUsed))
        .server(ServerConfig::new(id("s"), upstream.endpoint()).pool(config))
        .build()
        .unwrap();
    let lease = pool.acquire(&id("s"), Principal::user("u")).await.unwrap();
    drop(lease);
    assert_eq!(pool.stats().servers[0].strategy, "lru");

    // Switched on the live pool, and back.
    let mut config = pool.server_config(&id("s")).unwrap();
    config.strategy = StrategyKind::RoundRobin;
    pool.set_pool_config(&id("s"), config.clone()).unwrap();
    assert_eq!(pool.stats().servers[0].strategy, "round_robin");
    config.strategy = lru;
    pool.set_pool_config(&id("s"), config).unwrap();
    assert_eq!(pool.stats().servers[0].strategy, "lru");

    // A name no strategy was registered under is refused, naming those there are.
    let unknown = PoolConfig {
        strategy: StrategyKind::custom("fastest").unwrap(),
        ..PoolConfig::enabled()
    };
    let error = pool
        .add_server(ServerConfig::new(id("t"), upstream.endpoint()).pool(unknown))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("strategy fastest is not registered") && error.contains(", lru"),
        "{error}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_a_registered_strategy() {
    let upstream = ReferenceServer::start().await.unwrap();
    let vars = [
        ("SESSION_POOL_ENABLED", "true"),
        ("SESSION_POOL_STRATEGY", "lru"),
    ];
    let settings =
        Settings::from_vars(None::<&str>, vars.map(|(k, v)| (k.into(), v.into()))).unwrap();
    let config = settings.pool_config_for(&id("s"));
    assert_eq!(config.strategy.as_str(), "lru");
    let pool = settings
        .builder()
        .strategy(Arc::new(LeastRecentlyUsed))
        .server(ServerConfig::new(id("s"), upstream.endpoint()).pool(config))
        .build()
        .unwrap();
    assert_eq!(pool.stats().servers[0].strategy, "lru");
    pool.close().await;
}
