//! [`Pool`]: the public face of the engine.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak, atomic::Ordering},
    task::{Context, Poll},
};

use http::HeaderMap;
use mcp_pool_traits::{
    AffinityKey, AffinityState, Digest256, EvictionReason, IdentityConfig, PoolConfig, PoolKey,
    Principal, SelectContext, ServerEvents, ServerId, StateBackend, Strategy, TransportKind,
    rmcp::model::{ClientRequest, ServerResult},
};
use mcp_pool_transports::{CallFailure, NotDelivered, call_failure};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events a slow subscriber of [`Pool::server_events`] may fall behind by before it lags.
pub(crate) const SERVER_EVENTS_CAPACITY: usize = 64;

use crate::{
    CallOptions, Lease, PoolBuilder, PoolError, ServerConfig,
    key::{AcquireArgs, AcquireError, KeyId, KeyPool, Pending},
    lease::Stage,
    limits::Cap,
    server::{ServerCounters, ServerEntry},
    shared::{FastHash, Shared},
    stats::{PoolStats, ServerStats, SessionInfo},
};

/// What to acquire: a server, for a principal, optionally over a given transport and for a
/// downstream session (the sticky affinity).
///
/// ```
/// # use mcp_pool::{AcquireRequest, Principal, ServerId};
/// # let server = ServerId::new("github").unwrap();
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "Bearer t0k3n".parse().unwrap());
/// let request = AcquireRequest::new(&server)
///     .headers(&headers)                 // identity + forwarded upstream
///     .downstream_session("conv-42");    // sticky affinity
/// ```
#[derive(Clone, Copy)]
pub struct AcquireRequest<'a> {
    server: &'a ServerId,
    principal: Option<Principal>,
    user: Option<&'a str>,
    headers: Option<&'a HeaderMap>,
    transport: Option<TransportKind>,
    affinity: Option<AffinityKey>,
}

impl<'a> AcquireRequest<'a> {
    /// An anonymous acquire on `server` over its first endpoint's transport.
    pub fn new(server: &'a ServerId) -> Self {
        Self {
            server,
            principal: None,
            user: None,
            headers: None,
            transport: None,
            affinity: None,
        }
    }

    /// Request headers: the identity is hashed from them (unless [`principal`](Self::principal)
    /// is given). When a session is created, only the identity headers and the allow-listed
    /// ones ([`IdentityConfig::with_forwarded_headers`](mcp_pool_traits::IdentityConfig::with_forwarded_headers))
    /// are sent upstream — exactly the headers the identity hashes, so a credential never
    /// serves a principal whose key it is not part of.
    pub fn headers(mut self, headers: &'a HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }

    /// An explicit user identity, hashed into the key.
    pub fn user(mut self, user: &'a str) -> Self {
        self.user = Some(user);
        self
    }

    /// A precomputed principal (see [`Pool::principal`]): no hashing on this acquire.
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }

    /// The transport to use; the server must have an endpoint of that kind.
    pub fn transport(mut self, transport: TransportKind) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The downstream (client-facing) session id: the affinity of the sticky strategy.
    pub fn downstream_session(mut self, id: &str) -> Self {
        self.affinity = Some(AffinityKey::downstream_session(id));
        self
    }
}

impl fmt::Debug for AcquireRequest<'_> {
    /// Header names only: their values are credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireRequest")
            .field("server", self.server)
            .field("principal", &self.principal)
            .field("user", &self.user.map(|_| "<redacted>"))
            .field(
                "headers",
                &self.headers.map(|h| h.keys().collect::<Vec<_>>()),
            )
            .field("transport", &self.transport)
            .field("affinity", &self.affinity)
            .finish()
    }
}

/// The future of [`Pool::acquire`] and [`Pool::acquire_with`], resolving to a [`Lease`].
///
/// Its first poll makes the synchronous attempt: a hit completes there, without allocating;
/// a miss or a wait goes on in a boxed future (so the future of a hit stays small: moving a
/// large future costs more than the hit itself). Cancel-safe: dropping it at any point
/// leaks nothing.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a> {
    state: AcquireState<'a>,
}

type SlowAcquire<'a> = Pin<Box<dyn Future<Output = Result<Lease, PoolError>> + Send + 'a>>;

enum AcquireState<'a> {
    Start {
        pool: &'a Pool,
        request: AcquireRequest<'a>,
    },
    Slow(SlowAcquire<'a>),
    Done,
}

enum Started<'a> {
    Lease(Lease),
    Slow(SlowAcquire<'a>),
}

impl Future for Acquire<'_> {
    type Output = Result<Lease, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut slow = match std::mem::replace(&mut this.state, AcquireState::Done) {
            AcquireState::Start { pool, request } => match pool.start(request) {
                Ok(Started::Lease(lease)) => return Poll::Ready(Ok(lease)),
                Ok(Started::Slow(slow)) => slow,
                Err(error) => return Poll::Ready(Err(error)),
            },
            AcquireState::Slow(slow) => slow,
            AcquireState::Done => panic!("`Acquire` polled after it completed"),
        };
        let poll = slow.as_mut().poll(cx);
        if poll.is_pending() {
            this.state = AcquireState::Slow(slow);
        }
        poll
    }
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            AcquireState::Start { request, .. } => {
                return f.debug_struct("Acquire").field("request", request).finish();
            }
            AcquireState::Slow(_) => "waiting or creating",
            AcquireState::Done => "done",
        };
        f.debug_struct("Acquire").field("state", &state).finish()
    }
}

