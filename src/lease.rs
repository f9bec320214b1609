//! [`Lease`]: a session checked out of the pool, and [`CallOptions`]: what one call on it
//! carries besides its request.

use std::{
    fmt,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use http::HeaderMap;
use mcp_pool_traits::{
    AffinityKey, CallHeaders, Conversation, LeaseOutcome, LeaseReport, PoolKey, SelectContext,
    ServerRequestHandler, SessionId, SessionLost, is_transport_failure,
    rmcp::{
        Peer, RoleClient, ServiceError,
        model::{
            CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotification,
            CancelledNotificationParam, ClientNotification, ClientRequest, GetExtensions,
            ListToolsRequest, ListToolsResult, PaginatedRequestParams, RequestId,
            ServerNotification, ServerResult,
        },
        service::PeerRequestOptions,
        transport::DynamicTransportError,
    },
};
use mcp_pool_transports::{CallFailure, NotDelivered, call_failure, failure_cause};
use tokio::sync::{broadcast, mpsc};

use crate::key::{Granted, KeyPool, Link};

/// What one call on a lease carries besides its request: a deadline, the downstream request's
/// headers, where the server's notifications for the call go, and who answers the server's
/// requests during it. `CallOptions::default()` uses the server's `call_timeout` and sends no
/// per-call headers; notifications of the call are dropped and requests of the server are
/// answered with a JSON-RPC error.
#[derive(Clone, Default)]
pub struct CallOptions {
    timeout: Option<Duration>,
    headers: Option<HeaderMap>,
    notifications: Option<mpsc::Sender<ServerNotification>>,
    requests: Option<Arc<dyn ServerRequestHandler>>,
    refuse_rebind: bool,
    pin: Option<Conversation>,
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field("timeout", &self.timeout)
            .field(
                "headers",
                &self.headers.as_ref().map(mcp_pool_traits::RedactedHeaders),
            )
            .field("notifications", &self.notifications.is_some())
            .field("requests", &self.requests.is_some())
            .field("refuse_rebind", &self.refuse_rebind)
            .field("pin", &self.pin)
            .finish()
    }
}

impl CallOptions {
    /// The defaults (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the call with [`ServiceError::Timeout`] after `timeout` instead of the server's
    /// `call_timeout` ([`ServerConfig::call_timeout`](crate::ServerConfig::call_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The downstream request's headers. The call's upstream request carries, on streamable
    /// HTTP and SSE:
    /// - its trace and correlation headers ([`PoolBuilder::trace_headers`](crate::PoolBuilder::trace_headers),
    ///   default [`DEFAULT_TRACE_HEADERS`](crate::DEFAULT_TRACE_HEADERS));
    /// - its forwarded credentials (the identity headers and the allow-list of
    ///   [`IdentityConfig`](mcp_pool_traits::IdentityConfig)), which also replace the
    ///   session's for its later requests (the `DELETE` at close included) — but only when they
    ///   hash to the lease's identity: another identity's credentials are never sent on this
    ///   session; the session's own are sent then.
    ///
    /// WebSocket sends headers only in its handshake: per-call headers do not reach a
    /// WebSocket upstream, and a rotated token takes effect with the next session.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Whether [`headers`](Self::headers) was set.
    pub(crate) fn has_headers(&self) -> bool {
        self.headers.is_some()
    }

    /// Where the server's notifications for this call go: its `notifications/progress` (by
    /// the call's progress token, exact at any `session_concurrency`) and its logging while it
    /// is the only call in flight on the session. A full channel drops the notification.
    pub fn notifications(mut self, sink: mpsc::Sender<ServerNotification>) -> Self {
        self.notifications = Some(sink);
        self
    }

    /// Never continue a conversation on a fresh session: when the acquire
    /// [rebinds](Lease::is_rebound) (the affinity's bound session was lost, and with it the
    /// server-side state), [`Pool::call`](crate::Pool::call) sends nothing and fails with
    /// [`PoolError::ConversationLost`](crate::PoolError::ConversationLost). The new session
    /// stays bound to the affinity; a caller that starts over with the same affinity gets it.
    pub fn refuse_rebind(mut self) -> Self {
        self.refuse_rebind = true;
        self
    }

    /// Whether [`refuse_rebind`](Self::refuse_rebind) was set.
    pub(crate) fn refuses_rebind(&self) -> bool {
        self.refuse_rebind
    }

