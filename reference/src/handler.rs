//! [`ReferenceHandler`]: the MCP tools of the reference server, one instance per session.

// Logging, sampling and roots are deprecated by SEP-2577 (protocol 2026-07-28) but are what
// MCP 2025-11-25 servers send, and what the pool must carry to the lease holder: the reference
// server uses them on purpose.
#![expect(
    deprecated,
    reason = "logging, sampling and roots are MCP 2025-11-25 features under test"
)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, Peer, RoleServer, ServerHandler, ServiceError,
    handler::server::{router::tool::ToolRouter, tool::ToolCallContext, wrapper::Parameters},
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult, ContentBlock,
        CreateMessageRequestParams, ElicitRequest, ElicitRequestParams, ElicitationSchema,
        GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation,
        InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourcesResult,
        LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
        PrimitiveSchemaDefinition, ProgressNotificationParam, Prompt, PromptArgument,
        PromptMessage, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Resource, ResourceContents, ResourceUpdatedNotificationParam, Role,
        SamplingMessage, ServerCapabilities, ServerConfig, ServerRequest, SetLevelRequestParams,
        StringSchema,
    },
    schemars,
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use serde::Deserialize;
use tokio::sync::watch;

use super::stats::Counters;

/// The name the reference server reports in its `initialize` result.
pub const SERVER_NAME: &str = "mcp-pool-reference-server";

/// The `logger` of every logging message the reference server sends (`log` and `notify`).
pub const LOGGER: &str = "reference";

/// The resource URI of the `resources/updated` notification the `notify` tool sends.
pub const UPDATED_RESOURCE: &str = "ref://counter";

/// The URI of the one resource the reference server lists.
pub const GREETING_RESOURCE: &str = "ref://greeting";

/// The text of [`GREETING_RESOURCE`].
pub const GREETING_TEXT: &str = "hello from the reference server";

/// The name of the one prompt the reference server lists (argument `name`).
pub const GREET_PROMPT: &str = "greet";

/// The most `progress` notifications one `progress` call may ask for: a bound, so that a bad
/// argument cannot flood a session.
pub const MAX_PROGRESS_STEPS: u32 = 10_000;

/// The `maxTokens` of the `sample` tool's `sampling/createMessage` request.
pub const SAMPLE_MAX_TOKENS: u32 = 16;

/// The tool list is the same for every session: build it, with its JSON schemas, once.
static TOOL_ROUTER: LazyLock<ToolRouter<ReferenceHandler>> =
    LazyLock::new(ReferenceHandler::tool_router);

/// Arguments of the `echo` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    message: String,
}

/// Arguments of the `sleep` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    /// How long to sleep, in milliseconds.
    ms: u64,
}

/// Arguments of the `fail` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct FailArgs {
    /// The error message to return; a default one when absent.
    message: Option<String>,
}

/// Arguments of the `progress` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ProgressArgs {
    /// How many progress notifications to send, at most 10000.
    steps: u32,
    /// Milliseconds to wait before each notification; 0 by default.
    #[serde(default)]
    delay_ms: u64,
}

/// Arguments of the `log` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct LogArgs {
    /// One logging notification is sent per message, in order.
    messages: Vec<String>,
    /// The level of every message; `info` by default.
    #[serde(default = "info")]
    level: LoggingLevel,
}

fn info() -> LoggingLevel {
    LoggingLevel::Info
}

/// What the `notify` tool sends: one notification per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum NotifyKind {
    /// `notifications/tools/list_changed`.
    Tools,
    /// `notifications/resources/list_changed`.
    Resources,
    /// `notifications/prompts/list_changed`.
    Prompts,
    /// `notifications/resources/updated` for `ref://counter`.
    Updated,
    /// `notifications/message` with data `"session-level"`, level `info`, logger `reference`.
    Log,
}

/// Arguments of the `notify` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct NotifyArgs {
    /// The notifications to send, in this order.
    kinds: Vec<NotifyKind>,
    /// 0 (the default): send them before answering. More: answer at once and send them this
    /// many milliseconds later, outside any request.
    #[serde(default)]
    after_ms: u64,
}

/// Arguments of the `sample` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SampleArgs {
    /// The text of the one user message of the sampling request.
    prompt: String,
}

