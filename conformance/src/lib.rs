#![doc = include_str!("../README.md")]
#![deny(unsafe_code)] // allowed only in `alloc`, the counting allocator
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod alloc;
pub mod backend;
pub mod faulty_watch;
pub mod logs;
pub mod pool;
pub mod redis_process;
pub mod services;
pub mod strategy;
pub mod tcp_counter;
pub mod transport;

/// The reference MCP test server ([`mcp_pool_reference`]), as the suite's own.
pub use mcp_pool_reference as server;
pub use mcp_pool_reference::{duplex, stdio_server};

pub use duplex::{DuplexTransport, UpstreamSession};
pub use server::{
    GREET_PROMPT, GREETING_RESOURCE, GREETING_TEXT, LOGGER, MAX_PROGRESS_STEPS, Protocols,
    ReferenceHandler, ReferenceServer, SAMPLE_MAX_TOKENS, SERVER_NAME, ServerOptions, ServerStats,
    UPDATED_RESOURCE, WaitTimeout,
};
