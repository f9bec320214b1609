//! [`HealthScore`]: the share of successful operations over a recent window, and the
//! [`HealthStatus`] it maps to.
//!
//! Operations are whatever the engine records: session creations, calls through leases, health
//! checks. The window is time-based: the last 5 minutes (by default) in 10 s buckets, so an
//! outcome counts for between 290 and 300 s after it was recorded (the current bucket is
//! partial) and then ages out. Time is [`tokio::time::Instant`], passed in by the caller, so
//! that tests run on a paused clock.
//!
//! Status cut-offs, for a threshold `t` in percent (`health_check_threshold`, default 70):
//!
//! | score `s` (integer percent, rounded down) | status |
//! |---|---|
//! | no operation in the window | [`Unknown`](HealthStatus::Unknown) |
//! | `s ≥ t` | [`Healthy`](HealthStatus::Healthy) |
//! | `t/2 ≤ s < t` (exactly: `2·s ≥ t`) | [`Degraded`](HealthStatus::Degraded) |
//! | `s < t/2` | [`Unhealthy`](HealthStatus::Unhealthy) |
//!
//! With the default 70 %: healthy from 70 %, degraded from 35 % to 69 %, unhealthy below 35 %.
//! Rounding down means a share just under the threshold (69.9 %) is never reported healthy.
//!
//! What `stats()` shows for a server or an endpoint comes from [`assess`]: the status always
//! follows the score shown, and a server (or endpoint) that cannot serve at all — every circuit
//! breaker it depends on open or half-open — shows a score of 0, whatever successes the window
//! still holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Default span of the window: 5 minutes.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Default bucket width: 10 s.
pub const DEFAULT_BUCKET: Duration = Duration::from_secs(10);
/// Default health threshold in percent (`health_check_threshold`).
pub const DEFAULT_THRESHOLD: u8 = 70;

/// A server's or endpoint's health, from its [`HealthScore`]. Serialized in snake case
/// (`"healthy"`, `"degraded"`, `"unhealthy"`, `"unknown"`), as in `stats()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Score at or above the threshold.
    Healthy,
    /// Score from half the threshold up to (not including) the threshold.
    Degraded,
    /// Score below half the threshold.
    Unhealthy,
    /// No operation in the window.
    Unknown,
}

impl HealthStatus {
    /// The status of `score` (percent) against `threshold` (percent); see the
    /// [module docs](self) for the cut-offs. A threshold above 100 is taken as 100.
    pub fn from_score(score: Option<u8>, threshold: u8) -> Self {
        let threshold = u32::from(threshold.min(100));
        match score.map(u32::from) {
            None => Self::Unknown,
            Some(s) if s >= threshold => Self::Healthy,
            Some(s) if 2 * s >= threshold => Self::Degraded,
            Some(_) => Self::Unhealthy,
        }
    }

    /// `healthy`, `degraded`, `unhealthy` or `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Unknown => "unknown",
        }
    }
}

