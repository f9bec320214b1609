//! The [`Transport`] conformance suite.
//!
//! Every check is a plain `pub async fn check_*(transport: &dyn Transport)` that starts its
//! own [`ReferenceServer`], connects to it with the transport under test at
//! [`ReferenceServer::endpoint_for`]`(transport.kind())`, and panics with a message naming the
//! broken rule. [`transport_conformance!`](crate::transport_conformance) turns them into one
//! `#[tokio::test]` each. A custom transport proves itself against the reference server in
//! three lines:
//!
//! ```ignore
//! mcp_pool_conformance::transport_conformance! {
//!     name: my_websocket,
//!     transport: MyWebSocket::new(),
//! }
//! ```
//!
//! The checks use real time and real sockets on loopback. Nothing waits on a sleep: waits
//! are on the server's counters ([`ReferenceServer::wait_until`]) or on the call itself, each
//! bounded by [`SIGNAL_TIMEOUT`] so that a hang fails the check instead of stalling the suite.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use http::{HeaderMap, HeaderValue};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Endpoint, FailureKind, SessionHandler, Transport,
    TransportError, TransportKind, default_client_config, is_transport_failure,
};
use rmcp::{
    ServiceError,
    model::{CallToolRequestParams, ClientRequest, PingRequest, ServerResult},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify, time::timeout};

use crate::{ReferenceServer, ServerOptions, ServerStats, WaitTimeout, server::SERVER_NAME};
use mcp_pool_traits::async_trait;

/// Upper bound on anything expected to finish (a connect, a call, a counter reaching a
/// value): 10 s, generous for a loaded 2-core machine, finite so a hang fails.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The create timeout of the connects that must fail: 1 s.
pub const FAILING_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Slack allowed past [`FAILING_CONNECT_TIMEOUT`] for a connect that times out: 2 s.
pub const TIMEOUT_SLACK: Duration = Duration::from_secs(2);

/// Concurrent calls on one session in [`check_concurrent_calls_are_multiplexed`]: 64.
pub const CONCURRENT_CALLS: usize = 64;

/// The identity header every check sends, and the value the server must see.
pub const AUTHORIZATION: &str = "Bearer transport-conformance";

/// Values of the internal headers passed to the transport, which must never reach the server.
pub const INTERNAL_SESSION_IDS: [(&str, &str); 2] = [
    ("x-mcp-session-id", "downstream-session-must-not-leak-1"),
    ("mcp-session-id", "downstream-session-must-not-leak-2"),
];

/// The URL `transport` would use for a server listening on `addr`, with the reference
/// server's paths (`/mcp`, `/sse`, `/ws`).
///
/// # Panics
/// For a kind that has no URL of its own (stdio, custom kinds).
pub fn url_on(addr: std::net::SocketAddr, transport: TransportKind) -> String {
    match transport {
        TransportKind::StreamableHttp => format!("http://{addr}/mcp"),
        TransportKind::Sse => format!("http://{addr}/sse"),
        TransportKind::WebSocket => format!("ws://{addr}/ws"),
        other => panic!("{other} endpoints have no URL on an address"),
    }
}

/// The headers every check connects with: [`AUTHORIZATION`], an `x-tenant-id`, and the
/// [`INTERNAL_SESSION_IDS`].
pub fn connect_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static(AUTHORIZATION));
    headers.insert("x-tenant-id", HeaderValue::from_static("conformance"));
    for (name, value) in INTERNAL_SESSION_IDS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

/// Connects `endpoint` with [`connect_headers`] and the pool's default client config.
///
/// # Errors
/// The transport's.
pub async fn connect(
    transport: &dyn Transport,
    endpoint: &Endpoint,
    create_timeout: Duration,
) -> Result<ClientSession, TransportError> {
    let headers = connect_headers();
    connect_with(transport, endpoint, &headers, create_timeout).await
}

/// Connects `endpoint` with `headers` (instead of [`connect_headers`]) and the pool's default
/// client config.
///
/// # Errors
/// The transport's.
pub async fn connect_with(
    transport: &dyn Transport,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    create_timeout: Duration,
) -> Result<ClientSession, TransportError> {
    let handler = SessionHandler::new(default_client_config(), None);
    transport
        .connect(ConnectRequest::new(
            endpoint,
            headers,
            create_timeout,
            handler,
        ))
        .await
}

