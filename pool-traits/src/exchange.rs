//! What an upstream server sends on a session besides replies, and where it goes:
//! [`SessionHandler`] is the rmcp client service of every pooled session.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use http::HeaderMap;
use rmcp::{
    ErrorData, RoleClient, Service,
    model::{
        ClientConfig, ClientResult, ErrorCode, GetExtensions, ProgressToken, RequestId,
        ServerNotification, ServerRequest,
    },
    service::{
        ClientInitializeError, InboundStreamOrigin, NotificationContext, RequestContext,
        RxJsonRpcMessage, TxJsonRpcMessage,
    },
    transport::{IntoTransport, Transport},
};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{AffinityKey, RedactedHeaders, ServerId};

/// Progress notifications kept for a call that has not registered its progress token yet (its
/// request is on the wire before the pool learns the token rmcp gave it).
const UNCLAIMED_PROGRESS: usize = 64;

/// How long a request of the server waits for the call it names to be registered (the reply
/// stream can deliver it before `send_request` has returned the request's id).
const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// Capacity of a session's subscriber channel: a subscriber that falls further behind loses the
/// oldest notifications (and is told how many, [`broadcast::error::RecvError::Lagged`]).
pub const SESSION_EVENTS_CAPACITY: usize = 64;

/// Handles the requests an upstream server makes of the client during a call:
/// `sampling/createMessage`, `elicitation/create`, `roots/list` (and `ping`, which the pool
/// answers itself). Register one per call: `CallOptions::requests` of the `mcp-pool` crate.
///
/// Return a [`ClientResult`] of the matching kind, or an [`ErrorData`] that the server receives
/// as the JSON-RPC error. `cancel` fires when the server cancels its request
/// (`notifications/cancelled`) or the session closes.
#[async_trait::async_trait]
pub trait ServerRequestHandler: Send + Sync + 'static {
    /// Answers `request`.
    async fn handle(
        &self,
        request: ServerRequest,
        cancel: CancellationToken,
    ) -> Result<ClientResult, ErrorData>;
}

/// Headers for one upstream request, set by the pool in the request's (never serialized)
/// extensions. HTTP transports add them to that request's HTTP request,
/// replacing same-named headers of the session; a transport that cannot send per-request
/// headers (WebSocket: headers exist only at the handshake) ignores them.
///
/// - `trace`: trace and correlation headers of the downstream request (`traceparent`,
///   `x-request-id`, …): this request only.
/// - `credentials`: the downstream request's current credentials (the forwarded identity
///   headers): this request and every later one of the session that carries none of its own
///   (the reply stream's `GET`, the `DELETE` at close), so that a rotated token replaces a
///   revoked one.
///
/// Its `Debug` shows header names only.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CallHeaders {
    /// This request only.
    pub trace: HeaderMap,
    /// This request and the session's later ones.
    pub credentials: HeaderMap,
}

impl CallHeaders {
    /// Headers for one request.
    pub fn new(trace: HeaderMap, credentials: HeaderMap) -> Self {
        Self { trace, credentials }
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.trace.is_empty() && self.credentials.is_empty()
    }
}

impl fmt::Debug for CallHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallHeaders")
            .field("trace", &RedactedHeaders(&self.trace))
            .field("credentials", &RedactedHeaders(&self.credentials))
            .finish()
    }
}

/// What a conversation pinned to a session wants of the session's traffic outside calls
/// (the MCP spec scopes subscriptions, the log level and roots to a session): the
/// notifications that belong to no call (logging outside a call, `resources/updated`,
/// `*/list_changed`, any other), and the server's requests that belong to no call
/// (`roots/list` after the client's `notifications/roots/list_changed`, say).
/// [`SessionHandler::pin`] registers one; `CallOptions::pin` of the `mcp-pool` crate is how a
/// pool's caller pins.
///
/// The notification channel is bounded: a full one drops the notification. It closes when
/// the conversation is unpinned or its session leaves the pool
/// ([`SessionHandler::unpin_all`]): a receiver that ends while its conversation is still on
/// is the signal that the session, and its state, are gone.
#[derive(Clone, Default)]
pub struct Conversation {
    notifications: Option<mpsc::Sender<ServerNotification>>,
    requests: Option<Arc<dyn ServerRequestHandler>>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("notifications", &self.notifications.is_some())
            .field("requests", &self.requests.is_some())
            .finish()
    }
}

impl Conversation {
    /// A conversation that wants nothing (its pin only routes its calls).
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the session's notifications that belong to no call go.
    pub fn notifications(mut self, sink: mpsc::Sender<ServerNotification>) -> Self {
        self.notifications = Some(sink);
        self
    }

    /// Who answers the server's requests that belong to no call, when this conversation is
    /// the only one pinned to the session that has a handler.
    pub fn requests(mut self, handler: Arc<dyn ServerRequestHandler>) -> Self {
        self.requests = Some(handler);
        self
    }
}

/// A change on a server that every user of it may care about: refresh a catalog, re-read a
/// resource.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerEvent {
    /// The server.
    pub server: ServerId,
    /// What changed.
    pub kind: ServerEventKind,
}