/// What one synchronous acquire attempt ended with.
enum FirstTry {
    Lease(Lease),
    /// The key was removed under the attempt: look it up again.
    Again,
    /// Create or wait on this key.
    Slow(Arc<KeyPool>, Arc<ServerEntry>, Pending),
}

/// A pool of initialized upstream MCP sessions, keyed by (user, identity, server, transport).
///
/// Cheap to clone (an `Arc`). Build one with [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) inner: Arc<PoolInner>,
}

/// Per server, the version of the last saved change a pool applied (see
/// [`Pool::apply_saved`]).
pub(crate) type SavedVersions = parking_lot::Mutex<HashMap<ServerId, u64>>;

/// Candidate keys, least recently used last.
pub(crate) fn by_last_use(mut keys: Vec<(Instant, Weak<KeyPool>)>) -> Vec<Weak<KeyPool>> {
    keys.sort_by_key(|k| std::cmp::Reverse(k.0));
    keys.into_iter().map(|(_, k)| k).collect()
}

/// Takes `key` out of the pool's map, if it is still the one listed under its id.
pub(crate) fn unlist(
    keys: &papaya::HashMap<KeyId, Arc<KeyPool>, FastHash>,
    key: &Arc<KeyPool>,
) -> bool {
    keys.pin()
        .remove_if(&KeyId::of(key), |_, k| Arc::ptr_eq(k, key))
        .is_ok_and(|r| r.is_some())
}

