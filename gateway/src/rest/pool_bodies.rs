//! The bodies of the pool routes (`/servers/{id}/pool/…`, `/servers/pools…`): a pool's
//! configuration as shown ([`PoolConfigView`]) and as changed ([`PoolConfigUpdate`], with its
//! validation), its statistics, health and upstream sessions, the strategies, a resize.

use std::{str::FromStr, time::Duration};

use mcp_pool::{
    HealthStatus, PoolConfig, ServerStats, SessionInfo, SessionState, StrategyKind,
    traits::{ChosenSizes, check_range},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// A server's pool configuration. Durations are whole seconds; each field's range is the one
/// [`PoolConfig`] checks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolConfigView {
    /// Pooling on.
    pub enabled: bool,
    /// `round_robin`, `least_connections`, `sticky`, `weighted`, `none` or `peak_ewma` (or a
    /// custom strategy's name).
    pub strategy: String,
    /// Target size, 1-1000.
    pub size: u32,
    /// Sessions kept warm, 1-1000.
    pub min_size: u32,
    /// Hard cap, 1-1000.
    pub max_size: u32,
    /// Acquire timeout, 1-300 s.
    pub timeout: u64,
    /// Idle close after, 60-86400 s.
    pub max_idle_time: u64,
    /// Autoscaler on.
    pub auto_scale: bool,
    /// Health check period, 10-3600 s.
    pub health_check_interval: u64,
    /// Autoscaler period, 60-3600 s.
    pub rebalance_interval: u64,
    /// Session age cap, 60-86400 s.
    pub max_lifetime: u64,
    /// Healthy at or above this score, 0-100 %.
    pub health_check_threshold: u8,
    /// Leases per session, 1-256.
    pub session_concurrency: u32,
}

impl From<&PoolConfig> for PoolConfigView {
    fn from(c: &PoolConfig) -> Self {
        Self {
            enabled: c.enabled,
            strategy: c.strategy.as_str().to_owned(),
            size: c.size,
            min_size: c.min_size,
            max_size: c.max_size,
            timeout: c.timeout.as_secs(),
            max_idle_time: c.max_idle_time.as_secs(),
            auto_scale: c.auto_scale,
            health_check_interval: c.health_check_interval.as_secs(),
            rebalance_interval: c.rebalance_interval.as_secs(),
            max_lifetime: c.max_lifetime.as_secs(),
            health_check_threshold: c.health_check_threshold,
            session_concurrency: c.session_concurrency,
        }
    }
}

/// The body of `PUT /servers/{id}/pool/config` (and the `pool` of a server's body): every
/// field optional; absent fields keep their current value, except that the sizes it leaves
/// out follow the ones it sets, clamped (`{"max_size": 4}` over a `size` of 5 makes it 4).
/// Durations in seconds.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfigUpdate {
    /// Pooling on.
    pub enabled: Option<bool>,
    /// `round_robin`, `least_connections`, `sticky`, `weighted`, `none` or `peak_ewma` (or a
    /// custom strategy's name).
    pub strategy: Option<String>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub size: Option<u64>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub min_size: Option<u64>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_size: Option<u64>,
    /// 1-300 s.
    #[schema(minimum = 1, maximum = 300)]
    pub timeout: Option<u64>,
    /// 60-86400 s.
    #[schema(minimum = 60, maximum = 86400)]
    pub max_idle_time: Option<u64>,
    /// Autoscaler on.
    pub auto_scale: Option<bool>,
    /// 10-3600 s.
    #[schema(minimum = 10, maximum = 3600)]
    pub health_check_interval: Option<u64>,
    /// 60-3600 s.
    #[schema(minimum = 60, maximum = 3600)]
    pub rebalance_interval: Option<u64>,
    /// 60-86400 s.
    #[schema(minimum = 60, maximum = 86400)]
    pub max_lifetime: Option<u64>,
    /// 0-100 %.
    #[schema(minimum = 0, maximum = 100)]
    pub health_check_threshold: Option<u64>,
    /// 1-256.
    #[schema(minimum = 1, maximum = 256)]
    pub session_concurrency: Option<u64>,
}

