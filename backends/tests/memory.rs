//! The StateBackend conformance suite against the memory backend.

use std::sync::Arc;

use mcp_pool_backends::MemoryBackend;
use mcp_pool_traits::{BackendError, StateId};

mcp_pool_conformance::backend_conformance! {
    name: memory,
    factory: {
        // One store per test; the factory hands out namespaced handles on it, as two workers
        // of one process would share it.
        let store = MemoryBackend::new();
        move |ns: StateId| {
            let backend = store.with_namespace(ns);
            async move { Ok::<_, BackendError>(Arc::new(backend)) }
        }
    },
}
