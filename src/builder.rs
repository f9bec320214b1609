//! [`PoolBuilder`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use mcp_pool_traits::{
    IdentityConfig, StateBackend, Transport, TransportKind, check_range, default_client_config,
    rmcp::model::ClientConfig,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Pool, PoolError, ServerConfig,
    breaker::BreakerConfig,
    health::HealthCheckConfig,
    limits::{DEFAULT_MAX_KEYS, DEFAULT_MAX_SESSIONS, DEFAULT_USER_LIMIT, Limits},
    maintenance,
    pool::PoolInner,
    shared::{Shared, SharedSettings},
};

/// Default bound on connect + `initialize` of one session (the reference pool's 30 s).
pub const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default period of the background maintenance task (`SESSION_POOL_CLEANUP_INTERVAL`).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Default time after which a key with nothing in use is removed with its sessions (the
/// reference pool's `idle_pool_eviction_seconds`).
pub const DEFAULT_KEY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds a [`Pool`].
///
/// ```no_run
/// # async fn run() -> Result<(), mcp_pool::PoolError> {
/// use mcp_pool::{Endpoint, Pool, PoolConfig, ServerConfig, ServerId, TransportKind};
///
/// let server = ServerConfig::new(
///     ServerId::new("search").unwrap(),
///     Endpoint::new("http://127.0.0.1:8000/mcp", TransportKind::StreamableHttp).unwrap(),
/// )
/// .pool(PoolConfig { max_size: 4, ..PoolConfig::enabled() });
/// let pool = Pool::builder().server(server).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    servers: Vec<ServerConfig>,
    transports: Vec<Arc<dyn Transport>>,
    backend: Option<Arc<dyn StateBackend>>,
    identity: Option<IdentityConfig>,
    create_timeout: Option<Duration>,
    cleanup_interval: Option<Duration>,
    key_idle_timeout: Option<Duration>,
    client_config: Option<ClientConfig>,
    user_limit: Option<u32>,
    max_sessions: Option<u32>,
    max_keys: Option<u32>,
    metrics: Option<bool>,
    breaker: Option<BreakerConfig>,
    health: Option<HealthCheckConfig>,
}

impl PoolBuilder {
    /// Adds a server (validated by [`build`](Self::build)).
    pub fn server(mut self, server: ServerConfig) -> Self {
        self.servers.push(server);
        self
    }

    /// Registers a transport for its [`kind`](Transport::kind), replacing the built-in one.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// The state backend shared with other workers (default: [`MemoryBackend`], this process
    /// only).
    ///
    /// [`MemoryBackend`]: mcp_pool_backends::MemoryBackend
    pub fn backend(mut self, backend: Arc<dyn StateBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// How identities are derived from request headers (default: DESIGN §4's headers).
    pub fn identity(mut self, identity: IdentityConfig) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Bound on connect + `initialize` of one session (default 30 s), also cut to what is left
    /// of the acquire timeout.
    pub fn create_timeout(mut self, timeout: Duration) -> Self {
        self.create_timeout = Some(timeout);
        self
    }

    /// Period of the background maintenance task that closes expired and idle sessions,
    /// removes idle keys and keeps `min_size` warm, 1-3600 s (default 60 s).
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = Some(interval);
        self
    }

    /// A key with nothing in use for this long is removed with its sessions (default 600 s),
    /// so rotating tokens cannot grow the key map without bound.
    pub fn key_idle_timeout(mut self, timeout: Duration) -> Self {
        self.key_idle_timeout = Some(timeout);
        self
    }

    /// Sessions one user may hold across servers, idle ones included
    /// (`SESSION_POOL_USER_LIMIT`, default 10). The user is the explicit user identity, else
    /// the hashed identity; requests with neither only count against the pool-wide cap.
    pub fn user_limit(mut self, limit: u32) -> Self {
        self.user_limit = Some(limit);
        self
    }

    /// Hard cap on sessions in the whole pool, idle ones included (default 1000). At the cap an
    /// idle session is closed to make room; with none idle, acquires that need a new session
    /// fail with [`PoolError::SessionLimit`].
    pub fn max_sessions(mut self, max: u32) -> Self {
        self.max_sessions = Some(max);
        self
    }

