//! [`CircuitBreaker`]: stops creating sessions on an endpoint that keeps failing
//! (issues 6 and 10), and lets demand find out at once when it is back.
//!
//! One breaker per endpoint, counting session creations:
//!
//! ```text
//!            N consecutive failures                  probe interval over (acquires), or
//!  Closed ──────────────────────────► Open{until} ─── backoff over (background) ──► HalfOpen
//!    ▲                                    ▲            first attempt: the probe       │
//!    │            probe succeeds          │      probe fails                          │
//!    └────────────────────────────────────┼───────────────────────────────────────────┤
//!                                         └───────────────────────────────────────────┘
//! ```
//!
//! - **Closed**: every creation may go ahead. A success resets the count of consecutive
//!   failures; the `failure_threshold`-th consecutive failure opens the breaker.
//! - **Open**: creations are refused with the time they may retry. An **acquire** (someone is
//!   waiting for the session) may probe once [`PROBE_INTERVAL`] (500 ms) has passed since the
//!   breaker opened or its last probe failed: demand probes at that pace, one probe at a time,
//!   so an upstream that comes back is served again within about half a second of the next
//!   request (when acquires waited out the whole backoff, a 3-second restart was served
//!   0.7-4.9 s after it was back, a 10-second one 5.9 s after). A **background** creation
//!   (`min_size` refills, replacements, the autoscaler: nobody waits for them) waits out the
//!   backoff instead: [`INITIAL_RESET_TIMEOUT`] (1 s), doubled per failed probe, capped by
//!   `reset_timeout`, so an endpoint nobody asks for is tried at most once per
//!   `reset_timeout`. A successful probe starts the backoff at 1 s again.
//! - **HalfOpen**: the attempt that found the breaker past its period is the one probe;
//!   everyone else is refused until it reports, told to retry after the probe interval. Its
//!   success closes the breaker, its failure opens it again.
//! - **Cancellation** (the acquire was dropped, the pool closed) is no evidence either way: it
//!   changes no count, and a cancelled probe gives its turn back so the next caller probes.
//! - The breaker only changes state on evidence gathered in its current state: the outcome of
//!   an attempt granted before the last state change is ignored (a creation that started while
//!   the breaker was closed and succeeds after it opened does not close it; the probe decides).
//!
//! A probe against a refused port fails in microseconds; against a hung server it takes the
//! create timeout, and only the one caller that probes waits for it: the others are refused at
//! once, as while open.
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
/// How long an open breaker refuses background creations the first time (after the
/// consecutive failures that opened it, or after a successful probe): 1 s, or `reset_timeout`
/// if that is shorter. Each failed probe doubles it up to `reset_timeout`. Acquires wait only
/// [`PROBE_INTERVAL`].
pub const INITIAL_RESET_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an open breaker refuses acquires after it opened or after its last probe failed,
/// whatever the backoff: 500 ms, or `reset_timeout` if that is shorter. The next acquire then
/// probes, so an upstream that comes back is served within about this long of the next
/// request; one probe runs at a time, so a down upstream sees at most two attempts a second
/// from a pool, whatever the load.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Settings of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive creation failures that open the breaker, 1-1000 (default 5).
    pub failure_threshold: u32,
    /// The longest the breaker refuses background creations before one may probe, 1-3600 s
    /// (default 60 s): the cap of the exponential backoff that starts at
    /// [`INITIAL_RESET_TIMEOUT`]. Acquires probe after [`PROBE_INTERVAL`] (or this, if
    /// shorter).
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
    /// Acquires are refused until `until`; the first attempt at or after it is the probe
    /// (background creations wait out the longer backoff, see the [module docs](self)).
    Open {
        /// When an acquire may probe.
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

/// Refusal of [`CircuitBreaker::try_acquire`] (and of
/// [`try_acquire_background`](CircuitBreaker::try_acquire_background)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *probing { "circuit half-open: a probe is in flight" } else { "circuit open" })]
pub struct Open {
    /// When to try again: when the asker may probe, or, while a probe is in flight, the
    /// refusal's time plus the probe interval (by then the probe has usually reported; if it
    /// failed, the next refusal says when to probe again).
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
    /// Probes that failed since the breaker last closed: the background backoff is
    /// `INITIAL_RESET_TIMEOUT · 2^failed_probes`, capped by `reset_timeout`.
    failed_probes: u32,
    /// While open: when a background creation may probe (set when it opens).
    background_until: Option<Instant>,
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
            background_until: None,
            probe_out: false,
            trips: 0,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Asks to create a session at `now` for an acquire (someone waits for it).
    ///
    /// # Errors
    /// [`Open`] while the breaker is open and its probe interval is not over (with its end),
    /// or half-open with the probe out (with `now` plus the probe interval).
    pub fn try_acquire(&mut self, now: Instant) -> Result<Attempt, Open> {
        self.try_acquire_as(false, now)
    }

    /// Asks to create a session at `now` in the background (nobody waits for it: `min_size`
    /// refills, replacements, the autoscaler).
    ///
    /// # Errors
    /// [`Open`] while the breaker is open and its backoff is not over (with its end), or
    /// half-open with the probe out (with `now` plus the probe interval).
    pub fn try_acquire_background(&mut self, now: Instant) -> Result<Attempt, Open> {
        self.try_acquire_as(true, now)
    }

    fn try_acquire_as(&mut self, background: bool, now: Instant) -> Result<Attempt, Open> {
        if let Some(refused) = self.refusal_as(background, now) {
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

    /// How long an acquire waits to probe after the breaker opens or a probe fails:
    /// [`PROBE_INTERVAL`], at most `reset_timeout`.
    pub fn probe_interval(&self) -> Duration {
        PROBE_INTERVAL.min(self.config.reset_timeout)
    }

    /// How long background creations wait after the breaker opens the next time (or, while
    /// open, since it opened): [`INITIAL_RESET_TIMEOUT`] doubled per failed probe since it
    /// last closed, at most `reset_timeout`.
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

    /// Whether an acquire's attempt at `now` would be refused, without taking one.
    pub fn is_open(&self, now: Instant) -> bool {
        self.refusal(now).is_some()
    }

    /// The refusal an acquire's attempt at `now` would get, without taking one: what
    /// [`try_acquire`](Self::try_acquire) would return as its error, or `None` if it would
    /// grant an attempt (closed, or open past its probe interval: that attempt is the probe).
    pub fn refusal(&self, now: Instant) -> Option<Open> {
        self.refusal_as(false, now)
    }

    /// The refusal a background attempt at `now` would get, without taking one: what
    /// [`try_acquire_background`](Self::try_acquire_background) would return as its error.
    pub fn background_refusal(&self, now: Instant) -> Option<Open> {
        self.refusal_as(true, now)
    }

    fn refusal_as(&self, background: bool, now: Instant) -> Option<Open> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open { until } => {
                let until = if background {
                    self.background_until.unwrap_or(until)
                } else {
                    until
                };
                (now < until).then_some(Open {
                    retry_at: until,
                    probing: false,
                })
            }
            BreakerState::HalfOpen => self.probe_out.then(|| Open {
                retry_at: now + self.probe_interval(),
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
        self.background_until = Some(now + self.open_period());
        self.transition(BreakerState::Open {
            until: now + self.probe_interval(),
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
    const PROBE: Duration = PROBE_INTERVAL;

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
                until: now + Duration::from_millis(500)
            },
            "acquires may probe after 500 ms"
        );
        assert_eq!(
            b.background_refusal(now).map(|o| o.retry_at),
            Some(now + Duration::from_secs(1)),
            "background work waits the first backoff step, not the 60 s cap"
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
    async fn open_refuses_acquires_until_the_probe_interval_is_over() {
        let opened = Instant::now();
        let mut b = open_at(opened);
        assert!(b.is_open(opened));
        assert!(b.is_tripped());
        assert_eq!(
            b.try_acquire(opened),
            Err(Open {
                retry_at: opened + PROBE,
                probing: false
            })
        );
        tokio::time::advance(PROBE - Duration::from_millis(1)).await;
        let err = b.try_acquire(Instant::now()).unwrap_err();
        assert_eq!(err.retry_at, opened + PROBE);
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
    async fn background_creations_wait_out_the_backoff_that_acquires_skip() {
        let opened = Instant::now();
        let mut b = open_at(opened);
        tokio::time::advance(PROBE).await;
        let now = Instant::now();
        assert!(!b.is_open(now), "an acquire may probe");
        assert_eq!(
            b.try_acquire_background(now),
            Err(Open {
                retry_at: opened + FIRST,
                probing: false
            }),
            "nobody waits for background work: it waits the backoff"
        );
        assert_eq!(b.state(), BreakerState::Open { until: now }, "untouched");
        tokio::time::advance(FIRST - PROBE).await;
        let probe = b
            .try_acquire_background(Instant::now())
            .expect("the backoff is over");
        assert!(probe.is_probe());
        // The background probe is the one probe: acquires are refused meanwhile.
        let refused = b.try_acquire(Instant::now()).unwrap_err();
        assert!(refused.probing);
        assert_eq!(refused.retry_at, Instant::now() + PROBE);
        assert!(!b.record(probe, Outcome::Success, Instant::now()));
        assert_eq!(b.state(), BreakerState::Closed);
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
            now + PROBE,
            "retry after the probe interval, not at once"
        );
        assert_eq!(
            refused.to_string(),
            "circuit half-open: a probe is in flight"
        );
        assert!(b.is_open(now), "refusing while the probe is out");
        assert!(b.try_acquire_background(now).is_err(), "background too");
        assert!(!b.record(probe, Outcome::Success, now));
        assert!(b.try_acquire(now).is_ok());
        assert!(b.try_acquire(now).is_ok(), "closed again: everyone goes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_acquires_for_the_probe_interval_and_doubles_the_backoff() {
        let mut b = open_at(Instant::now());
        tokio::time::advance(RESET).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let failed_at = Instant::now();
        assert!(b.record(probe, Outcome::Failure, failed_at));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: failed_at + PROBE
            }
        );
        assert_eq!(b.trips(), 2);
        assert_eq!(
            b.try_acquire(failed_at).unwrap_err().retry_at,
            failed_at + PROBE
        );
        assert_eq!(
            b.background_refusal(failed_at).unwrap().retry_at,
            failed_at + 2 * FIRST
        );
        tokio::time::advance(PROBE).await;
        assert!(b.try_acquire(Instant::now()).unwrap().is_probe());
    }

    /// Fails the probe of an open breaker `b` once its background backoff is over (probing as
    /// background work); returns how long background work is then refused for.
    async fn fail_next_background_probe(b: &mut CircuitBreaker) -> Duration {
        let wait = b
            .background_refusal(Instant::now())
            .map_or(Duration::ZERO, |o| o.retry_at - Instant::now());
        tokio::time::advance(wait).await;
        let now = Instant::now();
        let probe = b.try_acquire_background(now).expect("the probe");
        assert!(b.record(probe, Outcome::Failure, now));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: now + b.probe_interval()
            }
        );
        b.background_refusal(now).expect("open").retry_at - now
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_per_failed_probe_up_to_reset_timeout() {
        let mut b = open_at(Instant::now());
        assert_eq!(b.open_period(), FIRST);
        assert_eq!(b.probe_interval(), PROBE);
        let mut periods = vec![b.open_period()];
        for _ in 0..8 {
            periods.push(fail_next_background_probe(&mut b).await);
        }
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.trips(), 9);
        // Acquires probe after the probe interval all along, and a refusal while a probe is
        // in flight says so too.
        tokio::time::advance(PROBE).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).unwrap();
        assert_eq!(b.try_acquire(now).unwrap_err().retry_at, now + PROBE);
        b.record(probe, Outcome::Cancelled, now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_starts_the_backoff_again_at_one_second() {
        let mut b = open_at(Instant::now());
        for _ in 0..3 {
            fail_next_background_probe(&mut b).await;
        }
        assert_eq!(b.open_period(), 8 * FIRST);
        tokio::time::advance(PROBE).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.record(probe, Outcome::Success, Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.is_tripped());
        assert_eq!(b.open_period(), FIRST);
        let now = Instant::now();
        assert_eq!(fail(&mut b, 3, now), 1);
        assert_eq!(b.state(), BreakerState::Open { until: now + PROBE });
        assert_eq!(b.background_refusal(now).unwrap().retry_at, now + FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_timeout_below_the_probe_interval_caps_both() {
        let cap = Duration::from_millis(300);
        let mut b = CircuitBreaker::new(BreakerConfig::new(1, cap));
        let now = Instant::now();
        assert_eq!(fail(&mut b, 1, now), 1);
        assert_eq!(b.state(), BreakerState::Open { until: now + cap });
        assert_eq!(b.background_refusal(now).unwrap().retry_at, now + cap);
        assert_eq!(fail_next_background_probe(&mut b).await, cap);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_gives_its_turn_back_and_counts_nothing() {
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
        assert_eq!(b.state(), BreakerState::Open { until: now + PROBE });
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
