//! The `redis` backend: redis-rs with tokio and a connection manager, Lua scripts for the atomic
//! parts, pub/sub for notifications.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    future::Future,
    sync::LazyLock,
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use mcp_pool_traits::{BackendError, Claim, ServerId, StateBackend, StateId};
use redis::{
    Client, RedisError, Script, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{
    codec,
    lifetime::HandleLifetime,
    records::{Kind, Versioned},
    rules::{check_limit, ttl_ms},
    select::redact,
};

const NAME: &str = "redis";

/// Where and how to reach Redis. Build with [`RedisConfig::new`] and the setters.
///
/// `Debug` shows the URL without its user-info ([`redact_url`](mcp_pool_traits::redact_url)).
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` (or `rediss://` when redis-rs is built with TLS).
    pub url: String,
    /// The namespace every key and channel lives in (default `default`): instances with the same
    /// namespace share state; different namespaces share nothing.
    pub namespace: StateId,
    /// Upper bound on one operation, connecting included (default 2 s). Past it the operation
    /// fails with [`BackendError::Unavailable`].
    pub operation_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl RedisConfig {
    /// Defaults for `url`: namespace `default`, operation timeout 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            // Invariant: "default" follows the id rule.
            namespace: StateId::new("default").expect("a valid id"),
            operation_timeout: Duration::from_secs(2),
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
}

/// State shared through Redis.
///
/// # Keys
/// Every key starts with `mcp-pool:{NAMESPACE}:` — the braces are a Redis Cluster hash tag, so
/// one namespace lives in one slot and the Lua scripts may touch several of its keys — followed
/// by a kind and, where the kind is per id, `:` and a validated id (which cannot contain `:`,
/// `{`, `}` or glob characters):
///
/// | key | type | holds |
/// |---|---|---|
/// | `configs` | hash | server id → config JSON |
/// | `config-versions` | hash | server id → version of its latest put or delete (kept after a delete: the tombstone) |
/// | `servers`, `server-versions` | hash | the same for server records (JSON) |
/// | `claim:SESSION` | hash, `PEXPIRE` = claim TTL | `owner`, `tracked` (owner had a heartbeat) |
/// | `alive:WORKER` | string, `PX` = heartbeat TTL | `1` |
/// | `slots:COUNTER` | sorted set, expires with its last slot | slot id → expiry (ms, Redis clock) |
///
/// Channels: `config-events` and `server-events` (changes: the version, a space, JSON) and `chan:CHANNEL`
/// (published payloads). A config write, its version (`HINCRBY`) and its notification happen in
/// one Lua script.
///
/// # Failure
/// Every operation is bounded by [`RedisConfig::operation_timeout`] and fails with
/// [`BackendError::Unavailable`] when Redis is down; the connection manager reconnects by
/// itself, so operations succeed again once Redis is back. Streams from
/// [`watch_configs`](StateBackend::watch_configs) and [`subscribe`](StateBackend::subscribe) use
/// a connection each and end when it breaks: subscribe again then.
#[derive(Clone)]
pub struct RedisBackend {
    client: Client,
    manager: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    /// Ends this instance's subscriptions when it and its clones are dropped.
    lifetime: HandleLifetime,
}

#[derive(Clone)]
struct Keys {
    namespace: StateId,
    prefix: String,
}

impl Keys {
    fn new(namespace: StateId) -> Self {
        let prefix = format!("mcp-pool:{{{namespace}}}:");
        Self { namespace, prefix }
    }
    /// The records hash, versions hash and events channel of a kind of record.
    fn records(&self, kind: Kind) -> [String; 3] {
        let (records, kind) = match kind {
            Kind::Config => ("configs", "config"),
            Kind::Server => ("servers", "server"),
        };
        [
            format!("{}{records}", self.prefix),
            format!("{}{kind}-versions", self.prefix),
            format!("{}{kind}-events", self.prefix),
        ]
    }
    fn claim(&self, session: &StateId) -> String {
        format!("{}claim:{session}", self.prefix)
    }
    fn alive_prefix(&self) -> String {
        format!("{}alive:", self.prefix)
    }
    fn alive(&self, worker: &StateId) -> String {
        format!("{}alive:{worker}", self.prefix)
    }
    fn slots(&self, counter: &StateId) -> String {
        format!("{}slots:{counter}", self.prefix)
    }
    fn channel(&self, channel: &StateId) -> String {
        format!("{}chan:{channel}", self.prefix)
    }
}

// KEYS[1] records hash, KEYS[2] versions hash, KEYS[3] events channel; ARGV[1] server,
// ARGV[2] record, ARGV[3] event without its version. Returns the version.
static PUT_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local v = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('PUBLISH', KEYS[3], v .. ' ' .. ARGV[3])
        return v",
    )
});

