//! The strategy suite fails the broken strategies a third-party implementer can write and the
//! safety checks alone let through: one that always creates, one that
//! always waits, one that never picks an endpoint, one that binds nothing it claims to bind,
//! one that allocates in `select`.
//! Each test asserts the liveness check that must catch it and prints what the suite says.

use mcp_pool_conformance::strategy::{
    StrategyViolation, check_creates_when_nothing_is_free, check_empty_sets,
    check_lifecycle_events, check_never_selects_ineligible, check_nothing_eligible,
    check_picks_a_free_session, check_picks_an_available_endpoint, check_picks_its_bound_session,
    check_select_allocates_nothing,
};
use mcp_pool_strategies::RoundRobin;
use mcp_pool_traits::{
    EndpointView, SelectContext, Selection, Selector, SessionView, Strategy, least_loaded_endpoint,
};

mcp_pool_conformance::counting_allocator!();

/// How a [`Broken`] strategy misbehaves.
#[derive(Debug, Clone, Copy)]
enum Flaw {
    AlwaysCreate,
    AlwaysWait,
    NoEndpoint,
    /// Says it binds, and then picks any free session (round robin's).
    ForgetsBindings,
    /// Collects the free sessions into a `Vec` on every selection.
    Allocates,
}

#[derive(Debug)]
struct Broken(Flaw);

#[derive(Debug)]
struct BrokenSelector {
    flaw: Flaw,
    inner: Box<dyn Selector>,
}

impl Strategy for Broken {
    fn name(&self) -> &str {
        match self.0 {
            Flaw::AlwaysCreate => "always_create",
            Flaw::AlwaysWait => "always_wait",
            Flaw::NoEndpoint => "no_endpoint",
            Flaw::ForgetsBindings => "forgets_bindings",
            Flaw::Allocates => "allocates",
        }
    }

    fn selector(&self) -> Box<dyn Selector> {
        Box::new(BrokenSelector {
            flaw: self.0,
            inner: RoundRobin.selector(),
        })
    }
}

impl Selector for BrokenSelector {
    fn select(&mut self, sessions: &[SessionView], ctx: &SelectContext) -> Selection {
        match self.flaw {
            Flaw::AlwaysCreate => Selection::Create,
            Flaw::AlwaysWait => Selection::Wait,
            Flaw::Allocates => {
                let free: Vec<usize> = (0..sessions.len())
                    .filter(|&i| sessions[i].has_capacity())
                    .collect();
                free.first()
                    .map_or(Selection::Create, |&i| Selection::Session(i))
            }
            _ => self.inner.select(sessions, ctx),
        }
    }

    fn select_endpoint(&mut self, endpoints: &[EndpointView], _: &SelectContext) -> Option<usize> {
        match self.flaw {
            Flaw::NoEndpoint => None,
            _ => least_loaded_endpoint(endpoints),
        }
    }

    fn binds(&self) -> bool {
        matches!(self.flaw, Flaw::ForgetsBindings)
    }

    fn on_created(
        &mut self,
        _: mcp_pool_traits::SessionId,
        _: &SelectContext,
    ) -> mcp_pool_traits::Binding {
        match self.flaw {
            Flaw::ForgetsBindings => mcp_pool_traits::Binding::Bound,
            _ => mcp_pool_traits::Binding::Unbound,
        }
    }
}

/// The safety checks pass: they cannot see the flaw.
fn passes_the_safety_checks(strategy: &Broken) {
    check_never_selects_ineligible(strategy);
    check_nothing_eligible(strategy);
    check_empty_sets(strategy);
    check_lifecycle_events(strategy);
}

fn caught(result: Result<(), StrategyViolation>) -> StrategyViolation {
    let violation = result.expect_err("the suite must fail this strategy");
    eprintln!("the suite says: {violation}");
    violation
}

#[test]
fn a_strategy_that_always_creates_fails_the_suite() {
    let strategy = Broken(Flaw::AlwaysCreate);
    passes_the_safety_checks(&strategy);
    let violation = caught(check_picks_a_free_session(&strategy));
    assert_eq!(violation.strategy, "always_create");
    assert!(
        violation.scenario.starts_with("answered Create among"),
        "{violation}"
    );
}

#[test]
fn a_strategy_that_always_waits_fails_the_suite() {
    let strategy = Broken(Flaw::AlwaysWait);
    passes_the_safety_checks(&strategy);
    let violation = caught(check_picks_a_free_session(&strategy));
    assert!(
        violation.scenario.starts_with("answered Wait among"),
        "{violation}"
    );
    let violation = caught(check_creates_when_nothing_is_free(&strategy));
    assert!(
        violation.rule.contains("the answer must be Create"),
        "{violation}"
    );
}

#[test]
fn a_strategy_that_never_picks_an_endpoint_fails_the_suite() {
    let strategy = Broken(Flaw::NoEndpoint);
    passes_the_safety_checks(&strategy);
    let violation = caught(check_picks_an_available_endpoint(&strategy));
    assert!(
        violation
            .rule
            .contains("an available endpoint must be chosen"),
        "{violation}"
    );
}

#[test]
fn a_strategy_that_forgets_its_bindings_fails_the_suite() {
    let strategy = Broken(Flaw::ForgetsBindings);
    passes_the_safety_checks(&strategy);
    let violation = caught(check_picks_its_bound_session(&strategy));
    assert!(
        violation.rule.contains("bound to the request's affinity"),
        "{violation}"
    );
}

#[test]
fn a_strategy_that_allocates_in_select_fails_the_suite() {
    let strategy = Broken(Flaw::Allocates);
    passes_the_safety_checks(&strategy);
    check_picks_a_free_session(&strategy).expect("its picks are right");
    let violation = caught(check_select_allocates_nothing(&strategy));
    assert!(violation.rule.contains("must not allocate"), "{violation}");
    assert!(violation.scenario.contains("allocation(s)"), "{violation}");
    // The built-in it wraps does not allocate: the check measures `select`, not the suite.
    check_select_allocates_nothing(&RoundRobin).expect("round robin allocates nothing");
}
