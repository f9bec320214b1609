//! Writing a state backend, start to finish: a third-party backend on a `Mutex<HashMap>` and
//! the conformance suite that proves it.
//!
//! ```text
//! cargo run --example custom_backend     # uses it
//! cargo test --example custom_backend    # proves it: one test per check of the suite
//! ```
//!
//! Saved configs carry a version the backend gives each put and delete, atomically with the
//! write (here: under the map's lock); watchers apply only versions above those they applied,
//! so a re-list or a late notification never reverts a newer config.
//!
//! Two habits make a backend pass the suite's key-building check without effort: keys are
//! typed tuples (or strings joined by a separator that validated ids cannot contain, such as
//! `:`), and every key starts with the namespace the factory hands over.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::BoxStream};
use mcp_pool_traits::{
    BackendError, Claim, ConfigChange, PoolConfig, SavedConfig, SavedServer, ServerChange,
    ServerId, ServerRecord, StateBackend, StateId,
};
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// (namespace, server) → its latest change: the value (`None` once deleted: the tombstone
/// that keeps versions increasing and tells a re-listing watcher of the delete) and its
/// version. Pool configs and server records follow the same rules, each in its own map.
type Versioned<T> = HashMap<(StateId, ServerId), (Option<T>, u64)>;

/// What the map holds, keyed by (namespace, id) tuples: no string building, nothing to escape.
#[derive(Default)]
struct Tables {
    configs: Versioned<PoolConfig>,
    servers: Versioned<ServerRecord>,
    /// (namespace, session) → (owner, expires, owner had a heartbeat when it claimed).
    claims: HashMap<(StateId, StateId), (StateId, Instant, bool)>,
    heartbeats: HashMap<(StateId, StateId), Instant>,
    /// (namespace, counter) → slot → expires.
    slots: HashMap<(StateId, StateId), HashMap<StateId, Instant>>,
}

/// Events every instance on one map hears: config changes and published messages.
#[derive(Clone, Debug)]
enum Event {
    Config(StateId, ConfigChange),
    Server(StateId, ServerChange),
    Message(StateId, StateId, Vec<u8>),
}

/// The shared "server": instances made with [`MapStore::backend`] on one store share state.
#[derive(Clone)]
struct MapStore {
    tables: Arc<Mutex<Tables>>,
    events: broadcast::Sender<Event>,
}

impl MapStore {
    fn new() -> Self {
        Self {
            tables: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    /// An instance seeing `namespace`.
    fn backend(&self, namespace: StateId) -> MapBackend {
        MapBackend {
            store: self.clone(),
            ns: namespace,
            dropped: tokio::sync::watch::channel(()).0,
        }
    }
}

/// A backend on a [`MapStore`], seeing one namespace.
struct MapBackend {
    store: MapStore,
    ns: StateId,
    /// Never sent on: its receivers see it close when the instance is dropped, which ends the
    /// instance's streams (the trait's rule).
    dropped: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for MapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapBackend").field("ns", &self.ns).finish()
    }
}

fn until(ttl: Duration) -> Result<Instant, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::InvalidArgument("a TTL of 0".into()));
    }
    Ok(Instant::now() + ttl)
}

impl MapBackend {
    fn key<T: Clone>(&self, id: &T) -> (StateId, T) {
        (self.ns.clone(), id.clone())
    }

    fn alive(&self, t: &Tables, worker: &StateId, now: Instant) -> bool {
        t.heartbeats
            .get(&self.key(worker))
            .is_some_and(|&exp| exp > now)
    }

    /// Stores `value` (`None`: a deletion, only if something is stored) under the server's
    /// next version and tells every watcher, with `event` building the change; the version.
    /// Called under the lock, so that the version is given atomically with the write and
    /// watchers see a server's changes in version order.
    fn record<T: Clone>(
        &self,
        map: &mut Versioned<T>,
        server: &ServerId,
        value: Option<T>,
        event: impl FnOnce(StateId, ServerId, Option<T>, u64) -> Event,
    ) -> Option<u64> {
        let key = self.key(server);
        let (stored, last) = map
            .get(&key)
            .map_or((false, 0), |(v, version)| (v.is_some(), *version));
        if value.is_none() && !stored {
            return None;
        }
        let version = last + 1;
        map.insert(key, (value.clone(), version));
        let _ = self
            .store
            .events
            .send(event(self.ns.clone(), server.clone(), value, version));
        Some(version)
    }

    fn read<T: Clone>(&self, map: &Versioned<T>, server: &ServerId) -> Option<(T, u64)> {
        let (value, version) = map.get(&self.key(server))?;
        Some((value.clone()?, *version))
    }

