//! The strategy conformance suite.
//!
//! Generic checks every [`Strategy`] must pass, whatever its policy:
//! - [`check_never_selects_ineligible`]: a selected session has capacity, a selected endpoint
//!   is available;
//! - [`check_nothing_eligible`]: with no session free it never returns a session, with no
//!   endpoint available it returns none;
//! - [`check_empty_sets`]: empty session and endpoint lists neither panic nor select;
//! - [`check_lifecycle_events`]: removals, creations, releases and unbinds of unknown sessions
//!   are harmless;
//! - [`assert_send_sync`]: strategies are shared between threads.
//!
//! And the liveness checks (on an acquire, a free session is a hit, none free is a create): a strategy that always answers `Create`, or `Wait`, or never picks an endpoint
//! breaks every real pool, and fails these:
//! - [`check_picks_a_free_session`]: a pooling strategy that does not bind picks a session
//!   when one has capacity;
//! - [`check_picks_its_bound_session`]: a binding (sticky) strategy picks the session it bound
//!   to the request's affinity when that session has capacity;
//! - [`check_creates_when_nothing_is_free`]: with no session, or none free, a pooling strategy
//!   that does not bind asks to create (the pool waits instead at `max_size`), never to wait;
//!   a binding one creates for an affinity it has not bound;
//! - [`check_picks_an_available_endpoint`]: an endpoint is chosen whenever one is available.
//! - [`check_select_allocates_nothing`]: `select` allocates nothing (counted by
//!   [`CountingAllocator`](crate::alloc::CountingAllocator), which the test binary installs
//!   with [`counting_allocator!`](crate::counting_allocator)).
//!
//! These return a [`StrategyViolation`] instead of panicking, so that a test can show a broken
//! strategy failing them (this crate's `tests/strategy_suite_catches.rs`).
//!
//! [`strategy_conformance!`](crate::strategy_conformance) emits one `#[test]` per check for a
//! strategy expression. The property checks of the built-ins (exact round-robin fairness,
//! smooth weights, least connections, sticky stability and exclusivity) follow; this crate's
//! `tests/strategy_conformance.rs` runs them under proptest.

use std::{collections::HashMap, time::Duration};

use mcp_pool_traits::{
    AffinityKey, Binding, EndpointView, EvictionReason, LeaseOutcome, LeaseReport, SelectContext,
    Selection, Selector, SessionId, SessionView, Strategy,
};

/// A small deterministic generator (xorshift64) so checks need no seed plumbing.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `n` sessions with random load and capacity, ids `first..first + n`, over `endpoints`
/// endpoints with weights 1-4.
pub fn random_sessions(rng: &mut Rng, n: usize, endpoints: usize, first: u64) -> Vec<SessionView> {
    (0..n)
        .map(|i| {
            let capacity = 1 + rng.below(3) as u32;
            let endpoint = rng.below(endpoints.max(1) as u64) as usize;
            SessionView {
                id: SessionId(first + i as u64),
                endpoint,
                in_flight: rng.below(u64::from(capacity) + 1) as u32,
                capacity,
                weight: 1 + (endpoint as u32 % 4),
            }
        })
        .collect()
}

/// `n` endpoints with random weights, loads and availability.
pub fn random_endpoints(rng: &mut Rng, n: usize) -> Vec<EndpointView> {
    (0..n)
        .map(|_| EndpointView {
            weight: 1 + rng.below(5) as u32,
            sessions: rng.below(6) as u32,
            in_flight: rng.below(6) as u32,
            available: rng.below(4) != 0,
        })
        .collect()
}

fn contexts(rng: &mut Rng) -> SelectContext {
    SelectContext {
        affinity: match rng.below(3) {
            0 => None,
            n => Some(AffinityKey::downstream_session(&format!(
                "conversation-{n}"
            ))),
        },
    }
}

