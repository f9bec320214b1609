//! What the SSE and WebSocket adapters share: the per-session channel transport, the session
//! runner and the session observer.

use std::{
    fmt, io,
    sync::{Arc, Mutex, PoisonError},
};

use futures::future::BoxFuture;
use rmcp::{
    RoleServer, ServerHandler, ServiceExt as _,
    model::{ClientJsonRpcMessage, GetExtensions as _, JsonRpcMessage, ServerJsonRpcMessage},
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Told when the sessions of an adapter open and end, e.g. to count them.
///
/// `session_opened` is called when a client opens a session (the SSE `GET`, the WebSocket
/// upgrade), before `initialize`; `session_closed` once for each opened session, when it ends
/// for any reason (client gone, handler done, server shut down), after the session's
/// connection is closed or closing.
pub trait SessionObserver: Send + Sync + 'static {
    /// A session opened; `id` is the adapter's id for it (the SSE `sessionId`, a random id
    /// for WebSocket).
    fn session_opened(&self, id: &str);
    /// The session `id` ended.
    fn session_closed(&self, id: &str);
}

/// Puts `parts` (the HTTP request that carried or opened the session) into the extensions of
/// a request or notification, where handlers find it as with rmcp's streamable HTTP server.
pub(crate) fn attach_parts(message: &mut ClientJsonRpcMessage, parts: &http::request::Parts) {
    match message {
        JsonRpcMessage::Request(request) => {
            request.request.extensions_mut().insert(parts.clone());
        }
        JsonRpcMessage::Notification(notification) => {
            notification
                .notification
                .extensions_mut()
                .insert(parts.clone());
        }
        _ => {}
    }
}

/// The server side of one session as an rmcp transport: messages from the client arrive on
/// `incoming`, messages to the client leave on `outgoing`. The adapter moves them between
/// the channels and the connection.
pub(crate) struct ChannelTransport {
    pub(crate) incoming: mpsc::Receiver<ClientJsonRpcMessage>,
    pub(crate) outgoing: mpsc::Sender<ServerJsonRpcMessage>,
}

/// The connection a session is gone: its messages cannot be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the session's connection is closed")]
pub struct ConnectionClosed;

impl rmcp::transport::Transport<RoleServer> for ChannelTransport {
    type Error = ConnectionClosed;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let outgoing = self.outgoing.clone();
        async move { outgoing.send(item).await.map_err(|_| ConnectionClosed) }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        Ok(())
    }
}

/// The adapter's end of a session's channels.
pub(crate) struct SessionEnds {
    /// Messages from the client, to the handler.
    pub(crate) to_handler: mpsc::Sender<ClientJsonRpcMessage>,
    /// Messages from the handler, to the client.
    pub(crate) from_handler: mpsc::Receiver<ServerJsonRpcMessage>,
    /// Cancelled when the session ends, whichever side ends it; cancel it to end the session.
    pub(crate) ended: CancellationToken,
}

/// Starts a handler on a session's transport and serves it until the session ends.
type Start =
    dyn Fn(ChannelTransport, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync + 'static;

/// Runs the sessions of one adapter: makes a handler per session, serves it on a task, tells
/// the observer, and ends every session on shutdown.
#[derive(Clone)]
pub(crate) struct SessionRunner {
    start: Arc<Start>,
    observer: Option<Arc<dyn SessionObserver>>,
    shutdown: CancellationToken,
    /// The parent of the tokens of the sessions open now: cancelled and replaced by
    /// [`close_sessions`](Self::close_sessions).
    epoch: Arc<Mutex<CancellationToken>>,
    tasks: TaskTracker,
    capacity: usize,
}

impl fmt::Debug for SessionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRunner")
            .field("sessions", &self.tasks.len())
            .field("shut_down", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl SessionRunner {
    pub(crate) fn new<S, F>(
        factory: F,
        observer: Option<Arc<dyn SessionObserver>>,
        shutdown: CancellationToken,
        capacity: usize,
    ) -> Self
    where
        S: ServerHandler,
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
    {
        let start = move |transport: ChannelTransport, ended: CancellationToken| {
            let handler = factory();
            let serve: BoxFuture<'static, ()> = Box::pin(async move {
                let handler = match handler {
                    Ok(handler) => handler,
                    Err(error) => {
                        tracing::warn!(%error, "MCP server adapter: the handler factory failed");
                        return;
                    }
                };
                match handler.serve_with_ct(transport, ended).await {
                    Ok(running) => {
                        let _ = running.waiting().await;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "MCP server adapter: the session ended before initialize");
                    }
                }
            });
            serve
        };
        Self {
            start: Arc::new(start),
            observer,
            epoch: Arc::new(Mutex::new(shutdown.child_token())),
            shutdown,
            tasks: TaskTracker::new(),
            capacity: capacity.max(1),
        }
    }

    /// Opens a session `id`: starts its handler on a task and returns the adapter's ends.
    /// `None` once the runner is shut down.
    pub(crate) fn open(&self, id: &str) -> Option<SessionEnds> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        let (to_handler, incoming) = mpsc::channel(self.capacity);
        let (outgoing, from_handler) = mpsc::channel(self.capacity);
        let ended = self.epoch().child_token();
        let serve = (self.start)(ChannelTransport { incoming, outgoing }, ended.child_token());
        let closed = self.observer.clone().map(|observer| {
            observer.session_opened(id);
            ObserverGuard {
                observer,
                id: id.to_owned(),
            }
        });
        let session_ended = ended.clone();
        self.tasks.spawn(async move {
            // Dropped last: the observer hears of the end after the session's token is
            // cancelled, i.e. after the adapter started closing its connection.
            let _closed = closed;
            let _end = session_ended.clone().drop_guard();
            tokio::select! {
                () = serve => {}
                () = session_ended.cancelled() => {}
            }
        });
        Some(SessionEnds {
            to_handler,
            from_handler,
            ended,
        })
    }

    fn epoch(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        // A token swap cannot be left half-done by a panic.
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every session open now and keeps serving; returns how many were running. They
    /// end asynchronously: their tasks are told at once and finish soon after.
    pub(crate) fn close_sessions(&self) -> usize {
        let running = self.live();
        let previous = std::mem::replace(&mut *self.epoch(), self.shutdown.child_token());
        previous.cancel();
        running
    }

    /// How many sessions are running.
    pub(crate) fn live(&self) -> usize {
        self.tasks.len()
    }

    /// Ends every session, refuses new ones, and returns once every session task has
    /// finished.
    pub(crate) async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Tells the observer that a session ended when dropped, however its task ends.
struct ObserverGuard {
    observer: Arc<dyn SessionObserver>,
    id: String,
}

impl Drop for ObserverGuard {
    fn drop(&mut self) {
        self.observer.session_closed(&self.id);
    }
}
