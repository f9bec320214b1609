//! SIGTERM with downstream MCP sessions open: the binary ends their streams, closes the pool
//! and exits cleanly, leaving no upstream session alive.

mod common;

use std::time::Duration;

use common::Process;
use mcp_pool_conformance::ReferenceServer;
use rmcp::{
    ServiceExt,
    model::CallToolRequestParams,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_upstream_session_with_clients_still_connected() {
    let upstream = ReferenceServer::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("mcp-pool-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[servers]]\nid = \"ref\"\nendpoints = [{{ url = \"{}\", transport = \"streamable_http\" }}]\npool = {{ enabled = true, strategy = \"sticky\" }}\n",
            upstream.url()
        ),
    )
    .unwrap();
    let mut gw = Process::start(
        &["--config", config.to_str().unwrap()],
        &[("AUTH_REQUIRED", "false")],
        &dir,
    )
    .await;

    // Two conversations (sticky: two upstream sessions), left open on purpose.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}/servers/ref/mcp", gw.base)),
        );
        let client = ().serve(transport).await.unwrap();
        client
            .call_tool(CallToolRequestParams::new("counter"))
            .await
            .unwrap();
        clients.push(client);
    }
    assert_eq!(upstream.sessions_alive(), 2);

    tokio::time::timeout(Duration::from_secs(60), gw.stop())
        .await
        .expect("open downstream streams do not hold the shutdown");
    upstream
        .wait_sessions_alive(0, Duration::from_secs(10))
        .await
        .expect("no upstream session outlives the gateway");
    drop(clients);
}