/// Connects `transport` to `server`; panics (naming the transport) if it fails or hangs.
pub async fn connect_to(transport: &dyn Transport, server: &ReferenceServer) -> ClientSession {
    connect_or_panic(transport, &server.endpoint_for(transport.kind())).await
}

/// Connects `transport` to `endpoint`, bounded by [`SIGNAL_TIMEOUT`]; panics (naming the
/// transport) if it fails or hangs.
async fn connect_or_panic(transport: &dyn Transport, endpoint: &Endpoint) -> ClientSession {
    match timeout(
        SIGNAL_TIMEOUT * 2,
        connect(transport, endpoint, SIGNAL_TIMEOUT),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => panic!("{}: connect failed: {error}", transport.kind()),
        Err(_) => panic!(
            "{}: connect ignored its timeout of {SIGNAL_TIMEOUT:?}",
            transport.kind()
        ),
    }
}

/// A server the generic checks run against: the reference handler served over the medium of
/// the transport under test (a URL, a child process, an in-process pipe), with the handler's
/// own counters.
#[async_trait]
pub trait SuiteServer: Send + Sync {
    /// The endpoint that reaches it with the transport under test.
    fn endpoint(&self) -> Endpoint;

    /// Waits until `condition` holds for its counters, and returns them.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last counters when it did not hold within `timeout`.
    async fn wait_until(
        &self,
        condition: &mut (dyn for<'s> FnMut(&'s ServerStats) -> bool + Send),
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout>;

    /// Stops it: every session dies at once, as if the server crashed.
    async fn stop(&self);
}

/// Starts a [`SuiteServer`] for each check.
#[async_trait]
pub trait ServerFactory: Send + Sync {
    /// A fresh server for a transport of `kind`.
    async fn start(&self, kind: TransportKind) -> Box<dyn SuiteServer>;
}

/// [`ReferenceServer`]s on loopback, reached at
/// [`endpoint_for`](ReferenceServer::endpoint_for)`(kind)`: the factory of the built-in
/// network transports, and the default of [`transport_conformance!`](crate::transport_conformance).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReferenceServers;

struct NetworkServer {
    server: ReferenceServer,
    kind: TransportKind,
}

#[async_trait]
impl SuiteServer for NetworkServer {
    fn endpoint(&self) -> Endpoint {
        self.server.endpoint_for(self.kind)
    }

    async fn wait_until(
        &self,
        condition: &mut (dyn for<'s> FnMut(&'s ServerStats) -> bool + Send),
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        self.server
            .wait_until(|s: &ServerStats| condition(s), timeout)
            .await
    }

    async fn stop(&self) {
        self.server.stop().await;
    }
}

#[async_trait]
impl ServerFactory for ReferenceServers {
    async fn start(&self, kind: TransportKind) -> Box<dyn SuiteServer> {
        Box::new(NetworkServer {
            server: start_server().await,
            kind,
        })
    }
}

#[async_trait]
impl SuiteServer for crate::stdio_server::StdioSuiteServer {
    fn endpoint(&self) -> Endpoint {
        crate::stdio_server::StdioSuiteServer::endpoint(self)
    }

    async fn wait_until(
        &self,
        condition: &mut (dyn for<'s> FnMut(&'s ServerStats) -> bool + Send),
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        crate::stdio_server::StdioSuiteServer::wait_until(
            self,
            |s: &ServerStats| condition(s),
            timeout,
        )
        .await
    }

    async fn stop(&self) {
        crate::stdio_server::StdioSuiteServer::stop(self).await;
    }
}

#[async_trait]
impl ServerFactory for crate::stdio_server::StdioReferenceServers {
    async fn start(&self, _kind: TransportKind) -> Box<dyn SuiteServer> {
        Box::new(crate::stdio_server::StdioReferenceServers::start(self).await)
    }
}

/// The in-process reference server of a [`DuplexTransport`](crate::DuplexTransport) (a
/// clone of the transport under test): its endpoint is `duplex://reference` of the
/// transport's kind, and stopping it kills every upstream session.
struct DuplexServer(crate::DuplexTransport);

