//! The StateBackend conformance suite against SQLite files in a temporary directory.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use mcp_pool_backends::{DatabaseBackend, DatabaseConfig};
use mcp_pool_traits::StateId;

mcp_pool_conformance::backend_conformance! {
    name: sqlite,
    factory: {
        // One file per test, shared by the instances the check makes, as workers on one host
        // share it. The directory lives as long as the factory.
        let dir = Arc::new(tempfile::tempdir().expect("a temporary directory"));
        move |ns: StateId| {
            let url = format!("sqlite:{}", dir.path().join("state.db").display());
            let config = DatabaseConfig::new(url).namespace(ns);
            async move { DatabaseBackend::connect(config).await.map(Arc::new) }
        }
    },
}
