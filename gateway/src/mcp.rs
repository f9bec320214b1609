//! The downstream MCP endpoints of each server (issue 11, item 3): `/servers/{id}/mcp` (rmcp's
//! streamable HTTP server: protocol 2025-03-26 to 2025-11-25 with gateway-issued
//! `Mcp-Session-Id`s, and 2026-07-28 without sessions), `/servers/{id}/sse` +
//! `/servers/{id}/message` (HTTP+SSE, 2024-11-05) and `/servers/{id}/ws` (WebSocket), the last
//! two on the transports crate's server adapters; the pool faces the upstream.
//!
//! Each downstream session gets its own `Proxy`; every request it receives is forwarded with
//! [`Pool::call`]: the principal is the JWT's user (`sub`, else `email`, else `user_id`) and the
//! request's identity headers, the sticky affinity is the proxy's own random id (one per
//! downstream session), and the lease is released when the upstream has answered. What the
//! upstream sends during the call travels back on the downstream request's stream:
//! - progress, with the downstream request's own progress token (the upstream saw the token the
//!   pool's session gave the call, so tokens and request ids never leak between leases sharing
//!   one upstream session);
//! - logging during the call;
//! - the upstream's requests (sampling, elicitation, roots), asked of the downstream client.
//!
//! A downstream `notifications/cancelled` cancels the request's context: the forwarding future
//! is dropped, and the pool tells the upstream (`notifications/cancelled`) and holds the
//! session until it answers a probe. A downstream session's end (DELETE, idle timeout) drops
//! its proxy, which unbinds its sticky upstream session.
//!
//! A downstream session id is bound to the principal that created it: a request carrying
//! another principal's `Mcp-Session-Id` gets HTTP 404, as an unknown session would (the MCP
//! spec's signal to re-initialize), so a leaked id is worth nothing to another user.
//! `*/list_changed` from any upstream session of the server reaches every downstream session
//! of it (debounced by the pool).
//!
//! Session-scoped state under pooling (the MCP spec scopes subscriptions, the log level and
//! roots to a session): a downstream session that creates state
//! scoped to the upstream session (`resources/subscribe`, `logging/setLevel`, and its roots
//! when it sends `notifications/roots/list_changed`) is pinned to the upstream session that
//! holds it ([`CallOptions::pin`]), under any strategy, so its later requests meet their own
//! state; what that upstream session sends outside calls reaches the downstream sessions
//! pinned to it — `resources/updated` only those subscribed to the URI, logging all of them —
//! and a request of the server outside calls (`roots/list`) is asked of the one pinned
//! downstream session that can answer, or answered with a JSON-RPC error. When the pinned
//! upstream session leaves the pool, the downstream session ends (HTTP 404 next).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use mcp_pool::{
    AcquireRequest, AffinityState, CallOptions, Conversation, Pool, PoolError, Principal,
    ServerEvent, ServerEventKind, ServerId, traits::ServerRequestHandler,
};
use mcp_pool_transports::server::{
    SseServer, SseServerConfig, WebSocketServer, WebSocketServerConfig,
};
use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        ClientRequest, ClientResult, DiscoverResult, ErrorCode, GetExtensions, GetMeta,
        InitializeRequestParams, InitializeResult, ProgressToken, Request as McpRequest, RequestId,
        RequestMetaObject, RequestNoParam, RequestOptionalParam, ServerNotification, ServerRequest,
        ServerResult,
    },
    service::{NotificationContext, OriginatingRequestId, Peer, RequestContext, ServiceError},
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::{ApiError, AppState, Registry, auth::Claims};

/// Notifications of one call waiting to be relayed downstream; a slower client makes the
/// upstream session's reader wait (the pool's per-call sink is bounded too).
const RELAY_CAPACITY: usize = 64;

/// The streamable HTTP service of each server, created on the first request to its endpoint.
/// [`shutdown`](Self::shutdown) ends every downstream session.
#[derive(Default)]
pub struct McpEndpoints {
    servers: Mutex<HashMap<ServerId, ServerEndpoint>>,
    shutdown: CancellationToken,
    /// The downstream sessions each user holds in this worker, over all servers.
    slots: Arc<SessionSlots>,
}

/// The downstream sessions each user holds (`DOWNSTREAM_SESSIONS_PER_USER`): a streamable
/// HTTP session from its `initialize` until it ends (DELETE, idle timeout, shutdown), an
/// HTTP+SSE session while its stream is open, a WebSocket session while its socket is.
#[derive(Default)]
struct SessionSlots {
    held: Mutex<HashMap<Principal, u32>>,
}

/// One held downstream session of a user; the count goes down when the last clone drops.
/// Travels in the extensions of the request that opens the session, and is kept by what
/// lives as long as the session: the [`Proxy`] (streamable HTTP), the event stream (SSE), the
/// socket's request parts (WebSocket).
#[derive(Clone)]
struct SessionSlot(Arc<SlotGuard>);

struct SlotGuard {
    slots: Arc<SessionSlots>,
    user: Principal,
    /// The session's sticky affinity (its [`Proxy`]'s), set at its `initialize`.
    affinity: OnceLock<String>,
    /// Whether the pool was seen holding a binding for it: from then on, a binding gone is a
    /// conversation lost ([`conversation_lost`]).
    bound: std::sync::atomic::AtomicBool,
    /// Its Proxy found the conversation lost while forwarding: the session's next request ends
    /// it with a 404.
    lost: std::sync::atomic::AtomicBool,
    /// The streamable HTTP session this slot was taken for, once its id is known: removed
    /// from its manager when the session ends. rmcp's `LocalSessionManager` keeps the handle
    /// of a session whose worker ended on its idle timeout, so its id would go on answering
    /// as a live session's and its memory would stay.
    session: Mutex<Option<HeldSession>>,
}

/// A streamable HTTP session a slot was taken for: its manager, its server's sessions, its id.
type HeldSession = (Arc<LocalSessionManager>, Arc<Sessions>, String);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut held = self.slots.held.lock();
            if let Some(n) = held.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.user);
                }
            }
        }
        if let Some((manager, sessions, id)) = self.session.lock().take() {
            sessions.seats.lock().remove(&id);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    manager.sessions.write().await.remove(id.as_str());
                });
            }
        }
    }
}

