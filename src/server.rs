//! Upstream server definitions.

use std::{fmt, sync::Arc, time::Duration};

use http::HeaderMap;

use mcp_pool_traits::{
    Endpoint, PoolConfig, ServerEvents, ServerId, Strategy, TransportKind,
    rmcp::model::{ClientCapabilities, ClientConfig},
};

use parking_lot::Mutex;

use tokio::time::Instant;

use crate::{
    PoolError,
    breaker::{BreakerConfig, CircuitBreaker},
    key::KeyCounters,
    score::{HealthScore, HealthStatus},
};

/// An upstream MCP server: its endpoints (replicas), its pool configuration and, optionally, a
/// custom strategy that replaces the configured built-in one.
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) id: ServerId,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) pool: PoolConfig,
    pub(crate) strategy: Option<Arc<dyn Strategy>>,
    pub(crate) call_timeout: Duration,
    pub(crate) capabilities: Option<ClientCapabilities>,
    pub(crate) headers: HeaderMap,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .field("pool", &self.pool)
            .field("strategy", &self.strategy.as_ref().map(|s| s.name()))
            .field("call_timeout", &self.call_timeout)
            .field("capabilities", &self.capabilities)
            .field("headers", &mcp_pool_traits::RedactedHeaders(&self.headers))
            .finish()
    }
}

impl ServerConfig {
    /// A server with one endpoint and pooling on ([`PoolConfig::enabled`]).
    pub fn new(id: ServerId, endpoint: Endpoint) -> Self {
        Self {
            id,
            endpoints: vec![endpoint],
            pool: PoolConfig::enabled(),
            strategy: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            capabilities: None,
            headers: HeaderMap::new(),
        }
    }

    /// A server with these endpoints and pool configuration (what a configuration file
    /// describes); the other settings at their defaults.
    pub(crate) fn from_parts(id: ServerId, endpoints: Vec<Endpoint>, pool: PoolConfig) -> Self {
        Self {
            id,
            endpoints,
            pool,
            strategy: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            capabilities: None,
            headers: HeaderMap::new(),
        }
    }

    /// How long a call on a lease of this server may take before it fails with
    /// `ServiceError::Timeout` and the server is sent `notifications/cancelled`, 1 ms-3600 s
    /// (default [`DEFAULT_CALL_TIMEOUT`], 60 s, as the official TypeScript SDK's request
    /// timeout). A call overrides it with [`CallOptions::timeout`](crate::CallOptions::timeout).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The names of the headers set with [`headers`](Self::headers).
    pub fn header_names(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.headers.keys()
    }

    /// The client capabilities advertised in `initialize` to this server (default: the pool's
    /// client config, [`PoolBuilder::client_config`](crate::PoolBuilder::client_config), which
    /// advertises none). A server only asks for sampling, elicitation or roots when the client
    /// advertised them; advertise what the callers' [`ServerRequestHandler`](mcp_pool_traits::ServerRequestHandler)s
    /// answer. Part of the session's setup: a change applies to sessions created after it.
    pub fn client_capabilities(mut self, capabilities: ClientCapabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// The server's own upstream headers (its credentials: an API key, a bearer token read
    /// from the environment), sent on every upstream HTTP request of its sessions (WebSocket:
    /// the handshake) and winning over a caller's headers of the same name. They are the same
    /// for every caller, so they are not part of any key; their values are marked sensitive and
    /// never shown (`Debug` lists names only). Part of the session's setup: a change applies to
    /// sessions created after it (drain the server to apply it at once).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = mcp_pool_traits::forwardable_headers(&headers);
        self
    }

