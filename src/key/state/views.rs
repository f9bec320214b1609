//! What stats read of the key's state.

#[cfg(test)]
use mcp_pool_traits::SessionId;
use tokio::time::Instant;

use super::{
    super::session::{Phase, Session, Upstream},
    KeyState,
};
use crate::stats::{KeySizes, SessionInfo, SessionState};

impl<S: Upstream, W> KeyState<S, W> {
    pub(crate) fn sizes(&self) -> KeySizes {
        let held = |s: &Session<S>, probing: bool| match s.phase {
            Phase::Checking { .. } => !probing,
            Phase::Probing { .. } => probing,
            _ => false,
        };
        let active = (0..self.views.len())
            .filter(|&i| self.counted_active(i))
            .count() as u32
            + self.retiring.len() as u32;
        KeySizes {
            sessions_total: (self.views.len() + self.retiring.len()) as u32,
            sessions_active: active,
            sessions_available: self.views.iter().filter(|v| v.has_capacity()).count() as u32,
            sessions_idle: self.views.iter().filter(|v| v.in_flight == 0).count() as u32,
            sessions_checking: self.sessions.iter().filter(|s| held(s, false)).count() as u32,
            sessions_probing: self.sessions.iter().filter(|s| held(s, true)).count() as u32,
            sessions_creating: self.creating,
            waiters: self.waiters.len() as u32,
            target_size: self.target,
        }
    }

    /// Its sessions as [`SessionInfo`]s, as of `now`: active ones, then retiring ones.
    pub(crate) fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let label = crate::stats::key_label(&self.key);
        let info = |session: &Session<S>, in_flight: u32, endpoint: Option<usize>| {
            let leases = in_flight.saturating_sub(session.phase.held());
            let state = match session.phase {
                Phase::Retiring(_) => SessionState::Retiring,
                Phase::Probing { .. } => SessionState::Probing,
                Phase::Checking { .. } => SessionState::Checking,
                Phase::Open if leases > 0 => SessionState::Leased,
                Phase::Open => SessionState::Idle,
            };
            let idle_since = if session.released {
                self.last_tick
            } else {
                session.last_used
            };
            SessionInfo {
                key: label.clone(),
                session: session.id.0,
                transport: self.key.transport,
                endpoint,
                url: endpoint
                    .and_then(|i| self.server.endpoints.get(i))
                    .map(|e| mcp_pool_traits::redact_url(&e.url).into_owned()),
                age_secs: now.duration_since(session.created_at).as_secs_f64(),
                idle_secs: if leases > 0 {
                    0.0
                } else {
                    now.duration_since(idle_since).as_secs_f64()
                },
                use_count: session.use_count,
                in_flight: leases,
                state,
            }
        };
        let active = self
            .views
            .iter()
            .zip(&self.sessions)
            .map(|(v, s)| info(s, v.in_flight, Some(v.endpoint)));
        let retiring = self.retiring.iter().map(|s| {
            let in_flight = match s.phase {
                Phase::Retiring(r) => r.in_flight,
                _ => 0,
            };
            info(s, in_flight, None)
        });
        active.chain(retiring).collect()
    }

    /// Each session's leases (its `in_flight` less what a check holds), active and retiring.
    #[cfg(test)]
    pub(crate) fn leases_by_session(&self) -> Vec<(SessionId, u32)> {
        let active = self
            .views
            .iter()
            .zip(&self.sessions)
            .map(|(v, s)| (v.id, v.in_flight - s.phase.held()));
        let retiring = self.retiring.iter().map(|s| match s.phase {
            Phase::Retiring(r) => (s.id, r.in_flight - r.held),
            _ => unreachable!("only retiring sessions are in `retiring`"),
        });
        active.chain(retiring).collect()
    }
}
