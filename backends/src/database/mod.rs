//! The `database` backend: sqlx on PostgreSQL or SQLite.
//!
//! One type, [`DatabaseBackend`], for both: the URL picks the dialect. The operations are
//! written once (below, in [`StateBackend`]'s impl) over the statements of [`sql`]; what
//! differs lives in a dialect struct with the same inherent methods in `postgres.rs` and
//! `sqlite.rs` (`sql`, `ready`, `begin`, `announce`, `announced`, `watch`,
//! `publish`, `subscribe`): the clock, how a transaction takes its lock, and how
//! notifications travel. Every write runs in a transaction from `begin`, so that SQLite writers
//! of one process queue without sleeping.

mod sql;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::{
    fmt,
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures::stream::BoxStream;
use mcp_pool_traits::{BackendError, Claim, ServerId, StateBackend, StateId};
use sqlx::Row;

use crate::{
    codec,
    lifetime::HandleLifetime,
    records::{Kind, Versioned},
    rules::{LiveClaim, check_limit, decide_claim, ttl_ms},
};

/// Writes through one instance between two sweeps of expired rows in its namespace.
const SWEEP_EVERY: u32 = 512;

/// Where and how to reach the database. Build with [`DatabaseConfig::new`] and the setters.
///
/// `Debug` shows the URL without its user-info ([`redact_url`](mcp_pool_traits::redact_url)).
#[derive(Clone)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// `postgres://…` / `postgresql://…` for PostgreSQL, `sqlite:PATH` (or `sqlite://PATH`)
    /// for an SQLite file, created if missing.
    pub url: String,
    /// The namespace every row lives in (default `default`): instances with the same namespace
    /// share state; different namespaces share nothing.
    pub namespace: StateId,
    /// Upper bound on one operation, connecting and waiting for locks included (default 5 s).
    /// Past it the operation fails with [`BackendError::Unavailable`].
    pub operation_timeout: Duration,
    /// Connections in the pool (default 10). PostgreSQL subscriptions use one more each.
    pub max_connections: u32,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &mcp_pool_traits::redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DatabaseConfig {
    /// Defaults for `url`: namespace `default`, operation timeout 5 s, 10 connections.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            // Invariant: "default" follows the id rule.
            namespace: StateId::new("default").expect("a valid id"),
            operation_timeout: Duration::from_secs(5),
            max_connections: 10,
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: StateId) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets the operation timeout (at least 1 ms).
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the pool size (at least 1).
    #[must_use]
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// State shared through a database: PostgreSQL (workers on many hosts; config changes and
/// messages travel by `LISTEN`/`NOTIFY`) or an SQLite file (one host; WAL mode; notifications
/// reach the instances on the same file within this process).
///
/// # Schema
/// Created on first use (`CREATE TABLE IF NOT EXISTS`): `mcp_pool_configs`,
/// `mcp_pool_config_versions` (each server's config version, kept after a delete),
/// `mcp_pool_servers` and `mcp_pool_server_versions` (server records, likewise),
/// `mcp_pool_claims`, `mcp_pool_heartbeats`, `mcp_pool_slots`, each keyed by `namespace` and
/// validated ids, with
/// times as milliseconds of the database's clock; PostgreSQL adds `mcp_pool_messages` for
/// published payloads and record changes too large for a `NOTIFY` (over 3 500 bytes; kept 5
/// minutes).
///
/// # Atomicity
/// A config put or delete, its version and (PostgreSQL) its `NOTIFY` share one transaction
/// holding the server's lock. Claims and slot counters are read and written in one
/// transaction holding a lock: on
/// PostgreSQL a transaction-scoped advisory lock on the session or counter, on SQLite the
/// database write lock (`BEGIN IMMEDIATE`). Statements only bind ids as parameters; none is
/// ever spliced into SQL text.
///
/// # Failure
/// Every operation is bounded by [`DatabaseConfig::operation_timeout`] and fails with
/// [`BackendError::Unavailable`] when the database does not answer; the pool reconnects by
/// itself. PostgreSQL connects lazily, so a worker can start while the database is down.
/// Streams end when the backend is dropped, or when their connection (PostgreSQL) or the
/// process-wide channel (SQLite, when a subscriber falls 1024 events behind) breaks: subscribe
/// again then.
pub struct DatabaseBackend {
    store: Store,
    namespace: StateId,
    timeout: Duration,
    writes: AtomicU32,
    /// Ends this instance's streams when it is dropped.
    lifetime: HandleLifetime,
}

enum Store {
    #[cfg(feature = "postgres")]
    Postgres(postgres::Pg),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::Lite),
}

