#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
mod codec;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod database;
mod fanout;
mod lifetime;
mod memory;
mod records;
#[cfg(feature = "redis")]
mod redis;
mod rules;
mod select;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use database::{DatabaseBackend, DatabaseConfig};
pub use memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisConfig};
pub use select::{
    BackendConfig, CACHE_TYPE, DATABASE_URL, REDIS_URL, SelectError, backend_from_env,
};