    /// Hard cap on pool keys (default 10 000), against rotating-token growth (DESIGN §2.8). At
    /// the cap an idle key is removed to make room; with none idle, acquires on a new key fail
    /// with [`PoolError::KeyLimit`].
    pub fn max_keys(mut self, max: u32) -> Self {
        self.max_keys = Some(max);
        self
    }

    /// Whether metrics are recorded through the `metrics` facade (default `true`;
    /// `SESSION_POOL_METRICS_ENABLED`). Stats are kept either way.
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.metrics = Some(enabled);
        self
    }

    /// Settings of every endpoint's circuit breaker (default: 5 consecutive creation failures
    /// open it for 60 s).
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// How idle sessions are health-checked (default: `ping`, then `list_tools`, 5 s each; a
    /// timeout is a failure). How often is each server's `health_check_interval`.
    pub fn health_check(mut self, config: HealthCheckConfig) -> Self {
        self.health = Some(config);
        self
    }

    /// The `initialize` parameters sent upstream (default: client `mcp-pool`).
    pub fn client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = Some(config);
        self
    }

    /// Validates everything and starts the pool's maintenance task.
    ///
    /// # Errors
    /// The first invalid server or setting; nothing is started then.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn build(self) -> Result<Pool, PoolError> {
        let cleanup_interval = self.cleanup_interval.unwrap_or(DEFAULT_CLEANUP_INTERVAL);
        check_range("cleanup_interval", cleanup_interval.as_secs())?;
        for (field, value) in [
            ("user_limit", self.user_limit),
            ("max_sessions", self.max_sessions),
            ("max_keys", self.max_keys),
        ] {
            if let Some(value) = value {
                check_range(field, value.into())?;
            }
        }
        for server in &self.servers {
            server.validate()?;
        }
        let breaker = self.breaker.unwrap_or_default();
        breaker.validate()?;
        let health = self.health.unwrap_or_default();
        health.validate()?;
        let defaults =
            mcp_pool_transports::defaults().map_err(|e| PoolError::Setup(e.to_string()))?;
        // Registered transports replace the built-in one of their kind.
        let transports: HashMap<TransportKind, Arc<dyn Transport>> = defaults
            .into_iter()
            .chain(self.transports)
            .map(|t| (t.kind(), t))
            .collect();
        let shared = Arc::new(Shared::new(
            tokio::runtime::Handle::current(),
            transports,
            SharedSettings {
                client_config: self.client_config.unwrap_or_else(default_client_config),
                create_timeout: self.create_timeout.unwrap_or(DEFAULT_CREATE_TIMEOUT),
                limits: Limits::new(
                    self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
                    self.user_limit.unwrap_or(DEFAULT_USER_LIMIT),
                    self.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
                ),
                metrics_enabled: self.metrics.unwrap_or(true),
                breaker,
                cleanup_interval,
            },
        ));
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(mcp_pool_backends::MemoryBackend::new()));
        let pool = Pool {
            inner: Arc::new(PoolInner {
                shared,
                keys: papaya::HashMap::default(),
                identity: self.identity.unwrap_or_default(),
                backend,
                shutdown: CancellationToken::new(),
                server_slots: Default::default(),
                generation: Default::default(),
                candidates: Default::default(),
                subjects: Default::default(),
                config_changes: tokio::sync::watch::channel(0).0,
                saved_versions: Default::default(),
            }),
        };
        for server in self.servers {
            pool.add_server(server)?;
        }
        if pool.inner.backend.name() != "memory" {
            // A shared backend: the user limit also counts the other workers' sessions.
            let slots = crate::workers::UserSlots::new(
                pool.inner.backend.clone(),
                pool.inner.shared.limits.user_limit,
                cleanup_interval,
            );
            let _ = pool.inner.shared.user_slots.set(Arc::new(slots));
        }
        crate::workers::spawn_config_watcher(&pool);
        maintenance::spawn_health(&pool, health);
        maintenance::spawn(
            &pool,
            cleanup_interval,
            self.key_idle_timeout.unwrap_or(DEFAULT_KEY_IDLE_TIMEOUT),
        );
        Ok(pool)
    }
}