/// Arguments of the `elicit` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ElicitArgs {
    /// The message of the elicitation request.
    message: String,
}

/// Sends the notifications `kinds` asks for on `peer`, in order.
async fn send_notifications(
    peer: &Peer<RoleServer>,
    kinds: &[NotifyKind],
) -> Result<(), ServiceError> {
    for kind in kinds {
        match kind {
            NotifyKind::Tools => peer.notify_tool_list_changed().await?,
            NotifyKind::Resources => peer.notify_resource_list_changed().await?,
            NotifyKind::Prompts => peer.notify_prompt_list_changed().await?,
            NotifyKind::Updated => {
                peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(
                    UPDATED_RESOURCE,
                ))
                .await?;
            }
            NotifyKind::Log => {
                peer.notify_logging_message(
                    LoggingMessageNotificationParam::new(
                        LoggingLevel::Info,
                        "session-level".into(),
                    )
                    .with_logger(LOGGER),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The tool result of a request to the client that failed: `is_error`, text
/// `"<what> failed: <message>"`, where the message is the client's JSON-RPC error message, or
/// rmcp's description of any other failure (the session closed, an unexpected reply).
fn client_request_failed(what: &str, error: ServiceError) -> CallToolResult {
    let message = match error {
        ServiceError::McpError(error) => error.message.into_owned(),
        other => other.to_string(),
    };
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{what} failed: {message}"
    ))])
}

/// A successful tool result of one text content.
fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// The reference MCP server's handler: one instance per MCP session, so state kept in it (the
/// `counter` tool) is per session.
///
/// Tools:
/// - `echo {"message": string}` → one text content equal to `message`;
/// - `counter {}` → `"1"`, `"2"`, … on successive calls within one session;
/// - `sleep {"ms": integer}` → waits `ms` milliseconds (`tokio::time::sleep`, so it follows a
///   paused test clock), then returns `"slept"`; a call the client cancels
///   (`notifications/cancelled`) stops at once and counts in `calls_cancelled`;
/// - `fail {"message"?: string}` → a JSON-RPC internal error (code -32603) carrying `message`,
///   which an rmcp client sees as `ServiceError::McpError`.
///
/// Tools that make the server talk to the client besides replying (what a lease must carry),
/// MCP 2025-11-25 semantics:
/// - `progress {"steps": integer, "delay_ms"?: integer}` → sends `steps` (at most
///   [`MAX_PROGRESS_STEPS`]) `notifications/progress` with the request's progress token
///   (`_meta.progressToken`), progress `1..=steps`, total `steps`, message `"step i of n"`,
///   waiting `delay_ms` milliseconds (default 0, on tokio's clock) before each; then returns
///   `"done <steps>"`. Without a progress token it sends nothing and returns at once. (An rmcp
///   client puts a progress token on every request.) More steps than the bound: an error
///   result (`is_error`) `"progress: steps must be at most 10000, got <steps>"`.
/// - `log {"messages": [string], "level"?: string}` → one `notifications/message` per string,
///   in order, during the call: data the string, logger [`LOGGER`], level `level` (an MCP
///   logging level, `debug` … `emergency`; default `info`); then returns `"logged <n>"`.
/// - `notify {"kinds": [string], "after_ms"?: integer}` → for each kind in order: `tools`,
///   `resources`, `prompts` → `notifications/<kind>/list_changed`; `updated` →
///   `notifications/resources/updated` for [`UPDATED_RESOURCE`]; `log` → a logging message
///   with data `"session-level"`. With `after_ms` 0 (the default) they are sent before the
///   call returns; otherwise from a task of their own `after_ms` milliseconds later, outside
///   any request (session-level notifications; a send on a session closed by then is
///   dropped). Returns `"notified"`.
/// - `sample {"prompt": string}` → sends `sampling/createMessage` to the client (one user text
///   message, `maxTokens` [`SAMPLE_MAX_TOKENS`]) and returns `"sampled: <text of the reply>"`.
/// - `elicit {"message": string}` → sends `elicitation/create` (form mode, a schema of one
///   optional string property `answer`) and returns `"elicited: <action> <content as JSON>"`,
///   e.g. `elicited: accept {"answer":"yes"}` (`null` without content).
/// - `roots {}` → sends `roots/list` and returns `"roots: <uri>,<uri>,…"` (nothing after the
///   space for no roots).
///
/// For `sample`, `elicit` and `roots`, an error reply from the client (a JSON-RPC error such as
/// -32601 from a client without a handler) or a failed request becomes a tool result with
/// `is_error` set and the text `"sampling failed: <message>"`, `"elicitation failed: …"` or
/// `"roots failed: …"`. The requests are sent whatever capabilities the client declared, so
/// that a test can see what a client without the capability answers.
///
/// Arguments that do not deserialize (a missing field, an unknown logging level or kind) get
/// rmcp's error result (`is_error`), whose text starts with "failed to deserialize
/// parameters:" and names what was wrong and what is allowed (e.g. "unknown variant \`loud\`,
/// expected one of \`debug\`, …").
///
/// One resource and one prompt, so that clients can read both through a pool or a gateway:
/// - resource [`GREETING_RESOURCE`] (`name` "greeting", `text/plain`) → one text content
///   [`GREETING_TEXT`]; any other URI → JSON-RPC error -32002 (resource not found) naming it;
/// - prompt [`GREET_PROMPT`] with the required argument `name` → one user text message
///   `"Hello, <name>!"`; another prompt name or a missing `name` → JSON-RPC error -32602
///   (invalid params) saying which.
///
/// Capabilities declared: `tools`, `prompts` and `resources` (each `listChanged`) and
/// `logging`; `logging/setLevel` is accepted and does not filter anything.
///
/// [`ReferenceServer`](crate::ReferenceServer) and [`DuplexTransport`](crate::DuplexTransport)
/// create one per session; build one with [`ReferenceHandler::new`] to serve it over a
/// transport of your own.
#[derive(Debug)]
pub struct ReferenceHandler {
    counters: Arc<Counters>,
    /// The value of the `counter` tool's last answer in this session.
    counter: AtomicU64,
    /// While `true`, `initialize`, `ping` and `tools/call` wait before answering. Used by the
    /// duplex transport; the HTTP server holds requests in its HTTP layer instead.
    hang: Option<Arc<watch::Sender<bool>>>,
    /// A second hang switch for this session alone (the duplex transport's
    /// `hang_session`).
    session_hang: Option<Arc<watch::Sender<bool>>>,
    /// Sent as the `instructions` of the `initialize` result, so that a client can tell which
    /// upstream session it holds (the duplex transport's `session_of`).
    tag: Option<String>,
    /// The lifecycles it speaks.
    protocols: super::Protocols,
}

