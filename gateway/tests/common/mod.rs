//! The gateway binary as a child process: start it, read its log, stop it.

#![allow(dead_code)] // each test file uses its own part

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, Command},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-pool-gateway");
/// Bound on waiting for a log line (start-up on a loaded 2-core machine included).
pub const LOG_WAIT: Duration = Duration::from_secs(60);

/// A running gateway: its base URL and its log (stderr) so far.
pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub log: String,
    lines: Lines<BufReader<ChildStderr>>,
}

impl Gateway {
    /// Starts the binary on a free port with `args` and `envs`, in `dir` (no stray `.env`),
    /// and returns once it listens.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--port", "0"])
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut gateway = Self {
            child,
            base: String::new(),
            log: String::new(),
            lines,
        };
        let line = gateway.wait_for("gateway listening on ").await;
        gateway.base = line
            .split("gateway listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_owned();
        gateway
    }

    /// The next log line containing `needle` (bounded by [`LOG_WAIT`]); panics with the log
    /// when the process exits or the wait runs out.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(LOG_WAIT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.log.push_str(&line);
                self.log.push('\n');
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("exited before logging {needle:?}:\n{}", self.log),
            Err(_) => panic!("no {needle:?} within {LOG_WAIT:?}:\n{}", self.log),
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM, then the exit status; asserts a clean exit.
    pub async fn stop(mut self) {
        self.signal("TERM");
        while let Some(line) = self.lines.next_line().await.unwrap() {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}\n{}", self.log);
    }
}