/// Runs `$body` with `$db` bound to the dialect of `$self`. The body is compiled once per
/// dialect, against that dialect's sqlx types.
macro_rules! on_store {
    ($self:ident, $db:ident => $body:expr) => {
        match &$self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres($db) => $body,
            #[cfg(feature = "sqlite")]
            Store::Sqlite($db) => $body,
        }
    };
}

/// What went wrong inside an operation, before it is named for the caller.
#[derive(Debug)]
enum DbError {
    Sqlx(sqlx::Error),
    Backend(BackendError),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        Self::Sqlx(e)
    }
}

impl From<BackendError> for DbError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

impl DbError {
    fn into_backend(self, backend: &'static str) -> BackendError {
        match self {
            Self::Backend(e) => e,
            Self::Sqlx(
                e @ (sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::RowNotFound),
            ) => BackendError::InvalidData {
                backend,
                message: e.to_string(),
            },
            Self::Sqlx(sqlx::Error::Database(e)) if !is_transient(&*e) => BackendError::Service {
                backend,
                message: e.to_string(),
            },
            Self::Sqlx(e) => BackendError::Unavailable {
                backend,
                message: e.to_string(),
            },
        }
    }
}

/// Whether a database's own error passes by itself: the connection or the server going away
/// (SQLSTATE classes 08 and 57, e.g. `57P01` admin shutdown, `57P03` cannot connect now), too
/// many connections (`53300`), or SQLite's busy and locked codes (5, 6). Anything else the
/// database answered (a permission, a read-only transaction, a constraint) is
/// [`BackendError::Service`].
fn is_transient(e: &dyn sqlx::error::DatabaseError) -> bool {
    let code = e.code();
    let code = code.as_deref().unwrap_or_default();
    if let Ok(sqlite) = code.parse::<u32>() {
        // SQLite's extended result codes keep the primary code in the low byte.
        return matches!(sqlite & 0xff, 5 | 6);
    }
    code.starts_with("08") || code.starts_with("57") || code == "53300"
}

fn parse_id(backend: &'static str, what: &str, text: String) -> Result<StateId, BackendError> {
    StateId::new(&text).map_err(|e| BackendError::InvalidData {
        backend,
        message: format!("a stored {what} is invalid: {e}"),
    })
}

fn parse_version(backend: &'static str, version: i64) -> Result<u64, BackendError> {
    u64::try_from(version).map_err(|_| BackendError::InvalidData {
        backend,
        message: format!("a stored record version is negative: {version}"),
    })
}