impl Default for ReferenceHandler {
    fn default() -> Self {
        Self::new()
    }
}

impl ReferenceHandler {
    /// A handler for one session, whose counters nobody reads.
    pub fn new() -> Self {
        Self::with_counters(Arc::default(), None)
    }

    /// A handler counting into `counters`, held up by `hang` while it is `true`.
    pub(crate) fn with_counters(
        counters: Arc<Counters>,
        hang: Option<Arc<watch::Sender<bool>>>,
    ) -> Self {
        Self {
            counters,
            counter: AtomicU64::new(0),
            hang,
            session_hang: None,
            tag: None,
            protocols: super::Protocols::All,
        }
    }

    /// The same handler speaking only `protocols` (see [`Protocols`](super::Protocols)).
    pub fn with_protocols(mut self, protocols: super::Protocols) -> Self {
        self.protocols = protocols;
        self
    }

    /// Adds a hang switch of this session alone and a tag sent as `instructions`.
    pub(crate) fn with_session(mut self, hang: Arc<watch::Sender<bool>>, tag: String) -> Self {
        self.session_hang = Some(hang);
        self.tag = Some(tag);
        self
    }

    /// Returns once both hang switches are off (at once without any).
    async fn pass_hang(&self) {
        for hang in [&self.hang, &self.session_hang].into_iter().flatten() {
            let mut hang = hang.subscribe();
            // Fails only when the sender is dropped, and `self` holds it.
            let _ = hang.wait_for(|hanging| !*hanging).await;
        }
    }
}

