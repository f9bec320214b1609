//! The gateway's HTTP server: [`serve`] runs an [`axum::Router`] on a [`TcpListener`] over
//! HTTP/1.1 and cleartext HTTP/2 (detected per connection) within [`ServerLimits`].
//!
//! `axum::serve` bounds neither how long a client may take to send its request nor how many
//! connections are open: a client that sends its request head a byte at a time (slowloris),
//! or nothing at all, holds its connection for as long as it likes. Here:
//!
//! - a connection with no request in flight must send a complete request head within
//!   [`ServerLimits::header_read_timeout`] or is closed without a response. hyper's HTTP/1
//!   header-read timeout does that once hyper knows the protocol; a per-connection idle timer
//!   covers the rest: the first bytes, read by hyper-util's protocol detection without a
//!   timer, and HTTP/2 connections;
//! - a request body must arrive within [`ServerLimits::body_read_timeout`] or is answered 408;
//! - at most [`ServerLimits::max_connections`] connections are open; later ones wait in the
//!   listener's backlog;
//! - every connection has `TCP_NODELAY`: streamed responses (SSE) would otherwise stall some
//!   40 ms per message under Nagle's algorithm and the client's delayed ACKs;
//! - handlers can read the peer's address with `ConnectInfo<SocketAddr>`.
//!
//! Not bounded: how long a client takes to read its responses, and what a connection does once
//! upgraded to a WebSocket (it then leaves the server's count and its graceful shutdown, as
//! with `axum::serve`).

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Sleep,
};
use tower::{Service, ServiceExt};

use crate::error::ApiError;

/// How long the accept loop waits after an error such as `EMFILE` (out of file descriptors)
/// before it accepts again: retrying at once would spin while nothing has been released.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What [`serve`] allows a client: how long it may take to send a request and how many
/// connections may be open at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// The time a connection has, from accept or from the end of its previous response, to
    /// send a complete request head; past it the connection is closed without a response.
    /// Default 10 s.
    ///
    /// This is also the keep-alive idle timeout of both protocols (hyper has no separate one):
    /// an HTTP/2 connection is closed once no request has been in flight on it for this long.
    /// A streamed response (SSE) is in flight until it ends.
    pub header_read_timeout: Duration,
    /// The time a request body has to arrive completely, from the handler's first read of it;
    /// past it the request is answered 408 (and an HTTP/1 connection closed). Default 30 s,
    /// time for a 4 MiB body (the default `MAX_BODY_BYTES`) at some 140 KB/s.
    ///
    /// A total, not an idle timeout between reads: a client that sends a byte now and then
    /// still runs out of time.
    pub body_read_timeout: Duration,
    /// The most connections open at once. Default 512: under the soft limit of 1024 open
    /// files common on Linux, which the process also spends on its upstream connections and
    /// its state backend; past that limit accepts fail (`EMFILE`) for every client alike.
    /// Raise both together.
    ///
    /// While all are in use, further connections are not accepted: they wait in the kernel's
    /// listen backlog (their handshake done, their request unread) and are served in order
    /// as connections close, as with Go's `netutil.LimitListener`; once the backlog is full,
    /// the kernel drops new connection attempts and clients retry. A connection upgraded to
    /// a WebSocket leaves the count. 0 counts as 1.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then stops accepting
/// and returns once the open connections have finished: idle ones are closed at once, the
/// others after their request in flight. Long-lived responses (SSE streams) hold that wait, so
/// the caller's `shutdown` should end them before it resolves.
///
/// Handlers can extract the peer's address as `axum::extract::ConnectInfo<SocketAddr>`.
///
/// # Errors
/// None at present: errors accepting a connection (such as running out of file descriptors)
/// are logged and retried after a second, as `axum::serve` does, whose signature this keeps.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let idle_timeout = limits.header_read_timeout;
    let app = app.layer(middleware::from_fn_with_state(
        limits.body_read_timeout,
        body_deadline,
    ));
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let connections = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer, permit) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on the connection from {peer}: {e}");
        }
        let make = ServiceExt::<SocketAddr>::ready(&mut make_service)
            .await
            .unwrap_or_else(|never| match never {});
        let routes = make.call(peer).await.unwrap_or_else(|never| match never {});
        let (in_flight, requests) = watch::channel(0);
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let guard = InFlight::begin(&in_flight);
            let response = routes.clone().oneshot(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _in_flight: guard,
                }))
            }
        });
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                }
                () = idle(requests, idle_timeout) => {
                    tracing::debug!(
                        "closed the connection from {peer}: no request for {idle_timeout:?}"
                    );
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::debug!(
        "stopped accepting; waiting for {} connection(s)",
        graceful.count()
    );
    graceful.shutdown().await;
    Ok(())
}

/// The next connection, once one of the `connections` permits is free; until then new
/// connections wait in the listener's backlog. Cancel-safe.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let permit = Arc::clone(connections)
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, permit),
            // The client gave up before it was accepted: nothing to report.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::warn!("accepting a connection: {e}; retrying in {ACCEPT_BACKOFF:?}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Resolves once no request has been in flight on a connection for `timeout`, counting from
/// now (its accept) or from the end of its last response. `requests` counts those in flight.
async fn idle(mut requests: watch::Receiver<usize>, timeout: Duration) {
    loop {
        // An error: the connection's service is gone, and the connection with it.
        if requests.wait_for(|&n| n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(timeout, requests.changed()).await {
            // A request began: wait until it and any others end.
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// One request in flight on a connection, from the moment hyper hands its head over until
/// its response body is dropped (sent, or abandoned with the connection).
struct InFlight(watch::Sender<usize>);

impl InFlight {
    fn begin(requests: &watch::Sender<usize>) -> Self {
        requests.send_modify(|n| *n += 1);
        Self(requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its request [`InFlight`] until it is dropped.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Gives the request body [`ServerLimits::body_read_timeout`] to arrive. When it runs out the
/// handler's read fails, and whatever the handler answered (a 400 or a 413, depending on how
/// it reads), the client gets a 408: the request was fine, the client too slow.
async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            body,
            timeout,
            deadline: None,
            expired: Arc::clone(&expired),
        })
    });
    let response = next.run(request).await;
    if expired.load(Ordering::Acquire) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {timeout:?} (BODY_READ_TIMEOUT_SECS)"),
        )
        .into_response();
    }
    response
}

/// A request body that fails once `timeout` has passed since its first poll without it ending,
/// and then sets `expired`.
struct DeadlineBody {
    body: Body,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        ready!(deadline.as_mut().poll(cx));
        this.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
