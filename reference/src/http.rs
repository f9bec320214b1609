//! The HTTP side of the reference server: the listener, the accept loop, one hyper connection
//! task per TCP connection, the three transports' routes (streamable HTTP, legacy SSE,
//! WebSocket), and the middleware that counts and records requests.

use std::{
    collections::BTreeSet,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use http::{
    HeaderMap, HeaderValue, Method, StatusCode,
    header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use mcp_pool_transports::server::{
    SessionObserver, SseServer, SseServerConfig, WebSocketServer, WebSocketServerConfig,
};
use parking_lot::Mutex;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::{
    handler::ReferenceHandler, options::ServerOptions, sessions::CountingSessionManager,
    stats::Counters,
};

/// The path of the streamable HTTP endpoint.
pub(crate) const MCP_PATH: &str = "/mcp";
/// The path of the legacy SSE event stream.
pub(crate) const SSE_PATH: &str = "/sse";
/// The path legacy SSE messages are POSTed to.
pub(crate) const MESSAGE_PATH: &str = "/message";
/// The path of the WebSocket endpoint.
pub(crate) const WS_PATH: &str = "/ws";

/// How long [`Run::stop`] lets in-flight responses finish before it aborts their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long the accept loop backs off after an accept error (out of file descriptors, …) so
/// it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The backlog of the listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// State that outlives one run of the server: counters, fault switches, recorded headers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) counters: Arc<Counters>,
    /// Shared with the WebSocket sessions' handlers, which hold their requests themselves.
    pub(crate) hang: Arc<watch::Sender<bool>>,
    pub(crate) headers: Mutex<HeaderLog>,
    /// The status every HTTP request is answered with instead of being served; 0 for none.
    pub(crate) reject: AtomicU16,
    /// The `Authorization` value every request must carry, when a bearer token is required
    /// (set from [`ServerOptions::bearer_token`], changed by
    /// [`ReferenceServer::set_bearer_token`](crate::ReferenceServer::set_bearer_token)).
    pub(crate) authorization: Mutex<Option<Arc<str>>>,
}

/// What the server recorded about request headers.
#[derive(Debug, Default)]
pub(crate) struct HeaderLog {
    /// Lowercase names of every header received.
    pub(crate) seen: BTreeSet<String>,
    /// Lowercase names of the headers of the requests that open sessions: streamable HTTP
    /// POSTs without an `mcp-session-id` (the `initialize` requests), SSE stream GETs and
    /// WebSocket upgrades.
    pub(crate) on_initialize: BTreeSet<String>,
    /// The headers of the most recent request.
    pub(crate) last: HeaderMap,
}

impl HeaderLog {
    fn record(&mut self, method: &Method, path: &str, headers: &HeaderMap) {
        let opens_session = match path {
            MCP_PATH => method == Method::POST && !headers.contains_key("mcp-session-id"),
            SSE_PATH | WS_PATH => method == Method::GET,
            _ => false,
        };
        // `HeaderName`s are lowercase by construction. Allocate only for names not seen yet:
        // this runs on every request.
        for name in headers.keys().map(|name| name.as_str()) {
            if !self.seen.contains(name) {
                self.seen.insert(name.to_owned());
            }
            if opens_session && !self.on_initialize.contains(name) {
                self.on_initialize.insert(name.to_owned());
            }
        }
        self.last = headers.clone();
    }
}

/// Binds `addr` with `SO_REUSEADDR`, so a restarted server gets its port back while
/// connections of the previous run are still in `TIME_WAIT`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One run of the server, from `start` or `restart` to `stop`: its own sessions, listener and
/// connections. Dropping it aborts everything at once.
#[derive(Debug)]
pub(crate) struct Run {
    shutdown: CancellationToken,
    sessions: Arc<CountingSessionManager>,
    sse: SseServer,
    ws: WebSocketServer,
    accept: JoinHandle<()>,
}

/// Counts the sessions of the SSE and WebSocket adapters.
#[derive(Debug)]
struct CountSessions(Arc<Counters>);

impl SessionObserver for CountSessions {
    fn session_opened(&self, _id: &str) {
        self.0.session_opened();
    }

    fn session_closed(&self, _id: &str) {
        self.0.sessions_closed(1);
    }
}

impl Run {
    /// Starts serving MCP on `listener`.
    pub(crate) fn spawn(
        listener: TcpListener,
        shared: Arc<Shared>,
        options: &ServerOptions,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let sessions = Arc::new(CountingSessionManager::new(
            shared.counters.clone(),
            options,
        ));
        let counters = shared.counters.clone();
        let protocols = options.protocols;
        let mcp = StreamableHttpService::new(
            move || {
                Ok(ReferenceHandler::with_counters(counters.clone(), None)
                    .with_protocols(protocols))
            },
            sessions.clone(),
            StreamableHttpServerConfig::default()
                .with_sse_keep_alive(None)
                .with_sse_retry(options.sse_retry)
                // Cancelling the run ends every session and every open response stream.
                .with_cancellation_token(shutdown.child_token()),
        );
        let observer: Arc<dyn SessionObserver> = Arc::new(CountSessions(shared.counters.clone()));
        let counters = shared.counters.clone();
        let sse = SseServer::new(
            move || Ok(ReferenceHandler::with_counters(counters.clone(), None)),
            SseServerConfig::default()
                .with_paths(SSE_PATH, MESSAGE_PATH)
                .with_keep_alive(None)
                .with_shutdown(shutdown.child_token())
                .with_observer(observer.clone()),
        );
        // The hang switch holds HTTP requests in `observe`; a WebSocket session sends no HTTP
        // request after its upgrade, so its handler holds its requests itself.
        let (counters, hang) = (shared.counters.clone(), shared.hang.clone());
        let ws = WebSocketServer::new(
            move || {
                Ok(ReferenceHandler::with_counters(
                    counters.clone(),
                    Some(hang.clone()),
                ))
            },
            WebSocketServerConfig::default()
                .with_path(WS_PATH)
                .with_shutdown(shutdown.child_token())
                .with_observer(observer),
        );
        let observe = middleware::from_fn_with_state(
            Observe {
                shared,
                shutdown: shutdown.clone(),
                stream_end_delay: options.stream_end_delay,
            },
            observe,
        );
        let router = Router::new()
            .route_service(MCP_PATH, mcp)
            .merge(sse.router())
            .merge(ws.router())
            .route_layer(observe);
        let accept = tokio::spawn(accept_loop(listener, router, shutdown.clone()));
        Self {
            shutdown,
            sessions,
            sse,
            ws,
            accept,
        }
    }

    /// Ends every session of this run, over every transport; returns how many there were.
    /// Streamable HTTP sessions are gone when this returns; SSE streams and WebSocket
    /// connections close right after.
    pub(crate) async fn expire_sessions(&self) -> usize {
        self.sessions.expire_all().await + self.sse.close_sessions() + self.ws.close_sessions()
    }

    /// Stops accepting, ends every session and closes every connection, idle keep-alive ones
    /// included. In-flight responses get [`SHUTDOWN_GRACE`] to finish; their connections are
    /// aborted after that.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        // The accept task ends once the listener is closed and every connection is gone; a
        // JoinError here would mean it panicked, and there is nothing left to clean up then.
        let _ = (&mut self.accept).await;
        // No request can reach the sessions any more: remove those whose workers have not
        // closed them yet, so `sessions_alive` is exact when `stop` returns. The SSE and
        // WebSocket sessions were told by the cancellation; wait for them to finish.
        self.sessions.expire_all().await;
        let adapters = async { tokio::join!(self.sse.shutdown(), self.ws.shutdown()) };
        if tokio::time::timeout(SHUTDOWN_GRACE, adapters)
            .await
            .is_err()
        {
            tracing::warn!(
                "reference server: SSE or WebSocket sessions outlived the shutdown grace"
            );
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "reference server: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow with every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    // Without it a keep-alive client stalls ~44 ms per call (Nagle + delayed ACK).
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    // Upgrades on: the WebSocket route takes the connection over after its 101 response.
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = shutdown.cancelled() => {}
    }
    // Closes an idle keep-alive connection at once, a busy one after its response.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

#[derive(Debug, Clone)]
struct Observe {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// [`ServerOptions::stream_end_delay`].
    stream_end_delay: Option<Duration>,
}

/// The challenge sent with a 401 (RFC 6750 §3).
const CHALLENGE: &str = "Bearer realm=\"mcp-pool-reference\"";

impl Observe {
    /// The answer to `request` instead of serving it: the reject switch's status, or a 401
    /// when a required bearer token is missing or wrong.
    fn refusal(&self, request: &Request) -> Option<Response> {
        let reject = self.shared.reject.load(Ordering::Relaxed);
        if let Some(status) = (reject != 0)
            .then(|| StatusCode::from_u16(reject).ok())
            .flatten()
        {
            let body = format!("reference server: answering every request with {status}");
            return Some((status, body).into_response());
        }
        let required = self.shared.authorization.lock().clone()?;
        let given = request.headers().get(AUTHORIZATION);
        if given.is_some_and(|given| given.as_bytes() == required.as_bytes()) {
            return None;
        }
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE))],
                "reference server: a valid bearer token is required",
            )
                .into_response(),
        )
    }
}

