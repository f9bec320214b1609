//! The axum handlers of the downstream MCP routes: `/servers/{id}/mcp` ([`handle`]) and the
//! HTTP+SSE and WebSocket routes ([`handle_legacy`]). Before a request reaches its server's
//! rmcp service they check the origin and the caller's access, that a POST body is JSON-RPC,
//! that a session id is the caller's and its conversation not lost, and the user's session
//! count; a session another worker holds is dispatched to it ([`crate::cluster`]).

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use mcp_pool::{Principal, ServerId};
use rmcp::model::{ClientRequest, ErrorCode, RequestId};
use tower::ServiceExt as _;

use super::{
    caller::{Authorization, Caller, slot_holder},
    routes::ServerRoutes,
    sessions::{SESSION_HEADER, SessionSlot, conversation_lost, record_lost},
};
use crate::{ApiError, AppState, auth::Claims, cluster::Relayed};

/// The words of a refused session.
fn session_limit_words(held: u32, limit: u32) -> String {
    format!(
        "Too many MCP sessions: this user holds {held} open downstream sessions, the limit \
         (DOWNSTREAM_SESSIONS_PER_USER) is {limit}; end one (HTTP DELETE of its session) or \
         wait for idle ones to expire"
    )
}

/// Counts a refused downstream session ([`crate::metrics::SESSIONS_REFUSED_TOTAL`]).
fn count_refusal(transport: &'static str) {
    ::metrics::counter!(crate::metrics::SESSIONS_REFUSED_TOTAL, "transport" => transport)
        .increment(1);
}

/// `ANY /servers/{id}/mcp`: the server's streamable HTTP route. 404 `{"detail"}` for a
/// server the pool does not know, and for a session id that is not the caller's; a `DELETE`
/// that ends a session answers 200.
pub(crate) async fn handle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (server, routes) = match admitted(&state, &id, &request) {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    let Caller {
        owner, principal, ..
    } = Caller::of(
        &state.registry,
        &server,
        Authorization::under(&state.auth),
        request.headers(),
        request.extensions(),
    );
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = request.method().clone();
    let delete = method == http::Method::DELETE;
    if let Some(session) = &session {
        let caller = (owner, principal);
        if let Err(refused) = check_session(&state, &server, &routes, session, caller, delete).await
        {
            return refused;
        }
    }
    let (mut request, initialize) = match checked_json_rpc(request, state.max_body_bytes).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    // A new session counts against its user from its `initialize` on; the slot is kept by the
    // session's Proxy, and comes back when the answer created no session.
    let slot = match (&session, initialize) {
        (None, Some(id)) => match reserve_slot(&state, &server, owner, id) {
            Ok(slot) => {
                request.extensions_mut().insert(slot.clone());
                Some(slot)
            }
            Err(refused) => return refused.into_response(),
        },
        _ => None,
    };
    // A session another worker holds, or held before it died ([`crate::cluster`]).
    let request = match (&state.group, &session) {
        (Some(group), Some(id)) if !routes.holds(id).await => {
            if request.extensions().get::<Relayed>().is_some() {
                // Claimed by this worker but ended here: the claim goes too.
                group.release(id);
                return ApiError::new(StatusCode::NOT_FOUND, "Session not found").into_response();
            }
            match group.dispatch_to_owner(&state, &server, id, request).await {
                Ok(response) => return response,
                Err(adopted) => adopted,
            }
        }
        _ => request,
    };
    let response = routes.service.handle(request).await;
    record_sessions(&state, &routes, session, &method, owner, slot, &response).await;
    let mut response = response.map(Body::new);
    // rmcp answers a DELETE that ended the session with 202 Accepted; the official SDKs'
    // servers answer 200, and the Python SDK client logs any status but 200 and 204 as a
    // failed session termination.
    if delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// Refuses a request for streamable HTTP `session` of another owner than the caller's
/// (`(owner, principal)`), and one whose conversation's upstream session is gone (the MCP
/// spec's 404: the client initializes again), which ends the session: never continued on a
/// fresh upstream session. A `delete` is let through to end the session.
async fn check_session(
    state: &AppState,
    server: &ServerId,
    routes: &ServerRoutes,
    session: &str,
    (owner, principal): (Principal, Principal),
    delete: bool,
) -> Result<(), Response> {
    let session_owner = routes.sessions.owners.lock().get(session).copied();
    if session_owner.is_some_and(|session_owner| session_owner != owner) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Session not found").into_response());
    }
    let slot = routes
        .sessions
        .slots
        .lock()
        .get(session)
        .and_then(|w| w.upgrade());
    let Some(slot) = slot.filter(|_| !delete) else {
        return Ok(());
    };
    let Some(reason) = conversation_lost(&state.pool, server, principal, &slot) else {
        return Ok(());
    };
    routes.sessions.slots.lock().remove(session);
    routes.sessions.owners.lock().remove(session);
    if let Some(group) = &state.group {
        group.release(session);
    }
    if reason != "rebound" {
        record_lost(server, reason);
    }
    SessionSlot(slot).end_session().await;
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "Session not found: its upstream session was lost ({reason}), and the \
             conversation's server-side state with it; initialize a new session"
        ),
    )
    .into_response())
}

