//! The REST API handlers and their schemas (the seed setup guide's paths and field names).

use std::{str::FromStr, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use mcp_pool::{
    HealthStatus, PoolConfig, ServerId, ServerStats, StrategyKind, traits::check_range,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AppState,
    error::{ApiError, ApiJson, ErrorBody},
};

/// One endpoint (replica) of a server. The URL has passwords and secret query values masked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndpointInfo {
    /// The URL, redacted (`https://***@host/mcp`).
    pub url: String,
    /// `streamable_http`, `sse` or `websocket`.
    pub transport: String,
    /// Relative weight (1 by default).
    pub weight: u32,
}

/// A configured upstream server.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server id.
    pub id: String,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Whether pooling is enabled for it.
    pub pooling_enabled: bool,
    /// Its strategy's name.
    pub strategy: String,
}

/// A server's pool configuration. Durations are whole seconds; ranges as DESIGN §6.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolConfigView {
    /// Pooling on.
    pub enabled: bool,
    /// `round_robin`, `least_connections`, `sticky`, `weighted` or `none`.
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

/// The body of `PUT /servers/{id}/pool/config`: every field optional; absent fields keep
/// their current value. Durations in seconds.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfigUpdate {
    /// Pooling on.
    pub enabled: Option<bool>,
    /// `round_robin`, `least_connections`, `sticky`, `weighted` or `none`.
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
    /// `current` with the fields present replaced, every one range-checked.
    ///
    /// # Errors
    /// 422 naming the field, the value and the range; nothing is applied then.
    pub fn apply(&self, current: &PoolConfig) -> Result<PoolConfig, ApiError> {
        let bad = |e: mcp_pool::traits::ConfigError| ApiError::unprocessable(e.to_string());
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
        c.validate().map_err(bad)?;
        Ok(c)
    }
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
    /// Score in percent over the last 5 minutes; null before any operation.
    pub score: Option<u8>,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
}

/// A strategy: what it does and when to pick it (README "Choosing a strategy").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StrategyInfo {
    /// Its configuration name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// When to pick it.
    pub when_to_use: String,
}

/// A short status answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    /// `healthy`, `ready`, `drained` or `reset`.
    pub status: String,
}

fn server_id(id: &str) -> Result<ServerId, ApiError> {
    ServerId::new(id).map_err(|_| ApiError::server_not_found(id))
}

fn server_stats(state: &AppState, id: &str) -> Result<(ServerStats, PoolConfig), ApiError> {
    let sid = server_id(id)?;
    let config = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(id))?;
    let stats = state
        .pool
        .stats()
        .servers
        .into_iter()
        .find(|s| s.server == sid)
        .ok_or_else(|| ApiError::server_not_found(id))?;
    Ok((stats, config))
}

fn server_info(state: &AppState, s: &ServerStats) -> ServerInfo {
    ServerInfo {
        id: s.server.to_string(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| EndpointInfo {
                url: e.url.clone(),
                transport: e.transport.to_string(),
                weight: e.weight,
            })
            .collect(),
        pooling_enabled: state
            .pool
            .server_config(&s.server)
            .is_some_and(|c| c.enabled),
        strategy: s.strategy.clone(),
    }
}

/// List the configured servers.
#[utoipa::path(get, path = "/servers", tag = "servers",
    responses((status = 200, body = Vec<ServerInfo>), (status = 401, body = ErrorBody)))]
pub async fn list_servers(State(state): State<AppState>) -> Json<Vec<ServerInfo>> {
    let stats = state.pool.stats();
    Json(
        stats
            .servers
            .iter()
            .map(|s| server_info(&state, s))
            .collect(),
    )
}

/// One server.
#[utoipa::path(get, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_server(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ServerInfo>, ApiError> {
    let (stats, _) = server_stats(&state, &id)?;
    Ok(Json(server_info(&state, &stats)))
}

/// A server's pool configuration.
#[utoipa::path(get, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = PoolConfigView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_pool_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let config = state
        .pool
        .server_config(&server_id(&id)?)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json((&config).into()))
}

/// Change a server's pool configuration; saved in the state backend and applied at once.
#[utoipa::path(put, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    request_body = PoolConfigUpdate,
    responses((status = 200, body = PoolConfigView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_pool_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(update): ApiJson<PoolConfigUpdate>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let sid = server_id(&id)?;
    let current = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    let next = update.apply(&current)?;
    tracing::info!(
        "creating/updating pool for server {id} with strategy={}, min_size={}, max_size={}",
        next.strategy,
        next.min_size,
        next.max_size
    );
    state.pool.save_pool_config(&sid, next).await?;
    let applied = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json((&applied).into()))
}