// As PUT_RECORD, without ARGV[2]. Returns the version, or 0 (and changes nothing) when no
// record was stored.
static DELETE_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
        local v = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
        redis.call('PUBLISH', KEYS[3], v .. ' ' .. ARGV[3])
        return v",
    )
});

// KEYS[1] claim; ARGV[1] caller, ARGV[2] TTL ms, ARGV[3] heartbeat key prefix.
// The rules of crate::rules::decide_claim: free or expired (the key is gone) or the caller's →
// won; a tracked owner without a live heartbeat → took over; else held.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local cur = redis.call('HMGET', KEYS[1], 'owner', 'tracked')
        local owner, outcome = cur[1], {'won'}
        if owner and owner ~= ARGV[1] then
            if cur[2] == '1' and redis.call('EXISTS', ARGV[3] .. owner) == 0 then
                outcome = {'took', owner}
            else
                return {'held', owner}
            end
        end
        local tracked = redis.call('EXISTS', ARGV[3] .. ARGV[1])
        redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'tracked', tracked)
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return outcome",
    )
});

// KEYS[1] claim; ARGV as CLAIM.
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
        redis.call('HSET', KEYS[1], 'tracked', redis.call('EXISTS', ARGV[3] .. ARGV[1]))
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return 1",
    )
});

// KEYS[1] claim; ARGV[1] caller.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
        return redis.call('DEL', KEYS[1])",
    )
});

// KEYS[1] claim; ARGV[1] heartbeat key prefix. The owner, unless its heartbeat ran out.
static OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local cur = redis.call('HMGET', KEYS[1], 'owner', 'tracked')
        if not cur[1] then return false end
        if cur[2] == '1' and redis.call('EXISTS', ARGV[1] .. cur[1]) == 0 then return false end
        return cur[1]",
    )
});

// The Redis clock in ms, shared by the slot scripts (one clock for every worker).
const NOW: &str = r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)";

// KEYS[1] slots; ARGV[1] slot, ARGV[2] limit, ARGV[3] TTL ms.
static ACQUIRE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
            if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
        end
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
        local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', KEYS[1], last[2])
        return 1"
    ))
});

// KEYS[1] slots; ARGV[1] slot.
static RELEASE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
        return redis.call('ZREM', KEYS[1], ARGV[1])"
    ))
});

// KEYS[1] slots.
static SLOT_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
        return redis.call('ZCARD', KEYS[1])"
    ))
});

impl RedisBackend {
    /// A backend on `config`. Connects lazily: it does not wait for Redis, so a worker can
    /// start while Redis is down; the first operation connects (use [`ping`](Self::ping) to
    /// check at once). Must run within a tokio runtime, where the connection manager spawns its
    /// reconnection task.
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] when the URL does not parse.
    pub async fn connect(config: RedisConfig) -> Result<Self, BackendError> {
        let client = Client::open(config.url.as_str()).map_err(|e| {
            BackendError::InvalidArgument(format!(
                "invalid Redis URL {:?}: {e}",
                redact(&config.url)
            ))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.operation_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| unavailable(format!("cannot set up the connection manager: {e}")))?;
        Ok(Self {
            client,
            manager,
            keys: Keys::new(config.namespace),
            timeout: config.operation_timeout,
            lifetime: HandleLifetime::new(),
        })
    }

    /// The namespace this instance sees.
    pub fn namespace(&self) -> &StateId {
        &self.keys.namespace
    }

    /// Checks that Redis answers now.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when it does not within the operation timeout.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.manager.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(drop)
    }

    /// Runs one Redis exchange within the operation timeout. A connection refused before
    /// anything was sent is tried once more while time is left: the connection manager answers
    /// the first request after an outage with the old connection's error and reconnects.
    async fn bounded<T, Fut>(&self, op: Fut) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(&e)),
            Err(_) => Err(unavailable(format!(
                "no answer within the operation timeout of {:?}",
                self.timeout
            ))),
        }
    }

    /// [`bounded`](Self::bounded), retried once when the first attempt never reached Redis.
    async fn exchange<T, F, Fut>(&self, op: F) -> Result<T, BackendError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let attempt = async {
            match op(self.manager.clone()).await {
                Err(e) if e.is_connection_refusal() => {
                    // Nothing was sent: safe to repeat, and the manager is reconnecting.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    op(self.manager.clone()).await
                }
                other => other,
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(&e)),
            Err(_) => Err(unavailable(format!(
                "no answer within the operation timeout of {:?}",
                self.timeout
            ))),
        }
    }

    async fn subscription(&self, channel: String) -> Result<redis::aio::PubSub, BackendError> {
        let client = self.client.clone();
        self.bounded(async move {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok(pubsub)
        })
        .await
    }
}

