//! [`CircuitBreaker`]: stops creating sessions on an endpoint that keeps failing (DESIGN §7,
//! issues 6 and 10).
//!
//! One breaker per endpoint, counting session creations:
//!
//! ```text
//!            N consecutive failures                 open period over:
//!  Closed ──────────────────────────► Open{until} ─── first try_acquire ──► HalfOpen
//!    ▲     (open for 1 s)                 ▲                                  │ one probe
//!    │            probe succeeds          │      probe fails                 │
//!    └────────────────────────────────────┼──────────────────────────────────┤
//!       (backoff back to 1 s)             └──────────────────────────────────┘
//!                                          (open for twice as long, at most reset_timeout)
//! ```
//!
//! - **Closed**: every creation may go ahead. A success resets the count of consecutive
//!   failures; the `failure_threshold`-th consecutive failure opens the breaker.
//! - **Open**: every creation is refused with the time it may retry, until the open period
//!   has passed since it opened. The period backs off exponentially (issue 10): the first
//!   open lasts [`INITIAL_RESET_TIMEOUT`] (1 s), each failed probe doubles it, and
//!   `reset_timeout` caps it; a successful probe starts the next open at 1 s again. An upstream
//!   that restarts in 3 s is thus probed after 1 s and 3 s, not refused for a whole
//!   `reset_timeout`, while one that stays down is probed at most once per `reset_timeout`.
//! - **HalfOpen**: the first [`try_acquire`](CircuitBreaker::try_acquire) at or after that time
//!   gets the one probe; everyone else is refused until the probe reports, with the current
//!   open period as the time to retry in. Its success closes the breaker, its failure opens it
//!   again for the next period.
//! - **Cancellation** (the acquire was dropped, the pool closed) is no evidence either way: it
//!   changes no count, and a cancelled probe gives its slot back so the next caller probes.
//! - The breaker only changes state on evidence gathered in its current state: the outcome of
//!   an attempt granted before the last state change is ignored (a creation that started while
//!   the breaker was closed and succeeds after it opened does not close it; the probe decides).
//!
//! A plain synchronous struct: the engine keeps it under a lock and passes the time in, as a
//! [`tokio::time::Instant`] so that tests run on a paused clock.

use std::time::Duration;

use mcp_pool_traits::ConfigError;
use tokio::time::Instant;

/// Default consecutive creation failures that open a breaker: 5.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default cap on the time a breaker stays open before it allows a probe: 60 s.
pub const DEFAULT_RESET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a breaker stays open the first time (after the consecutive failures that opened it,
/// or after a successful probe): 1 s, or `reset_timeout` if that is shorter. Each failed probe
/// doubles it up to `reset_timeout` (issue 10: a 3-second restart must not cost 60 s of
/// refusals).
pub const INITIAL_RESET_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive creation failures that open the breaker, 1-1000 (default 5).
    pub failure_threshold: u32,
    /// The longest the breaker stays open before one probe may go ahead, 1-3600 s (default
    /// 60 s): the cap of the exponential backoff that starts at [`INITIAL_RESET_TIMEOUT`].
    pub reset_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            reset_timeout: DEFAULT_RESET_TIMEOUT,
        }
    }
}

impl BreakerConfig {
    /// A configuration with these values (see the fields for their ranges).
    pub fn new(failure_threshold: u32, reset_timeout: Duration) -> Self {
        Self {
            failure_threshold,
            reset_timeout,
        }
    }

    /// Checks the ranges.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming `breaker_failure_threshold` (1-1000) or
    /// `breaker_reset_timeout` (1-3600 s; fractions of a second round up).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = self.reset_timeout.as_secs() + u64::from(self.reset_timeout.subsec_nanos() > 0);
        for (field, value, min, max, unit) in [
            (
                "breaker_failure_threshold",
                u64::from(self.failure_threshold),
                1,
                1000,
                "",
            ),
            ("breaker_reset_timeout", secs, 1, 3600, " seconds"),
        ] {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                    unit,
                });
            }
        }
        Ok(())
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Creations go ahead.
    Closed,
    /// Creations are refused until `until`; the first attempt at or after it is the probe.
    Open {
        /// When a probe may go ahead.
        until: Instant,
    },
    /// One probe may be (or is) out; everything else is refused until it reports.
    HalfOpen,
}

