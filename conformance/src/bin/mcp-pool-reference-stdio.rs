//! The reference MCP server ([`ReferenceHandler`]: `echo`, `counter`, `sleep`, `fail`, …) over
//! MCP's stdio transport: JSON-RPC lines on stdin and stdout, for tests of stdio transports.
//! One process serves one session, and exits when its stdin ends.
//!
//! ```text
//! cargo run -p mcp-pool-conformance --bin mcp-pool-reference-stdio
//! ```

use mcp_pool_conformance::server::ReferenceHandler;
use rmcp::ServiceExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = ReferenceHandler::new()
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}
