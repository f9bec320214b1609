//! A WebSocket client transport: JSON-RPC messages in text frames, subprotocol `mcp`.
//!
//! **Not a standard MCP transport.** The MCP specification (2024-11-05 to 2025-11-25) defines
//! stdio, HTTP+SSE and streamable HTTP only; WebSocket is a custom transport in the sense of
//! its "Custom Transports" section. What this crate speaks, on both sides (the client here,
//! `server::WebSocketServer` behind the `server` feature):
//! - the client opens the connection with an HTTP/1.1 upgrade (RFC 6455) offering the
//!   subprotocol `mcp` (`Sec-WebSocket-Protocol: mcp`); the server must select it;
//! - each JSON-RPC message (request, notification, response or error; no batches) is one
//!   text frame holding its JSON; binary frames are not used;
//! - the connection is the session: either side ends it with a close frame or by closing the
//!   connection. There is no session id and nothing to resume.

use std::fmt;

use futures::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use http::{HeaderValue, header::SEC_WEBSOCKET_PROTOCOL};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Transport, TransportError, TransportKind, async_trait,
};
use rmcp::{
    RoleClient,
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
};
use std::sync::Arc;
use tokio::{net::TcpStream, sync::Mutex};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, protocol::WebSocketConfig},
};

use crate::headers::{bounded, initialize, upstream_headers};

/// The WebSocket subprotocol both sides agree on: `mcp`.
pub const SUBPROTOCOL: &str = "mcp";

/// How long closing a session may take (sending the close frame) before the connection is
/// dropped without it: 1 s.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest message (and frame) accepted: 16 MiB, as the SSE transport's largest event. A
/// larger one ends the session.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The WebSocket client transport (custom, not a standard MCP transport: see the
/// [module docs](self)).
///
/// Endpoints are `ws://` or `wss://` URLs. Each session is one WebSocket connection with
/// Nagle's algorithm off (TCP_NODELAY; with it on, the first call after `initialized` stalls
/// ~44 ms).
///
/// - The caller's headers (identity headers) go on the upgrade request; the internal
///   `mcp-session-id` / `x-mcp-session-id` never do (the [`ConnectRequest`] drops them), nor do
///   connection or handshake headers (`host`, `connection`, `sec-websocket-*`).
/// - Connect, upgrade and `initialize` together are bounded by [`ConnectRequest::timeout`].
/// - The session dies at once on a close frame, a connection error or end, a binary frame, or
///   a text frame that is not a JSON-RPC message (or over [`MAX_MESSAGE_BYTES`]): rmcp's
///   service stops, calls in flight and later calls fail with
///   `ServiceError::TransportClosed`, and the pool evicts it.
/// - Closing the session sends a close frame.
#[derive(Clone, Debug)]
pub struct WebSocket {
    config: WebSocketConfig,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl WebSocket {
    /// A transport accepting messages up to [`MAX_MESSAGE_BYTES`].
    pub fn new() -> Self {
        Self {
            config: WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE_BYTES))
                .max_frame_size(Some(MAX_MESSAGE_BYTES)),
        }
    }

    /// A transport with tungstenite's `config` (message and frame size limits, buffers).
    pub fn with_config(config: WebSocketConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Transport for WebSocket {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        let url = &request.endpoint().url;
        let connecting = async {
            let transport =
                WebSocketClientTransport::connect(url, request.headers(), self.config).await?;
            initialize(&request, transport).await
        };
        bounded(url, request.timeout(), connecting).await
    }
}

