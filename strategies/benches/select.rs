//! Selection cost per strategy: one select plus the release of what it picked, with 16
//! sessions, as the pool does it under a key's lock. `cargo bench -p mcp-pool-strategies`.
//!
//! `1_thread` runs the selector alone; `2_threads` has two threads share one key (a mutex
//! around the selector and the session list, as in the pool) and reports time per selection.
//! Sticky is measured on conversations already bound (creating a binding allocates and is
//! excluded: it happens once per conversation, not per selection).

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_pool_strategies::{LeastConnections, NoPooling, PeakEwma, RoundRobin, Sticky, Weighted};
use mcp_pool_traits::{
    AffinityKey, LeaseOutcome, LeaseReport, SelectContext, Selection, Selector, SessionId,
    SessionView, Strategy,
};

const SESSIONS: usize = 16;

fn sessions() -> Vec<SessionView> {
    (0..SESSIONS)
        .map(|i| SessionView {
            id: SessionId(i as u64),
            endpoint: i % 3,
            in_flight: 0,
            capacity: 1,
            weight: 1 + (i % 3) as u32,
        })
        .collect()
}

fn contexts() -> Vec<SelectContext> {
    (0..SESSIONS)
        .map(|i| SelectContext {
            affinity: Some(AffinityKey::downstream_session(&format!(
                "conversation-{i}"
            ))),
        })
        .collect()
}

/// A selector with every conversation bound (sticky) or simply warmed up (others).
fn prepared(
    strategy: &dyn Strategy,
    views: &[SessionView],
    ctxs: &[SelectContext],
) -> Box<dyn Selector> {
    let mut selector = strategy.selector();
    for (view, ctx) in views.iter().zip(ctxs) {
        selector.on_created(view.id, ctx);
        // Latency estimates for every endpoint (peak_ewma), 1-3 ms apart.
        let held = Duration::from_millis(1 + view.endpoint as u64);
        selector.on_released(&LeaseReport::new(
            view.id,
            view.endpoint,
            held,
            LeaseOutcome::Ok,
        ));
    }
    selector
}

fn select_release(selector: &mut dyn Selector, views: &mut [SessionView], ctx: &SelectContext) {
    if let Selection::Session(i) = selector.select(views, ctx) {
        views[i].in_flight += 1;
        black_box(&views[i]);
        views[i].in_flight -= 1;
    }
}

fn bench(c: &mut Criterion) {
    let strategies: [(&str, Arc<dyn Strategy>); 5] = [
        ("round_robin", Arc::new(RoundRobin)),
        ("least_connections", Arc::new(LeastConnections)),
        ("peak_ewma", Arc::new(PeakEwma::default())),
        ("weighted", Arc::new(Weighted)),
        ("sticky", Arc::new(Sticky)),
    ];
    let ctxs = contexts();

    let mut group = c.benchmark_group("select_release_16_sessions/1_thread");
    for (name, strategy) in &strategies {
        let mut views = sessions();
        let mut selector = prepared(&**strategy, &views, &ctxs);
        let mut n = 0usize;
        group.bench_function(*name, |b| {
            b.iter(|| {
                n = (n + 1) % SESSIONS;
                select_release(&mut *selector, &mut views, &ctxs[n]);
            })
        });
    }
    let mut selector = NoPooling.selector();
    let views = sessions();
    group.bench_function("none", |b| {
        b.iter(|| black_box(selector.select(&views, &ctxs[0])))
    });
    group.finish();

    let mut group = c.benchmark_group("select_release_16_sessions/2_threads");
    for (name, strategy) in &strategies {
        let views = sessions();
        let selector = prepared(&**strategy, &views, &ctxs);
        let key = Arc::new(Mutex::new((selector, views)));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(2);
                let threads: Vec<_> = (0..2)
                    .map(|t| {
                        let (key, ctxs) = (key.clone(), ctxs.clone());
                        std::thread::spawn(move || {
                            let started = Instant::now();
                            for n in 0..per_thread as usize {
                                let mut guard = key.lock().expect("not poisoned");
                                let (selector, views) = &mut *guard;
                                select_release(
                                    &mut **selector,
                                    views,
                                    &ctxs[(n + t * 7) % SESSIONS],
                                );
                            }
                            started.elapsed()
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("thread"))
                    .max()
                    .unwrap_or(Duration::ZERO)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