    /// Pins the conversation to the session that serves this call, under any strategy, with
    /// what it wants of the session's traffic outside calls: what a call that creates
    /// session-scoped state upstream asks for (`resources/subscribe`, `logging/setLevel`,
    /// the client's `notifications/roots/list_changed`). See
    /// [`Lease::pin`] (a lease's own [`send`](Lease::send) ignores it: pin with that). [`Pool::call`](crate::Pool::call) pins once the call succeeded (a
    /// failed call created no state), so that the state is where the conversation's next
    /// calls go. Needs the acquire's
    /// [`downstream_session`](crate::AcquireRequest::downstream_session); without one, or on
    /// a strategy that binds (sticky), nothing is pinned.
    pub fn pin(mut self, conversation: Conversation) -> Self {
        self.pin = Some(conversation);
        self
    }

    /// The conversation to pin ([`pin`](Self::pin)).
    pub(crate) fn pinned(&self) -> Option<&Conversation> {
        self.pin.as_ref()
    }

    /// Who answers the server's requests during this call (`sampling/createMessage`,
    /// `elicitation/create`, `roots/list`). The server only makes them if the client
    /// advertised the capability: [`ServerConfig::client_capabilities`](crate::ServerConfig::client_capabilities).
    pub fn requests(mut self, handler: Arc<dyn ServerRequestHandler>) -> Self {
        self.requests = Some(handler);
        self
    }
}

/// Whether a failed call was handed to the session (it may have reached the server) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The session refused the request: it was closed. Never reached the server.
    NotSent,
    /// The request went to the transport.
    Sent,
}

/// Whether `error` is the failure of a call on a session reported lost ([`Lease::lost_error`]).
fn is_session_lost(error: &ServiceError) -> bool {
    matches!(error, ServiceError::TransportSend(e) if e.error.is::<SessionLost>())
}

/// A session checked out of the pool. Derefs to rmcp's [`Peer<RoleClient>`], so the rmcp API
/// works as usual; dropping the lease returns the session (also on panic and cancellation).
///
/// Calls made with [`send`](Self::send) (or [`call_tool`](Self::call_tool),
/// [`list_tools`](Self::list_tools) and their `_with` forms) carry a whole MCP exchange:
/// [`CallOptions`] routes the server's notifications and requests to the caller, sends the
/// downstream request's trace headers and current credentials, and bounds the call by a
/// deadline. Calls made on the [`Peer`] directly have none of that.
///
/// A session that failed at the transport level must not be handed out again: calls through
/// the lease's methods and [`check`](Self::check) mark the lease broken on a transport error
/// (rmcp's streamable HTTP client never reports its own death), and
/// [`mark_broken`](Self::mark_broken) does so explicitly. A broken lease's session is evicted
/// when the lease is dropped. A call that timed out or was dropped before its reply leaves the
/// session in doubt: when the lease is dropped the session is probed (the health check chain,
/// bounded by [`PoolBuilder::cancel_grace`](crate::PoolBuilder::cancel_grace)) before anyone
/// else gets it, and evicted if the server does not answer.
///
/// No call waits for its deadline on a session known to be gone. When its transport reports
/// it [lost](mcp_pool_traits::SessionHandler::report_lost) (its connection closed, or could not be
/// re-established) or [forgotten](mcp_pool_traits::SessionHandler::report_forgotten) (the server answered its
/// event stream with HTTP 404 or 400), or a call's answer shows the server does not know it
/// (HTTP 404, or 400 naming the session), it is evicted at once with reason
/// [`Lost`](mcp_pool_traits::EvictionReason::Lost) and no acquire gets it again. A call sent on
/// it afterwards fails without being sent; a call in flight fails at once when the connection
/// is gone, or gets the server's own prompt answer when the server merely forgot the session
/// (a refusal, which [`Pool::call`](crate::Pool::call) may retry on another session, or its
/// result). The failure is a transport failure holding a [`SessionLost`] (inside
/// `ServiceError::TransportSend`).
pub struct Lease {
    key: Arc<KeyPool>,
    id: SessionId,
    link: Arc<Link>,
    endpoint: usize,
    broken: AtomicBool,
    suspect: AtomicBool,
    hit: bool,
    rebound: bool,
    /// When it was handed out, if its selector observes leases (no clock read otherwise).
    acquired: Option<Instant>,
}

impl Lease {
    #[inline]
    pub(crate) fn new(key: Arc<KeyPool>, granted: Granted<Arc<Link>>) -> Self {
        Self {
            key,
            id: granted.id,
            link: granted.handle,
            endpoint: granted.endpoint,
            broken: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            hit: granted.hit,
            rebound: granted.rebound,
            acquired: granted.observed.then(Instant::now),
        }
    }