/// A selected session has free capacity; a selected endpoint is available. 2 000 random
/// scenarios, each on a fresh and on a used selector.
///
/// # Panics
/// On the first violation, naming the strategy and the scenario.
pub fn check_never_selects_ineligible(strategy: &dyn Strategy) {
    let mut rng = Rng::new(0x5eed);
    let mut selector = strategy.selector();
    for round in 0..2_000 {
        if round % 100 == 0 {
            selector = strategy.selector();
        }
        let n = rng.below(40) as usize;
        let sessions = random_sessions(&mut rng, n, 3, round * 100);
        let ctx = contexts(&mut rng);
        if let Selection::Session(i) = selector.select(&sessions, &ctx) {
            assert!(
                i < sessions.len() && sessions[i].has_capacity(),
                "{}: selected session index {i} without capacity among {sessions:?}",
                strategy.name()
            );
            // The lease ends: latency-aware selectors learn from it.
            let held = Duration::from_micros(rng.below(50_000));
            let outcome = match rng.below(10) {
                0 => LeaseOutcome::Broken,
                1 => LeaseOutcome::InDoubt,
                _ => LeaseOutcome::Ok,
            };
            let s = &sessions[i];
            selector.on_released(&LeaseReport::new(s.id, s.endpoint, held, outcome));
        }
        let count = 1 + rng.below(5) as usize;
        let endpoints = random_endpoints(&mut rng, count);
        if let Some(i) = selector.select_endpoint(&endpoints, &ctx) {
            assert!(
                i < endpoints.len() && endpoints[i].available,
                "{}: selected endpoint {i} that is unavailable among {endpoints:?}",
                strategy.name()
            );
        }
    }
}

/// With every session at capacity no session is selected; with every endpoint unavailable no
/// endpoint is.
///
/// # Panics
/// On the first violation.
pub fn check_nothing_eligible(strategy: &dyn Strategy) {
    let mut rng = Rng::new(7);
    let mut selector = strategy.selector();
    for round in 0..500 {
        let count = 1 + rng.below(40) as usize;
        let mut sessions = random_sessions(&mut rng, count, 3, round * 100);
        for s in &mut sessions {
            s.in_flight = s.capacity;
        }
        let ctx = contexts(&mut rng);
        let selection = selector.select(&sessions, &ctx);
        assert!(
            !matches!(selection, Selection::Session(_)),
            "{}: selected a session although all are full: {selection:?}",
            strategy.name()
        );
        let count = 1 + rng.below(5) as usize;
        let mut endpoints = random_endpoints(&mut rng, count);
        for e in &mut endpoints {
            e.available = false;
        }
        assert_eq!(
            selector.select_endpoint(&endpoints, &ctx),
            None,
            "{}: selected an endpoint although none is available",
            strategy.name()
        );
    }
}

/// Empty session and endpoint lists neither panic nor select anything.
///
/// # Panics
/// On a violation (or the strategy's own panic).
pub fn check_empty_sets(strategy: &dyn Strategy) {
    let mut selector = strategy.selector();
    for ctx in [
        SelectContext::default(),
        SelectContext {
            affinity: Some(AffinityKey::downstream_session("c")),
        },
    ] {
        let selection = selector.select(&[], &ctx);
        assert!(
            !matches!(selection, Selection::Session(_)),
            "{}: selected from an empty list",
            strategy.name()
        );
        assert_eq!(
            selector.select_endpoint(&[], &ctx),
            None,
            "{}",
            strategy.name()
        );
    }
}

/// Lifecycle calls about sessions the selector never saw, repeated removals and unbinds of
/// unknown affinities do not panic, and the selector keeps working afterwards.
///
/// # Panics
/// On the strategy's own panic or a later ineligible selection.
pub fn check_lifecycle_events(strategy: &dyn Strategy) {
    let mut selector = strategy.selector();
    let ctx = SelectContext {
        affinity: Some(AffinityKey::downstream_session("ghost")),
    };
    selector.on_removed(SessionId(u64::MAX), EvictionReason::Broken);
    for outcome in [
        LeaseOutcome::Ok,
        LeaseOutcome::InDoubt,
        LeaseOutcome::Broken,
    ] {
        let report = LeaseReport::new(SessionId(u64::MAX), usize::MAX / 2, Duration::MAX, outcome);
        selector.on_released(&report);
    }
    let _ = selector.unbind(&ctx);
    let _ = selector.on_created(SessionId(1), &ctx);
    selector.on_removed(SessionId(1), EvictionReason::Broken);
    selector.on_removed(SessionId(1), EvictionReason::Idle);
    let _ = selector.unbind(&ctx);
    let sessions = [SessionView {
        id: SessionId(2),
        endpoint: 0,
        in_flight: 1,
        capacity: 1,
        weight: 1,
    }];
    assert!(
        !matches!(selector.select(&sessions, &ctx), Selection::Session(_)),
        "{}",
        strategy.name()
    );
}

