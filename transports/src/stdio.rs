//! The stdio transport: MCP's standard transport for local servers (MCP specification,
//! "Transports: stdio"). Each session is a child process started from the endpoint's
//! [`StdioCommand`]; JSON-RPC messages are lines on its stdin and stdout (rmcp's
//! child-process transport), and its stderr is its log.
//!
//! A stdio server keeps its state in its process, and a process serves one client: every
//! pooled session is one process. Use `sticky` (one downstream session, one process) for
//! servers that keep per-conversation state, or `session_concurrency` > 1 to let several
//! leases share one process for stateless ones.

use std::{process::Stdio as StdStdio, sync::Arc};

use mcp_pool_traits::{
    ClientSession, ConnectRequest, Endpoint, FailureKind, InvalidEndpoint, StdioCommand, Transport,
    TransportError, TransportKind, async_trait,
};
use parking_lot::Mutex;
use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::transport::TokioChildProcess;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::headers::initialize;

/// The `tracing` target of the lines a stdio server writes to its stderr.
pub const STDERR_TARGET: &str = "mcp_pool::stdio";

/// The stdio client transport (see the [module docs](self)).
///
/// - **Start:** the program is started with its arguments, the gateway's environment plus
///   the endpoint's `env`, and its `cwd`. It runs in a process group of its own, and
///   `initialize` is sent on its stdin. Spawn and `initialize` together are bounded by the
///   pool's create timeout.
/// - **End:** when its session closes, is dropped, or the pool drops, the whole process group
///   is killed, so no grandchild is left behind.
/// - **Stderr:** each line is an `info` event of target [`STDERR_TARGET`], with the
///   endpoint's URL (`stdio:{program}`).
/// - **Failures, in words:** a program that cannot be started (missing, not executable), or a
///   child that exits before it answers `initialize`, fails the connect. The message names
///   the program and the OS error, or the child's last stderr line.
/// - **Headers:** a request's headers cannot reach a process. They are ignored, but still
///   decide the pool key as for any transport.
#[derive(Clone, Debug, Default)]
pub struct Stdio;

impl Stdio {
    /// The transport.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Transport for Stdio {
    fn kind(&self) -> TransportKind {
        TransportKind::Stdio
    }

    fn validate_endpoint(&self, endpoint: &Endpoint) -> Result<(), InvalidEndpoint> {
        match &endpoint.stdio {
            Some(_) => Ok(()),
            None => Err(InvalidEndpoint::Fields {
                transport: TransportKind::Stdio,
            }),
        }
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        let endpoint = request.endpoint();
        let url = &endpoint.url;
        let Some(command) = endpoint.stdio.clone() else {
            return Err(TransportError::with_cause(
                url,
                FailureKind::Other,
                "a stdio endpoint needs a command",
                InvalidEndpoint::Fields {
                    transport: TransportKind::Stdio,
                },
            ));
        };
        let (child, stderr) = TokioChildProcess::builder(command_of(&command))
            .stderr(StdStdio::piped())
            .spawn()
            .map_err(|error| {
                let cause = format!(
                    "stdio server `{}` could not be started: {error}",
                    command.command
                );
                TransportError::with_cause(url, FailureKind::Unreachable, cause, error)
            })?;
        let last_line = Arc::new(Mutex::new(None::<String>));
        // Logged to the subscriber of whoever opened the session.
        let log = stderr.map(|stderr| {
            let forwarding = forward_stderr(stderr, url.clone(), last_line.clone());
            tokio::spawn(tracing::instrument::WithSubscriber::with_current_subscriber(forwarding))
        });
        let child = ProcessGroupTransport {
            group: child.id(),
            child,
        };
        match tokio::time::timeout(request.timeout(), initialize(&request, child)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(error)) => {
                // The child is gone or broke the protocol: its stderr, read to its end (the
                // process exited, or is being killed with its group), says why.
                if let Some(log) = log {
                    let _ = tokio::time::timeout(request.timeout(), log).await;
                }
                let last = last_line.lock().take();
                let cause = match last {
                    Some(line) => format!(
                        "stdio server `{}` ended before it answered initialize; its last stderr \
                         line: {line}",
                        command.command
                    ),
                    None => format!(
                        "stdio server `{}` ended before it answered initialize ({error}), \
                         writing nothing to stderr",
                        command.command
                    ),
                };
                Err(TransportError::with_cause(
                    url,
                    FailureKind::ConnectionRefused,
                    cause,
                    error,
                ))
            }
            Err(_elapsed) => Err(TransportError::timeout(url, request.timeout())),
        }
    }
}

/// A child process's transport that kills the child's whole process group when it closes or
/// is dropped: a server's own children (a `sh -c` wrapper's, a `npx` launcher's) end with it,
/// even when the server itself exits gracefully on the end of its stdin.
struct ProcessGroupTransport {
    child: TokioChildProcess,
    /// The group's id: the child's pid (it leads its group).
    group: Option<u32>,
}

impl ProcessGroupTransport {
    fn kill_group(&mut self) {
        #[cfg(unix)]
        if let Some(group) = self.group.take()
            && let Ok(group) = i32::try_from(group)
        {
            use nix::{sys::signal, unistd::Pid};
            // ESRCH: the group is gone already.
            let _ = signal::killpg(Pid::from_raw(group), signal::Signal::SIGKILL);
        }
    }
}

impl rmcp::transport::Transport<rmcp::RoleClient> for ProcessGroupTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: rmcp::service::TxJsonRpcMessage<rmcp::RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.child.send(item)
    }

    fn receive(
        &mut self,
    ) -> impl Future<Output = Option<rmcp::service::RxJsonRpcMessage<rmcp::RoleClient>>> + Send
    {
        self.child.receive()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // The MCP stdio shutdown: stdin closed, the server exits (or is made to); then
        // whatever it left running in its group.
        let closed = self.child.close().await;
        self.kill_group();
        closed
    }
}

impl Drop for ProcessGroupTransport {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The child process of `command`, in a process group of its own, killed (with its group)
/// when dropped.
fn command_of(command: &StdioCommand) -> CommandWrap {
    let mut wrap = CommandWrap::with_new(&command.command, |c| {
        c.args(&command.args).envs(&command.env);
        if let Some(cwd) = &command.cwd {
            c.current_dir(cwd);
        }
    });
    wrap.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
    wrap
}

/// Logs each stderr line of a stdio server, remembering the last one.
async fn forward_stderr(
    stderr: tokio::process::ChildStderr,
    url: Arc<str>,
    last: Arc<Mutex<Option<String>>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: STDERR_TARGET, endpoint = %url, "{line}");
        *last.lock() = Some(line);
    }
}
