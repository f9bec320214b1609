//! Properties of the pool engine under random interleavings (DESIGN §10): the isolation
//! guarantee security reviewers rely on, and exact capacity.
//!
//! [`check_pool_properties`] runs one sequence of [`PoolOp`]s against a real pool whose
//! sessions are real rmcp sessions with the reference handler (in process, on tokio's paused
//! clock), checking after every step that
//! - no lease is ever handed to another key than the one asked for, and no session ever
//!   appears under two keys;
//! - no key ever has more than `max_size` sessions, nor more than
//!   `max_size × session_concurrency` leases out;
//!
//! and at the end that every queued acquire was served or timed out, and that in-flight counts,
//! waiters and creations all return to zero.
//!
//! [`pool_ops`] generates sequences for proptest; `tests/pool_properties.rs` of this crate runs
//! 256 cases by default (`PROPTEST_CASES` raises it).

use std::{collections::HashMap, fmt, sync::Arc};

use mcp_pool::{
    Endpoint, Lease, Pool, PoolConfig, PoolError, PoolKey, Principal, ServerConfig, ServerId,
    SessionId, TransportKind,
};
use proptest::prelude::*;
use tokio::task::JoinHandle;

use crate::DuplexTransport;

/// One step of a random pool workload. Indices wrap around the current lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    /// Starts an acquire for principal `n` in its own task.
    Acquire(u8),
    /// Drops lease `n`.
    Release(u8),
    /// Marks lease `n` broken, then drops it (its session is evicted).
    Break(u8),
    /// Aborts pending acquire `n` (cancellation at whatever point it reached).
    Cancel(u8),
    /// `drain()`.
    Drain,
    /// Lets spawned tasks run.
    Yield,
}

/// Sequences of 1 to `max_len` ops over `principals` principals, acquires and releases
/// weighted so that keys fill up and queue.
pub fn pool_ops(principals: u8, max_len: usize) -> impl Strategy<Value = Vec<PoolOp>> {
    let op = prop_oneof![
        5 => (0..principals).prop_map(PoolOp::Acquire),
        3 => any::<u8>().prop_map(PoolOp::Release),
        1 => any::<u8>().prop_map(PoolOp::Break),
        1 => any::<u8>().prop_map(PoolOp::Cancel),
        1 => Just(PoolOp::Drain),
        3 => Just(PoolOp::Yield),
    ];
    prop::collection::vec(op, 1..=max_len)
}

/// A property that did not hold, with the step it broke at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the op after which the check failed (`ops.len()` for the final checks).
    pub step: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after step {}: {}", self.step, self.message)
    }
}

impl std::error::Error for Violation {}

struct Run {
    pool: Pool,
    server: ServerId,
    principals: Vec<Principal>,
    config: PoolConfig,
    pending: Vec<(usize, JoinHandle<Result<Lease, PoolError>>)>,
    leases: Vec<(usize, Lease)>,
    owner: HashMap<SessionId, PoolKey>,
}

impl Run {
    fn check_lease(&mut self, principal: usize, lease: &Lease) -> Result<(), String> {
        let expected = self.principals[principal];
        if lease.key().principal() != expected || lease.key().server != self.server {
            return Err(format!(
                "lease for principal {principal} came from key {}",
                lease.key().short()
            ));
        }
        let owner = self
            .owner
            .entry(lease.session_id())
            .or_insert_with(|| lease.key().clone());
        if owner != lease.key() {
            return Err(format!(
                "session {} appeared under {} and {}",
                lease.session_id(),
                owner.short(),
                lease.key().short()
            ));
        }
        Ok(())
    }

