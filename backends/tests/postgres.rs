//! The StateBackend conformance suite against PostgreSQL (`MCP_POOL_TEST_DATABASE_URL`).
#![cfg(feature = "postgres")]

use std::{sync::Arc, time::Duration};

use mcp_pool_backends::{DatabaseBackend, DatabaseConfig};
use mcp_pool_traits::StateId;

mcp_pool_conformance::backend_conformance! {
    name: postgres,
    service: url = mcp_pool_conformance::backend::DATABASE_URL_VAR,
    factory: move |ns: StateId| {
        let config = DatabaseConfig::new(url.clone()).namespace(ns).max_connections(4);
        async move { DatabaseBackend::connect(config).await.map(Arc::new) }
    },
    // Port 1 on loopback: nothing listens there, connections are refused.
    unreachable: |ns: StateId| async move {
        let config = DatabaseConfig::new("postgres://postgres@127.0.0.1:1/test")
            .namespace(ns)
            .operation_timeout(Duration::from_millis(500));
        DatabaseBackend::connect(config).await.map(Arc::new)
    },
    within: Duration::from_secs(2),
}