#[tool_router]
impl ReferenceHandler {
    #[tool(description = "Returns its `message` argument as one text content.")]
    async fn echo(
        &self,
        Parameters(EchoArgs { message }): Parameters<EchoArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(CallToolResult::success(vec![ContentBlock::text(message)]))
    }

    #[tool(description = "Returns 1, 2, 3, … on successive calls within one MCP session.")]
    async fn counter(&self) -> Result<CallToolResult, McpError> {
        let value = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(CallToolResult::success(vec![ContentBlock::text(
            value.to_string(),
        )]))
    }

    #[tool(
        description = "Sleeps `ms` milliseconds, then returns \"slept\"; a cancelled call stops at once."
    )]
    async fn sleep(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {
                Ok(CallToolResult::success(vec![ContentBlock::text("slept")]))
            }
            () = context.ct.cancelled() => {
                self.counters.call_cancelled();
                Err(McpError::internal_error("cancelled by the client", None))
            }
        }
    }

    #[tool(description = "Fails with a JSON-RPC internal error carrying `message`.")]
    async fn fail(
        &self,
        Parameters(FailArgs { message }): Parameters<FailArgs>,
    ) -> Result<CallToolResult, McpError> {
        let message = message.unwrap_or_else(|| "the fail tool always fails".to_owned());
        Err(McpError::internal_error(message, None))
    }

    #[tool(
        description = "Sends `steps` progress notifications with the request's progress token (waiting `delay_ms` before each), then returns \"done <steps>\"."
    )]
    async fn progress(
        &self,
        Parameters(ProgressArgs { steps, delay_ms }): Parameters<ProgressArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        if steps > MAX_PROGRESS_STEPS {
            // Invalid arguments are a tool execution error (MCP 2025-11-25, tools), as rmcp
            // reports arguments that do not deserialize.
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "progress: steps must be at most {MAX_PROGRESS_STEPS}, got {steps}"
            ))]));
        }
        if let Some(token) = context.meta.get_progress_token() {
            for step in 1..=steps {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_total(f64::from(steps))
                            .with_message(format!("step {step} of {steps}")),
                    )
                    .await
                    .map_err(|error| send_failed("progress", &error))?;
            }
        }
        Ok(text(format!("done {steps}")))
    }

    #[tool(
        description = "Sends one logging notification per message (logger \"reference\") during the call, then returns \"logged <n>\"."
    )]
    async fn log(
        &self,
        Parameters(LogArgs { messages, level }): Parameters<LogArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let count = messages.len();
        for message in messages {
            peer.notify_logging_message(
                LoggingMessageNotificationParam::new(level, message.into()).with_logger(LOGGER),
            )
            .await
            .map_err(|error| send_failed("log", &error))?;
        }
        Ok(text(format!("logged {count}")))
    }

    #[tool(
        description = "Sends list_changed (tools, resources, prompts), resources/updated (updated) or a logging message (log) notifications, now or `after_ms` later; returns \"notified\"."
    )]
    async fn notify(
        &self,
        Parameters(NotifyArgs { kinds, after_ms }): Parameters<NotifyArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        if after_ms == 0 {
            send_notifications(&peer, &kinds)
                .await
                .map_err(|error| send_failed("notify", &error))?;
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                if let Err(error) = send_notifications(&peer, &kinds).await {
                    tracing::debug!(%error, "notify: the delayed notifications were not sent");
                }
            });
        }
        Ok(text("notified"))
    }

    #[tool(
        description = "Asks the client for a sampling/createMessage of `prompt`; returns \"sampled: <reply text>\"."
    )]
    async fn sample(
        &self,
        Parameters(SampleArgs { prompt }): Parameters<SampleArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let request = CreateMessageRequestParams::new(
            vec![SamplingMessage::user_text(prompt)],
            SAMPLE_MAX_TOKENS,
        );
        Ok(match peer.create_message(request).await {
            Ok(reply) => match reply.message.content.first().and_then(|c| c.as_text()) {
                Some(content) => text(format!("sampled: {}", content.text)),
                None => CallToolResult::error(vec![ContentBlock::text(
                    "sampling failed: the reply has no text content",
                )]),
            },
            Err(error) => client_request_failed("sampling", error),
        })
    }

    #[tool(
        description = "Asks the client for elicitation/create with `message`; returns \"elicited: <action> <content json>\"."
    )]
    async fn elicit(
        &self,
        Parameters(ElicitArgs { message }): Parameters<ElicitArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let requested_schema = ElicitationSchema::new(BTreeMap::from([(
            "answer".to_owned(),
            PrimitiveSchemaDefinition::String(StringSchema::new()),
        )]));
        let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        });
        // Sent as a plain request: rmcp's `create_elicitation` needs its `elicitation`
        // feature, which the rest of the workspace does not use.
        Ok(
            match peer
                .send_request(ServerRequest::ElicitRequest(request))
                .await
            {
                Ok(ClientResult::ElicitResult(reply)) => {
                    let action = serde_json::to_value(&reply.action).unwrap_or_default();
                    let action = action.as_str().unwrap_or("unknown");
                    let content = reply.content.unwrap_or_default();
                    text(format!("elicited: {action} {content}"))
                }
                Ok(_) => client_request_failed("elicitation", ServiceError::UnexpectedResponse),
                Err(error) => client_request_failed("elicitation", error),
            },
        )
    }

    #[tool(description = "Asks the client for roots/list; returns \"roots: <uri>,<uri>,…\".")]
    async fn roots(&self, peer: Peer<RoleServer>) -> Result<CallToolResult, McpError> {
        Ok(match peer.list_roots().await {
            Ok(reply) => {
                let uris: Vec<&str> = reply.roots.iter().map(|root| root.uri.as_str()).collect();
                text(format!("roots: {}", uris.join(",")))
            }
            Err(error) => client_request_failed("roots", error),
        })
    }
}