    /// Adds a replica.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Replaces the pool configuration, [normalized](PoolConfig::normalized): sizes left at
    /// their defaults follow the sizes set, so `PoolConfig { max_size: 4,
    /// ..PoolConfig::enabled() }` is a pool of `size` 4 rather than an error blaming the default
    /// `size` 5. Validated when the server is added; sizes set that contradict each other
    /// are rejected then, naming both.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool.normalized();
        self
    }

    /// Uses a custom strategy instead of `pool.strategy`.
    pub fn strategy(mut self, strategy: Arc<dyn Strategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// The server id.
    pub fn id(&self) -> &ServerId {
        &self.id
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The pool configuration.
    pub fn pool_config(&self) -> &PoolConfig {
        &self.pool
    }

    /// The call deadline set with [`call_timeout`](Self::call_timeout).
    pub fn configured_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The capabilities set with [`client_capabilities`](Self::client_capabilities), if any.
    pub fn configured_client_capabilities(&self) -> Option<&ClientCapabilities> {
        self.capabilities.as_ref()
    }

    /// Checks what [`Pool::add_server`](crate::Pool::add_server) checks, without applying
    /// anything: at least one endpoint, valid endpoint URLs, the pool configuration's ranges,
    /// the call timeout (1 ms to 3600 s).
    ///
    /// # Errors
    /// [`PoolError::InvalidServer`] or [`PoolError::Config`] naming what is wrong.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.endpoints.is_empty() {
            return Err(PoolError::InvalidServer {
                server: self.id.clone(),
                message: "a server needs at least one endpoint".into(),
            });
        }
        for endpoint in &self.endpoints {
            endpoint
                .validate()
                .map_err(|e| PoolError::invalid_endpoint(&self.id, e))?;
        }
        self.pool.validate()?;
        if !(Duration::from_millis(1)..=MAX_CALL_TIMEOUT).contains(&self.call_timeout) {
            return Err(PoolError::InvalidServer {
                server: self.id.clone(),
                message: format!(
                    "call_timeout {:?} is out of range: 1 ms to 3600 s",
                    self.call_timeout
                ),
            });
        }
        Ok(())
    }
}

/// A registry record's server: its endpoints and pool config ([normalized](ServerConfig::pool)),
/// the other settings at their defaults. `name`, `enabled` and `credentials` are the
/// registry's business.
impl From<mcp_pool_traits::ServerRecord> for ServerConfig {
    fn from(record: mcp_pool_traits::ServerRecord) -> Self {
        Self::from_parts(record.id, record.endpoints, record.pool.normalized())
    }
}

/// Default [`ServerConfig::call_timeout`]: 60 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest [`ServerConfig::call_timeout`]: one hour.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// State of a server that outlives its keys and its reconfigurations: the totals of keys
/// already gone (live keys count in their own [`KeyCounters`]; stats add both), its health (a
/// score for the server and, per endpoint, a score and a circuit breaker), and its event hub.
#[derive(Debug)]
pub(crate) struct ServerCounters {
    pub(crate) retired: Mutex<KeyCounters>,
    pub(crate) health: Mutex<ServerHealth>,
    /// The server's `*/list_changed` and `resources/updated`, from every session.
    pub(crate) events: ServerEvents,
}

impl ServerCounters {
    pub(crate) fn new(events: ServerEvents) -> Self {
        Self {
            retired: Mutex::default(),
            health: Mutex::default(),
            events,
        }
    }
}

/// Health of a server and its endpoints.
#[derive(Debug, Default)]
pub(crate) struct ServerHealth {
    pub(crate) score: Option<HealthScore>,
    pub(crate) endpoints: Vec<EndpointHealth>,
    /// Acquires refused because every endpoint's circuit was open, since the pool started.
    pub(crate) circuit_refusals: u64,
}

/// One endpoint's breaker, score and last error.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) score: HealthScore,
    /// The last failure seen on it, in words, and when.
    pub(crate) last_error: Option<(String, Instant)>,
}

impl EndpointHealth {
    fn new(breaker: BreakerConfig, now: Instant) -> Self {
        Self {
            breaker: CircuitBreaker::new(breaker),
            score: HealthScore::new(now),
            last_error: None,
        }
    }
}

/// The longest last error kept per endpoint, in bytes (an excerpt ends with `…`).
const MAX_LAST_ERROR_BYTES: usize = 300;

impl ServerHealth {
    /// Makes room for `endpoints` endpoints (endpoints are only ever added by
    /// reconfiguration; a shorter list leaves the extra entries unused).
    pub(crate) fn ensure(&mut self, endpoints: usize, breaker: BreakerConfig, now: Instant) {
        self.score.get_or_insert_with(|| HealthScore::new(now));
        while self.endpoints.len() < endpoints {
            self.endpoints.push(EndpointHealth::new(breaker, now));
        }
    }

    /// Starts endpoint `i` afresh (a new breaker and score): it now points elsewhere.
    pub(crate) fn reset_endpoint(&mut self, i: usize, breaker: BreakerConfig, now: Instant) {
        if let Some(e) = self.endpoints.get_mut(i) {
            *e = EndpointHealth::new(breaker, now);
        }
    }

