//! The server registry: servers created, replaced and deleted through the REST API, persisted
//! in the pool's [`StateBackend`](mcp_pool::StateBackend) as [`ServerRecord`]s, and applied
//! to the [`Pool`].
//!
//! # Where servers come from
//! The registry starts from the servers of the configuration file (and `--demo`); the backend
//! holds what the API changed. At start, [`Registry::load`] takes every file server, then every
//! record the backend holds:
//! for an id the backend has ever held (a record, or the tombstone of a delete) the backend
//! wins, so an API change — a delete included — survives restarts, while a file server nobody
//! touched through the API follows the file (editing the file and restarting takes effect).
//! File servers are not written to the backend until the API changes them.
//!
//! # Disabled servers
//! A server with `enabled: false` keeps its record (listed by `GET /servers`, read by
//! `GET /servers/{id}`) but has no pool: the pool routes (`/servers/{id}/pool/...`, and the
//! MCP routes) answer it as an unknown server, 404 `Server not found`. Its sessions are
//! drained when it is disabled.
//!
//! While it is disabled its record alone holds its pool config: [`Registry::update`] hands
//! the change the config in force (a config saved through `PUT /servers/{id}/pool/config`
//! included), so a record written on disabling carries it, and the saved config is deleted
//! then. Enabling the server again runs the record's config: nothing an operator set is lost
//! on the way, nor overridden by a saved config older than the record.
//!
//! # Settings only the file sets
//! A `[[servers]]` table's `call_timeout` and `client_capabilities` are not part of a record
//! ([`FileSettings`]): the registry keeps them per id from the file (at start and at each
//! reload) and applies them to the server of that id whatever the API changed, so that a
//! replaced, disabled and enabled, or restarted server keeps them.
//!
//! # Drains
//! Replacing a record drains the server's pool when the way to reach the upstream changed
//! (an endpoint's URL, transport or weight, or the credentials reference:
//! [`ServerRecord::same_connection`]); a change of `name` or `enabled` alone does not touch
//! the pool's sessions (disabling removes the pool, see above).
//!
//! # The gateway's token upstream
//! With gateway auth on, a downstream request's `Authorization` header carries the gateway's
//! JWT. It is sent upstream only to servers whose record says so
//! ([`ServerRecord::forward_token`], default `false`): then it is part of the upstream identity
//! (a rotated token opens new upstream sessions, as a credential sent upstream must be part of
//! the pool key: two tokens never share an upstream session), while the downstream session stays bound to the JWT's user.
//!
//! # Several workers
//! Each worker writes through the shared backend, which gives every put and delete a version
//! increasing per server. The registry remembers per server the last version it applied, and
//! [`Registry::apply_change`] applies another worker's change (delivered by
//! [`watch_servers`](mcp_pool::StateBackend::watch_servers), or found by a re-list, see
//! [`crate::workers`]) only when its version is above that: its own writes, duplicates and
//! re-lists are no-ops, and a late notification never reverts a newer record. A change made
//! elsewhere is applied, never written back: the worker that made it saved what had to be
//! saved (a changed `pool` included, which reaches this worker's pool as a saved config).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use mcp_pool::{
    DEFAULT_CALL_TIMEOUT, Pool, PoolConfig, PoolError, ServerConfig, ServerId,
    rmcp::model::ClientCapabilities,
    traits::{Access, BackendError, ServerChange, ServerRecord},
};

use crate::{auth::Claims, policy::CredentialsPolicy};

/// What a server's `[[servers]]` table in the configuration file sets beyond its record (see
/// [the module docs](self), "Settings only the file sets"). A server the file does not name
/// has the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSettings {
    /// How long a call may take ([`ServerConfig::call_timeout`]; default
    /// [`DEFAULT_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
    /// What its sessions advertise in `initialize`
    /// ([`ServerConfig::client_capabilities`]; `None`: the pool's client config, which
    /// advertises none).
    pub client_capabilities: Option<ClientCapabilities>,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            client_capabilities: None,
        }
    }
}

