//! Peak EWMA: the session whose endpoint answers fastest, weighted by its load.

use std::time::{Duration, Instant};

use mcp_pool_traits::{
    EndpointView, LeaseReport, SelectContext, Selection, Selector, SessionView, Strategy,
    StrategyKind,
};

use crate::{least_connections::FULL_SCAN_MAX, random::XorShift};

/// Endpoint indices a selector keeps estimates for; a server with more endpoints gets no
/// latency awareness for the rest (they count as unmeasured).
pub const MAX_TRACKED_ENDPOINTS: usize = 1024;

/// How long a latency estimate takes to decay by a factor of e: 1 s. Shorter than linkerd's
/// and Finagle's 10 s, because a pool's calls are short and frequent: with 10 s one scheduling
/// hiccup of the fast endpoint made it look as slow as the slow one for seconds, and the slow
/// endpoint kept 2.4 % of the calls in `latency_bench`; with 1 s it keeps under 1 %. Raise it
/// (`PeakEwma { decay }`, registered as a custom strategy) for servers whose calls take
/// seconds.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(1);

/// Latency-aware selection (Finagle's and linkerd's peak EWMA, tower's `PeakEwma`): each
/// endpoint carries an exponentially weighted moving average of how long its leases were held,
/// that jumps at once to a slower observation (the peak) and comes down gradually; a
/// session's cost is its endpoint's estimate × (its leases in flight + 1). An acquire gets the
/// eligible session of lowest cost (power of two choices above
/// [`FULL_SCAN_MAX`] sessions), a new session goes to the available endpoint of lowest cost.
///
/// An endpoint not measured yet costs nothing, so every endpoint is tried; an estimate decays
/// towards zero while nothing refreshes it ([`decay`](Self::decay), [`DEFAULT_DECAY`]), so an
/// endpoint that was slow gets traffic again later and shows whether it recovered. Pick it when one endpoint of
/// a server can turn slow (a busy replica, a far region): unlike `least_connections`, which
/// only sees calls in flight, it stops sending to the slow endpoint while the fast one has
/// room (`cargo run --release --example latency_bench`).
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// The estimate's decay time constant: unrefreshed for this long, it is divided by e.
    pub decay: Duration,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            decay: DEFAULT_DECAY,
        }
    }
}

impl Strategy for PeakEwma {
    fn name(&self) -> &str {
        "peak_ewma"
    }

    fn kind(&self) -> Option<StrategyKind> {
        Some(StrategyKind::PeakEwma)
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(PeakEwmaSelector::new(self.decay))
    }
}

/// One endpoint's latency estimate.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Nanoseconds; 0 when never measured.
    rtt_ns: f64,
    /// When it was last refreshed.
    at: Instant,
}

impl Estimate {
    /// The estimate as of `now`: decayed towards zero for the time nothing refreshed it.
    fn at(&self, now: Instant, decay_ns: f64) -> f64 {
        let idle = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.rtt_ns * (-idle / decay_ns).exp()
    }

    /// Takes in one observation of `rtt_ns` at `now` (tower's `RttEstimate::update`): a
    /// slower one is taken as is (the peak), a faster one moves the average by how much time
    /// passed since the last.
    fn observe(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) {
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let keep = (-elapsed / decay_ns).exp();
            self.rtt_ns = self.rtt_ns * keep + rtt_ns * (1.0 - keep);
        }
        self.at = now;
    }
}

/// The per-key state of [`PeakEwma`]: one estimate per endpoint index, a tie-breaking cursor
/// and a xorshift state.
#[derive(Debug)]
pub struct PeakEwmaSelector {
    decay_ns: f64,
    estimates: Vec<Option<Estimate>>,
    /// Each endpoint's estimate decayed to the current selection's time (0 when unmeasured),
    /// computed once per selection: one `exp` per endpoint, not per session. Sized with
    /// `estimates`, outside `select`.
    decayed: Vec<f64>,
    cursor: usize,
    rng: XorShift,
}

