//! Server adapters (feature `server`): serve any rmcp [`ServerHandler`](rmcp::ServerHandler)
//! over the transports rmcp 3.9 has no server for, as axum routers.
//!
//! | adapter | routes | protocol |
//! |---|---|---|
//! | [`SseServer`] | `GET /sse`, `POST /message?sessionId=…` | HTTP+SSE, MCP spec 2024-11-05 |
//! | [`WebSocketServer`] | `GET /ws` (upgrade, subprotocol `mcp`) | custom: JSON-RPC in text frames ([`crate::websocket`]) |
//!
//! Both make a fresh handler per session from a factory (`Fn() -> io::Result<S>`, as rmcp's
//! `StreamableHttpService`), end every session when their shutdown token is cancelled, and
//! tell an optional [`SessionObserver`] when sessions open and end. Merge their routers with
//! rmcp's `StreamableHttpService` to serve all three transports on one port:
//!
//! ```no_run
//! # async fn run<H: rmcp::ServerHandler + Default>() -> std::io::Result<()> {
//! use mcp_pool_transports::server::{SseServer, SseServerConfig, WebSocketServer, WebSocketServerConfig};
//!
//! let sse = SseServer::new(|| Ok(H::default()), SseServerConfig::default());
//! let ws = WebSocketServer::new(|| Ok(H::default()), WebSocketServerConfig::default());
//! let app = sse.router().merge(ws.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod session;
mod sse;
mod websocket;

pub use session::{ConnectionClosed, SessionObserver};
pub use sse::{SessionOwner, SseServer, SseServerConfig};
pub use websocket::{WebSocketServer, WebSocketServerConfig};