/// What changed on a server ([`ServerEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerEventKind {
    /// `notifications/tools/list_changed`.
    ToolsListChanged,
    /// `notifications/prompts/list_changed`.
    PromptsListChanged,
    /// `notifications/resources/list_changed`.
    ResourcesListChanged,
    /// `notifications/resources/updated` for this URI.
    ResourceUpdated {
        /// The resource.
        uri: String,
    },
}

impl ServerEventKind {
    /// The server-wide change `notification` reports, if it reports one.
    fn of(notification: &ServerNotification) -> Option<Self> {
        Some(match notification {
            ServerNotification::ToolListChangedNotification(_) => Self::ToolsListChanged,
            ServerNotification::PromptListChangedNotification(_) => Self::PromptsListChanged,
            ServerNotification::ResourceListChangedNotification(_) => Self::ResourcesListChanged,
            ServerNotification::ResourceUpdatedNotification(updated) => Self::ResourceUpdated {
                uri: updated.params.uri.clone(),
            },
            _ => return None,
        })
    }
}

/// A server's event hub: every session of the server reports its `*/list_changed` and
/// `resources/updated` notifications here, debounced: the first of a burst is published at
/// once, the rest of the burst (same kind within `debounce`) as one more event when the window
/// ends. A gateway refreshes its catalog once per burst, not once per session.
#[derive(Clone)]
pub struct ServerEvents {
    inner: Arc<EventsInner>,
}

struct EventsInner {
    server: ServerId,
    tx: broadcast::Sender<ServerEvent>,
    debounce: Duration,
    windows: Mutex<HashMap<ServerEventKind, bool>>,
}

impl fmt::Debug for ServerEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerEvents")
            .field("server", &self.inner.server)
            .field("debounce", &self.inner.debounce)
            .finish_non_exhaustive()
    }
}

impl ServerEvents {
    /// A hub for `server` coalescing bursts within `debounce`, keeping up to `capacity`
    /// events for slow subscribers.
    pub fn new(server: ServerId, debounce: Duration, capacity: usize) -> Self {
        Self {
            inner: Arc::new(EventsInner {
                server,
                tx: broadcast::channel(capacity.max(1)).0,
                debounce,
                windows: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The server's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.inner.tx.subscribe()
    }

    /// Reports `kind`: published now if no window of this kind is open, else folded into the
    /// window's one trailing event. Needs a tokio runtime (the trailing event is a timer).
    pub fn publish(&self, kind: ServerEventKind) {
        {
            let mut windows = lock(&self.inner.windows);
            match windows.get_mut(&kind) {
                Some(pending) => {
                    *pending = true;
                    return;
                }
                None => {
                    windows.insert(kind.clone(), false);
                }
            }
        }
        self.send(kind.clone());
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.inner.debounce).await;
                let again = {
                    let mut windows = lock(&this.inner.windows);
                    match windows.get_mut(&kind) {
                        Some(pending) if *pending => {
                            *pending = false;
                            true
                        }
                        _ => {
                            windows.remove(&kind);
                            false
                        }
                    }
                };
                if !again {
                    return;
                }
                // The trailing event of the burst; a new window opens behind it.
                this.send(kind.clone());
            }
        });
    }

    fn send(&self, kind: ServerEventKind) {
        // No subscriber is not an error: nobody asked.
        let _ = self.inner.tx.send(ServerEvent {
            server: self.inner.server.clone(),
            kind,
        });
    }
}

/// Why a session is gone ([`SessionHandler::report_lost`],
/// [`SessionHandler::report_forgotten`]); also the error a call on a lost session fails with,
/// inside rmcp's `ServiceError::TransportSend` (downcast its `error` to find it). Its message
/// is the cause in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session is gone: {cause}")]
pub struct SessionLost {
    cause: String,
    forgotten: bool,
}

impl SessionLost {
    /// The connection that carried the session is gone, for `cause` (in words): nothing more
    /// arrives on it.
    pub fn disconnected(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            forgotten: false,
        }
    }

    /// The server, still answering, no longer knows the session, for `cause` (in words).
    pub fn forgotten(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            forgotten: true,
        }
    }

    /// Why, in words.
    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// Whether the server forgot the session ([`forgotten`](Self::forgotten)) rather than
    /// the connection being gone: requests already sent still get the server's own answers.
    pub fn is_forgotten(&self) -> bool {
        self.forgotten
    }
}

