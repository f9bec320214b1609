//! The HTTP server closes connections that hold resources without sending, and caps how many
//! are open (`serve::ServerLimits`): slow request heads, silent connections, idle HTTP/2
//! connections and slow bodies against the binary; the peer address and graceful shutdown in
//! process; the limits' variables.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo, routing::get};
use common::Process;
use mcp_pool_gateway::{
    GatewayConfig,
    config::GatewayTable,
    serve::{ServerLimits, serve},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
    time::timeout,
};

/// The JWT secret of the gateways started here (40+ bytes).
const SECRET: &str = "security-connections-test-secret-0123456789abcdef";
/// Bound on any wait for the server to close or answer: the timeouts under test are 2 s.
const WAIT: Duration = Duration::from_secs(15);
/// The partial request head of a slowloris client: the blank line never comes.
const PARTIAL_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n";
/// A complete `GET /health` that keeps the connection open.
const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

async fn start(envs: &[(&str, &str)]) -> (Process, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Process::start(&[], envs, dir.path()).await;
    let addr = gateway
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    (gateway, addr, dir)
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from `socket`, leaving the
/// connection open; `None` when the connection ends first.
async fn read_response(socket: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&received).into_owned());
            }
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /health` on a fresh connection: the response's status line.
async fn health_status(addr: SocketAddr) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(HEALTH).await.unwrap();
    let response = timeout(WAIT, read_response(&mut socket))
        .await
        .expect("/health answers")
        .expect("a response before the connection ends");
    response.lines().next().unwrap().to_owned()
}

/// Reads `socket` until the server closes it (end of stream or error), bounded by [`WAIT`]:
/// how long after `since` that was (`None`: still open), and what was received.
async fn closed_after(mut socket: TcpStream, since: Instant) -> (Option<Duration>, Vec<u8>) {
    let mut received = Vec::new();
    let mut buf = [0; 1024];
    let closed = timeout(WAIT, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (closed.ok().map(|()| since.elapsed()), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_while_other_clients_are_served() {
    const SLOW: usize = 400;
    let (mut gateway, addr, _dir) = start(&[
        ("JWT_SECRET_KEY", SECRET),
        ("HEADER_READ_TIMEOUT_SECS", "2"),
    ])
    .await;

    let opening = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(PARTIAL_HEAD).await.unwrap();
        slow.push((socket, Instant::now()));
    }
    println!(
        "{SLOW} partial request heads sent in {:?}",
        opening.elapsed()
    );
    let closed = Arc::new(AtomicUsize::new(0));
    let waits: Vec<_> = slow
        .into_iter()
        .map(|(socket, sent)| {
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                let outcome = closed_after(socket, sent).await;
                closed.fetch_add(1, Ordering::SeqCst);
                outcome
            })
        })
        .collect();

    for _ in 0..5 {
        assert_eq!(health_status(addr).await, "HTTP/1.1 200 OK");
        assert_eq!(
            closed.load(Ordering::SeqCst),
            0,
            "/health answered while every slow connection was still open"
        );
    }

    let mut times = Vec::with_capacity(SLOW);
    for wait in waits {
        let (after, received) = wait.await.unwrap();
        let received = String::from_utf8_lossy(&received);
        assert!(
            !received.contains("200 OK"),
            "a partial head was answered: {received}"
        );
        times.push(after.expect("the server closes every slow connection"));
    }
    times.sort();
    println!(
        "all {SLOW} slow connections closed {:?} to {:?} after their partial head (timeout 2 s), \
         the last {:?} after the first was opened",
        times[0],
        times[SLOW - 1],
        opening.elapsed()
    );
    assert!(
        times[0] >= Duration::from_secs(1),
        "closed by the timeout, not at once: {:?}",
        times[0]
    );
    assert_eq!(health_status(addr).await, "HTTP/1.1 200 OK");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_idle_http2_connections_are_closed() {
    let (mut gateway, addr, _dir) = start(&[
        ("JWT_SECRET_KEY", SECRET),
        ("HEADER_READ_TIMEOUT_SECS", "2"),
    ])
    .await;

    // Nothing at all, and an HTTP/2 preface short of its last byte: the server cannot tell the
    // protocol yet, so only its own idle timer can close them.
    let opened = Instant::now();
    let mut quiet = Vec::new();
    for _ in 0..20 {
        quiet.push(TcpStream::connect(addr).await.unwrap());
        let mut preface = TcpStream::connect(addr).await.unwrap();
        preface
            .write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..23])
            .await
            .unwrap();
        quiet.push(preface);
    }
    let waits: Vec<_> = quiet
        .into_iter()
        .map(|socket| tokio::spawn(closed_after(socket, opened)))
        .collect();

    // HTTP/2 (prior knowledge) is served; once its request is done the connection is idle.
    let (client, connection) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{addr}/health"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    drop(body);
    let idle = Instant::now();
    timeout(WAIT, connection)
        .await
        .expect("the server closes an idle HTTP/2 connection")
        .unwrap()
        .ok();
    let http2_idle = idle.elapsed();
    // `client` (able to send more requests) was alive all along: the server closed it.
    drop(client);
    assert!(http2_idle >= Duration::from_secs(1), "{http2_idle:?}");

    let mut times = Vec::new();
    for wait in waits {
        let (after, received) = wait.await.unwrap();
        assert!(
            !String::from_utf8_lossy(&received).contains("200"),
            "{received:?}"
        );
        times.push(after.expect("the server closes every silent connection"));
    }
    times.sort();
    println!(
        "40 silent or preface-only connections closed {:?} to {:?} after they were opened; \
         an idle HTTP/2 connection {http2_idle:?} after its response (timeout 2 s)",
        times[0],
        times[times.len() - 1]
    );
    assert!(times[0] >= Duration::from_secs(1), "{:?}", times[0]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (mut gateway, addr, _dir) = start(&[
        ("JWT_SECRET_KEY", SECRET),
        ("MAX_CONNECTIONS", "8"),
        // Held connections stay open for the whole test.
        ("HEADER_READ_TIMEOUT_SECS", "120"),
    ])
    .await;

    let mut held = Vec::new();
    for _ in 0..8 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(HEALTH).await.unwrap();
        let response = timeout(WAIT, read_response(&mut socket)).await.unwrap();
        assert!(response.unwrap().starts_with("HTTP/1.1 200 OK"));
        held.push(socket);
    }

    // The ninth connects (the kernel completes the handshake) but is not served.
    let mut ninth = TcpStream::connect(addr).await.unwrap();
    ninth.write_all(HEALTH).await.unwrap();
    let mut buf = [0; 1];
    assert!(
        timeout(Duration::from_secs(2), ninth.peek(&mut buf))
            .await
            .is_err(),
        "a ninth connection was served while eight were open"
    );

    drop(held.pop());
    let released = Instant::now();
    let response = timeout(WAIT, read_response(&mut ninth))
        .await
        .expect("the ninth is served once a connection closes");
    assert!(response.unwrap().starts_with("HTTP/1.1 200 OK"));
    println!(
        "the ninth connection was served {:?} after one of the eight closed",
        released.elapsed()
    );

    // Every slot comes back: eight fresh connections are served at once.
    drop(held);
    drop(ninth);
    let mut again = Vec::new();
    for _ in 0..8 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(HEALTH).await.unwrap();
        let response = timeout(WAIT, read_response(&mut socket)).await.unwrap();
        assert!(response.unwrap().starts_with("HTTP/1.1 200 OK"));
        again.push(socket);
    }
    drop(again);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let (mut gateway, addr, _dir) = start(&[
        // A route that reads its body without a token: POST /servers.
        ("AUTH_REQUIRED", "false"),
        ("BODY_READ_TIMEOUT_SECS", "2"),
    ])
    .await;
    let head = b"POST /servers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n";

    // The head, then nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(head).await.unwrap();
    let sent = Instant::now();
    let response = timeout(WAIT, read_response(&mut silent))
        .await
        .expect("answered within the timeout and a margin")
        .expect("a response");
    let silent_after = sent.elapsed();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout"),
        "{response}"
    );
    assert!(response.contains("BODY_READ_TIMEOUT_SECS"), "{response}");
    assert!(silent_after >= Duration::from_secs(1), "{silent_after:?}");
    let (closed, _) = closed_after(silent, Instant::now()).await;
    assert!(closed.is_some(), "the connection is closed after the 408");

    // A byte every 100 ms: never idle for long, but 100 bytes would take 10 s.
    let trickle = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = trickle.into_split();
    writer.write_all(head).await.unwrap();
    let sent = Instant::now();
    let written = Arc::new(AtomicUsize::new(0));
    let trickling = tokio::spawn({
        let written = Arc::clone(&written);
        async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                written.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let mut received = Vec::new();
    timeout(WAIT, reader.read_to_end(&mut received))
        .await
        .expect("answered and closed within the timeout and a margin")
        .ok();
    let trickle_after = sent.elapsed();
    let written = written.load(Ordering::SeqCst);
    trickling.abort();
    let response = String::from_utf8_lossy(&received);
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout"),
        "{response}"
    );
    assert!(
        (5..100).contains(&written),
        "the body was arriving: {written} bytes"
    );
    println!(
        "408 {silent_after:?} after a head with no body, {trickle_after:?} after a head whose \
         body trickled in ({written} of 100 bytes; timeout 2 s)"
    );
    gateway.stop().await;
}

/// Serves `app` on a loopback port with the default limits until the sender is used or dropped.
async fn serve_in_process(
    app: Router,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(listener, app, &ServerLimits::default(), async {
            let _ = stopped.await;
        })
        .await
    });
    (addr, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_peer_address() {
    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let (addr, stop, server) = serve_in_process(app).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = timeout(WAIT, read_response(&mut socket))
        .await
        .unwrap()
        .unwrap();
    let me = socket.local_addr().unwrap().to_string();
    assert!(response.ends_with(&format!("\r\n\r\n{me}")), "{response}");
    stop.send(()).unwrap();
    timeout(WAIT, server).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_the_request_in_flight_finish() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = Router::new().route(
        "/slow",
        get({
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            || async move {
                entered.notify_one();
                release.notified().await;
                "done"
            }
        }),
    );
    let (addr, stop, server) = serve_in_process(app).await;
    let client = tokio::spawn(async move {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut socket).await
    });
    entered.notified().await;

    stop.send(()).unwrap();
    // Connections made before the listener closes are reset when it does.
    timeout(WAIT, async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the listener closes: connections are refused");
    assert!(
        !server.is_finished(),
        "serve returned with a request in flight"
    );

    release.notify_one();
    let response = timeout(WAIT, client).await.unwrap().unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    timeout(WAIT, server).await.unwrap().unwrap().unwrap();
}

fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn the_limits_default_to_10_s_30_s_and_512_connections() {
    let config =
        GatewayConfig::from_lookup(None, None, vars(&[("AUTH_REQUIRED", "false")])).unwrap();
    assert_eq!(config.limits, ServerLimits::default());
    assert_eq!(
        config.limits,
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    );
    let config = GatewayConfig::from_lookup(
        None,
        None,
        vars(&[
            ("AUTH_REQUIRED", "false"),
            ("HEADER_READ_TIMEOUT_SECS", " 1 "),
            ("BODY_READ_TIMEOUT_SECS", "3600"),
            ("MAX_CONNECTIONS", "1000000"),
        ]),
    )
    .unwrap();
    assert_eq!(config.limits.header_read_timeout, Duration::from_secs(1));
    assert_eq!(config.limits.body_read_timeout, Duration::from_secs(3600));
    assert_eq!(config.limits.max_connections, 1_000_000);
}

#[test]
fn limits_out_of_range_name_the_variable_the_value_and_the_range() {
    let cases: [(&str, &str, &str); 8] = [
        ("HEADER_READ_TIMEOUT_SECS", "0", "seconds from 1 to 3600"),
        ("HEADER_READ_TIMEOUT_SECS", "3601", "seconds from 1 to 3600"),
        ("HEADER_READ_TIMEOUT_SECS", "2.5", "seconds from 1 to 3600"),
        ("BODY_READ_TIMEOUT_SECS", "-1", "seconds from 1 to 3600"),
        ("BODY_READ_TIMEOUT_SECS", "soon", "seconds from 1 to 3600"),
        ("MAX_CONNECTIONS", "0", "connections from 1 to 1000000"),
        (
            "MAX_CONNECTIONS",
            "1000001",
            "connections from 1 to 1000000",
        ),
        ("MAX_CONNECTIONS", "", "connections from 1 to 1000000"),
    ];
    for (name, value, allowed) in cases {
        let lookup = move |n: &str| match n {
            "AUTH_REQUIRED" => Some("false".to_owned()),
            n if n == name => Some(value.to_owned()),
            _ => None,
        };
        let error = GatewayConfig::from_lookup(None, None, lookup).unwrap_err();
        assert_eq!(
            (error.setting.as_str(), error.value.as_str()),
            (name, value)
        );
        let words = error.to_string();
        assert!(
            words.contains(name) && words.contains(allowed),
            "{name}={value:?}: {words}"
        );
    }
}

#[test]
fn the_gateway_table_gives_the_limits_and_variables_win_over_it() {
    let table = GatewayTable::parse(
        "gw.toml",
        "[gateway]\nheader_read_timeout_secs = 5\nbody_read_timeout_secs = 7\nmax_connections = 64\n",
    )
    .unwrap();
    assert_eq!(table.var("HEADER_READ_TIMEOUT_SECS").as_deref(), Some("5"));
    assert_eq!(table.var("BODY_READ_TIMEOUT_SECS").as_deref(), Some("7"));
    assert_eq!(table.var("MAX_CONNECTIONS").as_deref(), Some("64"));
    let env = vars(&[("AUTH_REQUIRED", "false"), ("MAX_CONNECTIONS", "16")]);
    let config =
        GatewayConfig::from_lookup(None, None, |n| env(n).or_else(|| table.var(n))).unwrap();
    assert_eq!(
        config.limits,
        ServerLimits {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(7),
            max_connections: 16,
        }
    );
    let error = GatewayTable::parse("gw.toml", "[gateway]\nmax_connections = \"many\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_connections (1 to 1000000)"), "{error}");
    for name in [
        "HEADER_READ_TIMEOUT_SECS",
        "BODY_READ_TIMEOUT_SECS",
        "MAX_CONNECTIONS",
    ] {
        assert!(
            mcp_pool_gateway::config::GATEWAY_VARIABLES.contains(&name),
            "{name}"
        );
    }
}
