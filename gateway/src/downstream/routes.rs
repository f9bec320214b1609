//! [`DownstreamRoutes`]: the rmcp services that serve each server's downstream sessions
//! (streamable HTTP, HTTP+SSE and WebSocket), made on the first request for the server, and
//! the relay of its `*/list_changed` to every session.

use std::{collections::HashMap, sync::Arc};

use axum::Router;
use mcp_pool::{Principal, ServerEvent, ServerEventKind, ServerId};
use mcp_pool_transports::server::{
    SseServer, SseServerConfig, WebSocketServer, WebSocketServerConfig,
};
use parking_lot::Mutex;
use rmcp::{
    model::ServerNotification,
    transport::streamable_http_server::{
        SessionManager as _, StreamableHttpServerConfig, StreamableHttpService,
        session::{SessionId, local::LocalSessionManager, store::SessionStore},
    },
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{
    caller::{Authorization, Caller},
    proxy::Proxy,
    sessions::{SESSION_HEADER, SessionSlots, Sessions},
};
use crate::{AppState, cluster::AdoptedSessions};

/// The downstream MCP routes of every server: the services of each, created on the first
/// request for it. [`shutdown`](Self::shutdown) ends every downstream session.
#[derive(Default)]
pub struct DownstreamRoutes {
    servers: Mutex<HashMap<ServerId, ServerRoutes>>,
    shutdown: CancellationToken,
    /// The downstream sessions each user holds in this worker, over all servers.
    pub(super) slots: Arc<SessionSlots>,
}

/// The streamable HTTP service of one server.
type McpService = StreamableHttpService<Proxy, LocalSessionManager>;

/// The downstream MCP routes of one server.
#[derive(Clone)]
pub(super) struct ServerRoutes {
    /// `/servers/{id}/mcp`: streamable HTTP.
    pub(super) service: McpService,
    /// The streamable HTTP sessions (rmcp ends idle ones after 5 minutes).
    pub(super) manager: Arc<LocalSessionManager>,
    /// `GET /servers/{id}/sse` + `POST /servers/{id}/message` (HTTP+SSE, 2024-11-05) and
    /// `GET /servers/{id}/ws` (WebSocket), served by the transports crate's adapters.
    pub(super) legacy: Router,
    pub(super) sessions: Arc<Sessions>,
    cancel: CancellationToken,
}

impl ServerRoutes {
    /// Whether the streamable HTTP session `id` lives in this worker.
    pub(super) async fn holds(&self, id: &str) -> bool {
        self.manager.sessions.read().await.contains_key(id)
    }

    /// Records who owns the session a request of `owner` (with `session` id, if any) used or
    /// created, after its `response`: the sessions that ended (to release) and the one it
    /// created (to claim).
    pub(super) fn record_owner<B>(
        &self,
        session: Option<String>,
        method: &http::Method,
        owner: Principal,
        response: &http::Response<B>,
    ) -> (Vec<String>, Option<String>) {
        let mut owners = self.sessions.owners.lock();
        let mut ended = Vec::new();
        let mut claimed = None;
        match session {
            Some(session) if method == http::Method::DELETE && response.status().is_success() => {
                owners.remove(&session);
                ended.push(session);
            }
            Some(session) if response.status().is_success() => {
                // A session restored after a takeover belongs to its first caller here.
                owners.entry(session).or_insert(owner);
            }
            Some(_) => {}
            None => {
                if let Some(created) = response
                    .headers()
                    .get(SESSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    owners.insert(created.to_owned(), owner);
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

impl std::fmt::Debug for DownstreamRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamRoutes")
            .field("servers", &self.servers.lock().len())
            .finish()
    }
}

impl DownstreamRoutes {
    /// Ends every downstream session (graceful shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.servers.lock().clear();
    }

    /// Ends the downstream sessions of `server` (it was deleted or its endpoints changed).
    pub fn forget(&self, server: &ServerId) {
        if let Some(routes) = self.servers.lock().remove(server) {
            routes.cancel.cancel();
        }
    }

    /// The streamable HTTP session managers of every server.
    fn managers(&self) -> Vec<Arc<LocalSessionManager>> {
        let servers = self.servers.lock();
        servers.values().map(|r| r.manager.clone()).collect()
    }

    /// The ids of every streamable HTTP session this worker holds, over all servers: the
    /// sessions whose claims it refreshes ([`crate::cluster`]).
    pub async fn held_sessions(&self) -> Vec<String> {
        let mut held = Vec::new();
        for manager in self.managers() {
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
        let id: SessionId = id.into();
        for manager in self.managers() {
            if manager.sessions.read().await.contains_key(&id) {
                let _ = manager.close_session(&id).await;
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

    /// The routes of `server`, made now if this is its first request.
    pub(super) fn of_server(&self, state: &AppState, server: &ServerId) -> ServerRoutes {
        let mut servers = self.servers.lock();
        if let Some(routes) = servers.get(server) {
            return routes.clone();
        }
        let cancel = self.shutdown.child_token();
        let sessions = Arc::new(Sessions::default());
        let mut config = StreamableHttpServerConfig::default()
            // The gateway is meant to be reached by name; DNS rebinding matters for servers on
            // a desktop, and the gateway's own auth covers it.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(state.max_body_bytes)
            .with_cancellation_token(cancel.clone());
        // Sessions taken over from a dead worker are restored by rmcp ([`crate::cluster`]).
        config.session_store = state
            .group
            .as_ref()
            .map(|group| Arc::new(AdoptedSessions(group.clone())) as Arc<dyn SessionStore>);
        let factory = {
            let (registry, id, sessions) =
                (state.registry.clone(), server.clone(), sessions.clone());
            let authorization = Authorization::under(&state.auth);
            move || {
                Ok(Proxy::new(
                    registry.clone(),
                    id.clone(),
                    authorization,
                    sessions.clone(),
                ))
            }
        };
        let prefix = format!("/servers/{server}");
        // A message posted to an HTTP+SSE session is taken only from the caller that opened it.
        let owner = {
            let (registry, id) = (state.registry.clone(), server.clone());
            let authorization = Authorization::under(&state.auth);
            move |parts: &http::request::Parts| {
                let owner = Caller::of(
                    &registry,
                    &id,
                    authorization,
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
        let routes = ServerRoutes {
            service,
            manager,
            legacy: sse.router().merge(ws.router()),
            sessions,
            cancel,
        };
        servers.insert(server.clone(), routes.clone());
        routes
    }
}

/// Sends the server's `*/list_changed` to every downstream session until its routes are
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
            // reaches the downstream sessions pinned to it (see [`super::proxy`]).
            _ => continue,
        };
        let peers: Vec<_> = sessions.peers.lock().values().cloned().collect();
        for peer in peers {
            let _ = peer.send_notification(notification.clone()).await;
        }
    }
}