/// The rmcp client service of a pooled session: it sends the `initialize` parameters (client
/// info and the capabilities configured for the server) and routes what the server sends.
/// Cheap to clone.
///
/// | the server sends | it reaches |
/// |---|---|
/// | `notifications/progress` | the call whose progress token it names, and only it |
/// | `notifications/message` (logging) while exactly one call is in flight on the session | that call |
/// | `notifications/message` otherwise, `*/list_changed`, `resources/updated`, any other | the session's subscribers ([`SessionHandler::subscribe`]) and the conversations pinned to it ([`SessionHandler::pin`]) |
/// | `*/list_changed`, `resources/updated` | also the server's subscribers ([`ServerEvents`]), debounced |
/// | `sampling/createMessage`, `elicitation/create`, `roots/list` of a call | the [`ServerRequestHandler`] of the call it belongs to |
/// | the same outside every call | the handler of the one conversation pinned to the session that has one |
///
/// A request of the server belongs to a call when it arrived on that call's response stream
/// (streamable HTTP marks this, SEP-2260), or, on transports that cannot tell, when that call
/// is the only one in flight on the session. A request outside every call is answered by a
/// pinned conversation only when exactly one pinned conversation can answer: with several,
/// any answer would be one conversation's data given for all of them. Without a handler the
/// server gets a JSON-RPC error at once (`-32601`, method not found), never silence.
///
/// Logging has no request id in MCP: with `session_concurrency` > 1 and several calls in flight
/// a log line cannot be attributed, so it goes to the session's subscribers instead of a
/// guess. Progress is exact at any concurrency.
///
/// Transports serve it: `request.handler().serve(transport)` (rmcp's `ServiceExt`).
#[derive(Clone)]
pub struct SessionHandler {
    inner: Arc<HandlerInner>,
}

struct HandlerInner {
    info: ClientConfig,
    server: Option<ServerEvents>,
    session: broadcast::Sender<ServerNotification>,
    routes: Mutex<Routes>,
    registered: Notify,
    /// Why the session is gone, once a transport (or the pool) said so: the first report wins.
    lost: OnceLock<SessionLost>,
    /// Cancelled when `lost` is set: what [`SessionHandler::lost`] waits for.
    lost_signal: CancellationToken,
}

#[derive(Default)]
struct Routes {
    next: u64,
    calls: Vec<Call>,
    unclaimed: VecDeque<ServerNotification>,
    /// Conversations pinned to the session ([`SessionHandler::pin`]).
    pinned: Vec<(AffinityKey, Conversation)>,
}

struct Call {
    seq: u64,
    id: Option<RequestId>,
    progress: Option<ProgressToken>,
    notifications: Option<mpsc::Sender<ServerNotification>>,
    requests: Option<Arc<dyn ServerRequestHandler>>,
}