/// A server's pool statistics.
#[utoipa::path(get, path = "/servers/{id}/pool/stats", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = PoolStatsView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Pooling not enabled for server", body = ErrorBody)))]
pub async fn pool_stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PoolStatsView>, ApiError> {
    let (stats, config) = server_stats(&state, &id)?;
    if !config.enabled {
        return Err(crate::ops::pooling_disabled());
    }
    let mut view = PoolStatsView::from(&stats);
    view.enabled = true;
    Ok(Json(view))
}

/// Every server's pool statistics.
#[utoipa::path(get, path = "/servers/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolStatsView>), (status = 401, body = ErrorBody)))]
pub async fn all_pool_stats(State(state): State<AppState>) -> Json<Vec<PoolStatsView>> {
    let stats = state.pool.stats();
    Json(
        stats
            .servers
            .iter()
            .map(|s| {
                let mut view = PoolStatsView::from(s);
                view.enabled = state
                    .pool
                    .server_config(&s.server)
                    .is_some_and(|c| c.enabled);
                view
            })
            .collect(),
    )
}

/// Every server's pool health.
#[utoipa::path(get, path = "/servers/pools/health", tag = "pools",
    responses((status = 200, body = Vec<PoolHealthView>), (status = 401, body = ErrorBody)))]
pub async fn pools_health(State(state): State<AppState>) -> Json<Vec<PoolHealthView>> {
    let stats = state.pool.stats();
    Json(
        stats
            .servers
            .iter()
            .map(|s| PoolHealthView {
                server_id: s.server.to_string(),
                status: s.health_status.into(),
                score: s.health_score,
                total: s.sessions_total,
                active: s.sessions_active,
                available: s.sessions_available,
                hit_rate: s.hit_rate,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| EndpointHealth {
                        url: e.url.clone(),
                        status: e.health_status.into(),
                        score: e.health_score,
                        circuit: e.circuit.to_owned(),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The five strategies (README "Choosing a strategy").
#[utoipa::path(get, path = "/servers/pools/strategies", tag = "pools",
    responses((status = 200, body = Vec<StrategyInfo>), (status = 401, body = ErrorBody)))]
pub async fn strategies() -> Json<Vec<StrategyInfo>> {
    let rows: [(StrategyKind, &str, &str); 5] = [
        (
            StrategyKind::RoundRobin,
            "rotates over sessions with free capacity; new sessions rotate over endpoints",
            "the server is stateless (every call stands alone) and replicas are alike",
        ),
        (
            StrategyKind::LeastConnections,
            "picks the session with the fewest leases in flight",
            "calls vary in duration (some tools are slow), session_concurrency > 1",
        ),
        (
            StrategyKind::Sticky,
            "binds each downstream session to one upstream session exclusively",
            "the server is stateful (a conversation builds state in its upstream session)",
        ),
        (
            StrategyKind::Weighted,
            "smooth weighted round robin by endpoint weight (2:1 gives A B A)",
            "replicas differ in capacity",
        ),
        (
            StrategyKind::None,
            "a fresh session per acquire, closed on release",
            "the server must never share a session, or you are migrating from per-request sessions",
        ),
    ];
    Json(
        rows.into_iter()
            .map(|(k, d, w)| StrategyInfo {
                name: k.as_str().to_owned(),
                description: d.to_owned(),
                when_to_use: w.to_owned(),
            })
            .collect(),
    )
}

/// Close a server's sessions (idle now, leased ones on release); the pool stays usable.
#[utoipa::path(post, path = "/servers/{id}/pool/drain", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = StatusBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusBody>, ApiError> {
    state.pool.drain_server(&server_id(&id)?)?;
    Ok(Json(StatusBody {
        status: "drained".into(),
    }))
}

/// Liveness.
#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, body = StatusBody)))]
pub async fn health() -> Json<StatusBody> {
    Json(StatusBody {
        status: "healthy".into(),
    })
}

/// Readiness: 200 once the pools are loaded, 503 once the pool is closed (shutting down).
#[utoipa::path(get, path = "/ready", tag = "health", security(()),
    responses((status = 200, body = StatusBody), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    if state.pool.is_closed() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: the pool is closed",
        ));
    }
    Ok(Json(StatusBody {
        status: "ready".into(),
    }))
}

/// Prometheus text exposition of the pool's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off (SESSION_POOL_METRICS_ENABLED=false)",
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
