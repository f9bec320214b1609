//! Upstream server definitions.

use std::{fmt, sync::Arc};

use mcp_pool_traits::{Endpoint, PoolConfig, ServerId, Strategy, TransportKind};

use parking_lot::Mutex;

use crate::{PoolError, key_pool::KeyCounters};

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

/// Counters of a server that outlive its keys and its reconfigurations: the totals of keys
/// already gone. Live keys count in their own [`KeyCounters`]; stats add both.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) retired: Mutex<KeyCounters>,
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