impl fmt::Debug for SessionHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (calls, pinned) = {
            let routes = lock(&self.inner.routes);
            (routes.calls.len(), routes.pinned.len())
        };
        f.debug_struct("SessionHandler")
            .field("client", &self.inner.info.client_info.name)
            .field("capabilities", &self.inner.info.capabilities)
            .field("calls_in_flight", &calls)
            .field("pinned", &pinned)
            .field("lost", &self.inner.lost.get().map(SessionLost::cause))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The routes hold no invariant a panic could break half-way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SessionHandler {
    /// A handler sending `info` in `initialize` and reporting server-wide changes to `server`
    /// (none: they reach the session's subscribers only).
    pub fn new(info: ClientConfig, server: Option<ServerEvents>) -> Self {
        Self {
            inner: Arc::new(HandlerInner {
                info,
                server,
                session: broadcast::channel(SESSION_EVENTS_CAPACITY).0,
                routes: Mutex::new(Routes::default()),
                registered: Notify::new(),
                lost: OnceLock::new(),
                lost_signal: CancellationToken::new(),
            }),
        }
    }

    /// The `initialize` parameters.
    pub fn info(&self) -> &ClientConfig {
        &self.inner.info
    }

    /// This session's notifications that belong to no call (see the table on
    /// [`SessionHandler`]), from now on. The receiver ends when the session closes.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerNotification> {
        self.inner.session.subscribe()
    }

    /// Registers a call about to be sent: it counts as in flight from now on (a log line or a
    /// server request arriving before [`CallRoute::bind`] reaches it). Dropping the route ends
    /// the registration.
    pub fn begin_call(
        &self,
        notifications: Option<mpsc::Sender<ServerNotification>>,
        requests: Option<Arc<dyn ServerRequestHandler>>,
    ) -> CallRoute {
        let mut routes = lock(&self.inner.routes);
        routes.next += 1;
        let seq = routes.next;
        routes.calls.push(Call {
            seq,
            id: None,
            progress: None,
            notifications,
            requests,
        });
        CallRoute {
            handler: self.clone(),
            seq,
        }
    }

    /// Number of calls registered and not yet ended.
    pub fn calls_in_flight(&self) -> usize {
        lock(&self.inner.routes).calls.len()
    }

    /// Pins the conversation `affinity` to this session: from now on it receives what the
    /// session sends outside calls (see the table on [`SessionHandler`]). Returns `false`,
    /// keeping the registration already there, when `affinity` is pinned already.
    pub fn pin(&self, affinity: AffinityKey, conversation: Conversation) -> bool {
        let mut routes = lock(&self.inner.routes);
        if routes.pinned.iter().any(|(a, _)| *a == affinity) {
            return false;
        }
        routes.pinned.push((affinity, conversation));
        true
    }

    /// Ends the pin of `affinity`, if it has one: its notification channel closes (unless its
    /// receiver shares it with other senders). Returns whether it had one.
    pub fn unpin(&self, affinity: &AffinityKey) -> bool {
        let mut routes = lock(&self.inner.routes);
        let before = routes.pinned.len();
        routes.pinned.retain(|(a, _)| a != affinity);
        routes.pinned.len() != before
    }

    /// Ends every pin: what the pool does when the session leaves it. Each pinned
    /// conversation's notification channel closes, which tells it the session is gone.
    pub fn unpin_all(&self) {
        let pinned = std::mem::take(&mut lock(&self.inner.routes).pinned);
        drop(pinned);
    }

    /// Number of conversations pinned to the session.
    pub fn pinned(&self) -> usize {
        lock(&self.inner.routes).pinned.len()
    }

    /// Reports that the connection carrying the session is gone for good: it closed, or it
    /// could not be re-established. What a transport calls when it learns so (a request's own
    /// failure fails that request as usual): the pool then evicts the session at once, hands
    /// it to no one again, and fails the calls in flight on it at once with a
    /// [`SessionLost`] instead of letting them wait for their deadline — nothing more can
    /// arrive for them. rmcp's service loop of the session ends too. Every transport served
    /// through [`serve`](Self::serve) reports it when its `receive` ends.
    ///
    /// `cause` says why in words, for operators (the pool shows it as the endpoint's last
    /// error): no URL with credentials, no secret. The first report of a loss (this or
    /// [`report_forgotten`](Self::report_forgotten)) wins; returns whether this one was the
    /// first.
    pub fn report_lost(&self, cause: impl Into<String>) -> bool {
        self.report(SessionLost::disconnected(cause))
    }

    /// Reports that the server, still answering, no longer knows the session: it answered a
    /// request of the session (its event stream `GET`, a call) with HTTP 404, or 400 naming
    /// the session (MCP spec: "the server MAY terminate the session at any time, after which
    /// it MUST respond to requests containing that session ID with HTTP 404"). As
    /// [`report_lost`](Self::report_lost), except that the calls already sent are left to the
    /// server's own answers, which it gives at once: a refusal (a request it never handled,
    /// which a pool may retry on another session) or their result. A call sent afterwards
    /// fails without being sent.
    pub fn report_forgotten(&self, cause: impl Into<String>) -> bool {
        self.report(SessionLost::forgotten(cause))
    }

    fn report(&self, lost: SessionLost) -> bool {
        let first = self.inner.lost.set(lost).is_ok();
        if first {
            self.inner.lost_signal.cancel();
        }
        first
    }

    /// Whether the session was reported lost or forgotten: one atomic load (the pool asks on
    /// every acquire).
    pub fn is_lost(&self) -> bool {
        self.inner.lost.get().is_some()
    }

    /// Why the session was reported lost or forgotten, if it was.
    pub fn lost_cause(&self) -> Option<&SessionLost> {
        self.inner.lost.get()
    }

    /// Completes when the session is reported lost or forgotten (at once if it already was).
    /// Cancel-safe.
    pub async fn lost(&self) {
        self.inner.lost_signal.cancelled().await;
    }

    /// Completes when the session is reported lost with its connection gone
    /// ([`report_lost`](Self::report_lost)): never after
    /// [`report_forgotten`](Self::report_forgotten), whose calls in flight still get answers.
    /// Cancel-safe.
    pub async fn disconnected(&self) {
        self.lost().await;
        if self.lost_cause().is_some_and(SessionLost::is_forgotten) {
            std::future::pending::<()>().await;
        }
    }

    /// Hands a notification that belongs to no call to the session's subscribers and its
    /// pinned conversations.
    fn to_session(&self, notification: ServerNotification) {
        {
            let routes = lock(&self.inner.routes);
            for (_, conversation) in &routes.pinned {
                if let Some(sink) = &conversation.notifications
                    && sink.try_send(notification.clone()).is_err()
                {
                    tracing::debug!(
                        "a pinned conversation's notification channel is full or closed: \
                         notification dropped"
                    );
                }
            }
        }
        let _ = self.inner.session.send(notification);
    }

    fn route_notification(&self, notification: ServerNotification) {
        if let Some(kind) = ServerEventKind::of(&notification) {
            if let Some(server) = &self.inner.server {
                server.publish(kind);
            }
            self.to_session(notification);
            return;
        }
        let mut routes = lock(&self.inner.routes);
        match &notification {
            ServerNotification::ProgressNotification(progress) => {
                let token = &progress.params.progress_token;
                if let Some(call) = routes
                    .calls
                    .iter()
                    .find(|c| c.progress.as_ref() == Some(token))
                {
                    deliver(call, notification);
                } else if routes.calls.iter().any(|c| c.progress.is_none()) {
                    // A call whose token is not known yet may own it: keep it for the call.
                    if routes.unclaimed.len() == UNCLAIMED_PROGRESS {
                        routes.unclaimed.pop_front();
                    }
                    routes.unclaimed.push_back(notification);
                }
                // Else: progress of a call that ended; nobody wants it.
            }
            ServerNotification::LoggingMessageNotification(_)
                if routes.calls.len() == 1 && routes.calls[0].notifications.is_some() =>
            {
                deliver(&routes.calls[0], notification);
            }
            // Cancellations of the server's own requests are handled by rmcp (the request's
            // token fires); anything else belongs to the session.
            ServerNotification::CancelledNotification(_) => {}
            _ => {
                drop(routes);
                self.to_session(notification);
            }
        }
    }

    /// The handler of the call `request` belongs to, waiting (bounded) for a call that named
    /// itself on the wire but is not registered yet; outside every call, the one pinned
    /// conversation's that has one.
    async fn request_handler(&self, origin: Origin<'_>) -> Option<Arc<dyn ServerRequestHandler>> {
        let origin = match origin {
            Origin::Call(id) => Some(id),
            // Outside every call (streamable HTTP's standalone stream): no call's client may
            // answer it, whichever happens to be in flight — it would hand the server another
            // client's data (its roots, its sampling). A conversation pinned here may.
            Origin::Unassociated => return self.pinned_handler(),
            Origin::Unknown => None,
        };
        let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
        loop {
            let registered = self.inner.registered.notified();
            {
                let routes = lock(&self.inner.routes);
                match origin {
                    Some(id) => {
                        if let Some(call) = routes.calls.iter().find(|c| c.id.as_ref() == Some(id))
                        {
                            return call.requests.clone();
                        }
                        if routes.calls.iter().all(|c| c.id.is_some()) {
                            // The call it names has ended (or never was ours).
                            return None;
                        }
                    }
                    None => {
                        return match routes.calls.as_slice() {
                            [only] => only.requests.clone(),
                            [] => {
                                drop(routes);
                                self.pinned_handler()
                            }
                            _ => None,
                        };
                    }
                }
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }
}

impl SessionHandler {
    /// The request handler of the only pinned conversation that has one.
    fn pinned_handler(&self) -> Option<Arc<dyn ServerRequestHandler>> {
        let routes = lock(&self.inner.routes);
        let mut handlers = routes
            .pinned
            .iter()
            .filter_map(|(_, c)| c.requests.as_ref());
        match (handlers.next(), handlers.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }
}

/// Where a server's request to the client came from, as far as its transport says.
#[derive(Clone, Copy, Debug)]
enum Origin<'a> {
    /// The response stream of this call's request (streamable HTTP).
    Call(&'a RequestId),
    /// A stream of the session tied to no call: streamable HTTP's standalone stream.
    Unassociated,
    /// A transport with one stream for everything (HTTP+SSE, WebSocket, stdio): it can only
    /// be told apart when one call is in flight.
    Unknown,
}

fn deliver(call: &Call, notification: ServerNotification) {
    if let Some(sink) = &call.notifications
        && sink.try_send(notification).is_err()
    {
        tracing::debug!("a call's notification channel is full or closed: notification dropped");
    }
}

/// A call's registration on its session ([`SessionHandler::begin_call`]); dropping it ends the
/// registration.
#[derive(Debug)]
pub struct CallRoute {
    handler: SessionHandler,
    seq: u64,
}

impl CallRoute {
    /// Records the id and progress token rmcp gave the call's request, and hands over the
    /// progress notifications that arrived before.
    pub fn bind(&self, id: &RequestId, progress: &ProgressToken) {
        let mut routes = lock(&self.handler.inner.routes);
        let Routes {
            calls, unclaimed, ..
        } = &mut *routes;
        if let Some(call) = calls.iter_mut().find(|c| c.seq == self.seq) {
            call.id = Some(id.clone());
            call.progress = Some(progress.clone());
            unclaimed.retain(|n| match n {
                ServerNotification::ProgressNotification(p)
                    if &p.params.progress_token == progress =>
                {
                    deliver(call, n.clone());
                    false
                }
                _ => true,
            });
        }
        drop(routes);
        self.handler.inner.registered.notify_waiters();
    }
}

impl Drop for CallRoute {
    fn drop(&mut self) {
        let mut routes = lock(&self.handler.inner.routes);
        routes.calls.retain(|c| c.seq != self.seq);
        if routes.calls.is_empty() {
            routes.unclaimed.clear();
        }
        drop(routes);
        self.handler.inner.registered.notify_waiters();
    }
}

/// Serving a session: the transport tap that routes notifications in wire order.
impl SessionHandler {
    /// Runs a session over `transport`: rmcp's `serve` (`initialize`, then the service loop),
    /// with this handler as the client service. What a [`Transport`](crate::Transport)'s
    /// `connect` calls: `request.handler().serve(transport).await`.
    ///
    /// Notifications are routed as the transport receives them, in wire order, before rmcp
    /// reads the next message: progress and logging a server sends before a call's reply are
    /// in the call's channel before the reply reaches the caller. (rmcp hands each notification
    /// to a task of its own, which may run after the reply: routing there could lose or
    /// reorder a call's last notifications.)
    ///
    /// # Errors
    /// rmcp's [`ClientInitializeError`] when the handshake fails.
    pub async fn serve<T, E, A>(
        self,
        transport: T,
    ) -> Result<rmcp::service::RunningService<RoleClient, SessionHandler>, ClientInitializeError>
    where
        T: IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.serve_with_lifecycle(transport, rmcp::ClientLifecycleMode::Initialize)
            .await
    }

    /// [`serve`](Self::serve) with rmcp's `lifecycle` (`Discover` for protocol 2026-07-28,
    /// `Auto`), notifications routed in wire order as there.
    ///
    /// # Errors
    /// rmcp's [`ClientInitializeError`] when discovery or the handshake fails.
    pub async fn serve_with_lifecycle<T, E, A>(
        self,
        transport: T,
        lifecycle: rmcp::ClientLifecycleMode,
    ) -> Result<rmcp::service::RunningService<RoleClient, SessionHandler>, ClientInitializeError>
    where
        T: IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let tap = Tap {
            inner: transport.into_transport(),
            handler: self.clone(),
        };
        rmcp::ClientServiceExt::serve_with_lifecycle(self, tap, lifecycle).await
    }
}