#[async_trait]
impl SuiteServer for DuplexServer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new("duplex://reference", self.0.kind()).expect("a custom kind takes any URL")
    }

    async fn wait_until(
        &self,
        condition: &mut (dyn for<'s> FnMut(&'s ServerStats) -> bool + Send),
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        self.0
            .wait_until(|s: &ServerStats| condition(s), timeout)
            .await
    }

    async fn stop(&self) {
        for session in self.0.upstream_sessions() {
            self.0.kill_session(session.id);
        }
    }
}

/// A duplex transport is its own server: pass a clone of the transport under test.
#[async_trait]
impl ServerFactory for crate::DuplexTransport {
    async fn start(&self, _kind: TransportKind) -> Box<dyn SuiteServer> {
        Box::new(DuplexServer(self.clone()))
    }
}

/// Connects `transport` to a suite `server`; panics (naming the transport) if it fails or
/// hangs.
pub async fn connect_to_suite(
    transport: &dyn Transport,
    server: &dyn SuiteServer,
) -> ClientSession {
    connect_or_panic(transport, &server.endpoint()).await
}

/// The server's counters once `condition` holds; panics naming `what` when it does not
/// within [`SIGNAL_TIMEOUT`].
async fn stats_when(
    server: &dyn SuiteServer,
    mut condition: impl FnMut(&ServerStats) -> bool + Send,
    what: &str,
) -> ServerStats {
    server
        .wait_until(&mut condition, SIGNAL_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Calls `tool` with `args` on `session`, bounded by [`SIGNAL_TIMEOUT`], and returns the text
/// of its single content block.
///
/// # Errors
/// The call's error.
///
/// # Panics
/// When the call neither answers nor fails in time, or answers something else than one text
/// content.
pub async fn call_text(
    session: &ClientSession,
    tool: &'static str,
    args: Value,
) -> Result<String, ServiceError> {
    let mut params = CallToolRequestParams::new(tool);
    if let Value::Object(args) = args {
        params = params.with_arguments(args);
    }
    let result = timeout(SIGNAL_TIMEOUT, session.call_tool(params))
        .await
        .unwrap_or_else(|_| {
            panic!("`{tool}` neither answered nor failed within {SIGNAL_TIMEOUT:?}")
        })?;
    assert_eq!(
        result.content.len(),
        1,
        "`{tool}`: one content block: {result:?}"
    );
    Ok(result.content[0]
        .as_text()
        .unwrap_or_else(|| panic!("`{tool}`: a text content: {result:?}"))
        .text
        .clone())
}

async fn start_server() -> ReferenceServer {
    ReferenceServer::start()
        .await
        .expect("the reference server starts on a free loopback port")
}

/// Connect + `initialize` + `echo`: the session is initialized with the reference server
/// (its name in the `initialize` result), a call returns its result, and the server counted
/// one session, one `initialize` and one call.
pub async fn check_connect_initialize_echo_on(
    transport: &dyn Transport,
    servers: &dyn ServerFactory,
) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let session = connect_to_suite(transport, server).await;

    let info = session
        .peer_info()
        .unwrap_or_else(|| panic!("{kind}: the session is initialized"));
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some(SERVER_NAME),
        "{kind}: the initialize result comes from the reference server"
    );
    let echoed = call_text(&session, "echo", json!({"message": "hello"})).await;
    assert_eq!(echoed.ok().as_deref(), Some("hello"), "{kind}: echo");

    let stats = stats_when(server, |s| s.tool_calls >= 1, "the call reached the server").await;
    assert_eq!(
        stats.sessions_opened, 1,
        "{kind}: one session opened: {stats:?}"
    );
    assert_eq!(stats.initializes, 1, "{kind}: one initialize: {stats:?}");
    assert_eq!(stats.tool_calls, 1, "{kind}: one tool call: {stats:?}");
}

/// [`check_connect_initialize_echo_on`] against [`ReferenceServers`].
pub async fn check_connect_initialize_echo(transport: &dyn Transport) {
    check_connect_initialize_echo_on(transport, &ReferenceServers).await;
}

