//! [`PoolStats`]: a serializable snapshot of the pool.

use mcp_pool_traits::{PoolKey, ServerId, TransportKind};
use serde::Serialize;

use tokio::time::Instant;

use crate::{breaker::BreakerState, key::KeyCounters, score::HealthStatus, server::ServerEntry};

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
    /// Calls retried once on another session because the first attempt provably never reached
    /// the server ([`Pool::call`](crate::Pool::call)).
    pub call_retries: u64,
    /// Acquires refused at once because every endpoint's circuit breaker was open
    /// ([`PoolError::CircuitOpen`](crate::PoolError::CircuitOpen)); each also counts as a
    /// failure in `health_score`.
    pub circuit_refusals: u64,
    /// Share of successful operations over the last 5 minutes, in percent; `None` before any.
    /// Operations: session creations, calls through leases, health checks, sessions lost, and
    /// acquires refused by open circuit breakers (each a failure). 0 while every endpoint's
    /// circuit breaker is open or half-open: nothing can be served then, whatever the window
    /// still holds.
    pub health_score: Option<u8>,
    /// By the score shown ([`assess`](crate::score::assess)): `healthy` at or above
    /// `health_check_threshold`, `degraded` from half of it, else `unhealthy`; `unknown`
    /// without data (see [`HealthStatus`]); `unhealthy` (score 0) while every endpoint's
    /// circuit breaker is open or half-open.
    pub health_status: HealthStatus,
    /// Per endpoint: health and circuit breaker.
    pub endpoints: Vec<EndpointStats>,
    /// The keys alive now.
    pub keys: Vec<KeyStats>,
}

/// One endpoint of a server.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Its URL.
    pub url: String,
    /// Its transport.
    pub transport: TransportKind,
    /// Its weight.
    pub weight: u32,
    /// Share of successful operations on it over the last 5 minutes, in percent; 0 while its
    /// circuit is open or half-open.
    pub health_score: Option<u8>,
    /// Its status, by its score shown against the server's threshold
    /// ([`assess`](crate::score::assess)): `unhealthy` (score 0) while its circuit is open or
    /// half-open.
    pub health_status: HealthStatus,
    /// `closed`, `open` or `half_open`.
    pub circuit: &'static str,
    /// Seconds until an open circuit lets an acquire probe.
    pub circuit_retry_in_secs: Option<f64>,
    /// How many times its circuit opened.
    pub circuit_trips: u64,
    /// The last failure seen on it, in words: a session that could not be opened, a call that
    /// failed at the transport or timed out, a failed health check, a session lost (its
    /// server no longer knew it, its connection closed). URLs redacted, no credentials, at
    /// most 300 bytes. `None` before any failure. Kept after recovery: read
    /// `last_error_age_secs` and the status with it.
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    pub last_error_age_secs: Option<f64>,
}

impl ServerStats {
    pub(crate) fn new(entry: &ServerEntry, keys: Vec<KeyStats>) -> Self {
        let c = &*entry.counters;
        let (server, strategy, pooling) = (
            entry.id.clone(),
            entry.strategy.name().to_owned(),
            entry.pools(),
        );
        let threshold = entry.config.health_check_threshold;
        let now = Instant::now();
        let health = c.health.lock();
        let (health_score, health_status) = health.status(entry.endpoints.len(), now, threshold);
        let circuit_refusals = health.circuit_refusals;
        let endpoints = entry
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let e = health.endpoints.get(i);
                // An endpoint whose breaker refuses creations is down, whatever its window
                // still holds.
                let (score, status) = crate::score::assess(
                    e.and_then(|e| e.score.score(now)),
                    e.is_some_and(|e| e.breaker.is_tripped()),
                    threshold,
                );
                let last_error = e.and_then(|e| e.last_error.as_ref());
                let (circuit, retry) = match e.map(|e| e.breaker.state()) {
                    None | Some(BreakerState::Closed) => ("closed", None),
                    Some(BreakerState::HalfOpen) => ("half_open", None),
                    Some(BreakerState::Open { until }) => (
                        "open",
                        Some(until.saturating_duration_since(now).as_secs_f64()),
                    ),
                };
                EndpointStats {
                    url: mcp_pool_traits::redact_url(&endpoint.url).into_owned(),
                    transport: endpoint.transport,
                    weight: endpoint.weight,
                    health_score: score,
                    health_status: status,
                    circuit,
                    circuit_retry_in_secs: retry,
                    circuit_trips: e.map_or(0, |e| e.breaker.trips()),
                    last_error: last_error.map(|(text, _)| text.clone()),
                    last_error_age_secs: last_error
                        .map(|(_, at)| now.saturating_duration_since(*at).as_secs_f64()),
                }
            })
            .collect();
        drop(health);
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
            call_retries: total.call_retries,
            circuit_refusals,
            health_score,
            health_status,
            endpoints,
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
    /// Sessions with no lease out and no health check running: what an acquire of any
    /// affinity could be served by, or what may be closed to make room.
    pub sessions_idle: u32,
    /// Sessions taken out of service by a health check in progress (at most one per key).
    pub sessions_checking: u32,
    /// Sessions out of service after an abandoned call (timed out, or dropped by its caller)
    /// until a probe shows the server still answers ([`Lease`](crate::Lease)).
    pub sessions_probing: u32,
    /// Sessions being created.
    pub sessions_creating: u32,
    /// Acquires waiting.
    pub waiters: u32,
    /// The autoscaler's target size (the configured `size` when autoscaling is off).
    pub target_size: u32,
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
    /// Calls retried once on another session because the first attempt provably never reached
    /// the server ([`Pool::call`](crate::Pool::call)).
    pub call_retries: u64,
    /// Session creations that failed.
    pub create_failures: u64,
    #[serde(skip)]
    counters: KeyCounters,
}