/// Marks a notification [`Tap`] already routed.
#[derive(Clone, Copy, Debug)]
struct Routed;

/// A transport that routes each notification it receives before handing it on.
struct Tap<T> {
    inner: T,
    handler: SessionHandler,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Tap<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        // A session whose connection is reported gone ends here: rmcp's service loop stops,
        // and requests made on the peer directly fail instead of waiting. A receive cut short
        // loses nothing that matters: nothing is received after it. (A forgotten session keeps
        // receiving: the answers to requests already sent are still coming.)
        let received = tokio::select! {
            biased;
            () = self.handler.disconnected() => return None,
            received = self.inner.receive() => received,
        };
        let Some(mut message) = received else {
            self.handler
                .report_lost("the connection carrying the session closed");
            return None;
        };
        if let rmcp::model::JsonRpcMessage::Notification(n) = &mut message {
            self.handler.route_notification(n.notification.clone());
            n.notification.extensions_mut().insert(Routed);
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

impl Service<RoleClient> for SessionHandler {
    async fn handle_request(
        &self,
        request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if let ServerRequest::PingRequest(_) = request {
            return Ok(ClientResult::empty(()));
        }
        let origin = request.extensions().get::<InboundStreamOrigin>().cloned();
        let origin = match &origin {
            Some(InboundStreamOrigin::OutboundRequest(id)) => Origin::Call(id),
            Some(InboundStreamOrigin::Unassociated) => Origin::Unassociated,
            _ => Origin::Unknown,
        };
        let method = match &request {
            ServerRequest::CreateMessageRequest(_) => "sampling/createMessage".to_owned(),
            ServerRequest::ElicitRequest(_) => "elicitation/create".to_owned(),
            ServerRequest::ListRootsRequest(_) => "roots/list".to_owned(),
            ServerRequest::CustomRequest(custom) => custom.method.clone(),
            _ => "request".to_owned(),
        };
        match self.request_handler(origin).await {
            Some(handler) => handler.handle(request, context.ct).await,
            None => Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!(
                    "{method}: the client has no handler for this request (it came outside \
                     any call and not exactly one conversation pinned to the session can \
                     answer it, or the call it belongs to registered none)"
                ),
                None,
            )),
        }
    }