/// Server-side state is per session: the `counter` tool counts 1, 2, 3 on one session while
/// another session starts from 1, and each goes on where it was.
pub async fn check_counter_state_is_per_session_on(
    transport: &dyn Transport,
    servers: &dyn ServerFactory,
) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let a = connect_to_suite(transport, server).await;
    let b = connect_to_suite(transport, server).await;
    let mut seen = Vec::new();
    for session in [&a, &a, &a, &b, &a, &b] {
        seen.push(call_text(session, "counter", json!({})).await.unwrap());
    }
    assert_eq!(
        seen,
        ["1", "2", "3", "1", "4", "2"],
        "{kind}: each session has its own counter"
    );
    let stats = stats_when(
        server,
        |s| s.tool_calls >= 6,
        "the calls reached the server",
    )
    .await;
    assert_eq!(stats.sessions_opened, 2, "{kind}: two sessions: {stats:?}");
}

/// [`check_counter_state_is_per_session_on`] against [`ReferenceServers`].
pub async fn check_counter_state_is_per_session(transport: &dyn Transport) {
    check_counter_state_is_per_session_on(transport, &ReferenceServers).await;
}

/// `ping` (sent as `ClientRequest::PingRequest`, rmcp has no helper) is answered with an
/// empty result.
pub async fn check_ping_on(transport: &dyn Transport, servers: &dyn ServerFactory) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let session = connect_to_suite(transport, server).await;
    let ping = ClientRequest::PingRequest(PingRequest::default());
    let answer = timeout(SIGNAL_TIMEOUT, session.send_request(ping))
        .await
        .unwrap_or_else(|_| panic!("{kind}: ping unanswered within {SIGNAL_TIMEOUT:?}"));
    match answer {
        Ok(ServerResult::EmptyResult(_)) => {}
        other => panic!("{kind}: ping must get an empty result, got {other:?}"),
    }
}

/// [`check_ping_on`] against [`ReferenceServers`].
pub async fn check_ping(transport: &dyn Transport) {
    check_ping_on(transport, &ReferenceServers).await;
}

/// [`CONCURRENT_CALLS`] calls in flight at once on one session (JSON-RPC ids multiplexed)
/// each get their own result, and the server saw one session.
pub async fn check_concurrent_calls_are_multiplexed_on(
    transport: &dyn Transport,
    servers: &dyn ServerFactory,
) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let session = connect_to_suite(transport, server).await;
    let calls = (0..CONCURRENT_CALLS).map(|i| {
        let session = &session;
        async move {
            let message = format!("call-{i}");
            let answer = call_text(session, "echo", json!({ "message": message })).await;
            (message, answer)
        }
    });
    for (message, answer) in join_all(calls).await {
        match answer {
            Ok(text) => assert_eq!(text, message, "{kind}: a call got another call's result"),
            Err(error) => panic!("{kind}: concurrent call {message} failed: {error}"),
        }
    }
    let stats = stats_when(
        server,
        |s| s.tool_calls >= CONCURRENT_CALLS as u64,
        "the calls reached the server",
    )
    .await;
    assert_eq!(
        stats.sessions_opened, 1,
        "{kind}: all calls on one session: {stats:?}"
    );
    assert_eq!(
        stats.tool_calls, CONCURRENT_CALLS as u64,
        "{kind}: every call reached the server: {stats:?}"
    );
}

/// [`check_concurrent_calls_are_multiplexed_on`] against [`ReferenceServers`].
pub async fn check_concurrent_calls_are_multiplexed(transport: &dyn Transport) {
    check_concurrent_calls_are_multiplexed_on(transport, &ReferenceServers).await;
}

