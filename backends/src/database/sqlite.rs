//! The SQLite dialect: the SQLite clock, `BEGIN IMMEDIATE`, notifications within the process.

use std::{
    collections::HashMap,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, LazyLock, Weak},
};

use futures::stream::BoxStream;
use mcp_pool_traits::{BackendError, StateId};
use parking_lot::Mutex;
use sqlx::{
    Sqlite, SqliteConnection, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{DatabaseConfig, DbError, sql::Sql};
use crate::{
    fanout::Fanout,
    records::{Change, Versioned},
};

pub(super) const NAME: &str = "sqlite";

static SQL: LazyLock<Sql> =
    LazyLock::new(|| Sql::new("CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"));

/// What the instances on one database file in this process share.
struct Hub {
    /// Every instance on the file hears every other's changes and messages.
    fanout: Fanout,
    /// Writers of this process queue here, in FIFO order, before they take SQLite's write
    /// lock: SQLite's own busy handler waits by sleeping (up to 100 ms a time), which would
    /// leave the lock idle under contention. Other processes still meet the busy handler.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// One hub per database file, held weakly: it goes when the last instance on its file does.
static HUBS: LazyLock<Mutex<HashMap<PathBuf, Weak<Hub>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn hub_for(path: &Path) -> Arc<Hub> {
    let mut hubs = HUBS.lock();
    if let Some(hub) = hubs.get(path).and_then(Weak::upgrade) {
        return hub;
    }
    hubs.retain(|_, hub| hub.strong_count() > 0);
    let hub = Arc::new(Hub {
        fanout: Fanout::new(),
        writer: Arc::new(tokio::sync::Mutex::new(())),
    });
    hubs.insert(path.to_owned(), Arc::downgrade(&hub));
    hub
}

/// A write transaction holding this process's writer queue and SQLite's write lock until
/// commit or drop (drop rolls back).
pub(super) struct Locked {
    tx: Transaction<'static, Sqlite>,
    _writer: tokio::sync::OwnedMutexGuard<()>,
}

impl Locked {
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for Locked {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

pub(super) struct Lite {
    pool: SqlitePool,
    hub: Arc<Hub>,
}

impl Lite {
    /// Opens (creating if missing) the file of `url` in WAL mode and creates the schema.
    pub(super) async fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, BackendError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(BackendError::InvalidArgument(
                "an in-memory SQLite database is not shared between connections: use a file, \
                 or the memory backend (CACHE_TYPE=memory)"
                    .into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| BackendError::InvalidArgument(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.operation_timeout);
        let unavailable = |e: &dyn std::fmt::Display| BackendError::Unavailable {
            backend: NAME,
            message: format!("cannot open {}: {e}", options.get_filename().display()),
        };
        let pool = tokio::time::timeout(
            config.operation_timeout,
            SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.operation_timeout)
                .connect_with(options.clone()),
        )
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
        sqlx::raw_sql(super::sql::SCHEMA)
            .execute(&pool)
            .await
            .map_err(|e| unavailable(&e))?;
        let path = std::fs::canonicalize(options.get_filename()).map_err(|e| unavailable(&e))?;
        Ok(Self {
            pool,
            hub: hub_for(&path),
        })
    }

    pub(super) fn sql(&self) -> &'static Sql {
        &SQL
    }

    /// The pool; the schema was created on connect.
    pub(super) async fn ready(&self) -> Result<&SqlitePool, sqlx::Error> {
        Ok(&self.pool)
    }

    /// A transaction holding the database write lock from its first statement, whatever
    /// `lock` names: SQLite has one writer at a time.
    pub(super) async fn begin(&self, _lock: Option<&str>) -> Result<Locked, sqlx::Error> {
        let writer = Arc::clone(&self.hub.writer).lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Locked {
            tx,
            _writer: writer,
        })
    }

    /// Nothing to do inside the transaction: notifications travel within the process.
    pub(super) async fn announce(
        &self,
        _tx: &mut Locked,
        _namespace: &StateId,
        _change: &Change,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Tells the instances on this file, after the change is committed and readable.
    pub(super) fn announced(&self, namespace: &StateId, change: Change) {
        self.hub.fanout.send_change(namespace, change);
    }

    pub(super) async fn watch<C: Versioned>(
        &self,
        namespace: &StateId,
    ) -> Result<BoxStream<'static, C>, DbError> {
        Ok(self.hub.fanout.watch(namespace))
    }

    pub(super) async fn publish(
        &self,
        namespace: &StateId,
        channel: &StateId,
        payload: &[u8],
    ) -> Result<(), DbError> {
        self.hub.fanout.send_message(namespace, channel, payload);
        Ok(())
    }

    pub(super) async fn subscribe(
        &self,
        namespace: &StateId,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, DbError> {
        Ok(self.hub.fanout.subscribe(namespace, channel))
    }
}