impl SessionSlot {
    /// The slot belongs to session `id` of `manager`, which forgets it when the slot ends.
    fn bind(&self, manager: &Arc<LocalSessionManager>, sessions: &Arc<Sessions>, id: &str) {
        sessions
            .seats
            .lock()
            .insert(id.to_owned(), Arc::downgrade(&self.0));
        *self.0.session.lock() = Some((manager.clone(), sessions.clone(), id.to_owned()));
    }

    /// Whether the slot is a streamable HTTP session's, whose requests the endpoint checks
    /// before they reach the session ([`conversation_lost`]).
    fn is_http_session(&self) -> bool {
        self.0.session.lock().is_some()
    }

    /// Ends the streamable HTTP session this slot was taken for, if it is known: its id
    /// answers 404 once this returns.
    async fn end_session(&self) {
        let session = self.0.session.lock().clone();
        if let Some((manager, _, id)) = session {
            let id: rmcp::transport::streamable_http_server::session::SessionId = id.into();
            let _ = rmcp::transport::streamable_http_server::SessionManager::close_session(
                &*manager, &id,
            )
            .await;
        }
    }
}

/// Why the conversation of the downstream session holding `slot` is lost, if it is: the pool
/// holds no live binding for its affinity any more, after it was seen holding one. `upstream`
/// is the request's upstream principal.
fn conversation_lost(
    pool: &Pool,
    server: &ServerId,
    upstream: Principal,
    slot: &SlotGuard,
) -> Option<&'static str> {
    if slot.lost.load(Ordering::Relaxed) {
        return Some("rebound");
    }
    binding_lost(pool, server, upstream, slot.affinity.get()?, &slot.bound)
}

/// Why the binding of conversation `affinity` is gone, if it is: lost with its session, or no
/// longer known after `bound` recorded it was seen (a binding ends silently with an idle
/// session or its key). Sets `bound` when the pool holds the binding.
fn binding_lost(
    pool: &Pool,
    server: &ServerId,
    upstream: Principal,
    affinity: &str,
    bound: &std::sync::atomic::AtomicBool,
) -> Option<&'static str> {
    match pool.affinity_state(server, upstream, affinity) {
        Some(AffinityState::Bound(_)) => {
            bound.store(true, Ordering::Relaxed);
            None
        }
        Some(AffinityState::Lost(reason)) => Some(reason.as_str()),
        _ if bound.load(Ordering::Relaxed) => Some("gone"),
        _ => None,
    }
}

/// Logs and counts a downstream session ended because its conversation's upstream session was
/// lost ([`crate::metrics::SESSIONS_LOST_TOTAL`]).
fn record_lost(server: &ServerId, reason: &'static str) {
    tracing::warn!(
        server = %server,
        reason,
        "a downstream MCP session ended: its upstream session was lost, and the conversation's \
         server-side state with it; its client gets HTTP 404 and initializes again"
    );
    ::metrics::counter!(crate::metrics::SESSIONS_LOST_TOTAL, "server" => server.to_string(),
        "reason" => reason)
    .increment(1);
}

impl SessionSlots {
    /// A slot for one more session of `user`, or the number it holds at `limit`.
    fn reserve(self: &Arc<Self>, user: Principal, limit: u32) -> Result<SessionSlot, u32> {
        let mut held = self.held.lock();
        let n = held.entry(user).or_insert(0);
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(SessionSlot(Arc::new(SlotGuard {
            slots: self.clone(),
            user,
            affinity: OnceLock::new(),
            bound: Default::default(),
            lost: Default::default(),
            session: Mutex::new(None),
        })))
    }
}

/// Whom a downstream session counts against: the token's user when there is one (so that
/// varying identity headers does not open more), else the whole principal.
fn slot_owner(principal: Principal) -> Principal {
    if principal.user == mcp_pool::traits::Digest256::Anonymous {
        principal
    } else {
        Principal {
            identity: mcp_pool::traits::Digest256::Anonymous,
            ..principal
        }
    }
}

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

type McpService = StreamableHttpService<Proxy, LocalSessionManager>;

#[derive(Clone)]
struct ServerEndpoint {
    service: McpService,
    /// The streamable HTTP sessions (rmcp ends idle ones after 5 minutes).
    manager: Arc<LocalSessionManager>,
    /// `GET /servers/{id}/sse` + `POST /servers/{id}/message` (HTTP+SSE, 2024-11-05) and
    /// `GET /servers/{id}/ws` (WebSocket), served by the transports crate's adapters.
    legacy: Router,
    sessions: Arc<Sessions>,
    cancel: CancellationToken,
}

impl ServerEndpoint {
    /// Whether the streamable HTTP session `id` lives in this worker.
    async fn holds(&self, id: &str) -> bool {
        self.manager.sessions.read().await.contains_key(id)
    }

    /// Records who owns the session a request of `principal` (with `session` id, if any) used
    /// or created, after its `response`: the sessions that ended (to release) and the one it
    /// created (to claim).
    fn record_owner<B>(
        &self,
        session: Option<String>,
        delete: bool,
        principal: Principal,
        response: &http::Response<B>,
    ) -> (Vec<String>, Option<String>) {
        let mut owners = self.sessions.owners.lock();
        let mut ended = Vec::new();
        let mut claimed = None;
        match session {
            Some(session) if delete && response.status().is_success() => {
                owners.remove(&session);
                ended.push(session);
            }
            Some(session) if response.status().is_success() => {
                // A session restored after a takeover belongs to its first caller here.
                owners.entry(session).or_insert(principal);
            }
            Some(_) => {}
            None => {
                if let Some(created) = response
                    .headers()
                    .get(SESSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    owners.insert(created.to_owned(), principal);
                    claimed = Some(created.to_owned());
                    // Sessions that timed out never say so: forget their owners now and then.
                    if owners.len() > 64
                        && let Ok(live) = self.manager.sessions.try_read()
                        && owners.len() > 2 * live.len()
                    {
                        owners.retain(|id, _| {
                            let alive = live.contains_key(id.as_str());
                            if !alive {
                                ended.push(id.clone());
                            }
                            alive
                        });
                    }
                }
            }
        }
        (ended, claimed)
    }
}

