//! Peer servers no one here wrote (the official MCP SDKs, server-everything) as child
//! processes: started on a free loopback port, they print `LISTENING <port>`
//! (`interop/python/server.py`, `interop/node/*.mjs`, `interop/node/server.cjs`).

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdin, Command},
    time::timeout,
};

/// How long a peer may take to start (interpreter start and imports on a loaded machine).
pub const STARTUP: Duration = Duration::from_secs(60);
/// Bound on a call or a stats request.
pub const BOUND: Duration = Duration::from_secs(15);

/// A peer server running as a child process. Killed when dropped; it also exits by itself
/// when its stdin closes, so it never outlives the test process.
pub struct PeerServer {
    pub name: &'static str,
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
}

impl PeerServer {
    pub async fn start(name: &'static str, mut command: Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: could not start the peer server: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = timeout(STARTUP, async {
            while let Some(line) = lines.next_line().await.expect("the peer's stdout") {
                if let Some(port) = line.trim().strip_prefix("LISTENING ") {
                    return port.parse::<u16>().expect("a port number");
                }
                eprintln!("{name}: {line}");
            }
            panic!("{name}: the peer exited before listening");
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the peer did not listen within {STARTUP:?}"));
        // Keep reading its output, so a chatty peer never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{name}: {line}");
            }
        });
        Self {
            name,
            child,
            _stdin: stdin,
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The peer's counters: `initializes`, `tool_calls`, `http_requests`, `header_names`.
    pub async fn stats(&self) -> Value {
        let request = async { reqwest::get(self.url("/stats")).await?.text().await };
        let body = timeout(BOUND, request)
            .await
            .unwrap_or_else(|_| panic!("{}: /stats did not answer", self.name))
            .unwrap_or_else(|e| panic!("{}: /stats: {e}", self.name));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: /stats {body:?}: {e}", self.name))
    }

    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill the peer");
    }

    /// Kills the peer and starts `command` in its place, on the same port (the command must
    /// ask for it): an upstream restart, its sessions gone.
    pub async fn restart(&mut self, command: Command) {
        self.kill().await;
        let next = PeerServer::start(self.name, command).await;
        assert_eq!(
            next.port, self.port,
            "{}: restarted on another port",
            self.name
        );
        *self = next;
    }
}

/// The Python SDK peer (`interop/python/server.py`, run by the venv's `python`) over
/// `transport` (`streamable-http` or `sse`).
pub fn python_peer(python: &str, transport: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/server.py");
    let mut command = Command::new(python);
    command.arg(script).args(["--transport", transport]);
    command
}

/// `@modelcontextprotocol/server-everything` over `transport` (`streamableHttp` or `sse`),
/// started by `interop/node/everything.mjs` from the package installed under `node_dir`.
pub fn everything_peer(node_dir: &str, transport: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node/everything.mjs");
    let dist =
        Path::new(node_dir).join("node_modules/@modelcontextprotocol/server-everything/dist");
    let mut command = Command::new("node");
    command.arg(script).arg(transport).arg(dist);
    command
}
