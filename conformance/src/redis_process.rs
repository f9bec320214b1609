//! A `redis-server` process of the test's own, on a spare loopback port, for fault tests
//! that stop and restart Redis (the machine's shared Redis must never be stopped).

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::timeout,
};

use crate::services;

/// A redis-server on `port`, killed when dropped; returns once it accepts connections.
/// `None` (after saying why) when `redis-server` is not installed, unless
/// `MCP_POOL_REQUIRE_SERVICES=1`, which makes that a failure.
pub async fn start_redis(port: u16) -> Option<Child> {
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            services::skip("redis-server is not installed (Debian package redis-server)");
            return None;
        }
        Err(e) => panic!("cannot start redis-server: {e}"),
    };
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let ready = timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("redis-server output") {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "redis-server on port {port} did not start");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(child)
}

/// A loopback port nothing listens on now.
pub fn spare_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a spare port");
    listener.local_addr().expect("local address").port()
}
