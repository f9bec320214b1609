//! The handlers of the server routes: list, read, create, replace and delete servers.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use mcp_pool::{
    ServerId,
    traits::{REDACTED, ServerRecord, redact_url},
};

use super::server_bodies::{
    AccessBody, CredentialsBody, Current, EndpointInfo, ServerBody, ServerInfo,
};
use crate::{
    AppState,
    auth::{Admin, Caller},
    error::{ApiError, ApiJson, ErrorBody},
    registry::RegistryError,
};

pub(super) fn server_id(id: &str) -> Result<ServerId, ApiError> {
    ServerId::new(id).map_err(|_| ApiError::server_not_found(id))
}

/// Who looks at a server: how much of it they see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Viewer {
    /// Also where its credential comes from, who may use it and its stdio endpoints' commands.
    Admin,
    /// The rest.
    User,
}

impl Viewer {
    /// The viewer `caller` is.
    fn of(caller: &Caller) -> Self {
        if caller.admin {
            Self::Admin
        } else {
            Self::User
        }
    }
}

/// `viewer`'s view of server `r`.
fn server_info(state: &AppState, r: &ServerRecord, viewer: Viewer) -> ServerInfo {
    let admin = viewer == Viewer::Admin;
    let pool = state.registry.pool_in_force(r);
    let files = state.registry.file_settings(&r.id);
    ServerInfo {
        id: r.id.to_string(),
        endpoints: r
            .endpoints
            .iter()
            .map(|e| {
                let stdio = e.stdio.as_deref().filter(|_| admin);
                EndpointInfo {
                    url: redact_url(&e.url).into_owned(),
                    transport: e.transport.to_string(),
                    weight: e.weight,
                    lifecycle: e.lifecycle.as_str().to_owned(),
                    command: stdio.map(|c| c.command.clone()),
                    args: stdio.map(|c| c.args.clone()),
                    env: stdio.map(|c| {
                        c.env
                            .keys()
                            .map(|name| (name.clone(), REDACTED.to_owned()))
                            .collect()
                    }),
                    cwd: stdio.and_then(|c| c.cwd.clone()),
                }
            })
            .collect(),
        pooling_enabled: pool.enabled,
        strategy: pool.strategy.as_str().to_owned(),
        pool: (&pool).into(),
        name: r.name.clone(),
        enabled: r.enabled,
        credentials: r
            .credentials
            .as_ref()
            .filter(|_| admin)
            .map(|c| CredentialsBody {
                header: c.header.clone(),
                env: c.env.clone(),
            }),
        forward_token: r.forward_token,
        access: r.access.as_ref().filter(|_| admin).map(|a| AccessBody {
            users: a.users.clone(),
            groups: a.groups.clone(),
        }),
        call_timeout: files.call_timeout.as_secs(),
        client_capabilities: files
            .capability_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(id) => ApiError::server_not_found(id.as_str()),
            RegistryError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RegistryError::Pool(e) => e.into(),
            RegistryError::Credentials { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            RegistryError::Backend(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

/// List the servers, disabled ones included.
#[utoipa::path(get, path = "/servers", tag = "servers",
    responses((status = 200, body = Vec<ServerInfo>), (status = 401, body = ErrorBody)))]
pub async fn list_servers(State(state): State<AppState>, caller: Caller) -> Json<Vec<ServerInfo>> {
    let records = state.registry.list().await;
    Json(
        records
            .iter()
            .filter(|r| caller.may_use(&state.registry, &r.id))
            .map(|r| server_info(&state, r, Viewer::of(&caller)))
            .collect(),
    )
}

/// One server.
#[utoipa::path(get, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_server(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ServerInfo>, ApiError> {
    let sid = usable(&state, &caller, &id)?;
    let record = state
        .registry
        .get(&sid)
        .await
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json(server_info(&state, &record, Viewer::of(&caller))))
}

