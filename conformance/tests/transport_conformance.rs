//! The transport conformance suite against the reference server, over each built-in
//! transport: streamable HTTP, legacy SSE and WebSocket (every check), and stdio and a custom
//! kind (the generic checks, each against a server on its own medium).

use mcp_pool_transports::{Sse, StreamableHttp, WebSocket};

mcp_pool_conformance::transport_conformance! {
    name: streamable_http,
    transport: StreamableHttp::new().expect("an HTTP client"),
}

mcp_pool_conformance::transport_conformance! {
    name: sse,
    transport: Sse::new().expect("an HTTP client"),
}

mcp_pool_conformance::transport_conformance! {
    name: websocket,
    transport: WebSocket::new(),
}

// The built-in stdio transport: the generic checks against the reference server as a child
// process (this crate's `mcp-pool-reference-stdio`), its counters reported back over loopback.
mcp_pool_conformance::transport_conformance! {
    name: stdio,
    transport: mcp_pool_transports::Stdio::new(),
    server: |_: &mcp_pool_transports::Stdio| {
        mcp_pool_conformance::stdio_server::StdioReferenceServers::new(env!(
            "CARGO_BIN_EXE_mcp-pool-reference-stdio"
        ))
    },
}

// A custom transport kind (`duplex`, in process), its own server.
mcp_pool_conformance::transport_conformance! {
    name: duplex_custom_kind,
    transport: mcp_pool_conformance::DuplexTransport::new(
        mcp_pool_traits::TransportKind::custom("duplex").expect("a valid custom name"),
    ),
    server: |transport: &mcp_pool_conformance::DuplexTransport| transport.clone(),
}
