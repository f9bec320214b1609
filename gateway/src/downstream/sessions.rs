//! The downstream sessions of each server and of each user: [`Sessions`] (one server's
//! initialized sessions, who owns each, and the slot each holds) and [`SessionSlots`] (how
//! many sessions each user holds, `DOWNSTREAM_SESSIONS_PER_USER`), with the checks that tell
//! a conversation whose upstream session was lost.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use mcp_pool::{AffinityState, Pool, Principal, ServerId};
use parking_lot::Mutex;
use rmcp::{
    RoleServer,
    service::Peer,
    transport::streamable_http_server::{
        SessionManager as _,
        session::{SessionId, local::LocalSessionManager},
    },
};

/// The downstream sessions each user holds (`DOWNSTREAM_SESSIONS_PER_USER`): a streamable
/// HTTP session from its `initialize` until it ends (DELETE, idle timeout, shutdown), an
/// HTTP+SSE session while its stream is open, a WebSocket session while its socket is.
#[derive(Default)]
pub(super) struct SessionSlots {
    held: Mutex<HashMap<Principal, u32>>,
}

/// One held downstream session of a user; the count goes down when the last clone drops.
/// Travels in the extensions of the request that opens the session, and is kept by what
/// lives as long as the session: the [`Proxy`](super::proxy::Proxy) (streamable HTTP), the event stream (SSE), the
/// socket's request parts (WebSocket).
#[derive(Clone)]
pub(super) struct SessionSlot(pub(super) Arc<SlotGuard>);

/// What a [`SessionSlot`] holds: the count it takes, and what is known of its session.
pub(super) struct SlotGuard {
    slots: Arc<SessionSlots>,
    /// Whom the session counts against ([`slot_holder`](super::caller::slot_holder)).
    holder: Principal,
    /// The session's sticky affinity (its [`Proxy`](super::proxy::Proxy)'s), set at its
    /// `initialize`.
    pub(super) affinity: OnceLock<String>,
    /// Whether the pool was seen holding a binding for it: from then on, a binding gone is a
    /// conversation lost ([`conversation_lost`]).
    pub(super) bound: AtomicBool,
    /// Its Proxy found the conversation lost while sending a request upstream: the session's
    /// next request ends it with a 404.
    pub(super) lost: AtomicBool,
    /// The streamable HTTP session this slot was taken for, once its id is known: removed
    /// from its manager when the session ends. rmcp's `LocalSessionManager` keeps the handle
    /// of a session whose worker ended on its idle timeout, so its id would go on answering
    /// as a live session's and its memory would stay.
    session: Mutex<Option<HeldSession>>,
}

/// A streamable HTTP session a slot was taken for: its manager, its server's sessions, its id.
type HeldSession = (Arc<LocalSessionManager>, Arc<Sessions>, String);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut held = self.slots.held.lock();
            if let Some(n) = held.get_mut(&self.holder) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.holder);
                }
            }
        }
        if let Some((manager, sessions, id)) = self.session.lock().take() {
            sessions.slots.lock().remove(&id);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    manager.sessions.write().await.remove(id.as_str());
                });
            }
        }
    }
}

impl SessionSlot {
    /// The slot belongs to session `id` of `manager`, which forgets it when the slot ends.
    pub(super) fn bind(
        &self,
        manager: &Arc<LocalSessionManager>,
        sessions: &Arc<Sessions>,
        id: &str,
    ) {
        sessions
            .slots
            .lock()
            .insert(id.to_owned(), Arc::downgrade(&self.0));
        *self.0.session.lock() = Some((manager.clone(), sessions.clone(), id.to_owned()));
    }

    /// Whether the slot is a streamable HTTP session's, whose requests the HTTP handler checks
    /// before they reach the session ([`conversation_lost`]).
    pub(super) fn is_http_session(&self) -> bool {
        self.0.session.lock().is_some()
    }

    /// Ends the streamable HTTP session this slot was taken for, if it is known: its id
    /// answers 404 once this returns.
    pub(super) async fn end_session(&self) {
        let session = self.0.session.lock().clone();
        if let Some((manager, _, id)) = session {
            let id: SessionId = id.into();
            let _ = manager.close_session(&id).await;
        }
    }
}

/// Why the conversation of the downstream session holding `slot` is lost, if it is: the pool
/// holds no live binding for its affinity any more, after it was seen holding one. `principal`
/// is the principal of the request's upstream lease.
pub(super) fn conversation_lost(
    pool: &Pool,
    server: &ServerId,
    principal: Principal,
    slot: &SlotGuard,
) -> Option<&'static str> {
    if slot.lost.load(Ordering::Relaxed) {
        return Some("rebound");
    }
    binding_lost(pool, server, principal, slot.affinity.get()?, &slot.bound)
}

/// Why the binding of conversation `affinity` is gone, if it is: lost with its session, or no
/// longer known after `bound` recorded it was seen (a binding ends silently with an idle
/// session or its key). Sets `bound` when the pool holds the binding.
pub(super) fn binding_lost(
    pool: &Pool,
    server: &ServerId,
    principal: Principal,
    affinity: &str,
    bound: &AtomicBool,
) -> Option<&'static str> {
    match pool.affinity_state(server, principal, affinity) {
        Some(AffinityState::Bound(_)) => {
            bound.store(true, Ordering::Relaxed);
            None
        }
        Some(AffinityState::Lost(reason)) => Some(reason.as_str()),
        _ if bound.load(Ordering::Relaxed) => Some("gone"),
        _ => None,
    }
}

/// Logs and counts a downstream session ended because its conversation's upstream session was
/// lost ([`crate::metrics::SESSIONS_LOST_TOTAL`]).
pub(super) fn record_lost(server: &ServerId, reason: &'static str) {
    tracing::warn!(
        server = %server,
        reason,
        "a downstream MCP session ended: its upstream session was lost, and the conversation's \
         server-side state with it; its client gets HTTP 404 and initializes again"
    );
    ::metrics::counter!(crate::metrics::SESSIONS_LOST_TOTAL, "server" => server.to_string(),
        "reason" => reason)
    .increment(1);
}

impl SessionSlots {
    /// A slot for one more session of `holder`, or the number it holds at `limit`.
    pub(super) fn reserve(
        self: &Arc<Self>,
        holder: Principal,
        limit: u32,
    ) -> Result<SessionSlot, u32> {
        let mut held = self.held.lock();
        let n = held.entry(holder).or_insert(0);
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(SessionSlot(Arc::new(SlotGuard {
            slots: self.clone(),
            holder,
            affinity: OnceLock::new(),
            bound: Default::default(),
            lost: Default::default(),
            session: Mutex::new(None),
        })))
    }
}

/// The downstream sessions of one server.
#[derive(Default)]
pub(super) struct Sessions {
    /// The next session's key in `peers`.
    pub(super) next: AtomicU64,
    /// Initialized sessions, for server-wide notifications.
    pub(super) peers: Mutex<HashMap<u64, Peer<RoleServer>>>,
    /// Session id → the owner that created it.
    pub(super) owners: Mutex<HashMap<String, Principal>>,
    /// Session id → its slot, while the session lives (weak: the session's Proxy holds it).
    pub(super) slots: Mutex<HashMap<String, std::sync::Weak<SlotGuard>>>,
}

/// The MCP session header of streamable HTTP.
pub(super) const SESSION_HEADER: &str = "mcp-session-id";