/// The downstream sessions of one server.
#[derive(Default)]
struct Sessions {
    next: AtomicU64,
    /// Initialized sessions, for server-wide notifications.
    peers: Mutex<HashMap<u64, Peer<RoleServer>>>,
    /// Session id → the principal that created it.
    owners: Mutex<HashMap<String, Principal>>,
    /// Session id → its slot, while the session lives (weak: the session's Proxy holds it).
    seats: Mutex<HashMap<String, std::sync::Weak<SlotGuard>>>,
}

impl std::fmt::Debug for McpEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpEndpoints")
            .field("servers", &self.servers.lock().len())
            .finish()
    }
}

impl McpEndpoints {
    /// Ends every downstream session (graceful shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.servers.lock().clear();
    }

    /// Ends the downstream sessions of `server` (it was deleted or its endpoints changed).
    pub fn forget(&self, server: &ServerId) {
        if let Some(endpoint) = self.servers.lock().remove(server) {
            endpoint.cancel.cancel();
        }
    }

    /// The ids of every streamable HTTP session this worker holds, over all servers: the
    /// sessions whose claims it refreshes (crate::forward).
    pub async fn held_sessions(&self) -> Vec<String> {
        let managers: Vec<_> = self
            .servers
            .lock()
            .values()
            .map(|e| e.manager.clone())
            .collect();
        let mut held = Vec::new();
        for manager in managers {
            held.extend(
                manager
                    .sessions
                    .read()
                    .await
                    .keys()
                    .map(|id| id.to_string()),
            );
        }
        held
    }

    /// Ends the streamable HTTP session `id`, wherever it is (another worker holds it now).
    pub async fn close_session(&self, id: &str) {
        let managers: Vec<_> = self
            .servers
            .lock()
            .values()
            .map(|e| e.manager.clone())
            .collect();
        let id: rmcp::transport::streamable_http_server::session::SessionId = id.into();
        for manager in managers {
            if manager.sessions.read().await.contains_key(&id) {
                let _ = rmcp::transport::streamable_http_server::SessionManager::close_session(
                    &*manager, &id,
                )
                .await;
            }
        }
    }

    /// The number of initialized downstream sessions of `server`.
    pub fn sessions(&self, server: &ServerId) -> usize {
        self.servers
            .lock()
            .get(server)
            .map_or(0, |e| e.sessions.peers.lock().len())
    }

    fn endpoint(&self, state: &AppState, server: &ServerId) -> ServerEndpoint {
        let mut servers = self.servers.lock();
        if let Some(endpoint) = servers.get(server) {
            return endpoint.clone();
        }
        let cancel = self.shutdown.child_token();
        let sessions = Arc::new(Sessions::default());
        let mut config = StreamableHttpServerConfig::default()
            // The gateway is meant to be reached by name; DNS rebinding matters for servers on
            // a desktop, and the gateway's own auth covers it.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(state.max_body_bytes)
            .with_cancellation_token(cancel.clone());
        // Sessions taken over from a dead worker are restored by rmcp (crate::forward).
        config.session_store = state.group.as_ref().map(|group| {
            Arc::new(crate::forward::AdoptedSessions(group.clone()))
                as Arc<dyn rmcp::transport::streamable_http_server::session::store::SessionStore>
        });
        let factory = {
            let (registry, id, sessions) =
                (state.registry.clone(), server.clone(), sessions.clone());
            let auth_required = state.auth.is_required();
            move || {
                Ok(Proxy::new(
                    registry.clone(),
                    id.clone(),
                    auth_required,
                    sessions.clone(),
                ))
            }
        };
        let prefix = format!("/servers/{server}");
        // A message posted to an HTTP+SSE session is taken only from the caller that opened it.
        let owner = {
            let (registry, id) = (state.registry.clone(), server.clone());
            let auth_required = state.auth.is_required();
            move |parts: &http::request::Parts| {
                let owner = caller(
                    &registry,
                    &id,
                    auth_required,
                    &parts.headers,
                    &parts.extensions,
                )
                .owner;
                serde_json::to_string(&owner).ok()
            }
        };
        let sse = SseServer::new(
            factory.clone(),
            SseServerConfig::default()
                .with_paths(&format!("{prefix}/sse"), &format!("{prefix}/message"))
                .with_owner(owner)
                .with_shutdown(cancel.clone()),
        );
        let ws = WebSocketServer::new(
            factory.clone(),
            WebSocketServerConfig::default()
                .with_path(&format!("{prefix}/ws"))
                .with_shutdown(cancel.clone()),
        );
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive = Some(state.policy.sessions.idle_timeout);
        let manager = Arc::new(manager);
        let service = StreamableHttpService::new(factory, manager.clone(), config);
        if let Some(events) = state.pool.server_events(server) {
            tokio::spawn(fan_out(events, sessions.clone(), cancel.clone()));
        }
        let endpoint = ServerEndpoint {
            service,
            manager,
            legacy: sse.router().merge(ws.router()),
            sessions,
            cancel,
        };
        servers.insert(server.clone(), endpoint.clone());
        endpoint
    }
}

/// Relays the server's `*/list_changed` to every downstream session until the endpoint is
/// cancelled.
async fn fan_out(
    mut events: broadcast::Receiver<ServerEvent>,
    sessions: Arc<Sessions>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let notification = match event.kind {
            ServerEventKind::ToolsListChanged => {
                ServerNotification::ToolListChangedNotification(Default::default())
            }
            ServerEventKind::PromptsListChanged => {
                ServerNotification::PromptListChangedNotification(Default::default())
            }
            ServerEventKind::ResourcesListChanged => {
                ServerNotification::ResourceListChangedNotification(Default::default())
            }
            // `resources/updated` belongs to the upstream session that was subscribed: it
            // reaches the downstream sessions pinned to it ([`relay_out_of_call`]).
            _ => continue,
        };
        let peers: Vec<_> = sessions.peers.lock().values().cloned().collect();
        for peer in peers {
            let _ = peer.send_notification(notification.clone()).await;
        }
    }
}

