//! The gateway's own routes: `/health`, `/ready` and `/metrics`.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AppState,
    auth::Admin,
    error::{ApiError, ErrorBody},
};

/// A short status answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    /// `healthy`, `ready`, `drained` or `reset`.
    pub status: String,
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
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
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
