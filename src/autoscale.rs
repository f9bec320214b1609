//! The autoscaler's decision: pure functions of one key's statistics over
//! the last `rebalance_interval`, in the manner of bb8's `Statistics` (acquires that waited,
//! total wait time) plus lease utilization.
//!
//! The engine feeds a [`ScaleStats`] under the key's lock: [`observe`](ScaleStats::observe)
//! after every acquire and release (leases in use, capacity), [`waited`](ScaleStats::waited)
//! for every acquire that queued. Every interval it calls [`take`](ScaleStats::take) and
//! [`decide`] with the key's current target `size`.
//!
//! # Rules
//!
//! Utilization is leases in use / capacity (live sessions × `session_concurrency`), sampled at
//! each acquire and release: the interval's *peak* and *mean* are over those samples.
//!
//! | condition (first that holds) | new target | reason |
//! |---|---|---|
//! | an acquire waited | `size × 2` (at least +1) | demand exceeded every session: grow geometrically, `max_size` within log₂ intervals |
//! | mean utilization ≥ 80 % | `size + ⌈size/2⌉` | sustained pressure |
//! | peak utilization ≥ 80 % | `size + ⌈size/4⌉` | a spike used (nearly) everything: pre-warm |
//! | no lease at all in the interval | `size − ⌈size/2⌉` | idle: halve |
//! | peak utilization ≤ 30 % | `size − max(1, ⌊size/4⌋)`, not below the sessions the peak needed | quiet the whole interval: shrink slowly |
//! | otherwise (peak between 30 % and 80 %, no waits) | `size` | the hysteresis band: stay |
//!
//! The result is then clamped into `[min_size, max_size]` (which also pulls a `size` left
//! outside by a configuration change back in). Growing fast and shrinking slowly, with a wide
//! band between the two thresholds, keeps a steady load from flapping the pool.

use std::time::Duration;

use mcp_pool_traits::PoolConfig;

/// Peak (or mean) utilization at or above which the pool grows: 80 %.
pub const GROW_UTILIZATION: f64 = 0.80;
/// Peak utilization at or below which (for the whole interval) the pool shrinks: 30 %.
pub const SHRINK_UTILIZATION: f64 = 0.30;

/// Utilization is kept in per-mille integers on the hot path.
const PER_MILLE: u64 = 1000;

/// Counters of one key over one rebalance interval. Plain integers: feeding it allocates
/// nothing, reads no clock and takes a few nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScaleStats {
    /// The latest observation, carried into the next interval.
    in_use: u32,
    capacity: u32,
    samples: u64,
    /// Sum of the sampled utilizations, per mille.
    sum_per_mille: u64,
    peak_per_mille: u32,
    peak_in_use: u32,
    waited: u64,
    wait_time: Duration,
}

impl ScaleStats {
    /// Empty statistics (nothing in use, no capacity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples the load after an acquire or release: `in_use` leases out of `capacity` (live
    /// sessions × `session_concurrency`). With no capacity, utilization counts as 100 % when
    /// anything is in use, else 0 %.
    pub fn observe(&mut self, in_use: u32, capacity: u32) {
        self.in_use = in_use;
        self.capacity = capacity;
        let per_mille = Self::utilization_per_mille(in_use, capacity);
        self.samples += 1;
        self.sum_per_mille += u64::from(per_mille);
        self.peak_per_mille = self.peak_per_mille.max(per_mille);
        self.peak_in_use = self.peak_in_use.max(in_use);
    }

    /// Counts one acquire that queued, and how long it waited (until served or given up).
    pub fn waited(&mut self, wait: Duration) {
        self.waited += 1;
        self.wait_time = self.wait_time.saturating_add(wait);
    }

    /// Ends the interval: returns its summary and starts the next one from the latest
    /// observation (leases still out at the boundary count in the next interval's peak).
    pub fn take(&mut self) -> IntervalStats {
        let summary = IntervalStats {
            samples: self.samples,
            mean_utilization: if self.samples == 0 {
                0.0
            } else {
                self.sum_per_mille as f64 / self.samples as f64 / PER_MILLE as f64
            },
            peak_utilization: f64::from(self.peak_per_mille) / PER_MILLE as f64,
            peak_in_use: self.peak_in_use,
            waited: self.waited,
            wait_time: self.wait_time,
        };
        let (in_use, capacity) = (self.in_use, self.capacity);
        *self = Self::default();
        if capacity > 0 || in_use > 0 {
            self.observe(in_use, capacity);
        }
        summary
    }