/// Counts and records every request, holds it while the hang switch is on, and refuses it
/// (reject switch, bearer token) before it reaches a transport; ends the event stream
/// answering a `POST` late when [`ServerOptions::stream_end_delay`] says so.
async fn observe(State(observe): State<Observe>, request: Request, next: Next) -> Response {
    let end_delay = observe
        .stream_end_delay
        .filter(|_| request.method() == Method::POST);
    observe.shared.counters.http_request();
    observe
        .shared
        .headers
        .lock()
        .record(request.method(), request.uri().path(), request.headers());
    let mut hang = observe.shared.hang.subscribe();
    let released = async {
        // Fails only when the sender is dropped, and `Shared` holds it.
        let _ = hang.wait_for(|hanging| !*hanging).await;
    };
    let response = tokio::select! {
        () = released => match observe.refusal(&request) {
            Some(refusal) => refusal,
            None => next.run(request).await,
        },
        () = observe.shutdown.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let is_event_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    match end_delay {
        Some(delay) if is_event_stream => ending_late(response, delay),
        _ => response,
    }
}

/// `response` with the end of its body held back until `delay` after its last frame: the
/// frames go out as they come, the end (the last chunk) `delay` later, in a write of its own.
fn ending_late(response: Response, delay: Duration) -> Response {
    response.map(|body| {
        let end = futures::stream::once(tokio::time::sleep(delay))
            .filter_map(|()| std::future::ready(None::<Result<Bytes, axum::Error>>));
        Body::from_stream(body.into_data_stream().chain(end))
    })
}
