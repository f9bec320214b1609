//! The transport conformance suite against the reference server, over each built-in
//! transport: streamable HTTP, legacy SSE and WebSocket.

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
