//! The key's state driven step by step, with no runtime: random sequences of every event the
//! driver can send (acquires with and without a conversation, releases, abandoned calls,
//! creations that succeed, fail or are cancelled, waiters that give up or vanish, lost
//! sessions, health checks and probes, maintenance passes, reconfigurations of size, strategy,
//! concurrency and pooling, drains, evictions, pins and unbinds), checked after every step
//! against what the test itself holds:
//!
//! - every session is closed at most once, and never while a lease the test holds is on it;
//! - the pool-wide cap counts exactly the live sessions plus the creations in flight;
//! - each session's lease count is the number of leases the test holds on it;
//! - sessions and creations never exceed `max_size` (after it was lowered: never grow back
//!   above it);
//! - a queued acquire with no conversation never waits while the key has room for it;
//! - every grant goes to a queued acquire, once, and one that gave up never gets one.
//!
//! The end-to-end model test (the conformance crate's `pool_properties`) checks the whole pool
//! over real sessions; this one checks the bookkeeping alone, a million steps per run.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    rc::Rc,
    sync::Arc,
};

use mcp_pool_traits::{
    AffinityKey, Digest256, Endpoint, EvictionReason, PoolConfig, PoolKey, Principal,
    SelectContext, ServerEvents, ServerId, SessionId, TransportKind,
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestRunner},
};
use tokio::time::{Duration, Instant};

use super::{
    effect::{Effect, Env, Grant, Ticket},
    session::Upstream,
    state::{KeySettings, KeyState},
};
use crate::{
    breaker::BreakerConfig,
    health::{HealthCheckMethod, HealthFailure, HealthOutcome},
    limits::{Cap, Limits},
    server::{ServerCounters, ServerEntry, ServerHealth},
};

/// A session: a tag for its handle, and a switch that reports it gone.
#[derive(Debug)]
struct Fake {
    tag: u64,
    gone: Rc<Cell<Option<EvictionReason>>>,
}

impl Upstream for Fake {
    type Handle = u64;

    fn handle(&self) -> &u64 {
        &self.tag
    }

    fn gone(&self) -> Option<EvictionReason> {
        self.gone.get()
    }
}

struct TestEnv {
    now: Instant,
    health: ServerHealth,
    limits: Limits,
}

impl Env for TestEnv {
    fn now(&mut self) -> Instant {
        self.now
    }

    fn health(&mut self) -> &mut ServerHealth {
        &mut self.health
    }

    fn reserve(&mut self, subject: Option<Digest256>) -> Result<(), Cap> {
        self.limits.try_reserve(subject)
    }

    fn release(&mut self, subject: Option<Digest256>) {
        self.limits.release(subject);
    }

    fn pool_closed(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        conversation: Option<u8>,
    },
    Release {
        lease: Index,
        broken: bool,
    },
    Abandon {
        lease: Index,
    },
    Create {
        ticket: Index,
        outcome: u8,
    },
    Warm,
    GiveUp {
        waiter: Index,
    },
    Vanish {
        waiter: Index,
    },
    Lose {
        session: u8,
    },
    Check,
    Checked {
        healthy: bool,
    },
    Probed {
        probe: Index,
        healthy: bool,
    },
    Tick {
        secs: u8,
    },
    Reconfigure {
        max_size: u8,
        strategy: u8,
        concurrency: u8,
        pooled: bool,
    },
    Drain,
    Evict,
    Pin {
        conversation: u8,
        lease: Index,
    },
    Unbind {
        conversation: u8,
    },
    TimedOut {
        waiter: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::option::of(0u8..6).prop_map(|conversation| Op::Acquire { conversation }),
        6 => (any::<Index>(), proptest::bool::weighted(0.1))
            .prop_map(|(lease, broken)| Op::Release { lease, broken }),
        1 => any::<Index>().prop_map(|lease| Op::Abandon { lease }),
        6 => (any::<Index>(), 0u8..10).prop_map(|(ticket, outcome)| Op::Create { ticket, outcome }),
        1 => Just(Op::Warm),
        1 => any::<Index>().prop_map(|waiter| Op::GiveUp { waiter }),
        1 => any::<Index>().prop_map(|waiter| Op::Vanish { waiter }),
        1 => any::<u8>().prop_map(|session| Op::Lose { session }),
        1 => Just(Op::Check),
        1 => any::<bool>().prop_map(|healthy| Op::Checked { healthy }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(probe, healthy)| Op::Probed { probe, healthy }),
        2 => (0u8..90).prop_map(|secs| Op::Tick { secs }),
        1 => (1u8..6, 0u8..4, 1u8..3, proptest::bool::weighted(0.85)).prop_map(
            |(max_size, strategy, concurrency, pooled)| Op::Reconfigure {
                max_size,
                strategy,
                concurrency,
                pooled,
            }
        ),
        1 => Just(Op::Drain),
        1 => Just(Op::Evict),
        1 => (0u8..6, any::<Index>()).prop_map(|(conversation, lease)| Op::Pin { conversation, lease }),
        1 => (0u8..6).prop_map(|conversation| Op::Unbind { conversation }),
        1 => any::<Index>().prop_map(|waiter| Op::TimedOut { waiter }),
    ]
}

