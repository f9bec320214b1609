//! Metric names, recorded through the [`metrics`] facade.
//!
//! Labels are `server`, `transport` and `strategy` (plus `reason` on evictions and `state` on
//! sessions); identities never appear in a label. Install a recorder (for example
//! `metrics-exporter-prometheus`) before building the pool: handles are registered when a key
//! is created.

use mcp_pool_traits::{EvictionReason, ServerId, TransportKind};
use metrics::{Counter, Gauge, Histogram, Label};

/// Acquires served by an existing session (counter).
pub const HITS_TOTAL: &str = "mcp_pool_hits_total";
/// Acquires that created a session (counter).
pub const MISSES_TOTAL: &str = "mcp_pool_misses_total";
/// Sessions that left the pool, label `reason` = [`EvictionReason::as_str`] (counter).
pub const EVICTIONS_TOTAL: &str = "mcp_pool_evictions_total";
/// Acquires that ran out of time (counter).
pub const ACQUIRE_TIMEOUTS_TOTAL: &str = "mcp_pool_acquire_timeouts_total";
/// Failed health checks (counter).
pub const HEALTH_CHECK_FAILURES_TOTAL: &str = "mcp_pool_health_check_failures_total";
/// Circuit breakers that opened (counter).
pub const CIRCUIT_BREAKER_TRIPS_TOTAL: &str = "mcp_pool_circuit_breaker_trips_total";
/// Sessions created to replace a dead sticky-bound session: server state was lost (counter).
pub const REBINDS_TOTAL: &str = "mcp_pool_rebinds_total";
/// Autoscaler decisions, label `action` = `grow`, `shrink` or `stay` (counter).
pub const AUTOSCALE_DECISIONS_TOTAL: &str = "mcp_pool_autoscale_decisions_total";
/// Acquires whose principal had no identity header (counter).
pub const ANONYMOUS_ACQUIRES_TOTAL: &str = "mcp_pool_anonymous_acquires_total";
/// Calls retried once on another session because the first attempt provably never reached
/// the server's handler, label `reason` = `unauthorized`, `session_expired`, `connect` or
/// `session_closed` (counter).
pub const CALL_RETRIES_TOTAL: &str = "mcp_pool_call_retries_total";
/// Sessions, label `state` = `active` (leases out) or `idle` (gauge).
pub const SESSIONS: &str = "mcp_pool_sessions";
/// Acquires waiting for a session (gauge).
pub const WAITERS: &str = "mcp_pool_waiters";
/// Time from acquire to lease or error, in seconds (histogram).
pub const ACQUIRE_SECONDS: &str = "mcp_pool_acquire_seconds";

/// Handles of one label set (server, transport, strategy), registered once per key.
#[derive(Debug, Clone)]
pub(crate) struct KeyMetrics {
    labels: [Label; 3],
    enabled: bool,
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) rebinds: Counter,
    pub(crate) breaker_trips: Counter,
    pub(crate) health_failures: Counter,
    pub(crate) anonymous: Counter,
    pub(crate) active: Gauge,
    pub(crate) idle: Gauge,
    pub(crate) waiters: Gauge,
    pub(crate) acquire_seconds: Histogram,
}

impl KeyMetrics {
    /// Handles for one label set; no-op handles when `enabled` is false.
    pub(crate) fn new(
        server: &ServerId,
        transport: TransportKind,
        strategy: &str,
        enabled: bool,
    ) -> Self {
        if !enabled {
            return Self::disabled();
        }
        let labels = [
            Label::new("server", server.to_string()),
            Label::new("transport", transport.as_str()),
            Label::new("strategy", strategy.to_owned()),
        ];
        let with =
            |extra: Option<Label>| -> Vec<Label> { labels.iter().cloned().chain(extra).collect() };
        Self {
            hits: metrics::counter!(HITS_TOTAL, with(None)),
            misses: metrics::counter!(MISSES_TOTAL, with(None)),
            timeouts: metrics::counter!(ACQUIRE_TIMEOUTS_TOTAL, with(None)),
            rebinds: metrics::counter!(REBINDS_TOTAL, with(None)),
            breaker_trips: metrics::counter!(CIRCUIT_BREAKER_TRIPS_TOTAL, with(None)),
            health_failures: metrics::counter!(HEALTH_CHECK_FAILURES_TOTAL, with(None)),
            anonymous: metrics::counter!(ANONYMOUS_ACQUIRES_TOTAL, with(None)),
            active: metrics::gauge!(SESSIONS, with(Some(Label::new("state", "active")))),
            idle: metrics::gauge!(SESSIONS, with(Some(Label::new("state", "idle")))),
            waiters: metrics::gauge!(WAITERS, with(None)),
            acquire_seconds: metrics::histogram!(ACQUIRE_SECONDS, with(None)),
            labels,
            enabled: true,
        }
    }

    fn disabled() -> Self {
        Self {
            labels: [
                Label::new("server", ""),
                Label::new("transport", ""),
                Label::new("strategy", ""),
            ],
            enabled: false,
            hits: Counter::noop(),
            misses: Counter::noop(),
            timeouts: Counter::noop(),
            rebinds: Counter::noop(),
            breaker_trips: Counter::noop(),
            health_failures: Counter::noop(),
            anonymous: Counter::noop(),
            active: Gauge::noop(),
            idle: Gauge::noop(),
            waiters: Gauge::noop(),
            acquire_seconds: Histogram::noop(),
        }
    }

    /// Counts one eviction. Not on the hit path, so the handle is looked up each time.
    pub(crate) fn evicted(&self, reason: EvictionReason) {
        self.count(EVICTIONS_TOTAL, Label::new("reason", reason.as_str()));
    }

    /// Counts one autoscaler decision.
    pub(crate) fn autoscale(&self, action: &'static str) {
        self.count(AUTOSCALE_DECISIONS_TOTAL, Label::new("action", action));
    }

    /// Counts one retried call.
    pub(crate) fn retried(&self, reason: &'static str) {
        self.count(CALL_RETRIES_TOTAL, Label::new("reason", reason));
    }

    /// Increments counter `name` with this key's labels and `extra`, looking the handle up
    /// (for counters off the hit path, whose extra label varies).
    fn count(&self, name: &'static str, extra: Label) {
        if !self.enabled {
            return;
        }
        let labels: Vec<Label> = self.labels.iter().cloned().chain([extra]).collect();
        metrics::counter!(name, labels).increment(1);
    }
}
