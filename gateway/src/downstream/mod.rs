//! The downstream MCP side of the gateway: the routes of each server —
//! `/servers/{id}/mcp` (rmcp's streamable HTTP server: protocol 2025-03-26 to 2025-11-25 with
//! gateway-issued `Mcp-Session-Id`s, and 2026-07-28 without sessions), `/servers/{id}/sse` +
//! `/servers/{id}/message` (HTTP+SSE, 2024-11-05) and `/servers/{id}/ws` (WebSocket), the last
//! two on the transports crate's server adapters; the pool faces the upstream.
//!
//! - `http`: the axum handlers, and what they check before a request reaches its session;
//! - `routes`: [`DownstreamRoutes`], the rmcp services of each server;
//! - `sessions`: the downstream sessions of each server and each user's count of them;
//! - `proxy`: the rmcp handler of one downstream session, which sends its requests upstream;
//! - `caller`: who sent a request: the session's owner and the upstream lease's principal.
//!
//! Each downstream session gets its own `Proxy`; every request it receives goes upstream with
//! [`Pool::call`](mcp_pool::Pool::call): the principal is the JWT's user (`sub`, else `email`,
//! else `user_id`) and the request's identity headers, the sticky affinity is the proxy's own
//! random id (one per downstream session), and the lease is released when the upstream has
//! answered. What the upstream sends during the call travels back on the downstream request's
//! stream:
//! - progress, with the downstream request's own progress token (the upstream saw the token the
//!   pool's session gave the call, so tokens and request ids never leak between leases sharing
//!   one upstream session);
//! - logging during the call;
//! - the upstream's requests (sampling, elicitation, roots), asked of the downstream client.
//!
//! A downstream `notifications/cancelled` cancels the request's context: the call's future is
//! dropped, and the pool tells the upstream (`notifications/cancelled`) and holds the session
//! until it answers a probe. A downstream session's end (DELETE, idle timeout) drops its proxy,
//! which unbinds its sticky upstream session.
//!
//! A downstream session id is bound to the owner that created it: a request carrying another
//! owner's `Mcp-Session-Id` gets HTTP 404, as an unknown session would (the MCP spec's signal
//! to re-initialize), so a leaked id is worth nothing to another user. `*/list_changed` from
//! any upstream session of the server reaches every downstream session of it (debounced by
//! the pool).
//!
//! Session-scoped state under pooling (the MCP spec scopes subscriptions, the log level and
//! roots to a session): a downstream session that creates state scoped to the upstream session
//! (`resources/subscribe`, `logging/setLevel`, and its roots when it sends
//! `notifications/roots/list_changed`) is pinned to the upstream session that holds it
//! ([`CallOptions::pin`](mcp_pool::CallOptions::pin)), under any strategy, so its later
//! requests meet their own state; what that upstream session sends outside calls reaches the
//! downstream sessions pinned to it — `resources/updated` only those subscribed to the URI,
//! logging all of them — and a request of the server outside calls (`roots/list`) is asked of
//! the one pinned downstream session that can answer, or answered with a JSON-RPC error. When
//! the pinned upstream session leaves the pool, the downstream session ends (HTTP 404 next).

mod caller;
mod http;
mod proxy;
mod routes;
mod sessions;

pub use http::SESSION_LIMIT_CODE;
pub(crate) use http::{handle, handle_legacy};
pub use proxy::CONVERSATION_LOST_CODE;
pub use routes::DownstreamRoutes;