    /// Moves finished acquires into `leases`, checking each.
    async fn harvest(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.pending.len() {
            if !self.pending[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (principal, task) = self.pending.swap_remove(i);
            match task.await {
                Ok(Ok(lease)) => {
                    self.check_lease(principal, &lease)?;
                    self.leases.push((principal, lease));
                }
                Ok(Err(PoolError::Timeout { .. })) => {}
                Ok(Err(other)) => return Err(format!("acquire failed: {other}")),
                Err(join) if join.is_cancelled() => {}
                Err(join) => return Err(format!("acquire task panicked: {join}")),
            }
        }
        Ok(())
    }

    fn check_capacity(&self) -> Result<(), String> {
        let max = self.config.max_size;
        for key in &self.pool.stats().servers[0].keys {
            if key.sessions_total + key.sessions_creating > max {
                return Err(format!(
                    "key {} has {} sessions and {} being created, max_size {max}",
                    key.key, key.sessions_total, key.sessions_creating
                ));
            }
        }
        for (p, principal) in self.principals.iter().enumerate() {
            let out = self.leases.iter().filter(|(q, _)| *q == p).count() as u32;
            let limit = max * self.config.session_concurrency;
            if out > limit {
                return Err(format!(
                    "{out} leases out for one key ({}), limit {limit}",
                    principal.user.short()
                ));
            }
        }
        Ok(())
    }

    async fn apply(&mut self, op: PoolOp) {
        match op {
            PoolOp::Acquire(p) => {
                let p = usize::from(p) % self.principals.len();
                let (pool, server, principal) =
                    (self.pool.clone(), self.server.clone(), self.principals[p]);
                let task = tokio::spawn(async move { pool.acquire(&server, principal).await });
                self.pending.push((p, task));
            }
            PoolOp::Release(n) if !self.leases.is_empty() => {
                let n = usize::from(n) % self.leases.len();
                drop(self.leases.swap_remove(n));
            }
            PoolOp::Break(n) if !self.leases.is_empty() => {
                let n = usize::from(n) % self.leases.len();
                let (_, lease) = self.leases.swap_remove(n);
                lease.mark_broken();
            }
            PoolOp::Cancel(n) if !self.pending.is_empty() => {
                let n = usize::from(n) % self.pending.len();
                self.pending[n].1.abort();
            }
            PoolOp::Drain => self.pool.drain(),
            PoolOp::Yield => {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
            PoolOp::Release(_) | PoolOp::Break(_) | PoolOp::Cancel(_) => {}
        }
    }
}

/// Runs `ops` against a fresh pool with `config` and `principals` principals (at least 1),
/// on the current runtime, which must have a paused clock (`start_paused = true`): waits for
/// acquire timeouts are then instant.
///
/// # Errors
/// The first [`Violation`].
pub async fn check_pool_properties(
    ops: &[PoolOp],
    config: PoolConfig,
    principals: usize,
) -> Result<(), Violation> {
    let transport = Arc::new(DuplexTransport::new(TransportKind::StreamableHttp));
    let server = ServerId::new("properties").expect("a valid id");
    let endpoint = Endpoint::new(
        "http://properties.invalid/mcp",
        TransportKind::StreamableHttp,
    )
    .expect("a valid url");
    let pool = Pool::builder()
        .transport(transport.clone())
        .server(ServerConfig::new(server.clone(), endpoint).pool(config.clone()))
        .build()
        .map_err(|e| Violation {
            step: 0,
            message: format!("pool did not build: {e}"),
        })?;
    let mut run = Run {
        pool,
        server,
        principals: (0..principals.max(1))
            .map(|i| Principal::user(&format!("principal-{i}")))
            .collect(),
        config,
        pending: Vec::new(),
        leases: Vec::new(),
        owner: HashMap::new(),
    };
    for (step, &op) in ops.iter().enumerate() {
        let fail = |message| Violation { step, message };
        run.apply(op).await;
        run.harvest().await.map_err(fail)?;
        run.check_capacity().map_err(fail)?;
    }

    // Every queued acquire is served or times out once the leases come back.
    let end = ops.len();
    let fail = |message| Violation { step: end, message };
    while !run.pending.is_empty() {
        run.leases.clear();
        let (principal, task) = run.pending.remove(0);
        match task.await {
            Ok(Ok(lease)) => {
                run.check_lease(principal, &lease).map_err(fail)?;
                drop(lease);
            }
            Ok(Err(PoolError::Timeout { .. })) => {}
            Ok(Err(other)) => return Err(fail(format!("acquire failed: {other}"))),
            Err(join) if join.is_cancelled() => {}
            Err(join) => return Err(fail(format!("acquire task panicked: {join}"))),
        }
    }
    run.leases.clear();
    for key in &run.pool.stats().servers[0].keys {
        if key.sessions_active != 0 || key.waiters != 0 || key.sessions_creating != 0 {
            return Err(fail(format!(
                "key {} did not settle: {} active, {} waiters, {} creating",
                key.key, key.sessions_active, key.waiters, key.sessions_creating
            )));
        }
    }
    run.pool.close().await;
    Ok(())
}
