//! The PostgreSQL dialect: the database clock, advisory locks, `LISTEN`/`NOTIFY`.

use std::{
    future::Future,
    str::FromStr,
    sync::{Arc, LazyLock},
};

use futures::{StreamExt, stream::BoxStream};
use mcp_pool_traits::{BackendError, StateId};
use serde::{Deserialize, Serialize};
use sqlx::{
    PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::sync::OnceCell;

use super::{DatabaseConfig, DbError, sql::Sql};
use crate::records::{Change, Versioned};

pub(super) const NAME: &str = "postgres";

/// The one `NOTIFY` channel; notices name their namespace (channel names are capped at 63
/// bytes, shorter than a namespace may be).
const CHANNEL: &str = "mcp_pool";

/// Payloads up to this many bytes travel inside the notice (hex, under `NOTIFY`'s 8000-byte
/// cap with the envelope); larger ones go through `mcp_pool_messages`.
const INLINE_MAX: usize = 3500;

/// How long a large payload stays in `mcp_pool_messages` for its subscribers to read: 5 min.
const MESSAGE_KEEP_MS: i64 = 300_000;

/// The database clock in milliseconds since the Unix epoch.
const NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

static SQL: LazyLock<Sql> = LazyLock::new(|| Sql::new(NOW));

/// The schema, created under an advisory lock so that workers starting together do not race
/// on `CREATE TABLE IF NOT EXISTS`. One simple query string runs as one transaction.
static SCHEMA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT pg_advisory_xact_lock(hashtextextended('mcp_pool_schema', 0));
         {}
         CREATE TABLE IF NOT EXISTS mcp_pool_messages (
             id BIGSERIAL PRIMARY KEY, created_at BIGINT NOT NULL, payload BYTEA NOT NULL);",
        super::sql::SCHEMA
    )
});

/// A notice on [`CHANNEL`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Notice {
    /// A config or server record change.
    Change {
        ns: String,
        /// The change, when small enough (boxed: a server record is large).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<Box<Change>>,
        /// Else the row of `mcp_pool_messages` holding it (JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
    },
    Message {
        ns: String,
        channel: String,
        /// The payload, hex, when small enough.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hex: Option<String>,
        /// Else the row of `mcp_pool_messages` holding it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
    },
}

pub(super) struct Pg {
    pool: PgPool,
    schema: Arc<OnceCell<()>>,
}