/// A slot for the session `initialize` request `id` of `owner` opens, or the JSON-RPC error
/// that refuses it: the user is at `DOWNSTREAM_SESSIONS_PER_USER`.
fn reserve_slot(
    state: &AppState,
    server: &ServerId,
    owner: Principal,
    id: RequestId,
) -> Result<SessionSlot, axum::Json<serde_json::Value>> {
    let limit = state.policy.sessions.per_user;
    state
        .downstream
        .slots
        .reserve(slot_holder(owner), limit)
        .map_err(|held| {
            count_refusal("streamable_http");
            tracing::warn!(server = %server, limit, "downstream session refused: a user is at DOWNSTREAM_SESSIONS_PER_USER");
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": SESSION_LIMIT_CODE,
                    "message": session_limit_words(held, limit),
                    "data": {"limit": limit, "setting": "DOWNSTREAM_SESSIONS_PER_USER"},
                },
            });
            axum::Json(body)
        })
}

/// After the `response` to a request of `owner` (for `session`, if any, with `method`):
/// records who owns the session it created, binds the new session to its `slot`, forgets the
/// sessions that ended, and claims or releases them in the workers' group.
async fn record_sessions<B>(
    state: &AppState,
    routes: &ServerRoutes,
    session: Option<String>,
    method: &http::Method,
    owner: Principal,
    slot: Option<SessionSlot>,
    response: &http::Response<B>,
) {
    let (ended, claimed) = routes.record_owner(session, method, owner, response);
    if let (Some(slot), Some(created)) = (slot, &claimed) {
        slot.bind(&routes.manager, &routes.sessions, created);
    }
    for ended in &ended {
        routes.sessions.slots.lock().remove(ended);
    }
    if let Some(group) = &state.group {
        for session in &ended {
            group.release(session);
        }
        if let Some(created) = claimed {
            group.claim_new(&created).await;
        }
    }
}

/// The server `id` names and its routes, when `request` may reach them: 403 `{"detail"}` for a
/// browser origin that is not allowed ([`crate::policy::OriginPolicy`]), 404 `{"detail":
/// "Server not found"}` for a server the pool does not know and for one the caller may not
/// use (a user learns nothing of servers they may not use). A request relayed by another
/// worker was checked there.
fn admitted(
    state: &AppState,
    id: &str,
    request: &Request,
) -> Result<(ServerId, ServerRoutes), ApiError> {
    if let Err(origin) = state.policy.origins.check(request.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: the origin {origin:?} may not reach the MCP routes (the MCP \
                 transport spec requires servers to validate Origin); an operator can list it \
                 in ALLOWED_ORIGINS"
            ),
        ));
    }
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "Server not found");
    let server = ServerId::new(id)
        .ok()
        .filter(|s| state.pool.server_config(s).is_some())
        .ok_or_else(not_found)?;
    let extensions = request.extensions();
    let trusted = extensions.get::<Relayed>().is_some()
        || crate::auth::is_admin(state.auth.is_required(), extensions);
    if trusted || state.registry.may_use(&server, extensions.get::<Claims>()) {
        let routes = state.downstream.of_server(state, &server);
        Ok((server, routes))
    } else {
        Err(not_found())
    }
}

