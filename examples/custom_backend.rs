//! Writing a state backend, start to finish: a third-party backend on a `Mutex<HashMap>` and
//! the conformance suite that proves it (DESIGN §8, §10).
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
    BackendError, Claim, ConfigChange, PoolConfig, SavedConfig, ServerId, StateBackend, StateId,
};
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// What the map holds, keyed by (namespace, id) tuples: no string building, nothing to escape.
#[derive(Default)]
struct Tables {
    /// (namespace, server) → its latest change: the config (`None` once deleted: the
    /// tombstone that keeps versions increasing and tells a re-listing watcher of the delete)
    /// and its version.
    configs: HashMap<(StateId, ServerId), ConfigChange>,
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
        }
    }
}

/// A backend on a [`MapStore`], seeing one namespace.
struct MapBackend {
    store: MapStore,
    ns: StateId,
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

    /// Stores `config` (`None`: a deletion) under the server's next version and tells every
    /// watcher; the version. Called under the lock, so that the version is given atomically
    /// with the write and watchers see a server's changes in version order.
    fn record(&self, t: &mut Tables, server: &ServerId, config: Option<PoolConfig>) -> u64 {
        let key = self.key(server);
        let version = t.configs.get(&key).map_or(0, |change| change.version) + 1;
        let change = ConfigChange {
            server: server.clone(),
            config,
            version,
        };
        t.configs.insert(key, change.clone());
        let _ = self
            .store
            .events
            .send(Event::Config(self.ns.clone(), change));
        version
    }

    fn events<T: Send + 'static>(
        &self,
        pick: impl Fn(Event) -> Option<T> + Send + 'static,
    ) -> BoxStream<'static, T> {
        let rx = self.store.events.subscribe();
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
        .boxed()
    }
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
        Ok(self.record(&mut t, server, Some(config.clone())))
    }

    async fn get_config(&self, server: &ServerId) -> Result<Option<SavedConfig>, BackendError> {
        let t = self.store.tables.lock();
        Ok(t.configs.get(&self.key(server)).and_then(|change| {
            Some(SavedConfig {
                config: change.config.clone()?,
                version: change.version,
            })
        }))
    }

    async fn list_configs(&self) -> Result<Vec<ConfigChange>, BackendError> {
        let t = self.store.tables.lock();
        let mut all: Vec<ConfigChange> = t
            .configs
            .iter()
            .filter(|((ns, _), _)| *ns == self.ns)
            .map(|(_, change)| change.clone())
            .collect();
        all.sort_by(|a, b| a.server.cmp(&b.server));
        Ok(all)
    }

    async fn delete_config(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        let mut t = self.store.tables.lock();
        let stored = t
            .configs
            .get(&self.key(server))
            .is_some_and(|change| change.config.is_some());
        Ok(stored.then(|| self.record(&mut t, server, None)))
    }

    async fn watch_configs(&self) -> Result<BoxStream<'static, ConfigChange>, BackendError> {
        let ns = self.ns.clone();
        Ok(self.events(move |ev| match ev {
            Event::Config(n, change) if n == ns => Some(change),
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