    /// The session's id, unique in this process.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The key the session belongs to. Sessions never cross keys.
    pub fn key(&self) -> &PoolKey {
        &self.key.key
    }

    /// `true` when an existing session served the acquire, `false` when it was created for it.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// `true` when this session replaced a sticky-bound session that is gone (died, expired,
    /// drained, or closed to make room under `max_size` or a cap): the server-side state of
    /// the conversation was lost with it.
    ///
    /// What a caller must do: tell whoever owns the conversation that it starts over — never
    /// carry on as if the new session held the old one's state. An MCP gateway ends the
    /// downstream session (its next request gets HTTP 404, the MCP spec's signal to
    /// initialize again); [`CallOptions::refuse_rebind`] makes [`Pool::call`](crate::Pool::call)
    /// fail instead of sending on such a session, and
    /// [`Pool::affinity_state`](crate::Pool::affinity_state) says whether a conversation's
    /// binding is still live before a request is even made.
    pub fn is_rebound(&self) -> bool {
        self.rebound
    }

    /// Pins the conversation `downstream_session` (the id given to
    /// [`AcquireRequest::downstream_session`](crate::AcquireRequest::downstream_session)) to
    /// this lease's session, on a strategy that shares sessions:
    ///
    /// - its later acquires get this session whatever the strategy would pick (waiting while
    ///   it is busy), so its requests meet the session-scoped state they created
    ///   (subscriptions, the log level, roots); the session still serves everyone the
    ///   strategy sends to it;
    /// - `conversation` receives what the session sends outside calls (see
    ///   [`SessionHandler`](mcp_pool_traits::SessionHandler)'s routing table);
    /// - the session is never closed for idleness while a conversation is pinned to it;
    /// - when the session leaves the pool for any other reason, the conversation's channel
    ///   closes, [`Pool::affinity_state`](crate::Pool::affinity_state) says
    ///   [`Lost`](mcp_pool_traits::AffinityState::Lost), and its next lease
    ///   [`is_rebound`](Self::is_rebound) (or [`CallOptions::refuse_rebind`] refuses it):
    ///   the state is gone, and the conversation must start over;
    /// - [`Pool::unbind`](crate::Pool::unbind) ends the pin (the session stays: it is shared).
    ///
    /// Returns `false` when nothing was pinned: the strategy binds (sticky: the binding pins
    /// already), the server does not pool, the session is leaving the pool, or the
    /// conversation is pinned already (its first pin, and its first `conversation`, stay).
    pub fn pin(&self, downstream_session: &str, conversation: Conversation) -> bool {
        self.pin_affinity(
            AffinityKey::downstream_session(downstream_session),
            conversation,
        )
    }

    /// [`pin`](Self::pin) by affinity.
    pub(crate) fn pin_affinity(&self, affinity: AffinityKey, conversation: Conversation) -> bool {
        let ctx = SelectContext {
            affinity: Some(affinity),
        };
        self.key.pin(&ctx, self.id, conversation)
    }

    /// The rmcp peer (also reachable through `Deref`).
    pub fn peer(&self) -> &Peer<RoleClient> {
        &self.link.peer
    }