/// Why a WebSocket session could not be opened or went on no further.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebSocketError {
    /// The connection or the upgrade failed: refused, TLS, not a WebSocket endpoint (HTTP
    /// status other than 101), or the server did not select the `mcp` subprotocol.
    #[error("the WebSocket handshake failed")]
    Handshake(#[source] tungstenite::Error),
    /// The URL is not a valid absolute URL (tungstenite would connect port 80 for an
    /// out-of-range port).
    #[error("invalid WebSocket URL {url:?}")]
    InvalidUrl {
        /// The URL given, [redacted](mcp_pool_traits::redact_url).
        url: String,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
    /// A message could not be serialized.
    #[error("could not serialize a message: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Writing a frame failed: the connection is gone.
    #[error("sending on the WebSocket failed")]
    Send(#[source] tungstenite::Error),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One open WebSocket session as an rmcp transport: `send` writes a text frame, `receive`
/// reads the next one.
///
/// [`WebSocket`] builds these; use one directly to run an rmcp client of your own over
/// WebSocket: `ClientConfig::default().serve(WebSocketClientTransport::connect(..).await?)`.
pub struct WebSocketClientTransport {
    /// Shared with the `Send + 'static` futures `send` returns; rmcp sends concurrently.
    sink: Arc<Mutex<SplitSink<Socket, Message>>>,
    /// `None` once the connection ended or the transport was closed.
    stream: Option<SplitStream<Socket>>,
}

impl fmt::Debug for WebSocketClientTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketClientTransport")
            .field("open", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl WebSocketClientTransport {
    /// Connects `url` (`ws://` or `wss://`) with `headers` on the upgrade request (connection
    /// and handshake headers among them are dropped), offering the subprotocol `mcp`, with
    /// TCP_NODELAY. No timeout of its own: bound it by the caller's.
    ///
    /// # Errors
    /// [`WebSocketError::InvalidUrl`], [`WebSocketError::Handshake`].
    pub async fn connect(
        url: &str,
        headers: &http::HeaderMap,
        config: WebSocketConfig,
    ) -> Result<Self, WebSocketError> {
        url::Url::parse(url).map_err(|source| WebSocketError::InvalidUrl {
            url: mcp_pool_traits::redact_url(url).into_owned(),
            source,
        })?;
        let mut request = url
            .into_client_request()
            .map_err(WebSocketError::Handshake)?;
        for (name, value) in &upstream_headers(headers) {
            request.headers_mut().append(name, value.clone());
        }
        request.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        // tungstenite checks that the server selected one of the offered subprotocols.
        let (socket, _response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .map_err(WebSocketError::Handshake)?;
        let (sink, stream) = socket.split();
        Ok(Self {
            sink: Arc::new(Mutex::new(sink)),
            stream: Some(stream),
        })
    }
}

impl rmcp::transport::Transport<RoleClient> for WebSocketClientTransport {
    type Error = WebSocketError;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let sink = self.sink.clone();
        let text = serde_json::to_string(&item);
        async move {
            let frame = Message::text(text?);
            sink.lock()
                .await
                .send(frame)
                .await
                .map_err(WebSocketError::Send)
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        receive(&mut self.stream)
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.stream = None;
        // Sends a close frame and closes the connection; an error means it is gone already.
        // Bounded: a send stuck on a peer that stopped reading holds the sink.
        let close = async { self.sink.lock().await.close().await };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        Ok(())
    }
}

/// The next server message; `None` (and the stream dropped) when the connection closed,
/// failed, or carried something that is not a JSON-RPC text message: the session is over.
async fn receive(stream: &mut Option<SplitStream<Socket>>) -> Option<ServerJsonRpcMessage> {
    let frames = stream.as_mut()?;
    loop {
        match frames.next().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<ServerJsonRpcMessage>(text.as_str()) {
                    Ok(message) => return Some(message),
                    Err(error) => {
                        tracing::warn!(
                            %error, bytes = text.len(),
                            "WebSocket: a text frame is not a JSON-RPC message; ending the session"
                        );
                        break;
                    }
                }
            }
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Binary(bytes))) => {
                tracing::warn!(
                    bytes = bytes.len(),
                    "WebSocket: a binary frame (JSON-RPC travels in text frames); ending the session"
                );
                break;
            }
            Some(Ok(Message::Close(frame))) => {
                tracing::debug!(?frame, "WebSocket: the server closed the session");
                break;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "WebSocket: the connection failed; the session is over");
                break;
            }
            None => break,
        }
    }
    *stream = None;
    None
}