    fn utilization_per_mille(in_use: u32, capacity: u32) -> u32 {
        if capacity == 0 {
            return if in_use > 0 { PER_MILLE as u32 } else { 0 };
        }
        // Leases never exceed capacity; the min guards against a caller's off-by-one.
        ((u64::from(in_use) * PER_MILLE / u64::from(capacity)).min(PER_MILLE)) as u32
    }
}

/// One key's load over one rebalance interval, from [`ScaleStats::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct IntervalStats {
    /// Load observations (acquires and releases) in the interval, plus the carried-over one.
    pub samples: u64,
    /// Mean of the sampled utilizations, 0.0-1.0.
    pub mean_utilization: f64,
    /// Highest sampled utilization, 0.0-1.0.
    pub peak_utilization: f64,
    /// Most leases out at once.
    pub peak_in_use: u32,
    /// Acquires that had to queue (bb8's `get_waited`).
    pub waited: u64,
    /// Their total time in the queue (bb8's `get_wait_time`).
    pub wait_time: Duration,
}

impl IntervalStats {
    /// Statistics with these figures (utilizations 0.0-1.0); for tests and custom feeds.
    pub fn new(
        mean_utilization: f64,
        peak_utilization: f64,
        peak_in_use: u32,
        waited: u64,
    ) -> Self {
        Self {
            samples: 1,
            mean_utilization,
            peak_utilization,
            peak_in_use,
            waited,
            wait_time: Duration::ZERO,
        }
    }
}

/// What [`decide`] needs: the interval's statistics and the key's sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScaleInputs {
    /// The last interval.
    pub stats: IntervalStats,
    /// The current target `size`.
    pub size: u32,
    /// `min_size`: never go below.
    pub min_size: u32,
    /// `max_size`: never go above.
    pub max_size: u32,
    /// Leases per session (`session_concurrency`), at least 1.
    pub session_concurrency: u32,
}

impl ScaleInputs {
    /// Inputs for a key at target `size` under `config`'s bounds and concurrency.
    pub fn new(stats: IntervalStats, size: u32, config: &PoolConfig) -> Self {
        Self {
            stats,
            size,
            min_size: config.min_size,
            max_size: config.max_size,
            session_concurrency: config.session_concurrency,
        }
    }

    /// The same inputs with other bounds.
    pub fn with_bounds(mut self, min_size: u32, max_size: u32) -> Self {
        self.min_size = min_size;
        self.max_size = max_size;
        self
    }
}

/// Which way a decision goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleAction {
    /// The target goes up.
    Grow,
    /// The target goes down.
    Shrink,
    /// The target stays.
    Stay,
}

impl ScaleAction {
    /// `grow`, `shrink` or `stay` (for logs and metric labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grow => "grow",
            Self::Shrink => "shrink",
            Self::Stay => "stay",
        }
    }
}

/// The autoscaler's verdict for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleDecision {
    /// The new target `size`, within `[min_size, max_size]`.
    pub target: u32,
    /// Which way it moved from the inputs' `size`.
    pub action: ScaleAction,
    /// The rule that decided (see the [module docs](self)); `"... (at max_size)"` and the like
    /// when the bounds cut the rule's step.
    pub reason: &'static str,
}