    /// The session's notifications that belong to no call — `*/list_changed`,
    /// `resources/updated`, logging outside a call — from now on. The receiver lives as long
    /// as the session, across leases: a sticky conversation subscribes once. It lags (and
    /// says so) past [`SESSION_EVENTS_CAPACITY`](mcp_pool_traits::SESSION_EVENTS_CAPACITY)
    /// unread notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerNotification> {
        self.link.handler.subscribe()
    }

    /// Marks the session unusable: it is evicted when the lease is dropped.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Whether the lease was marked broken.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Passes `result` through, marking the lease broken when it is a transport failure
    /// ([`is_transport_failure`]). Wrap any rmcp call with it:
    /// `lease.check(lease.list_prompts(None).await)`.
    ///
    /// # Errors
    /// `result`'s own error.
    ///
    /// Every checked result also counts in the server's and the endpoint's health score: a
    /// reply (a JSON-RPC error included: the server answered) as a success; a transport
    /// failure or a request timeout as a failure, in words as the endpoint's last error; a
    /// cancellation not at all. A failure showing that the server does not know the session
    /// (HTTP 404, or 400 naming it) reports the session forgotten: it is evicted at once (see
    /// [`Lease`]).
    pub fn check<T>(&self, result: Result<T, ServiceError>) -> Result<T, ServiceError> {
        match &result {
            Ok(_) | Err(ServiceError::McpError(_)) => self.key.record_call(self.endpoint, true),
            Err(error) if is_session_lost(error) => {
                // Counted when the session was reported lost.
                self.mark_broken();
            }
            Err(error) if is_transport_failure(error) => {
                self.mark_broken();
                let cause = self.record_failure(error);
                if call_failure(error)
                    == Some(CallFailure::NotDelivered(NotDelivered::SessionExpired))
                {
                    // Evicted now (the loss is this call's failure, counted above), then
                    // reported to every other user of the session.
                    self.key.session_lost(self.id, &cause, false);
                    self.link.handler.report_forgotten(cause);
                }
            }
            Err(error @ ServiceError::Timeout { .. }) => {
                self.record_failure(error);
            }
            Err(_) => {}
        }
        result
    }

    /// Records `error` as a failed call on the session's endpoint; returns its cause in words
    /// (the endpoint's URL, as configured or redacted, replaced by `the endpoint`).
    fn record_failure(&self, error: &ServiceError) -> String {
        let cause = self.key.without_url(self.endpoint, &failure_cause(error));
        self.key
            .record_call_failure(self.endpoint, &format!("call failed: {cause}"));
        cause
    }

    /// The error of a call on a session reported lost: a transport failure holding the
    /// [`SessionLost`].
    fn lost_error(&self) -> ServiceError {
        let lost = self
            .link
            .handler
            .lost_cause()
            .cloned()
            .unwrap_or_else(|| SessionLost::disconnected("reported lost"));
        ServiceError::TransportSend(DynamicTransportError::from_parts(
            "mcp-pool",
            std::any::TypeId::of::<SessionLost>(),
            Box::new(lost),
        ))
    }

    /// Index of the session's endpoint in the server's endpoint list.
    pub fn endpoint_index(&self) -> usize {
        self.endpoint
    }

    /// The URL of the session's endpoint, user-info redacted.
    pub fn endpoint_url(&self) -> String {
        self.key.endpoint_url(self.endpoint)
    }

    pub(crate) fn binds(&self) -> bool {
        self.key.binds()
    }

    pub(crate) fn count_retry(&self, reason: &'static str) {
        self.key.count_retry(reason);
    }

    /// Sends `request` and waits for its result, with what `options` carries (see
    /// [`CallOptions`]).
    ///
    /// When the deadline passes, or the returned future is dropped before the reply, the
    /// server gets `notifications/cancelled` for the request, and the session is probed
    /// before it serves anyone else (see [`Lease`]). When the session's connection is reported
    /// gone, the call fails at once.
    ///
    /// # Errors
    /// rmcp's [`ServiceError`]: [`McpError`](ServiceError::McpError) when the server answered
    /// with a JSON-RPC error (the session stays pooled); [`Timeout`](ServiceError::Timeout)
    /// past the deadline; a transport failure ([`is_transport_failure`]), which marks the
    /// lease broken: a [`SessionLost`] in `TransportSend` when the session is gone.
    pub async fn send(
        &self,
        request: ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult, ServiceError> {
        self.send_staged(request, options).await.map_err(|(e, _)| e)
    }

    /// [`send`](Self::send), saying on failure whether the request reached the transport.
    pub(crate) async fn send_staged(
        &self,
        mut request: ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult, (ServiceError, Stage)> {
        let CallOptions {
            timeout,
            headers,
            notifications,
            requests,
            refuse_rebind: _,
            pin: _,
        } = options;
        let headers = headers
            .map(|h| self.key.call_headers(&h))
            .filter(|h| !h.is_empty());
        if let Some(headers) = &headers {
            request.extensions_mut().insert(headers.clone());
        }
        let timeout = timeout.unwrap_or_else(|| self.key.call_timeout());
        if self.link.handler.is_lost() {
            // Reported lost since the acquire: nothing is sent.
            let error = self.check::<()>(Err(self.lost_error())).unwrap_err();
            return Err((error, Stage::NotSent));
        }
        let route = self.link.handler.begin_call(notifications, requests);
        let handle = match self
            .link
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(handle) => handle,
            Err(error) => {
                let error = self.check::<()>(Err(error)).unwrap_err();
                return Err((error, Stage::NotSent));
            }
        };
        route.bind(&handle.id, &handle.progress_token);
        let mut pending = Pending {
            lease: self,
            id: Some(handle.id),
            headers,
        };
        let result = tokio::select! {
            // An answer that is there wins over a loss reported meanwhile.
            biased;
            answer = tokio::time::timeout(timeout, handle.rx) => match answer {
                Ok(Ok(result)) => result,
                // The service loop ended without answering: the session died under the call.
                Ok(Err(_closed)) => Err(ServiceError::TransportClosed),
                Err(_elapsed) => {
                    pending.cancel("the call's deadline passed");
                    Err(ServiceError::Timeout { timeout })
                }
            },
            () = self.link.handler.disconnected() => {
                // The connection is gone: no answer will come, and the server that may have
                // run the call cannot be told to cancel it on this session. (A server that
                // forgot the session answers the call itself.)
                pending.id = None;
                Err(self.lost_error())
            }
        };
        pending.id = None;
        drop(route);
        self.check(result).map_err(|e| (e, Stage::Sent))
    }

    /// `tools/call` with the server's `call_timeout`, no per-call headers, no routing.
    ///
    /// # Errors
    /// As [`send`](Self::send); a reply of another kind (an MRTR `input_required` result, a
    /// task) is [`ServiceError::UnexpectedResponse`] (use the [`Peer`] for those).
    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
    ) -> Result<CallToolResult, ServiceError> {
        self.call_tool_with(params, CallOptions::default()).await
    }

    /// `tools/call` with `options`.
    ///
    /// # Errors
    /// As [`call_tool`](Self::call_tool).
    pub async fn call_tool_with(
        &self,
        params: CallToolRequestParams,
        options: CallOptions,
    ) -> Result<CallToolResult, ServiceError> {
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        match self.send(request, options).await? {
            ServerResult::CallToolResult(result) => Ok(result),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    /// `tools/list` with the server's `call_timeout`.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn list_tools(
        &self,
        params: Option<PaginatedRequestParams>,
    ) -> Result<ListToolsResult, ServiceError> {
        self.list_tools_with(params, CallOptions::default()).await
    }

    /// `tools/list` with `options`.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn list_tools_with(
        &self,
        params: Option<PaginatedRequestParams>,
        options: CallOptions,
    ) -> Result<ListToolsResult, ServiceError> {
        let request = ClientRequest::ListToolsRequest(match params {
            Some(params) => ListToolsRequest::with_param(params),
            None => ListToolsRequest::default(),
        });
        match self.send(request, options).await? {
            ServerResult::ListToolsResult(result) => Ok(result),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }
}