    /// Every server's latest change in this namespace, ordered by server id.
    fn list<T: Clone, C>(
        &self,
        map: &Versioned<T>,
        change: impl Fn(ServerId, Option<T>, u64) -> C,
    ) -> Vec<C> {
        let mut all: Vec<_> = map
            .iter()
            .filter(|((ns, _), _)| *ns == self.ns)
            .map(|((_, server), (value, version))| (server.clone(), value.clone(), *version))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(s, v, n)| change(s, v, n)).collect()
    }

    fn events<T: Send + 'static>(
        &self,
        pick: impl Fn(Event) -> Option<T> + Send + 'static,
    ) -> BoxStream<'static, T> {
        let rx = self.store.events.subscribe();
        let mut dropped = self.dropped.subscribe();
        let instance_dropped = async move {
            let _ = dropped.changed().await;
        };
        futures::stream::unfold((rx, pick), |(mut rx, pick)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if let Some(item) = pick(ev) {
                            return Some((item, (rx, pick)));
                        }
                    }
                    // Lagged or closed: the stream ends, and the trait tells the consumer to
                    // subscribe again.
                    Err(_) => return None,
                }
            }
        })
        .take_until(instance_dropped)
        .boxed()
    }
}

fn config_change(server: ServerId, config: Option<PoolConfig>, version: u64) -> ConfigChange {
    ConfigChange {
        server,
        config,
        version,
    }
}

fn config_event(ns: StateId, server: ServerId, config: Option<PoolConfig>, version: u64) -> Event {
    Event::Config(ns, config_change(server, config, version))
}

fn server_change(server: ServerId, record: Option<ServerRecord>, version: u64) -> ServerChange {
    ServerChange {
        server,
        record,
        version,
    }
}

fn server_event(
    ns: StateId,
    server: ServerId,
    record: Option<ServerRecord>,
    version: u64,
) -> Event {
    Event::Server(ns, server_change(server, record, version))
}

