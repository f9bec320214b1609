//! The `memory` backend: the embedded default for a single process.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::Duration,
};

use futures::stream::BoxStream;
use mcp_pool_traits::{BackendError, Claim, ServerId, StateBackend, StateId};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    fanout::Fanout,
    lifetime::HandleLifetime,
    records::{Change, Kind, Versioned},
    rules::{LiveClaim, check_limit, decide_claim, ttl_rounded},
};

/// Writes to a namespace between two sweeps of its expired records. Reads prune lazily, so the
/// sweep only bounds the memory taken by records nobody asks about again.
const SWEEP_EVERY: usize = 1024;

/// The name this backend reports in errors and logs.
const NAME: &str = "memory";

/// State shared by the workers of one process: maps under a mutex, notifications through tokio
/// broadcast channels, TTLs on [`tokio::time::Instant`] (so tests with a paused clock can move
/// time on).
///
/// Cloning is cheap and shares the store. [`with_namespace`](Self::with_namespace) gives a
/// handle on the same store that sees only another namespace, the way two deployments share one
/// Redis (an instance of its own: its streams end when it and its clones are dropped). No operation fails except on invalid arguments: there is nothing to be unreachable.
///
/// ```
/// # tokio_test_block_on(async {
/// use mcp_pool_backends::MemoryBackend;
/// use mcp_pool_traits::{StateBackend, StateId};
/// use std::time::Duration;
///
/// let backend = MemoryBackend::new();
/// let (session, worker) = (StateId::new("session-1")?, StateId::new("worker-a")?);
/// backend.heartbeat(&worker, Duration::from_secs(10)).await?;
/// assert!(backend.claim(&session, &worker, Duration::from_secs(60)).await?.is_owned());
/// assert_eq!(backend.owner(&session).await?, Some(worker));
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    store: Arc<Store>,
    namespace: StateId,
    /// Ends this handle's streams when it and its clones are dropped.
    lifetime: HandleLifetime,
}

struct Store {
    spaces: Mutex<HashMap<StateId, Space>>,
    fanout: Fanout,
}

#[derive(Default)]
struct Space {
    /// Per kind and server: the latest change, a deletion kept as a tombstone.
    records: BTreeMap<(Kind, ServerId), Change>,
    claims: HashMap<StateId, ClaimRecord>,
    heartbeats: HashMap<StateId, Instant>,
    slots: HashMap<StateId, HashMap<StateId, Instant>>,
    writes: usize,
}

struct ClaimRecord {
    owner: StateId,
    expires: Instant,
    tracked: bool,
}

impl Space {
    fn alive(&self, worker: &StateId, now: Instant) -> bool {
        self.heartbeats.get(worker).is_some_and(|&exp| exp > now)
    }

    fn live_claim(&self, session: &StateId, now: Instant) -> Option<LiveClaim<'_>> {
        let rec = self.claims.get(session).filter(|r| r.expires > now)?;
        Some(LiveClaim {
            owner: &rec.owner,
            tracked: rec.tracked,
            owner_alive: self.alive(&rec.owner, now),
        })
    }

    /// The latest change of kind `C` of `server`.
    fn latest<C: Versioned>(&self, server: &ServerId) -> Option<C> {
        C::unwrap(self.records.get(&(C::KIND, server.clone()))?)
    }

    /// Records `value` (or a deletion) for `server` under the next version; the change to
    /// announce.
    fn record<C: Versioned>(&mut self, server: &ServerId, value: Option<C::Value>) -> Change {
        let version = self.latest::<C>(server).map_or(0, |c| c.version()) + 1;
        let change = C::new(server.clone(), value, version).wrap();
        self.records
            .insert((C::KIND, server.clone()), change.clone());
        change
    }

    fn wrote(&mut self, now: Instant) {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            self.claims.retain(|_, r| r.expires > now);
            self.heartbeats.retain(|_, &mut exp| exp > now);
            self.slots.retain(|_, slots| {
                slots.retain(|_, &mut exp| exp > now);
                !slots.is_empty()
            });
        }
    }
}