/// The server `id` names, when the caller may use it; else 404 as for an unknown server (a
/// user learns nothing of servers they may not use).
pub(super) fn usable(state: &AppState, caller: &Caller, id: &str) -> Result<ServerId, ApiError> {
    let sid = server_id(id)?;
    if caller.may_use(&state.registry, &sid) {
        Ok(sid)
    } else {
        Err(ApiError::server_not_found(id))
    }
}

/// Refuses endpoint URLs (with their index in the body) whose host is an address the
/// operator's policy denies ([`crate::policy::UpstreamPolicy`]): 422 naming the endpoint, the
/// address and the network.
async fn check_upstreams(
    state: &AppState,
    urls: impl IntoIterator<Item = (usize, &str)>,
) -> Result<(), ApiError> {
    for (i, url) in urls {
        let Ok(url) = url::Url::parse(url) else {
            continue; // refused by Endpoint::new; stdio endpoints have no host
        };
        if let Err(reason) = state.policy.upstream.check_url(&url).await {
            return Err(ApiError::unprocessable(format!(
                "endpoints[{i}].url is not allowed: {reason}"
            )));
        }
    }
    Ok(())
}

/// Create a server: persisted in the state backend, its pool created at once (when enabled).
/// Fields the body leaves out take their defaults (see `ServerBody`); stdio endpoints are
/// refused (they come from the configuration file).
#[utoipa::path(post, path = "/servers", tag = "servers",
    request_body = ServerBody,
    responses((status = 201, body = ServerInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn create_server(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<ServerBody>,
) -> Result<(StatusCode, Json<ServerInfo>), ApiError> {
    check_upstreams(&state, body.new_urls(None)).await?;
    let record = body.into_record(None, None, |id| state.registry.file_settings(id))?;
    state.registry.create(record.clone()).await?;
    tracing::info!(server = %record.id, enabled = record.enabled, "server created");
    Ok((
        StatusCode::CREATED,
        Json(server_info(&state, &record, Viewer::Admin)),
    ))
}

/// Change a server: the fields the body names, every other one kept (absent: kept; `null`:
/// back to its default; see `ServerBody` for why). A `GET /servers/{id}` body sent back
/// unchanged changes nothing: masked secrets (`***` in a URL or a stdio `env` value) stand
/// for the stored values, and read-only fields must agree with the server (422 otherwise).
/// A changed endpoint (URL, transport, weight) or credentials reference drains its pool; a
/// changed `name` alone does not; `enabled: false` removes its pool, and its record keeps the
/// pool config in force, which `enabled: true` brings back.
#[utoipa::path(put, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    request_body = ServerBody,
    responses((status = 200, body = ServerInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn replace_server(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ServerBody>,
) -> Result<Json<ServerInfo>, ApiError> {
    let sid = server_id(&id)?;
    let before = state
        .registry
        .get(&sid)
        .await
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    // Checked before the registry's writes are held (a name may take a DNS lookup). A URL the
    // server had then was checked when it came, so what the update keeps or adds is checked.
    check_upstreams(&state, body.new_urls(Some(&before))).await?;
    let files = state.registry.file_settings(&sid);
    let record = state
        .registry
        .update(&sid, |record, pool| {
            body.into_record(Some(&sid), Some(Current { record, pool }), |_| files)
        })
        .await?;
    if !record.enabled {
        // Its downstream sessions end with its pool.
        state.downstream.forget(&sid);
    }
    tracing::info!(server = %sid, enabled = record.enabled, "server replaced");
    Ok(Json(server_info(&state, &record, Viewer::Admin)))
}

/// Delete a server: its record and saved pool config; its pool is drained and removed.
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete_server(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let sid = server_id(&id)?;
    state.registry.delete(&sid).await?;
    state.downstream.forget(&sid);
    tracing::info!(server = %sid, "server deleted");
    Ok(StatusCode::NO_CONTENT)
}