impl FileSettings {
    /// The settings `server` (a server of the file) was given.
    pub fn of(server: &ServerConfig) -> Self {
        Self {
            call_timeout: server.configured_call_timeout(),
            client_capabilities: server.configured_client_capabilities().cloned(),
        }
    }

    /// The names of the capabilities advertised, as the file spells them: `sampling`,
    /// `elicitation`, `roots`, in that order.
    pub fn capability_names(&self) -> Vec<&'static str> {
        let Some(c) = &self.client_capabilities else {
            return Vec::new();
        };
        [
            ("sampling", c.sampling.is_some()),
            ("elicitation", c.elicitation.is_some()),
            ("roots", c.roots.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// `config` with these settings applied.
    fn apply_to(&self, config: ServerConfig) -> ServerConfig {
        let config = config.call_timeout(self.call_timeout);
        match &self.client_capabilities {
            Some(capabilities) => config.client_capabilities(capabilities.clone()),
            None => config,
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No server with this id.
    #[error("Server not found: {0}")]
    NotFound(ServerId),
    /// A server with this id exists already.
    #[error("Server already exists: {0}")]
    Exists(ServerId),
    /// The pool rejected the record (its config) or failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A record's credentials name an environment variable this gateway may not read: one the
    /// operator did not allow (`CREDENTIALS_ENV_ALLOWED`), one of the gateway's own settings,
    /// or one that is not set. The words are the same for each.
    #[error(
        "server {server}: credentials.env = {env:?} is not available: it must name a variable \
         the operator allowed (CREDENTIALS_ENV_ALLOWED) that is set in the gateway's \
         environment; the gateway's own settings are never available"
    )]
    Credentials {
        /// The server.
        server: ServerId,
        /// The variable's name.
        env: String,
    },
    /// The state backend failed; nothing was applied.
    #[error("state backend unavailable: {0}")]
    Backend(#[from] BackendError),
}

/// The servers known to this gateway: the records, and the pool they are applied to.
/// Cheap to clone; clones share the records. Writes are serialized in this process.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
    records: Arc<tokio::sync::Mutex<BTreeMap<ServerId, ServerRecord>>>,
    /// The servers whose records forward the gateway's token, read per downstream request
    /// without awaiting; rebuilt from `records` after each change.
    forwarding: Arc<parking_lot::RwLock<HashSet<ServerId>>>,
    /// The access lists of the servers that have one, read per downstream request without
    /// awaiting; rebuilt from `records` after each change.
    access: Arc<parking_lot::RwLock<HashMap<ServerId, Access>>>,
    /// The variables credentials may name.
    credentials: Arc<CredentialsPolicy>,
    /// Whether servers added or reconnected are checked in the background
    /// ([`check_servers`](Self::check_servers)).
    checks: Arc<std::sync::atomic::AtomicBool>,
    /// The file's settings of the servers it names (module docs, "Settings only the file
    /// sets"); replaced by a reload.
    files: Arc<parking_lot::RwLock<HashMap<ServerId, FileSettings>>>,
    /// Per server, the version of the last backend change applied (module docs, "Several
    /// workers"). Written only while `records` is locked.
    versions: Arc<parking_lot::Mutex<HashMap<ServerId, u64>>>,
}

/// What [`Registry::apply_change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing: the change's version was applied already.
    Nothing,
    /// The record was created or replaced, and its server is served.
    Served,
    /// The record was deleted or disabled: the server has no pool any more, and its
    /// downstream sessions should end.
    Removed,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The record of a server given in the configuration file: enabled, named after its id, no
/// credentials.
pub fn file_record(server: &ServerConfig) -> ServerRecord {
    ServerRecord {
        id: server.id().clone(),
        name: server.id().to_string(),
        endpoints: server.endpoints().to_vec(),
        pool: server.pool_config().clone(),
        enabled: true,
        credentials: None,
        forward_token: false,
        access: None,
    }
}

impl Registry {
    /// The registry of `pool`, whose servers are `from_file` (the file's, already in the pool),
    /// then the backend's records applied over them (see [the module docs](self)).
    ///
    /// # Errors
    /// [`RegistryError::Backend`] when the backend cannot list its records;
    /// [`RegistryError::Pool`] when a stored record is rejected by the pool.
    pub async fn load(pool: Pool, from_file: &[ServerConfig]) -> Result<Self, RegistryError> {
        Self::load_with(pool, from_file, CredentialsPolicy::default()).await
    }

    /// As [`load`](Self::load), with the variables `credentials` allows readable by records'
    /// credentials. A stored record whose credentials are not available is kept (listed, and
    /// open to `PUT` and `DELETE`) but not served, with an error logged: one bad record never
    /// stops the gateway.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub async fn load_with(
        pool: Pool,
        from_file: &[ServerConfig],
        credentials: CredentialsPolicy,
    ) -> Result<Self, RegistryError> {
        let mut records: BTreeMap<ServerId, ServerRecord> = from_file
            .iter()
            .map(|s| (s.id().clone(), file_record(s)))
            .collect();
        let registry = Self {
            pool,
            records: Arc::default(),
            forwarding: Arc::default(),
            access: Arc::default(),
            credentials: Arc::new(credentials),
            files: Arc::new(parking_lot::RwLock::new(
                from_file
                    .iter()
                    .map(|s| (s.id().clone(), FileSettings::of(s)))
                    .collect(),
            )),
            checks: Arc::default(),
            versions: Arc::default(),
        };
        for change in registry.pool.backend().list_servers().await? {
            registry
                .versions
                .lock()
                .insert(change.server.clone(), change.version);
            let old = records.remove(&change.server);
            match change.record {
                Some(record) => {
                    match registry.apply(old.as_ref(), &record, true).await {
                        Ok(()) => {}
                        Err(error @ RegistryError::Credentials { .. }) => {
                            tracing::error!(
                                "{error}; the server is not served until its record is replaced"
                            );
                            registry.forget(&record.id);
                        }
                        Err(error) => return Err(error),
                    }
                    records.insert(change.server, record);
                }
                None => registry.forget(&change.server),
            }
        }
        registry.index(&records);
        *registry.records.lock().await = records;
        Ok(registry)
    }

    /// The pool the records are applied to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether requests to `id` carry the gateway's token upstream
    /// ([`ServerRecord::forward_token`]).
    pub fn forwards_token(&self, id: &ServerId) -> bool {
        self.forwarding.read().contains(id)
    }

    /// Checks every served server's endpoints now, in the background, and from now on each
    /// server added or whose endpoints change ([`Pool::check_server`]): one line per server
    /// in the log, and a failure as the endpoint's last error in `/servers/pools/health`, so
    /// that a server that cannot serve is known before its first client.
    pub async fn check_servers(&self) {
        self.checks
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for record in self.records.lock().await.values().filter(|r| r.enabled) {
            self.check(&record.id);
        }
    }

    /// Checks `server` in the background, when checks are on ([`check_servers`](Self::check_servers)
    /// turned them on); the registry does so itself for servers it adds or reconnects.
    pub fn check(&self, server: &ServerId) {
        if !self.checks.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (pool, server) = (self.pool.clone(), server.clone());
        tokio::spawn(async move {
            let Ok(checks) = pool.check_server(&server).await else {
                return; // removed meanwhile
            };
            let failed: Vec<String> = checks
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let why = c.outcome.as_ref().err()?;
                    Some(format!("endpoints[{i}] {} ({}): {why}", c.url, c.transport))
                })
                .collect();
            if failed.is_empty() {
                tracing::info!(
                    "server {server}: every endpoint ({}) connected and initialized",
                    checks.len()
                );
            } else {
                tracing::warn!(
                    "server {server}: {} of {} endpoints cannot serve: {}",
                    failed.len(),
                    checks.len(),
                    failed.join("; ")
                );
            }
        });
    }

    /// Whether the caller with `claims` may use server `id` (its MCP routes and what the REST
    /// API says of it): an admin always; anyone when the record has no access list; otherwise
    /// a user it names or a member of a group it names. `claims` is `None` only with auth off,
    /// where every caller is the operator.
    pub fn may_use(&self, id: &ServerId, claims: Option<&Claims>) -> bool {
        let Some(claims) = claims else {
            return true;
        };
        if claims.role() == crate::auth::Role::Admin {
            return true;
        }
        match self.access.read().get(id) {
            None => true,
            Some(access) => access.admits(claims.user(), &claims.groups),
        }
    }

    /// Rebuilds what is read without the records' lock from `records`.
    fn index(&self, records: &BTreeMap<ServerId, ServerRecord>) {
        *self.forwarding.write() = records
            .values()
            .filter(|r| r.forward_token)
            .map(|r| r.id.clone())
            .collect();
        *self.access.write() = records
            .values()
            .filter_map(|r| Some((r.id.clone(), r.access.clone()?)))
            .collect();
    }

    /// Every record, ordered by id.
    pub async fn list(&self) -> Vec<ServerRecord> {
        self.records.lock().await.values().cloned().collect()
    }

    /// The record of `id`.
    pub async fn get(&self, id: &ServerId) -> Option<ServerRecord> {
        self.records.lock().await.get(id).cloned()
    }

    /// Creates a server: persisted, then added to the pool (when enabled).
    ///
    /// # Errors
    /// [`RegistryError::Exists`]; [`RegistryError::Backend`] (nothing applied);
    /// [`RegistryError::Pool`] when its config is rejected.
    pub async fn create(&self, record: ServerRecord) -> Result<(), RegistryError> {
        let mut records = self.records.lock().await;
        if records.contains_key(&record.id) {
            return Err(RegistryError::Exists(record.id));
        }
        // Checked before anything is stored: a config the pool rejects is never persisted.
        self.server_config(&record)?.validate()?;
        let version = self.pool.backend().put_server(&record).await?;
        self.versions.lock().insert(record.id.clone(), version);
        self.apply(None, &record, false).await?;
        records.insert(record.id.clone(), record);
        self.index(&records);
        Ok(())
    }

    /// Replaces the record of `record.id`; drains as [the module docs](self) say.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`]; otherwise as [`create`](Self::create).
    pub async fn replace(&self, record: ServerRecord) -> Result<(), RegistryError> {
        let id = record.id.clone();
        self.update(&id, |_, _| Ok::<_, RegistryError>(record))
            .await
            .map(drop)
    }

    /// Replaces the record of `id` with what `change` makes of the current record and the
    /// pool config in force ([`pool_in_force`](Self::pool_in_force)), and answers the new
    /// record. `change` runs while the registry's writes are held, so that two updates never
    /// build on the same record and lose each other's changes; it must keep the id. Drains as
    /// [the module docs](self) say.
    ///
    /// # Errors
    /// `change`'s error; [`RegistryError::NotFound`]; otherwise as [`create`](Self::create).
    pub async fn update<E>(
        &self,
        id: &ServerId,
        change: impl FnOnce(&ServerRecord, &PoolConfig) -> Result<ServerRecord, E>,
    ) -> Result<ServerRecord, E>
    where
        E: From<RegistryError>,
    {
        let mut records = self.records.lock().await;
        let old = records
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        let record = change(&old, &self.pool_in_force(&old))?;
        debug_assert_eq!(&record.id, id, "an update keeps the server's id");
        self.server_config(&record)?
            .validate()
            .map_err(RegistryError::from)?;
        let version = self
            .pool
            .backend()
            .put_server(&record)
            .await
            .map_err(RegistryError::from)?;
        self.versions.lock().insert(record.id.clone(), version);
        self.apply(Some(&old), &record, false).await?;
        records.insert(record.id.clone(), record.clone());
        self.index(&records);
        Ok(record)
    }

    /// The pool config `record`'s server runs: while it is served, the pool's (a config saved
    /// through `PUT /servers/{id}/pool/config` may differ from the record's); otherwise the
    /// record's own.
    pub fn pool_in_force(&self, record: &ServerRecord) -> PoolConfig {
        self.pool
            .server_config(&record.id)
            .filter(|_| record.enabled)
            .unwrap_or_else(|| record.pool.clone())
    }

    /// The file's settings of server `id` ([`FileSettings`]; the defaults for a server the
    /// file does not name).
    pub fn file_settings(&self, id: &ServerId) -> FileSettings {
        self.files.read().get(id).cloned().unwrap_or_default()
    }

    /// The pool's configuration of `record`: its [`FileSettings`], and its credential header
    /// read from the environment variable the record names, when the credentials policy
    /// allows it.
    ///
    /// # Errors
    /// [`RegistryError::Credentials`] when that variable is not allowed, not set, or not valid
    /// as a header: the three look the same, so that nobody learns which variables exist.
    fn server_config(&self, record: &ServerRecord) -> Result<ServerConfig, RegistryError> {
        let config = self
            .file_settings(&record.id)
            .apply_to(ServerConfig::from(record.clone()));
        let Some(credentials) = &record.credentials else {
            return Ok(config);
        };
        let refused = || RegistryError::Credentials {
            server: record.id.clone(),
            env: credentials.env.clone(),
        };
        let value = self
            .credentials
            .value(&credentials.env)
            .ok_or_else(refused)?;
        let mut headers = http::HeaderMap::new();
        let mut value = http::HeaderValue::try_from(value).map_err(|_| refused())?;
        value.set_sensitive(true);
        headers.insert(
            http::HeaderName::try_from(credentials.header.as_str()).map_err(|_| refused())?,
            value,
        );
        Ok(config.headers(headers))
    }

    /// Deletes `id`: its record (a tombstone stays in the backend, so a file server does not
    /// come back at the next start) and its saved pool config; its pool is drained and
    /// removed.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`]; [`RegistryError::Backend`] (nothing applied).
    pub async fn delete(&self, id: &ServerId) -> Result<(), RegistryError> {
        let mut records = self.records.lock().await;
        let record = records
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        let backend = self.pool.backend();
        let version = match backend.delete_server(id).await? {
            Some(version) => Some(version),
            None => {
                // A file server never stored: store it so that its delete leaves a tombstone.
                backend.put_server(record).await?;
                backend.delete_server(id).await?
            }
        };
        if let Some(version) = version {
            self.versions.lock().insert(id.clone(), version);
        }
        backend.delete_config(id).await?;
        records.remove(id);
        self.index(&records);
        self.forget(id);
        Ok(())
    }

    /// Applies a change of the backend's records made by any worker: a no-op when its version
    /// was applied already (see [the module docs](self), "Several workers"). A record another
    /// worker created, replaced, disabled or deleted is brought into this worker's pool as
    /// [`replace`](Self::replace) or [`delete`](Self::delete) would have, without writing
    /// anything back.
    ///
    /// # Errors
    /// [`RegistryError::Credentials`] when the record names a variable this worker does not
    /// have, [`RegistryError::Pool`] when this worker's pool rejects it,
    /// [`RegistryError::Backend`] when its saved pool config cannot be read: the version is
    /// then not recorded, so the next re-list tries again.
    pub async fn apply_change(&self, change: ServerChange) -> Result<Applied, RegistryError> {
        let mut records = self.records.lock().await;
        let seen = self.versions.lock().get(&change.server).copied();
        if seen.is_some_and(|seen| change.version <= seen) {
            return Ok(Applied::Nothing);
        }
        let applied = match change.record {
            Some(record) => {
                let old = records.get(&record.id).cloned();
                self.apply(old.as_ref(), &record, true).await?;
                let served = record.enabled;
                records.insert(record.id.clone(), record);
                if served {
                    Applied::Served
                } else {
                    Applied::Removed
                }
            }
            None => {
                records.remove(&change.server);
                self.forget(&change.server);
                Applied::Removed
            }
        };
        self.versions.lock().insert(change.server, change.version);
        self.index(&records);
        Ok(applied)
    }

    /// Applies a re-read configuration file (SIGHUP, [`crate::reload::reload`]): servers the
    /// API never changed follow the file, their records and pools; for an id the backend holds
    /// (a record or a delete) the backend keeps winning, as at start, but the file's own
    /// settings ([`FileSettings`]) follow the file.
    ///
    /// # Errors
    /// [`RegistryError::Backend`] when the backend cannot list its records,
    /// [`RegistryError::Pool`] when the pool rejects a server; nothing is applied then.
    pub async fn reload_seeds(
        &self,
        previous: &[ServerConfig],
        next: &[ServerConfig],
    ) -> Result<crate::reload::Reloaded, RegistryError> {
        let held: std::collections::HashSet<ServerId> = self
            .pool
            .backend()
            .list_servers()
            .await?
            .into_iter()
            .map(|change| change.server)
            .collect();
        let untouched = |servers: &[ServerConfig]| -> Vec<ServerConfig> {
            servers
                .iter()
                .filter(|s| !held.contains(s.id()))
                .cloned()
                .collect()
        };
        let file_changed: Vec<ServerId> = next
            .iter()
            .filter(|s| held.contains(s.id()) && self.file_settings(s.id()) != FileSettings::of(s))
            .map(|s| s.id().clone())
            .collect();
        let following = untouched(next);
        let mut records = self.records.lock().await;
        let mut done = crate::reload::reload(&self.pool, &untouched(previous), &following)?;
        self.files
            .write()
            .extend(next.iter().map(|s| (s.id().clone(), FileSettings::of(s))));
        for server in &following {
            records.insert(server.id().clone(), file_record(server));
        }
        // A server the API changed keeps its record, but follows the file's own settings.
        for id in file_changed {
            if let Some(record) = records.get(&id).filter(|r| r.enabled) {
                let config = self.server_config(record)?.pool(self.pool_in_force(record));
                self.pool.add_server(config)?;
                done.updated.push(id.to_string());
            }
        }
        self.index(&records);
        Ok(done)
    }

    /// Brings the pool from `old` (`None`: no record before) to `new`. The pool config it runs:
    /// one saved through `PUT /servers/{id}/pool/config` wins at `start` and while the
    /// record's `pool` is unchanged; a changed `pool` is saved over it, so that the backend,
    /// every worker and the next start agree. A disabled server's saved config is deleted (its
    /// record holds its config). With `start` (at start, and for a change another worker made
    /// and saved), nothing is written.
    async fn apply(
        &self,
        old: Option<&ServerRecord>,
        new: &ServerRecord,
        start: bool,
    ) -> Result<(), RegistryError> {
        if !new.enabled {
            self.forget(&new.id);
            if !start {
                // While disabled, the record holds the pool config (module docs): a saved one
                // would win over it when the server is enabled again.
                self.pool.backend().delete_config(&new.id).await?;
            }
            return Ok(());
        }
        let in_pool = old.filter(|o| o.enabled);
        let reconnect = in_pool.is_none_or(|o| !o.same_connection(new));
        let pool_changed = old.is_none_or(|o| o.pool != new.pool);
        let saved = self.pool.backend().get_config(&new.id).await?;
        if reconnect {
            let config = match &saved {
                Some(saved) if start || !pool_changed => saved.config.clone(),
                _ => new.pool.clone(),
            };
            crate::log_pool_update(&new.id, &config);
            self.pool
                .add_server(self.server_config(new)?.pool(config))?;
            self.check(&new.id);
            if in_pool.is_some() {
                self.pool.drain_server(&new.id)?;
            }
        }
        // At start, a server the file already put in the pool runs its saved config at once,
        // not when the pool's own sync of saved configs gets to it.
        if start
            && !reconnect
            && let Some(saved) = &saved
            && self
                .pool
                .server_config(&new.id)
                .is_some_and(|current| current != saved.config)
        {
            self.pool.set_pool_config(&new.id, saved.config.clone())?;
        }
        if !start && pool_changed && (saved.is_some() || !reconnect) {
            self.pool
                .save_pool_config(&new.id, new.pool.clone())
                .await?;
        }
        Ok(())
    }

    /// Takes `id` out of the pool, if it is there.
    fn forget(&self, id: &ServerId) {
        match self.pool.remove_server(id) {
            Ok(()) | Err(PoolError::UnknownServer(_)) => {}
            Err(e) => tracing::warn!(server = %id, error = %e, "removing a server failed"),
        }
    }
}
