//! [`Proxy`]: one downstream session's rmcp handler. Each request it receives goes upstream
//! with [`Pool::call`], under the principal of its [`Caller`] and the session's sticky
//! affinity; what the upstream sends during the call comes back on the downstream request's
//! stream — progress with the downstream request's own token, logging, and the upstream's
//! requests (sampling, elicitation, roots), asked of the downstream client. What a pinned
//! upstream session sends outside calls reaches the downstream sessions pinned to it.
//!
//! No HTTP here: the proxy reads the request's `http::request::Parts` that rmcp puts in each
//! message's extensions.

use std::{
    collections::HashSet,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use mcp_pool::{
    AcquireRequest, CallOptions, Conversation, Pool, PoolError, Principal, ServerId,
    traits::ServerRequestHandler,
};
use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, ClientRequest, ClientResult,
        CompleteRequestParams, CompleteResult, CustomRequest, CustomResult, DiscoverResult,
        ErrorCode, GetExtensions, GetMeta, GetPromptRequestParams, GetPromptResponse,
        InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressToken,
        ReadResourceRequestParams, ReadResourceResponse, Request as McpRequest, RequestId,
        RequestMetaObject, RequestNoParam, RequestOptionalParam, ServerNotification, ServerRequest,
        ServerResult, SubscribeRequestParams, UnsubscribeRequestParams,
    },
    service::{NotificationContext, OriginatingRequestId, Peer, RequestContext, ServiceError},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[allow(deprecated)]
use rmcp::model::SetLevelRequestParams;

use super::{
    caller::{Authorization, Caller},
    sessions::{SessionSlot, Sessions, binding_lost, record_lost},
};
use crate::Registry;

/// Notifications of one call waiting to be sent downstream; a slower client makes the
/// upstream session's reader wait (the pool's per-call sink is bounded too).
const NOTIFICATION_CAPACITY: usize = 64;

/// One downstream session's handler: sends each request upstream through the pool.
pub(crate) struct Proxy {
    registry: Registry,
    pool: Pool,
    server: ServerId,
    /// The sticky affinity of this downstream session: random, never shown.
    affinity: String,
    /// What `Authorization` carries (see [`Caller`]).
    authorization: Authorization,
    /// The owner of the first request; later requests of another owner are refused.
    owner: OnceLock<Principal>,
    /// The upstream's `initialize` result, advertised downstream.
    upstream_info: OnceLock<InitializeResult>,
    /// The server's downstream sessions; this one is `peer_key` in their peers once
    /// initialized.
    sessions: Arc<Sessions>,
    peer_key: u64,
    /// The resources this session subscribed to: their `resources/updated` reach it.
    subscriptions: Arc<Mutex<HashSet<String>>>,
    /// The user's count of this session ([`SessionSlot`]), from `initialize` until dropped.
    slot: OnceLock<SessionSlot>,
    /// Its conversation's upstream session was lost: every request is refused.
    lost: Arc<AtomicBool>,
    /// The pool was seen holding its binding (see [`binding_lost`]); for sessions the HTTP
    /// handler does not check.
    bound: Arc<AtomicBool>,
    /// The channel of its pinned upstream session's traffic outside calls, while the pool's
    /// pin holds its sender (weak here: it closes when the upstream session leaves).
    out_of_call: Mutex<Option<mpsc::WeakSender<ServerNotification>>>,
    /// Cancelled when the downstream session ends: its out-of-call delivery stops quietly.
    ended: CancellationToken,
}