/// The JSON-RPC error of a tool whose notification could not be sent (the session is closing).
fn send_failed(tool: &str, error: &ServiceError) -> McpError {
    McpError::internal_error(
        format!("{tool}: sending a notification failed: {error}"),
        None,
    )
}

#[tool_handler(router = TOOL_ROUTER)]
impl ServerHandler for ReferenceHandler {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        let info = ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")));
        match &self.tag {
            Some(tag) => info.with_instructions(tag.clone()),
            None => info,
        }
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.pass_hang().await;
        self.counters.initialize();
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// Accepted so that the declared `logging` capability holds; nothing is filtered.
    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn ping(&self, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.pass_hang().await;
        self.counters.ping();
        Ok(())
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        match self.protocols {
            super::Protocols::ModernOnly => {
                std::borrow::Cow::Borrowed(&[ProtocolVersion::V_2026_07_28])
            }
            _ => std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::DiscoverResult, McpError> {
        if self.protocols == super::Protocols::LegacyOnly {
            return Err(McpError::method_not_found::<
                rmcp::model::DiscoverRequestMethod,
            >());
        }
        self.counters.discover();
        Ok(rmcp::model::DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let greeting = Resource::new(GREETING_RESOURCE, "greeting").with_mime_type("text/plain");
        Ok(ListResourcesResult::with_all_items(vec![greeting]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != GREETING_RESOURCE {
            return Err(McpError::resource_not_found(
                format!(
                    "no resource {:?}: the only one is {GREETING_RESOURCE:?}",
                    request.uri
                ),
                None,
            ));
        }
        let contents = ResourceContents::text(GREETING_TEXT, GREETING_RESOURCE);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let name = PromptArgument::new("name")
            .with_description("who to greet")
            .with_required(true);
        let greet = Prompt::new(GREET_PROMPT, Some("Greets `name`."), Some(vec![name]));
        Ok(ListPromptsResult::with_all_items(vec![greet]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != GREET_PROMPT {
            return Err(McpError::invalid_params(
                format!(
                    "no prompt {:?}: the only one is {GREET_PROMPT:?}",
                    request.name
                ),
                None,
            ));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("name"))
            .and_then(|name| name.as_str())
            .ok_or_else(|| {
                McpError::invalid_params(
                    "prompt \"greet\": the argument `name` (a string) is required",
                    None,
                )
            })?;
        let message = PromptMessage::new_text(Role::User, format!("Hello, {name}!"));
        Ok(GetPromptResult::new(vec![message]).into())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.counters.tool_call();
        self.pass_hang().await;
        TOOL_ROUTER
            .call(ToolCallContext::new(self, request, context))
            .await
    }
}
