//! The handlers of the pool routes: a server's pool configuration, statistics, upstream
//! sessions, drain, resize and reset; every pool's statistics and health; the strategies.

use axum::{
    Json,
    extract::{Path, State},
};
use mcp_pool::{PoolConfig, ServerId, ServerStats, StrategyKind};

use super::{
    health::StatusBody,
    pool_bodies::{
        EndpointHealth, PoolConfigUpdate, PoolConfigView, PoolHealthView, PoolStatsView,
        ResizeBody, SessionInfoBody, StrategyInfo,
    },
    servers::{server_id, usable},
};
use crate::{
    AppState,
    auth::{Admin, Caller},
    error::{ApiError, ApiJson, ErrorBody},
};

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

/// A server's pool configuration.
#[utoipa::path(get, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = PoolConfigView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_pool_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let config = state
        .pool
        .server_config(&usable(&state, &caller, &id)?)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json((&config).into()))
}

/// Change a server's pool configuration; saved in the state backend and applied at once.
#[utoipa::path(put, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    request_body = PoolConfigUpdate,
    responses((status = 200, body = PoolConfigView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_pool_config(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(update): ApiJson<PoolConfigUpdate>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let sid = server_id(&id)?;
    let current = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    let next = update.apply(&current)?;
    crate::log_pool_update(&sid, &next);
    save_pool_config(&state, &sid, next).await
}

/// Saves `next` for `sid` (the backend, then this pool) and answers what the pool now runs.
pub(crate) async fn save_pool_config(
    state: &AppState,
    sid: &ServerId,
    next: PoolConfig,
) -> Result<Json<PoolConfigView>, ApiError> {
    state.pool.save_pool_config(sid, next).await?;
    let applied = state
        .pool
        .server_config(sid)
        .ok_or_else(|| ApiError::server_not_found(sid.as_str()))?;
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
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PoolStatsView>, ApiError> {
    usable(&state, &caller, &id)?;
    let (stats, config) = server_stats(&state, &id)?;
    if !config.enabled {
        return Err(ApiError::pooling_disabled());
    }
    let mut view = PoolStatsView::from(&stats);
    view.enabled = true;
    Ok(Json(view))
}

/// The statistics of every server `caller` may use.
fn visible_servers(state: &AppState, caller: &Caller) -> Vec<mcp_pool::ServerStats> {
    let mut servers = state.pool.stats().servers;
    servers.retain(|s| caller.may_use(&state.registry, &s.server));
    servers
}

/// Every server's pool statistics.
#[utoipa::path(get, path = "/servers/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolStatsView>), (status = 401, body = ErrorBody)))]
pub async fn all_pool_stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Json<Vec<PoolStatsView>> {
    Json(
        visible_servers(&state, &caller)
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
pub async fn pools_health(
    State(state): State<AppState>,
    caller: Caller,
) -> Json<Vec<PoolHealthView>> {
    Json(
        visible_servers(&state, &caller)
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
                        // The words may quote an upstream (a stdio server's last stderr
                        // line): an operator's, not every user's.
                        last_error: e.last_error.clone().filter(|_| caller.admin),
                        last_error_age_secs: e.last_error_age_secs.filter(|_| caller.admin),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The built-in strategies (docs/strategies.md).
#[utoipa::path(get, path = "/servers/pools/strategies", tag = "pools",
    responses((status = 200, body = Vec<StrategyInfo>), (status = 401, body = ErrorBody)))]
pub async fn strategies() -> Json<Vec<StrategyInfo>> {
    let rows: [(StrategyKind, &str, &str); 6] = [
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
        (
            StrategyKind::PeakEwma,
            "the session whose endpoint answered fastest lately (peak EWMA of lease times), \
             weighted by its leases in flight",
            "one endpoint of the server can turn slow (a busy replica, a far region)",
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
    responses((status = 200, body = StatusBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<StatusBody>, ApiError> {
    state.pool.drain_server(&server_id(&id)?)?;
    Ok(Json(StatusBody {
        status: "drained".into(),
    }))
}

/// The id and configuration of a server with pooling on: 404 unknown, 503 pooling off.
pub(crate) fn pooled_server(
    state: &AppState,
    id: &str,
) -> Result<(ServerId, PoolConfig), ApiError> {
    let sid = ServerId::new(id).map_err(|_| ApiError::server_not_found(id))?;
    let config = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(id))?;
    if !config.enabled {
        return Err(ApiError::pooling_disabled());
    }
    Ok((sid, config))
}

/// A server's upstream sessions now, pooled or per-request.
#[utoipa::path(get, path = "/servers/{id}/pool/sessions", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = Vec<SessionInfoBody>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn sessions(
    State(state): State<AppState>,
    _: crate::auth::Admin,
    Path(id): Path<String>,
) -> Result<Json<Vec<SessionInfoBody>>, ApiError> {
    let sid = ServerId::new(&id).map_err(|_| ApiError::server_not_found(&id))?;
    let sessions = state.pool.sessions(&sid)?;
    Ok(Json(sessions.iter().map(SessionInfoBody::from).collect()))
}

/// Set a server's pool `size` within its [min_size, max_size]; saved and applied like a
/// `PUT /servers/{id}/pool/config` of `size`.
#[utoipa::path(post, path = "/servers/{id}/pool/resize", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    request_body = ResizeBody,
    responses((status = 200, body = PoolConfigView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, description = "Pooling not enabled for server", body = ErrorBody)))]
pub async fn resize(
    State(state): State<AppState>,
    _: crate::auth::Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResizeBody>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let (sid, current) = pooled_server(&state, &id)?;
    let (min, max) = (current.min_size, current.max_size);
    if !(u64::from(min)..=u64::from(max)).contains(&body.size) {
        return Err(ApiError::unprocessable(format!(
            "size = {} is out of range: must be {min} to {max} (the pool's min_size to max_size)",
            body.size
        )));
    }
    let update = PoolConfigUpdate {
        size: Some(body.size),
        ..PoolConfigUpdate::default()
    };
    let next = update.apply(&current)?;
    tracing::info!("resizing pool for server {id} to size={}", next.size);
    save_pool_config(&state, &sid, next).await
}

/// Drain a server's pool (idle sessions close now, leased ones on release) and zero its
/// counters in `/pool/stats`; Prometheus counters keep counting.
#[utoipa::path(post, path = "/servers/{id}/pool/reset", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = StatusBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Pooling not enabled for server", body = ErrorBody)))]
pub async fn reset(
    State(state): State<AppState>,
    _: crate::auth::Admin,
    Path(id): Path<String>,
) -> Result<Json<StatusBody>, ApiError> {
    let (sid, _) = pooled_server(&state, &id)?;
    state.pool.reset_server(&sid)?;
    tracing::info!("reset pool for server {id}: drained, counters zeroed");
    Ok(Json(StatusBody {
        status: "reset".into(),
    }))
}
