//! [`PoolError`]: why an acquire or a pool operation failed.

use std::time::Duration;

use mcp_pool_traits::{ConfigError, InvalidEndpoint, ServerId, TransportError, TransportKind};

/// Why an acquire or a pool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No server with this id is configured.
    #[error("unknown server {0}: configure it with Pool::add_server first")]
    UnknownServer(ServerId),
    /// No session became available within the acquire timeout.
    #[error(
        "acquire on server {server} ({transport}) timed out after {waited:?}: \
         {in_use} of max_size {max_size} sessions in use, {waiters} other waiters"
    )]
    Timeout {
        /// The server.
        server: ServerId,
        /// The transport of the key.
        transport: TransportKind,
        /// How long the acquire waited (its `timeout`).
        waited: Duration,
        /// Sessions of the key at the time, being created included.
        in_use: u32,
        /// The key's `max_size`.
        max_size: u32,
        /// Acquires still waiting behind this one.
        waiters: usize,
    },
    /// A new session could not be opened.
    #[error("creating a session for server {server} failed: {source}")]
    Create {
        /// The server.
        server: ServerId,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
    /// The server has no endpoint the acquire can use.
    #[error("server {server} has no available endpoint over {transport}")]
    NoEndpoint {
        /// The server.
        server: ServerId,
        /// The transport asked for.
        transport: TransportKind,
    },
    /// The pool-wide cap on sessions is reached and none of them is idle.
    #[error(
        "the pool holds its maximum of {max_sessions} sessions and none is idle \
         (SESSION_POOL_MAX_SESSIONS)"
    )]
    SessionLimit {
        /// The cap.
        max_sessions: u32,
    },
    /// The user's sessions across servers are at `SESSION_POOL_USER_LIMIT` and none is idle.
    #[error(
        "user {user} holds its maximum of {limit} sessions across servers and none is idle \
         (SESSION_POOL_USER_LIMIT)"
    )]
    UserLimit {
        /// 8-character prefix of the user's hash.
        user: String,
        /// The limit.
        limit: u32,
    },
    /// The pool-wide cap on keys is reached and no key is idle.
    #[error(
        "the pool holds its maximum of {max_keys} keys and none is idle (SESSION_POOL_MAX_KEYS)"
    )]
    KeyLimit {
        /// The cap.
        max_keys: u32,
    },
    /// The state backend failed: only shared features (saved configs, limits across workers)
    /// are affected; local pooling keeps working.
    #[error("state backend: {0}")]
    Backend(#[from] mcp_pool_traits::BackendError),
    /// Every endpoint of the server over this transport has an open circuit breaker: the
    /// acquire fails at once instead of waiting for creations bound to fail.
    #[error(
        "every endpoint of server {server} ({transport}) has an open circuit after repeated \
         connection failures; the next attempt is allowed in {retry_in:?}"
    )]
    CircuitOpen {
        /// The server.
        server: ServerId,
        /// The transport of the key.
        transport: TransportKind,
        /// Until the first endpoint allows a probe again.
        retry_in: Duration,
    },
    /// The pool was closed with [`Pool::close`](crate::Pool::close).
    #[error("the pool is closed")]
    Closed,
    /// A configuration was rejected; nothing of it was applied.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The pool could not be set up (its HTTP client failed to initialize).
    #[error("the pool could not be set up: {0}")]
    Setup(String),
    /// A server definition was rejected; nothing of it was applied.
    #[error("invalid server {server}: {message}")]
    InvalidServer {
        /// The server.
        server: ServerId,
        /// What was wrong.
        message: String,
    },
}

impl PoolError {
    pub(crate) fn invalid_endpoint(server: &ServerId, error: InvalidEndpoint) -> Self {
        Self::InvalidServer {
            server: server.clone(),
            message: error.to_string(),
        }
    }

    /// Whether this is an acquire timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