impl DatabaseBackend {
    /// A backend on `config.url`: PostgreSQL for `postgres:`/`postgresql:` URLs (connects
    /// lazily; the schema is created by the first operation), SQLite for `sqlite:` URLs (opens
    /// or creates the file and its schema now).
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] for a URL of another scheme, one that does not parse,
    /// an in-memory SQLite database (use the memory backend), or a dialect this build leaves
    /// out (features `postgres`, `sqlite`); [`BackendError::Unavailable`] when the SQLite file
    /// cannot be opened.
    pub async fn connect(config: DatabaseConfig) -> Result<Self, BackendError> {
        let url = config.url.trim();
        let store = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            #[cfg(feature = "postgres")]
            {
                Store::Postgres(postgres::Pg::connect(url, &config)?)
            }
            #[cfg(not(feature = "postgres"))]
            {
                return Err(BackendError::InvalidArgument(
                    "PostgreSQL URL given, but mcp-pool-backends was built without its \
                     `postgres` feature"
                        .into(),
                ));
            }
        } else if url.starts_with("sqlite:") {
            #[cfg(feature = "sqlite")]
            {
                Store::Sqlite(sqlite::Lite::connect(url, &config).await?)
            }
            #[cfg(not(feature = "sqlite"))]
            {
                return Err(BackendError::InvalidArgument(
                    "SQLite URL given, but mcp-pool-backends was built without its `sqlite` \
                     feature"
                        .into(),
                ));
            }
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(BackendError::InvalidArgument(format!(
                "database URL scheme {scheme:?} is not supported: use postgres://, \
                 postgresql:// or sqlite:"
            )));
        };
        Ok(Self {
            store,
            namespace: config.namespace,
            timeout: config.operation_timeout,
            writes: AtomicU32::new(0),
            lifetime: HandleLifetime::new(),
        })
    }

    /// The namespace this instance sees.
    pub fn namespace(&self) -> &StateId {
        &self.namespace
    }

    /// Checks that the database answers now (and, on first use, creates the schema).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when it does not within the operation timeout.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.bounded(async {
            on_store!(self, db => {
                sqlx::query("SELECT 1").execute(db.ready().await?).await?;
            });
            Ok(())
        })
        .await
    }

    /// The one text column the statement `query` (of the store's dialect) selects for this
    /// namespace and `id`, if a row matches.
    async fn text_by_id(
        &self,
        query: fn(&'static sql::Sql) -> &'static String,
        id: &str,
    ) -> Result<Option<String>, BackendError> {
        let ns = self.namespace.as_str();
        self.bounded(async {
            Ok(on_store!(self, db => {
                sqlx::query_scalar(query(db.sql()))
                    .bind(ns)
                    .bind(id)
                    .fetch_optional(db.ready().await?)
                    .await?
            }))
        })
        .await
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r.map_err(|e| e.into_backend(self.name())),
            Err(_) => Err(BackendError::Unavailable {
                backend: self.name(),
                message: format!(
                    "no answer within the operation timeout of {:?}",
                    self.timeout
                ),
            }),
        }
    }

    /// Counts a write; every [`SWEEP_EVERY`] writes, deletes the namespace's expired rows.
    /// A failed sweep is only logged: the next one tries again.
    async fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let ns = self.namespace.as_str();
        let swept = self
            .bounded(async {
                on_store!(self, db => {
                    let mut tx = db.begin(None).await?;
                    for stmt in &db.sql().sweep {
                        sqlx::query(stmt).bind(ns).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                });
                Ok(())
            })
            .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "sweeping expired state backend rows failed");
        }
    }
}

