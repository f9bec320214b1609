//! Pool-wide caps: sessions in total, sessions per user, keys.
//!
//! Counted at reservation (before a session is created) and given back when the reservation
//! fails or the session closes, so idle, in-use, retiring and creating sessions all count.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU32, Ordering},
};

use mcp_pool_traits::{Digest256, Principal};
use parking_lot::Mutex;

/// Default of `SESSION_POOL_USER_LIMIT`: sessions per user across servers. 100, so that an
/// agent with dozens of sticky conversations keeps them (each holds one upstream session); at
/// the limit the user's least recently used idle session is closed, and its conversation is
/// lost (`Lease::is_rebound`, a gateway's 404).
pub const DEFAULT_USER_LIMIT: u32 = 100;
/// Default hard cap on sessions in the whole pool, idle ones included.
pub const DEFAULT_MAX_SESSIONS: u32 = 1_000;
/// Default hard cap on pool keys.
pub const DEFAULT_MAX_KEYS: u32 = 10_000;

/// Which cap stopped a session from being created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    Sessions,
    User,
}

/// The pool's caps and the counts against them.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) max_sessions: u32,
    pub(crate) user_limit: u32,
    pub(crate) max_keys: u32,
    sessions: AtomicU32,
    per_user: Mutex<HashMap<Digest256, u32>>,
}

/// Whose sessions the user limit counts: the explicit user, else the hashed identity; a
/// request with neither is limited only by the pool-wide caps.
pub(crate) fn subject(principal: &Principal) -> Option<Digest256> {
    [principal.user, principal.identity]
        .into_iter()
        .find(|d| !d.is_anonymous())
}

impl Limits {
    pub(crate) fn new(max_sessions: u32, user_limit: u32, max_keys: u32) -> Self {
        Self {
            max_sessions,
            user_limit,
            max_keys,
            sessions: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more session for `subject` if no cap is reached.
    pub(crate) fn try_reserve(&self, subject: Option<Digest256>) -> Result<(), Cap> {
        let taken = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_sessions).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Cap::Sessions);
        }
        if let Some(subject) = subject {
            let mut per_user = self.per_user.lock();
            let count = per_user.entry(subject).or_insert(0);
            if *count >= self.user_limit {
                drop(per_user);
                self.sessions.fetch_sub(1, Ordering::AcqRel);
                return Err(Cap::User);
            }
            *count += 1;
        }
        Ok(())
    }

    /// Gives one session of `subject` back.
    pub(crate) fn release(&self, subject: Option<Digest256>) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        if let Some(subject) = subject {
            let mut per_user = self.per_user.lock();
            if let Some(count) = per_user.get_mut(&subject) {
                *count -= 1;
                if *count == 0 {
                    per_user.remove(&subject);
                }
            }
        }
    }

    /// Sessions counted now.
    #[cfg(test)]
    pub(crate) fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Sessions counted now for `subject`.
    #[cfg(test)]
    pub(crate) fn user_sessions(&self, subject: &Digest256) -> u32 {
        self.per_user.lock().get(subject).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_come_back() {
        let limits = Limits::new(3, 2, 10);
        let alice = Some(Digest256::of("alice"));
        let bob = Some(Digest256::of("bob"));
        assert_eq!(limits.try_reserve(alice), Ok(()));
        assert_eq!(limits.try_reserve(alice), Ok(()));
        assert_eq!(limits.try_reserve(alice), Err(Cap::User));
        assert_eq!(limits.try_reserve(bob), Ok(()));
        assert_eq!(limits.try_reserve(None), Err(Cap::Sessions));
        assert_eq!(
            limits.sessions(),
            3,
            "a refused reservation leaves no trace"
        );
        limits.release(alice);
        assert_eq!(limits.user_sessions(&Digest256::of("alice")), 1);
        assert_eq!(limits.try_reserve(None), Ok(()));
    }

    #[test]
    fn the_user_limit_counts_the_user_else_the_identity() {
        let both = Principal {
            user: Digest256::of("u"),
            identity: Digest256::of("i"),
        };
        assert_eq!(subject(&both), Some(Digest256::of("u")));
        assert_eq!(
            subject(&Principal {
                user: Digest256::Anonymous,
                identity: Digest256::of("i")
            }),
            Some(Digest256::of("i"))
        );
        assert_eq!(subject(&Principal::ANONYMOUS), None);
    }
}
