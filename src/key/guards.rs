//! Drop guards that keep the key's accounting right when an acquire is cancelled at any
//! await: [`Reservation`] (room for a creation) and [`WaiterGuard`] (a queued acquire).

use std::sync::Arc;

use mcp_pool_traits::{Endpoint, StateId, TransportError};
use tokio::{sync::oneshot, time::Instant};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{
    effect::Ticket,
    locked::{Delivery, KeyPool},
};
use crate::limits;

/// Room reserved for a creation: dropped unfilled (failure, cancellation), it gives the room
/// back and wakes waiters.
#[derive(Debug)]
pub(crate) struct Reservation {
    key: Arc<KeyPool>,
    /// `None` once handed back to the state.
    ticket: Option<Ticket>,
    user_slot: Option<StateId>,
    /// Keeps [`Pool::close`](crate::Pool::close) waiting until the creation ended.
    _token: TaskTrackerToken,
}

impl Reservation {
    pub(crate) fn new(key: Arc<KeyPool>, ticket: Ticket, token: TaskTrackerToken) -> Self {
        Self {
            key,
            ticket: Some(ticket),
            user_slot: None,
            _token: token,
        }
    }

    /// The endpoint to create the session on, as it was at reservation.
    pub(crate) fn target(&self) -> &Endpoint {
        &self
            .ticket
            .as_ref()
            .expect("a reservation holds its ticket until it is filled or failed")
            .target
    }

    /// Takes a slot of the user limit across workers, when there is one to take. `false`: the
    /// user is at the limit in the other workers.
    pub(crate) async fn take_user_slot(&mut self) -> bool {
        let shared = &self.key.shared;
        let (Some(slots), Some(subject)) = (shared.user_slots.get(), self.key.subject()) else {
            return true;
        };
        match slots.take(&subject).await {
            Ok(slot) => {
                self.user_slot = slot;
                true
            }
            Err(()) => false,
        }
    }

    /// The session was created: the ticket goes back to the state with it (see
    /// [`KeyState::created`](super::state::KeyState::created)), with the user slot it took.
    /// Keep the reservation until then: it keeps [`Pool::close`](crate::Pool::close) waiting.
    pub(crate) fn fill(&mut self) -> (Ticket, Option<StateId>) {
        let ticket = self.ticket.take().expect("filled once");
        (ticket, self.user_slot.take())
    }

    /// The creation failed for `error`.
    pub(crate) fn failed(mut self, error: &TransportError) {
        let ticket = self.ticket.take().expect("failed once");
        let cause = error.cause();
        let against_endpoint = error.counts_against_endpoint();
        self.key.with_state(|locked, env| {
            locked
                .state
                .create_failed(ticket, &cause, against_endpoint, env);
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.key
                .with_state(|locked, env| locked.state.create_cancelled(ticket, env));
        }
        let subject = limits::subject(&self.key.key.principal());
        self.key
            .shared
            .release_user_slot(subject, self.user_slot.take());
    }
}

/// A queued acquire. Dropped before its grant was taken (timeout, cancellation), it leaves the
/// queue, or gives back a grant that raced in.
#[derive(Debug)]
pub(crate) struct WaiterGuard {
    key: Arc<KeyPool>,
    id: u64,
    rx: oneshot::Receiver<Delivery>,
    granted: bool,
}

impl WaiterGuard {
    pub(crate) fn new(key: Arc<KeyPool>, id: u64, rx: oneshot::Receiver<Delivery>) -> Self {
        Self {
            key,
            id,
            rx,
            granted: false,
        }
    }

    /// Waits for the grant until `deadline`: `Ok(None)` when the key was removed (its queue
    /// dropped), `Err(())` at the deadline (the waiter has left the queue then).
    pub(crate) async fn wait(mut self, deadline: Instant) -> Result<Option<Delivery>, ()> {
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(delivery)) => {
                self.granted = true;
                Ok(Some(delivery))
            }
            Ok(Err(_)) => {
                self.granted = true;
                Ok(None)
            }
            Err(_) => Err(()),
        }
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let (id, rx) = (self.id, &mut self.rx);
        self.key.with_state(|locked, env| {
            if !locked.state.waiter_gone(id)
                && let Ok((grant, _token)) = rx.try_recv()
            {
                // Granted under the lock before we got it: hand it on.
                locked.state.undo(grant, env);
            }
        });
    }
}
