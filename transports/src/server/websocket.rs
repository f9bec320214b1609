//! Serves an rmcp server over WebSocket (custom transport: see [`crate::websocket`]).

use std::{fmt, io, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, close_code},
    },
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _};
use rmcp::{ServerHandler, model::ClientJsonRpcMessage};
use tokio_util::sync::CancellationToken;

use super::session::{SessionEnds, SessionObserver, SessionRunner, attach_parts};
use crate::websocket::{MAX_MESSAGE_BYTES, SUBPROTOCOL};

/// How long sending the close frame may take before the connection is dropped without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a [`WebSocketServer`] serves.
///
/// Defaults: the endpoint at `/ws`, messages up to [`MAX_MESSAGE_BYTES`], 64 messages
/// buffered per direction and session.
#[derive(Clone)]
#[non_exhaustive]
pub struct WebSocketServerConfig {
    /// The path of the upgrade request (`GET`).
    pub path: String,
    /// The largest message accepted from a client; a larger one ends its session.
    pub max_message_bytes: usize,
    /// Messages buffered per session and direction before the sender waits.
    pub channel_capacity: usize,
    /// Cancelled: every session ends (a close frame `1001 going away`) and new upgrades are
    /// refused with 503.
    pub shutdown: CancellationToken,
    /// Told when sessions open and end.
    pub observer: Option<Arc<dyn SessionObserver>>,
}

impl fmt::Debug for WebSocketServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketServerConfig")
            .field("path", &self.path)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("channel_capacity", &self.channel_capacity)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for WebSocketServerConfig {
    fn default() -> Self {
        Self {
            path: "/ws".to_owned(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            channel_capacity: 64,
            shutdown: CancellationToken::new(),
            observer: None,
        }
    }
}

impl WebSocketServerConfig {
    /// The same config serving at `path`.
    pub fn with_path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// The same config ending every session when `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The same config telling `observer` of sessions opening and ending.
    pub fn with_observer(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Serves any rmcp [`ServerHandler`] over WebSocket, as an axum [`Router`] with one route,
/// `GET <path>`: the protocol of [`crate::websocket`] (subprotocol `mcp`, one JSON-RPC message
/// per text frame, the connection is the session).
///
/// - The upgrade must offer the subprotocol `mcp` (`400` otherwise); each connection gets a
///   fresh handler from the factory. The upgrade request's `http::request::Parts` (headers
///   included) ride along in the extensions of every request of the session.
/// - A binary frame, a text frame that is not a JSON-RPC message, or a message over
///   [`WebSocketServerConfig::max_message_bytes`] ends the session with a close frame (1003,
///   1007, 1009).
/// - The session ends when the client closes or drops the connection, when the handler is
///   done, or when [`WebSocketServerConfig::shutdown`] is cancelled (close frame 1001).
///
/// The router must be served with HTTP/1.1 upgrades enabled (axum's `serve` does; a hand-made
/// hyper connection needs `.with_upgrades()`), and TCP_NODELAY on the accepted sockets.
#[derive(Clone, Debug)]
pub struct WebSocketServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runner: SessionRunner,
    path: String,
    max_message_bytes: usize,
}

impl WebSocketServer {
    /// An adapter serving a fresh handler from `factory` per connection.
    pub fn new<S, F>(factory: F, config: WebSocketServerConfig) -> Self
    where
        S: ServerHandler,
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
    {
        let runner = SessionRunner::new(
            factory,
            config.observer,
            config.shutdown,
            config.channel_capacity,
        );
        Self {
            inner: Arc::new(Inner {
                runner,
                path: config.path,
                max_message_bytes: config.max_message_bytes,
            }),
        }
    }

    /// The route: `GET <path>` (the upgrade). Merge it into an app or serve it as it is.
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.inner.path, get(upgrade))
            .with_state(self.inner.clone())
    }

    /// Ends every session open now (close frame 1001) and keeps serving; returns how many
    /// were open. They end asynchronously, soon after this returns.
    pub fn close_sessions(&self) -> usize {
        self.inner.runner.close_sessions()
    }

    /// How many sessions are open.
    pub fn live_sessions(&self) -> usize {
        self.inner.runner.live()
    }

    /// Ends every session (close frame 1001), refuses new ones, and returns once every
    /// session has finished. The same as cancelling [`WebSocketServerConfig::shutdown`], then
    /// waiting.
    pub async fn shutdown(&self) {
        self.inner.runner.shutdown().await;
    }
}

async fn upgrade(
    State(inner): State<Arc<Inner>>,
    parts: Parts,
    upgrade: WebSocketUpgrade,
) -> Response {
    let offered = upgrade.requested_protocols().any(|p| {
        p.to_str()
            .is_ok_and(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL))
    });
    if !offered {
        return (
            StatusCode::BAD_REQUEST,
            "offer the WebSocket subprotocol `mcp` (Sec-WebSocket-Protocol: mcp)",
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let Some(ends) = inner.runner.open(&id) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
            .into_response();
    };
    upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(inner.max_message_bytes)
        .max_frame_size(inner.max_message_bytes)
        .on_failed_upgrade(|error| {
            tracing::debug!(%error, "WebSocket server: the upgrade failed");
        })
        .on_upgrade(move |socket| pump(socket, ends, parts))
}

/// Moves messages between the connection and the session until either ends, then closes the
/// connection with a close frame saying why.
async fn pump(socket: WebSocket, ends: SessionEnds, parts: Parts) {
    let SessionEnds {
        to_handler,
        mut from_handler,
        ended,
    } = ends;
    // Ends the session however this task ends.
    let _end = ended.clone().drop_guard();
    let (mut sink, mut stream) = socket.split();
    let close: Option<(u16, &'static str)> = loop {
        tokio::select! {
            biased;
            () = ended.cancelled() => break Some((close_code::AWAY, "the server ended the session")),
            outgoing = from_handler.recv() => {
                let Some(message) = outgoing else {
                    break Some((close_code::NORMAL, "the session ended"));
                };
                let text = match serde_json::to_string(&message) {
                    Ok(text) => text,
                    Err(error) => {
                        tracing::error!(%error, "WebSocket server: could not serialize a message");
                        break Some((close_code::ERROR, "internal error"));
                    }
                };
                if sink.send(Message::text(text)).await.is_err() {
                    break None;
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let mut message = match serde_json::from_str::<ClientJsonRpcMessage>(text.as_str()) {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::debug!(%error, "WebSocket server: a text frame is not a JSON-RPC message");
                            break Some((close_code::INVALID, "a text frame is not a JSON-RPC message"));
                        }
                    };
                    attach_parts(&mut message, &parts);
                    if to_handler.send(message).await.is_err() {
                        break Some((close_code::NORMAL, "the session ended"));
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    break Some((close_code::UNSUPPORTED, "JSON-RPC messages travel in text frames"));
                }
                // axum answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(error)) => {
                    tracing::debug!(%error, "WebSocket server: the connection failed");
                    // A message over the size limit lands here; tell the client if it listens.
                    break Some((close_code::SIZE, "the connection failed or a message was too large"));
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The client may be gone already (nothing to do about a failed close) or not reading
        // (the bound keeps a stop from waiting on it).
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}