/// A key's sizes at one moment, as [`KeyStats`] shows them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySizes {
    pub(crate) sessions_total: u32,
    pub(crate) sessions_active: u32,
    pub(crate) sessions_available: u32,
    pub(crate) sessions_idle: u32,
    pub(crate) sessions_checking: u32,
    pub(crate) sessions_probing: u32,
    pub(crate) sessions_creating: u32,
    pub(crate) waiters: u32,
    pub(crate) target_size: u32,
}

impl KeyStats {
    pub(crate) fn new(key: &PoolKey, sizes: KeySizes, c: KeyCounters) -> Self {
        let KeySizes {
            sessions_total,
            sessions_active,
            sessions_available,
            sessions_idle,
            sessions_checking,
            sessions_probing,
            sessions_creating,
            waiters,
            target_size,
        } = sizes;
        Self {
            key: key.short(),
            transport: key.transport,
            user: key.user.short(),
            identity: key.identity.short(),
            sessions_total,
            sessions_active,
            sessions_available,
            sessions_idle,
            sessions_checking,
            sessions_probing,
            sessions_creating,
            waiters,
            target_size,
            hits: c.hits,
            misses: c.misses,
            hit_rate: rate(c.hits, c.misses),
            releases: c.releases,
            timeouts: c.timeouts,
            evictions: c.evictions,
            rebinds: c.rebinds,
            call_retries: c.call_retries,
            create_failures: c.create_failures,
            counters: c,
        }
    }
}

/// What an upstream session is doing at one moment ([`SessionInfo::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionState {
    /// No lease out: ready for the next acquire.
    Idle,
    /// At least one lease out.
    Leased,
    /// Out of service for a periodic health check.
    Checking,
    /// Out of service after an abandoned call until a probe shows the server still answers.
    Probing,
    /// Taken out of service (drain, eviction, reconfiguration) while leases were out on it: it
    /// closes when its last lease returns.
    Retiring,
}

/// One upstream session of a server ([`Pool::sessions`](crate::Pool::sessions)). Never holds
/// an identity: its key appears only as an 8-character hash prefix.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The first 8 hex characters of the SHA-256 of its pool key (user, identity, server,
    /// transport): sessions of one key share it, and it reveals nothing of the identity.
    pub key: String,
    /// The session's number within its key.
    pub session: u64,
    /// Its transport.
    pub transport: TransportKind,
    /// Index of its endpoint in the server's endpoint list; `None` for a retiring session.
    pub endpoint: Option<usize>,
    /// Its endpoint's URL, passwords and secret query values masked; `None` when retiring.
    pub url: Option<String>,
    /// Seconds since it was created.
    pub age_secs: f64,
    /// Seconds since its last lease returned, 0 while leased. Releases read no clock, so a
    /// session released since the maintenance's last pass shows the time since that pass
    /// (idle times are measured at the `cleanup_interval` granularity).
    pub idle_secs: f64,
    /// Leases it has served.
    pub use_count: u64,
    /// Leases out on it now.
    pub in_flight: u32,
    /// What it is doing.
    pub state: SessionState,
}

/// The 8-character label of a pool key in [`SessionInfo::key`].
pub(crate) fn key_label(key: &PoolKey) -> String {
    mcp_pool_traits::Digest256::of(format!(
        "{}\n{}\n{}\n{}",
        key.server, key.transport, key.user, key.identity
    ))
    .short()
}