impl PeakEwmaSelector {
    /// A selector whose estimates decay with time constant `decay` (clamped to at least 1 ms).
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: decay.max(Duration::from_millis(1)).as_nanos() as f64,
            estimates: Vec::new(),
            decayed: Vec::new(),
            cursor: 0,
            rng: XorShift::default(),
        }
    }

    /// Records that a lease on endpoint `endpoint` was held for `rtt` at `now`
    /// ([`on_released`](Selector::on_released) does it with the report and the current time).
    /// Endpoints from [`MAX_TRACKED_ENDPOINTS`] on are not tracked (they cost as unmeasured).
    pub fn observe(&mut self, endpoint: usize, rtt: Duration, now: Instant) {
        if endpoint >= MAX_TRACKED_ENDPOINTS {
            return;
        }
        if self.estimates.len() <= endpoint {
            self.estimates.resize(endpoint + 1, None);
            self.decayed.resize(endpoint + 1, 0.0);
        }
        let rtt_ns = rtt.as_nanos() as f64;
        match &mut self.estimates[endpoint] {
            Some(estimate) => estimate.observe(rtt_ns, now, self.decay_ns),
            empty @ None => *empty = Some(Estimate { rtt_ns, at: now }),
        }
    }

    /// Endpoint `endpoint`'s latency estimate at `now`; `None` before its first observation.
    pub fn estimate(&self, endpoint: usize, now: Instant) -> Option<Duration> {
        self.estimates
            .get(endpoint)
            .copied()
            .flatten()
            .map(|e| Duration::from_nanos(e.at(now, self.decay_ns) as u64))
    }

    /// [`select`](Selector::select) as of `now`.
    pub fn select_at(&mut self, sessions: &[SessionView], now: Instant) -> Selection {
        for (decayed, estimate) in self.decayed.iter_mut().zip(&self.estimates) {
            *decayed = estimate.map_or(0.0, |e| e.at(now, self.decay_ns));
        }
        let pick = if sessions.len() <= FULL_SCAN_MAX {
            self.scan(sessions)
        } else {
            self.two_choices(sessions)
        };
        pick.map_or(Selection::Create, Selection::Session)
    }

    /// [`select_endpoint`](Selector::select_endpoint) as of `now`.
    pub fn select_endpoint_at(&self, endpoints: &[EndpointView], now: Instant) -> Option<usize> {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.available)
            .min_by(|(i, a), (j, b)| {
                let cost_a = self.cost(*i, a.in_flight, now);
                let cost_b = self.cost(*j, b.in_flight, now);
                cost_a
                    .total_cmp(&cost_b)
                    .then((a.in_flight, a.sessions, i).cmp(&(b.in_flight, b.sessions, j)))
            })
            .map(|(i, _)| i)
    }

    /// The cost of one more lease on endpoint `endpoint` with `in_flight` leases out.
    fn cost(&self, endpoint: usize, in_flight: u32, now: Instant) -> f64 {
        match self.estimates.get(endpoint) {
            Some(Some(estimate)) => estimate.at(now, self.decay_ns) * (f64::from(in_flight) + 1.0),
            _ => 0.0,
        }
    }

    fn scan(&mut self, sessions: &[SessionView]) -> Option<usize> {
        let n = sessions.len();
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let s = &sessions[i];
            if !s.has_capacity() {
                continue;
            }
            let cost = session_cost(&self.decayed, s);
            if best.is_none_or(|(b, best_cost)| {
                cost < best_cost || (cost == best_cost && s.in_flight < sessions[b].in_flight)
            }) {
                best = Some((i, cost));
            }
        }
        let (i, _) = best?;
        self.cursor = i + 1;
        Some(i)
    }

    fn two_choices(&mut self, sessions: &[SessionView]) -> Option<usize> {
        let decayed = &self.decayed;
        let pick = self.rng.two_choices(sessions, |a, b| {
            session_cost(decayed, b) < session_cost(decayed, a)
        });
        pick.or_else(|| self.scan(sessions))
    }
}