/// `ANY /servers/{id}/mcp`: the server's streamable HTTP endpoint. 404 `{"detail"}` for a
/// server the pool does not know, and for a session id that is not the caller's; a `DELETE`
/// that ends a session answers 200.
pub(crate) async fn endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let server = match admitted(&state, &id, &request) {
        Ok(server) => server,
        Err(error) => return error.into_response(),
    };
    let endpoint = state.mcp.endpoint(&state, &server);
    let Caller {
        owner: principal,
        upstream,
        ..
    } = caller(
        &state.registry,
        &server,
        state.auth.is_required(),
        request.headers(),
        request.extensions(),
    );
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let delete = request.method() == http::Method::DELETE;
    if let Some(session) = &session {
        let owner = endpoint.sessions.owners.lock().get(session).copied();
        if owner.is_some_and(|owner| owner != principal) {
            return ApiError::new(StatusCode::NOT_FOUND, "Session not found").into_response();
        }
        // A conversation whose upstream session is gone is told so (the MCP spec's 404: the
        // client initializes again), never continued on a fresh upstream session.
        let seat = endpoint
            .sessions
            .seats
            .lock()
            .get(session)
            .and_then(|w| w.upgrade());
        if let Some(seat) = seat.filter(|_| !delete)
            && let Some(reason) = conversation_lost(&state.pool, &server, upstream, &seat)
        {
            endpoint.sessions.seats.lock().remove(session);
            endpoint.sessions.owners.lock().remove(session);
            if let Some(group) = &state.group {
                group.release(session);
            }
            if reason != "rebound" {
                record_lost(&server, reason);
            }
            SessionSlot(seat).end_session().await;
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "Session not found: its upstream session was lost ({reason}), and the \
                     conversation's server-side state with it; initialize a new session"
                ),
            )
            .into_response();
        }
    }
    let (mut request, initialize) = match checked_json_rpc(request, state.max_body_bytes).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    // A new session counts against its user from its `initialize` on; the slot is kept by the
    // session's Proxy, and comes back when the answer created no session.
    let mut slot = None;
    if let (None, Some(id)) = (&session, initialize) {
        let limit = state.policy.sessions.per_user;
        match state.mcp.slots.reserve(slot_owner(principal), limit) {
            Ok(reserved) => {
                request.extensions_mut().insert(reserved.clone());
                slot = Some(reserved);
            }
            Err(held) => {
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
                return axum::Json(body).into_response();
            }
        }
    }
    // A session another worker holds, or held before it died (crate::forward).
    let request = match (&state.group, &session) {
        (Some(group), Some(id)) if !endpoint.holds(id).await => {
            if request
                .extensions()
                .get::<crate::forward::Forwarded>()
                .is_some()
            {
                // Claimed by this worker but ended here: the claim goes too.
                group.release(id);
                return ApiError::new(StatusCode::NOT_FOUND, "Session not found").into_response();
            }
            match group.dispatch(&state, &server, id, request).await {
                Ok(response) => return response,
                Err(adopted) => adopted,
            }
        }
        _ => request,
    };
    let response = endpoint.service.handle(request).await;
    let (ended, claimed) = endpoint.record_owner(session, delete, principal, &response);
    if let (Some(slot), Some(created)) = (slot, &claimed) {
        slot.bind(&endpoint.manager, &endpoint.sessions, created);
    }
    for ended in &ended {
        endpoint.sessions.seats.lock().remove(ended);
    }
    if let Some(group) = &state.group {
        for session in &ended {
            group.release(session);
        }
        if let Some(created) = claimed {
            group.claim_new(&created).await;
        }
    }
    let mut response = response.map(Body::new);
    // rmcp answers a DELETE that ended the session with 202 Accepted; the official SDKs'
    // servers answer 200, and the Python SDK client logs any status but 200 and 204 as a
    // failed session termination.
    if delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// The server `id` names, when `request` may reach its MCP routes: 403 `{"detail"}` for a
/// browser origin that is not allowed ([`crate::policy::OriginPolicy`]), 404 `{"detail":
/// "Server not found"}` for a server the pool does not know and for one the caller may not
/// use (a user learns nothing of servers they may not use). A request forwarded by another
/// worker was checked there.
fn admitted(state: &AppState, id: &str, request: &Request) -> Result<ServerId, ApiError> {
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
    let trusted = extensions.get::<crate::forward::Forwarded>().is_some()
        || crate::auth::is_admin(state.auth.is_required(), extensions);
    if trusted || state.registry.may_use(&server, extensions.get::<Claims>()) {
        Ok(server)
    } else {
        Err(not_found())
    }
}

/// The JSON-RPC error code of a refused session: in the range JSON-RPC 2.0 §5.1 reserves for
/// implementation-defined server errors.
pub const SESSION_LIMIT_CODE: i32 = -32001;