impl PoolConfigUpdate {
    /// `current` with the fields present replaced, every one range-checked, and the sizes
    /// absent following the sizes present ([`PoolConfig::follow_sizes`]).
    ///
    /// # Errors
    /// 422 naming the field, the value and the range; nothing is applied then.
    pub fn apply(&self, current: &PoolConfig) -> Result<PoolConfig, ApiError> {
        let c = self.merge(current)?;
        c.validate().map_err(bad)?;
        Ok(c)
    }

    /// A new config: the defaults with the fields present replaced, the sizes not given
    /// following the ones given.
    ///
    /// # Errors
    /// As [`apply`](Self::apply).
    pub fn fresh(&self) -> Result<PoolConfig, ApiError> {
        let c = self.merge(&PoolConfig::default())?.normalized();
        c.validate().map_err(bad)?;
        Ok(c)
    }

    fn merge(&self, current: &PoolConfig) -> Result<PoolConfig, ApiError> {
        let mut c = current.clone();
        let num = |field: &'static str, v: Option<u64>| -> Result<Option<u64>, ApiError> {
            match v {
                Some(v) => check_range(field, v).map(|()| Some(v)).map_err(bad),
                None => Ok(None),
            }
        };
        // Each value was range-checked above, so the narrowing casts below are lossless.
        if let Some(v) = num("size", self.size)? {
            c.size = v as u32;
        }
        if let Some(v) = num("min_size", self.min_size)? {
            c.min_size = v as u32;
        }
        if let Some(v) = num("max_size", self.max_size)? {
            c.max_size = v as u32;
        }
        if let Some(v) = num("timeout", self.timeout)? {
            c.timeout = Duration::from_secs(v);
        }
        if let Some(v) = num("max_idle_time", self.max_idle_time)? {
            c.max_idle_time = Duration::from_secs(v);
        }
        if let Some(v) = num("health_check_interval", self.health_check_interval)? {
            c.health_check_interval = Duration::from_secs(v);
        }
        if let Some(v) = num("rebalance_interval", self.rebalance_interval)? {
            c.rebalance_interval = Duration::from_secs(v);
        }
        if let Some(v) = num("max_lifetime", self.max_lifetime)? {
            c.max_lifetime = Duration::from_secs(v);
        }
        if let Some(v) = num("health_check_threshold", self.health_check_threshold)? {
            c.health_check_threshold = v as u8;
        }
        if let Some(v) = num("session_concurrency", self.session_concurrency)? {
            c.session_concurrency = v as u32;
        }
        if let Some(s) = &self.strategy {
            c.strategy = StrategyKind::from_str(s).map_err(bad)?;
        }
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
        if let Some(v) = self.auto_scale {
            c.auto_scale = v;
        }
        // The sizes it leaves out follow the ones it sets, as the configuration's do.
        Ok(c.follow_sizes(ChosenSizes {
            min_size: self.min_size.is_some(),
            size: self.size.is_some(),
            max_size: self.max_size.is_some(),
        }))
    }
}

pub(super) fn bad(e: mcp_pool::traits::ConfigError) -> ApiError {
    ApiError::unprocessable(e.to_string())
}

/// Health of a pool: `healthy`, `degraded`, `unhealthy` or `unknown` (no data yet).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Score at or above `health_check_threshold`.
    Healthy,
    /// Score from half the threshold up to it.
    Degraded,
    /// Below half the threshold, or every circuit open.
    Unhealthy,
    /// No operation in the window.
    Unknown,
}

impl From<HealthStatus> for Health {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Healthy => Self::Healthy,
            HealthStatus::Degraded => Self::Degraded,
            HealthStatus::Unhealthy => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }
}

/// One server's pool statistics, counters since the gateway started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolStatsView {
    /// The pool's id (the server id: one pool per server).
    pub pool_id: String,
    /// The server id.
    pub server_id: String,
    /// Whether pooling is enabled.
    pub enabled: bool,
    /// The strategy's name.
    pub strategy: String,
    /// Sessions open.
    pub sessions_total: u32,
    /// Sessions with a lease out.
    pub sessions_active: u32,
    /// Sessions free to take a lease.
    pub sessions_available: u32,
    /// Health score in percent over the last 5 minutes; null before any operation.
    pub health_score: Option<u8>,
    /// Health status.
    pub health_status: Health,
    /// Leases handed out.
    pub acquisitions: u64,
    /// Leases returned.
    pub releases: u64,
    /// Acquires served by an existing session.
    pub hits: u64,
    /// Acquires that created a session.
    pub misses: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Sessions evicted.
    pub evictions: u64,
}

