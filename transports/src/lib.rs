#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod streamable_http;

pub use streamable_http::{
    IDLE_CONNECTION_TIMEOUT, MAX_STREAM_RESUMES, StreamableHttp, default_retry_policy,
};

use std::sync::Arc;

use mcp_pool_traits::Transport;

/// The built-in client transports, one per [`TransportKind`](mcp_pool_traits::TransportKind),
/// as a pool registers them by default.
///
/// # Errors
/// When an HTTP client cannot be built (its TLS backend failed to initialize).
pub fn defaults() -> Result<Vec<Arc<dyn Transport>>, reqwest::Error> {
    Ok(vec![Arc::new(StreamableHttp::new()?)])
}
