//! Pool operations of the REST API: a server's sessions, resize and reset.

use axum::{
    Json,
    extract::{Path, State},
};
use mcp_pool::{PoolConfig, ServerId, SessionInfo, SessionState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AppState,
    api::{PoolConfigUpdate, PoolConfigView, StatusBody},
    error::{ApiError, ApiJson, ErrorBody},
};

/// One upstream session of a server. No identity: the key is an 8-character hash prefix.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
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

impl From<&SessionInfo> for SessionView {
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
    responses((status = 200, body = Vec<SessionView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn sessions(
    State(state): State<AppState>,
    _: crate::auth::Admin,
    Path(id): Path<String>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sid = ServerId::new(&id).map_err(|_| ApiError::server_not_found(&id))?;
    let sessions = state.pool.sessions(&sid)?;
    Ok(Json(sessions.iter().map(SessionView::from).collect()))
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
    crate::api::save_pool_config(&state, &sid, next).await
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