/// The JSON-RPC error code of a refused session: in the range JSON-RPC 2.0 §5.1 reserves for
/// implementation-defined server errors.
pub const SESSION_LIMIT_CODE: i32 = -32001;

/// `GET /servers/{id}/sse`, `POST /servers/{id}/message` and `GET /servers/{id}/ws`: the
/// server's HTTP+SSE (protocol 2024-11-05) and WebSocket routes; 404 `{"detail"}` for a
/// server the pool does not know. A session is its connection: it ends when the stream or
/// socket closes.
pub(crate) async fn handle_legacy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (server, routes) = match admitted(&state, &id, &request) {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    let mut request = request;
    // `GET /sse` and `GET /ws` open a session: it counts against its user while it lives.
    let slot = if request.method() == http::Method::GET {
        let owner = owner_of(&state, &server, &request);
        let limit = state.policy.sessions.per_user;
        match state.downstream.slots.reserve(slot_holder(owner), limit) {
            Ok(slot) => {
                // The WebSocket adapter keeps the upgrade request's parts for the socket's life.
                request.extensions_mut().insert(slot.clone());
                Some(slot)
            }
            Err(held) => {
                count_refusal(if request.uri().path().ends_with("/ws") {
                    "websocket"
                } else {
                    "sse"
                });
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    session_limit_words(held, limit),
                )
                .into_response();
            }
        }
    } else {
        None
    };
    let response = match routes.legacy.oneshot(request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    };
    match slot {
        // The event stream holds the slot until the session's stream ends.
        Some(slot) if response.status().is_success() => response.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            }))
        }),
        _ => response,
    }
}

/// A POST body that is not JSON gets a JSON-RPC parse error (-32700), and JSON that is no
/// JSON-RPC message an invalid-request error (-32600), both with HTTP 400 and `id: null` as
/// JSON-RPC 2.0 §5 says (rmcp would answer 415 in plain text); a body above the limit, 413.
/// Answers the request, and the id of the `initialize` request it carries, if it does.
async fn checked_json_rpc(
    request: Request,
    limit: usize,
) -> Result<(Request, Option<RequestId>), Response> {
    if request.method() != http::Method::POST {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(crate::error::too_large(limit).into_response());
    };
    let mut initialize = None;
    let invalid = match serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(&bytes) {
        Ok(rmcp::model::JsonRpcMessage::Request(request)) => {
            if matches!(request.request, ClientRequest::InitializeRequest(_)) {
                initialize = Some(request.id);
            }
            None
        }
        Ok(_) => None,
        Err(error) if error.is_syntax() || error.is_eof() => {
            Some((ErrorCode::PARSE_ERROR, format!("Parse error: {error}")))
        }
        Err(error) => Some((
            ErrorCode::INVALID_REQUEST,
            format!("Invalid Request: not a JSON-RPC 2.0 message of MCP: {error}"),
        )),
    };
    if let Some((code, message)) = invalid {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": code.0, "message": message},
        });
        return Err((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
    }
    Ok((Request::from_parts(parts, Body::from(bytes)), initialize))
}

/// Who owns the downstream session `request` to `server` opens or uses ([`Caller::owner`]).
fn owner_of(state: &AppState, server: &ServerId, request: &Request) -> Principal {
    Caller::of(
        &state.registry,
        server,
        Authorization::under(&state.auth),
        request.headers(),
        request.extensions(),
    )
    .owner
}
