//! [`Group`]: the workers sharing a backend, as one of them sees the others.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
};

use mcp_pool::traits::{StateBackend, StateId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    membership::WorkerId,
    wire::{Part, channel_of},
};

/// The workers sharing a backend, as one of them sees the others: its id, the backend, the
/// group key, and the requests it relays.
pub struct Group {
    pub(super) worker: WorkerId,
    /// This worker's channel: requests for it, and replies to its requests.
    pub(super) channel: StateId,
    pub(super) backend: Arc<dyn StateBackend>,
    /// The key that signs envelopes.
    pub(super) key: Vec<u8>,
    /// The next relayed request's id.
    pub(super) next: AtomicU64,
    /// Replies awaited, by request id.
    pub(super) pending: Mutex<HashMap<u64, ReplySink>>,
    /// Requests being served for other workers, by (worker, id).
    pub(super) serving: Mutex<HashMap<(String, u64), CancellationToken>>,
    /// Sessions taken over and about to be restored: id → the protocol version to restore.
    pub(super) adopting: Mutex<HashMap<String, String>>,
    /// The owner each session relayed lately had: a hint that saves a lookup per request
    /// (the owner checks it holds the session), at most [`OWNER_HINTS`] entries.
    pub(super) owners: Mutex<HashMap<String, StateId>>,
}

/// Where the frames of one relayed request's reply go: (frame number, parts).
pub(super) type ReplySink = mpsc::Sender<(u64, Vec<Part>)>;

/// The most owners [`Group`] remembers; it forgets them all when full.
const OWNER_HINTS: usize = 16_384;

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("worker", &self.worker)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Group {
    /// The group of `worker` over `backend`, signing with `key` (see [`crate::cluster`]).
    ///
    /// # Errors
    /// When `worker` is too long to name a channel.
    pub fn new(
        worker: WorkerId,
        backend: Arc<dyn StateBackend>,
        key: &[u8],
    ) -> Result<Arc<Self>, String> {
        let channel = channel_of(worker.state_id().as_str())
            .ok_or_else(|| format!("worker id {worker} is too long: at most 120 characters"))?;
        Ok(Arc::new(Self {
            worker,
            channel,
            backend,
            key: key.to_vec(),
            next: AtomicU64::new(1),
            pending: Mutex::default(),
            serving: Mutex::default(),
            adopting: Mutex::default(),
            owners: Mutex::default(),
        }))
    }

    /// This worker's id.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// Remembers that `owner` answered for `session`.
    pub(super) fn remember(&self, session: &str, owner: StateId) {
        let mut owners = self.owners.lock();
        if owners.len() >= OWNER_HINTS {
            owners.clear();
        }
        owners.insert(session.to_owned(), owner);
    }
}
