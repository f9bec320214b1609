//! The [`StateBackend`] trait: what several gateway workers must agree on.
//!
//! A backend is never on the path of a local pool hit. Every key or channel an implementation
//! builds comes from validated [`StateId`]s and [`ServerId`]s, so nothing a client sends can
//! name another key.

use std::{fmt, time::Duration};

use futures::stream::BoxStream;

use serde::{Deserialize, Serialize};

use crate::{PoolConfig, SavedServer, ServerChange, ServerId, ServerRecord, StateId};

/// A backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached, or did not answer within its operation timeout.
    #[error("state backend {backend} is unavailable: {message}")]
    Unavailable {
        /// The backend's name (`memory`, `redis`, `postgres`, `sqlite`, …).
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The backend answered, but with something this crate cannot use (a corrupt record).
    #[error("state backend {backend} returned invalid data: {message}")]
    InvalidData {
        /// The backend's name.
        backend: &'static str,
        /// What was wrong.
        message: String,
    },
    /// An argument was out of range (a limit of 0, a TTL of 0).
    #[error("invalid argument to state backend: {0}")]
    InvalidArgument(String),
    /// The backend was reached and refused the operation with an error of its own that
    /// waiting will not fix: a permission it lacks, a read-only replica, a constraint or a
    /// deadlock still there after the implementation's retries. Unlike
    /// [`Unavailable`](Self::Unavailable), an operator must act.
    #[error("state backend {backend} refused the operation: {message}")]
    Service {
        /// The backend's name.
        backend: &'static str,
        /// The service's error, as it worded it (no credentials).
        message: String,
    },
}

/// A per-server configuration was stored or deleted: what [`StateBackend::watch_configs`]
/// delivers and [`StateBackend::list_configs`] lists.
///
/// # Versions
/// The backend gives every put and every delete of a server's config a version, atomically
/// with the write: greater than the version of every earlier put or delete of that server
/// (versions are per server and start at 1; a put after a delete continues above the
/// delete's). A consumer that remembers the last version it applied per server can therefore
/// ignore anything at or below it: a duplicate notification, a re-list after a resubscribe, a
/// stale read, or notifications of concurrent writes that arrive out of order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// The server.
    pub server: ServerId,
    /// The new config, `None` when deleted.
    pub config: Option<PoolConfig>,
    /// The version of this change (see [Versions](Self#versions)).
    pub version: u64,
}

/// A stored pool config and the version its put was given (see [`ConfigChange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConfig {
    /// The config.
    pub config: PoolConfig,
    /// The version of the put that stored it.
    pub version: u64,
}

/// The outcome of [`StateBackend::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns it now (it was free, expired, or already the caller's: the TTL was
    /// renewed).
    Won,
    /// The caller owns it now; the previous owner's heartbeat had expired.
    TookOver {
        /// The dead previous owner.
        previous: StateId,
    },
    /// A live worker owns it; nothing changed.
    Held {
        /// The owner.
        owner: StateId,
    },
}

impl Claim {
    /// Whether the caller owns the claim now.
    pub fn is_owned(&self) -> bool {
        !matches!(self, Claim::Held { .. })
    }
}

