//! One pool key — (user, identity, server, transport) — and its sessions.
//!
//! The key is split the way quinn-proto splits a connection and bb8 its pool:
//!
//! - [`state`]: the bookkeeping as a state machine that does no I/O. Events go in (acquire,
//!   release, created, failed, cancelled, reconfigure, the maintenance pass with its `now`,
//!   health results, unbind, drain, remove); [`effect::Grant`]s for acquires, [`effect::Effect`]s
//!   and metric deltas come out. It can be driven step by step with no runtime. Its
//!   configuration, maintenance and health events are in `state/maintenance.rs`, what stats
//!   read of it in `state/views.rs`.
//! - [`session`]: a session's life as one enum ([`session::Phase`], its diagram first) and the
//!   per-key counters that stats and servers read.
//! - [`effect`]: what goes in besides events ([`effect::Env`]: the time, the server's health,
//!   the pool-wide caps) and what comes out.
//! - [`locked`]: [`KeyPool`], the key's mutex over its state, and what runs with each event:
//!   grants sent to waiters under the lock, metrics recorded, sessions closed after it.
//! - [`driver`]: the async rest of [`KeyPool`], the only code of the key that awaits: acquires
//!   that create or wait, background creations, probes and the maintenance and health events.
//! - [`guards`]: the drop guards that keep the accounting right when an acquire is cancelled.
//! - [`upstream`]: what the driver keeps of a live session.

mod driver;
mod effect;
mod guards;
mod locked;
#[cfg(test)]
mod model;
mod session;
mod state;
mod upstream;

pub(crate) use driver::{AcquireArgs, AcquireError, Pending};
pub(crate) use effect::Granted;
pub(crate) use locked::{KeyId, KeyPool};
pub(crate) use session::KeyCounters;
pub(crate) use upstream::Link;