#[mcp_pool_traits::async_trait]
impl StateBackend for MapBackend {
    fn name(&self) -> &'static str {
        "hashmap"
    }

    async fn put_config(
        &self,
        server: &ServerId,
        config: &PoolConfig,
    ) -> Result<u64, BackendError> {
        let mut t = self.store.tables.lock();
        let version = self.record(&mut t.configs, server, Some(config.clone()), config_event);
        // Invariant: a put always writes.
        Ok(version.expect("a put writes"))
    }

    async fn get_config(&self, server: &ServerId) -> Result<Option<SavedConfig>, BackendError> {
        let t = self.store.tables.lock();
        Ok(self
            .read(&t.configs, server)
            .map(|(config, version)| SavedConfig { config, version }))
    }

    async fn list_configs(&self) -> Result<Vec<ConfigChange>, BackendError> {
        let t = self.store.tables.lock();
        Ok(self.list(&t.configs, config_change))
    }

    async fn delete_config(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        let mut t = self.store.tables.lock();
        Ok(self.record(&mut t.configs, server, None, config_event))
    }

    async fn watch_configs(&self) -> Result<BoxStream<'static, ConfigChange>, BackendError> {
        let ns = self.ns.clone();
        Ok(self.events(move |ev| match ev {
            Event::Config(n, change) if n == ns => Some(change),
            _ => None,
        }))
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<u64, BackendError> {
        let mut t = self.store.tables.lock();
        let version = self.record(
            &mut t.servers,
            &record.id,
            Some(record.clone()),
            server_event,
        );
        // Invariant: a put always writes.
        Ok(version.expect("a put writes"))
    }

    async fn get_server(&self, server: &ServerId) -> Result<Option<SavedServer>, BackendError> {
        let t = self.store.tables.lock();
        Ok(self
            .read(&t.servers, server)
            .map(|(record, version)| SavedServer { record, version }))
    }

    async fn list_servers(&self) -> Result<Vec<ServerChange>, BackendError> {
        let t = self.store.tables.lock();
        Ok(self.list(&t.servers, server_change))
    }

    async fn delete_server(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        let mut t = self.store.tables.lock();
        Ok(self.record(&mut t.servers, server, None, server_event))
    }

    async fn watch_servers(&self) -> Result<BoxStream<'static, ServerChange>, BackendError> {
        let ns = self.ns.clone();
        Ok(self.events(move |ev| match ev {
            Event::Server(n, change) if n == ns => Some(change),
            _ => None,
        }))
    }

    async fn claim(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<Claim, BackendError> {
        let expires = until(ttl)?;
        let now = Instant::now();
        let mut t = self.store.tables.lock();
        let outcome = match t.claims.get(&self.key(session)) {
            Some((holder, exp, tracked)) if *exp > now && holder != owner => {
                // A holder that heartbeated is dead once its heartbeat ran out.
                if *tracked && !self.alive(&t, holder, now) {
                    Claim::TookOver {
                        previous: holder.clone(),
                    }
                } else {
                    return Ok(Claim::Held {
                        owner: holder.clone(),
                    });
                }
            }
            _ => Claim::Won,
        };
        let tracked = self.alive(&t, owner, now);
        t.claims
            .insert(self.key(session), (owner.clone(), expires, tracked));
        Ok(outcome)
    }

    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let expires = until(ttl)?;
        let now = Instant::now();
        let mut t = self.store.tables.lock();
        let tracked = self.alive(&t, owner, now);
        match t.claims.get_mut(&self.key(session)) {
            Some(c) if c.1 > now && c.0 == *owner => {
                *c = (owner.clone(), expires, tracked);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError> {
        let mut t = self.store.tables.lock();
        let key = self.key(session);
        let held = t
            .claims
            .get(&key)
            .is_some_and(|c| c.1 > Instant::now() && c.0 == *owner);
        if held {
            t.claims.remove(&key);
        }
        Ok(held)
    }

    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError> {
        let now = Instant::now();
        let t = self.store.tables.lock();
        Ok(t.claims
            .get(&self.key(session))
            .filter(|(holder, exp, tracked)| {
                *exp > now && (!tracked || self.alive(&t, holder, now))
            })
            .map(|(holder, _, _)| holder.clone()))
    }

    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError> {
        let expires = until(ttl)?;
        self.store
            .tables
            .lock()
            .heartbeats
            .insert(self.key(worker), expires);
        Ok(())
    }

    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError> {
        let t = self.store.tables.lock();
        Ok(self.alive(&t, worker, Instant::now()))
    }

    async fn try_acquire_slot(
        &self,
        counter: &StateId,
        slot: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        if limit == 0 {
            return Err(BackendError::InvalidArgument("a limit of 0".into()));
        }
        let expires = until(ttl)?;
        let now = Instant::now();
        let mut t = self.store.tables.lock();
        let slots = t.slots.entry(self.key(counter)).or_default();
        slots.retain(|_, exp| *exp > now);
        if slots.contains_key(slot) || slots.len() < limit as usize {
            slots.insert(slot.clone(), expires);
            return Ok(true);
        }
        Ok(false)
    }

    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError> {
        let mut t = self.store.tables.lock();
        let removed = t
            .slots
            .get_mut(&self.key(counter))
            .and_then(|slots| slots.remove(slot));
        Ok(removed.is_some_and(|exp| exp > Instant::now()))
    }

    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError> {
        let now = Instant::now();
        let t = self.store.tables.lock();
        let live = t
            .slots
            .get(&self.key(counter))
            .map_or(0, |slots| slots.values().filter(|exp| **exp > now).count());
        Ok(live as u32)
    }

    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        let event = Event::Message(self.ns.clone(), channel.clone(), payload.to_vec());
        let _ = self.store.events.send(event);
        Ok(())
    }

    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        let (ns, channel) = (self.ns.clone(), channel.clone());
        Ok(self.events(move |ev| match ev {
            Event::Message(n, c, payload) if n == ns && c == channel => Some(payload),
            _ => None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MapStore::new();
    let (a, b) = (
        store.backend(StateId::new("prod")?),
        store.backend(StateId::new("prod")?),
    );
    let (session, worker) = (StateId::new("downstream-42")?, StateId::new("worker-a")?);
    a.heartbeat(&worker, Duration::from_secs(10)).await?;
    let claim = a.claim(&session, &worker, Duration::from_secs(60)).await?;
    println!("worker-a claims downstream-42: {claim:?}");
    println!("instance b sees owner {:?}", b.owner(&session).await?);
    let server = ServerId::new("github")?;
    let version = a.put_config(&server, &PoolConfig::enabled()).await?;
    let seen = b.get_config(&server).await?.map(|saved| saved.version);
    println!("a saves github's config as version {version}; b reads version {seen:?}");
    println!("prove it: cargo test --example custom_backend");
    Ok(())
}

// The pool's model-based properties with this backend under the pool (user limits take its
// slots).
#[cfg(test)]
mcp_pool_conformance::pool_conformance! {
    name: pool_model_on_this_backend,
    backend: || Arc::new(MapStore::new().backend(StateId::new("model").expect("a valid id"))),
    cases: 32,
}

// The whole proof: one test per check of the suite, each in its own namespace.
#[cfg(test)]
mcp_pool_conformance::backend_conformance! {
    name: conformance,
    factory: {
        let store = MapStore::new();
        move |ns: StateId| {
            let backend = store.backend(ns);
            async move { Ok::<_, BackendError>(Arc::new(backend)) }
        }
    },
}
