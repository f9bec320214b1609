//! `mcp-pool-gateway`: an MCP gateway on [`mcp_pool`] — a REST API for servers and pools
//! after ContextForge's ([`rest`]), HS256 JWT auth ([`auth`]), an OpenAPI 3.1 document
//! ([`ApiDoc`]) and Prometheus metrics ([`metrics`]). The [`router`] is a library item so it
//! can be embedded and tested in process; the binary only parses flags and serves it.
//!
//! The downstream MCP routes (`/servers/{id}/mcp|sse|ws`, [`downstream`]) nest into [`router`]
//! beside the REST routes and read the caller's [`auth::Claims`] from the request extensions
//! (`Claims::user` is the pool key's user). Servers live in the [`registry`]: loaded from the
//! configuration file (and `--demo`), changed through `POST/PUT/DELETE /servers`, persisted in
//! the state backend, and shared by several workers ([`workers`], [`cluster`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod rest;
pub mod serve;
pub mod workers;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use mcp_pool::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use rest::{health, pools, servers};

pub use config::{Auth, GatewayConfig};
pub use error::ConfigError;
pub use error::{ApiError, ErrorBody};
pub use registry::Registry;

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The pool: the servers and their runtime state.
    pub pool: Pool,
    /// The server registry over `pool` (built by [`Registry::load`]).
    pub registry: Registry,
    /// How requests are authenticated.
    pub auth: Auth,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// The Prometheus recorder's handle for `/metrics`; `None` answers 503. Injected so that
    /// tests building several routers in one process do not fight over the global recorder.
    pub metrics: Option<PrometheusHandle>,
    /// The hardening settings: upstream addresses, origins, downstream session limits
    /// ([`policy::Policy`]; the registry holds the credentials policy).
    pub policy: std::sync::Arc<policy::Policy>,
    /// The downstream MCP routes, the services of each server ([`downstream`]).
    pub downstream: std::sync::Arc<downstream::DownstreamRoutes>,
    /// The workers sharing the state backend, when it is shared ([`cluster`]): downstream
    /// sessions are claimed, and requests for another worker's sessions relayed to it.
    pub group: Option<std::sync::Arc<cluster::Group>>,
}

/// Logs the line an operator greps for when a server's pool is created or reconfigured, as
/// ContextForge logs it: `creating/updating pool for server {id} with strategy=…,
/// min_size=…, max_size=…`.
pub fn log_pool_update(server: &mcp_pool::ServerId, config: &mcp_pool::PoolConfig) {
    tracing::info!(
        "creating/updating pool for server {server} with strategy={}, min_size={}, max_size={}",
        config.strategy,
        config.min_size,
        config.max_size
    );
}

impl AppState {
    /// The state of a gateway over `pool` and its `registry` with `auth`: bodies up to 4 MiB,
    /// no `/metrics` recorder, the default [`policy::Policy`], no downstream session yet.
    pub fn new(pool: Pool, registry: Registry, auth: Auth) -> Self {
        Self {
            pool,
            registry,
            auth,
            max_body_bytes: config::DEFAULT_MAX_BODY_BYTES,
            metrics: None,
            policy: Default::default(),
            downstream: Default::default(),
            group: None,
        }
    }
}

/// The OpenAPI 3.1 document of the REST API, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "mcp-pool-gateway", description = "REST API of the mcp-pool gateway"),
    paths(
        servers::list_servers, servers::get_server, servers::create_server,
        servers::replace_server, servers::delete_server, pools::get_pool_config,
        pools::put_pool_config, pools::pool_stats, pools::all_pool_stats, pools::pools_health,
        pools::strategies, pools::drain, health::health, health::ready, health::metrics,
        openapi_json, pools::sessions, pools::resize, pools::reset
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// This document, OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

/// The gateway's router: every REST route and the Admin UI's pages ([`admin`]), auth on all
/// but `/health`, `/ready` and the UI's static files, bodies
/// limited to `state.max_body_bytes` (413), unknown routes 404 and wrong methods 405, each
/// as `{"detail": …}`.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route(
            "/servers",
            get(servers::list_servers).post(servers::create_server),
        )
        .route("/servers/pools", get(pools::all_pool_stats))
        .route("/servers/pools/health", get(pools::pools_health))
        .route("/servers/pools/strategies", get(pools::strategies))
        .route(
            "/servers/{id}",
            get(servers::get_server)
                .put(servers::replace_server)
                .delete(servers::delete_server),
        )
        .route(
            "/servers/{id}/pool/config",
            get(pools::get_pool_config).put(pools::put_pool_config),
        )
        .route("/servers/{id}/pool/stats", get(pools::pool_stats))
        .route("/servers/{id}/pool/drain", post(pools::drain))
        .route("/servers/{id}/mcp", any(downstream::handle))
        .route("/servers/{id}/sse", get(downstream::handle_legacy))
        .route("/servers/{id}/message", post(downstream::handle_legacy))
        .route("/servers/{id}/ws", get(downstream::handle_legacy))
        .route("/servers/{id}/pool/sessions", get(pools::sessions))
        .route("/servers/{id}/pool/resize", post(pools::resize))
        .route("/servers/{id}/pool/reset", post(pools::reset))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi_json));
    let protected = match &state.auth {
        Auth::Required(verifier) => protected.route_layer(middleware::from_fn_with_state(
            verifier.clone(),
            auth::require_bearer,
        )),
        Auth::Disabled => protected,
    };
    let limit = state.max_body_bytes;
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(admin::routes())
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .layer(middleware::from_fn_with_state(limit, body_limit))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(metrics::track))
        .with_state(state)
}

/// 413 at once for a declared `Content-Length` above the limit; bodies without one are cut
/// by `DefaultBodyLimit` and answered by [`error::ApiJson`].
async fn body_limit(State(limit): State<usize>, mut request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return error::too_large(limit).into_response();
    }
    request.extensions_mut().insert(error::BodyLimit(limit));
    next.run(request).await
}