/// The versioned records of kind `C` (configs, server records): one implementation for both.
impl DatabaseBackend {
    async fn put<C: Versioned>(
        &self,
        server: &ServerId,
        value: &C::Value,
    ) -> Result<u64, BackendError> {
        let (ns, text) = (self.namespace.as_str(), codec::encode(value));
        let lock = format!("{}:{ns}:{server}", C::KIND.as_str());
        let name = self.name();
        self.bounded(async {
            Ok(on_store!(self, db => {
                let sql = db.sql().records(C::KIND);
                let mut tx = db.begin(Some(&lock)).await?;
                let version: i64 = sqlx::query_scalar(&sql.version)
                    .bind(ns)
                    .bind(server.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(&sql.put)
                    .bind(ns)
                    .bind(server.as_str())
                    .bind(&text)
                    .execute(&mut *tx)
                    .await?;
                let version = parse_version(name, version)?;
                let change = C::new(server.clone(), Some(value.clone()), version).wrap();
                db.announce(&mut tx, &self.namespace, &change).await?;
                tx.commit().await?;
                db.announced(&self.namespace, change);
                version
            }))
        })
        .await
    }

    async fn get<C: Versioned>(
        &self,
        server: &ServerId,
    ) -> Result<Option<(C::Value, u64)>, BackendError> {
        let ns = self.namespace.as_str();
        let row: Option<(String, i64)> = self
            .bounded(async {
                Ok(on_store!(self, db => {
                    sqlx::query_as(&db.sql().records(C::KIND).get)
                        .bind(ns)
                        .bind(server.as_str())
                        .fetch_optional(db.ready().await?)
                        .await?
                }))
            })
            .await?;
        row.map(|(text, version)| {
            Ok((
                codec::decode::<C>(self.name(), server.as_str(), &text)?,
                parse_version(self.name(), version)?,
            ))
        })
        .transpose()
    }

    async fn list<C: Versioned>(&self) -> Result<Vec<C>, BackendError> {
        let ns = self.namespace.as_str();
        let rows: Vec<(String, Option<String>, i64)> = self
            .bounded(async {
                Ok(on_store!(self, db => {
                    sqlx::query_as(&db.sql().records(C::KIND).list)
                        .bind(ns)
                        .fetch_all(db.ready().await?)
                        .await?
                }))
            })
            .await?;
        let name = self.name();
        let mut changes = rows
            .into_iter()
            .map(|(server, text, version)| {
                let value = text
                    .map(|t| codec::decode::<C>(name, &server, &t))
                    .transpose()?;
                Ok(C::new(
                    codec::decode_server(name, &server)?,
                    value,
                    parse_version(name, version)?,
                ))
            })
            .collect::<Result<Vec<C>, BackendError>>()?;
        // Sorted here, not by the database, whose collation may not be byte order.
        changes.sort_by(|a, b| a.server().cmp(b.server()));
        Ok(changes)
    }

    async fn delete<C: Versioned>(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        let ns = self.namespace.as_str();
        let lock = format!("{}:{ns}:{server}", C::KIND.as_str());
        let name = self.name();
        self.bounded(async {
            Ok(on_store!(self, db => {
                let sql = db.sql().records(C::KIND);
                let mut tx = db.begin(Some(&lock)).await?;
                let deleted = sqlx::query(&sql.delete)
                    .bind(ns)
                    .bind(server.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if deleted {
                    let version: i64 = sqlx::query_scalar(&sql.version)
                        .bind(ns)
                        .bind(server.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    let version = parse_version(name, version)?;
                    let change = C::new(server.clone(), None, version).wrap();
                    db.announce(&mut tx, &self.namespace, &change).await?;
                    tx.commit().await?;
                    db.announced(&self.namespace, change);
                    Some(version)
                } else {
                    tx.commit().await?;
                    None
                }
            }))
        })
        .await
    }

    async fn watch<C: Versioned>(&self) -> Result<BoxStream<'static, C>, BackendError> {
        let stream = self
            .bounded(async { on_store!(self, db => db.watch(&self.namespace).await) })
            .await?;
        Ok(self.lifetime.bound(stream))
    }
}

impl sql::Sql {
    fn records(&self, kind: Kind) -> &sql::RecordSql {
        match kind {
            Kind::Config => &self.configs,
            Kind::Server => &self.servers,
        }
    }
}

impl fmt::Debug for DatabaseBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseBackend")
            .field("dialect", &self.name())
            .field("namespace", &self.namespace)
            .field("operation_timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl StateBackend for DatabaseBackend {
    fn name(&self) -> &'static str {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => postgres::NAME,
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => sqlite::NAME,
        }
    }

    crate::records::record_methods!();

