//! Several gateway workers sharing one state backend: downstream sessions owned by one worker
//! and reached from any.
//!
//! - [`membership`]: a worker's id and heartbeat;
//! - [`group`]: [`Group`], the workers as one of them sees the others;
//! - [`claims`]: who owns each session, and the takeover of a dead owner's sessions;
//! - [`relay`]: both sides of relaying a request to the worker that owns its session;
//! - [`wire`]: what workers send each other: signed envelopes, reply parts.
//!
//! The group knows nothing of MCP: a request relayed here is served by the [`LocalHandler`]
//! given when the worker joins ([`crate::workers::join`]).
//!
//! # Ownership
//! The worker that creates a downstream MCP session (streamable HTTP `initialize`) claims its
//! id in the state backend ([`StateBackend::claim`](mcp_pool::traits::StateBackend::claim):
//! first writer wins) and refreshes the claim while the session lives; a `DELETE` releases it.
//! A worker that stops gracefully [leaves](Group::leave): its claims can be taken over at once
//! (below). The session's upstream leases live in that worker's pool; nothing of them is
//! shared.
//!
//! # Relaying
//! A request that carries a session id this worker does not hold is looked up: when another
//! live worker owns the session, the request is sent to it over the backend's publish/subscribe
//! (channel `fwd-{worker}`: one subscription per worker, for requests and replies alike),
//! executed there exactly as if it had arrived there — the owner's identity check included —
//! and its response streamed back as it is produced: the status and headers, then every chunk
//! of the body (an SSE stream carries the call's progress and logging before its result), in
//! order. No loopback HTTP: a load balancer would send it to a random worker again. A
//! downstream client that goes away cancels the request at the owner.
//!
//! The request travels in an envelope signed with HMAC-SHA256 under the group's key (the
//! gateway's `JWT_SECRET_KEY`; with auth off, a key derived from the namespace, which keeps
//! groups apart but protects nothing — there is nothing to protect then) and carries the
//! caller's authenticated user, the time it was signed, the headers and the body; the owner
//! rejects an envelope whose signature does not match or that is older than
//! [`ENVELOPE_MAX_AGE`]. The gateway's own token stays behind unless the server sends it
//! upstream anyway ([`ServerRecord::forward_token`](mcp_pool::traits::ServerRecord)).
//!
//! # Takeover
//! When the session has no live owner (its owner's heartbeat ran out: the process died), the
//! receiving worker takes the claim — atomically, and never from a live owner, which the
//! backend guarantees. The upstream session died with the old owner: on a `sticky` server the
//! client gets HTTP 404 for its session (the MCP specification's signal to initialize again)
//! and initializes a new one here; on other servers, which keep no state per downstream
//! session, the session is restored here (rmcp's session restore, with an `initialize` of the
//! protocol version the request names) and the request is served.

pub mod claims;
pub mod group;
pub mod membership;
pub mod relay;
pub mod wire;

pub(crate) use claims::AdoptedSessions;
pub use claims::{CLAIM_REFRESH, CLAIM_TTL, CLAIM_WAIT, TAKEOVERS_TOTAL};
pub use group::Group;
pub use membership::{HEARTBEAT_INTERVAL, HEARTBEAT_TTL, WorkerId, spawn_heartbeat};
pub use relay::{FORWARD_SECONDS, FORWARDS_TOTAL, LocalHandler, spawn_channel};
pub use wire::ENVELOPE_MAX_AGE;
pub(crate) use wire::Relayed;