    /// Whether each of the first `endpoints` endpoints (the server's current list) has a
    /// breaker that is not closed: open, even past its period, or half-open. `false` before
    /// any endpoint has a breaker.
    pub(crate) fn all_tripped(&self, endpoints: usize) -> bool {
        endpoints > 0
            && self.endpoints.len() >= endpoints
            && self.endpoints[..endpoints]
                .iter()
                .all(|e| e.breaker.is_tripped())
    }

    /// The server's score and status shown at `now` against `threshold` percent
    /// ([`assess`](crate::score::assess)): a server whose every endpoint is tripped (see
    /// [`all_tripped`](Self::all_tripped)) cannot serve, and shows 0 and
    /// [`Unhealthy`](HealthStatus::Unhealthy) whatever successes its window still holds (a
    /// window still full of successes would otherwise show an outage as `healthy`, 99).
    pub(crate) fn status(
        &self,
        endpoints: usize,
        now: Instant,
        threshold: u8,
    ) -> (Option<u8>, HealthStatus) {
        let window = self.score.as_ref().and_then(|s| s.score(now));
        crate::score::assess(window, self.all_tripped(endpoints), threshold)
    }

    /// Records a failed operation on endpoint `i` at `now`: a failure in the server's and the
    /// endpoint's scores, and `error` (in words) as the endpoint's last error.
    pub(crate) fn record_failure(&mut self, i: usize, error: &str, now: Instant) {
        self.record(Some(i), false, now);
        self.record_error(i, error, now);
    }

    /// Records `error`, in words, as endpoint `i`'s last error at `now` (cut to
    /// [`MAX_LAST_ERROR_BYTES`]). The caller words it without credentials (URLs redacted).
    pub(crate) fn record_error(&mut self, i: usize, error: &str, now: Instant) {
        let Some(e) = self.endpoints.get_mut(i) else {
            return;
        };
        let mut text = error.to_owned();
        if text.len() > MAX_LAST_ERROR_BYTES {
            let mut end = MAX_LAST_ERROR_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        e.last_error = Some((text, now));
    }

    /// Records an acquire refused by open circuits: counted, and a failure in the server's
    /// score (not in an endpoint's: no endpoint was tried).
    pub(crate) fn record_refusal(&mut self, now: Instant) {
        self.circuit_refusals += 1;
        self.score
            .get_or_insert_with(|| HealthScore::new(now))
            .record(now, false);
    }

    /// Records one operation's outcome for the server and, if known, its endpoint.
    pub(crate) fn record(&mut self, endpoint: Option<usize>, success: bool, now: Instant) {
        if let Some(score) = &mut self.score {
            score.record(now, success);
        }
        if let Some(e) = endpoint.and_then(|i| self.endpoints.get_mut(i)) {
            e.score.record(now, success);
        }
    }
}

/// A server as the running pool sees it: an immutable snapshot, replaced whole on
/// reconfiguration (`generation` tells keys to pick up the change).
#[derive(Debug)]
pub(crate) struct ServerEntry {
    /// Stable for the id across reconfigurations; never reused.
    pub(crate) index: u32,
    /// The configuration the server was added with: what a deleted saved config reverts to.
    pub(crate) base: PoolConfig,
    pub(crate) id: ServerId,
    pub(crate) endpoints: Arc<[Endpoint]>,
    pub(crate) config: PoolConfig,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) generation: u64,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) call_timeout: Duration,
    /// The server's own capabilities, if set (kept for reconfigurations).
    pub(crate) capabilities: Option<ClientCapabilities>,
    /// The `initialize` parameters of its sessions (the pool's, with the server's
    /// capabilities).
    pub(crate) client: ClientConfig,
    /// The server's own upstream headers ([`ServerConfig::headers`]).
    pub(crate) headers: HeaderMap,
}

impl ServerEntry {
    /// Pooling on and a strategy that pools.
    pub(crate) fn pools(&self) -> bool {
        self.config.enabled && self.strategy.pools()
    }

    /// The transport an acquire uses when it names none: the first endpoint's.
    pub(crate) fn default_transport(&self) -> TransportKind {
        self.endpoints[0].transport
    }
}
