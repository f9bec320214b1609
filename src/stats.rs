//! [`PoolStats`]: a serializable snapshot of the pool (DESIGN §11).

use mcp_pool_traits::{PoolKey, ServerId, TransportKind};
use serde::Serialize;

use crate::{key_pool::KeyCounters, server::ServerCounters};

/// The whole pool at one moment. Serializes to JSON for dashboards and the REST API.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// Number of pool keys alive.
    pub keys: usize,
    /// Sessions open, idle or in use, across all keys.
    pub sessions_total: u32,
    /// One entry per configured server, ordered by id.
    pub servers: Vec<ServerStats>,
}

/// One server: totals since the pool started, and the keys alive now.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ServerStats {
    /// The server id.
    pub server: ServerId,
    /// Its strategy's name.
    pub strategy: String,
    /// Whether pooling is on for it.
    pub pooling: bool,
    /// Sessions open now (idle + in use + retiring), across its keys.
    pub sessions_total: u32,
    /// Sessions with at least one lease out.
    pub sessions_active: u32,
    /// Sessions that can take another lease now.
    pub sessions_available: u32,
    /// Acquires served by an existing session.
    pub hits: u64,
    /// Acquires that created a session.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there was no acquire.
    pub hit_rate: f64,
    /// Leases handed out (`hits + misses`).
    pub acquisitions: u64,
    /// Leases returned.
    pub releases: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Sessions evicted, all reasons.
    pub evictions: u64,
    /// Session creations that failed.
    pub create_failures: u64,
    /// Sticky sessions replaced after they died.
    pub rebinds: u64,
    /// The keys alive now.
    pub keys: Vec<KeyStats>,
}

impl ServerStats {
    pub(crate) fn new(
        server: ServerId,
        strategy: String,
        pooling: bool,
        c: &ServerCounters,
        keys: Vec<KeyStats>,
    ) -> Self {
        let mut total = *c.retired.lock();
        for key in &keys {
            total.absorb(&key.counters);
        }
        let (hits, misses) = (total.hits, total.misses);
        Self {
            server,
            strategy,
            pooling,
            sessions_total: keys.iter().map(|k| k.sessions_total).sum(),
            sessions_active: keys.iter().map(|k| k.sessions_active).sum(),
            sessions_available: keys.iter().map(|k| k.sessions_available).sum(),
            hits,
            misses,
            hit_rate: rate(hits, misses),
            acquisitions: hits + misses,
            releases: total.releases,
            timeouts: total.timeouts,
            evictions: total.evictions,
            create_failures: total.create_failures,
            rebinds: total.rebinds,
            keys,
        }
    }
}

fn rate(hits: u64, misses: u64) -> f64 {
    let total = hits + misses;
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// One pool key. Identities appear only as 8-character hash prefixes.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct KeyStats {
    /// `server/transport/user8/identity8`.
    pub key: String,
    /// The transport.
    pub transport: TransportKind,
    /// 8-character prefix of the user hash (or `anonymous`).
    pub user: String,
    /// 8-character prefix of the identity hash (or `anonymous`).
    pub identity: String,
    /// Sessions open (idle + in use + retiring).
    pub sessions_total: u32,
    /// Sessions with at least one lease out.
    pub sessions_active: u32,
    /// Sessions that can take another lease now.
    pub sessions_available: u32,
    /// Sessions being created.
    pub sessions_creating: u32,
    /// Acquires waiting.
    pub waiters: u32,
    /// Acquires served by an existing session.
    pub hits: u64,
    /// Acquires that created a session.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Leases returned.
    pub releases: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Sessions evicted.
    pub evictions: u64,
    /// Sticky sessions replaced after they died.
    pub rebinds: u64,
    /// Session creations that failed.
    pub create_failures: u64,
    #[serde(skip)]
    counters: KeyCounters,
}

impl KeyStats {
    pub(crate) fn new(
        key: &PoolKey,
        sessions_total: u32,
        sessions_active: u32,
        sessions_available: u32,
        sessions_creating: u32,
        waiters: u32,
        c: KeyCounters,
    ) -> Self {
        Self {
            key: key.short(),
            transport: key.transport,
            user: key.user.short(),
            identity: key.identity.short(),
            sessions_total,
            sessions_active,
            sessions_available,
            sessions_creating,
            waiters,
            hits: c.hits,
            misses: c.misses,
            hit_rate: rate(c.hits, c.misses),
            releases: c.releases,
            timeouts: c.timeouts,
            evictions: c.evictions,
            rebinds: c.rebinds,
            create_failures: c.create_failures,
            counters: c,
        }
    }
}
