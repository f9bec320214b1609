//! [`ReferenceHandler`]: the MCP tools of the reference server, one instance per session.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, tool::ToolCallContext, wrapper::Parameters},
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        InitializeRequestParams, InitializeResult, ServerCapabilities, ServerConfig,
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

/// The reference MCP server's handler: one instance per MCP session, so state kept in it (the
/// `counter` tool) is per session.
///
/// Tools:
/// - `echo {"message": string}` → one text content equal to `message`;
/// - `counter {}` → `"1"`, `"2"`, … on successive calls within one session;
/// - `sleep {"ms": integer}` → waits `ms` milliseconds (`tokio::time::sleep`, so it follows a
///   paused test clock), then returns `"slept"`;
/// - `fail {"message"?: string}` → a JSON-RPC internal error (code -32603) carrying `message`,
///   which an rmcp client sees as `ServiceError::McpError`.
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
        }
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

    #[tool(description = "Sleeps `ms` milliseconds, then returns \"slept\".")]
    async fn sleep(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
    ) -> Result<CallToolResult, McpError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(CallToolResult::success(vec![ContentBlock::text("slept")]))
    }

    #[tool(description = "Fails with a JSON-RPC internal error carrying `message`.")]
    async fn fail(
        &self,
        Parameters(FailArgs { message }): Parameters<FailArgs>,
    ) -> Result<CallToolResult, McpError> {
        let message = message.unwrap_or_else(|| "the fail tool always fails".to_owned());
        Err(McpError::internal_error(message, None))
    }
}

#[tool_handler(router = TOOL_ROUTER)]
impl ServerHandler for ReferenceHandler {
    fn get_info(&self) -> ServerConfig {
        let info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
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

    async fn ping(&self, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.pass_hang().await;
        Ok(())
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