impl Pg {
    /// A lazily connecting pool on `url`.
    pub(super) fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, BackendError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| BackendError::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.operation_timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            schema: Arc::new(OnceCell::new()),
        })
    }

    pub(super) fn sql(&self) -> &'static Sql {
        &SQL
    }

    /// The pool, once the schema exists.
    pub(super) async fn ready(&self) -> Result<&PgPool, sqlx::Error> {
        self.schema
            .get_or_try_init(|| async {
                sqlx::raw_sql(&SCHEMA).execute(&self.pool).await.map(drop)
            })
            .await?;
        Ok(&self.pool)
    }

    /// A transaction, holding the advisory lock named `lock` (hashed to 64 bits) if given.
    pub(super) async fn begin(
        &self,
        lock: Option<&str>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.ready().await?.begin().await?;
        if let Some(lock) = lock {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(lock)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Sends the change inside `tx`: PostgreSQL delivers it on commit, and only then.
    pub(super) async fn announce(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        namespace: &StateId,
        change: &Change,
    ) -> Result<(), sqlx::Error> {
        // Invariant: a change holds only strings, numbers and records; it serializes.
        let json = serde_json::to_string(change).expect("a change serializes");
        let (change, id) = if json.len() <= INLINE_MAX {
            (Some(Box::new(change.clone())), None)
        } else {
            // A server record with many endpoints: too large for a notice.
            (None, Some(stash(tx, json.as_bytes()).await?))
        };
        let notice = Notice::Change {
            ns: namespace.to_string(),
            change,
            id,
        };
        notify(&mut **tx, &notice).await
    }

    /// Nothing to do after commit: the notice went with the transaction.
    pub(super) fn announced(&self, _namespace: &StateId, _change: Change) {}

    pub(super) async fn watch<C: Versioned>(
        &self,
        namespace: &StateId,
    ) -> Result<BoxStream<'static, C>, DbError> {
        let listener = self.listen().await?;
        let (ns, pool) = (namespace.to_string(), self.pool.clone());
        Ok(notices(listener, move |notice| {
            let wanted = match notice {
                Notice::Change { ns: n, change, id } if n == ns => Some((change, id)),
                _ => None,
            };
            let pool = pool.clone();
            async move {
                let change = match wanted? {
                    (Some(change), _) => *change,
                    (None, Some(id)) => serde_json::from_slice(&fetch_message(&pool, id).await?)
                        .inspect_err(|e| tracing::warn!(error = %e, "skipping a bad change"))
                        .ok()?,
                    (None, None) => return None,
                };
                C::unwrap(&change)
            }
        }))
    }

    pub(super) async fn publish(
        &self,
        namespace: &StateId,
        channel: &StateId,
        payload: &[u8],
    ) -> Result<(), DbError> {
        let pool = self.ready().await?;
        let (hex, id) = if payload.len() <= INLINE_MAX {
            (Some(hex::encode(payload)), None)
        } else {
            (
                None,
                Some(stash(&mut *pool.acquire().await?, payload).await?),
            )
        };
        let notice = Notice::Message {
            ns: namespace.to_string(),
            channel: channel.to_string(),
            hex,
            id,
        };
        notify(pool, &notice).await?;
        Ok(())
    }

    pub(super) async fn subscribe(
        &self,
        namespace: &StateId,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, DbError> {
        let listener = self.listen().await?;
        let (ns, chan, pool) = (
            namespace.to_string(),
            channel.to_string(),
            self.pool.clone(),
        );
        Ok(notices(listener, move |notice| {
            let wanted = match notice {
                Notice::Message {
                    ns: n,
                    channel: c,
                    hex,
                    id,
                } if n == ns && c == chan => Some((hex, id)),
                _ => None,
            };
            let pool = pool.clone();
            async move {
                match wanted? {
                    (Some(hex), _) => hex::decode(hex)
                        .inspect_err(|e| tracing::warn!(error = %e, "skipping a bad message"))
                        .ok(),
                    (None, Some(id)) => fetch_message(&pool, id).await,
                    (None, None) => None,
                }
            }
        }))
    }

    /// A dedicated connection listening on [`CHANNEL`]; it does not reconnect by itself, so
    /// the stream built on it ends when the connection breaks.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(self.ready().await?).await?;
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

async fn notify<'e, E>(executor: E, notice: &Notice) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    // Invariant: a Notice holds only strings, numbers and records; it serializes.
    let payload = serde_json::to_string(notice).expect("a notice serializes");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(executor)
        .await
        .map(drop)
}

/// Stores `payload` in `mcp_pool_messages` for subscribers to read, dropping rows older than
/// [`MESSAGE_KEEP_MS`]; the new row's id.
async fn stash(conn: &mut PgConnection, payload: &[u8]) -> Result<i64, sqlx::Error> {
    let id = sqlx::query_scalar(&format!(
        "INSERT INTO mcp_pool_messages (created_at, payload) VALUES ({NOW}, $1) RETURNING id"
    ))
    .bind(payload)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "DELETE FROM mcp_pool_messages WHERE created_at < {NOW} - $1"
    ))
    .bind(MESSAGE_KEEP_MS)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

async fn fetch_message(pool: &PgPool, id: i64) -> Option<Vec<u8>> {
    let found: Result<Option<Vec<u8>>, _> =
        sqlx::query_scalar("SELECT payload FROM mcp_pool_messages WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await;
    match found {
        Ok(Some(payload)) => Some(payload),
        Ok(None) => {
            tracing::warn!(id, "a published message expired before it was read");
            None
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "reading a published message failed");
            None
        }
    }
}

/// The notices of `listener` that `pick` turns into items. Ends when the connection breaks.
fn notices<T, F, Fut>(listener: PgListener, pick: F) -> BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnMut(Notice) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send,
{
    futures::stream::unfold((listener, pick), |(mut listener, mut pick)| async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<Notice>(notification.payload()) {
                        Ok(notice) => {
                            if let Some(item) = pick(notice).await {
                                return Some((item, (listener, pick)));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping a notice that does not parse")
                        }
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL notification connection failed");
                    return None;
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_change_notice_round_trips() {
        let change = mcp_pool_conformance::backend::sample_record("srv", 1);
        let notice = Notice::Change {
            ns: "ns".into(),
            change: Some(Box::new(Change::Server(mcp_pool_traits::ServerChange {
                server: change.id.clone(),
                record: Some(change),
                version: 3,
            }))),
            id: None,
        };
        let text = serde_json::to_string(&notice).unwrap();
        let back: Notice = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Notice::Change { .. }), "{text}");
    }
}