    async fn claim(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<Claim, BackendError> {
        let ttl = ttl_ms(ttl)?;
        let ns = self.namespace.as_str();
        let lock = format!("claim:{ns}:{session}");
        let name = self.name();
        let outcome = self
            .bounded(async {
                Ok(on_store!(self, db => {
                    let sql = db.sql();
                    let mut tx = db.begin(Some(&lock)).await?;
                    let row = sqlx::query(&sql.claim_state)
                        .bind(ns)
                        .bind(session.as_str())
                        .bind(owner.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    let now: i64 = row.try_get("now")?;
                    let current: Option<String> = row.try_get("owner")?;
                    let tracked: Option<bool> = row.try_get("tracked")?;
                    let owner_alive: bool = row.try_get("owner_alive")?;
                    let caller_alive: bool = row.try_get("caller_alive")?;
                    let current = current
                        .map(|o| parse_id(name, "claim owner", o))
                        .transpose()?;
                    let outcome = decide_claim(
                        current.as_ref().map(|owner| LiveClaim {
                            owner,
                            tracked: tracked.unwrap_or(false),
                            owner_alive,
                        }),
                        owner,
                    );
                    if outcome.is_owned() {
                        sqlx::query(&sql.claim_write)
                            .bind(ns)
                            .bind(session.as_str())
                            .bind(owner.as_str())
                            .bind(now.saturating_add(ttl))
                            .bind(caller_alive)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    outcome
                }))
            })
            .await?;
        self.wrote().await;
        Ok(outcome)
    }

    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let ttl = ttl_ms(ttl)?;
        let ns = self.namespace.as_str();
        let lock = format!("claim:{ns}:{session}");
        self.bounded(async {
            Ok(on_store!(self, db => {
                let mut tx = db.begin(Some(&lock)).await?;
                let done = sqlx::query(&db.sql().refresh)
                    .bind(ns)
                    .bind(session.as_str())
                    .bind(owner.as_str())
                    .bind(ttl)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                done == 1
            }))
        })
        .await
    }

    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError> {
        let ns = self.namespace.as_str();
        let lock = format!("claim:{ns}:{session}");
        self.bounded(async {
            Ok(on_store!(self, db => {
                let mut tx = db.begin(Some(&lock)).await?;
                let done = sqlx::query(&db.sql().release)
                    .bind(ns)
                    .bind(session.as_str())
                    .bind(owner.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                done == 1
            }))
        })
        .await
    }

    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError> {
        let owner = self.text_by_id(|sql| &sql.owner, session.as_str()).await?;
        owner
            .map(|o| parse_id(self.name(), "claim owner", o))
            .transpose()
    }

    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError> {
        let ttl = ttl_ms(ttl)?;
        let ns = self.namespace.as_str();
        self.bounded(async {
            on_store!(self, db => {
                let mut tx = db.begin(None).await?;
                sqlx::query(&db.sql().heartbeat)
                    .bind(ns)
                    .bind(worker.as_str())
                    .bind(ttl)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        self.wrote().await;
        Ok(())
    }

    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError> {
        let ns = self.namespace.as_str();
        self.bounded(async {
            Ok(on_store!(self, db => {
                sqlx::query_scalar(&db.sql().is_alive)
                    .bind(ns)
                    .bind(worker.as_str())
                    .fetch_one(db.ready().await?)
                    .await?
            }))
        })
        .await
    }

    async fn try_acquire_slot(
        &self,
        counter: &StateId,
        slot: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        check_limit(limit)?;
        let ttl = ttl_ms(ttl)?;
        let ns = self.namespace.as_str();
        let lock = format!("slots:{ns}:{counter}");
        let taken = self
            .bounded(async {
                Ok(on_store!(self, db => {
                    let sql = db.sql();
                    let mut tx = db.begin(Some(&lock)).await?;
                    sqlx::query(&sql.slot_prune)
                        .bind(ns)
                        .bind(counter.as_str())
                        .execute(&mut *tx)
                        .await?;
                    let taken = sqlx::query(&sql.slot_take)
                        .bind(ns)
                        .bind(counter.as_str())
                        .bind(slot.as_str())
                        .bind(i64::from(limit))
                        .bind(ttl)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    tx.commit().await?;
                    taken
                }))
            })
            .await?;
        self.wrote().await;
        Ok(taken)
    }

    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError> {
        let ns = self.namespace.as_str();
        self.bounded(async {
            Ok(on_store!(self, db => {
                let mut tx = db.begin(None).await?;
                let released = sqlx::query(&db.sql().slot_release)
                    .bind(ns)
                    .bind(counter.as_str())
                    .bind(slot.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                tx.commit().await?;
                released
            }))
        })
        .await
    }

    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError> {
        let ns = self.namespace.as_str();
        let n: i64 = self
            .bounded(async {
                Ok(on_store!(self, db => {
                    sqlx::query_scalar(&db.sql().slot_count)
                        .bind(ns)
                        .bind(counter.as_str())
                        .fetch_one(db.ready().await?)
                        .await?
                }))
            })
            .await?;
        u32::try_from(n).map_err(|_| BackendError::InvalidData {
            backend: self.name(),
            message: format!("slot count {n} is out of range"),
        })
    }

    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        self.bounded(async {
            on_store!(self, db => db.publish(&self.namespace, channel, payload).await)
        })
        .await
    }

    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        let stream = self
            .bounded(async { on_store!(self, db => db.subscribe(&self.namespace, channel).await) })
            .await?;
        Ok(self.lifetime.bound(stream))
    }
}
