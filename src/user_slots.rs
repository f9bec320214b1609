//! The user limit across workers: the backend's bounded counters, one per user (see
//! [`UserSlots`]).

use std::time::Duration;

use mcp_pool_traits::StateBackend;

/// The user limit across workers: one slot of the backend's counter `user-<hash>` per session
/// of that user in any worker (the backend's bounded counters). Used when the backend is shared
/// (not `memory`): the local count already covers a single process.
#[derive(Debug)]
pub(crate) struct UserSlots {
    backend: std::sync::Arc<dyn StateBackend>,
    worker: String,
    next: std::sync::atomic::AtomicU64,
    limit: u32,
    /// Slots expire after this unless renewed by the maintenance task, so a crashed worker's
    /// slots come back.
    pub(crate) ttl: Duration,
}

/// How long a backend operation of the user limit may take before the pool goes on without
/// it (failing open: local pooling must not stop when the backend does).
const SLOT_TIMEOUT: Duration = Duration::from_secs(2);

impl UserSlots {
    pub(crate) fn new(
        backend: std::sync::Arc<dyn StateBackend>,
        limit: u32,
        cleanup_interval: Duration,
    ) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            backend,
            worker: format!("w{random:016x}"),
            next: std::sync::atomic::AtomicU64::new(1),
            limit,
            ttl: (cleanup_interval * 3).max(Duration::from_secs(30)),
        }
    }

    fn counter(subject: &mcp_pool_traits::Digest256) -> Option<mcp_pool_traits::StateId> {
        mcp_pool_traits::StateId::new(format!("user-{subject}")).ok()
    }

    /// Takes a slot for one more session of `subject`. `Ok(None)`: the backend is unreachable
    /// and the limit is not enforced across workers for this session; `Err(())`: the user is
    /// at the limit.
    pub(crate) async fn take(
        &self,
        subject: &mcp_pool_traits::Digest256,
    ) -> Result<Option<mcp_pool_traits::StateId>, ()> {
        let Some(counter) = Self::counter(subject) else {
            return Ok(None);
        };
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(slot) = mcp_pool_traits::StateId::new(format!("{}-{n}", self.worker)) else {
            return Ok(None);
        };
        let taking = self
            .backend
            .try_acquire_slot(&counter, &slot, self.limit, self.ttl);
        match tokio::time::timeout(SLOT_TIMEOUT, taking).await {
            Ok(Ok(true)) => Ok(Some(slot)),
            Ok(Ok(false)) => Err(()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "user limit across workers not enforced: backend failed");
                Ok(None)
            }
            Err(_) => {
                tracing::warn!("user limit across workers not enforced: backend timed out");
                Ok(None)
            }
        }
    }

    /// Gives a slot back (awaited where the caller needs the room at once).
    pub(crate) async fn release(
        &self,
        subject: &mcp_pool_traits::Digest256,
        slot: &mcp_pool_traits::StateId,
    ) {
        if let Some(counter) = Self::counter(subject) {
            let releasing = self.backend.release_slot(&counter, slot);
            if let Ok(Err(error)) = tokio::time::timeout(SLOT_TIMEOUT, releasing).await {
                tracing::debug!(%error, "releasing a user slot failed; it expires by its TTL");
            }
        }
    }

    /// Renews the slots of live sessions.
    pub(crate) async fn renew(
        &self,
        subject: &mcp_pool_traits::Digest256,
        slots: &[mcp_pool_traits::StateId],
    ) {
        let Some(counter) = Self::counter(subject) else {
            return;
        };
        for slot in slots {
            let renewing = self
                .backend
                .try_acquire_slot(&counter, slot, self.limit, self.ttl);
            let _ = tokio::time::timeout(SLOT_TIMEOUT, renewing).await;
        }
    }
}
