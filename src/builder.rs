//! [`PoolBuilder`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::HeaderName;
use mcp_pool_traits::{
    ConfigError, IdentityConfig, StateBackend, Strategy, StrategyKind, Transport, TransportKind,
    check_range, default_client_config, rmcp::model::ClientConfig,
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
/// The shortest `create_timeout` accepted: 1 ms (zero would fail every creation).
pub const MIN_CREATE_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest `create_timeout` accepted: 300 s, the longest acquire `timeout` a
/// configuration accepts; a creation for an acquire is cut to what is left of it anyway.
pub const MAX_CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default period of the background maintenance task (`SESSION_POOL_CLEANUP_INTERVAL`).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Default time after which a key with nothing in use is removed with its sessions (the
/// reference pool's `idle_pool_eviction_seconds`).
pub const DEFAULT_KEY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Default [`PoolBuilder::trace_headers`]: W3C Trace Context (`traceparent`, `tracestate`) and
/// the common correlation ids.
pub const DEFAULT_TRACE_HEADERS: [&str; 4] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-correlation-id",
];
/// Default [`PoolBuilder::cancel_grace`]: 5 s (the health check's default timeout).
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Default [`PoolBuilder::event_debounce`]: 250 ms.
pub const DEFAULT_EVENT_DEBOUNCE: Duration = Duration::from_millis(250);

/// Builds a [`Pool`].
///
/// ```
/// use std::time::Duration;
///
/// use mcp_pool::{Endpoint, Pool, PoolConfig, Principal, ServerConfig, ServerId, TransportKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // The conformance crate's reference MCP server stands in for a real upstream.
/// # let upstream = mcp_pool_conformance::ReferenceServer::start().await?;
/// # let url = upstream.url();
/// let search = ServerId::new("search")?;
/// let server = ServerConfig::new(
///     search.clone(),
///     Endpoint::new(url, TransportKind::StreamableHttp)?, // e.g. "http://127.0.0.1:8000/mcp"
/// )
/// // At most 4 sessions per key; `size` (default 5) follows `max_size` down to 4.
/// .pool(PoolConfig { max_size: 4, ..PoolConfig::enabled() });
/// let pool = Pool::builder()
///     .server(server)
///     .create_timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(pool.server_config(&search).map(|c| c.size), Some(4));
///
/// let lease = pool.acquire(&search, Principal::user("alice")).await?;
/// let tools = lease.list_all_tools().await?;
/// assert!(tools.iter().any(|tool| tool.name == "echo"));
/// drop(lease);
/// pool.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    servers: Vec<ServerConfig>,
    transports: Vec<Arc<dyn Transport>>,
    strategies: Vec<Arc<dyn Strategy>>,
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
    trace_headers: Option<Vec<HeaderName>>,
    cancel_grace: Option<Duration>,
    event_debounce: Option<Duration>,
}

impl PoolBuilder {
    /// Adds a server (validated by [`build`](Self::build)).
    pub fn server(mut self, server: ServerConfig) -> Self {
        self.servers.push(server);
        self
    }

    /// Registers a transport for its [`kind`](Transport::kind): beside the built-in ones for
    /// a [custom kind](mcp_pool_traits::TransportKind::custom), replacing the built-in one of
    /// a built-in kind.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// Registers a strategy that configuration can then name (`strategy = "lru"` in a
    /// `PoolConfig`, the environment's `SESSION_POOL_STRATEGY`, the TOML file, the gateway's
    /// API): under its [`kind`](Strategy::kind) when that is a built-in one (replacing the
    /// built-in strategy), else under [`StrategyKind::custom`] of its
    /// [`name`](Strategy::name). A configuration naming a strategy no pool registered is
    /// refused when applied, naming the ones there are.
    pub fn strategy(mut self, strategy: Arc<dyn Strategy>) -> Self {
        self.strategies.push(strategy);
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

    /// How identities are derived from request headers (default: the headers of `IdentityConfig::default`).
    pub fn identity(mut self, identity: IdentityConfig) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Bound on connect + `initialize` of one session, [`MIN_CREATE_TIMEOUT`] (1 ms) to
    /// [`MAX_CREATE_TIMEOUT`] (300 s), default 30 s; for an acquire it is also cut to what is
    /// left of the acquire timeout. Checked by [`build`](Self::build).
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

    /// Hard cap on pool keys (default 10 000), against rotating-token growth. At
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
    /// open it; acquires probe it every 500 ms, background creations back off from 1 s,
    /// doubling per failed probe up to 60 s; see [`crate::breaker`]).
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

    /// The headers of a downstream request that travel with each call made with
    /// [`CallOptions::headers`](crate::CallOptions::headers) (default
    /// [`DEFAULT_TRACE_HEADERS`]: W3C Trace Context's `traceparent` and `tracestate`,
    /// `x-request-id`, `x-correlation-id`). They are not part of the key: never put a
    /// credential here (use [`IdentityConfig::with_forwarded_headers`](mcp_pool_traits::IdentityConfig::with_forwarded_headers)).
    /// Names in [`NEVER_FORWARDED`](mcp_pool_traits::NEVER_FORWARDED) are dropped.
    pub fn trace_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.trace_headers = Some(names.into_iter().collect());
        self
    }

