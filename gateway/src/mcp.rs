//! The downstream MCP endpoint `/servers/{id}/mcp` (issue 11, item 3): rmcp's streamable HTTP
//! server facing the client, the pool facing the upstream.
//!
//! Each downstream session gets its own [`Proxy`]; every request it receives is forwarded with
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

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mcp_pool::{
    AcquireRequest, CallOptions, Pool, PoolError, Principal, ServerId, traits::ServerRequestHandler,
};
use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        ClientRequest, ClientResult, ErrorCode, GetExtensions, GetMeta, InitializeRequestParams,
        InitializeResult, ProgressToken, Request as McpRequest, RequestId, RequestMetaObject,
        RequestNoParam, RequestOptionalParam, ServerNotification, ServerRequest, ServerResult,
    },
    service::{OriginatingRequestId, Peer, RequestContext, ServiceError},
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, AppState, auth::Claims};

/// Notifications of one call waiting to be relayed downstream; a slower client makes the
/// upstream session's reader wait (the pool's per-call sink is bounded too).
const RELAY_CAPACITY: usize = 64;

/// The streamable HTTP service of each server, created on the first request to its endpoint.
/// Dropped with the gateway: its cancellation token ends every downstream session.
#[derive(Default)]
pub struct McpEndpoints {
    services: Mutex<HashMap<ServerId, McpService>>,
    shutdown: CancellationToken,
}

type McpService = StreamableHttpService<Proxy, LocalSessionManager>;

impl std::fmt::Debug for McpEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpEndpoints")
            .field("servers", &self.services.lock().len())
            .finish()
    }
}

impl McpEndpoints {
    /// Ends every downstream session (graceful shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.services.lock().clear();
    }

    /// Ends the downstream sessions of `server` (it was deleted or its endpoints changed).
    pub fn forget(&self, server: &ServerId) {
        if let Some(service) = self.services.lock().remove(server) {
            service.config.cancellation_token.cancel();
        }
    }

    fn service(&self, state: &AppState, server: &ServerId) -> McpService {
        let mut services = self.services.lock();
        if let Some(service) = services.get(server) {
            return service.clone();
        }
        let pool = state.pool.clone();
        let id = server.clone();
        let strip_authorization = state.auth.is_required();
        let config = StreamableHttpServerConfig::default()
            // The gateway is meant to be reached by name; DNS rebinding matters for servers on
            // a desktop, and the gateway's own auth covers it (documented in the README).
            .disable_allowed_hosts()
            .with_max_request_body_bytes(state.max_body_bytes)
            .with_cancellation_token(self.shutdown.child_token());
        let service = StreamableHttpService::new(
            move || Ok(Proxy::new(pool.clone(), id.clone(), strip_authorization)),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        services.insert(server.clone(), service.clone());
        service
    }
}

/// `ANY /servers/{id}/mcp`: the server's streamable HTTP endpoint. 404 `{"detail"}` for a
/// server the pool does not know; a `DELETE` that ends a session answers 200.
pub(crate) async fn endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let Some(server) = ServerId::new(&id)
        .ok()
        .filter(|s| state.pool.server_config(s).is_some())
    else {
        return ApiError::new(StatusCode::NOT_FOUND, "Server not found").into_response();
    };
    let service = state.mcp.service(&state, &server);
    let is_delete = request.method() == http::Method::DELETE;
    let mut response = service.handle(request).await.map(Body::new);
    // rmcp answers a DELETE that ended the session with 202 Accepted; the official SDKs'
    // servers answer 200, and the Python SDK client logs any status but 200 and 204 as a
    // failed session termination.
    if is_delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// One downstream session's handler: forwards each request through the pool.
pub(crate) struct Proxy {
    pool: Pool,
    server: ServerId,
    /// The sticky affinity of this downstream session: random, never shown.
    affinity: String,
    /// With gateway auth on, `Authorization` carries the gateway's JWT: it is neither part of
    /// the upstream identity nor forwarded.
    strip_authorization: bool,
    /// The principal of the first request; later requests of another principal are refused.
    principal: OnceLock<Principal>,
    /// The upstream's `initialize` result, advertised downstream.
    upstream: OnceLock<InitializeResult>,
}

impl Proxy {
    fn new(pool: Pool, server: ServerId, strip_authorization: bool) -> Self {
        Self {
            pool,
            server,
            affinity: uuid::Uuid::new_v4().simple().to_string(),
            strip_authorization,
            principal: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }

    /// The caller of a downstream request: its principal and the headers the pool sees (with
    /// gateway auth on, without the gateway's JWT). A principal other than the session's first
    /// is refused: a downstream session id is bound to the identity that created it.
    fn caller(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<(Principal, http::HeaderMap), ErrorData> {
        let parts = context.extensions.get::<http::request::Parts>();
        let mut headers = parts.map(|p| p.headers.clone()).unwrap_or_default();
        if self.strip_authorization {
            headers.remove(http::header::AUTHORIZATION);
        }
        let user = parts
            .and_then(|p| p.extensions.get::<Claims>())
            .and_then(Claims::user);
        let principal = self.pool.principal(user, &headers);
        if *self.principal.get_or_init(|| principal) != principal {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another identity",
                None,
            ));
        }
        Ok((principal, headers))
    }

    /// Forwards `request` and relays what belongs to it until the upstream answers, the
    /// downstream cancels, or the call fails.
    async fn forward(
        &self,
        mut request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let (principal, headers) = self.caller(&context)?;
        let downstream_token = context.meta.get_progress_token();
        request.get_meta_mut().extend(forwarded_meta(&context.meta));

        let (sink, mut notifications) = mpsc::channel(RELAY_CAPACITY);
        let options = CallOptions::new()
            .headers(headers.clone())
            .notifications(sink)
            .requests(Arc::new(AskDownstream {
                peer: context.peer.clone(),
                call: context.id.clone(),
            }));
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
        outcome.map_err(upstream_error)
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
    /// The downstream request id of the call.
    call: RequestId,
}

#[async_trait::async_trait]
impl ServerRequestHandler for AskDownstream {
    async fn handle(
        &self,
        mut request: ServerRequest,
        cancel: CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        request
            .extensions_mut()
            .insert(OriginatingRequestId(self.call.clone()));
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
        if self.upstream.get().is_none() {
            let (principal, headers) = self.caller(&context)?;
            let acquire = AcquireRequest::new(&self.server)
                .principal(principal)
                .headers(&headers)
                .downstream_session(&self.affinity);
            let lease = self
                .pool
                .acquire_with(acquire)
                .await
                .map_err(upstream_error)?;
            let _ = self.upstream.set(lease.peer().peer_info().map_or_else(
                InitializeResult::default,
                |peer| {
                    let mut info = InitializeResult::new(peer.capabilities.clone());
                    info.protocol_version = peer.protocol_version.clone();
                    if let Some(server) = &peer.server_info {
                        info.server_info = server.clone();
                    }
                    info.instructions = peer.instructions.clone();
                    info
                },
            ));
        }
        self.negotiate_initialize(&request)
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
        let request = ClientRequest::SubscribeRequest(McpRequest::new(params));
        self.forward(request, context).await.map(drop)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        params: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let request = ClientRequest::UnsubscribeRequest(McpRequest::new(params));
        self.forward(request, context).await.map(drop)
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