/// When the server stops, the session is dead at once: a call in flight fails (long before
/// its `sleep` would end), a call made afterwards fails, and both errors are transport
/// failures ([`is_transport_failure`]), the kind the pool evicts on. Nothing hangs.
pub async fn check_death_detected_after_stop_on(
    transport: &dyn Transport,
    servers: &dyn ServerFactory,
) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let session = connect_to_suite(transport, server).await;
    assert_eq!(
        call_text(&session, "echo", json!({"message": "alive"}))
            .await
            .ok()
            .as_deref(),
        Some("alive"),
        "{kind}: the session works before the stop"
    );

    let in_flight = {
        let peer = session.peer().clone();
        tokio::spawn(async move {
            let args = json!({"ms": 60_000});
            let params = CallToolRequestParams::new("sleep")
                .with_arguments(args.as_object().cloned().unwrap_or_default());
            peer.call_tool(params).await
        })
    };
    stats_when(
        server,
        |s| s.tool_calls >= 2,
        &format!("{kind}: the sleep call reached the server"),
    )
    .await;
    let stopped = Instant::now();
    server.stop().await;

    match timeout(SIGNAL_TIMEOUT, in_flight).await {
        Err(_) => {
            panic!("{kind}: a call in flight did not fail within {SIGNAL_TIMEOUT:?} of the stop")
        }
        Ok(Err(join)) => panic!("{kind}: the call task panicked: {join}"),
        Ok(Ok(Ok(result))) => {
            panic!("{kind}: a call in flight succeeded across a stop: {result:?}")
        }
        Ok(Ok(Err(error))) => assert!(
            is_transport_failure(&error),
            "{kind}: a call in flight must fail as a transport failure, got {error:?}"
        ),
    }
    let after = timeout(
        SIGNAL_TIMEOUT,
        session.call_tool(CallToolRequestParams::new("counter")),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: a call after the stop hung"));
    match after {
        Ok(result) => panic!("{kind}: a call after the stop succeeded: {result:?}"),
        Err(error) => assert!(
            is_transport_failure(&error),
            "{kind}: a call after the stop must be a transport failure, got {error:?}"
        ),
    }
    assert!(
        stopped.elapsed() < SIGNAL_TIMEOUT,
        "{kind}: death took {:?} to show",
        stopped.elapsed()
    );
}

/// [`check_death_detected_after_stop_on`] against [`ReferenceServers`].
pub async fn check_death_detected_after_stop(transport: &dyn Transport) {
    check_death_detected_after_stop_on(transport, &ReferenceServers).await;
}

/// Closing a session ends it on the server (`sessions_alive` back to 0), and so does dropping
/// it without a close.
pub async fn check_session_gone_after_close_on(
    transport: &dyn Transport,
    servers: &dyn ServerFactory,
) {
    let kind = transport.kind();
    let server = servers.start(kind).await;
    let server = &*server;
    let mut closed = connect_to_suite(transport, server).await;
    let dropped = connect_to_suite(transport, server).await;
    for session in [&closed, &dropped] {
        call_text(session, "echo", json!({"message": "x"}))
            .await
            .unwrap_or_else(|e| panic!("{kind}: echo: {e}"));
    }
    stats_when(
        server,
        |s| s.sessions_alive == 2 && s.tool_calls >= 2,
        &format!("{kind}: two sessions alive"),
    )
    .await;

    let _ = timeout(SIGNAL_TIMEOUT, closed.close())
        .await
        .unwrap_or_else(|_| panic!("{kind}: close hung"));
    stats_when(
        server,
        |s| s.sessions_alive == 1,
        &format!("{kind}: a closed session must end on the server"),
    )
    .await;

    drop(dropped);
    let stats = stats_when(
        server,
        |s| s.sessions_alive == 0,
        &format!("{kind}: a dropped session must end on the server"),
    )
    .await;
    assert_eq!(stats.sessions_opened, 2, "{kind}: no session was reopened");
}

/// [`check_session_gone_after_close_on`] against [`ReferenceServers`].
pub async fn check_session_gone_after_close(transport: &dyn Transport) {
    check_session_gone_after_close_on(transport, &ReferenceServers).await;
}

/// Identity headers are forwarded and internal ones never are: the request that opened the
/// session carried `authorization` and `x-tenant-id` but neither `x-mcp-session-id` nor
/// `mcp-session-id`; no request ever carried `x-mcp-session-id`; the last request carried
/// `authorization` with the value given; and no request carried the caller's
/// `mcp-session-id` value (streamable HTTP sends the server's own session id under that name
/// after `initialize`, which is its protocol, not a leak).
pub async fn check_internal_headers_never_reach_the_server(transport: &dyn Transport) {
    let kind = transport.kind();
    let server = start_server().await;
    let session = connect_to(transport, &server).await;
    call_text(&session, "echo", json!({"message": "headers"}))
        .await
        .unwrap_or_else(|e| panic!("{kind}: echo: {e}"));

    let opened = server.initialize_header_names();
    for name in ["authorization", "x-tenant-id"] {
        assert!(
            opened.contains(name),
            "{kind}: `{name}` must be forwarded when the session opens; saw {opened:?}"
        );
    }
    for (name, _) in INTERNAL_SESSION_IDS {
        assert!(
            !opened.contains(name),
            "{kind}: internal header `{name}` reached the server when the session opened"
        );
    }
    let seen = server.seen_header_names();
    assert!(
        !seen.contains("x-mcp-session-id"),
        "{kind}: `x-mcp-session-id` reached the server: {seen:?}"
    );
    let last = server.last_request_headers();
    assert_eq!(
        last.get("authorization").and_then(|v| v.to_str().ok()),
        Some(AUTHORIZATION),
        "{kind}: the last request must carry the identity header"
    );
    for (name, value) in INTERNAL_SESSION_IDS {
        assert!(
            last.get_all(name).iter().all(|v| v != value),
            "{kind}: the caller's `{name}` value reached the server"
        );
    }
}