    async fn handle_notification(
        &self,
        notification: ServerNotification,
        context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        // Served without the tap (rmcp's own `serve`): routed here, in rmcp's order.
        if context.extensions.get::<Routed>().is_none() {
            self.route_notification(notification);
        }
        Ok(())
    }

    fn get_info(&self) -> ClientConfig {
        self.inner.info.clone()
    }
}

#[cfg(test)]
// Logging is deprecated by SEP-2577, and servers still send it: the pool routes it.
#[allow(deprecated)]
mod tests {
    use rmcp::model::{
        LoggingLevel, LoggingMessageNotificationParam, NumberOrString, ProgressNotificationParam,
        ToolListChangedNotification,
    };

    use super::*;
    use crate::default_client_config;

    fn progress(token: i64, step: f64) -> ServerNotification {
        ServerNotification::ProgressNotification(rmcp::model::ProgressNotification::new(
            ProgressNotificationParam::new(ProgressToken(NumberOrString::Number(token)), step),
        ))
    }

    fn log(text: &str) -> ServerNotification {
        ServerNotification::LoggingMessageNotification(
            rmcp::model::LoggingMessageNotification::new(LoggingMessageNotificationParam::new(
                LoggingLevel::Info,
                serde_json::json!(text),
            )),
        )
    }

    fn handler() -> SessionHandler {
        SessionHandler::new(default_client_config(), None)
    }

