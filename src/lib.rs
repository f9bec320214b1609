#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod builder;
mod error;
mod key_pool;
mod lease;
mod maintenance;
pub mod metrics;
mod pool;
mod server;
mod shared;
mod stats;

pub use builder::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_CREATE_TIMEOUT, DEFAULT_KEY_IDLE_TIMEOUT, PoolBuilder,
};
pub use error::PoolError;
pub use lease::Lease;
pub use pool::{AcquireRequest, Pool};
pub use server::ServerConfig;
pub use stats::{KeyStats, PoolStats, ServerStats};

pub use mcp_pool_traits::{
    self as traits, AffinityKey, Digest256, Endpoint, EvictionReason, IdentityConfig,
    IdentityExtractor, PoolConfig, PoolKey, Principal, ServerId, SessionId, StateBackend, Strategy,
    StrategyKind, Transport, TransportKind, rmcp,
};
