//! [`Pool`]: the public face of the engine.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use http::HeaderMap;
use mcp_pool_traits::{
    AffinityKey, EvictionReason, IdentityConfig, PoolConfig, PoolKey, Principal, SelectContext,
    ServerId, StateBackend, Strategy, TransportKind,
};
use parking_lot::RwLock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Lease, PoolBuilder, PoolError, ServerConfig,
    key_pool::{AcquireArgs, AcquireError, KeyPool},
    server::{ServerCounters, ServerEntry},
    shared::Shared,
    stats::{PoolStats, ServerStats},
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
#[derive(Debug, Clone, Copy)]
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
    /// is given) and they are forwarded upstream when a session is created, internal ones
    /// removed.
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

/// A pool of initialized upstream MCP sessions, keyed by (user, identity, server, transport).
///
/// Cheap to clone (an `Arc`). Build one with [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) inner: Arc<PoolInner>,
}

#[derive(Debug)]
pub(crate) struct PoolInner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) keys: RwLock<HashMap<PoolKey, Arc<KeyPool>>>,
    pub(crate) identity: IdentityConfig,
    pub(crate) backend: Option<Arc<dyn StateBackend>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) counters_by_server: RwLock<HashMap<ServerId, Arc<ServerCounters>>>,
    pub(crate) generation: std::sync::atomic::AtomicU64,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