fn unavailable(message: String) -> BackendError {
    BackendError::Unavailable {
        backend: NAME,
        message,
    }
}

fn map_err(e: &RedisError) -> BackendError {
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            BackendError::InvalidData {
                backend: NAME,
                message: e.to_string(),
            }
        }
        // The server answered with an error of its own: a permission (NOPERM, a failed AUTH),
        // a read-only replica, a command it does not know or refuses.
        redis::ErrorKind::AuthenticationFailed
        | redis::ErrorKind::Server(
            ServerErrorKind::ResponseError
            | ServerErrorKind::ExecAbort
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoPerm
            | ServerErrorKind::CrossSlot,
        )
        | redis::ErrorKind::Extension => BackendError::Service {
            backend: NAME,
            message: e.to_string(),
        },
        _ => unavailable(e.to_string()),
    }
}

/// The versioned records of kind `C` (configs, server records): one implementation for both.
impl RedisBackend {
    async fn put<C: Versioned>(
        &self,
        server: &ServerId,
        value: &C::Value,
    ) -> Result<u64, BackendError> {
        let keys = self.keys.records(C::KIND);
        let (value, event) = (
            codec::encode(value),
            codec::encode_change::<C>(server, Some(value)),
        );
        self.exchange(|mut conn| {
            let mut inv = PUT_RECORD.key(&keys[0]);
            inv.key(&keys[1])
                .key(&keys[2])
                .arg(server.as_str())
                .arg(&value)
                .arg(&event);
            async move { inv.invoke_async::<u64>(&mut conn).await }
        })
        .await
    }