    #[test]
    fn progress_reaches_only_the_call_whose_token_it_names_even_before_it_is_bound() {
        let handler = handler();
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let a = handler.begin_call(Some(tx_a), None);
        let b = handler.begin_call(Some(tx_b), None);
        // Arrives before either call learned its token.
        handler.route_notification(progress(2, 1.0));
        a.bind(
            &RequestId::Number(1),
            &ProgressToken(NumberOrString::Number(1)),
        );
        b.bind(
            &RequestId::Number(2),
            &ProgressToken(NumberOrString::Number(2)),
        );
        handler.route_notification(progress(1, 1.0));
        handler.route_notification(progress(2, 2.0));
        let token = |n: ServerNotification| match n {
            ServerNotification::ProgressNotification(p) => {
                (p.params.progress_token, p.params.progress)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            token(rx_a.try_recv().unwrap()),
            (ProgressToken(NumberOrString::Number(1)), 1.0)
        );
        assert!(rx_a.try_recv().is_err());
        assert_eq!(token(rx_b.try_recv().unwrap()).1, 1.0);
        assert_eq!(token(rx_b.try_recv().unwrap()).1, 2.0);
        assert!(rx_b.try_recv().is_err());
    }

    #[test]
    fn logging_goes_to_the_only_call_in_flight_else_to_the_session() {
        let handler = handler();
        let mut session = handler.subscribe();
        let (tx, mut rx) = mpsc::channel(8);
        let only = handler.begin_call(Some(tx), None);
        handler.route_notification(log("during the call"));
        assert!(matches!(
            rx.try_recv(),
            Ok(ServerNotification::LoggingMessageNotification(_))
        ));
        let other = handler.begin_call(None, None);
        handler.route_notification(log("two calls: ambiguous"));
        assert!(rx.try_recv().is_err(), "never a guess");
        assert!(session.try_recv().is_ok());
        drop((only, other));
        handler.route_notification(log("outside any call"));
        assert!(session.try_recv().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_list_changed_is_published_twice_at_most() {
        let events = ServerEvents::new(ServerId::new("s").unwrap(), Duration::from_millis(250), 16);
        let mut rx = events.subscribe();
        let handler = SessionHandler::new(default_client_config(), Some(events.clone()));
        let changed = || {
            ServerNotification::ToolListChangedNotification(ToolListChangedNotification::default())
        };
        for _ in 0..10 {
            handler.route_notification(changed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The burst's first, at once.
        assert_eq!(
            rx.try_recv().unwrap().kind,
            ServerEventKind::ToolsListChanged
        );
        assert!(rx.try_recv().is_err());
        tokio::time::sleep(Duration::from_millis(250)).await;
        // One trailing event for the rest of the burst.
        assert_eq!(
            rx.try_recv().unwrap().kind,
            ServerEventKind::ToolsListChanged
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err());
        // A later change is published at once again.
        handler.route_notification(changed());
        assert!(rx.try_recv().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_loss_reported_wins_and_wakes_its_waiters() {
        let handler = handler();
        assert!(!handler.is_lost());
        let waiting = {
            let handler = handler.clone();
            tokio::spawn(async move { handler.lost().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(handler.report_forgotten("HTTP 404"));
        assert!(
            !handler.report_lost("the connection closed"),
            "only the first counts"
        );
        waiting.await.unwrap();
        assert!(handler.is_lost());
        let lost = handler.lost_cause().unwrap();
        assert_eq!(lost.cause(), "HTTP 404");
        assert!(lost.is_forgotten());
        assert_eq!(lost.to_string(), "the session is gone: HTTP 404");
        // Already lost: at once.
        handler.lost().await;
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_lost_connection_disconnects_a_forgotten_session_keeps_receiving() {
        let forgotten = handler();
        forgotten.report_forgotten("HTTP 400 naming the session");
        let never = tokio::time::timeout(Duration::from_secs(3600), forgotten.disconnected());
        assert!(
            never.await.is_err(),
            "answers to requests already sent still come"
        );

        let lost = handler();
        let disconnected = {
            let lost = lost.clone();
            tokio::spawn(async move { lost.disconnected().await })
        };
        lost.report_lost("the event stream could not be re-established");
        disconnected.await.unwrap();
        assert!(!lost.lost_cause().unwrap().is_forgotten());
    }

    /// A transport whose `receive` ends when `end` fires and never sends anything.
    struct Silent {
        end: CancellationToken,
    }

    impl Transport<RoleClient> for Silent {
        type Error = std::io::Error;

        fn send(
            &mut self,
            _item: TxJsonRpcMessage<RoleClient>,
        ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
            std::future::ready(Ok(()))
        }

        async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
            self.end.cancelled().await;
            None
        }

        async fn close(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_tap_reports_a_transport_that_ends_and_ends_a_disconnected_one() {
        // The transport ends: the session is reported lost.
        let handler = handler();
        let end = CancellationToken::new();
        let mut tap = Tap {
            inner: Silent { end: end.clone() },
            handler: handler.clone(),
        };
        end.cancel();
        assert!(tap.receive().await.is_none());
        let lost = handler.lost_cause().expect("reported");
        assert_eq!(lost.cause(), "the connection carrying the session closed");
        assert!(!lost.is_forgotten());

        // Reported lost elsewhere: the tap ends the service loop though the transport would
        // go on.
        let handler = SessionHandler::new(default_client_config(), None);
        let mut tap = Tap {
            inner: Silent {
                end: CancellationToken::new(),
            },
            handler: handler.clone(),
        };
        let receive = tokio::spawn(async move { tap.receive().await.is_none() });
        tokio::task::yield_now().await;
        handler.report_lost("could not be re-established");
        assert!(receive.await.unwrap());

        // Forgotten: the tap keeps receiving.
        let handler = SessionHandler::new(default_client_config(), None);
        handler.report_forgotten("HTTP 404");
        let mut tap = Tap {
            inner: Silent {
                end: CancellationToken::new(),
            },
            handler,
        };
        let receive = tokio::time::timeout(Duration::from_secs(3600), tap.receive());
        assert!(receive.await.is_err(), "still receiving");
    }

    #[derive(Debug)]
    struct Answer;

    #[async_trait::async_trait]
    impl ServerRequestHandler for Answer {
        async fn handle(
            &self,
            _request: ServerRequest,
            _cancel: CancellationToken,
        ) -> Result<ClientResult, ErrorData> {
            Ok(ClientResult::empty(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_naming_a_call_not_yet_bound_waits_for_it() {
        let handler = handler();
        let route = handler.begin_call(None, Some(Arc::new(Answer)));
        let id = RequestId::Number(7);
        let lookup = {
            let handler = handler.clone();
            let id = id.clone();
            tokio::spawn(async move { handler.request_handler(Origin::Call(&id)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        route.bind(&id, &ProgressToken(NumberOrString::Number(0)));
        assert!(lookup.await.unwrap(), "found once bound");
        // Another call's id, with every call bound: no handler, at once.
        assert!(
            handler
                .request_handler(Origin::Call(&RequestId::Number(8)))
                .await
                .is_none()
        );
        drop(route);
        assert!(handler.request_handler(Origin::Unknown).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_outside_every_call_is_never_answered_by_a_call_in_flight() {
        let handler = handler();
        let _route = handler.begin_call(None, Some(Arc::new(Answer)));
        // One stream for everything (SSE, WebSocket): the only call in flight answers.
        assert!(handler.request_handler(Origin::Unknown).await.is_some());
        // Streamable HTTP's standalone stream: outside every call, so nobody's client does,
        // not even the only call's (it may be another client's).
        assert!(
            handler
                .request_handler(Origin::Unassociated)
                .await
                .is_none()
        );
    }

    fn affinity(n: u8) -> AffinityKey {
        AffinityKey(crate::Digest256::Sha256([n; 32]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_outside_every_call_goes_to_the_one_pinned_conversation_that_can_answer() {
        let handler = handler();
        assert!(
            handler
                .request_handler(Origin::Unassociated)
                .await
                .is_none()
        );
        assert!(handler.pin(affinity(1), Conversation::new().requests(Arc::new(Answer))));
        assert!(
            !handler.pin(affinity(1), Conversation::new()),
            "the first pin stays"
        );
        // A conversation without a handler does not make it ambiguous.
        assert!(handler.pin(affinity(2), Conversation::new()));
        assert!(
            handler
                .request_handler(Origin::Unassociated)
                .await
                .is_some()
        );
        assert!(handler.request_handler(Origin::Unknown).await.is_some());
        // Two that could answer: neither does (either answer would stand for both).
        assert!(handler.pin(affinity(3), Conversation::new().requests(Arc::new(Answer))));
        assert!(
            handler
                .request_handler(Origin::Unassociated)
                .await
                .is_none()
        );
        assert!(handler.unpin(&affinity(3)));
        assert!(!handler.unpin(&affinity(3)));
        // A call in flight on a one-stream transport still owns what arrives during it.
        let (tx, _rx) = mpsc::channel(1);
        let _route = handler.begin_call(Some(tx), None);
        assert!(
            handler.request_handler(Origin::Unknown).await.is_none(),
            "the call registered no handler"
        );
    }

    #[test]
    fn notifications_outside_calls_reach_pinned_conversations_until_the_session_leaves() {
        let handler = handler();
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        handler.pin(affinity(1), Conversation::new().notifications(tx_a));
        handler.pin(affinity(2), Conversation::new().notifications(tx_b));
        let (tx_call, mut rx_call) = mpsc::channel(8);
        let call = handler.begin_call(Some(tx_call), None);
        handler.route_notification(log("during the only call"));
        assert!(rx_call.try_recv().is_ok(), "the call's own");
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        drop(call);
        handler.route_notification(log("outside any call"));
        handler.route_notification(progress(9, 1.0));
        for rx in [&mut rx_a, &mut rx_b] {
            assert!(matches!(
                rx.try_recv(),
                Ok(ServerNotification::LoggingMessageNotification(_))
            ));
            assert!(rx.try_recv().is_err(), "progress belongs to calls only");
        }
        assert_eq!(handler.pinned(), 2);
        handler.unpin_all();
        assert_eq!(handler.pinned(), 0);
        assert!(matches!(
            rx_a.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
