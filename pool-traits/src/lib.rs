#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod backend;
mod config;
mod endpoint;
mod exchange;
mod failure;
mod id;
mod identity;
mod names;
mod redact;
mod registry;
mod strategy;
mod transport;

pub use backend::{BackendError, Claim, ConfigChange, SavedConfig, StateBackend};
pub use config::{
    ChosenSizes, ConfigError, CustomStrategy, PoolConfig, RANGES, StrategyKind, check_range,
};
pub use endpoint::{
    CustomTransport, Endpoint, InvalidEndpoint, InvalidTransportName, Lifecycle, MAX_WEIGHT,
    StdioCommand, TransportKind, UnknownTransport,
};
pub use exchange::{
    CallHeaders, CallRoute, Conversation, SESSION_EVENTS_CAPACITY, ServerEvent, ServerEventKind,
    ServerEvents, ServerRequestHandler, SessionHandler, SessionLost,
};
pub use failure::FailureKind;
pub use id::{ID_RULE, InvalidId, ServerId, StateId};
pub use identity::{
    DEFAULT_IDENTITY_HEADERS, Digest256, INTERNAL_HEADERS, IdentityConfig, IdentityExtractor,
    NEVER_FORWARDED, PoolKey, Principal, forwardable_headers,
};
pub use redact::{REDACTED, RedactedHeaders, redact_url};
pub use registry::{Access, CredentialsRef, SavedServer, ServerChange, ServerRecord};
pub use strategy::{
    AffinityKey, AffinityState, Binding, EndpointView, EvictionReason, LeaseOutcome, LeaseReport,
    SelectContext, Selection, Selector, SessionId, SessionView, Strategy, least_loaded_endpoint,
};
pub use transport::{
    ClientSession, ConnectRequest, Transport, TransportError, default_client_config,
    is_transport_failure,
};

/// Re-exported so implementers use the same version.
pub use async_trait::async_trait;
/// Re-exported so implementers use the same version.
pub use rmcp;
