#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod streamable_http;

pub use streamable_http::{
    IDLE_CONNECTION_TIMEOUT, MAX_STREAM_RESUMES, StreamableHttp, default_retry_policy,
};