    async fn get<C: Versioned>(
        &self,
        server: &ServerId,
    ) -> Result<Option<(C::Value, u64)>, BackendError> {
        let [records, versions, _] = self.keys.records(C::KIND);
        let (text, version): (Option<String>, Option<u64>) = self
            .exchange(|mut conn| {
                let pipe = redis::pipe()
                    .atomic()
                    .hget(&records, server.as_str())
                    .hget(&versions, server.as_str())
                    .clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        // A record stored before versions existed counts as version 0.
        text.map(|t| {
            Ok((
                codec::decode::<C>(NAME, server.as_str(), &t)?,
                version.unwrap_or(0),
            ))
        })
        .transpose()
    }

    async fn list<C: Versioned>(&self) -> Result<Vec<C>, BackendError> {
        let [records, versions, _] = self.keys.records(C::KIND);
        let (stored, versions): (HashMap<String, String>, HashMap<String, u64>) = self
            .exchange(|mut conn| {
                let pipe = redis::pipe()
                    .atomic()
                    .hgetall(&records)
                    .hgetall(&versions)
                    .clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let servers: BTreeSet<&String> = stored.keys().chain(versions.keys()).collect();
        let mut changes = servers
            .into_iter()
            .map(|server| {
                let value = stored
                    .get(server)
                    .map(|text| codec::decode::<C>(NAME, server, text))
                    .transpose()?;
                Ok(C::new(
                    codec::decode_server(NAME, server)?,
                    value,
                    versions.get(server).copied().unwrap_or(0),
                ))
            })
            .collect::<Result<Vec<C>, BackendError>>()?;
        changes.sort_by(|a, b| a.server().cmp(b.server()));
        Ok(changes)
    }

    async fn delete<C: Versioned>(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        let keys = self.keys.records(C::KIND);
        let event = codec::encode_change::<C>(server, None);
        let version: u64 = self
            .exchange(|mut conn| {
                let mut inv = DELETE_RECORD.key(&keys[0]);
                inv.key(&keys[1])
                    .key(&keys[2])
                    .arg(server.as_str())
                    .arg("")
                    .arg(&event);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok((version > 0).then_some(version))
    }

    async fn watch<C: Versioned>(&self) -> Result<BoxStream<'static, C>, BackendError> {
        let [_, _, events] = self.keys.records(C::KIND);
        let pubsub = self.subscription(events).await?;
        Ok(self
            .lifetime
            .bound(pubsub.into_on_message().filter_map(|msg| async move {
                let text = String::from_utf8_lossy(msg.get_payload_bytes());
                codec::decode_change(NAME, &text)
                    .inspect_err(|e| tracing::warn!(error = %e, "skipping a record change"))
                    .ok()
            })))
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.keys.namespace)
            .field("operation_timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl StateBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    crate::records::record_methods!();

    async fn claim(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<Claim, BackendError> {
        let ttl = ttl_ms(ttl)?;
        let (key, alive) = (self.keys.claim(session), self.keys.alive_prefix());
        let reply: Vec<String> = self
            .exchange(|mut conn| {
                let mut inv = CLAIM.key(&key);
                inv.arg(owner.as_str()).arg(ttl).arg(&alive);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        let other = |i: usize| {
            let text = reply.get(i).map(String::as_str).unwrap_or_default();
            StateId::new(text).map_err(|e| BackendError::InvalidData {
                backend: NAME,
                message: format!("the owner of claim {session} is invalid: {e}"),
            })
        };
        match reply.first().map(String::as_str) {
            Some("won") => Ok(Claim::Won),
            Some("took") => Ok(Claim::TookOver {
                previous: other(1)?,
            }),
            Some("held") => Ok(Claim::Held { owner: other(1)? }),
            _ => Err(BackendError::InvalidData {
                backend: NAME,
                message: format!("unexpected claim script reply {reply:?}"),
            }),
        }
    }

    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let ttl = ttl_ms(ttl)?;
        let (key, alive) = (self.keys.claim(session), self.keys.alive_prefix());
        let done: i64 = self
            .exchange(|mut conn| {
                let mut inv = REFRESH.key(&key);
                inv.arg(owner.as_str()).arg(ttl).arg(&alive);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(done == 1)
    }

    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError> {
        let key = self.keys.claim(session);
        let done: i64 = self
            .exchange(|mut conn| {
                let mut inv = RELEASE.key(&key);
                inv.arg(owner.as_str());
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(done == 1)
    }

    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError> {
        let (key, alive) = (self.keys.claim(session), self.keys.alive_prefix());
        let owner: Option<String> = self
            .exchange(|mut conn| {
                let mut inv = OWNER.key(&key);
                inv.arg(&alive);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        owner
            .map(|o| {
                StateId::new(&o).map_err(|e| BackendError::InvalidData {
                    backend: NAME,
                    message: format!("the owner of claim {session} is invalid: {e}"),
                })
            })
            .transpose()
    }

    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError> {
        let ttl = ttl_ms(ttl)?;
        let key = self.keys.alive(worker);
        self.exchange(|mut conn| {
            let cmd = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .clone();
            async move { cmd.query_async::<()>(&mut conn).await }
        })
        .await
    }

    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError> {
        let key = self.keys.alive(worker);
        let n: i64 = self
            .exchange(|mut conn| {
                let cmd = redis::cmd("EXISTS").arg(&key).clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        Ok(n == 1)
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
        let key = self.keys.slots(counter);
        let taken: i64 = self
            .exchange(|mut conn| {
                let mut inv = ACQUIRE_SLOT.key(&key);
                inv.arg(slot.as_str()).arg(limit).arg(ttl);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(taken == 1)
    }

    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError> {
        let key = self.keys.slots(counter);
        let removed: i64 = self
            .exchange(|mut conn| {
                let mut inv = RELEASE_SLOT.key(&key);
                inv.arg(slot.as_str());
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(removed == 1)
    }

    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError> {
        let key = self.keys.slots(counter);
        let n: u32 = self
            .exchange(|mut conn| {
                let inv = SLOT_COUNT.key(&key);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(n)
    }

    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        let chan = self.keys.channel(channel);
        self.exchange(|mut conn| {
            let cmd = redis::cmd("PUBLISH").arg(&chan).arg(payload).clone();
            async move { cmd.query_async::<i64>(&mut conn).await }
        })
        .await
        .map(drop)
    }

    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        let pubsub = self.subscription(self.keys.channel(channel)).await?;
        Ok(self.lifetime.bound(
            pubsub
                .into_on_message()
                .map(|msg| msg.get_payload_bytes().to_vec()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_and_hash_tagged() {
        let keys = Keys::new(StateId::new("ns-1").unwrap());
        let s = StateId::new("abc").unwrap();
        assert_eq!(keys.claim(&s), "mcp-pool:{ns-1}:claim:abc");
        assert_eq!(keys.alive(&s), format!("{}abc", keys.alive_prefix()));
        assert_eq!(keys.slots(&s), "mcp-pool:{ns-1}:slots:abc");
        assert_eq!(keys.channel(&s), "mcp-pool:{ns-1}:chan:abc");
        assert_eq!(
            keys.records(Kind::Config),
            [
                "mcp-pool:{ns-1}:configs",
                "mcp-pool:{ns-1}:config-versions",
                "mcp-pool:{ns-1}:config-events"
            ]
        );
        assert_eq!(
            keys.records(Kind::Server),
            [
                "mcp-pool:{ns-1}:servers",
                "mcp-pool:{ns-1}:server-versions",
                "mcp-pool:{ns-1}:server-events"
            ]
        );
    }
}