impl Proxy {
    /// The handler of a new downstream session of `server`, one of `sessions`.
    pub(super) fn new(
        registry: Registry,
        server: ServerId,
        authorization: Authorization,
        sessions: Arc<Sessions>,
    ) -> Self {
        Self {
            pool: registry.pool().clone(),
            registry,
            server,
            affinity: uuid::Uuid::new_v4().simple().to_string(),
            authorization,
            owner: OnceLock::new(),
            upstream_info: OnceLock::new(),
            peer_key: sessions.next.fetch_add(1, Ordering::Relaxed),
            sessions,
            subscriptions: Default::default(),
            slot: OnceLock::new(),
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
        let caller = Caller::of(
            &self.registry,
            &self.server,
            self.authorization,
            headers,
            extensions,
        );
        if *self.owner.get_or_init(|| caller.owner) != caller.owner {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another identity",
                None,
            ));
        }
        Ok((caller.principal, caller.headers))
    }

    /// Reads the upstream's `initialize` result from a pooled session of the caller, once per
    /// downstream session: what [`get_info`](ServerHandler::get_info) then advertises.
    async fn learn_upstream(&self, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        if self.upstream_info.get().is_some() {
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
        let _ = self.upstream_info.set(info);
        Ok(())
    }

    /// Sends `request` upstream and sends downstream what belongs to it until the upstream
    /// answers, the downstream cancels, or the call fails.
    async fn call_upstream(
        &self,
        mut request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let (principal, headers) = self.caller(&context)?;
        let method = request.method().to_owned();
        let started = Instant::now();
        let downstream_token = context.meta.get_progress_token();
        request.get_meta_mut().extend(upstream_meta(&context.meta));

        let (sink, mut notifications) = mpsc::channel(NOTIFICATION_CAPACITY);
        if self.lost.load(Ordering::Relaxed) {
            return Err(conversation_lost_error());
        }
        // Over HTTP+SSE and WebSocket no HTTP handler checks a request before it gets here: a
        // binding that ended silently (its session idle, its key dropped) is caught here.
        if !self.slot.get().is_some_and(SessionSlot::is_http_session)
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
                    send_downstream(&context.peer, notification, downstream_token.as_ref()).await;
                }
                outcome = &mut call => break outcome,
            }
        };
        // What the upstream sent before its answer goes out before the answer.
        while let Ok(notification) = notifications.try_recv() {
            send_downstream(&context.peer, notification, downstream_token.as_ref()).await;
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
            if let Some(slot) = self.slot.get() {
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
    /// when the pool holds it: in the slot the streamable HTTP handler checks, else here.
    fn binding_lost(&self, principal: Principal) -> Option<&'static str> {
        let bound = match self.slot.get() {
            Some(slot) if slot.is_http_session() => &slot.0.bound,
            _ => &*self.bound,
        };
        binding_lost(&self.pool, &self.server, principal, &self.affinity, bound)
    }

    /// What this session wants of its pinned upstream session's traffic outside calls: its
    /// notifications, sent by a task of its own ([`deliver_out_of_call`]), and the server's
    /// requests, asked of this session's client. The channel is made on the first pin and
    /// lives while the pool's pin holds it.
    fn conversation(&self, peer: &Peer<RoleServer>, principal: Principal) -> Conversation {
        let mut out_of_call = self.out_of_call.lock();
        let sender = match out_of_call.as_ref().and_then(mpsc::WeakSender::upgrade) {
            Some(sender) => sender,
            None => {
                let (sender, receiver) = mpsc::channel(NOTIFICATION_CAPACITY);
                *out_of_call = Some(sender.downgrade());
                tokio::spawn(deliver_out_of_call(
                    OutOfCall {
                        peer: peer.clone(),
                        subscriptions: self.subscriptions.clone(),
                        ended: self.ended.clone(),
                        lost: self.lost.clone(),
                        bound: self.bound.clone(),
                        slot: self.slot.get().cloned(),
                        pool: self.pool.clone(),
                        server: self.server.clone(),
                        principal,
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

    /// Counts a request sent upstream and its duration by server and method
    /// ([`crate::metrics::record_mcp`]); `outcome` is `ok`, `error` (the upstream's JSON-RPC
    /// error), `failed` (the pool or the transport failed) or `cancelled`.
    fn record(&self, method: &str, outcome: &'static str, started: Instant) {
        crate::metrics::record_mcp(self.server.as_str(), method, outcome, started.elapsed());
    }

    /// [`call_upstream`](Self::call_upstream) for a request whose result is `pick`ed from its
    /// variant.
    async fn call_upstream_as<T>(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
        pick: fn(ServerResult) -> Result<T, Box<ServerResult>>,
    ) -> Result<T, ErrorData>
    where
        T: serde::de::DeserializeOwned,
    {
        let result = self.call_upstream(request, context).await?;
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
        self.sessions.peers.lock().remove(&self.peer_key);
        if let Some(owner) = self.owner.get() {
            self.pool.unbind(&self.server, *owner, &self.affinity);
        }
    }
}

/// The downstream request's `_meta` minus what belongs to the downstream hop: its progress
/// token (the pool's session sets its own) and the 2026-07-28 lifecycle keys (the upstream
/// session negotiated its own version).
fn upstream_meta(meta: &RequestMetaObject) -> RequestMetaObject {
    let mut meta = meta.clone();
    meta.0
        .0
        .retain(|key, _| key != "progressToken" && !key.starts_with("io.modelcontextprotocol/"));
    meta
}

/// Sends one upstream notification of a call to the downstream client; progress carries the
/// downstream request's token (and is dropped when it asked for none). A client gone away
/// loses it, which is all that can happen then.
async fn send_downstream(
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

/// What [`deliver_out_of_call`] needs of its downstream session.
struct OutOfCall {
    peer: Peer<RoleServer>,
    subscriptions: Arc<Mutex<HashSet<String>>>,
    ended: CancellationToken,
    lost: Arc<AtomicBool>,
    bound: Arc<AtomicBool>,
    slot: Option<SessionSlot>,
    pool: Pool,
    server: ServerId,
    principal: Principal,
    affinity: String,
}

/// Sends downstream what a downstream session's pinned upstream session sends outside calls:
/// logging,
/// `resources/updated` of a URI it subscribed to, and any other notification but
/// `*/list_changed` (which [`super::routes`] sends every session). When the channel closes while the
/// downstream session lives, the upstream session left the pool with the conversation's
/// state: the downstream session is told (it ends; its next request gets HTTP 404).
async fn deliver_out_of_call(
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
            _ => send_downstream(&session.peer, notification, None).await,
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
        session.principal,
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

/// `ServerHandler` methods that send their request upstream and expect one result variant.
macro_rules! call_upstream {
    ($(fn $method:ident($params:ty) -> $result:ty => $build:expr, $variant:ident;)*) => {$(
        async fn $method(
            &self,
            params: $params,
            context: RequestContext<RoleServer>,
        ) -> Result<$result, ErrorData> {
            #[allow(clippy::redundant_closure_call)]
            let request = ($build)(params);
            self.call_upstream_as(request, context, |r| match r {
                ServerResult::$variant(r) => Ok(r),
                other => Err(Box::new(other)),
            })
            .await
            .map(Into::into)
        }
    )*};
}

fn optional<M: Default, P>(params: Option<P>) -> RequestOptionalParam<M, P> {
    RequestOptionalParam {
        method: M::default(),
        params,
        extensions: Default::default(),
    }
}

impl ServerHandler for Proxy {
    fn get_info(&self) -> InitializeResult {
        self.upstream_info.get().cloned().unwrap_or_default()
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
            let _ = self.slot.set(slot.clone());
        }
        self.learn_upstream(&context).await?;
        self.sessions
            .peers
            .lock()
            .insert(self.peer_key, context.peer.clone());
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
        self.call_upstream(ping, context).await.map(drop)
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        params: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let request = ClientRequest::SetLevelRequest(McpRequest::new(params));
        self.call_upstream(request, context).await.map(drop)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        params: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let uri = params.uri.clone();
        let request = ClientRequest::SubscribeRequest(McpRequest::new(params));
        self.call_upstream(request, context).await?;
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
        self.call_upstream(request, context).await.map(drop)
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
            .call_upstream(ClientRequest::CustomRequest(request), context)
            .await?;
        match result {
            ServerResult::CustomResult(result) => Ok(result),
            other => serde_json::to_value(other)
                .map(CustomResult)
                .map_err(|error| ErrorData::internal_error(error.to_string(), None)),
        }
    }

    call_upstream! {
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