#[derive(Debug)]
pub(crate) struct PoolInner {
    pub(crate) shared: Arc<Shared>,
    /// Every key, read on every acquire without a lock (papaya: lock-free reads).
    pub(crate) keys: papaya::HashMap<KeyId, Arc<KeyPool>, FastHash>,
    pub(crate) identity: IdentityConfig,
    pub(crate) backend: Arc<dyn StateBackend>,
    pub(crate) shutdown: CancellationToken,
    /// Per server id, ever: its stable index (for [`KeyId`]) and its counters.
    pub(crate) known_servers: parking_lot::Mutex<HashMap<ServerId, (u32, Arc<ServerCounters>)>>,
    pub(crate) generation: std::sync::atomic::AtomicU64,
    /// Keys with idle sessions, least recently used last: where a pool-wide cap (keys,
    /// sessions) takes room from. Built by the maintenance pass (off the request path) and
    /// rebuilt on demand when used up.
    pub(crate) candidates: parking_lot::Mutex<Vec<Weak<KeyPool>>>,
    /// The keys of each subject of the user limit: where the user limit takes room from
    /// without looking at anybody else's keys.
    pub(crate) subjects: parking_lot::Mutex<HashMap<Digest256, Vec<Weak<KeyPool>>, FastHash>>,
    /// Bumped after every applied configuration change, whatever its source.
    pub(crate) config_changes: tokio::sync::watch::Sender<u64>,
    /// Per server, the version of the last saved config (or deletion) applied.
    pub(crate) saved_versions: SavedVersions,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

static EMPTY_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl Pool {
    /// A builder with the documented defaults and the streamable HTTP transport.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The principal of a request: its explicit user (if any) and the identity hashed from
    /// `headers` with this pool's [`IdentityConfig`]. Compute it once per downstream request.
    pub fn principal(&self, user: Option<&str>, headers: &HeaderMap) -> Principal {
        Principal::new(user, headers, &self.inner.identity)
    }

    /// Adds or replaces a server. A replaced server's keys pick up the new configuration on
    /// their next acquire; leases out are not touched.
    ///
    /// # Errors
    /// [`PoolError::Config`] or [`PoolError::InvalidServer`]; nothing is applied then.
    pub fn add_server(&self, server: ServerConfig) -> Result<(), PoolError> {
        let base = server.pool.clone();
        self.install(server, base)
    }

    /// The strategy `server`'s config names: a registered one, else the built-in one.
    fn strategy_of(&self, server: &ServerConfig) -> Result<Arc<dyn Strategy>, PoolError> {
        use mcp_pool_traits::StrategyKind;
        let kind = server.pool.strategy;
        if let Some(strategy) = self.inner.shared.strategies.get(&kind) {
            return Ok(strategy.clone());
        }
        mcp_pool_strategies::builtin_of(kind).ok_or_else(|| {
            let mut registered: Vec<&str> = self
                .inner
                .shared
                .strategies
                .keys()
                .map(|k| k.as_str())
                .collect();
            registered.sort_unstable();
            PoolError::InvalidServer {
                server: server.id.clone(),
                message: format!(
                    "strategy {kind} is not registered: register it with PoolBuilder::strategy, \
                     or use one of {}",
                    StrategyKind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .chain(registered)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
    }

    /// Every endpoint of `server` names a transport this pool has, and that transport accepts
    /// it ([`Transport::validate_endpoint`](mcp_pool_traits::Transport::validate_endpoint)).
    fn check_transports(&self, server: &ServerConfig) -> Result<(), PoolError> {
        let transports = &self.inner.shared.transports;
        for endpoint in &server.endpoints {
            let Some(transport) = transports.get(&endpoint.transport) else {
                let mut known: Vec<&str> = transports.keys().map(|k| k.as_str()).collect();
                known.sort_unstable();
                return Err(PoolError::InvalidServer {
                    server: server.id.clone(),
                    message: format!(
                        "endpoint {endpoint} names transport {}, which this pool has no \
                         transport for: register one with PoolBuilder::transport, or use one \
                         of {}",
                        endpoint.transport,
                        known.join(", ")
                    ),
                });
            };
            transport
                .validate_endpoint(endpoint)
                .map_err(|e| PoolError::invalid_endpoint(&server.id, e))?;
        }
        Ok(())
    }

    /// Validates `server` and swaps it in; `base` is the configuration a deleted saved config
    /// reverts to. Installs are serialized and numbered under one lock, so the map always
    /// holds the newest, and every key of the server picks it up at once (keys only ever move
    /// to a newer generation).
    fn install(&self, server: ServerConfig, base: PoolConfig) -> Result<(), PoolError> {
        self.install_over(server, base, None).map(drop)
    }

    /// [`install`](Self::install), but only over `over` when given: `Ok(false)` (nothing
    /// applied) when the server's entry changed since it was read, and
    /// [`PoolError::UnknownServer`] when the server was removed meanwhile — a reconfiguration
    /// never brings back a server removed concurrently, nor reverts a newer install.
    fn install_over(
        &self,
        server: ServerConfig,
        base: PoolConfig,
        over: Option<&Arc<ServerEntry>>,
    ) -> Result<bool, PoolError> {
        server.validate()?;
        self.check_transports(&server)?;
        let strategy: Arc<dyn Strategy> = match &server.strategy {
            Some(custom) => custom.clone(),
            None => self.strategy_of(&server)?,
        };
        let entry = {
            let mut known = self.inner.known_servers.lock();
            let next = known.len() as u32;
            let (index, counters) = known
                .entry(server.id.clone())
                .or_insert_with(|| {
                    let events = ServerEvents::new(
                        server.id.clone(),
                        self.inner.shared.event_debounce,
                        SERVER_EVENTS_CAPACITY,
                    );
                    (next, Arc::new(ServerCounters::new(events)))
                })
                .clone();
            let previous = self.inner.shared.server(&server.id);
            if let Some(expected) = over {
                match &previous {
                    None => return Err(PoolError::UnknownServer(server.id.clone())),
                    Some(previous) if !Arc::ptr_eq(previous, expected) => return Ok(false),
                    Some(_) => {}
                }
            }
            if let Some(previous) = &previous {
                // An endpoint that now points elsewhere starts with a fresh breaker and score.
                let mut health = counters.health.lock();
                let now = Instant::now();
                for (i, (old, new)) in previous.endpoints.iter().zip(&server.endpoints).enumerate()
                {
                    if old.url != new.url || old.transport != new.transport {
                        health.reset_endpoint(i, self.inner.shared.breaker, now);
                    }
                }
            }
            let entry = Arc::new(ServerEntry {
                index,
                base,
                id: server.id.clone(),
                endpoints: server.endpoints.into(),
                config: server.pool,
                strategy,
                generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
                counters,
                call_timeout: server.call_timeout,
                client: {
                    let mut client = self.inner.shared.client_config.clone();
                    if let Some(capabilities) = &server.capabilities {
                        client.capabilities = capabilities.clone();
                    }
                    client
                },
                capabilities: server.capabilities,
                headers: server.headers,
            });
            self.inner.shared.servers.rcu(|servers| {
                let mut servers = HashMap::clone(servers);
                servers.insert(entry.id.clone(), entry.clone());
                servers
            });
            entry
        };
        for key in self.all_keys() {
            if key.server_index == entry.index {
                key.reconfigure(&entry);
            }
        }
        self.inner.config_changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Replaces the pool configuration of a running server (strategy, sizes, timeouts) without
    /// a restart; leases out keep working.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`], [`PoolError::Config`]; nothing is applied then.
    pub fn set_pool_config(&self, server: &ServerId, config: PoolConfig) -> Result<(), PoolError> {
        // Sizes left at their defaults follow the ones set, as `ServerConfig::pool` does.
        let config = config.normalized();
        loop {
            let current = self
                .inner
                .shared
                .server(server)
                .ok_or_else(|| PoolError::UnknownServer(server.clone()))?;
            // A strategy instance given with the server (`ServerConfig::strategy`) stays; one
            // configuration names (built-in or registered) follows the new config.
            let named = current.strategy.kind().is_some()
                || self
                    .inner
                    .shared
                    .strategies
                    .contains_key(&current.config.strategy);
            let mut next = ServerConfig {
                id: current.id.clone(),
                endpoints: current.endpoints.to_vec(),
                pool: config.clone(),
                strategy: (!named).then(|| current.strategy.clone()),
                call_timeout: current.call_timeout,
                capabilities: current.capabilities.clone(),
                headers: current.headers.clone(),
            };
            if next.strategy.is_none() && current.config.strategy == next.pool.strategy {
                // Same strategy: keep the instance so keys keep their selectors.
                next.strategy = Some(current.strategy.clone());
            }
            // Another install won the race: apply over the newer entry.
            if self.install_over(next, current.base.clone(), Some(&current))? {
                return Ok(());
            }
        }
    }

    /// Saves `config` for `server` in the state backend and applies it here. Every other pool
    /// sharing the backend applies it too, without a restart (its watcher picks the change
    /// up), and a pool started later applies it at start.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`], [`PoolError::Config`] (nothing saved or applied), or
    /// [`PoolError::Backend`] when the backend is unreachable (nothing applied).
    pub async fn save_pool_config(
        &self,
        server: &ServerId,
        config: PoolConfig,
    ) -> Result<(), PoolError> {
        if self.inner.shared.server(server).is_none() {
            return Err(PoolError::UnknownServer(server.clone()));
        }
        let config = config.normalized();
        config.validate()?;
        let version = self.inner.backend.put_config(server, &config).await?;
        // Not applied when a newer save (by another pool) was applied meanwhile.
        let change = mcp_pool_traits::ConfigChange {
            server: server.clone(),
            config: Some(config),
            version,
        };
        self.apply_saved(change).map(drop)
    }

    /// Deletes the saved config of `server` from the state backend; every pool sharing the
    /// backend reverts the server to the configuration it was added with. Returns whether a
    /// saved config existed.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`] or [`PoolError::Backend`].
    pub async fn delete_saved_pool_config(&self, server: &ServerId) -> Result<bool, PoolError> {
        let current = self
            .inner
            .shared
            .server(server)
            .ok_or_else(|| PoolError::UnknownServer(server.clone()))?;
        let Some(version) = self.inner.backend.delete_config(server).await? else {
            // Nothing saved: back to the configuration as added all the same.
            self.set_pool_config(server, current.base.clone())?;
            return Ok(false);
        };
        let change = mcp_pool_traits::ConfigChange {
            server: server.clone(),
            config: None,
            version,
        };
        self.apply_saved(change)?;
        Ok(true)
    }

    /// A receiver that changes after every applied configuration change (added servers,
    /// `set_pool_config`, configs saved by any pool sharing the backend). Gateways use it to
    /// refresh what they show; tests use it to wait for a change without sleeping.
    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.config_changes.subscribe()
    }

    /// The current configuration of a server.
    pub fn server_config(&self, server: &ServerId) -> Option<PoolConfig> {
        self.inner.shared.server(server).map(|s| s.config.clone())
    }

    /// Acquires a session of `server` for `principal` (no headers are forwarded upstream).
    ///
    /// # Errors
    /// As [`acquire_with`](Self::acquire_with).
    pub fn acquire<'a>(&'a self, server: &'a ServerId, principal: Principal) -> Acquire<'a> {
        self.acquire_with(AcquireRequest::new(server).principal(principal))
    }

    /// Acquires a session: an idle one of the key (a hit), a new one when the key is below
    /// `max_size` (a miss), or the next one released, in FIFO order, within the server's
    /// acquire `timeout`. Cancel-safe: dropping the future leaks nothing.
    ///
    /// The returned [`Acquire`] future does nothing until polled; a hit completes on its first
    /// poll without allocating.
    ///
    /// # Errors
    /// Every message names the server; see [`PoolError`] for the shapes.
    /// - [`PoolError::UnknownServer`]: no server with this id was added.
    /// - [`PoolError::Closed`]: [`close`](Self::close) was called (also while waiting).
    /// - [`PoolError::Timeout`]: no session within the server's acquire `timeout`.
    /// - [`PoolError::Create`]: the session the acquire created could not be opened: the
    ///   endpoint URL (user-info redacted) and the cause in words (connection refused, DNS
    ///   failure, invalid URL, TLS, HTTP status with content type and body excerpt, a
    ///   non-MCP answer, connect timeout); [`TransportError::kind`] for its category.
    /// - [`PoolError::CircuitOpen`]: every endpoint of the transport has an open circuit
    ///   breaker (or its half-open probe is in flight), with the delay to retry in.
    /// - [`PoolError::NoEndpoint`]: the server has no endpoint over the requested transport.
    /// - [`PoolError::SessionLimit`], [`PoolError::UserLimit`], [`PoolError::KeyLimit`]: a
    ///   pool-wide cap (sessions, sessions of this user, keys) is reached with nothing idle
    ///   to close.
    ///
    /// [`TransportError::kind`]: mcp_pool_traits::TransportError::kind
    pub fn acquire_with<'a>(&'a self, request: AcquireRequest<'a>) -> Acquire<'a> {
        Acquire {
            state: AcquireState::Start {
                pool: self,
                request,
            },
        }
    }

    /// Acquires a session with `request` and sends `call` on it with `options` (see
    /// [`Lease::send`](crate::Lease::send)), the downstream request's headers
    /// ([`AcquireRequest::headers`]) travelling with the call unless `options` names others.
    /// What a gateway does per downstream request.
    ///
    /// A first attempt that provably never reached the server's handler is retried once, on
    /// another session, invisibly (counted in `mcp_pool_call_retries_total`):
    /// - HTTP 401 on a pooled session (the session is evicted; the retry sends the current
    ///   request's credentials);
    /// - HTTP 404 (the server expired the session, or restarted), or an HTTP 400 or id-less
    ///   JSON-RPC error naming the session as unknown (server-everything after a restart); a
    ///   refused connection; a session found closed, or reported lost, when the call was
    ///   handed to it (nothing was sent).
    ///
    /// Not on a server whose strategy binds conversations (sticky): its session held the
    /// conversation's state, so the error is returned and the conversation's next lease says
    /// [`is_rebound`](crate::Lease::is_rebound). Never a call that may have run (a reset after
    /// the request was sent, a timeout, a JSON-RPC error, a call in flight when its session's
    /// connection was lost).
    ///
    /// # Errors
    /// The acquire's errors (see [`acquire_with`](Self::acquire_with)), and
    /// [`PoolError::Call`] when the call failed.
    pub async fn call(
        &self,
        request: AcquireRequest<'_>,
        call: ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult, PoolError> {
        let options = match request.headers {
            Some(headers) if !options.has_headers() => options.headers(headers.clone()),
            _ => options,
        };
        let mut retried = false;
        loop {
            let lease = self.acquire_with(request).await?;
            if options.refuses_rebind() && lease.is_rebound() {
                return Err(PoolError::ConversationLost {
                    server: request.server.clone(),
                });
            }
            let (error, stage) = match lease.send_staged(call.clone(), options.clone()).await {
                Ok(result) => {
                    if let (Some(conversation), Some(affinity)) =
                        (options.pinned(), request.affinity)
                    {
                        lease.pin_affinity(affinity, conversation.clone());
                    }
                    return Ok(result);
                }
                Err(failed) => failed,
            };
            let reason = if retried || lease.binds() {
                None
            } else if stage == Stage::NotSent {
                Some(NotDelivered::SessionClosed.as_str())
            } else {
                match call_failure(&error) {
                    Some(CallFailure::Unauthorized) if lease.is_hit() => Some("unauthorized"),
                    Some(CallFailure::NotDelivered(why)) => Some(why.as_str()),
                    _ => None,
                }
            };
            let Some(reason) = reason else {
                return Err(PoolError::call(&lease, error));
            };
            tracing::debug!(
                key = %lease.key().short(),
                reason,
                "the call never reached the server: retrying it once on another session"
            );
            lease.mark_broken();
            lease.count_retry(reason);
            drop(lease);
            retried = true;
        }
    }

    /// The `*/list_changed` and `resources/updated` notifications of every session of
    /// `server`, debounced ([`PoolBuilder::event_debounce`](crate::PoolBuilder::event_debounce)):
    /// a gateway refreshes the server's catalog on each. `None` for an unknown server.
    pub fn server_events(
        &self,
        server: &ServerId,
    ) -> Option<tokio::sync::broadcast::Receiver<mcp_pool_traits::ServerEvent>> {
        self.inner
            .known_servers
            .lock()
            .get(server)
            .map(|(_, counters)| counters.events.subscribe())
    }

    /// The synchronous first attempt of [`Acquire`]: a hit returns the lease; anything else
    /// the rest of the acquire, as a boxed future.
    fn start<'a>(&'a self, request: AcquireRequest<'a>) -> Result<Started<'a>, PoolError> {
        if self.inner.shared.is_closed() {
            return Err(PoolError::Closed);
        }
        let headers = request.headers.unwrap_or(&EMPTY_HEADERS);
        let principal = request
            .principal
            .unwrap_or_else(|| Principal::new(request.user, headers, &self.inner.identity));
        let ctx = SelectContext {
            affinity: request.affinity,
        };
        Ok(match self.attempt(&request, principal, &ctx)? {
            FirstTry::Lease(lease) => Started::Lease(lease),
            slow => Started::Slow(Box::pin(
                self.acquire_slow(request, headers, principal, ctx, slow),
            )),
        })
    }

    /// One synchronous attempt: a hit returns the lease; anything else says what to do next.
    /// The hit path runs under read locks of the server and key maps and the key's mutex: no
    /// reference count, clock read or allocation beyond the lease's own.
    fn attempt(
        &self,
        request: &AcquireRequest<'_>,
        principal: Principal,
        ctx: &SelectContext,
    ) -> Result<FirstTry, PoolError> {
        let shared = &self.inner.shared;
        let servers = shared.servers.load();
        let server = servers
            .get(request.server)
            .ok_or_else(|| PoolError::UnknownServer(request.server.clone()))?;
        let transport = request
            .transport
            .unwrap_or_else(|| server.default_transport());
        let id = KeyId {
            server: server.index,
            principal,
            transport,
        };
        let keys = self.inner.keys.pin();
        let key_pool = match keys.get(&id) {
            Some(key_pool) => key_pool,
            None => {
                if keys.len() >= shared.limits.max_keys as usize && !self.evict_idle_key() {
                    return Err(PoolError::KeyLimit {
                        max_keys: shared.limits.max_keys,
                    });
                }
                let key = PoolKey::new(principal, server.id.clone(), transport);
                let new = Arc::new(KeyPool::new(key, shared.clone(), server.clone()));
                match keys.try_insert(id, new) {
                    Ok(inserted) => {
                        self.register_subject(inserted);
                        inserted
                    }
                    Err(occupied) => occupied.current,
                }
            }
        };
        Ok(match key_pool.try_acquire(server, ctx) {
            Ok(granted) => FirstTry::Lease(Lease::new(key_pool.clone(), granted)),
            Err(Pending::Removed) => FirstTry::Again,
            Err(Pending::Closed) => return Err(PoolError::Closed),
            Err(pending) => FirstTry::Slow(key_pool.clone(), server.clone(), pending),
        })
    }

    /// The rest of an acquire that was not a hit: create or wait, retried (after a key
    /// removal, an endpoint change under a creation, room made under a cap) within one
    /// deadline: `timeout` bounds the whole acquire.
    async fn acquire_slow(
        &self,
        request: AcquireRequest<'_>,
        headers: &HeaderMap,
        principal: Principal,
        ctx: SelectContext,
        mut next: FirstTry,
    ) -> Result<Lease, PoolError> {
        let mut clock: Option<(Instant, Instant)> = None;
        // What a creation may send upstream: the identity headers and the allow-listed ones
        // only, all of which are hashed into the key.
        let forwarded = self.inner.identity.forwarded_headers(headers);
        loop {
            let (key_pool, server, first) = match next {
                FirstTry::Lease(lease) => return Ok(lease),
                FirstTry::Again => {
                    next = self.attempt(&request, principal, &ctx)?;
                    continue;
                }
                FirstTry::Slow(key_pool, server, first) => (key_pool, server, first),
            };
            let (started, deadline) = *clock.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + server.config.timeout)
            });
            let args = AcquireArgs {
                ctx,
                started,
                headers: &forwarded,
                deadline,
            };
            match key_pool.acquire_slow(first, args).await {
                Ok(granted) => return Ok(Lease::new(key_pool, granted)),
                Err(AcquireError::Again) => {}
                Err(AcquireError::Capped(cap)) => {
                    if !self.make_room(cap, &key_pool).await {
                        return Err(self.cap_error(cap, &key_pool));
                    }
                }
                Err(AcquireError::Pool(error)) => return Err(error),
            }
            next = self.attempt(&request, principal, &ctx)?;
        }
    }

    /// Applies one saved config (or its deletion: the server's configuration as added) if the
    /// pool knows the server and has not applied this version or a newer one. `Ok(true)` when the
    /// version was new; the version is recorded even when its config is invalid (`Err`), so that
    /// it is reported once, not at every re-list.
    pub(crate) fn apply_saved(
        &self,
        change: mcp_pool_traits::ConfigChange,
    ) -> Result<bool, PoolError> {
        // Held while applying: a local save and the watcher apply one server's versions in order.
        let mut applied = self.inner.saved_versions.lock();
        if applied
            .get(&change.server)
            .is_some_and(|&version| change.version <= version)
        {
            return Ok(false);
        }
        // A server this pool does not know (yet): nothing recorded, so that a re-list applies the
        // saved config once the server is added.
        let Some(current) = self.inner.shared.server(&change.server) else {
            return Ok(false);
        };
        applied.insert(change.server.clone(), change.version);
        let config = change.config.unwrap_or_else(|| current.base.clone());
        if config != current.config {
            self.set_pool_config(&change.server, config)?;
        }
        Ok(true)
    }

    /// The keys with idle sessions, least recently used last (where a pool-wide cap takes room
    /// from), from every key: the rebuild when the maintenance pass's list is used up.
    fn candidates(&self) -> Vec<Weak<KeyPool>> {
        let keys = self.all_keys();
        by_last_use(
            keys.iter()
                .filter_map(|k| k.idle_since().map(|at| (at, Arc::downgrade(k))))
                .collect(),
        )
    }

    /// Records a new key under its subject (the user limit takes room from these keys only).
    fn register_subject(&self, key: &Arc<KeyPool>) {
        if let Some(subject) = key.subject() {
            let mut subjects = self.inner.subjects.lock();
            let keys = subjects.entry(subject).or_default();
            keys.retain(|k| k.strong_count() > 0);
            keys.push(Arc::downgrade(key));
        }
    }

    /// Closes one idle session to make room under `cap`: the least recently used one of the
    /// same user for the user limit (among that user's keys only), of the least recently used
    /// key with idle sessions for the pool-wide cap. Returns whether one was closed.
    async fn make_room(&self, cap: Cap, requester: &KeyPool) -> bool {
        let evicted = match cap {
            Cap::User => {
                let Some(subject) = requester.subject() else {
                    return false;
                };
                let keys: Vec<Arc<KeyPool>> = self
                    .inner
                    .subjects
                    .lock()
                    .get(&subject)
                    .map(|keys| keys.iter().filter_map(Weak::upgrade).collect())
                    .unwrap_or_default();
                keys.iter()
                    .find_map(|k| k.evict_one_idle().map(|slot| (k.subject(), slot)))
            }
            Cap::Sessions => {
                self.take_candidate(|k| k.evict_one_idle().map(|slot| (k.subject(), slot)))
            }
        };
        match evicted {
            Some((Some(owner), Some(slot))) => {
                if let Some(slots) = self.inner.shared.user_slots.get() {
                    slots.release(&owner, &slot).await;
                }
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Applies `f` to the least recently used candidate keys (see [`PoolInner::candidates`])
    /// until it returns `Some`; a key it returns `None` for leaves the list. When the list
    /// runs out it is rebuilt once from every key (amortized over the evictions it serves).
    fn take_candidate<T>(&self, mut f: impl FnMut(&Arc<KeyPool>) -> Option<T>) -> Option<T> {
        for rebuilt in [false, true] {
            if rebuilt {
                let fresh = self.candidates();
                *self.inner.candidates.lock() = fresh;
            }
            loop {
                let Some(key) = self.inner.candidates.lock().last().cloned() else {
                    break;
                };
                if let Some(key) = key.upgrade()
                    && let Some(found) = f(&key)
                {
                    return Some(found);
                }
                let mut candidates = self.inner.candidates.lock();
                if candidates.last().is_some_and(|k| k.ptr_eq(&key)) {
                    candidates.pop();
                }
            }
        }
        None
    }

    fn cap_error(&self, cap: Cap, requester: &KeyPool) -> PoolError {
        let limits = &self.inner.shared.limits;
        match cap {
            Cap::Sessions => PoolError::SessionLimit {
                max_sessions: limits.max_sessions,
            },
            Cap::User => PoolError::UserLimit {
                user: requester
                    .subject()
                    .map_or_else(|| "anonymous".into(), |s| s.short()),
                limit: limits.user_limit,
            },
        }
    }

    /// Removes the least recently used idle key, with its sessions, to make room under the
    /// key cap.
    fn evict_idle_key(&self) -> bool {
        let keys = &self.inner.keys;
        self.take_candidate(|k| {
            k.try_remove(|| unlist(keys, k), None, EvictionReason::KeyEvicted)
                .then_some(())
        })
        .is_some()
    }

    /// Checks that each endpoint of `server` can serve at all, before any user asks: one
    /// connection per endpoint with the server's own headers and client — the transport's
    /// connect, `initialize` (or `server/discover`) included, within the create timeout — then
    /// closed. A failure is recorded as the endpoint's last error (shown by
    /// [`stats`](Self::stats), and by a gateway's health view), not in its breaker or score: no
    /// request was refused. Users' keys may send other headers (their credentials), so a check
    /// that passes does not vouch for every key.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`].
    pub async fn check_server(&self, server: &ServerId) -> Result<Vec<EndpointCheck>, PoolError> {
        let entry = self
            .inner
            .shared
            .server(server)
            .ok_or_else(|| PoolError::UnknownServer(server.clone()))?;
        let timeout = self.inner.shared.create_timeout;
        let checks = entry.endpoints.iter().enumerate().map(|(i, endpoint)| {
            let entry = entry.clone();
            async move {
                let started = Instant::now();
                let connected = match self.inner.shared.transports.get(&endpoint.transport) {
                    None => Err(mcp_pool_traits::TransportError::Unsupported(
                        endpoint.transport,
                    )),
                    Some(transport) => {
                        let handler =
                            mcp_pool_traits::SessionHandler::new(entry.client.clone(), None);
                        let request = mcp_pool_traits::ConnectRequest::new(
                            endpoint,
                            &entry.headers,
                            timeout,
                            handler,
                        );
                        tokio::time::timeout(timeout, transport.connect(request))
                            .await
                            .unwrap_or_else(|_| {
                                Err(mcp_pool_traits::TransportError::timeout(
                                    &endpoint.url,
                                    timeout,
                                ))
                            })
                    }
                };
                let outcome = match connected {
                    Ok(session) => {
                        let id = self.inner.shared.session_id();
                        self.inner
                            .shared
                            .close_session(session, id, EvictionReason::Closed);
                        Ok(started.elapsed())
                    }
                    Err(error) => {
                        let words = mcp_pool_transports::failure_cause(&error);
                        let now = Instant::now();
                        let mut health = entry.counters.health.lock();
                        health.ensure(entry.endpoints.len(), self.inner.shared.breaker, now);
                        health.record_error(i, &words, now);
                        Err(words)
                    }
                };
                EndpointCheck {
                    url: mcp_pool_traits::redact_url(&endpoint.url).into_owned(),
                    transport: endpoint.transport,
                    outcome,
                }
            }
        });
        Ok(futures::future::join_all(checks).await)
    }

    /// Where the conversation `downstream_session` of `principal` on `server` stands with the
    /// server's strategy: bound to a live upstream session, [lost](AffinityState::Lost) with
    /// its session (its server-side state is gone: the caller must tell its client, as an MCP
    /// gateway does with HTTP 404, instead of continuing on a fresh session), or unknown (not
    /// bound, or a strategy that does not bind). `None` when the pool has no such server or no
    /// key for the principal (a key is dropped with its last session).
    pub fn affinity_state(
        &self,
        server: &ServerId,
        principal: Principal,
        downstream_session: &str,
    ) -> Option<AffinityState> {
        let ctx = SelectContext {
            affinity: Some(AffinityKey::downstream_session(downstream_session)),
        };
        let entry = self.inner.shared.server(server)?;
        let keys = self.inner.keys.pin();
        let mut state = None;
        for endpoint in entry.endpoints.iter() {
            let id = KeyId {
                server: entry.index,
                principal,
                transport: endpoint.transport,
            };
            if let Some(key) = keys.get(&id) {
                match key.affinity_state(&ctx) {
                    AffinityState::Unknown => state = state.or(Some(AffinityState::Unknown)),
                    known => return Some(known),
                }
            }
        }
        state
    }

    /// Ends the sticky binding of a downstream session on `server` and retires its upstream
    /// session (it is never handed to another affinity), and ends its pin
    /// ([`Lease::pin`](crate::Lease::pin); a pinned session is shared, so it stays). Call it
    /// when the downstream session ends. Returns whether a binding or a pin existed.
    pub fn unbind(
        &self,
        server: &ServerId,
        principal: Principal,
        downstream_session: &str,
    ) -> bool {
        let ctx = SelectContext {
            affinity: Some(AffinityKey::downstream_session(downstream_session)),
        };
        let Some(entry) = self.inner.shared.server(server) else {
            return false;
        };
        let keys = self.inner.keys.pin();
        // Every transport's key is unbound (no short circuit); each is one map lookup.
        let mut found = false;
        let mut kinds: Vec<TransportKind> = entry.endpoints.iter().map(|e| e.transport).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for transport in kinds {
            let id = KeyId {
                server: entry.index,
                principal,
                transport,
            };
            if let Some(key) = keys.get(&id) {
                found |= key.unbind(&ctx);
            }
        }
        found
    }

    /// Closes every session but keeps the pool usable. Idle sessions close now; sessions with
    /// leases out close when released and count against `max_size` until then, so a drain
    /// never lets more than `max_size` sessions exist.
    pub fn drain(&self) {
        for key in self.all_keys() {
            key.drain();
        }
    }

    /// [`drain`](Self::drain) for one server: closes its sessions (idle ones now, leased ones
    /// when released) and keeps it usable. The gateway's `POST /servers/{id}/pool/drain`.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`] when `server` is not configured.
    pub fn drain_server(&self, server: &ServerId) -> Result<(), PoolError> {
        for key in self.server_keys(server)? {
            key.drain();
        }
        Ok(())
    }

    /// The sessions of `server` now, every key's (the gateway's
    /// `GET /servers/{id}/pool/sessions`), ordered by key label then session number.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`] when `server` is not configured.
    pub fn sessions(&self, server: &ServerId) -> Result<Vec<SessionInfo>, PoolError> {
        self.server_keys(server).map(|keys| {
            let now = Instant::now();
            let mut sessions: Vec<_> = keys.iter().flat_map(|k| k.sessions(now)).collect();
            sessions.sort_by(|a, b| (&a.key, a.session).cmp(&(&b.key, b.session)));
            sessions
        })
    }

    /// [`drain_server`](Self::drain_server), then zeroes the server's counters in
    /// [`ServerStats`] (hits, misses, acquisitions, releases, timeouts, evictions, creation
    /// failures, rebinds, call retries, circuit refusals). The health score, circuit breakers
    /// and Prometheus counters are kept (Prometheus counters never go down). The gateway's
    /// `POST /servers/{id}/pool/reset`.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`] when `server` is not configured.
    pub fn reset_server(&self, server: &ServerId) -> Result<(), PoolError> {
        let keys = self.server_keys(server)?;
        for key in &keys {
            key.drain();
            key.reset_counters();
        }
        if let Some(entry) = self.inner.shared.server(server) {
            *entry.counters.retired.lock() = Default::default();
            entry.counters.health.lock().circuit_refusals = 0;
        }
        Ok(())
    }

    /// The keys of `server` alive now.
    fn server_keys(&self, server: &ServerId) -> Result<Vec<Arc<KeyPool>>, PoolError> {
        if self.inner.shared.server(server).is_none() {
            return Err(PoolError::UnknownServer(server.clone()));
        }
        let mut keys = self.all_keys();
        keys.retain(|k| k.key.server == *server);
        Ok(keys)
    }

    /// Removes `server`: it is forgotten at once (later acquires fail with
    /// [`PoolError::UnknownServer`], stats no longer list it) and its keys are drained and
    /// removed — idle sessions close now, leased ones when released, queued acquires are woken
    /// and look the server up again. The gateway's `DELETE /servers/{id}`. Its saved config,
    /// if any, stays in the backend. Adding the server again later starts it afresh (its
    /// saved config applies at the next re-list, as for a server added after start).
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`] when `server` is not configured.
    pub fn remove_server(&self, server: &ServerId) -> Result<(), PoolError> {
        let mut found = false;
        {
            // Serialized with installs, so a concurrent add_server is either undone or wins.
            let _installs = self.inner.known_servers.lock();
            self.inner.shared.servers.rcu(|servers| {
                let mut servers = HashMap::clone(servers);
                found = servers.remove(server).is_some();
                servers
            });
        }
        if !found {
            return Err(PoolError::UnknownServer(server.clone()));
        }
        // Forgotten as never seen: if added again, its saved config applies as at start.
        self.inner.saved_versions.lock().remove(server);
        let keys = self.inner.keys.pin();
        for key in self.all_keys() {
            if key.key.server == *server {
                // Only this key object: a newer one under the same id is removed in its turn.
                let _ = keys.remove_if(&KeyId::of(&key), |_, k| Arc::ptr_eq(k, &key));
                key.close();
            }
        }
        self.inner.config_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Closes every session and refuses new acquires; queued acquires fail with
    /// [`PoolError::Closed`]. Returns once every session without a lease out is closed on its
    /// server (streamable HTTP: DELETE sent) — sessions still being created or health-checked
    /// included: `close()` waits for them to finish and closes them. Sessions with leases out
    /// close when released.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        let keys = self.all_keys();
        for key in &keys {
            key.close();
        }
        self.inner.keys.pin().clear();
        self.inner.candidates.lock().clear();
        self.inner.subjects.lock().clear();
        shared.closing.close();
        shared.closing.wait().await;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// The state backend shared with other workers.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.inner.backend
    }

    /// A snapshot of every server and key.
    pub fn stats(&self) -> PoolStats {
        let keys = self.all_keys();
        let servers: Vec<Arc<ServerEntry>> = {
            let mut s: Vec<_> = self.inner.shared.servers.load().values().cloned().collect();
            s.sort_by(|a, b| a.id.cmp(&b.id));
            s
        };
        let mut per_server: HashMap<&ServerId, Vec<_>> = HashMap::new();
        for key in &keys {
            per_server
                .entry(&key.key.server)
                .or_default()
                .push(key.stats());
        }
        let servers: Vec<ServerStats> = servers
            .iter()
            .map(|s| {
                let mut k = per_server.remove(&s.id).unwrap_or_default();
                k.sort_by(|a, b| a.key.cmp(&b.key));
                ServerStats::new(s, k)
            })
            .collect();
        PoolStats {
            keys: keys.len(),
            sessions_total: servers.iter().map(|s| s.sessions_total).sum(),
            servers,
        }
    }

    pub(crate) fn all_keys(&self) -> Vec<Arc<KeyPool>> {
        self.inner.keys.pin().values().cloned().collect()
    }
}

/// What [`Pool::check_server`] found for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointCheck {
    /// The endpoint's URL, user-info and secret query values redacted.
    pub url: String,
    /// Its transport.
    pub transport: TransportKind,
    /// How long connecting and initializing took, or why it failed, in words.
    pub outcome: Result<std::time::Duration, String>,
}
