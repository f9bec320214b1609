//! The StateBackend conformance suite against Redis (`MCP_POOL_TEST_REDIS_URL`).
#![cfg(feature = "redis")]

use std::{sync::Arc, time::Duration};

use mcp_pool_backends::{RedisBackend, RedisConfig};
use mcp_pool_traits::StateId;

mcp_pool_conformance::backend_conformance! {
    name: redis,
    service: url = mcp_pool_conformance::backend::REDIS_URL_VAR,
    factory: move |ns: StateId| {
        let config = RedisConfig::new(url.clone()).namespace(ns);
        async move { RedisBackend::connect(config).await.map(Arc::new) }
    },
    // Port 1 on loopback: nothing listens there, connections are refused.
    unreachable: |ns: StateId| async move {
        let config = RedisConfig::new("redis://127.0.0.1:1")
            .namespace(ns)
            .operation_timeout(Duration::from_millis(500));
        RedisBackend::connect(config).await.map(Arc::new)
    },
    within: Duration::from_secs(2),
}