/// A connect to a port nobody listens on fails with [`TransportError::Connect`] of kind
/// [`FailureKind::ConnectionRefused`] (not a timeout), well before the create timeout, and
/// counts against the endpoint.
pub async fn check_dead_port_fails_fast(transport: &dyn Transport) {
    let kind = transport.kind();
    let server = start_server().await;
    let endpoint = server.endpoint_for(kind);
    server.stop().await;

    let create_timeout = SIGNAL_TIMEOUT;
    let started = Instant::now();
    let result = timeout(
        create_timeout + TIMEOUT_SLACK,
        connect(transport, &endpoint, create_timeout),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: a connect to a dead port ignored its timeout"));
    match result {
        Ok(_) => panic!("{kind}: a connect to a dead port succeeded"),
        Err(error @ TransportError::Connect { .. }) => {
            assert_eq!(
                error.url(),
                Some(&*endpoint.url),
                "{kind}: the error names the endpoint"
            );
            assert_eq!(
                error.kind(),
                FailureKind::ConnectionRefused,
                "{kind}: a refused connect is categorized as such: {error}"
            );
            assert!(
                error.counts_against_endpoint(),
                "{kind}: a refused connect counts against the endpoint"
            );
        }
        Err(other) => panic!("{kind}: a refused connect must be a Connect error, got {other}"),
    }
    assert!(
        started.elapsed() < create_timeout / 2,
        "{kind}: a refused connect took {:?}",
        started.elapsed()
    );
}

/// A connect to a server that accepts TCP connections but never answers fails with
/// [`TransportError::Timeout`] (which counts against the endpoint) within the create timeout
/// (plus [`TIMEOUT_SLACK`]), and so does
/// a connect while the reference server's hang switch is on; the server serves again once the
/// switch is off.
pub async fn check_silent_server_times_out(transport: &dyn Transport) {
    let kind = transport.kind();

    // A bare listener that accepts and holds every connection, and never writes a byte.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let accepted = Arc::new(Notify::new());
    let silent = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                accepted.notify_one();
            }
        })
    };
    let endpoint = Endpoint::new(url_on(addr, kind), kind).expect("a valid endpoint");
    expect_timeout(transport, &endpoint, "a silent TCP server").await;
    // The connect did reach the listener: the timeout is the server's silence, not a refusal.
    timeout(SIGNAL_TIMEOUT, accepted.notified())
        .await
        .unwrap_or_else(|_| panic!("{kind}: the connect never reached the silent server"));
    silent.abort();

    let server = start_server().await;
    server.set_hang(true);
    expect_timeout(
        transport,
        &server.endpoint_for(kind),
        "a hanging reference server",
    )
    .await;
    server.set_hang(false);
    let session = connect_to(transport, &server).await;
    assert_eq!(
        call_text(&session, "echo", json!({"message": "back"}))
            .await
            .ok()
            .as_deref(),
        Some("back"),
        "{kind}: the server serves again once the hang switch is off"
    );
}

