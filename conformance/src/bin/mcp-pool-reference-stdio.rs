//! The reference MCP server (`ReferenceHandler`: `echo`, `counter`, `sleep`, `fail`, …) over
//! MCP's stdio transport: JSON-RPC lines on stdin and stdout, for tests of stdio transports.
//! One process serves one session, and exits when its stdin ends. With
//! `MCP_POOL_REFERENCE_STATS_ADDR` set it reports its counters there (see
//! `mcp_pool_conformance::stdio_server`).
//!
//! ```text
//! cargo run -p mcp-pool-conformance --bin mcp-pool-reference-stdio
//! ```

use mcp_pool_conformance::stdio_server::{STATS_ADDR_VAR, serve_stdio};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Set by the transport suite's `StdioReferenceServers`: where to report the counters.
    let stats = match std::env::var(STATS_ADDR_VAR) {
        Ok(addr) => Some(addr.parse()?),
        Err(_) => None,
    };
    serve_stdio(stats).await
}