    /// How long the server of a session whose call was abandoned (timed out, or dropped by
    /// its caller) has to answer a probe before the session is evicted, 1 ms-60 s (default
    /// [`DEFAULT_CANCEL_GRACE`], 5 s). The session serves nobody until it answered.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = Some(grace);
        self
    }

    /// The window that coalesces a burst of a server's `*/list_changed` notifications into
    /// one [`ServerEvent`](mcp_pool_traits::ServerEvent) at its start and one at its end,
    /// 1 ms-60 s (default [`DEFAULT_EVENT_DEBOUNCE`], 250 ms).
    pub fn event_debounce(mut self, window: Duration) -> Self {
        self.event_debounce = Some(window);
        self
    }

    /// Validates everything and starts the pool's maintenance task.
    ///
    /// # Errors
    /// The first invalid server or setting; nothing is started then. A
    /// [`create_timeout`](Self::create_timeout) outside 1 ms-300 s is
    /// [`PoolError::Config`] with [`ConfigError::DurationOutOfRange`].
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn build(self) -> Result<Pool, PoolError> {
        let cleanup_interval = self.cleanup_interval.unwrap_or(DEFAULT_CLEANUP_INTERVAL);
        check_range("cleanup_interval", cleanup_interval.as_secs())?;
        let create_timeout = self.create_timeout.unwrap_or(DEFAULT_CREATE_TIMEOUT);
        if !(MIN_CREATE_TIMEOUT..=MAX_CREATE_TIMEOUT).contains(&create_timeout) {
            return Err(ConfigError::DurationOutOfRange {
                field: "create_timeout",
                value: create_timeout,
                min: MIN_CREATE_TIMEOUT,
                max: MAX_CREATE_TIMEOUT,
            }
            .into());
        }
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
        let cancel_grace = self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE);
        let event_debounce = self.event_debounce.unwrap_or(DEFAULT_EVENT_DEBOUNCE);
        for (field, value) in [
            ("cancel_grace", cancel_grace),
            ("event_debounce", event_debounce),
        ] {
            if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&value) {
                return Err(PoolError::Config(ConfigError::OutOfRange {
                    field,
                    value: value.as_millis().try_into().unwrap_or(u64::MAX),
                    min: 1,
                    max: 60_000,
                    unit: " ms",
                }));
            }
        }
        let mut probe = health.clone();
        probe.timeout = cancel_grace;
        probe.timeout_moves_on = false;
        let trace_headers = self
            .trace_headers
            .unwrap_or_else(|| DEFAULT_TRACE_HEADERS.map(HeaderName::from_static).to_vec());
        let identity = self.identity.unwrap_or_default();
        let defaults =
            mcp_pool_transports::defaults().map_err(|e| PoolError::Setup(e.to_string()))?;
        // Registered transports replace the built-in one of their kind.
        let transports: HashMap<TransportKind, Arc<dyn Transport>> = defaults
            .into_iter()
            .chain(self.transports)
            .map(|t| (t.kind(), t))
            .collect();
        let mut strategies = HashMap::new();
        for strategy in self.strategies {
            let kind = match strategy.kind() {
                Some(kind) => kind,
                None => StrategyKind::custom(strategy.name()).map_err(|e| {
                    PoolError::Setup(format!("registering strategy {:?}: {e}", strategy.name()))
                })?,
            };
            strategies.insert(kind, strategy);
        }
        let shared = Arc::new(Shared::new(
            tokio::runtime::Handle::current(),
            transports,
            SharedSettings {
                strategies,
                client_config: self.client_config.unwrap_or_else(default_client_config),
                create_timeout,
                limits: Limits::new(
                    self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
                    self.user_limit.unwrap_or(DEFAULT_USER_LIMIT),
                    self.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
                ),
                metrics_enabled: self.metrics.unwrap_or(true),
                breaker,
                cleanup_interval,
                identity: identity.clone(),
                trace_headers,
                probe,
                event_debounce,
            },
        ));
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(mcp_pool_backends::MemoryBackend::new()));
        let pool = Pool {
            inner: Arc::new(PoolInner {
                shared,
                keys: papaya::HashMap::default(),
                identity,
                backend,
                shutdown: CancellationToken::new(),
                known_servers: Default::default(),
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
            let slots = crate::user_slots::UserSlots::new(
                pool.inner.backend.clone(),
                pool.inner.shared.limits.user_limit,
                cleanup_interval,
            );
            let _ = pool.inner.shared.user_slots.set(Arc::new(slots));
        }
        crate::config_watch::spawn_config_watcher(&pool);
        maintenance::spawn_health(&pool, health);
        maintenance::spawn(
            &pool,
            cleanup_interval,
            self.key_idle_timeout.unwrap_or(DEFAULT_KEY_IDLE_TIMEOUT),
        );
        Ok(pool)
    }
}
