//! `Pool::check_server`: each endpoint of a server is connected and initialized once, before any
//! user asks, and a failure is shown as the endpoint's last error without touching its breaker.

use std::collections::BTreeMap;

use mcp_pool::{Endpoint, Pool, PoolConfig, ServerConfig, ServerId, TransportKind};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_traits::StdioCommand;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_is_checked_and_a_failure_is_its_last_error() {
    let upstream = ReferenceServer::start().await.unwrap();
    // A port nothing listens on: bound, then released.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let missing = Endpoint::stdio(StdioCommand {
        command: "/nonexistent/mcp-server".into(),
        args: Vec::new(),
        env: BTreeMap::new(),
        cwd: None,
    })
    .unwrap();
    let id = ServerId::new("checked").unwrap();
    let server = ServerConfig::new(id.clone(), upstream.endpoint())
        .endpoint(
            Endpoint::new(format!("http://{dead}/mcp"), TransportKind::StreamableHttp).unwrap(),
        )
        .endpoint(missing)
        .pool(PoolConfig::enabled());
    let pool = Pool::builder().server(server).build().unwrap();

    let checks = pool.check_server(&id).await.unwrap();
    assert_eq!(checks.len(), 3);
    assert!(checks[0].outcome.is_ok(), "{:?}", checks[0]);
    let refused = checks[1].outcome.as_ref().unwrap_err();
    assert!(refused.contains("connection refused"), "{refused}");
    let not_started = checks[2].outcome.as_ref().unwrap_err();
    assert!(
        not_started.contains("/nonexistent/mcp-server"),
        "{not_started}"
    );
    assert_eq!(
        upstream.initializes(),
        1,
        "one initialize for the live endpoint"
    );

    let stats = pool.stats();
    let endpoints = &stats.servers[0].endpoints;
    assert_eq!(endpoints[0].last_error, None);
    assert_eq!(endpoints[1].last_error.as_deref(), Some(refused.as_str()));
    assert_eq!(
        endpoints[2].last_error.as_deref(),
        Some(not_started.as_str())
    );
    for endpoint in endpoints {
        assert_eq!(
            endpoint.circuit, "closed",
            "a check refuses nobody: {endpoint:?}"
        );
    }
    // The check's session was closed: none is left open on the server, none in the pool.
    upstream
        .wait_sessions_alive(0, std::time::Duration::from_secs(10))
        .await
        .expect("the check's session is closed");
    assert_eq!(stats.servers[0].sessions_total, 0);
    assert!(matches!(
        pool.check_server(&ServerId::new("nope").unwrap()).await,
        Err(mcp_pool::PoolError::UnknownServer(_))
    ));
    pool.close().await;
}
