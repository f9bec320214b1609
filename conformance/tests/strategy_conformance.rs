//! Every built-in strategy through the generic checks, and the property checks of each.

use mcp_pool_conformance::{
    strategy::{
        Rng, StickyOp, check_sticky_sequence, free_sessions, pick_counts, pick_sequence,
        random_sessions,
    },
    strategy_conformance,
};
use mcp_pool_strategies::{LeastConnections, NoPooling, PeakEwma, RoundRobin, Sticky, Weighted};
use mcp_pool_traits::{EndpointView, SelectContext, Selection, Strategy as _};
use proptest::prelude::*;

mcp_pool_conformance::counting_allocator!();
strategy_conformance!(name: round_robin, strategy: RoundRobin);
strategy_conformance!(name: least_connections, strategy: LeastConnections);
strategy_conformance!(name: sticky, strategy: Sticky);
strategy_conformance!(name: weighted, strategy: Weighted);
strategy_conformance!(name: none, strategy: NoPooling);
strategy_conformance!(name: peak_ewma, strategy: PeakEwma::default());

fn endpoints(weights: &[u32]) -> Vec<EndpointView> {
    weights
        .iter()
        .map(|&weight| EndpointView {
            weight,
            sessions: 0,
            in_flight: 0,
            available: true,
        })
        .collect()
}

#[test]
fn weighted_is_smooth_two_to_one_is_a_b_a() {
    let sessions = free_sessions(2, &[2, 1]);
    let mut selector = Weighted.selector();
    assert_eq!(
        pick_sequence(&mut *selector, &sessions, 6),
        [0, 1, 0, 0, 1, 0]
    );
    let mut selector = Weighted.selector();
    let picks: Vec<_> = (0..5)
        .map(|_| selector.select_endpoint(&endpoints(&[3, 1, 1]), &SelectContext::default()))
        .collect();
    assert_eq!(
        picks,
        [Some(0), Some(1), Some(0), Some(2), Some(0)],
        "3:1:1, smooth"
    );
}

#[test]
fn least_connections_prefers_the_idle_endpoint_for_new_sessions() {
    let mut e = endpoints(&[1, 1, 1]);
    e[0].in_flight = 4;
    e[0].sessions = 1;
    e[1].sessions = 1;
    let mut selector = LeastConnections.selector();
    assert_eq!(
        selector.select_endpoint(&e, &SelectContext::default()),
        Some(2)
    );
    e[2].in_flight = 1;
    e[2].sessions = 1;
    assert_eq!(
        selector.select_endpoint(&e, &SelectContext::default()),
        Some(1)
    );
}

proptest! {
    #[test]
    fn round_robin_is_exactly_fair(n in 1usize..16, k in 1usize..10) {
        let sessions = free_sessions(n, &[1]);
        let counts = pick_counts(&mut *RoundRobin.selector(), &sessions, k * n);
        prop_assert!(counts.iter().all(|&c| c == k), "{counts:?}");
    }

    #[test]
    fn round_robin_is_fair_within_one_among_free_sessions(seed in any::<u64>(), n in 2usize..16, picks in 1usize..200) {
        let mut rng = Rng::new(seed);
        let mut sessions = free_sessions(n, &[1]);
        for s in &mut sessions {
            s.in_flight = u32::from(rng.below(3) == 0);
        }
        prop_assume!(sessions.iter().any(|s| s.has_capacity()));
        let counts = pick_counts(&mut *RoundRobin.selector(), &sessions, picks);
        let free: Vec<_> = counts.iter().zip(&sessions).filter(|(_, s)| s.has_capacity()).map(|(c, _)| *c).collect();
        let (min, max) = (free.iter().min().unwrap(), free.iter().max().unwrap());
        prop_assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn weighted_proportions_are_exact_over_a_cycle(weights in prop::collection::vec(1u32..6, 1..6), cycles in 1usize..4) {
        let sessions = free_sessions(weights.len(), &weights);
        let total: u32 = weights.iter().sum();
        let counts = pick_counts(&mut *Weighted.selector(), &sessions, total as usize * cycles);
        for (c, w) in counts.iter().zip(&weights) {
            prop_assert_eq!(*c, *w as usize * cycles);
        }
        let mut selector = Weighted.selector();
        let mut per_endpoint = vec![0usize; weights.len()];
        for _ in 0..total as usize * cycles {
            let i = selector.select_endpoint(&endpoints(&weights), &SelectContext::default()).unwrap();
            per_endpoint[i] += 1;
        }
        for (c, w) in per_endpoint.iter().zip(&weights) {
            prop_assert_eq!(*c, *w as usize * cycles);
        }
    }

    #[test]
    fn least_connections_never_picks_the_strictly_most_loaded(seed in any::<u64>(), n in 2usize..80) {
        let mut rng = Rng::new(seed);
        let mut sessions = random_sessions(&mut rng, n, 3, 0);
        for s in &mut sessions {
            s.capacity = 8;
            s.in_flight = rng.below(8) as u32;
        }
        let mut selector = LeastConnections.selector();
        for _ in 0..20 {
            let Selection::Session(i) = selector.select(&sessions, &SelectContext::default()) else {
                return Err(TestCaseError::fail("nothing selected although sessions are free"));
            };
            let picked = sessions[i].in_flight;
            let min = sessions.iter().map(|s| s.in_flight).min().unwrap();
            let strictly_most = sessions.iter().enumerate().all(|(j, s)| j == i || s.in_flight < picked);
            prop_assert!(!strictly_most, "picked the strictly most loaded ({picked})");
            if n <= mcp_pool_strategies::FULL_SCAN_MAX {
                prop_assert_eq!(picked, min);
            }
        }
    }

    #[test]
    fn sticky_is_stable_and_exclusive(
        ops in prop::collection::vec(prop_oneof![
            4 => (0u8..6).prop_map(StickyOp::Acquire),
            3 => any::<u8>().prop_map(StickyOp::Release),
            1 => any::<u8>().prop_map(StickyOp::Die),
            1 => any::<u8>().prop_map(StickyOp::Idle),
            1 => (0u8..6).prop_map(StickyOp::Unbind),
        ], 1..120),
        capacity in 1u32..3,
        max_size in 1usize..8,
    ) {
        let mut selector = Sticky.selector();
        check_sticky_sequence(&mut *selector, &ops, capacity, max_size).map_err(TestCaseError::fail)?;
    }
}
