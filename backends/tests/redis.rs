//! The StateBackend conformance suite against Redis (`MCP_POOL_TEST_REDIS_URL`).
#![cfg(feature = "redis")]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mcp_pool_backends::{RedisBackend, RedisConfig};
use mcp_pool_traits::StateId;

mcp_pool_conformance::backend_conformance! {
    name: redis,
    service: url = mcp_pool_conformance::backend::REDIS_URL_VAR,
    factory: move |ns: StateId| {
        let config = RedisConfig::new(url.clone()).namespace(ns);
        async move { RedisBackend::connect(config).await.map(Arc::new) }
    },
    // The suite's address: a port that refuses connections, then a server that never answers.
    unreachable: |ns: StateId, addr: SocketAddr| async move {
        let config = RedisConfig::new(format!("redis://{addr}"))
            .namespace(ns)
            .operation_timeout(Duration::from_millis(500));
        RedisBackend::connect(config).await.map(Arc::new)
    },
    within: Duration::from_secs(2),
}