/// Shared state of a group of gateway workers.
///
/// Methods are async and bounded in time: an unreachable backend answers
/// [`BackendError::Unavailable`] within the implementation's operation timeout, never hangs or
/// panics. TTLs are at least one millisecond; finer parts are rounded up.
/// Prove an implementation with `mcp_pool_conformance::backend_conformance!`.
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Stores the pool config of `server`, replacing any, and notifies every watcher. Returns
    /// the version given to this put, atomically with the write: greater than that of every
    /// earlier put or delete of `server` (see [`ConfigChange`]).
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn put_config(&self, server: &ServerId, config: &PoolConfig)
    -> Result<u64, BackendError>;

    /// The stored pool config of `server` and its version; `None` when none is stored (never
    /// was, or deleted).
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails or the record is corrupt.
    async fn get_config(&self, server: &ServerId) -> Result<Option<SavedConfig>, BackendError>;

    /// The latest change of every server that has a config stored or had one deleted, ordered
    /// by server id: a stored config with the version of its put, a deleted one as
    /// `config: None` with the version of its delete. Deletions stay listed (a tombstone per
    /// server ever saved) so that a watcher that missed a delete's notification learns of it
    /// from a re-list, and so that the server's next put continues above the delete's version.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails or a record is corrupt.
    async fn list_configs(&self) -> Result<Vec<ConfigChange>, BackendError>;

    /// Deletes the pool config of `server` and notifies watchers. Returns the version given to
    /// the delete, or `None` (and nothing changes, nobody is notified) when no config was
    /// stored.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn delete_config(&self, server: &ServerId) -> Result<Option<u64>, BackendError>;

    /// Config changes made through any instance sharing this backend, from now on, each with
    /// its version. The stream ends when the backend is dropped or its notification channel
    /// breaks; re-subscribe then. A connection that dies without the stream noticing
    /// (half-open TCP) may also leave it silent forever, so a consumer must not rely on the
    /// stream alone: re-list now and then ([`list_configs`](Self::list_configs)), and apply
    /// only versions above those it applied.
    ///
    /// # Errors
    /// [`BackendError`] when the subscription cannot be set up.
    async fn watch_configs(&self) -> Result<BoxStream<'static, ConfigChange>, BackendError>;

    /// Stores the server record `record` under `record.id`, replacing any, and notifies every
    /// watcher of servers. Returns the version given to this put, with the rules of
    /// [`put_config`](Self::put_config) (server versions are separate from config versions).
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn put_server(&self, record: &ServerRecord) -> Result<u64, BackendError>;

    /// The stored record of `server` and its version; `None` when none is stored.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails or the record is corrupt.
    async fn get_server(&self, server: &ServerId) -> Result<Option<SavedServer>, BackendError>;

    /// The latest change of every server ever stored, ordered by id, deletions kept as
    /// tombstones (`record: None`), as [`list_configs`](Self::list_configs) does for configs.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails or a record is corrupt.
    async fn list_servers(&self) -> Result<Vec<ServerChange>, BackendError>;

    /// Deletes the record of `server` and notifies watchers. Returns the version given to the
    /// delete, or `None` (nothing changes, nobody is notified) when no record was stored.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn delete_server(&self, server: &ServerId) -> Result<Option<u64>, BackendError>;

    /// Server record changes made through any instance sharing this backend, from now on, with
    /// the delivery rules of [`watch_configs`](Self::watch_configs) (re-list now and then).
    ///
    /// # Errors
    /// [`BackendError`] when the subscription cannot be set up.
    async fn watch_servers(&self) -> Result<BoxStream<'static, ServerChange>, BackendError>;

    /// Claims `session` (a downstream session id) for `owner`, first writer wins, for `ttl`.
    /// A claim whose TTL ran out, or whose owner's [`heartbeat`](Self::heartbeat) ran out, can
    /// be taken; a live owner's claim never is.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn claim(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<Claim, BackendError>;

    /// Extends `owner`'s claim on `session` to `ttl` from now; `false` if `owner` does not
    /// hold it.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Releases `owner`'s claim on `session`; `false` if `owner` did not hold it.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError>;

    /// The live owner of `session`, if any.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError>;

    /// Marks `worker` alive for `ttl`.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError>;

    /// Whether `worker`'s last heartbeat is still within its TTL.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError>;

    /// Takes slot `slot` of `counter` if fewer than `limit` live slots are taken, for `ttl`.
    /// Taking a slot already held renews its TTL and succeeds. Returns whether the slot is held.
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] for a zero TTL; [`BackendError`] when the backend fails.
    async fn try_acquire_slot(
        &self,
        counter: &StateId,
        slot: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Gives slot `slot` of `counter` back; `false` if it was not held.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError>;

    /// Live slots of `counter`.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError>;

    /// Sends `payload` to every current subscriber of `channel`, in every instance.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError>;

    /// Messages published to `channel` from now on.
    ///
    /// # Errors
    /// [`BackendError`] when the subscription cannot be set up.
    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError>;
}