fn strategy(n: u8) -> Arc<dyn mcp_pool_traits::Strategy> {
    match n {
        0 => Arc::new(mcp_pool_strategies::RoundRobin),
        1 => Arc::new(mcp_pool_strategies::LeastConnections),
        2 => Arc::new(mcp_pool_strategies::Sticky),
        _ => Arc::new(mcp_pool_strategies::NoPooling),
    }
}

/// The conversations' contexts (hashed once: a digest per event would cost more than the
/// event).
fn context(conversation: Option<u8>) -> SelectContext {
    static CONTEXTS: std::sync::LazyLock<Vec<SelectContext>> = std::sync::LazyLock::new(|| {
        (0..6)
            .map(|c| SelectContext {
                affinity: Some(AffinityKey::downstream_session(&format!("c{c}"))),
            })
            .collect()
    });
    conversation.map_or_else(SelectContext::default, |c| CONTEXTS[usize::from(c)])
}

struct Harness {
    state: KeyState<Fake, u64>,
    env: TestEnv,
    server: Arc<ServerEntry>,
    generation: u64,
    /// Leases the test holds: (session, conversation).
    leases: Vec<(SessionId, Option<u8>)>,
    tickets: Vec<(Ticket, Option<SelectContext>)>,
    /// Queued acquires: (waiter id, tag, conversation).
    waiters: Vec<(u64, u64, Option<u8>)>,
    /// Tags of queued acquires whose receiver is gone: their grant goes back.
    vanished: HashSet<u64>,
    checking: Option<SessionId>,
    probes: Vec<SessionId>,
    live: HashMap<SessionId, Rc<Cell<Option<EvictionReason>>>>,
    closed: HashSet<SessionId>,
    next_id: u64,
    next_tag: u64,
    /// Sessions and creations may exceed `max_size` only after it was lowered, and then
    /// never grow back above it.
    ceiling: u32,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let server = Self::entry(1, 0, 3, 1, true);
        let key = PoolKey::new(
            Principal::ANONYMOUS,
            server.id.clone(),
            TransportKind::StreamableHttp,
        );
        let settings = KeySettings {
            cleanup_interval: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
        };
        Self {
            state: KeyState::new(key, server.clone(), settings, now),
            env: TestEnv {
                now,
                health: ServerHealth::default(),
                limits: Limits::new(8, 1000, 10),
            },
            server,
            generation: 1,
            leases: Vec::new(),
            tickets: Vec::new(),
            waiters: Vec::new(),
            vanished: HashSet::new(),
            checking: None,
            probes: Vec::new(),
            live: HashMap::new(),
            closed: HashSet::new(),
            next_id: 0,
            next_tag: 0,
            ceiling: 3,
        }
    }

    fn entry(
        generation: u64,
        strategy_n: u8,
        max_size: u32,
        concurrency: u32,
        pooled: bool,
    ) -> Arc<ServerEntry> {
        let id = ServerId::new("model").unwrap();
        let config = PoolConfig {
            enabled: pooled,
            size: 1,
            min_size: 1,
            max_size,
            session_concurrency: concurrency,
            max_idle_time: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(600),
            health_check_interval: Duration::from_secs(30),
            ..PoolConfig::enabled()
        };
        let endpoints: Vec<Endpoint> = ["http://a.invalid/mcp", "http://b.invalid/mcp"]
            .into_iter()
            .map(|url| Endpoint::new(url, TransportKind::StreamableHttp).unwrap())
            .collect();
        Arc::new(ServerEntry {
            index: 0,
            base: config.clone(),
            id: id.clone(),
            endpoints: endpoints.into(),
            config,
            strategy: strategy(strategy_n),
            generation,
            counters: Arc::new(ServerCounters::new(ServerEvents::new(
                id,
                Duration::from_millis(10),
                4,
            ))),
            call_timeout: Duration::from_secs(60),
            capabilities: None,
            client: Default::default(),
            headers: Default::default(),
        })
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Acquire { conversation } => {
                let ctx = context(conversation);
                match self.state.acquire(&ctx, &mut self.env) {
                    Some(grant) => self.take(grant, conversation),
                    None => {
                        let tag = self.tag();
                        let id = self.state.enqueue(ctx, tag, &mut self.env);
                        self.waiters.push((id, tag, conversation));
                    }
                }
            }
            Op::Release { lease, broken } => {
                if !self.leases.is_empty() {
                    let (id, _) = self.leases.swap_remove(lease.index(self.leases.len()));
                    self.state.release(id, broken, None, &mut self.env);
                }
            }
            Op::Abandon { lease } => {
                if !self.leases.is_empty() {
                    let (id, _) = self.leases.swap_remove(lease.index(self.leases.len()));
                    if self
                        .state
                        .release_in_doubt(id, None, &mut self.env)
                        .is_some()
                    {
                        self.probes.push(id);
                    }
                }
            }
            Op::Create { ticket, outcome } => {
                if !self.tickets.is_empty() {
                    let (ticket, ctx) = self.tickets.swap_remove(ticket.index(self.tickets.len()));
                    match outcome {
                        0 => self
                            .state
                            .create_failed(ticket, "refused", true, &mut self.env),
                        1 => self
                            .state
                            .create_failed(ticket, "unauthorized", false, &mut self.env),
                        2 => self.state.create_cancelled(ticket, &mut self.env),
                        _ => {
                            self.next_id += 1;
                            let id = SessionId(self.next_id);
                            let gone = Rc::new(Cell::new(None));
                            let fake = Fake {
                                tag: self.next_id,
                                gone: gone.clone(),
                            };
                            self.live.insert(id, gone);
                            if let Ok(created) =
                                self.state
                                    .created(ticket, id, fake, ctx.as_ref(), &mut self.env)
                                && let Some(lease) = created.lease
                            {
                                let conversation = ctx.and_then(|c| c.affinity).map(|a| {
                                    (0..6)
                                        .find(|&n| context(Some(n)).affinity == Some(a))
                                        .unwrap()
                                });
                                self.leases.push((lease.id, conversation));
                            }
                        }
                    }
                }
            }
            Op::Warm => {
                if let Some(ticket) = self.state.reserve_background(&mut self.env) {
                    self.tickets.push((ticket, None));
                }
            }
            Op::GiveUp { waiter } | Op::TimedOut { waiter } => {
                if !self.waiters.is_empty() {
                    let (id, tag, _) = self.waiters.swap_remove(waiter.index(self.waiters.len()));
                    assert!(self.state.waiter_gone(id), "waiter {id} was not queued");
                    self.vanished.remove(&tag);
                    if matches!(op, Op::TimedOut { .. }) {
                        let timed_out = self.state.timed_out();
                        assert_eq!(timed_out.waiters, self.waiters.len());
                    }
                }
            }
            Op::Vanish { waiter } => {
                if !self.waiters.is_empty() {
                    let (_, tag, _) = self.waiters[waiter.index(self.waiters.len())];
                    self.vanished.insert(tag);
                }
            }
            Op::Lose { session } => {
                let mut ids: Vec<_> = self.live.keys().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    let id = ids[usize::from(session) % ids.len()];
                    self.live[&id].set(Some(EvictionReason::Lost));
                    self.state.session_lost(id, "gone", true, &mut self.env);
                }
            }
            Op::Check => {
                if self.checking.is_none() {
                    let now = self.env.now;
                    self.state.health_round(now);
                    if let Some((id, _)) = self.state.health_take(&mut self.env) {
                        self.checking = Some(id);
                    }
                }
            }
            Op::Checked { healthy } => {
                if let Some(id) = self.checking.take() {
                    self.state
                        .health_checked(id, &outcome(healthy), &mut self.env);
                }
            }
            Op::Probed { probe, healthy } => {
                if !self.probes.is_empty() {
                    let id = self.probes.swap_remove(probe.index(self.probes.len()));
                    self.state
                        .health_checked(id, &outcome(healthy), &mut self.env);
                }
            }
            Op::Tick { secs } => {
                self.env.now += Duration::from_secs(secs.into());
                let now = self.env.now;
                self.state
                    .reap(now, Duration::from_secs(600), &mut self.env);
            }
            Op::Reconfigure {
                max_size,
                strategy,
                concurrency,
                pooled,
            } => {
                self.generation += 1;
                let keep = if strategy == 0 && self.server.strategy.name() == "round_robin" {
                    Some(self.server.strategy.clone())
                } else {
                    None
                };
                let mut entry = Self::entry(
                    self.generation,
                    strategy,
                    max_size.into(),
                    concurrency.into(),
                    pooled,
                );
                if let Some(same) = keep {
                    // Same strategy object: the sessions stay.
                    Arc::get_mut(&mut entry).unwrap().strategy = same;
                }
                self.ceiling = self.ceiling.max(u32::from(max_size));
                self.server = entry.clone();
                self.state.reconfigure(&entry, &mut self.env);
            }
            Op::Drain => self.state.drain(&mut self.env),
            Op::Evict => {
                if let Some(id) = self.state.evict_one_idle(&mut self.env) {
                    assert!(
                        !self.leases.iter().any(|(l, _)| *l == id),
                        "evicted a leased session"
                    );
                }
            }
            Op::Pin {
                conversation,
                lease,
            } => {
                if !self.leases.is_empty() {
                    let (id, _) = self.leases[lease.index(self.leases.len())];
                    if let Some(affinity) = context(Some(conversation)).affinity {
                        let _ = self.state.pin(affinity, id);
                    }
                }
            }
            Op::Unbind { conversation } => {
                self.state
                    .unbind(&context(Some(conversation)), &mut self.env);
            }
        }
        self.settle();
        self.check();
    }

    /// What the driver does after each event: grants to their waiters (a vanished waiter's
    /// goes back), sessions closed.
    fn settle(&mut self) {
        while let Some((tag, grant)) = self.state.next_grant() {
            let pos = self
                .waiters
                .iter()
                .position(|w| w.1 == tag)
                .unwrap_or_else(|| panic!("a grant for {tag}, which is not queued"));
            let (_, _, conversation) = self.waiters.remove(pos);
            if self.vanished.remove(&tag) {
                self.state.undo(grant, &mut self.env);
            } else {
                self.take(grant, conversation);
            }
        }
        for effect in self.state.take_effects() {
            if let Effect::Close { id, .. } = effect {
                assert!(self.live.remove(&id).is_some(), "{id} closed but not live");
                assert!(self.closed.insert(id), "{id} closed twice");
                assert!(
                    !self.leases.iter().any(|(l, _)| *l == id),
                    "{id} closed with a lease out"
                );
                self.probes.retain(|p| *p != id);
                if self.checking == Some(id) {
                    self.checking = None;
                }
            }
        }
        let _ = self.state.take_tally();
    }

    fn take(&mut self, grant: Grant<u64>, conversation: Option<u8>) {
        match grant {
            Grant::Lease(granted) => {
                assert!(
                    self.live.contains_key(&granted.id),
                    "a lease on a closed session"
                );
                self.leases.push((granted.id, conversation));
            }
            Grant::Create(ticket) => self.tickets.push((*ticket, Some(context(conversation)))),
            Grant::Refused(_) => {}
        }
    }

    fn check(&mut self) {
        let sizes = self.state.sizes();
        assert_eq!(
            self.env.limits.sessions() as usize,
            self.live.len() + self.tickets.len(),
            "the cap counts live sessions and creations"
        );
        assert_eq!(sizes.sessions_creating as usize, self.tickets.len());
        assert_eq!(sizes.waiters as usize, self.waiters.len());
        assert_eq!(sizes.sessions_total as usize, self.live.len());
        let mut held: HashMap<SessionId, u32> = HashMap::new();
        for (id, _) in &self.leases {
            *held.entry(*id).or_default() += 1;
        }
        for (id, leases) in self.state.leases_by_session() {
            assert!(self.live.contains_key(&id), "{id} in the key but closed");
            assert_eq!(
                held.get(&id).copied().unwrap_or(0),
                leases,
                "leases of {id}"
            );
        }
        let total = sizes.sessions_total + sizes.sessions_creating;
        let max_size = self.server.config.max_size;
        assert!(
            total <= self.ceiling,
            "{total} sessions and creations above {}",
            self.ceiling
        );
        self.ceiling = max_size.max(total);
        if !self.state.binds() && self.waiters.iter().any(|w| w.2.is_none()) {
            assert!(
                sizes.sessions_available == 0 && total >= max_size,
                "an acquire waits while the key has room: {sizes:?}, max_size {max_size}"
            );
        }
    }
}

fn outcome(healthy: bool) -> HealthOutcome {
    if healthy {
        HealthOutcome::Healthy {
            method: HealthCheckMethod::Ping,
        }
    } else {
        HealthOutcome::Failed {
            method: HealthCheckMethod::Ping,
            failure: HealthFailure::Timeout(Duration::from_secs(5)),
        }
    }
}

/// Operations per case, and cases per run: a million steps.
const STEPS: usize = 4_000;
const CASES: u32 = 256;

#[test]
fn the_bookkeeping_holds_over_a_million_random_events() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let steps = std::cell::Cell::new(0usize);
    runner
        .run(&proptest::collection::vec(op(), STEPS), |ops| {
            let mut harness = Harness::new();
            for op in &ops {
                harness.apply(op);
            }
            steps.set(steps.get() + ops.len());
            Ok(())
        })
        .unwrap();
    eprintln!("the key's state took {} events", steps.get());
    assert!(steps.get() >= 1_000_000);
}
