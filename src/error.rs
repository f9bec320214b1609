//! [`PoolError`]: why an acquire or a pool operation failed.

use std::time::Duration;

use mcp_pool_traits::{
    ConfigError, InvalidEndpoint, ServerId, TransportError, TransportKind, rmcp::ServiceError,
};

/// Why an acquire or a pool operation failed.
///
/// Messages are complete and meant for people: each names the server and,
/// where one endpoint is concerned, its URL (user-info redacted) and the cause in words. A
/// message either includes its cause or exposes it as [`source`](std::error::Error::source),
/// never both, so printing the chain (the error, then each `source()`) repeats nothing.
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
    /// A new session could not be opened: `server <id>: cannot open an MCP session at <url>:
    /// <cause>` (the [`TransportError`]'s message, which this one includes: it is not the
    /// `source()`).
    #[error("server {server}: {error}")]
    Create {
        /// The server.
        server: ServerId,
        /// The transport's error: [`kind`](TransportError::kind) for its category,
        /// [`url`](TransportError::url) and [`cause`](TransportError::cause) for its parts.
        error: TransportError,
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
    /// are affected; local pooling keeps working. Its message is the backend's (which names
    /// the backend).
    #[error(transparent)]
    Backend(#[from] mcp_pool_traits::BackendError),
    /// Every endpoint of the server over this transport has an open circuit breaker (or a
    /// half-open one whose probe is in flight): the acquire fails at once instead of waiting
    /// for creations bound to fail. Counted as a failed operation in the server's health
    /// score.
    #[error(
        "server {server} ({transport}): every endpoint's circuit breaker is open after repeated \
         connection failures{}; retry in {}",
        if *probing { " and a probe is checking whether it is back" } else { "" },
        Secs(*retry_in)
    )]
    CircuitOpen {
        /// The server.
        server: ServerId,
        /// The transport of the key.
        transport: TransportKind,
        /// When to try again: until the earliest endpoint lets an acquire probe (at most the
        /// probe interval, 500 ms, after it opened or its last probe failed), or, while a
        /// probe is in flight, the probe interval (see [`breaker`](crate::breaker)).
        retry_in: Duration,
        /// `true` when a half-open probe is in flight on the endpoint that decides
        /// `retry_in`: its success closes the breaker at once.
        probing: bool,
    },
    /// The pool was closed with [`Pool::close`](crate::Pool::close).
    #[error("the pool is closed")]
    Closed,
    /// A configuration was rejected; nothing of it was applied. The message includes the
    /// [`ConfigError`]'s (it is not the `source()`).
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// The pool could not be set up (its HTTP client failed to initialize).
    #[error("the pool could not be set up: {0}")]
    Setup(String),
    /// A call on a session failed ([`Pool::call`](crate::Pool::call)): the server answered
    /// with a JSON-RPC error, the call timed out, or the transport failed. Its message is
    /// `server <id>: the call at <url> failed: <cause>`, the cause in words
    /// ([`failure_cause`](mcp_pool_transports::failure_cause)); rmcp's error is kept in
    /// `error` for programs (not as the `source()`: its message names Rust types).
    #[error("server {server}: the call at {url} failed: {cause}")]
    Call {
        /// The server.
        server: ServerId,
        /// The endpoint URL, user-info redacted.
        url: String,
        /// What went wrong, in words.
        cause: String,
        /// rmcp's error (boxed: it is large, and `PoolError` travels on the acquire path).
        error: Box<ServiceError>,
    },
    /// The conversation's upstream session was lost (evicted, expired, dead or drained) and,
    /// as the call asked ([`CallOptions::refuse_rebind`](crate::CallOptions::refuse_rebind)),
    /// the call was not sent on the session that replaced it: the server-side state of the
    /// conversation is gone, and its client must start a new one (an MCP gateway answers its
    /// downstream session with HTTP 404 from then on).
    #[error(
        "server {server}: the conversation's upstream session was lost, and its server-side \
         state with it: start a new session"
    )]
    ConversationLost {
        /// The server.
        server: ServerId,
    },
    /// A server definition was rejected; nothing of it was applied.
    #[error("invalid server {server}: {message}")]
    InvalidServer {
        /// The server.
        server: ServerId,
        /// What was wrong.
        message: String,
    },
}

/// A duration for people: seconds, rounded up to a tenth (`1 s`, `2.5 s`, `0.1 s`), `0 s`
/// only when it is zero.
struct Secs(Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenths = self.0.as_nanos().div_ceil(100_000_000);
        match (tenths / 10, tenths % 10) {
            (whole, 0) => write!(f, "{whole} s"),
            (whole, tenth) => write!(f, "{whole}.{tenth} s"),
        }
    }
}

impl From<ConfigError> for PoolError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl PoolError {
    /// A failed call on `lease`'s session.
    pub(crate) fn call(lease: &crate::Lease, error: ServiceError) -> Self {
        let url = lease.endpoint_url();
        let cause = mcp_pool_transports::failure_cause(&error).replace(&url, "the endpoint");
        Self::Call {
            server: lease.key().server.clone(),
            url,
            cause,
            error: Box::new(error),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_rounded_up_to_a_tenth() {
        let show = |d: Duration| Secs(d).to_string();
        assert_eq!(show(Duration::ZERO), "0 s");
        assert_eq!(show(Duration::from_nanos(1)), "0.1 s");
        assert_eq!(show(Duration::from_millis(999)), "1 s");
        assert_eq!(show(Duration::from_millis(1001)), "1.1 s");
        assert_eq!(show(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(show(Duration::from_secs(60)), "60 s");
    }
}