/// `GET /servers/{id}/sse`, `POST /servers/{id}/message` and `GET /servers/{id}/ws`: the
/// server's HTTP+SSE (protocol 2024-11-05) and WebSocket endpoints; 404 `{"detail"}` for a
/// server the pool does not know. A session is its connection: it ends when the stream or
/// socket closes.
pub(crate) async fn legacy_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let server = match admitted(&state, &id, &request) {
        Ok(server) => server,
        Err(error) => return error.into_response(),
    };
    let endpoint = state.mcp.endpoint(&state, &server);
    let mut request = request;
    // `GET /sse` and `GET /ws` open a session: it counts against its user while it lives.
    let slot = if request.method() == http::Method::GET {
        let principal = owner_of(&state, &server, &request);
        let limit = state.policy.sessions.per_user;
        match state.mcp.slots.reserve(slot_owner(principal), limit) {
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
    let response = match endpoint.legacy.oneshot(request).await {
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

/// The MCP session header of streamable HTTP.
const SESSION_HEADER: &str = "mcp-session-id";

/// Who sent a downstream request, as the gateway sees it.
struct Caller {
    /// Who owns the downstream session: the JWT's user (`sub`, else `email`, else `user_id`)
    /// and the identity headers, without the gateway's JWT, so that a rotated token keeps its
    /// sessions.
    owner: Principal,
    /// The principal of the upstream lease: `owner`, or, on a server that forwards the
    /// gateway's token ([`ServerRecord::forward_token`](mcp_pool_traits::ServerRecord::forward_token)),
    /// the same with the token, which is then part of the pool key (DESIGN §2.11: what is sent
    /// upstream is part of the key).
    upstream: Principal,
    /// The headers the pool sees and forwards: with gateway auth on, `Authorization` (the
    /// gateway's JWT) only where the server forwards it.
    headers: http::HeaderMap,
}

/// Who owns the downstream session `request` to `server` opens or uses ([`Caller::owner`]).
fn owner_of(state: &AppState, server: &ServerId, request: &Request) -> Principal {
    caller(
        &state.registry,
        server,
        state.auth.is_required(),
        request.headers(),
        request.extensions(),
    )
    .owner
}

/// The [`Caller`] of a request with `headers` and `extensions` to `server`.
fn caller(
    registry: &Registry,
    server: &ServerId,
    auth_required: bool,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Caller {
    let pool = registry.pool();
    let user = extensions.get::<Claims>().and_then(Claims::user);
    let mut headers = headers.clone();
    let token = auth_required
        .then(|| headers.remove(http::header::AUTHORIZATION))
        .flatten();
    let owner = pool.principal(user, &headers);
    let upstream = match token {
        Some(token) if registry.forwards_token(server) => {
            headers.insert(http::header::AUTHORIZATION, token);
            pool.principal(user, &headers)
        }
        _ => owner,
    };
    Caller {
        owner,
        upstream,
        headers,
    }
}

/// One downstream session's handler: forwards each request through the pool.
pub(crate) struct Proxy {
    registry: Registry,
    pool: Pool,
    server: ServerId,
    /// The sticky affinity of this downstream session: random, never shown.
    affinity: String,
    /// Whether `Authorization` carries the gateway's JWT (see [`Caller`]).
    auth_required: bool,
    /// The owner of the first request; later requests of another owner are refused.
    principal: OnceLock<Principal>,
    /// The upstream's `initialize` result, advertised downstream.
    upstream: OnceLock<InitializeResult>,
    /// The server's downstream sessions; this one is `slot` in it once initialized.
    sessions: Arc<Sessions>,
    slot: u64,
    subscriptions: Arc<Mutex<HashSet<String>>>,
    /// The user's count of this session ([`SessionSlots`]), from `initialize` until dropped.
    held: OnceLock<SessionSlot>,
    /// Its conversation's upstream session was lost: every request is refused.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// The pool was seen holding its binding (see [`binding_lost`]); for sessions the endpoint
    /// does not check.
    bound: Arc<std::sync::atomic::AtomicBool>,
    /// The channel of its pinned upstream session's traffic outside calls, while the pool's
    /// pin holds its sender (weak here: it closes when the upstream session leaves).
    out_of_call: Mutex<Option<mpsc::WeakSender<ServerNotification>>>,
    /// Cancelled when the downstream session ends: its out-of-call relay stops quietly.
    ended: CancellationToken,
}

impl Proxy {
    fn new(
        registry: Registry,
        server: ServerId,
        auth_required: bool,
        sessions: Arc<Sessions>,
    ) -> Self {
        Self {
            pool: registry.pool().clone(),
            registry,
            server,
            affinity: uuid::Uuid::new_v4().simple().to_string(),
            auth_required,
            principal: OnceLock::new(),
            upstream: OnceLock::new(),
            slot: sessions.next.fetch_add(1, Ordering::Relaxed),
            sessions,
            subscriptions: Default::default(),
            held: OnceLock::new(),
            lost: Default::default(),
            bound: Default::default(),
            out_of_call: Mutex::new(None),
            ended: CancellationToken::new(),
        }
    }

    /// The caller of a downstream request: the principal and headers of its upstream lease. An
    /// owner other than the session's first is refused: a downstream session id is bound to the
    /// identity that created it.
    fn caller(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<(Principal, http::HeaderMap), ErrorData> {
        self.caller_of(&context.extensions)
    }

    /// [`caller`](Self::caller) of a message with `extensions` (a request's or a
    /// notification's).
    fn caller_of(
        &self,
        extensions: &rmcp::model::Extensions,
    ) -> Result<(Principal, http::HeaderMap), ErrorData> {
        let parts = extensions.get::<http::request::Parts>();
        let (headers, extensions) = match parts {
            Some(parts) => (&parts.headers, &parts.extensions),
            None => (&http::HeaderMap::new(), &http::Extensions::new()),
        };
        let caller = caller(
            &self.registry,
            &self.server,
            self.auth_required,
            headers,
            extensions,
        );
        if *self.principal.get_or_init(|| caller.owner) != caller.owner {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another identity",
                None,
            ));
        }
        Ok((caller.upstream, caller.headers))
    }

    /// Reads the upstream's `initialize` result from a pooled session of the caller, once per
    /// downstream session: what [`get_info`](ServerHandler::get_info) then advertises.
    async fn learn_upstream(&self, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        if self.upstream.get().is_some() {
            return Ok(());
        }
        let (principal, headers) = self.caller(context)?;
        let acquire = AcquireRequest::new(&self.server)
            .principal(principal)
            .headers(&headers)
            .downstream_session(&self.affinity);
        let lease = self
            .pool
            .acquire_with(acquire)
            .await
            .map_err(upstream_error)?;
        let info = lease
            .peer()
            .peer_info()
            .map_or_else(InitializeResult::default, |peer| {
                let mut info = InitializeResult::new(peer.capabilities.clone());
                info.protocol_version = peer.protocol_version.clone();
                if let Some(server) = &peer.server_info {
                    info.server_info = server.clone();
                }
                info.instructions = peer.instructions.clone();
                info
            });
        let _ = self.upstream.set(info);
        Ok(())
    }

    /// Forwards `request` and relays what belongs to it until the upstream answers, the
    /// downstream cancels, or the call fails.
    async fn forward(
        &self,
        mut request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let (principal, headers) = self.caller(&context)?;
        let method = request.method().to_owned();
        let started = Instant::now();
        let downstream_token = context.meta.get_progress_token();
        request.get_meta_mut().extend(forwarded_meta(&context.meta));

        let (sink, mut notifications) = mpsc::channel(RELAY_CAPACITY);
        if self.lost.load(Ordering::Relaxed) {
            return Err(conversation_lost_error());
        }
        // Over HTTP+SSE and WebSocket no endpoint checks a request before it gets here: a
        // binding that ended silently (its session idle, its key dropped) is caught here.
        if !self.held.get().is_some_and(SessionSlot::is_http_session)
            && let Some(reason) = binding_lost(
                &self.pool,
                &self.server,
                principal,
                &self.affinity,
                &self.bound,
            )
        {
            self.lost.store(true, Ordering::Relaxed);
            record_lost(&self.server, reason);
            return Err(conversation_lost_error());
        }
        // Session-scoped state is created upstream: the conversation stays with its session.
        let pins = matches!(
            request,
            ClientRequest::SubscribeRequest(_) | ClientRequest::SetLevelRequest(_)
        );
        let mut options = CallOptions::new()
            .refuse_rebind()
            .headers(headers.clone())
            .notifications(sink)
            .requests(Arc::new(AskDownstream {
                peer: context.peer.clone(),
                call: Some(context.id.clone()),
            }));
        if pins {
            options = options.pin(self.conversation(&context.peer, principal));
        }
        let acquire = AcquireRequest::new(&self.server)
            .principal(principal)
            .headers(&headers)
            .downstream_session(&self.affinity);
        let call = self.pool.call(acquire, request, options);
        tokio::pin!(call);
        let outcome = loop {
            tokio::select! {
                biased;
                () = context.ct.cancelled() => {
                    self.record(&method, "cancelled", started);
                    return Err(ErrorData::new(ErrorCode::INTERNAL_ERROR, "request cancelled", None));
                }
                Some(notification) = notifications.recv() => {
                    relay(&context.peer, notification, downstream_token.as_ref()).await;
                }
                outcome = &mut call => break outcome,
            }
        };
        // What the upstream sent before its answer goes out before the answer.
        while let Ok(notification) = notifications.try_recv() {
            relay(&context.peer, notification, downstream_token.as_ref()).await;
        }
        let label = match &outcome {
            Ok(_) => "ok",
            Err(PoolError::Call { error, .. }) if matches!(**error, ServiceError::McpError(_)) => {
                "error"
            }
            Err(_) => "failed",
        };
        self.record(&method, label, started);
        if let Err(PoolError::ConversationLost { .. }) = &outcome {
            // This downstream session ends; its later requests get 404 (over HTTP+SSE and
            // WebSocket, where a session is its connection, the same error each time).
            self.lost.store(true, Ordering::Relaxed);
            record_lost(&self.server, "rebound");
            if let Some(slot) = self.held.get() {
                slot.0.lost.store(true, Ordering::Relaxed);
            }
            return Err(conversation_lost_error());
        }
        if pins && outcome.is_ok() {
            // Seen pinned: from now on a pin gone is a conversation lost.
            self.binding_lost(principal);
        }
        outcome.map_err(upstream_error)
    }

    /// Whether this session's binding or pin is gone ([`binding_lost`]), recording it as seen
    /// when the pool holds it: in the slot the streamable HTTP endpoint checks, else here.
    fn binding_lost(&self, upstream: Principal) -> Option<&'static str> {
        let bound = match self.held.get() {
            Some(slot) if slot.is_http_session() => &slot.0.bound,
            _ => &*self.bound,
        };
        binding_lost(&self.pool, &self.server, upstream, &self.affinity, bound)
    }

    /// What this session wants of its pinned upstream session's traffic outside calls: its
    /// notifications, relayed by a task of its own ([`relay_out_of_call`]), and the server's
    /// requests, asked of this session's client. The channel is made on the first pin and
    /// lives while the pool's pin holds it.
    fn conversation(&self, peer: &Peer<RoleServer>, upstream: Principal) -> Conversation {
        let mut out_of_call = self.out_of_call.lock();
        let sender = match out_of_call.as_ref().and_then(mpsc::WeakSender::upgrade) {
            Some(sender) => sender,
            None => {
                let (sender, receiver) = mpsc::channel(RELAY_CAPACITY);
                *out_of_call = Some(sender.downgrade());
                tokio::spawn(relay_out_of_call(
                    OutOfCall {
                        peer: peer.clone(),
                        subscriptions: self.subscriptions.clone(),
                        ended: self.ended.clone(),
                        lost: self.lost.clone(),
                        bound: self.bound.clone(),
                        slot: self.held.get().cloned(),
                        pool: self.pool.clone(),
                        server: self.server.clone(),
                        upstream,
                        affinity: self.affinity.clone(),
                    },
                    receiver,
                ));
                sender
            }
        };
        Conversation::new()
            .notifications(sender)
            .requests(Arc::new(AskDownstream {
                peer: peer.clone(),
                call: None,
            }))
    }

    /// Counts a forwarded request and its duration by server and method
    /// ([`crate::metrics::record_mcp`]); `outcome` is `ok`, `error` (the upstream's JSON-RPC
    /// error), `failed` (the pool or the transport failed) or `cancelled`.
    fn record(&self, method: &str, outcome: &'static str, started: Instant) {
        crate::metrics::record_mcp(self.server.as_str(), method, outcome, started.elapsed());
    }

    async fn forward_as<T>(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
        pick: fn(ServerResult) -> Result<T, Box<ServerResult>>,
    ) -> Result<T, ErrorData>
    where
        T: serde::de::DeserializeOwned,
    {
        let result = self.forward(request, context).await?;
        // The result is untagged JSON: a shape that matched another variant is re-read.
        pick(result).or_else(|other| {
            serde_json::to_value(&other)
                .and_then(serde_json::from_value)
                .map_err(|error| {
                    ErrorData::internal_error(
                        format!(
                            "the upstream's result is not a valid {}: {error}",
                            std::any::type_name::<T>()
                                .rsplit("::")
                                .next()
                                .unwrap_or("result")
                        ),
                        None,
                    )
                })
        })
    }
}

impl Drop for Proxy {
    /// The downstream session ended: its sticky upstream session is released for good.
    fn drop(&mut self) {
        self.ended.cancel();
        self.sessions.peers.lock().remove(&self.slot);
        if let Some(principal) = self.principal.get() {
            self.pool.unbind(&self.server, *principal, &self.affinity);
        }
    }
}

/// The downstream request's `_meta` minus what belongs to the downstream hop: its progress
/// token (the pool's session sets its own) and the 2026-07-28 lifecycle keys (the upstream
/// session negotiated its own version).
fn forwarded_meta(meta: &RequestMetaObject) -> RequestMetaObject {
    let mut meta = meta.clone();
    meta.0
        .0
        .retain(|key, _| key != "progressToken" && !key.starts_with("io.modelcontextprotocol/"));
    meta
}

/// Sends one upstream notification of the call to the downstream client; progress carries the
/// downstream request's token (and is dropped when it asked for none). A client gone away
/// loses it, which is all that can happen then.
async fn relay(
    peer: &Peer<RoleServer>,
    notification: ServerNotification,
    downstream_token: Option<&ProgressToken>,
) {
    let notification = match notification {
        ServerNotification::ProgressNotification(mut progress) => {
            let Some(token) = downstream_token else {
                return;
            };
            progress.params.progress_token = token.clone();
            ServerNotification::ProgressNotification(progress)
        }
        other => other,
    };
    if let Err(error) = peer.send_notification(notification).await {
        tracing::debug!(%error, "a notification could not be relayed downstream");
    }
}

/// What [`relay_out_of_call`] needs of its downstream session.
struct OutOfCall {
    peer: Peer<RoleServer>,
    subscriptions: Arc<Mutex<HashSet<String>>>,
    ended: CancellationToken,
    lost: Arc<std::sync::atomic::AtomicBool>,
    bound: Arc<std::sync::atomic::AtomicBool>,
    slot: Option<SessionSlot>,
    pool: Pool,
    server: ServerId,
    upstream: Principal,
    affinity: String,
}

/// Relays what a downstream session's pinned upstream session sends outside calls: logging,
/// `resources/updated` of a URI it subscribed to, and any other notification but
/// `*/list_changed` (which [`fan_out`] sends every session). When the channel closes while the
/// downstream session lives, the upstream session left the pool with the conversation's
/// state: the downstream session is told (it ends; its next request gets HTTP 404).
async fn relay_out_of_call(
    session: OutOfCall,
    mut notifications: mpsc::Receiver<ServerNotification>,
) {
    loop {
        let notification = tokio::select! {
            biased;
            () = session.ended.cancelled() => return,
            notification = notifications.recv() => notification,
        };
        let Some(notification) = notification else {
            break;
        };
        match &notification {
            ServerNotification::ResourceUpdatedNotification(updated)
                if !session.subscriptions.lock().contains(&updated.params.uri) => {}
            ServerNotification::ToolListChangedNotification(_)
            | ServerNotification::PromptListChangedNotification(_)
            | ServerNotification::ResourceListChangedNotification(_) => {}
            _ => relay(&session.peer, notification, None).await,
        }
    }
    if session.ended.is_cancelled() {
        return;
    }
    let bound = match &session.slot {
        Some(slot) if slot.is_http_session() => &slot.0.bound,
        _ => &*session.bound,
    };
    let Some(reason) = binding_lost(
        &session.pool,
        &session.server,
        session.upstream,
        &session.affinity,
        bound,
    ) else {
        // Nothing was pinned with this channel (the pin was refused): nothing was lost.
        return;
    };
    session.lost.store(true, Ordering::Relaxed);
    record_lost(&session.server, reason);
    if let Some(slot) = &session.slot {
        slot.0.lost.store(true, Ordering::Relaxed);
        slot.end_session().await;
    }
}

/// The JSON-RPC error of a request whose conversation's upstream session was lost while it was
/// on its way: nothing was sent upstream.
fn conversation_lost_error() -> ErrorData {
    ErrorData::new(
        ErrorCode(CONVERSATION_LOST_CODE),
        "the upstream session of this MCP session was lost, and its server-side state with it: \
         initialize a new session",
        None,
    )
}

/// The JSON-RPC error code of a request refused because its conversation's upstream session
/// was lost (JSON-RPC 2.0 §5.1's range for implementation-defined server errors).
pub const CONVERSATION_LOST_CODE: i32 = -32002;

/// What a downstream client sees when the pool or the upstream failed: the upstream's own
/// JSON-RPC error unchanged, else an internal error whose message says what failed (URLs
/// redacted by [`PoolError`]'s `Display`).
fn upstream_error(error: PoolError) -> ErrorData {
    match error {
        PoolError::Call { error, .. } if matches!(*error, ServiceError::McpError(_)) => {
            match *error {
                ServiceError::McpError(data) => data,
                _ => unreachable!("matched above"),
            }
        }
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

/// Answers the upstream's requests of a call (sampling, elicitation, roots) by asking the
/// downstream client of that call, on that call's response stream (MCP 2025-11-25: requests
/// related to a client request are sent on its stream, not the standalone one).
struct AskDownstream {
    peer: Peer<RoleServer>,
    /// The downstream request id of the call; `None` for a request outside calls, asked on
    /// the downstream session's standalone stream.
    call: Option<RequestId>,
}

#[async_trait::async_trait]
impl ServerRequestHandler for AskDownstream {
    async fn handle(
        &self,
        mut request: ServerRequest,
        cancel: CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        if let Some(call) = &self.call {
            request
                .extensions_mut()
                .insert(OriginatingRequestId(call.clone()));
        }
        // Sent from a task of its own: the pool runs this inside the upstream session's
        // handler of that request, where rmcp would replace the marker with the upstream's
        // request id (a task-local that does not cross `tokio::spawn`).
        let peer = self.peer.clone();
        let mut send = tokio::spawn(async move { peer.send_request(request).await });
        tokio::select! {
            result = &mut send => match result {
                Ok(result) => result.map_err(|error| match error {
                    ServiceError::McpError(data) => data,
                    other => ErrorData::internal_error(
                        format!("the downstream client did not answer: {other}"),
                        None,
                    ),
                }),
                Err(error) => Err(ErrorData::internal_error(
                    format!("asking the downstream client failed: {error}"),
                    None,
                )),
            },
            () = cancel.cancelled() => {
                send.abort();
                Err(ErrorData::internal_error("cancelled by the server", None))
            }
        }
    }
}

/// `ServerHandler` methods that forward their request and expect one result variant.
macro_rules! forward {
    ($(fn $method:ident($params:ty) -> $result:ty => $build:expr, $variant:ident;)*) => {$(
        async fn $method(
            &self,
            params: $params,
            context: RequestContext<RoleServer>,
        ) -> Result<$result, ErrorData> {
            #[allow(clippy::redundant_closure_call)]
            let request = ($build)(params);
            self.forward_as(request, context, |r| match r {
                ServerResult::$variant(r) => Ok(r),
                other => Err(Box::new(other)),
            })
            .await
            .map(Into::into)
        }
    )*};
}

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, CustomRequest,
    CustomResult, GetPromptRequestParams, GetPromptResponse, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, SubscribeRequestParams,
    UnsubscribeRequestParams,
};

#[allow(deprecated)]
use rmcp::model::SetLevelRequestParams;

fn optional<M: Default, P>(params: Option<P>) -> RequestOptionalParam<M, P> {
    RequestOptionalParam {
        method: M::default(),
        params,
        extensions: Default::default(),
    }
}

impl ServerHandler for Proxy {
    fn get_info(&self) -> InitializeResult {
        self.upstream.get().cloned().unwrap_or_default()
    }

    /// Answers with the upstream's capabilities and server info, read from a pooled session
    /// (the protocol version is negotiated with the downstream client as rmcp does).
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        if let Some(slot) = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<SessionSlot>())
        {
            let _ = slot.0.affinity.set(self.affinity.clone());
            let _ = self.held.set(slot.clone());
        }
        self.learn_upstream(&context).await?;
        self.sessions
            .peers
            .lock()
            .insert(self.slot, context.peer.clone());
        self.negotiate_initialize(&request)
    }

    /// Protocol 2026-07-28 (no `initialize`, no session): the upstream's capabilities and
    /// server info, as for `initialize`.
    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        self.learn_upstream(&context).await?;
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let ping = ClientRequest::PingRequest(RequestNoParam::default());
        self.forward(ping, context).await.map(drop)
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        params: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let request = ClientRequest::SetLevelRequest(McpRequest::new(params));
        self.forward(request, context).await.map(drop)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        params: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let uri = params.uri.clone();
        let request = ClientRequest::SubscribeRequest(McpRequest::new(params));
        self.forward(request, context).await?;
        self.subscriptions.lock().insert(uri);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        params: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions.lock().remove(&params.uri);
        let request = ClientRequest::UnsubscribeRequest(McpRequest::new(params));
        self.forward(request, context).await.map(drop)
    }

    /// The client's roots changed: the upstream session this downstream session is pinned to
    /// hears it, and the downstream session is pinned from now on (if it was not), so that
    /// the server's `roots/list` outside calls is asked of its client.
    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        if self.lost.load(Ordering::Relaxed) {
            return;
        }
        let Ok((principal, headers)) = self.caller_of(&context.extensions) else {
            return;
        };
        let acquire = AcquireRequest::new(&self.server)
            .principal(principal)
            .headers(&headers)
            .downstream_session(&self.affinity);
        let lease = match self.pool.acquire_with(acquire).await {
            Ok(lease) if !lease.is_rebound() => lease,
            Ok(_) => return, // Its next request learns that the conversation is lost.
            Err(error) => {
                tracing::debug!(%error, "roots/list_changed not forwarded: no upstream session");
                return;
            }
        };
        lease.pin(&self.affinity, self.conversation(&context.peer, principal));
        if let Err(error) = lease.notify_roots_list_changed().await {
            tracing::debug!(%error, "roots/list_changed not forwarded");
        }
        drop(lease);
        self.binding_lost(principal);
    }

    /// Any method rmcp does not know goes upstream as is.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let result = self
            .forward(ClientRequest::CustomRequest(request), context)
            .await?;
        match result {
            ServerResult::CustomResult(result) => Ok(result),
            other => serde_json::to_value(other)
                .map(CustomResult)
                .map_err(|error| ErrorData::internal_error(error.to_string(), None)),
        }
    }

    forward! {
        fn call_tool(CallToolRequestParams) -> CallToolResponse
            => |p| ClientRequest::CallToolRequest(McpRequest::new(p)), CallToolResult;
        fn list_tools(Option<PaginatedRequestParams>) -> ListToolsResult
            => |p| ClientRequest::ListToolsRequest(optional(p)), ListToolsResult;
        fn complete(CompleteRequestParams) -> CompleteResult
            => |p| ClientRequest::CompleteRequest(McpRequest::new(p)), CompleteResult;
        fn get_prompt(GetPromptRequestParams) -> GetPromptResponse
            => |p| ClientRequest::GetPromptRequest(McpRequest::new(p)), GetPromptResult;
        fn list_prompts(Option<PaginatedRequestParams>) -> ListPromptsResult
            => |p| ClientRequest::ListPromptsRequest(optional(p)), ListPromptsResult;
        fn list_resources(Option<PaginatedRequestParams>) -> ListResourcesResult
            => |p| ClientRequest::ListResourcesRequest(optional(p)), ListResourcesResult;
        fn list_resource_templates(Option<PaginatedRequestParams>) -> ListResourceTemplatesResult
            => |p| ClientRequest::ListResourceTemplatesRequest(optional(p)),
               ListResourceTemplatesResult;
        fn read_resource(ReadResourceRequestParams) -> ReadResourceResponse
            => |p| ClientRequest::ReadResourceRequest(McpRequest::new(p)), ReadResourceResult;
    }
}