static EMPTY_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl Pool {
    /// A builder with the defaults of DESIGN §6 and the streamable HTTP transport.
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
        server.validate()?;
        let strategy: Arc<dyn Strategy> = match &server.strategy {
            Some(custom) => custom.clone(),
            None => mcp_pool_strategies::builtin(server.pool.strategy).ok_or_else(|| {
                PoolError::InvalidServer {
                    server: server.id.clone(),
                    message: format!(
                        "strategy {} is not available in this version",
                        server.pool.strategy
                    ),
                }
            })?,
        };
        let counters = self
            .inner
            .counters_by_server
            .write()
            .entry(server.id.clone())
            .or_default()
            .clone();
        let entry = ServerEntry {
            id: server.id.clone(),
            endpoints: server.endpoints.into(),
            config: server.pool,
            strategy,
            generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            counters,
        };
        self.inner
            .shared
            .servers
            .write()
            .insert(server.id, Arc::new(entry));
        Ok(())
    }

    /// Replaces the pool configuration of a running server (strategy, sizes, timeouts) without
    /// a restart; leases out keep working.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`], [`PoolError::Config`]; nothing is applied then.
    pub fn set_pool_config(&self, server: &ServerId, config: PoolConfig) -> Result<(), PoolError> {
        let current = self
            .inner
            .shared
            .server(server)
            .ok_or_else(|| PoolError::UnknownServer(server.clone()))?;
        let custom = current
            .strategy
            .kind()
            .is_none()
            .then(|| current.strategy.clone());
        let mut next = ServerConfig {
            id: current.id.clone(),
            endpoints: current.endpoints.to_vec(),
            pool: config,
            strategy: custom,
        };
        if next.strategy.is_none() && current.config.strategy == next.pool.strategy {
            // Same built-in strategy: keep the instance so keys keep their selectors.
            next.strategy = Some(current.strategy.clone());
        }
        self.add_server(next)
    }

    /// The current configuration of a server.
    pub fn server_config(&self, server: &ServerId) -> Option<PoolConfig> {
        self.inner.shared.server(server).map(|s| s.config.clone())
    }

    /// Acquires a session of `server` for `principal` (no headers are forwarded upstream).
    ///
    /// # Errors
    /// As [`acquire_with`](Self::acquire_with).
    pub async fn acquire(
        &self,
        server: &ServerId,
        principal: Principal,
    ) -> Result<Lease, PoolError> {
        self.acquire_with(AcquireRequest::new(server).principal(principal))
            .await
    }

    /// Acquires a session: an idle one of the key (a hit), a new one when the key is below
    /// `max_size` (a miss), or the next one released, in FIFO order, within the server's
    /// acquire `timeout`. Cancel-safe: dropping the future leaks nothing.
    ///
    /// # Errors
    /// [`PoolError::UnknownServer`], [`PoolError::Timeout`] (naming the server),
    /// [`PoolError::Create`] when the session could not be opened, [`PoolError::NoEndpoint`]
    /// when the server has no endpoint over the transport, [`PoolError::Closed`].
    pub async fn acquire_with(&self, request: AcquireRequest<'_>) -> Result<Lease, PoolError> {
        let started = Instant::now();
        let shared = &self.inner.shared;
        if shared.is_closed() {
            return Err(PoolError::Closed);
        }
        let server = shared
            .server(request.server)
            .ok_or_else(|| PoolError::UnknownServer(request.server.clone()))?;
        let headers = request.headers.unwrap_or(&EMPTY_HEADERS);
        let principal = request
            .principal
            .unwrap_or_else(|| Principal::new(request.user, headers, &self.inner.identity));
        let transport = request
            .transport
            .unwrap_or_else(|| server.default_transport());
        let key = PoolKey::new(principal, server.id.clone(), transport);
        let args = AcquireArgs {
            ctx: SelectContext {
                affinity: request.affinity,
            },
            headers,
            deadline: started + server.config.timeout,
        };
        loop {
            let key_pool = self.key_pool(&key, &server);
            match key_pool.acquire(&server, args).await {
                Ok(lease) => {
                    key_pool.record_acquire_time(started);
                    return Ok(lease);
                }
                Err(AcquireError::Removed) => continue,
                Err(AcquireError::Pool(error)) => {
                    key_pool.record_acquire_time(started);
                    return Err(error);
                }
            }
        }
    }

    fn key_pool(&self, key: &PoolKey, server: &Arc<ServerEntry>) -> Arc<KeyPool> {
        if let Some(k) = self.inner.keys.read().get(key) {
            return k.clone();
        }
        let mut keys = self.inner.keys.write();
        keys.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeyPool::new(
                    key.clone(),
                    self.inner.shared.clone(),
                    server.clone(),
                ))
            })
            .clone()
    }

    /// Ends the sticky binding of a downstream session on `server` and retires its upstream
    /// session (it is never handed to another affinity). Call it when the downstream session
    /// ends. Returns whether a binding existed.
    pub fn unbind(
        &self,
        server: &ServerId,
        principal: Principal,
        downstream_session: &str,
    ) -> bool {
        let ctx = SelectContext {
            affinity: Some(AffinityKey::downstream_session(downstream_session)),
        };
        let keys: Vec<Arc<KeyPool>> = self
            .inner
            .keys
            .read()
            .iter()
            .filter(|(k, _)| &k.server == server && k.principal() == principal)
            .map(|(_, v)| v.clone())
            .collect();
        keys.iter().fold(false, |found, k| k.unbind(&ctx) || found)
    }

    /// Closes every session but keeps the pool usable. Idle sessions close now; sessions with
    /// leases out close when released and count against `max_size` until then, so a drain
    /// never lets more than `max_size` sessions exist (DESIGN §2.2).
    pub fn drain(&self) {
        for key in self.all_keys() {
            key.retire_all(EvictionReason::Drained, false);
        }
    }

    /// Closes every session and refuses new acquires; queued acquires fail with
    /// [`PoolError::Closed`]. Returns once every idle session is closed on its server
    /// (streamable HTTP: DELETE sent); sessions with leases out close when released.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        let keys: Vec<Arc<KeyPool>> = self.inner.keys.write().drain().map(|(_, v)| v).collect();
        for key in keys {
            key.retire_all(EvictionReason::Closed, true);
        }
        shared.closing.close();
        shared.closing.wait().await;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// The state backend shared with other workers.
    pub fn backend(&self) -> Option<&Arc<dyn StateBackend>> {
        self.inner.backend.as_ref()
    }

    /// A snapshot of every server and key.
    pub fn stats(&self) -> PoolStats {
        let keys = self.all_keys();
        let servers: Vec<Arc<ServerEntry>> = {
            let mut s: Vec<_> = self.inner.shared.servers.read().values().cloned().collect();
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
                ServerStats::new(
                    s.id.clone(),
                    s.strategy.name().to_owned(),
                    s.pools(),
                    &s.counters,
                    k,
                )
            })
            .collect();
        PoolStats {
            keys: keys.len(),
            sessions_total: servers.iter().map(|s| s.sessions_total).sum(),
            servers,
        }
    }

    pub(crate) fn all_keys(&self) -> Vec<Arc<KeyPool>> {
        self.inner.keys.read().values().cloned().collect()
    }
}
