//! Who owns each downstream session: this worker's claims in the state backend (made,
//! refreshed, released), where a request for a session this worker does not hold goes
//! (`Route`), and the takeover of a dead owner's sessions.

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use mcp_pool::{
    ServerId, StrategyKind,
    traits::{Claim, StateId},
};
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use super::group::Group;
use crate::{ApiError, AppState};

/// How long a claim lives without a refresh. Liveness comes from the owner's heartbeat (a dead
/// owner's claims can be taken at once); the TTL only bounds claims of sessions that ended
/// without a `DELETE`.
pub const CLAIM_TTL: Duration = Duration::from_secs(3600);

/// The longest an `initialize` waits for its session's claim.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// How often the claims of this worker's live sessions are refreshed.
pub const CLAIM_REFRESH: Duration = Duration::from_secs(600);

/// Sessions taken over from a dead owner (label `outcome`: `restored`, `reinitialize`).
pub const TAKEOVERS_TOTAL: &str = "mcp_pool_gateway_takeovers_total";

/// Where a request for a session this worker does not hold goes.
pub(super) enum Route {
    /// To its live owner.
    Owner(StateId),
    /// Nowhere: answer 404, the client initializes again.
    Gone,
    /// Here: the session was taken over and is restored by rmcp.
    Adopted,
}

impl Group {
    /// Claims a session this worker just created, before its id reaches the client: another
    /// worker that gets the client's next request must find the owner. A failure is logged
    /// (the session works here, but other workers find it only once a refresh claimed it), and
    /// the claim waits at most [`CLAIM_WAIT`] so a slow backend never holds an `initialize`.
    pub(crate) async fn claim_new(&self, session: &str) {
        let Ok(id) = StateId::new(session) else {
            return;
        };
        let claim = self.backend.claim(&id, self.worker.state_id(), CLAIM_TTL);
        match tokio::time::timeout(CLAIM_WAIT, claim).await {
            Ok(Ok(claim)) if claim.is_owned() => {}
            Ok(Ok(_)) => tracing::warn!("a new downstream session's id is claimed already"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot claim a new downstream session; serving on")
            }
            Err(_) => tracing::warn!("claiming a new downstream session timed out; serving on"),
        }
    }

    /// Releases the claim of a session of this worker that ended.
    pub(crate) fn release(self: &Arc<Self>, session: &str) {
        let Ok(id) = StateId::new(session) else {
            return;
        };
        let group = self.clone();
        tokio::spawn(async move {
            if let Err(error) = group.backend.release(&id, group.worker.state_id()).await {
                tracing::debug!(%error, "cannot release an ended session's claim");
            }
        });
    }

    /// Refreshes (or, after the backend lost them, takes again) the claims of `sessions`: the
    /// sessions another live worker holds now (they were taken over while this worker was cut
    /// off), which must end here; `None` when the backend could not be reached.
    pub async fn refresh(&self, sessions: &[String]) -> Option<Vec<String>> {
        let me = self.worker.state_id();
        let mut taken = Vec::new();
        for session in sessions {
            let Ok(id) = StateId::new(session.as_str()) else {
                continue;
            };
            let refreshed = match self.backend.refresh(&id, me, CLAIM_TTL).await {
                Ok(true) => Ok(true),
                Ok(false) => self
                    .backend
                    .claim(&id, me, CLAIM_TTL)
                    .await
                    .map(|claim| claim.is_owned()),
                Err(error) => Err(error),
            };
            match refreshed {
                Ok(true) => {}
                Ok(false) => taken.push(session.clone()),
                Err(error) => {
                    tracing::debug!(%error, "cannot refresh session claims now");
                    return None;
                }
            }
        }
        Some(taken)
    }

    /// Leaves the group (a graceful shutdown): ends this worker's heartbeat, so that the next
    /// request for any of its sessions, at any worker, takes the session over at once — as
    /// after a death, without waiting for [`HEARTBEAT_TTL`](super::HEARTBEAT_TTL).
    /// Call it once the heartbeat task has stopped.
    pub async fn leave(&self) {
        // The shortest TTL there is: gone by the time anyone looks.
        let gone = Duration::from_millis(1);
        if let Err(error) = self.backend.heartbeat(self.worker.state_id(), gone).await {
            tracing::warn!(%error, "cannot leave the workers' group: its sessions are taken over when the heartbeat expires");
        }
    }

    /// Where a request for `session`, which this worker does not hold, goes.
    pub(super) async fn route(
        &self,
        state: &AppState,
        server: &ServerId,
        session: &str,
    ) -> Result<Route, ApiError> {
        let unavailable = |error: mcp_pool::traits::BackendError| {
            tracing::warn!(%error, "cannot look up a session's owner");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state backend is unavailable: cannot find the worker holding this session",
            )
        };
        let Ok(id) = StateId::new(session) else {
            return Ok(Route::Gone);
        };
        let me = self.worker.state_id();
        match self.backend.owner(&id).await.map_err(unavailable)? {
            Some(owner) if owner == *me => {
                // Ours, but gone here (it ended without a DELETE): nobody holds it any more.
                self.backend.release(&id, me).await.map_err(unavailable)?;
                return Ok(Route::Gone);
            }
            Some(owner) => return Ok(Route::Owner(owner)),
            None => {}
        }
        match self
            .backend
            .claim(&id, me, CLAIM_TTL)
            .await
            .map_err(unavailable)?
        {
            Claim::Held { owner } if owner != *me => return Ok(Route::Owner(owner)),
            Claim::TookOver { .. } => {}
            _ => {
                // Nobody held it: it ended (or never was). Not ours to keep.
                self.backend.release(&id, me).await.map_err(unavailable)?;
                return Ok(Route::Gone);
            }
        }
        let sticky = state
            .pool
            .server_config(server)
            .is_some_and(|config| config.strategy == StrategyKind::Sticky);
        if sticky {
            ::metrics::counter!(TAKEOVERS_TOTAL, "outcome" => "reinitialize").increment(1);
            tracing::info!(
                "took over a session of sticky server {server} from a dead worker: the client initializes again"
            );
            self.backend.release(&id, me).await.map_err(unavailable)?;
            Ok(Route::Gone)
        } else {
            ::metrics::counter!(TAKEOVERS_TOTAL, "outcome" => "restored").increment(1);
            tracing::info!("took over a session of server {server} from a dead worker: restored");
            Ok(Route::Adopted)
        }
    }

    /// The session state rmcp restores a session taken over with (see [`crate::cluster`]).
    fn adopted(&self, session: &str) -> Option<SessionState> {
        let protocol = self.adopting.lock().remove(session)?;
        let mut params = rmcp::model::InitializeRequestParams::new(
            Default::default(),
            rmcp::model::Implementation::new("restored-session", "0"),
        );
        if let Ok(version) = serde_json::from_value(serde_json::Value::String(protocol)) {
            params.protocol_version = version;
        }
        Some(SessionState::new(params))
    }
}

/// rmcp's session store for sessions taken over (see [`crate::cluster`]): it knows only those.
pub(crate) struct AdoptedSessions(pub(crate) Arc<Group>);

#[async_trait::async_trait]
impl SessionStore for AdoptedSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        Ok(self.0.adopted(session_id))
    }

    async fn store(&self, _: &str, _: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    async fn delete(&self, _: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}
