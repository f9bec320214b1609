//! The reference server over stdio, with its counters: what the transport suite runs a stdio
//! transport against ([`StdioReferenceServers`]).
//!
//! A stdio server is a child process per session, so its counters live in the child. The
//! child (`mcp-pool-reference-stdio`, which calls [`serve_stdio`]) connects to the address in
//! [`STATS_ADDR_VAR`] when it is set, sends its counters as a JSON line after every change,
//! and exits at once (as a crash would) when it reads `stop` there. The parent
//! ([`StdioSuiteServer`]) sums the children's counters, counts a child whose connection ended
//! as no longer alive, and wakes waiters on every line: no polling.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mcp_pool_traits::{Endpoint, StdioCommand};
use parking_lot::Mutex;
use rmcp::ServiceExt as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{Counters, ReferenceHandler, ServerStats, WaitTimeout, wait_for_stats};

/// The variable naming the parent's stats listener (`127.0.0.1:PORT`).
pub const STATS_ADDR_VAR: &str = "MCP_POOL_REFERENCE_STATS_ADDR";

/// Serves one session of the reference handler on stdin and stdout until stdin ends, reporting
/// its counters to `stats` when given (see the module docs).
///
/// # Errors
/// When the session cannot start (stdin closed before `initialize`), or the stats listener
/// cannot be reached.
pub async fn serve_stdio(stats: Option<SocketAddr>) -> Result<(), Box<dyn std::error::Error>> {
    let counters = Arc::new(Counters::default());
    if let Some(addr) = stats {
        let stream = TcpStream::connect(addr).await?;
        tokio::spawn(report(stream, counters.clone()));
    }
    // The session is alive as long as the process: the parent counts it gone when the
    // connection ends with the process.
    counters.session_opened();
    let service = ReferenceHandler::with_counters(counters, None)
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}

/// Sends a snapshot after every change of `counters`; exits the process on `stop`.
async fn report(stream: TcpStream, counters: Arc<Counters>) {
    let (read, mut write) = stream.into_split();
    tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "stop" {
                // The server dies as a crash would: no answer, no shutdown.
                std::process::exit(70);
            }
        }
    });
    let mut changed = counters.subscribe();
    loop {
        changed.mark_unchanged();
        let mut line = serde_json::to_vec(&counters.snapshot()).expect("stats serialize");
        line.push(b'\n');
        if write.write_all(&line).await.is_err() || changed.changed().await.is_err() {
            return;
        }
    }
}

/// Starts [`StdioSuiteServer`]s: the reference server over stdio, the program given being
/// `mcp-pool-reference-stdio` (in this crate's tests, `env!("CARGO_BIN_EXE_mcp-pool-reference-stdio")`).
#[derive(Debug, Clone)]
pub struct StdioReferenceServers {
    program: PathBuf,
}

impl StdioReferenceServers {
    /// Servers that run `program`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Starts one: a stats listener on loopback, and the endpoint that runs the program
    /// reporting to it.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(&self) -> StdioSuiteServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(Children::default());
        let (stop, _) = watch::channel(false);
        let task = tokio::spawn(accept(listener, state.clone(), stop.clone()));
        let command = StdioCommand {
            command: self.program.to_string_lossy().into_owned(),
            env: [(STATS_ADDR_VAR.to_owned(), addr.to_string())].into(),
            ..StdioCommand::default()
        };
        StdioSuiteServer {
            endpoint: Endpoint::stdio(command).expect("a valid stdio command"),
            state,
            stop,
            task,
        }
    }
}

/// The counters of every child of one [`StdioSuiteServer`].
#[derive(Default)]
struct Children {
    /// Per connection: the last snapshot, and whether the child is still connected.
    stats: Mutex<HashMap<u64, (ServerStats, bool)>>,
    next: AtomicU64,
    changed: watch::Sender<()>,
}

impl Children {
    fn snapshot(&self) -> ServerStats {
        let stats = self.stats.lock();
        let mut sum = ServerStats::default();
        for (s, connected) in stats.values() {
            sum.sessions_opened += s.sessions_opened;
            sum.sessions_alive += if *connected { s.sessions_alive } else { 0 };
            sum.initializes += s.initializes;
            sum.discovers += s.discovers;
            sum.pings += s.pings;
            sum.tool_calls += s.tool_calls;
            sum.calls_cancelled += s.calls_cancelled;
        }
        sum
    }
}

async fn accept(listener: TcpListener, state: Arc<Children>, stop: watch::Sender<bool>) {
    while let Ok((stream, _)) = listener.accept().await {
        let id = state.next.fetch_add(1, Ordering::Relaxed);
        let (state, mut stopping) = (state.clone(), stop.subscribe());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(line)) => {
                            if let Ok(stats) = serde_json::from_str::<ServerStats>(&line) {
                                state.stats.lock().insert(id, (stats, true));
                                state.changed.send_replace(());
                            }
                        }
                        _ => break,
                    },
                    () = stopped(&mut stopping) => {
                        let _ = write.write_all(b"stop\n").await;
                        // Wait for the child to go: its end of the connection closes.
                        while let Ok(Some(_)) = lines.next_line().await {}
                        break;
                    }
                }
            }
            if let Some(entry) = state.stats.lock().get_mut(&id) {
                entry.1 = false;
            }
            state.changed.send_replace(());
        });
    }
}

/// Returns once `stop` is set (never when its sender is gone without it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The reference server over stdio for one check: its [`endpoint`](Self::endpoint) runs a
/// child per session; [`stats`](Self::stats) sums the children's counters.
#[derive(Debug)]
pub struct StdioSuiteServer {
    endpoint: Endpoint,
    state: Arc<Children>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children").finish_non_exhaustive()
    }
}

impl StdioSuiteServer {
    /// The stdio endpoint to connect.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// The children's counters, summed; a child whose connection ended counts as not alive.
    pub fn stats(&self) -> ServerStats {
        self.state.snapshot()
    }

    /// Waits until `condition` holds, re-checking on every report.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last counters.
    pub async fn wait_until(
        &self,
        condition: impl FnMut(&ServerStats) -> bool,
        timeout: Duration,
    ) -> Result<ServerStats, WaitTimeout> {
        wait_for_stats(&self.state.changed, || self.stats(), condition, timeout).await
    }

    /// Makes every child exit at once, as a crash would, and waits until they are gone.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        if let Err(e) = self
            .wait_until(|s| s.sessions_alive == 0, Duration::from_secs(10))
            .await
        {
            panic!("stdio children still alive after `stop`: {e}");
        }
    }
}

impl Drop for StdioSuiteServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