/// Permission to create one session, from [`CircuitBreaker::try_acquire`]. Hand it back to
/// [`record`](CircuitBreaker::record) with the outcome, exactly once: a probe that is never
/// recorded keeps its breaker refusing everything. Record [`Outcome::Cancelled`] from a drop
/// guard so that cancellation cannot lose it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "record the attempt's outcome, or a half-open breaker stays shut"]
pub struct Attempt {
    generation: u64,
    probe: bool,
}

impl Attempt {
    /// Whether this attempt is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Refusal of [`CircuitBreaker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *probing { "circuit half-open: a probe is in flight" } else { "circuit open" })]
pub struct Open {
    /// When to try again: the end of the open period, or, while a probe is in flight, the
    /// refusal's time plus the current open period (by then the probe has usually reported;
    /// if it failed, the next refusal says how long the breaker opened for).
    pub retry_at: Instant,
    /// `true` when refused because a half-open probe is in flight.
    pub probing: bool,
}

/// How a creation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A session was created.
    Success,
    /// The creation failed (connect error, `initialize` error, create timeout).
    Failure,
    /// The creation was abandoned: no evidence about the endpoint.
    Cancelled,
}

/// A circuit breaker of one endpoint; see the [module docs](self) for the rules.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Advanced on every state change; attempts carry the generation they were granted in.
    generation: u64,
    consecutive_failures: u32,
    /// Probes that failed since the breaker last closed: the open period is
    /// `INITIAL_RESET_TIMEOUT · 2^failed_probes`, capped by `reset_timeout`.
    failed_probes: u32,
    probe_out: bool,
    trips: u64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(BreakerConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker. A `failure_threshold` of 0 is taken as 1.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                ..config
            },
            state: BreakerState::Closed,
            generation: 0,
            consecutive_failures: 0,
            failed_probes: 0,
            probe_out: false,
            trips: 0,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Asks to create a session at `now`.
    ///
    /// # Errors
    /// [`Open`] while the breaker is open (with the end of the open period), or half-open with
    /// the probe out (with `now` plus the current open period).
    pub fn try_acquire(&mut self, now: Instant) -> Result<Attempt, Open> {
        if let Some(refused) = self.refusal(now) {
            return Err(refused);
        }
        match self.state {
            BreakerState::Closed => Ok(self.attempt(false)),
            BreakerState::Open { .. } => {
                self.transition(BreakerState::HalfOpen);
                self.probe_out = true;
                Ok(self.attempt(true))
            }
            BreakerState::HalfOpen => {
                self.probe_out = true;
                Ok(self.attempt(true))
            }
        }
    }

    /// Reports how `attempt` ended at `now`. Returns `true` when this report opened the
    /// breaker (count it in `mcp_pool_circuit_breaker_trips_total`).
    pub fn record(&mut self, attempt: Attempt, outcome: Outcome, now: Instant) -> bool {
        if attempt.generation != self.generation {
            return false;
        }
        if attempt.probe {
            self.probe_out = false;
            match outcome {
                Outcome::Success => {
                    self.consecutive_failures = 0;
                    self.failed_probes = 0;
                    self.transition(BreakerState::Closed);
                    false
                }
                Outcome::Failure => {
                    self.failed_probes = self.failed_probes.saturating_add(1);
                    self.trip(now);
                    true
                }
                Outcome::Cancelled => false,
            }
        } else {
            match outcome {
                Outcome::Success => {
                    self.consecutive_failures = 0;
                    false
                }
                Outcome::Failure => {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                    if self.consecutive_failures >= self.config.failure_threshold {
                        self.trip(now);
                        true
                    } else {
                        false
                    }
                }
                Outcome::Cancelled => false,
            }
        }
    }

    /// Where the breaker is. An `Open` breaker whose `until` has passed stays `Open` here until
    /// the next [`try_acquire`](Self::try_acquire) turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How long the breaker stays open the next time it opens (or, while open, the period it
    /// opened for): [`INITIAL_RESET_TIMEOUT`] doubled per failed probe since it last closed,
    /// at most `reset_timeout`.
    pub fn open_period(&self) -> Duration {
        let cap = self.config.reset_timeout;
        // 2^6 s = 64 s already exceeds the default cap; 2^31 s exceeds any valid one.
        let factor = 1u32 << self.failed_probes.min(31);
        INITIAL_RESET_TIMEOUT
            .checked_mul(factor)
            .map_or(cap, |period| period.min(cap))
    }

    /// Whether the breaker is anything but closed: open (even past its open period, until a
    /// probe succeeds) or half-open. The server's health status counts such an endpoint as
    /// down (see [`ServerStats::health_status`](crate::ServerStats::health_status)).
    pub fn is_tripped(&self) -> bool {
        !matches!(self.state, BreakerState::Closed)
    }

    /// Whether an attempt at `now` would be refused, without taking one.
    pub fn is_open(&self, now: Instant) -> bool {
        self.refusal(now).is_some()
    }

    /// The refusal an attempt at `now` would get, without taking one: what
    /// [`try_acquire`](Self::try_acquire) would return as its error, or `None` if it would
    /// grant an attempt (closed, or open past its period: that attempt is the probe).
    pub fn refusal(&self, now: Instant) -> Option<Open> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open { until } => (now < until).then_some(Open {
                retry_at: until,
                probing: false,
            }),
            BreakerState::HalfOpen => self.probe_out.then(|| Open {
                retry_at: now + self.open_period(),
                probing: true,
            }),
        }
    }

    /// How many times the breaker opened (a failed probe opening it again counts).
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Consecutive failures counted while closed (0 after a success or a trip).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn attempt(&self, probe: bool) -> Attempt {
        Attempt {
            generation: self.generation,
            probe,
        }
    }

    fn trip(&mut self, now: Instant) {
        self.trips += 1;
        self.consecutive_failures = 0;
        self.transition(BreakerState::Open {
            until: now + self.open_period(),
        });
    }

    fn transition(&mut self, state: BreakerState) {
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Duration = Duration::from_secs(60);
    const FIRST: Duration = INITIAL_RESET_TIMEOUT;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::new(3, RESET))
    }

    /// Fails `n` attempts in a row at `now`; returns how many of them tripped the breaker.
    fn fail(b: &mut CircuitBreaker, n: u32, now: Instant) -> u32 {
        (0..n)
            .map(|_| {
                let a = b.try_acquire(now).expect("closed");
                u32::from(b.record(a, Outcome::Failure, now))
            })
            .sum()
    }

    fn open_at(now: Instant) -> CircuitBreaker {
        let mut b = breaker();
        assert_eq!(fail(&mut b, 3, now), 1);
        b
    }

    #[test]
    fn defaults_are_5_failures_and_60_s() {
        let config = BreakerConfig::default();
        assert_eq!(config.failure_threshold, 5);
        assert_eq!(config.reset_timeout, Duration::from_secs(60));
        assert_eq!(config.validate(), Ok(()));
        let mut b = CircuitBreaker::default();
        let now = Instant::now();
        assert_eq!(fail(&mut b, 4, now), 0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(fail(&mut b, 1, now), 1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: now + Duration::from_secs(1)
            },
            "the first open lasts 1 s, not the 60 s cap"
        );
    }

    #[test]
    fn validation_names_the_field_and_range() {
        let e = BreakerConfig::new(0, RESET).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "breaker_failure_threshold = 0 is out of range: must be 1 to 1000"
        );
        let e = BreakerConfig::new(5, Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "breaker_reset_timeout = 0 is out of range: must be 1 to 3600 seconds"
        );
        assert!(
            BreakerConfig::new(5, Duration::from_secs(3601))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let now = Instant::now();
        let mut b = breaker();
        assert_eq!(fail(&mut b, 2, now), 0);
        assert_eq!(b.consecutive_failures(), 2);
        let a = b.try_acquire(now).unwrap();
        assert!(!b.record(a, Outcome::Success, now));
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(fail(&mut b, 2, now), 0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(fail(&mut b, 1, now), 1);
        assert_eq!(b.trips(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_refuses_until_the_open_period_is_over() {
        let opened = Instant::now();
        let mut b = open_at(opened);
        assert!(b.is_open(opened));
        assert!(b.is_tripped());
        assert_eq!(
            b.try_acquire(opened),
            Err(Open {
                retry_at: opened + FIRST,
                probing: false
            })
        );
        tokio::time::advance(FIRST - Duration::from_millis(1)).await;
        let err = b.try_acquire(Instant::now()).unwrap_err();
        assert_eq!(err.retry_at, opened + FIRST);
        assert_eq!(err.to_string(), "circuit open");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!b.is_open(Instant::now()));
        let probe = b.try_acquire(Instant::now()).expect("the probe");
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.record(probe, Outcome::Success, Instant::now()));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.try_acquire(Instant::now()).unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_allows_exactly_one_probe_of_two_racing_callers() {
        let mut b = open_at(Instant::now());
        tokio::time::advance(RESET).await;
        let now = Instant::now();
        let first = b.try_acquire(now);
        let second = b.try_acquire(now);
        let probe = first.expect("one caller probes");
        assert!(probe.is_probe());
        let refused = second.unwrap_err();
        assert!(refused.probing);
        assert_eq!(
            refused.retry_at,
            now + FIRST,
            "retry in the current open period, not at once"
        );
        assert_eq!(
            refused.to_string(),
            "circuit half-open: a probe is in flight"
        );
        assert!(b.is_open(now), "refusing while the probe is out");
        assert!(!b.record(probe, Outcome::Success, now));
        assert!(b.try_acquire(now).is_ok());
        assert!(b.try_acquire(now).is_ok(), "closed again: everyone goes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_twice_the_period() {
        let mut b = open_at(Instant::now());
        tokio::time::advance(RESET).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let failed_at = Instant::now();
        assert!(b.record(probe, Outcome::Failure, failed_at));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: failed_at + 2 * FIRST
            }
        );
        assert_eq!(b.trips(), 2);
        assert_eq!(
            b.try_acquire(failed_at).unwrap_err().retry_at,
            failed_at + 2 * FIRST
        );
        tokio::time::advance(2 * FIRST).await;
        assert!(b.try_acquire(Instant::now()).unwrap().is_probe());
    }

    /// Fails the probe of an open breaker `b` once its period is over; returns how long the
    /// breaker then opened for.
    async fn fail_next_probe(b: &mut CircuitBreaker) -> Duration {
        let BreakerState::Open { until } = b.state() else {
            panic!("not open: {:?}", b.state());
        };
        tokio::time::advance(until.saturating_duration_since(Instant::now())).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).expect("the probe");
        assert!(b.record(probe, Outcome::Failure, now));
        match b.state() {
            BreakerState::Open { until } => until - now,
            other => panic!("a failed probe left the breaker {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_period_doubles_per_failed_probe_up_to_reset_timeout() {
        let mut b = open_at(Instant::now());
        assert_eq!(b.open_period(), FIRST);
        let mut periods = vec![b.open_period()];
        for _ in 0..8 {
            periods.push(fail_next_probe(&mut b).await);
        }
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.trips(), 9);
        // A probe refused meanwhile is told the current period.
        tokio::time::advance(RESET).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).unwrap();
        assert_eq!(b.try_acquire(now).unwrap_err().retry_at, now + RESET);
        b.record(probe, Outcome::Cancelled, now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_starts_the_backoff_again_at_one_second() {
        let mut b = open_at(Instant::now());
        for _ in 0..3 {
            fail_next_probe(&mut b).await;
        }
        assert_eq!(b.open_period(), 8 * FIRST);
        tokio::time::advance(8 * FIRST).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.record(probe, Outcome::Success, Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.is_tripped());
        assert_eq!(b.open_period(), FIRST);
        let now = Instant::now();
        assert_eq!(fail(&mut b, 3, now), 1);
        assert_eq!(b.state(), BreakerState::Open { until: now + FIRST });
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_timeout_below_one_second_caps_even_the_first_open() {
        let cap = Duration::from_millis(300);
        let mut b = CircuitBreaker::new(BreakerConfig::new(1, cap));
        let now = Instant::now();
        assert_eq!(fail(&mut b, 1, now), 1);
        assert_eq!(b.state(), BreakerState::Open { until: now + cap });
        assert_eq!(fail_next_probe(&mut b).await, cap);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_releases_the_slot_and_counts_nothing() {
        let mut b = open_at(Instant::now());
        tokio::time::advance(RESET).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).unwrap();
        assert!(b.try_acquire(now).is_err());
        assert!(!b.record(probe, Outcome::Cancelled, now));
        assert_eq!(b.state(), BreakerState::HalfOpen, "still unproven");
        assert_eq!(b.trips(), 1);
        let next = b.try_acquire(now).expect("the next caller probes");
        assert!(next.is_probe());
        assert!(b.try_acquire(now).is_err());
        assert!(!b.record(next, Outcome::Success, now));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn cancelled_creations_never_count_as_failures() {
        let now = Instant::now();
        let mut b = breaker();
        for _ in 0..10 {
            let a = b.try_acquire(now).unwrap();
            assert!(!b.record(a, Outcome::Cancelled, now));
        }
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(fail(&mut b, 2, now), 0);
        let a = b.try_acquire(now).unwrap();
        b.record(a, Outcome::Cancelled, now);
        assert_eq!(
            b.consecutive_failures(),
            2,
            "cancellation neither counts nor resets"
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_from_before_a_state_change_are_ignored() {
        let now = Instant::now();
        let mut b = breaker();
        // Granted while closed; the breaker opens while they are in flight.
        let late_success = b.try_acquire(now).unwrap();
        let late_failure = b.try_acquire(now).unwrap();
        assert_eq!(fail(&mut b, 3, now), 1);
        assert!(!b.record(late_success, Outcome::Success, now));
        assert!(!b.record(late_failure, Outcome::Failure, now));
        assert_eq!(b.state(), BreakerState::Open { until: now + FIRST });
        assert_eq!(b.trips(), 1);

        // A closed-state attempt reporting after the half-open probe closed the breaker again
        // does not count in the new closed period.
        let mut b = breaker();
        let stale = b.try_acquire(now).unwrap();
        assert_eq!(fail(&mut b, 3, now), 1);
        tokio::time::advance(RESET).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.record(probe, Outcome::Success, Instant::now());
        assert!(!b.record(stale, Outcome::Failure, Instant::now()));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_attempts_racing_a_probe_cannot_steal_its_decision() {
        let mut b = open_at(Instant::now());
        tokio::time::advance(RESET).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).unwrap();
        // No one else gets an attempt; the probe's failure is what reopens.
        assert!(b.try_acquire(now).is_err());
        assert!(b.record(probe, Outcome::Failure, now));
        assert!(b.is_open(now));
    }

    #[test]
    fn a_zero_threshold_is_taken_as_one() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::new(0, RESET));
        assert_eq!(b.config().failure_threshold, 1);
        assert_eq!(fail(&mut b, 1, now), 1);
        assert!(b.is_open(now));
    }
}