/// The score and status shown for a server or one of its endpoints (`stats()`, and the
/// gateway's health view from it), by one rule so that the two never disagree (never
/// `unhealthy` beside a score of 93):
///
/// - `down` (every circuit breaker the server or endpoint depends on is open or half-open:
///   nothing can be served now): score 0 and [`HealthStatus::Unhealthy`], whatever successes
///   the window still holds and whatever the threshold;
/// - otherwise the window's score (`window`, from [`HealthScore::score`]) and
///   [`HealthStatus::from_score`] of it against `threshold` percent.
///
/// So for any threshold above 0 the status is always `from_score` of the score shown.
pub fn assess(window: Option<u8>, down: bool, threshold: u8) -> (Option<u8>, HealthStatus) {
    if down {
        (Some(0), HealthStatus::Unhealthy)
    } else {
        (window, HealthStatus::from_score(window, threshold))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Index of the bucket (bucket widths since the score's origin) these counts belong to.
    index: u64,
    ok: u32,
    total: u32,
}

/// Successful and total operations over a sliding time window of fixed buckets; see the
/// [module docs](self). Recording is O(1) and allocates nothing; the buckets are allocated
/// once, at creation.
#[derive(Clone, Debug)]
pub struct HealthScore {
    origin: Instant,
    bucket_nanos: u64,
    buckets: Box<[Bucket]>,
}

impl HealthScore {
    /// A score with the default window (5 min in 10 s buckets), starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self::with_window(now, DEFAULT_WINDOW, DEFAULT_BUCKET)
    }

    /// A score over `window`, in buckets of `bucket` (at least 1 ms; the window is rounded up
    /// to whole buckets, at least one), starting at `now`.
    pub fn with_window(now: Instant, window: Duration, bucket: Duration) -> Self {
        let bucket_nanos = u64::try_from(bucket.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000);
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let count = window_nanos.div_ceil(bucket_nanos).max(1);
        // A window of more than a few thousand buckets is a configuration mistake; cap the
        // memory it can take.
        let count = usize::try_from(count).unwrap_or(usize::MAX).min(65_536);
        Self {
            origin: now,
            bucket_nanos,
            // Index `u64::MAX` marks an empty bucket that no real index can match.
            buckets: vec![
                Bucket {
                    index: u64::MAX,
                    ..Bucket::default()
                };
                count
            ]
            .into_boxed_slice(),
        }
    }

    /// The span the score covers: buckets × bucket width.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos.saturating_mul(self.buckets.len() as u64))
    }

    fn index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX - 1)
    }

    /// Records one operation at `now`: `success` or not. An instant before the score's
    /// creation counts in its first bucket.
    pub fn record(&mut self, now: Instant, success: bool) {
        let index = self.index(now);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(index % len) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ok: 0,
                total: 0,
            };
        }
        bucket.total = bucket.total.saturating_add(1);
        bucket.ok = bucket.ok.saturating_add(u32::from(success));
    }

    /// `(successful, total)` operations in the window ending at `now`.
    pub fn counts(&self, now: Instant) -> (u64, u64) {
        let current = self.index(now);
        let oldest = current.saturating_sub(self.buckets.len() as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.index != u64::MAX && (oldest..=current).contains(&b.index))
            .fold((0, 0), |(ok, total), b| {
                (ok + u64::from(b.ok), total + u64::from(b.total))
            })
    }

    /// The share of successful operations in the window ending at `now`, in whole percent
    /// rounded down (0-100); `None` when there was no operation.
    pub fn score(&self, now: Instant) -> Option<u8> {
        let (ok, total) = self.counts(now);
        // ok <= total, so the quotient is at most 100.
        (total > 0).then(|| (ok * 100 / total) as u8)
    }

    /// The [`HealthStatus`] at `now` against `threshold` percent (`health_check_threshold`).
    pub fn status(&self, now: Instant, threshold: u8) -> HealthStatus {
        HealthStatus::from_score(self.score(now), threshold)
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        for bucket in self.buckets.iter_mut() {
            bucket.index = u64::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    #[test]
    fn cut_offs_at_the_default_threshold() {
        let status = |s| HealthStatus::from_score(s, DEFAULT_THRESHOLD);
        assert_eq!(status(None), Unknown);
        assert_eq!(status(Some(100)), Healthy);
        assert_eq!(status(Some(70)), Healthy);
        assert_eq!(status(Some(69)), Degraded);
        assert_eq!(status(Some(35)), Degraded);
        assert_eq!(status(Some(34)), Unhealthy);
        assert_eq!(status(Some(0)), Unhealthy);
    }

    #[test]
    fn cut_offs_at_odd_and_extreme_thresholds() {
        // 2·s ≥ t: with t = 75, 38 (76) is degraded and 37 (74) unhealthy.
        assert_eq!(HealthStatus::from_score(Some(38), 75), Degraded);
        assert_eq!(HealthStatus::from_score(Some(37), 75), Unhealthy);
        assert_eq!(HealthStatus::from_score(Some(0), 0), Healthy);
        assert_eq!(HealthStatus::from_score(Some(99), 100), Degraded);
        assert_eq!(HealthStatus::from_score(Some(100), 100), Healthy);
        assert_eq!(HealthStatus::from_score(Some(100), 255), Healthy);
        assert_eq!(HealthStatus::from_score(None, 0), Unknown);
    }

    proptest::proptest! {
        /// The rule of `assess`: a status always matches the score shown, and a server that
        /// cannot serve is shown as such.
        #[test]
        fn the_status_shown_follows_the_score_shown(
            window in proptest::option::of(0u8..=100),
            down: bool,
            threshold in 0u8..=100,
        ) {
            let (score, status) = assess(window, down, threshold);
            if down {
                proptest::prop_assert_eq!(score, Some(0));
                proptest::prop_assert_eq!(status, Unhealthy);
            } else {
                proptest::prop_assert_eq!(score, window);
            }
            if threshold > 0 {
                proptest::prop_assert_eq!(status, HealthStatus::from_score(score, threshold));
            }
            // Never a contradiction: unhealthy at or above the threshold, or healthy below it.
            if let Some(s) = score.filter(|_| threshold > 0) {
                proptest::prop_assert_eq!(status == Healthy, s >= threshold);
                proptest::prop_assert_eq!(status == Unhealthy, 2 * u32::from(s) < u32::from(threshold));
            }
        }
    }

    #[test]
    fn a_server_that_cannot_serve_shows_0_whatever_its_window_holds() {
        assert_eq!(
            assess(Some(93), true, DEFAULT_THRESHOLD),
            (Some(0), Unhealthy)
        );
        assert_eq!(assess(None, true, DEFAULT_THRESHOLD), (Some(0), Unhealthy));
        assert_eq!(
            assess(Some(0), true, 0),
            (Some(0), Unhealthy),
            "even at threshold 0"
        );
        assert_eq!(
            assess(Some(93), false, DEFAULT_THRESHOLD),
            (Some(93), Healthy)
        );
        assert_eq!(
            assess(Some(69), false, DEFAULT_THRESHOLD),
            (Some(69), Degraded)
        );
        assert_eq!(assess(None, false, DEFAULT_THRESHOLD), (None, Unknown));
    }

    #[test]
    fn status_serializes_in_snake_case() {
        for status in [Healthy, Degraded, Unhealthy, Unknown] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<HealthStatus>(&json).unwrap(), status);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_score_is_the_share_of_successes_rounded_down() {
        let now = Instant::now();
        let mut score = HealthScore::new(now);
        assert_eq!(score.score(now), None);
        assert_eq!(score.status(now, 70), Unknown);
        for i in 0..3 {
            score.record(now, i != 0);
        }
        assert_eq!(score.counts(now), (2, 3));
        assert_eq!(score.score(now), Some(66), "2/3 rounds down");
        assert_eq!(score.status(now, 70), Degraded);
        assert_eq!(score.status(now, 66), Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_age_out_after_the_window() {
        let start = Instant::now();
        let mut score = HealthScore::new(start);
        assert_eq!(score.window(), Duration::from_secs(300));
        for _ in 0..10 {
            score.record(start, false);
        }
        assert_eq!(score.status(Instant::now(), 70), Unhealthy);

        tokio::time::advance(Duration::from_secs(150)).await;
        for _ in 0..10 {
            score.record(Instant::now(), true);
        }
        assert_eq!(score.score(Instant::now()), Some(50));
        assert_eq!(score.status(Instant::now(), 70), Degraded);

        // The failures were in bucket 0; at 300 s bucket 30 is current and bucket 0 is out.
        tokio::time::advance(Duration::from_secs(149)).await;
        assert_eq!(score.counts(Instant::now()), (10, 20), "still in at 299 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(score.counts(Instant::now()), (10, 10));
        assert_eq!(score.status(Instant::now(), 70), Healthy);

        tokio::time::advance(Duration::from_secs(150)).await;
        assert_eq!(score.score(Instant::now()), None, "everything aged out");
        assert_eq!(score.status(Instant::now(), 70), Unknown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_bucket_forgets_its_old_counts() {
        let start = Instant::now();
        let mut score = HealthScore::with_window(start, Duration::from_secs(30), DEFAULT_BUCKET);
        score.record(start, false);
        // 30 s later the same place in the ring (index 3 % 3 == 0) holds a new bucket.
        tokio::time::advance(Duration::from_secs(30)).await;
        score.record(Instant::now(), true);
        assert_eq!(score.counts(Instant::now()), (1, 1));
        // A long silence, then one outcome: only it counts.
        tokio::time::advance(Duration::from_secs(3600)).await;
        score.record(Instant::now(), false);
        assert_eq!(score.counts(Instant::now()), (0, 1));
        score.clear();
        assert_eq!(score.score(Instant::now()), None);
    }

    #[test]
    fn degenerate_windows_still_hold_one_bucket() {
        let now = Instant::now();
        let mut score = HealthScore::with_window(now, Duration::ZERO, Duration::ZERO);
        assert_eq!(score.window(), Duration::from_millis(1));
        score.record(now, true);
        assert_eq!(score.score(now), Some(100));
    }
}