/// `select` allocates nothing in a pool's steady state (it runs under the key's lock on every
/// acquire): for each of 2 000 random scenarios, on a selector that has seen
/// creations, releases (`on_released`) and removals, `select` runs uncounted once per session
/// and once more (the first selections after the key's sessions changed may size per-session
/// state, record a binding, or meet a session for the first time), then again on the same
/// sessions and context with the calling thread's allocations counted. Needs
/// [`counting_allocator!`](crate::counting_allocator) in the test binary.
///
/// # Errors
/// When the counting allocator is not installed (saying how to install it), or the first
/// selection that allocated.
pub fn check_select_allocates_nothing(strategy: &dyn Strategy) -> Result<(), StrategyViolation> {
    if !crate::alloc::is_installed() {
        return Err(violation(
            strategy,
            "the allocation check needs the counting allocator",
            "add `mcp_pool_conformance::counting_allocator!();` at the top level of the test \
             file that runs strategy_conformance!"
                .to_owned(),
        ));
    }
    let mut rng = Rng::new(0xa110c);
    // Scenarios are built before counting: only `select` is measured.
    let scenarios: Vec<(Vec<SessionView>, SelectContext)> = (0..2_000)
        .map(|round| {
            let n = rng.below(40) as usize;
            (
                random_sessions(&mut rng, n, 3, round * 100),
                contexts(&mut rng),
            )
        })
        .collect();
    let mut selector = strategy.selector();
    for (round, (sessions, ctx)) in scenarios.iter().enumerate() {
        // Let the selector learn (these may allocate): bindings, latencies, removals.
        if let Some(s) = sessions.first() {
            let _ = selector.on_created(s.id, ctx);
            selector.on_released(&LeaseReport::new(
                s.id,
                s.endpoint,
                Duration::from_micros(100 + rng.below(5_000)),
                LeaseOutcome::Ok,
            ));
            if round % 7 == 0 {
                selector.on_removed(s.id, EvictionReason::Idle);
            }
        }
        for _ in 0..=sessions.len() {
            let _ = selector.select(sessions, ctx);
        }
        let (allocated, selection) = crate::alloc::counting(|| selector.select(sessions, ctx));
        if allocated > 0 {
            return Err(violation(
                strategy,
                "select must not allocate once the key's sessions are unchanged (it runs under \
                 the key's lock on every acquire)",
                format!(
                    "{allocated} allocation(s) answering {selection:?} among {} sessions",
                    sessions.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A liveness rule a strategy broke: the strategy, the rule, and the scenario.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{strategy}: {rule}; scenario: {scenario}")]
pub struct StrategyViolation {
    /// The strategy's [`name`](Strategy::name).
    pub strategy: String,
    /// The rule, in words.
    pub rule: &'static str,
    /// What it was given and what it answered.
    pub scenario: String,
}

fn violation(strategy: &dyn Strategy, rule: &'static str, scenario: String) -> StrategyViolation {
    StrategyViolation {
        strategy: strategy.name().to_owned(),
        rule,
        scenario,
    }
}

/// Random sessions of which at least one has capacity.
fn with_a_free_session(rng: &mut Rng, round: u64) -> Vec<SessionView> {
    let n = 1 + rng.below(20) as usize;
    let mut sessions = random_sessions(rng, n, 3, round * 100);
    let free = rng.below(n as u64) as usize;
    sessions[free].in_flight = sessions[free].capacity - 1;
    sessions
}

/// A pooling strategy that does not bind picks a session whenever one has capacity (a hit),
/// never `Create` nor `Wait` then: 1 000 random scenarios. Strategies that do not pool or that
/// bind pass (see [`check_picks_its_bound_session`]).
///
/// # Errors
/// The first scenario where it answered otherwise.
pub fn check_picks_a_free_session(strategy: &dyn Strategy) -> Result<(), StrategyViolation> {
    let mut selector = strategy.selector();
    if !strategy.pools() || selector.binds() {
        return Ok(());
    }
    let mut rng = Rng::new(0xf4ee);
    for round in 0..1_000 {
        let sessions = with_a_free_session(&mut rng, round);
        let ctx = contexts(&mut rng);
        let selection = selector.select(&sessions, &ctx);
        if !matches!(selection, Selection::Session(i) if i < sessions.len() && sessions[i].has_capacity())
        {
            return Err(violation(
                strategy,
                "a session with capacity must be picked (a hit), not created anew or waited for",
                format!("answered {selection:?} among {sessions:?}"),
            ));
        }
    }
    Ok(())
}

/// A binding strategy picks the session it bound to an affinity whenever that session has
/// capacity, among other free sessions: 200 scenarios. Strategies that do not bind pass.
///
/// # Errors
/// The first scenario where it answered otherwise.
pub fn check_picks_its_bound_session(strategy: &dyn Strategy) -> Result<(), StrategyViolation> {
    let mut rng = Rng::new(0xb0d);
    for round in 0..200u64 {
        let mut selector = strategy.selector();
        if !selector.binds() {
            return Ok(());
        }
        let ctx = SelectContext {
            affinity: Some(AffinityKey::downstream_session(&format!("c-{round}"))),
        };
        let bound = SessionId(round * 1_000 + 999);
        if selector.on_created(bound, &ctx) == Binding::Unbound {
            return Err(violation(
                strategy,
                "a binding strategy must bind the session created for an affinity",
                format!("on_created({bound}) answered Unbound"),
            ));
        }
        let mut sessions = with_a_free_session(&mut rng, round);
        let at = rng.below(sessions.len() as u64 + 1) as usize;
        sessions.insert(
            at,
            SessionView {
                id: bound,
                endpoint: 0,
                in_flight: 0,
                capacity: 1,
                weight: 1,
            },
        );
        let selection = selector.select(&sessions, &ctx);
        if selection != Selection::Session(at) {
            return Err(violation(
                strategy,
                "the session bound to the request's affinity must be picked while it is free",
                format!("bound {bound} at index {at}; answered {selection:?} among {sessions:?}"),
            ));
        }
    }
    Ok(())
}

/// With no session, or none with capacity, a pooling strategy that does not bind answers
/// `Create` (the pool turns it into a wait at `max_size`), never `Wait`, which would leave the
/// request waiting for a release that may never come; a binding strategy answers `Create` for
/// an affinity it has not bound. 500 random scenarios.
///
/// # Errors
/// The first scenario where it answered otherwise.
pub fn check_creates_when_nothing_is_free(
    strategy: &dyn Strategy,
) -> Result<(), StrategyViolation> {
    let mut selector = strategy.selector();
    if !strategy.pools() {
        return Ok(());
    }
    let binds = selector.binds();
    let mut rng = Rng::new(0xc7ea);
    for round in 0..500u64 {
        let n = rng.below(20) as usize;
        let mut sessions = random_sessions(&mut rng, n, 3, round * 100);
        for s in &mut sessions {
            s.in_flight = s.capacity;
        }
        let ctx = if binds {
            SelectContext {
                affinity: Some(AffinityKey::downstream_session(&format!("new-{round}"))),
            }
        } else {
            contexts(&mut rng)
        };
        let selection = selector.select(&sessions, &ctx);
        if selection != Selection::Create {
            return Err(violation(
                strategy,
                "with no free session (and, for a binding strategy, no session bound to the affinity) the answer must be Create: the pool waits by itself at max_size",
                format!("answered {selection:?} among {sessions:?}"),
            ));
        }
    }
    Ok(())
}

/// Whenever at least one endpoint is available, an endpoint is chosen: 1 000 random
/// scenarios.
///
/// # Errors
/// The first scenario where none was.
pub fn check_picks_an_available_endpoint(strategy: &dyn Strategy) -> Result<(), StrategyViolation> {
    let mut selector = strategy.selector();
    let mut rng = Rng::new(0xe9d);
    for _ in 0..1_000 {
        let count = 1 + rng.below(5) as usize;
        let mut endpoints = random_endpoints(&mut rng, count);
        let up = rng.below(count as u64) as usize;
        endpoints[up].available = true;
        let ctx = contexts(&mut rng);
        if selector.select_endpoint(&endpoints, &ctx).is_none() {
            return Err(violation(
                strategy,
                "an available endpoint must be chosen for a new session",
                format!("answered None among {endpoints:?}"),
            ));
        }
    }
    Ok(())
}

/// Compiles only for `Send + Sync + 'static` types.
pub fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}

/// Emits one `#[test]` per generic strategy check for `strategy`, an expression of a type that
/// implements [`Strategy`], in a module `name`:
///
/// ```
/// mcp_pool_conformance::strategy_conformance!(
///     name: round_robin,
///     strategy: mcp_pool_strategies::RoundRobin,
/// );
/// ```
///
/// The positional form `strategy_conformance!(round_robin, RoundRobin)` of earlier versions is
/// still accepted.
#[macro_export]
macro_rules! strategy_conformance {
    (name: $name:ident, strategy: $strategy:expr $(,)?) => {
        #[allow(non_snake_case)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn never_selects_ineligible() {
                $crate::strategy::check_never_selects_ineligible(&$strategy);
            }

            #[test]
            fn nothing_eligible() {
                $crate::strategy::check_nothing_eligible(&$strategy);
            }

            #[test]
            fn empty_sets() {
                $crate::strategy::check_empty_sets(&$strategy);
            }

            #[test]
            fn lifecycle_events() {
                $crate::strategy::check_lifecycle_events(&$strategy);
            }

            #[test]
            fn send_sync() {
                $crate::strategy::assert_send_sync(&$strategy);
            }

            $crate::strategy_conformance!(@live ($strategy) picks_a_free_session check_picks_a_free_session);
            $crate::strategy_conformance!(@live ($strategy) picks_its_bound_session check_picks_its_bound_session);
            $crate::strategy_conformance!(@live ($strategy) creates_when_nothing_is_free check_creates_when_nothing_is_free);
            $crate::strategy_conformance!(@live ($strategy) picks_an_available_endpoint check_picks_an_available_endpoint);
            $crate::strategy_conformance!(@live ($strategy) select_allocates_nothing check_select_allocates_nothing);
        }
    };
    (@live ($strategy:expr) $test:ident $check:ident) => {
        #[test]
        fn $test() {
            if let Err(violation) = $crate::strategy::$check(&$strategy) {
                panic!("{violation}");
            }
        }
    };
    ($name:ident, $strategy:expr $(,)?) => {
        $crate::strategy_conformance!(name: $name, strategy: $strategy);
    };
}

/// `n` free sessions of capacity 1 on endpoint 0, ids `0..n`, with `weights[i % len]`.
pub fn free_sessions(n: usize, weights: &[u32]) -> Vec<SessionView> {
    (0..n)
        .map(|i| SessionView {
            id: SessionId(i as u64),
            endpoint: i,
            in_flight: 0,
            capacity: 1,
            weight: weights[i % weights.len()],
        })
        .collect()
}

/// How often each index was picked over `picks` selections from `sessions` (nothing is taken:
/// every session stays free).
pub fn pick_counts(
    selector: &mut dyn Selector,
    sessions: &[SessionView],
    picks: usize,
) -> Vec<usize> {
    let mut counts = vec![0; sessions.len()];
    for _ in 0..picks {
        match selector.select(sessions, &SelectContext::default()) {
            Selection::Session(i) => counts[i] += 1,
            other => panic!("expected a session, got {other:?}"),
        }
    }
    counts
}

/// The pick sequence of `picks` selections.
pub fn pick_sequence(
    selector: &mut dyn Selector,
    sessions: &[SessionView],
    picks: usize,
) -> Vec<usize> {
    (0..picks)
        .map(
            |_| match selector.select(sessions, &SelectContext::default()) {
                Selection::Session(i) => i,
                other => panic!("expected a session, got {other:?}"),
            },
        )
        .collect()
}

/// One step of a sticky workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyOp {
    /// An acquire for conversation `n`.
    Acquire(u8),
    /// Returns the `n`-th lease out.
    Release(u8),
    /// Session `n` (of the live ones) dies.
    Die(u8),
    /// Session `n` closes for idleness.
    Idle(u8),
    /// Conversation `n` ends.
    Unbind(u8),
}

/// Runs `ops` against a sticky selector as the pool would (sessions of capacity
/// `capacity`, created on demand up to `max_size`), checking stability — a conversation bound
/// to a live session is only ever served by it — exclusivity — a session serves one
/// conversation in its whole life — and that a conversation whose session died is told it was
/// rebound.
///
/// # Errors
/// The first violation, described.
pub fn check_sticky_sequence(
    selector: &mut dyn Selector,
    ops: &[StickyOp],
    capacity: u32,
    max_size: usize,
) -> Result<(), String> {
    let mut sessions: Vec<SessionView> = Vec::new();
    let mut leases: Vec<(u8, SessionId)> = Vec::new();
    let mut owner: HashMap<SessionId, u8> = HashMap::new();
    let mut bound: HashMap<u8, SessionId> = HashMap::new();
    let mut died: HashMap<u8, bool> = HashMap::new();
    let mut next_id = 0u64;
    let ctx = |c: u8| SelectContext {
        affinity: Some(AffinityKey::downstream_session(&format!(
            "conversation-{c}"
        ))),
    };
    for (step, &op) in ops.iter().enumerate() {
        match op {
            StickyOp::Acquire(c) => match selector.select(&sessions, &ctx(c)) {
                Selection::Session(i) => {
                    let s = &mut sessions[i];
                    if !s.has_capacity() {
                        return Err(format!("step {step}: session {} has no capacity", s.id));
                    }
                    if let Some(b) = bound.get(&c)
                        && *b != s.id
                    {
                        return Err(format!(
                            "step {step}: conversation {c} moved from {b} to {}",
                            s.id
                        ));
                    }
                    match owner.get(&s.id) {
                        Some(o) if *o != c => {
                            return Err(format!(
                                "step {step}: session {} of conversation {o} given to {c}",
                                s.id
                            ));
                        }
                        _ => {}
                    }
                    owner.insert(s.id, c);
                    bound.insert(c, s.id);
                    s.in_flight += 1;
                    leases.push((c, s.id));
                }
                Selection::Create if sessions.len() < max_size => {
                    if let Some(b) = bound.get(&c)
                        && sessions.iter().any(|s| s.id == *b)
                    {
                        return Err(format!(
                            "step {step}: conversation {c} got a new session while bound to live {b}"
                        ));
                    }
                    let id = SessionId(next_id);
                    next_id += 1;
                    let binding = selector.on_created(id, &ctx(c));
                    let expect_rebound = died.remove(&c).unwrap_or(false);
                    if expect_rebound && binding != Binding::Rebound {
                        return Err(format!(
                            "step {step}: conversation {c} lost its session but got {binding:?}"
                        ));
                    }
                    if !expect_rebound && binding == Binding::Rebound {
                        return Err(format!(
                            "step {step}: conversation {c} told rebound without a loss"
                        ));
                    }
                    sessions.push(SessionView {
                        id,
                        endpoint: 0,
                        in_flight: 1,
                        capacity,
                        weight: 1,
                    });
                    owner.insert(id, c);
                    bound.insert(c, id);
                    leases.push((c, id));
                }
                Selection::Create | Selection::Wait => {}
            },
            StickyOp::Release(n) if !leases.is_empty() => {
                let (_, id) = leases.swap_remove(usize::from(n) % leases.len());
                if let Some(s) = sessions.iter_mut().find(|s| s.id == id) {
                    s.in_flight -= 1;
                }
            }
            StickyOp::Die(n) | StickyOp::Idle(n) if !sessions.is_empty() => {
                let s = sessions.remove(usize::from(n) % sessions.len());
                leases.retain(|(_, id)| *id != s.id);
                let reason = if matches!(op, StickyOp::Die(_)) {
                    EvictionReason::Broken
                } else {
                    EvictionReason::Idle
                };
                selector.on_removed(s.id, reason);
                if let Some(c) = owner.get(&s.id).copied()
                    && bound.get(&c) == Some(&s.id)
                {
                    bound.remove(&c);
                    died.insert(c, reason.is_death());
                }
            }
            StickyOp::Unbind(c) => {
                if let Some(id) = selector.unbind(&ctx(c)) {
                    if bound.get(&c) != Some(&id) {
                        return Err(format!(
                            "step {step}: unbind of {c} returned {id}, not its session"
                        ));
                    }
                    // The pool retires an unbound session.
                    if let Some(i) = sessions.iter().position(|s| s.id == id) {
                        sessions.remove(i);
                        leases.retain(|(_, l)| *l != id);
                    }
                    selector.on_removed(id, EvictionReason::Unbound);
                }
                bound.remove(&c);
                died.remove(&c);
            }
            _ => {}
        }
    }
    Ok(())
}