/// A request on the wire without its reply: dropped armed (the caller gave up, or the
/// deadline passed), it tells the server (`notifications/cancelled`) and puts the session in
/// doubt until a probe clears it.
struct Pending<'a> {
    lease: &'a Lease,
    id: Option<RequestId>,
    headers: Option<CallHeaders>,
}

impl Pending<'_> {
    fn cancel(&mut self, reason: &str) {
        let Some(id) = self.id.take() else { return };
        self.lease.suspect.store(true, Ordering::Relaxed);
        let mut notification = CancelledNotification::new(CancelledNotificationParam::new(
            Some(id),
            Some(reason.to_owned()),
        ));
        if let Some(headers) = self.headers.take() {
            notification.extensions.insert(headers);
        }
        let peer = self.lease.link.peer.clone();
        self.lease.key.spawn_tracked(async move {
            let _ = peer
                .send_notification(ClientNotification::CancelledNotification(notification))
                .await;
        });
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.cancel("the caller stopped waiting for the call");
    }
}

impl Deref for Lease {
    type Target = Peer<RoleClient>;

    fn deref(&self) -> &Peer<RoleClient> {
        &self.link.peer
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("session", &self.id)
            .field("key", &self.key.key.short())
            .field("hit", &self.hit)
            .field("rebound", &self.rebound)
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        let broken = self.is_broken() || std::thread::panicking();
        let in_doubt = !broken && self.suspect.load(Ordering::Relaxed);
        let outcome = if broken {
            LeaseOutcome::Broken
        } else if in_doubt {
            LeaseOutcome::InDoubt
        } else {
            LeaseOutcome::Ok
        };
        let report = self
            .acquired
            .map(|at| LeaseReport::new(self.id, self.endpoint, at.elapsed(), outcome));
        if in_doubt {
            self.key.release_in_doubt(self.id, report.as_ref());
        } else {
            self.key.release(self.id, broken, report.as_ref());
        }
    }
}