impl MemoryBackend {
    /// A new, empty store, seen through the namespace `default`.
    pub fn new() -> Self {
        Self {
            store: Arc::new(Store {
                spaces: Mutex::new(HashMap::new()),
                fanout: Fanout::new(),
            }),
            // Invariant: "default" follows the id rule.
            namespace: StateId::new("default").expect("a valid id"),
            lifetime: HandleLifetime::new(),
        }
    }

    /// A handle on the same store that sees only `namespace`: its configs, claims, heartbeats,
    /// slots and channels are separate from every other namespace's.
    pub fn with_namespace(&self, namespace: StateId) -> Self {
        Self {
            store: Arc::clone(&self.store),
            namespace,
            lifetime: HandleLifetime::new(),
        }
    }

    /// The namespace this handle sees.
    pub fn namespace(&self) -> &StateId {
        &self.namespace
    }

    fn with_space<R>(&self, f: impl FnOnce(&mut Space) -> R) -> R {
        let mut spaces = self.store.spaces.lock();
        f(spaces.entry(self.namespace.clone()).or_default())
    }

    /// Stores `value` (`None`: deletes it if stored) under the next version and tells the
    /// watchers, under the lock so that they see a server's changes in version order. The
    /// version, or `None` for a delete of nothing.
    fn write<C: Versioned>(&self, server: &ServerId, value: Option<C::Value>) -> Option<u64> {
        self.with_space(|s| {
            let stored = s.latest::<C>(server).is_some_and(|c| c.value().is_some());
            if value.is_none() && !stored {
                return None;
            }
            let change = s.record::<C>(server, value);
            let version = C::unwrap(&change).map(|c| c.version());
            self.store.fanout.send_change(&self.namespace, change);
            version
        })
    }

    // The record operations of `crate::records::record_methods`.

    async fn put<C: Versioned>(
        &self,
        server: &ServerId,
        value: &C::Value,
    ) -> Result<u64, BackendError> {
        // Invariant: a put always writes.
        Ok(self
            .write::<C>(server, Some(value.clone()))
            .expect("a put writes"))
    }

    async fn get<C: Versioned>(
        &self,
        server: &ServerId,
    ) -> Result<Option<(C::Value, u64)>, BackendError> {
        Ok(self.with_space(|s| {
            let change = s.latest::<C>(server)?;
            Some((change.value()?.clone(), change.version()))
        }))
    }

    async fn list<C: Versioned>(&self) -> Result<Vec<C>, BackendError> {
        Ok(self.with_space(|s| {
            s.records
                .iter()
                .filter(|((kind, _), _)| *kind == C::KIND)
                .filter_map(|(_, change)| C::unwrap(change))
                .collect()
        }))
    }

    async fn delete<C: Versioned>(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        Ok(self.write::<C>(server, None))
    }

    async fn watch<C: Versioned>(&self) -> Result<BoxStream<'static, C>, BackendError> {
        Ok(self
            .lifetime
            .bound(self.store.fanout.watch(&self.namespace)))
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn deadline(now: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    let ttl = ttl_rounded(ttl)?;
    // A TTL too far out for the clock is as good as forever.
    Ok(now
        .checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400)))
}

