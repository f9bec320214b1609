//! Upstream server definitions.

use std::{fmt, sync::Arc};

use mcp_pool_traits::{Endpoint, PoolConfig, ServerId, Strategy, TransportKind};

use parking_lot::Mutex;

use tokio::time::Instant;

use crate::{
    PoolError,
    breaker::{BreakerConfig, CircuitBreaker},
    key_pool::KeyCounters,
    score::HealthScore,
};

/// An upstream MCP server: its endpoints (replicas), its pool configuration and, optionally, a
/// custom strategy that replaces the configured built-in one.
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) id: ServerId,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) pool: PoolConfig,
    pub(crate) strategy: Option<Arc<dyn Strategy>>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .field("pool", &self.pool)
            .field("strategy", &self.strategy.as_ref().map(|s| s.name()))
            .finish()
    }
}

impl ServerConfig {
    /// A server with one endpoint and pooling on ([`PoolConfig::enabled`]).
    pub fn new(id: ServerId, endpoint: Endpoint) -> Self {
        Self {
            id,
            endpoints: vec![endpoint],
            pool: PoolConfig::enabled(),
            strategy: None,
        }
    }

    /// Adds a replica.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Replaces the pool configuration (validated when the server is added).
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Uses a custom strategy instead of `pool.strategy`.
    pub fn strategy(mut self, strategy: Arc<dyn Strategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// The server id.
    pub fn id(&self) -> &ServerId {
        &self.id
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The pool configuration.
    pub fn pool_config(&self) -> &PoolConfig {
        &self.pool
    }

    pub(crate) fn validate(&self) -> Result<(), PoolError> {
        if self.endpoints.is_empty() {
            return Err(PoolError::InvalidServer {
                server: self.id.clone(),
                message: "a server needs at least one endpoint".into(),
            });
        }
        for endpoint in &self.endpoints {
            endpoint
                .validate()
                .map_err(|e| PoolError::invalid_endpoint(&self.id, e))?;
        }
        self.pool.validate()?;
        Ok(())
    }
}

/// State of a server that outlives its keys and its reconfigurations: the totals of keys
/// already gone (live keys count in their own [`KeyCounters`]; stats add both), and its
/// health: a score for the server and, per endpoint, a score and a circuit breaker.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) retired: Mutex<KeyCounters>,
    pub(crate) health: Mutex<ServerHealth>,
}

/// Health of a server and its endpoints (DESIGN §7).
#[derive(Debug, Default)]
pub(crate) struct ServerHealth {
    pub(crate) score: Option<HealthScore>,
    pub(crate) endpoints: Vec<EndpointHealth>,
}

/// One endpoint's breaker and score.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) score: HealthScore,
}

impl ServerHealth {
    /// Makes room for `endpoints` endpoints (endpoints are only ever added by
    /// reconfiguration; a shorter list leaves the extra entries unused).
    pub(crate) fn ensure(&mut self, endpoints: usize, breaker: BreakerConfig, now: Instant) {
        self.score.get_or_insert_with(|| HealthScore::new(now));
        while self.endpoints.len() < endpoints {
            self.endpoints.push(EndpointHealth {
                breaker: CircuitBreaker::new(breaker),
                score: HealthScore::new(now),
            });
        }
    }

    /// Starts endpoint `i` afresh (a new breaker and score): it now points elsewhere.
    pub(crate) fn reset_endpoint(&mut self, i: usize, breaker: BreakerConfig, now: Instant) {
        if let Some(e) = self.endpoints.get_mut(i) {
            *e = EndpointHealth {
                breaker: CircuitBreaker::new(breaker),
                score: HealthScore::new(now),
            };
        }
    }

    /// Records one operation's outcome for the server and, if known, its endpoint.
    pub(crate) fn record(&mut self, endpoint: Option<usize>, success: bool, now: Instant) {
        if let Some(score) = &mut self.score {
            score.record(now, success);
        }
        if let Some(e) = endpoint.and_then(|i| self.endpoints.get_mut(i)) {
            e.score.record(now, success);
        }
    }
}

/// A server as the running pool sees it: an immutable snapshot, replaced whole on
/// reconfiguration (`generation` tells keys to pick up the change).
#[derive(Debug)]
pub(crate) struct ServerEntry {
    /// Stable for the id across reconfigurations; never reused.
    pub(crate) index: u32,
    /// The configuration the server was added with: what a deleted saved config reverts to.
    pub(crate) base: PoolConfig,
    pub(crate) id: ServerId,
    pub(crate) endpoints: Arc<[Endpoint]>,
    pub(crate) config: PoolConfig,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) generation: u64,
    pub(crate) counters: Arc<ServerCounters>,
}

impl ServerEntry {
    /// Pooling on and a strategy that pools.
    pub(crate) fn pools(&self) -> bool {
        self.config.enabled && self.strategy.pools()
    }

    /// The transport an acquire uses when it names none: the first endpoint's.
    pub(crate) fn default_transport(&self) -> TransportKind {
        self.endpoints[0].transport
    }
}
