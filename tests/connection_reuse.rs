//! Pooled calls reuse the upstream's TCP connections: new connections per call, counted by a
//! [`ConnectionCounter`] between the pool and each kind of upstream over plain HTTP.
//!
//! Each test points a one-session pool at the counter (which forwards to the upstream), makes
//! [`WARM_UP`] pooled `echo` calls through [`Pool::call`](mcp_pool::Pool::call) (the session,
//! its event stream `GET` and the keep-alive connections are opened then), then [`CALLS`]
//! more, and asserts that those opened at most [`MAX_NEW_PER_CALL`] new TCP connections each. A streamable HTTP
//! server answering a `POST` with an event stream ends it after the response; a client that
//! stops reading it before its end cannot reuse the connection and opens one per call.
//!
//! The interop upstreams (the Python SDK server, server-everything) follow the
//! skip-or-require rule of [`mcp_pool_conformance::services`].

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{peers::*, *};
use mcp_pool::{Endpoint, Lifecycle, PoolConfig, TransportKind};
use mcp_pool_conformance::{
    ReferenceServer, ServerOptions, services, tcp_counter::ConnectionCounter,
};
use tokio::{process::Command, time::timeout};

/// Pooled calls before counting: the session, its event stream and the pool of keep-alive
/// connections settle (against a late-ending upstream, a connection is busy until the end of
/// the previous response: a few are needed in turn).
const WARM_UP: usize = 50;
/// Pooled calls counted.
const CALLS: usize = 100;
/// New TCP connections per counted call at most (5 in [`CALLS`]).
const MAX_NEW_PER_CALL: f64 = 0.05;
/// How long after the response the late-ending upstream ends a request's event stream.
const LATE_END: Duration = Duration::from_millis(10);

/// Makes [`WARM_UP`] then [`CALLS`] sequential pooled `echo` calls on one key, through a
/// [`ConnectionCounter`] to the streamable HTTP endpoint `/mcp` of `upstream` with
/// `lifecycle`, and asserts the new connections per counted call. `echoed` is the upstream's
/// answer to `echo`.
async fn pooled_calls_reuse_connections(
    name: &str,
    upstream: SocketAddr,
    lifecycle: Lifecycle,
    echoed: impl Fn(&str) -> String,
) {
    pooled_calls_reuse_connections_within(name, upstream, lifecycle, echoed, MAX_NEW_PER_CALL)
        .await;
}

/// [`pooled_calls_reuse_connections`], allowing `max_new_per_call`.
async fn pooled_calls_reuse_connections_within(
    name: &str,
    upstream: SocketAddr,
    lifecycle: Lifecycle,
    echoed: impl Fn(&str) -> String,
    max_new_per_call: f64,
) {
    let counter = ConnectionCounter::start(upstream)
        .await
        .expect("the connection counter listens");
    let url = format!("http://{}/mcp", counter.addr());
    let endpoint = Endpoint::new(url, TransportKind::StreamableHttp)
        .and_then(|endpoint| endpoint.with_lifecycle(lifecycle))
        .unwrap();
    let config = PoolConfig {
        max_size: 1,
        size: 1,
        ..PoolConfig::enabled()
    };
    let (pool, id) = one_server_pool("counted", endpoint, config);

    let mut after_warm_up = 0;
    for i in 0..WARM_UP + CALLS {
        if i == WARM_UP {
            after_warm_up = counter.connections();
        }
        let message = format!("reuse-{i}");
        let answer = timeout(BOUND, pooled_echo(&pool, &id, &message))
            .await
            .unwrap_or_else(|_| panic!("{name}: call {i} hung"))
            .unwrap_or_else(|e| panic!("{name}: call {i}: {e}"));
        assert_eq!(answer, echoed(&message), "{name}: call {i}");
    }
    let opened = counter.connections() - after_warm_up;
    let per_call = opened as f64 / CALLS as f64;
    eprintln!(
        "{name}: {opened} new TCP connections for {CALLS} pooled calls ({per_call:.2} per call; \
         {after_warm_up} during the {WARM_UP} warm-up calls)"
    );
    let server = &pool.stats().servers[0];
    assert_eq!(server.misses, 1, "{name}: all calls on one session");
    assert!(
        per_call <= max_new_per_call,
        "{name}: {per_call:.2} new TCP connections per pooled call ({opened} for {CALLS}), \
         more than {max_new_per_call}"
    );
    pool.close().await;
}

fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_connections_are_reused() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (name, addr) = ("reference", upstream.addr());
    pooled_calls_reuse_connections(name, addr, Lifecycle::Initialize, str::to_owned).await;
}

/// The reference server ending each request's event stream [`LATE_END`] after the response,
/// in a write of its own (as the Python SDK server does when its event loop is busy): a client
/// that stops reading at the response closes the connection every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_ending_streams_late_connections_are_reused() {
    let options = ServerOptions::default().with_stream_end_delay(Some(LATE_END));
    let upstream = ReferenceServer::start_with(options).await.unwrap();
    let (name, addr) = ("reference, late stream end", upstream.addr());
    pooled_calls_reuse_connections(name, addr, Lifecycle::Initialize, str::to_owned).await;
}

/// The same under protocol 2026-07-28, where rmcp itself reads a response stream for 50 ms
/// after the response: the end comes later than that. Each connection stays busy for 60 ms
/// after its response, so the number in turn follows the call rate (about 60 ms / one call's
/// time): a faster stretch of calls after the warm-up opens a few more. Up to 0.25 per call is
/// allowed here; without the drain it is one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_ending_streams_late_discover_connections_are_reused() {
    let options = ServerOptions::default().with_stream_end_delay(Some(Duration::from_millis(60)));
    let upstream = ReferenceServer::start_with(options).await.unwrap();
    let (name, addr) = ("reference discover, late stream end", upstream.addr());
    pooled_calls_reuse_connections_within(name, addr, Lifecycle::Discover, str::to_owned, 0.25)
        .await;
}

/// Protocol 2026-07-28 (`server/discover`, no session): rmcp reads a response stream on
/// another path than under `initialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_discover_connections_are_reused() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (name, addr) = ("reference discover", upstream.addr());
    pooled_calls_reuse_connections(name, addr, Lifecycle::Discover, str::to_owned).await;
}

/// [`pooled_calls_reuse_connections`] against the peer `command` starts (`initialize`).
async fn peer_connections_are_reused(
    name: &'static str,
    command: Command,
    echoed: impl Fn(&str) -> String,
) {
    let peer = PeerServer::start(name, command).await;
    pooled_calls_reuse_connections(name, loopback(peer.port), Lifecycle::Initialize, echoed).await;
}

/// The Python SDK server in its default stateful mode: every request `POST` is answered with
/// an event stream, ended after the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_event_stream_connections_are_reused() {
    let Some(python) = services::interop_python() else {
        return;
    };
    let command = python_peer(&python, "streamable-http");
    peer_connections_are_reused("python streamable-http", command, str::to_owned).await;
}

/// The Python SDK server with `json_response`: every request `POST` is answered with one JSON
/// body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_json_response_connections_are_reused() {
    let Some(python) = services::interop_python() else {
        return;
    };
    let mut command = python_peer(&python, "streamable-http");
    command.arg("--json-response");
    peer_connections_are_reused("python streamable-http json", command, str::to_owned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_connections_are_reused() {
    let Some(node_dir) = services::interop_node_dir() else {
        return;
    };
    let command = everything_peer(&node_dir, "streamableHttp");
    peer_connections_are_reused("everything streamable-http", command, |message| {
        format!("Echo: {message}")
    })
    .await;
}
