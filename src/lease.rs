//! [`Lease`]: a session checked out of the pool.

use std::{
    fmt,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use mcp_pool_traits::{
    PoolKey, SessionId, is_transport_failure,
    rmcp::{
        Peer, RoleClient, ServiceError,
        model::{CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams},
    },
};

use crate::key_pool::KeyPool;

/// A session checked out of the pool. Derefs to rmcp's [`Peer<RoleClient>`], so the rmcp API
/// works as usual; dropping the lease returns the session (also on panic and cancellation).
///
/// A session that failed at the transport level must not be handed out again: calls through
/// [`call_tool`](Self::call_tool), [`list_tools`](Self::list_tools) or
/// [`check`](Self::check) mark the lease broken on a transport error (rmcp's streamable HTTP
/// client never reports its own death, DESIGN §2.7), and [`mark_broken`](Self::mark_broken) does
/// so explicitly. A broken lease's session is evicted when the lease is dropped.
pub struct Lease {
    key: Arc<KeyPool>,
    id: SessionId,
    peer: Arc<Peer<RoleClient>>,
    endpoint: usize,
    broken: AtomicBool,
    hit: bool,
    rebound: bool,
}

impl Lease {
    #[inline]
    pub(crate) fn new(
        key: Arc<KeyPool>,
        id: SessionId,
        peer: Arc<Peer<RoleClient>>,
        endpoint: usize,
        hit: bool,
        rebound: bool,
    ) -> Self {
        Self {
            key,
            id,
            peer,
            endpoint,
            broken: AtomicBool::new(false),
            hit,
            rebound,
        }
    }

    /// The session's id, unique in this process.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The key the session belongs to. Sessions never cross keys.
    pub fn key(&self) -> &PoolKey {
        &self.key.key
    }

    /// `true` when an existing session served the acquire, `false` when it was created for it.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// `true` when this session replaced a sticky-bound session that died: the server-side
    /// state of the conversation was lost (DESIGN §5).
    pub fn is_rebound(&self) -> bool {
        self.rebound
    }

    /// The rmcp peer (also reachable through `Deref`).
    pub fn peer(&self) -> &Peer<RoleClient> {
        &self.peer
    }

    /// Marks the session unusable: it is evicted when the lease is dropped.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Whether the lease was marked broken.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Passes `result` through, marking the lease broken when it is a transport failure
    /// ([`is_transport_failure`]). Wrap any rmcp call with it:
    /// `lease.check(lease.list_prompts(None).await)`.
    ///
    /// # Errors
    /// `result`'s own error.
    ///
    /// Every checked result also counts in the server's and the endpoint's health score: a
    /// reply (a JSON-RPC error included: the server answered) as a success; a transport
    /// failure or a request timeout as a failure; a cancellation not at all.
    pub fn check<T>(&self, result: Result<T, ServiceError>) -> Result<T, ServiceError> {
        let success = match &result {
            Ok(_) | Err(ServiceError::McpError(_)) => Some(true),
            Err(error) if is_transport_failure(error) => {
                self.mark_broken();
                Some(false)
            }
            Err(ServiceError::Timeout { .. }) => Some(false),
            Err(_) => None,
        };
        if let Some(success) = success {
            self.key.record_call(self.endpoint, success);
        }
        result
    }

    /// Index of the session's endpoint in the server's endpoint list.
    pub fn endpoint_index(&self) -> usize {
        self.endpoint
    }

    /// `tools/call`, evicting the session on a transport failure.
    ///
    /// # Errors
    /// rmcp's [`ServiceError`]: a JSON-RPC error from the server leaves the session pooled, a
    /// transport failure marks the lease broken.
    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
    ) -> Result<CallToolResult, ServiceError> {
        self.check(self.peer.call_tool(params).await)
    }

    /// `tools/list`, evicting the session on a transport failure.
    ///
    /// # Errors
    /// As [`call_tool`](Self::call_tool).
    pub async fn list_tools(
        &self,
        params: Option<PaginatedRequestParams>,
    ) -> Result<ListToolsResult, ServiceError> {
        self.check(self.peer.list_tools(params).await)
    }
}

impl Deref for Lease {
    type Target = Peer<RoleClient>;

    fn deref(&self) -> &Peer<RoleClient> {
        &self.peer
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("session", &self.id)
            .field("key", &self.key.key.short())
            .field("hit", &self.hit)
            .field("rebound", &self.rebound)
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        let broken = self.is_broken() || std::thread::panicking();
        self.key.release(self.id, broken);
    }
}
