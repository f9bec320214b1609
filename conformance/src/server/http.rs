//! The HTTP side of the reference server: the listener, the accept loop, one hyper connection
//! task per TCP connection, and the middleware that counts and records requests.

use std::{collections::BTreeSet, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, Method, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
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

/// The path the MCP endpoint is served on.
pub(crate) const MCP_PATH: &str = "/mcp";

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
    pub(crate) hang: watch::Sender<bool>,
    pub(crate) headers: Mutex<HeaderLog>,
}

/// What the server recorded about request headers.
#[derive(Debug, Default)]
pub(crate) struct HeaderLog {
    /// Lowercase names of every header received on `/mcp`.
    pub(crate) seen: BTreeSet<String>,
    /// Lowercase names of the headers of POSTs without an `mcp-session-id`: the `initialize`
    /// requests that open sessions.
    pub(crate) on_initialize: BTreeSet<String>,
    /// The headers of the most recent request.
    pub(crate) last: HeaderMap,
}

impl HeaderLog {
    fn record(&mut self, method: &Method, headers: &HeaderMap) {
        let opens_session = method == Method::POST && !headers.contains_key("mcp-session-id");
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
    accept: JoinHandle<()>,
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
        let mcp = StreamableHttpService::new(
            move || Ok(ReferenceHandler::with_counters(counters.clone(), None)),
            sessions.clone(),
            StreamableHttpServerConfig::default()
                .with_sse_keep_alive(None)
                .with_sse_retry(options.sse_retry)
                // Cancelling the run ends every session and every open response stream.
                .with_cancellation_token(shutdown.child_token()),
        );
        let observe = middleware::from_fn_with_state(
            Observe {
                shared,
                shutdown: shutdown.clone(),
            },
            observe,
        );
        let router = Router::new()
            .route_service(MCP_PATH, mcp)
            .route_layer(observe);
        let accept = tokio::spawn(accept_loop(listener, router, shutdown.clone()));
        Self {
            shutdown,
            sessions,
            accept,
        }
    }

    /// Removes every session of this run; returns how many there were.
    pub(crate) async fn expire_sessions(&self) -> usize {
        self.sessions.expire_all().await
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
        // closed them yet, so `sessions_alive` is exact when `stop` returns.
        self.sessions.expire_all().await;
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
    // Without it a keep-alive client stalls ~44 ms per call (Nagle + delayed ACK, RMCP-NOTES).
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
}

/// Counts and records every request on `/mcp`, and holds it while the hang switch is on.
async fn observe(State(observe): State<Observe>, request: Request, next: Next) -> Response {
    observe.shared.counters.http_request();
    observe
        .shared
        .headers
        .lock()
        .record(request.method(), request.headers());
    let mut hang = observe.shared.hang.subscribe();
    let released = async {
        // Fails only when the sender is dropped, and `Shared` holds it.
        let _ = hang.wait_for(|hanging| !*hanging).await;
    };
    tokio::select! {
        () = released => next.run(request).await,
        () = observe.shutdown.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
