#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod autoscale;
pub mod breaker;
mod builder;
mod config_watch;
mod error;
pub mod health;
mod key;
mod lease;
mod limits;
mod maintenance;
pub mod metrics;
mod pins;
mod pool;
pub mod score;
mod server;
mod settings;
mod shared;
mod stats;
mod user_slots;

pub use autoscale::{ScaleDecision, ScaleStats};
pub use breaker::{BreakerState, CircuitBreaker};
pub use builder::{
    DEFAULT_CANCEL_GRACE, DEFAULT_CLEANUP_INTERVAL, DEFAULT_CREATE_TIMEOUT, DEFAULT_EVENT_DEBOUNCE,
    DEFAULT_KEY_IDLE_TIMEOUT, DEFAULT_TRACE_HEADERS, MAX_CREATE_TIMEOUT, MIN_CREATE_TIMEOUT,
    PoolBuilder,
};
pub use error::PoolError;
pub use health::{HealthCheckConfig, HealthCheckMethod, HealthOutcome, check_session};
pub use lease::{CallOptions, Lease};
pub use limits::{DEFAULT_MAX_KEYS, DEFAULT_MAX_SESSIONS, DEFAULT_USER_LIMIT};
pub use pool::{Acquire, AcquireRequest, EndpointCheck, Pool};
pub use score::{HealthScore, HealthStatus};
pub use server::{DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT, ServerConfig};
pub use settings::{ENV_VARIABLES, PoolConfigOverride, Settings, SettingsError, SettingsWarning};
pub use stats::{EndpointStats, KeyStats, PoolStats, ServerStats, SessionInfo, SessionState};

pub use mcp_pool_traits::{
    self as traits, AffinityKey, AffinityState, CallHeaders, Conversation, Digest256, Endpoint,
    EvictionReason, IdentityConfig, IdentityExtractor, Lifecycle, PoolConfig, PoolKey, Principal,
    ServerEvent, ServerEventKind, ServerId, ServerRequestHandler, SessionId, StateBackend,
    Strategy, StrategyKind, Transport, TransportKind, rmcp,
};
