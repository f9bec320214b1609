#![doc = include_str!("../README.md")]
#![deny(unsafe_code)] // allowed only in `alloc`, the counting allocator
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod alloc;
pub mod backend;
pub mod duplex;
pub mod faulty_watch;
pub mod logs;
pub mod pool;
pub mod redis_process;
pub mod server;
pub mod services;
pub mod stdio_server;
pub mod strategy;
pub mod transport;

pub use duplex::{DuplexTransport, UpstreamSession};
pub use server::{
    GREET_PROMPT, GREETING_RESOURCE, GREETING_TEXT, LOGGER, MAX_PROGRESS_STEPS, Protocols,
    ReferenceHandler, ReferenceServer, SAMPLE_MAX_TOKENS, SERVER_NAME, ServerOptions, ServerStats,
    UPDATED_RESOURCE, WaitTimeout,
};