async fn expect_timeout(transport: &dyn Transport, endpoint: &Endpoint, what: &str) {
    let kind = transport.kind();
    let started = Instant::now();
    let result = timeout(
        FAILING_CONNECT_TIMEOUT + TIMEOUT_SLACK,
        connect(transport, endpoint, FAILING_CONNECT_TIMEOUT),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("{kind}: a connect to {what} ignored its timeout of {FAILING_CONNECT_TIMEOUT:?}")
    });
    match result {
        Ok(_) => panic!("{kind}: a connect to {what} succeeded"),
        Err(error @ TransportError::Timeout { .. }) => {
            assert_eq!(error.kind(), FailureKind::Timeout, "{kind}: {error}");
            assert!(
                error.counts_against_endpoint(),
                "{kind}: a timeout counts against the endpoint"
            );
            let message = error.to_string();
            assert!(
                message.contains("timed out") && message.contains(&*endpoint.url),
                "{kind}: the timeout error must say what timed out: {message}"
            );
        }
        Err(other) => panic!("{kind}: a connect to {what} must time out, got {other}"),
    }
    assert!(
        started.elapsed() >= FAILING_CONNECT_TIMEOUT,
        "{kind}: gave up on {what} after {:?}, before the timeout",
        started.elapsed()
    );
}

/// The bearer token of [`AUTHORIZATION`], which [`check_unauthorized_does_not_count`] makes
/// its server require.
pub const BEARER_TOKEN: &str = "transport-conformance";

/// Connects with `headers` and expects a [`TransportError::Connect`] of kind `expected`, fast
/// (no timeout), that counts against the endpoint exactly when `counts`.
async fn expect_failure(
    transport: &dyn Transport,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    expected: FailureKind,
    counts: bool,
    what: &str,
) {
    let kind = transport.kind();
    let result = timeout(
        SIGNAL_TIMEOUT + TIMEOUT_SLACK,
        connect_with(transport, endpoint, headers, SIGNAL_TIMEOUT),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: a connect answered {what} ignored its timeout"));
    match result {
        Ok(_) => panic!("{kind}: a connect answered {what} succeeded"),
        Err(error @ TransportError::Connect { .. }) => {
            assert_eq!(
                error.kind(),
                expected,
                "{kind}: a connect answered {what} is categorized {expected}: {error}"
            );
            assert_eq!(
                error.counts_against_endpoint(),
                counts,
                "{kind}: a connect answered {what} must {}count against the endpoint",
                if counts { "" } else { "not " }
            );
        }
        Err(other) => {
            panic!("{kind}: a connect answered {what} must be a Connect error, got {other}")
        }
    }
}

/// Against a server that requires a bearer token, a connect with another token fails with
/// [`FailureKind::Unauthorized`], which does not count against the endpoint (one caller's
/// bad token must not open the breaker every tenant shares), and so does a
/// connect with no `authorization` at all; the right token connects.
pub async fn check_unauthorized_does_not_count(transport: &dyn Transport) {
    let kind = transport.kind();
    let server =
        ReferenceServer::start_with(ServerOptions::default().with_bearer_token(Some(BEARER_TOKEN)))
            .await
            .expect("the reference server starts on a free loopback port");
    let endpoint = server.endpoint_for(kind);

    let mut wrong = connect_headers();
    wrong.insert(
        "authorization",
        HeaderValue::from_static("Bearer wrong-token"),
    );
    expect_failure(
        transport,
        &endpoint,
        &wrong,
        FailureKind::Unauthorized,
        false,
        "401 (wrong token)",
    )
    .await;
    let mut none = connect_headers();
    none.remove("authorization");
    expect_failure(
        transport,
        &endpoint,
        &none,
        FailureKind::Unauthorized,
        false,
        "401 (no token)",
    )
    .await;
    assert_eq!(
        server.sessions_opened(),
        0,
        "{kind}: refused connects opened no session"
    );

    let session = connect_to(transport, &server).await;
    assert_eq!(
        call_text(&session, "echo", json!({"message": "authorized"}))
            .await
            .ok()
            .as_deref(),
        Some("authorized"),
        "{kind}: the right token connects and calls"
    );
}

/// A connect answered with an HTTP error status fails at once, categorized by the status:
/// 403 [`FailureKind::Forbidden`] and 429 [`FailureKind::ClientError`] do not count against
/// the endpoint (the caller's privileges and rate limit), 404 [`FailureKind::NotFound`] (the
/// endpoint's path is wrong for everyone), 500 and 503 [`FailureKind::ServerError`] do. The
/// server connects again once it serves normally.
pub async fn check_error_statuses_are_categorized(transport: &dyn Transport) {
    use http::StatusCode;
    let kind = transport.kind();
    let server = start_server().await;
    let endpoint = server.endpoint_for(kind);
    let cases = [
        (StatusCode::FORBIDDEN, FailureKind::Forbidden, false),
        (
            StatusCode::TOO_MANY_REQUESTS,
            FailureKind::ClientError(StatusCode::TOO_MANY_REQUESTS),
            false,
        ),
        (StatusCode::NOT_FOUND, FailureKind::NotFound, true),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            FailureKind::ServerError(StatusCode::INTERNAL_SERVER_ERROR),
            true,
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::ServerError(StatusCode::SERVICE_UNAVAILABLE),
            true,
        ),
    ];
    for (status, expected, counts) in cases {
        server.set_reject_status(Some(status));
        expect_failure(
            transport,
            &endpoint,
            &connect_headers(),
            expected,
            counts,
            &format!("HTTP {status}"),
        )
        .await;
    }
    server.set_reject_status(None);
    assert_eq!(
        server.sessions_opened(),
        0,
        "{kind}: refused connects opened no session"
    );
    let session = connect_to(transport, &server).await;
    assert_eq!(
        call_text(&session, "echo", json!({"message": "served"}))
            .await
            .ok()
            .as_deref(),
        Some("served"),
        "{kind}: the server serves again once the reject switch is off"
    );
}

