//! The StateBackend conformance suite against PostgreSQL (`MCP_POOL_TEST_DATABASE_URL`).
#![cfg(feature = "postgres")]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mcp_pool_backends::{DatabaseBackend, DatabaseConfig};
use mcp_pool_traits::StateId;

mcp_pool_conformance::backend_conformance! {
    name: postgres,
    service: url = mcp_pool_conformance::backend::DATABASE_URL_VAR,
    factory: move |ns: StateId| {
        let config = DatabaseConfig::new(url.clone()).namespace(ns).max_connections(4);
        async move { DatabaseBackend::connect(config).await.map(Arc::new) }
    },
    // The suite's address: a port that refuses connections, then a server that never answers.
    unreachable: |ns: StateId, addr: SocketAddr| async move {
        let config = DatabaseConfig::new(format!("postgres://postgres@{addr}/test"))
            .namespace(ns)
            .operation_timeout(Duration::from_millis(500));
        DatabaseBackend::connect(config).await.map(Arc::new)
    },
    within: Duration::from_secs(2),
}