/// Decides the next target size; see the [module docs](self) for the rules. Pure: same inputs,
/// same decision.
pub fn decide(inputs: &ScaleInputs) -> ScaleDecision {
    let stats = &inputs.stats;
    let size = inputs.size;
    let max = inputs.max_size.max(1);
    let min = inputs.min_size.clamp(1, max);
    let (wanted, reason, bounded) = if stats.waited > 0 {
        (
            size.saturating_mul(2).max(size.saturating_add(1)),
            "acquires waited",
            "acquires waited (at max_size)",
        )
    } else if stats.mean_utilization >= GROW_UTILIZATION {
        (
            size.saturating_add(size.div_ceil(2).max(1)),
            "mean utilization >= 80%",
            "mean utilization >= 80% (at max_size)",
        )
    } else if stats.peak_utilization >= GROW_UTILIZATION {
        (
            size.saturating_add(size.div_ceil(4).max(1)),
            "peak utilization >= 80%",
            "peak utilization >= 80% (at max_size)",
        )
    } else if stats.peak_in_use == 0 {
        (
            size - size.div_ceil(2),
            "idle interval",
            "idle interval (at min_size)",
        )
    } else if stats.peak_utilization <= SHRINK_UTILIZATION {
        let needed = stats
            .peak_in_use
            .div_ceil(inputs.session_concurrency.max(1));
        (
            size.saturating_sub((size / 4).max(1)).max(needed),
            "peak utilization <= 30%",
            "peak utilization <= 30% (at min_size)",
        )
    } else {
        (size, "within hysteresis band", "within hysteresis band")
    };
    let target = wanted.clamp(min, max);
    let action = match target.cmp(&size) {
        std::cmp::Ordering::Greater => ScaleAction::Grow,
        std::cmp::Ordering::Less => ScaleAction::Shrink,
        std::cmp::Ordering::Equal => ScaleAction::Stay,
    };
    let reason = if target != wanted && size >= min && size <= max {
        bounded
    } else if size < min || size > max {
        "size outside [min_size, max_size]: clamped"
    } else {
        reason
    };
    ScaleDecision {
        target,
        action,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(stats: IntervalStats, size: u32) -> ScaleInputs {
        ScaleInputs {
            stats,
            size,
            min_size: 2,
            max_size: 16,
            session_concurrency: 1,
        }
    }

    /// A burst: everything busy and acquires queued.
    fn burst(size: u32) -> IntervalStats {
        IntervalStats::new(1.0, 1.0, size, 40)
    }

    fn quiet() -> IntervalStats {
        IntervalStats::new(0.05, 0.10, 1, 0)
    }

    fn idle() -> IntervalStats {
        IntervalStats::new(0.0, 0.0, 0, 0)
    }

    fn run(mut size: u32, stats: impl Fn(u32) -> IntervalStats, steps: usize) -> Vec<u32> {
        (0..steps)
            .map(|_| {
                size = decide(&inputs(stats(size), size)).target;
                size
            })
            .collect()
    }

    #[test]
    fn a_burst_grows_toward_max_and_stops_there() {
        assert_eq!(run(2, burst, 5), [4, 8, 16, 16, 16]);
        let at_max = decide(&inputs(burst(16), 16));
        assert_eq!(at_max.action, ScaleAction::Stay);
        assert_eq!(at_max.reason, "acquires waited (at max_size)");
        let first = decide(&inputs(burst(2), 2));
        assert_eq!(
            (first.action, first.reason),
            (ScaleAction::Grow, "acquires waited")
        );
    }

    #[test]
    fn quiet_shrinks_slowly_and_idle_halves_toward_min() {
        let d = decide(&inputs(quiet(), 16));
        assert_eq!((d.target, d.action), (12, ScaleAction::Shrink));
        assert_eq!(d.reason, "peak utilization <= 30%");
        assert_eq!(run(16, |_| quiet(), 8), [12, 9, 7, 6, 5, 4, 3, 2]);
        assert_eq!(run(16, |_| idle(), 5), [8, 4, 2, 2, 2]);
        let d = decide(&inputs(idle(), 2));
        assert_eq!(
            (d.action, d.reason),
            (ScaleAction::Stay, "idle interval (at min_size)")
        );
    }

    #[test]
    fn in_between_stays_hysteresis() {
        for (mean, peak) in [(0.5, 0.5), (0.2, 0.31), (0.79, 0.79), (0.1, 0.75)] {
            let d = decide(&inputs(IntervalStats::new(mean, peak, 4, 0), 8));
            assert_eq!(
                (d.target, d.action, d.reason),
                (8, ScaleAction::Stay, "within hysteresis band"),
                "mean {mean} peak {peak}"
            );
        }
        // Just outside the band on either side moves.
        assert_eq!(
            decide(&inputs(IntervalStats::new(0.5, 0.8, 7, 0), 8)).target,
            10
        );
        assert_eq!(
            decide(&inputs(IntervalStats::new(0.1, 0.3, 2, 0), 8)).target,
            6
        );
    }

    #[test]
    fn grow_steps_follow_the_pressure() {
        let spike = decide(&inputs(IntervalStats::new(0.4, 0.9, 8, 0), 8));
        assert_eq!(
            (spike.target, spike.reason),
            (10, "peak utilization >= 80%")
        );
        let sustained = decide(&inputs(IntervalStats::new(0.85, 1.0, 8, 0), 8));
        assert_eq!(
            (sustained.target, sustained.reason),
            (12, "mean utilization >= 80%")
        );
        let waited = decide(&inputs(IntervalStats::new(0.85, 1.0, 8, 1), 8));
        assert_eq!(waited.target, 16);
        // Size 1 still grows by one.
        let one = decide(&inputs(IntervalStats::new(0.5, 1.0, 1, 0), 1).with_bounds(1, 16));
        assert_eq!(one.target, 2);
    }

    #[test]
    fn shrinking_keeps_the_sessions_the_peak_needed() {
        // 5 leases at peak on 4 leases per session need 2 sessions: 3 - max(1, 0) = 2 ≥ 2.
        let mut i = inputs(IntervalStats::new(0.1, 0.25, 5, 0), 3).with_bounds(1, 16);
        i.session_concurrency = 4;
        assert_eq!(decide(&i).target, 2);
        // With 9 leases at peak, 3 sessions are needed: it stays.
        i.stats.peak_in_use = 9;
        let d = decide(&i);
        assert_eq!((d.target, d.action), (3, ScaleAction::Stay));
    }

    #[test]
    fn bounds_are_always_respected() {
        let all = [
            burst(4),
            quiet(),
            idle(),
            IntervalStats::new(0.5, 0.5, 3, 0),
        ];
        for stats in all {
            for size in 0..=20 {
                for (min, max) in [(1, 1), (2, 16), (5, 5), (3, 10)] {
                    let d = decide(&inputs(stats, size).with_bounds(min, max));
                    assert!(
                        (min..=max).contains(&d.target),
                        "{stats:?} size {size} bounds {min}..={max}: {d:?}"
                    );
                }
            }
        }
        let d = decide(&inputs(IntervalStats::new(0.5, 0.5, 3, 0), 20));
        assert_eq!(d.target, 16);
        assert_eq!(d.reason, "size outside [min_size, max_size]: clamped");
        let d = decide(&inputs(IntervalStats::new(0.5, 0.5, 3, 0), 0));
        assert_eq!((d.target, d.action), (2, ScaleAction::Grow));
    }

    #[test]
    fn inputs_take_bounds_from_the_pool_config() {
        let config = PoolConfig {
            min_size: 3,
            size: 4,
            max_size: 7,
            session_concurrency: 2,
            ..PoolConfig::enabled()
        };
        let i = ScaleInputs::new(burst(4), config.size, &config);
        assert_eq!((i.min_size, i.max_size, i.session_concurrency), (3, 7, 2));
        assert_eq!(decide(&i).target, 7);
    }

    #[test]
    fn stats_sample_mean_and_peak_then_reset() {
        let mut s = ScaleStats::new();
        s.observe(1, 4);
        s.observe(2, 4);
        s.observe(4, 4);
        s.observe(1, 4);
        s.waited(Duration::from_millis(30));
        s.waited(Duration::from_millis(20));
        let i = s.take();
        assert_eq!(i.samples, 4);
        assert_eq!(i.peak_utilization, 1.0);
        assert_eq!(i.peak_in_use, 4);
        assert!((i.mean_utilization - 0.5).abs() < 1e-9, "{i:?}");
        assert_eq!(i.waited, 2);
        assert_eq!(i.wait_time, Duration::from_millis(50));

        // The next interval starts from the lease still out: 1 of 4.
        let next = s.take();
        assert_eq!(next.samples, 1);
        assert_eq!(next.peak_in_use, 1);
        assert_eq!(next.peak_utilization, 0.25);
        assert_eq!(next.waited, 0);
        assert_eq!(next.wait_time, Duration::ZERO);
    }

    #[test]
    fn stats_without_capacity() {
        let mut s = ScaleStats::new();
        assert_eq!(s.take(), IntervalStats::default());
        s.observe(0, 0);
        assert_eq!(s.take().peak_utilization, 0.0);
        s.observe(1, 0);
        assert_eq!(s.take().peak_utilization, 1.0);
        let mut over = ScaleStats::new();
        over.observe(5, 4);
        assert_eq!(over.take().peak_utilization, 1.0, "clamped at 100%");
    }

    #[test]
    fn a_full_cycle_from_stats_to_decisions() {
        // Burst: 2 sessions, both busy, 62 acquires queued.
        let mut s = ScaleStats::new();
        let mut size = 2;
        for _ in 0..3 {
            s.observe(size, size);
            for _ in 0..62 {
                s.waited(Duration::from_millis(100));
            }
            size = decide(&inputs(s.take(), size)).target;
        }
        assert_eq!(size, 16);
        // The burst ends: everything is released; then quiet intervals.
        s.observe(0, 16);
        for _ in 0..4 {
            let stats = s.take();
            size = decide(&inputs(stats, size)).target;
        }
        assert_eq!(size, 2, "idle halves 16 → 8 → 4 → 2");
    }
}