/// Emits one `#[tokio::test]` per check of the [`Transport`] suite, in a module.
///
/// ```ignore
/// // A network transport (URLs of the reference server: `/mcp`, `/sse`, `/ws`): every check,
/// // the HTTP group (headers, dead port, silent server, 401, error statuses) included.
/// mcp_pool_conformance::transport_conformance! {
///     // The module the tests go into.
///     name: websocket,
///     // An expression of a type implementing `Transport`, evaluated once per test. Items of
///     // the enclosing module are in scope.
///     transport: mcp_pool_transports::WebSocket::new(),
/// }
///
/// // Any other medium: the generic checks, against servers the factory starts (given the
/// // transport under test). `StdioReferenceServers` serves the reference handler as a child
/// // process; a `DuplexTransport` is its own server.
/// mcp_pool_conformance::transport_conformance! {
///     name: stdio,
///     transport: mcp_pool_transports::Stdio::new(),
///     server: |_: &mcp_pool_transports::Stdio| StdioReferenceServers::new(program),
/// }
/// ```
///
/// The tests run on a multi-threaded tokio runtime: the crate using the macro needs `tokio`
/// with the `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! transport_conformance {
    (name: $name:ident, transport: $transport:expr, server: $server:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::transport_conformance!(@generic ($transport) ($server));
        }
    };
    (name: $name:ident, transport: $transport:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::transport_conformance!(@generic ($transport) (|_: &_| $crate::transport::ReferenceServers));
            $crate::transport_conformance!(@test ($transport) internal_headers_never_reach_the_server check_internal_headers_never_reach_the_server);
            $crate::transport_conformance!(@test ($transport) dead_port_fails_fast check_dead_port_fails_fast);
            $crate::transport_conformance!(@test ($transport) silent_server_times_out check_silent_server_times_out);
            $crate::transport_conformance!(@test ($transport) unauthorized_does_not_count check_unauthorized_does_not_count);
            $crate::transport_conformance!(@test ($transport) error_statuses_are_categorized check_error_statuses_are_categorized);
        }
    };
    (@generic ($transport:expr) ($server:expr)) => {
        $crate::transport_conformance!(@on ($transport) ($server) connect_initialize_echo check_connect_initialize_echo_on);
        $crate::transport_conformance!(@on ($transport) ($server) counter_state_is_per_session check_counter_state_is_per_session_on);
        $crate::transport_conformance!(@on ($transport) ($server) ping check_ping_on);
        $crate::transport_conformance!(@on ($transport) ($server) concurrent_calls_are_multiplexed check_concurrent_calls_are_multiplexed_on);
        $crate::transport_conformance!(@on ($transport) ($server) death_detected_after_stop check_death_detected_after_stop_on);
        $crate::transport_conformance!(@on ($transport) ($server) session_gone_after_close check_session_gone_after_close_on);
    };
    (@on ($transport:expr) ($server:expr) $test:ident $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let transport = $transport;
            let servers = ($server)(&transport);
            $crate::transport::$check(&transport, &servers).await;
        }
    };
    (@test ($transport:expr) $test:ident $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let transport = $transport;
            $crate::transport::$check(&transport).await;
        }
    };
}
