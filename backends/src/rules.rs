//! Rules every backend in this crate applies the same way: TTL and limit validation, and who
//! wins a claim.

use std::time::Duration;

use mcp_pool_traits::{BackendError, Claim, StateId};

/// The longest TTL the networked backends keep: ten years, in milliseconds. Longer ones are
/// cut to it, so that expiry times stay within what Lua doubles, Redis expiry commands and
/// 64-bit SQL columns hold exactly.
pub(crate) const MAX_TTL_MS: i64 = 10 * 365 * 86_400 * 1000;

/// `ttl` in whole milliseconds, rounded up (the trait's rule: "TTLs are at least one
/// millisecond; finer parts are rounded up"), at most [`MAX_TTL_MS`].
///
/// # Errors
/// [`BackendError::InvalidArgument`] for a zero TTL.
pub(crate) fn ttl_ms(ttl: Duration) -> Result<i64, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::InvalidArgument(
            "a TTL of 0 was given: TTLs must be at least 1 ms".into(),
        ));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(i64::try_from(ms).map_or(MAX_TTL_MS, |ms| ms.min(MAX_TTL_MS)))
}

/// `ttl` rounded up to whole milliseconds, uncapped (for the memory backend).
///
/// # Errors
/// As [`ttl_ms`].
pub(crate) fn ttl_rounded(ttl: Duration) -> Result<Duration, BackendError> {
    ttl_ms(ttl)?;
    let part = ttl.subsec_nanos() % 1_000_000;
    if part == 0 {
        return Ok(ttl);
    }
    Ok(ttl
        .checked_add(Duration::from_nanos(u64::from(1_000_000 - part)))
        .unwrap_or(Duration::MAX))
}

/// Checks a slot limit.
///
/// # Errors
/// [`BackendError::InvalidArgument`] for a limit of 0.
pub(crate) fn check_limit(limit: u32) -> Result<(), BackendError> {
    if limit == 0 {
        return Err(BackendError::InvalidArgument(
            "a slot limit of 0 was given: limits must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A claim record whose own TTL has not run out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveClaim<'a> {
    /// The recorded owner.
    pub(crate) owner: &'a StateId,
    /// Whether the owner had a live heartbeat when it claimed or last refreshed. Only then does
    /// its heartbeat running out end the claim; an owner that never sent heartbeats is judged by
    /// the claim's TTL alone.
    pub(crate) tracked: bool,
    /// Whether the owner's heartbeat is live now.
    pub(crate) owner_alive: bool,
}

impl LiveClaim<'_> {
    /// Whether the recorded owner still holds the claim (its heartbeat did not run out).
    pub(crate) fn owner_is_live(&self) -> bool {
        !self.tracked || self.owner_alive
    }
}

/// Who wins a claim of a session whose current record is `current` (`None`: no record, or an
/// expired one) when `caller` claims it. Anything but [`Claim::Held`] means the caller's record
/// must be written.
pub(crate) fn decide_claim(current: Option<LiveClaim<'_>>, caller: &StateId) -> Claim {
    match current {
        None => Claim::Won,
        Some(c) if c.owner == caller => Claim::Won,
        Some(c) if !c.owner_is_live() => Claim::TookOver {
            previous: c.owner.clone(),
        },
        Some(c) => Claim::Held {
            owner: c.owner.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StateId {
        StateId::new(s).unwrap()
    }

    #[test]
    fn ttls_round_up_and_reject_zero() {
        assert_eq!(ttl_ms(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(ttl_ms(Duration::from_secs(3)).unwrap(), 3000);
        assert!(matches!(
            ttl_ms(Duration::ZERO),
            Err(BackendError::InvalidArgument(_))
        ));
        assert_eq!(ttl_ms(Duration::MAX).unwrap(), MAX_TTL_MS);
        assert_eq!(
            ttl_rounded(Duration::from_micros(1500)).unwrap(),
            Duration::from_millis(2)
        );
        assert_eq!(ttl_rounded(Duration::MAX).unwrap(), Duration::MAX);
        assert!(matches!(
            check_limit(0),
            Err(BackendError::InvalidArgument(_))
        ));
    }

    #[test]
    fn claim_rules() {
        let (a, b) = (id("a"), id("b"));
        assert_eq!(decide_claim(None, &a), Claim::Won);
        let live = |tracked, owner_alive| LiveClaim {
            owner: &b,
            tracked,
            owner_alive,
        };
        assert_eq!(
            decide_claim(Some(live(true, true)), &a),
            Claim::Held { owner: b.clone() }
        );
        assert_eq!(
            decide_claim(Some(live(false, false)), &a),
            Claim::Held { owner: b.clone() }
        );
        assert_eq!(
            decide_claim(Some(live(true, false)), &a),
            Claim::TookOver {
                previous: b.clone()
            }
        );
        assert_eq!(decide_claim(Some(live(true, false)), &b), Claim::Won);
    }
}
