//! What the driver keeps of a session: the rmcp session itself, the [`Link`] its leases share,
//! its slot of the user limit across workers and the task that watches for its loss.

use std::{fmt, ops::Deref, sync::Arc};

use mcp_pool_traits::{
    ClientSession, EvictionReason, SessionHandler, StateId,
    rmcp::{Peer, RoleClient},
};
use tokio_util::sync::DropGuard;

use super::session::Upstream;

/// What the leases of one session share: the rmcp peer and the session's handler (where the
/// server's notifications and requests are routed). One reference count per acquire instead
/// of a `Peer` clone (about ten of them).
pub(crate) struct Link {
    pub(crate) peer: Peer<RoleClient>,
    pub(crate) handler: SessionHandler,
}

impl Link {
    pub(crate) fn new(session: &ClientSession) -> Self {
        Self {
            peer: session.peer().clone(),
            handler: session.service().clone(),
        }
    }
}

impl Deref for Link {
    type Target = Peer<RoleClient>;

    fn deref(&self) -> &Peer<RoleClient> {
        &self.peer
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

/// A live upstream session of a key.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) session: ClientSession,
    pub(crate) link: Arc<Link>,
    /// Its slot of the user limit across workers, if one was taken.
    pub(crate) user_slot: Option<StateId>,
    /// Ends the task that evicts the session when it is reported lost, when the session
    /// leaves the key.
    pub(crate) _watch: Option<DropGuard>,
}

impl Live {
    pub(crate) fn new(session: ClientSession, user_slot: Option<StateId>) -> Self {
        Self {
            link: Arc::new(Link::new(&session)),
            session,
            user_slot,
            _watch: None,
        }
    }
}

impl Upstream for Live {
    type Handle = Arc<Link>;

    #[inline]
    fn handle(&self) -> &Arc<Link> {
        &self.link
    }

    #[inline]
    fn gone(&self) -> Option<EvictionReason> {
        if self.link.handler.is_lost() {
            Some(EvictionReason::Lost)
        } else if self.link.is_transport_closed() {
            Some(EvictionReason::Broken)
        } else {
            None
        }
    }
}
