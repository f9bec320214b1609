#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod delivery;
mod drain;
mod failure;
mod headers;
mod per_call;
pub mod sse;
#[cfg(feature = "stdio")]
pub mod stdio;
mod streamable_http;
pub mod websocket;

#[cfg(feature = "server")]
pub mod server;

pub use delivery::{CallFailure, NotDelivered, call_failure};
pub use drain::{RESPONSE_STREAM_DRAIN_BYTES, RESPONSE_STREAM_DRAIN_TIME};
pub use failure::failure_kind;
pub use sse::{Sse, SseClientTransport, SseError};
#[cfg(feature = "stdio")]
pub use stdio::Stdio;
pub use streamable_http::{
    IDLE_CONNECTION_TIMEOUT, MAX_STREAM_RESUMES, StreamableHttp, default_retry_policy, http_client,
};
pub use websocket::{WebSocket, WebSocketClientTransport, WebSocketError};
// The cause in words, next to `failure_kind`'s category.
pub use failure::failure_cause;

use std::sync::Arc;

use mcp_pool_traits::Transport;

/// The built-in client transports, one per [`TransportKind`](mcp_pool_traits::TransportKind),
/// as a pool registers them by default: [`StreamableHttp`] and [`Sse`] sharing one keep-alive
/// HTTP client ([`http_client`]), and [`WebSocket`].
///
/// # Errors
/// When the HTTP client cannot be built (its TLS backend failed to initialize).
pub fn defaults() -> Result<Vec<Arc<dyn Transport>>, reqwest::Error> {
    let client = http_client()?;
    Ok(vec![
        Arc::new(StreamableHttp::with_client(client.clone())),
        Arc::new(Sse::with_client(client)),
        Arc::new(WebSocket::new()),
        #[cfg(feature = "stdio")]
        Arc::new(Stdio::new()),
    ])
}