/// A session's cost from the estimates [`PeakEwmaSelector::select_at`] decayed.
fn session_cost(decayed: &[f64], s: &SessionView) -> f64 {
    decayed
        .get(s.endpoint)
        .map_or(0.0, |rtt| rtt * (f64::from(s.in_flight) + 1.0))
}

impl Selector for PeakEwmaSelector {
    fn select(&mut self, sessions: &[SessionView], _ctx: &SelectContext) -> Selection {
        if sessions.is_empty() {
            return Selection::Create;
        }
        self.select_at(sessions, Instant::now())
    }

    fn select_endpoint(
        &mut self,
        endpoints: &[EndpointView],
        _ctx: &SelectContext,
    ) -> Option<usize> {
        self.select_endpoint_at(endpoints, Instant::now())
    }

    fn on_released(&mut self, report: &LeaseReport) {
        self.observe(report.endpoint, report.held, Instant::now());
    }

    fn observes_leases(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use mcp_pool_traits::SessionId;

    use super::*;

    fn session(id: u64, endpoint: usize, in_flight: u32) -> SessionView {
        SessionView {
            id: SessionId(id),
            endpoint,
            in_flight,
            capacity: 8,
            weight: 1,
        }
    }

    fn endpoint(in_flight: u32, sessions: u32) -> EndpointView {
        EndpointView {
            weight: 1,
            sessions,
            in_flight,
            available: true,
        }
    }

    #[test]
    fn a_slow_endpoint_loses_to_a_fast_one_until_the_fast_one_is_loaded() {
        let now = Instant::now();
        let mut selector = PeakEwmaSelector::new(DEFAULT_DECAY);
        selector.observe(0, Duration::from_millis(20), now);
        selector.observe(1, Duration::from_micros(200), now);
        let sessions = [session(1, 0, 0), session(2, 1, 3)];
        // 200 µs × 4 is still far below 20 ms × 1.
        assert_eq!(selector.select_at(&sessions, now), Selection::Session(1));
        let endpoints = [endpoint(0, 1), endpoint(3, 1)];
        assert_eq!(selector.select_endpoint_at(&endpoints, now), Some(1));
        // Full: the slow one serves rather than a new session being made.
        let sessions = [session(1, 0, 0), session(2, 1, 8)];
        assert_eq!(selector.select_at(&sessions, now), Selection::Session(0));
    }

    #[test]
    fn the_peak_is_taken_at_once_and_forgotten_gradually() {
        let t0 = Instant::now();
        let mut selector = PeakEwmaSelector::new(Duration::from_secs(10));
        selector.observe(0, Duration::from_millis(1), t0);
        selector.observe(0, Duration::from_millis(50), t0);
        assert_eq!(selector.estimate(0, t0), Some(Duration::from_millis(50)));
        // One fast observation right after hardly moves it...
        let t1 = t0 + Duration::from_millis(10);
        selector.observe(0, Duration::from_millis(1), t1);
        let after_one = selector.estimate(0, t1).unwrap();
        assert!(after_one > Duration::from_millis(45), "{after_one:?}");
        // ...and idle for 30 s (three time constants) it decays below 1/e³ of its value.
        let later = selector.estimate(0, t1 + Duration::from_secs(30)).unwrap();
        assert!(later < after_one / 20, "{later:?}");
    }

    #[test]
    fn unmeasured_endpoints_are_tried_first() {
        let now = Instant::now();
        let mut selector = PeakEwmaSelector::new(DEFAULT_DECAY);
        selector.observe(0, Duration::from_micros(100), now);
        let endpoints = [endpoint(0, 1), endpoint(0, 1)];
        assert_eq!(selector.select_endpoint_at(&endpoints, now), Some(1));
        let unavailable = [
            endpoint(0, 1),
            EndpointView {
                available: false,
                ..endpoint(0, 0)
            },
        ];
        assert_eq!(selector.select_endpoint_at(&unavailable, now), Some(0));
    }
}