impl From<&ServerStats> for PoolStatsView {
    fn from(s: &ServerStats) -> Self {
        Self {
            pool_id: s.server.to_string(),
            server_id: s.server.to_string(),
            enabled: false,
            strategy: s.strategy.clone(),
            sessions_total: s.sessions_total,
            sessions_active: s.sessions_active,
            sessions_available: s.sessions_available,
            health_score: s.health_score,
            health_status: s.health_status.into(),
            acquisitions: s.acquisitions,
            releases: s.releases,
            hits: s.hits,
            misses: s.misses,
            timeouts: s.timeouts,
            evictions: s.evictions,
        }
    }
}

/// One server's pool health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolHealthView {
    /// The server id.
    pub server_id: String,
    /// Health status.
    pub status: Health,
    /// Score in percent; null before any operation.
    pub score: Option<u8>,
    /// Sessions open.
    pub total: u32,
    /// Sessions in use.
    pub active: u32,
    /// Sessions free.
    pub available: u32,
    /// `hits / (hits + misses)` since start, 0 to 1; 0 before any acquire.
    pub hit_rate: f64,
    /// Each endpoint's health and circuit breaker.
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint's health and circuit breaker state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndpointHealth {
    /// The URL, redacted (`https://***@host/mcp`).
    pub url: String,
    /// Health status (`unhealthy` while its circuit is not closed).
    pub status: Health,
    /// Score in percent over the last 5 minutes; null before any operation; 0 while its
    /// circuit is not closed.
    pub score: Option<u8>,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// The last failure seen on it, in words (URLs redacted); null before any, and for callers
    /// without the admin role (the words may quote the upstream, such as a stdio server's
    /// last stderr line).
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    pub last_error_age_secs: Option<f64>,
}

/// A strategy: what it does and when to pick it (docs/strategies.md).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StrategyInfo {
    /// Its configuration name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// When to pick it.
    pub when_to_use: String,
}
/// One upstream session of a server. No identity: the key is an 8-character hash prefix.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionInfoBody {
    /// First 8 hex characters of the SHA-256 of the session's pool key (user, identity,
    /// server, transport); sessions of one key share it.
    pub key: String,
    /// The session's number within its key.
    pub session: u64,
    /// `streamable_http`, `sse` or `websocket`.
    pub transport: String,
    /// Index of its endpoint in the server's list; null while retiring.
    pub endpoint: Option<u32>,
    /// Its endpoint's URL, redacted; null while retiring.
    pub url: Option<String>,
    /// Seconds since it was created.
    pub age_secs: f64,
    /// Seconds since its last lease returned (0 while leased), at the pool's cleanup
    /// interval's granularity.
    pub idle_secs: f64,
    /// Leases it has served.
    pub use_count: u64,
    /// Leases out on it now.
    pub in_flight: u32,
    /// `idle`, `leased`, `checking` (health check), `probing` (after an abandoned call) or
    /// `retiring` (closes when its last lease returns).
    pub state: String,
}

impl From<&SessionInfo> for SessionInfoBody {
    fn from(s: &SessionInfo) -> Self {
        let state = match s.state {
            SessionState::Idle => "idle",
            SessionState::Leased => "leased",
            SessionState::Checking => "checking",
            SessionState::Probing => "probing",
            _ => "retiring",
        };
        Self {
            key: s.key.clone(),
            session: s.session,
            transport: s.transport.to_string(),
            endpoint: s.endpoint.map(|i| i as u32),
            url: s.url.clone(),
            age_secs: s.age_secs,
            idle_secs: s.idle_secs,
            use_count: s.use_count,
            in_flight: s.in_flight,
            state: state.to_owned(),
        }
    }
}

/// The body of `POST /servers/{id}/pool/resize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// The new target size, within the pool's [min_size, max_size] (at most 1-1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub size: u64,
}