#[async_trait::async_trait]
impl StateBackend for MemoryBackend {
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
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        Ok(self.with_space(|s| {
            let outcome = decide_claim(s.live_claim(session, now), owner);
            if outcome.is_owned() {
                let tracked = s.alive(owner, now);
                s.claims.insert(
                    session.clone(),
                    ClaimRecord {
                        owner: owner.clone(),
                        expires,
                        tracked,
                    },
                );
                s.wrote(now);
            }
            outcome
        }))
    }

    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        Ok(self.with_space(|s| {
            let tracked = s.alive(owner, now);
            match s.claims.get_mut(session) {
                Some(rec) if rec.expires > now && rec.owner == *owner => {
                    rec.expires = expires;
                    rec.tracked = tracked;
                    true
                }
                _ => false,
            }
        }))
    }

    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self.with_space(|s| {
            let held = s
                .claims
                .get(session)
                .is_some_and(|r| r.expires > now && r.owner == *owner);
            if held {
                s.claims.remove(session);
            }
            held
        }))
    }

    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError> {
        let now = Instant::now();
        Ok(self.with_space(|s| {
            s.live_claim(session, now)
                .filter(LiveClaim::owner_is_live)
                .map(|c| c.owner.clone())
        }))
    }

    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        self.with_space(|s| {
            s.heartbeats.insert(worker.clone(), expires);
            s.wrote(now);
        });
        Ok(())
    }

    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self.with_space(|s| s.alive(worker, now)))
    }

    async fn try_acquire_slot(
        &self,
        counter: &StateId,
        slot: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        check_limit(limit)?;
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        Ok(self.with_space(|s| {
            let slots = s.slots.entry(counter.clone()).or_default();
            slots.retain(|_, &mut exp| exp > now);
            let taken = if let Some(exp) = slots.get_mut(slot) {
                *exp = expires;
                true
            } else if slots.len() < limit as usize {
                slots.insert(slot.clone(), expires);
                true
            } else {
                false
            };
            s.wrote(now);
            taken
        }))
    }

    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self.with_space(|s| {
            s.slots
                .get_mut(counter)
                .and_then(|slots| slots.remove(slot))
                .is_some_and(|exp| exp > now)
        }))
    }

    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError> {
        let now = Instant::now();
        Ok(self.with_space(|s| {
            let live = s
                .slots
                .get(counter)
                .map_or(0, |slots| slots.values().filter(|&&exp| exp > now).count());
            // Never more than the largest limit, a u32.
            u32::try_from(live).unwrap_or(u32::MAX)
        }))
    }

    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        self.store
            .fanout
            .send_message(&self.namespace, channel, payload);
        Ok(())
    }

    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        Ok(self
            .lifetime
            .bound(self.store.fanout.subscribe(&self.namespace, channel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StateId {
        StateId::new(s).unwrap()
    }

    // The paused clock is why TTLs live on tokio's Instant: an hour passes in no time.
    #[tokio::test(start_paused = true)]
    async fn ttls_follow_the_tokio_clock() {
        let b = MemoryBackend::new();
        let (s, w, c) = (id("s"), id("w"), id("c"));
        b.heartbeat(&w, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(
            b.claim(&s, &w, Duration::from_secs(3600)).await.unwrap(),
            Claim::Won
        );
        assert!(
            b.try_acquire_slot(&c, &s, 1, Duration::from_secs(3600))
                .await
                .unwrap()
        );
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert_eq!(b.owner(&s).await.unwrap(), Some(w.clone()));
        assert_eq!(b.slot_count(&c).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.owner(&s).await.unwrap(), None);
        assert!(!b.is_alive(&w).await.unwrap());
        assert_eq!(b.slot_count(&c).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_without_heartbeats_keeps_its_claim_for_the_ttl() {
        let b = MemoryBackend::new();
        let (s, w, x) = (id("s"), id("w"), id("x"));
        b.claim(&s, &w, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            b.claim(&s, &x, Duration::from_secs(60)).await.unwrap(),
            Claim::Held { owner: w.clone() }
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            b.claim(&s, &x, Duration::from_secs(60)).await.unwrap(),
            Claim::Won
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_drop_records_nobody_reads() {
        let b = MemoryBackend::new();
        for i in 0..SWEEP_EVERY {
            b.heartbeat(&id(&format!("w{i}")), Duration::from_secs(1))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..SWEEP_EVERY {
            b.heartbeat(&id(&format!("v{i}")), Duration::from_secs(10))
                .await
                .unwrap();
        }
        let heartbeats = b.with_space(|s| s.heartbeats.len());
        assert!(
            heartbeats <= SWEEP_EVERY,
            "{heartbeats} heartbeats kept, the expired ones were not swept"
        );
    }
}
