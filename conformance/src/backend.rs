//! The [`StateBackend`] conformance suite.
//!
//! Every check is a plain `pub async fn check_*` that takes a [`BackendFactory`] and panics
//! with a message naming the broken rule; [`backend_conformance!`](crate::backend_conformance)
//! turns them into one `#[tokio::test]` each.
//!
//! # Namespaces
//! Each check calls the factory with a fresh random namespace ([`fresh_namespace`]), so checks
//! running at once against one Redis or one database never see each other's keys. A factory
//! must return, for one namespace, instances that share state and notifications (two workers of
//! one deployment), and for two namespaces, instances that share nothing. Some checks call the
//! factory twice with the same namespace (the "other instance"), and
//! [`check_namespace_isolation`] calls it with namespaces built to collide under careless key
//! building.
//!
//! # Ids and key building
//! The trait takes only [`StateId`] and [`ServerId`], which accept nothing but
//! `^[a-zA-Z0-9_-]{1,128}$`: no `:` (Redis key separators), `*?[]` (glob patterns), `{}` (Redis
//! hash tags), `%` or quotes (SQL), `.` or `/` (paths), whitespace or control characters can reach
//! a backend. [`check_ids_are_validated`] pins that rule; [`check_namespace_isolation`] then
//! proves the backend's own key building is injective: ids that are prefixes of one another,
//! differ only in case, or match each other under SQL `LIKE` (`_` is allowed in ids and is a
//! `LIKE` wildcard) land in different keys.
//!
//! # Time
//! Checks use real time: TTLs of [`SHORT_TTL`] and waits of [`SHORT_TTL`] plus [`SLACK`] where a
//! TTL must run out. Everything else waits for a signal (a notification, a message) with
//! [`SIGNAL_TIMEOUT`] as the upper bound.

use std::{
    collections::HashSet,
    future::Future,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt, future::join_all};
use mcp_pool_traits::{
    BackendError, Claim, ConfigChange, CredentialsRef, Endpoint, Lifecycle, PoolConfig,
    SavedConfig, SavedServer, ServerChange, ServerId, ServerRecord, StateBackend, StateId,
    StrategyKind, TransportKind,
};
use tokio::time::{Instant, sleep, timeout};

/// The TTL of records a check waits out: 600 ms. Long enough that the few operations a check
/// makes before it waits finish within it on a loaded CI machine.
pub const SHORT_TTL: Duration = Duration::from_millis(600);
/// Extra time waited past a TTL before its record must be gone: 300 ms.
pub const SLACK: Duration = Duration::from_millis(300);
/// The TTL of records that must outlive a check: 60 s.
pub const LONG_TTL: Duration = Duration::from_secs(60);
/// Upper bound on waiting for a notification or a message: 10 s.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent claimers of one session in [`check_claim_first_writer_wins`].
pub const CLAIMERS: usize = 32;
/// Configs each of two instances puts at once in
/// [`check_concurrent_writers_reach_every_watcher`].
pub const CONCURRENT_WRITES: u32 = 25;
/// Concurrent slot takers in [`check_slot_limit_under_contention`].
pub const SLOT_TAKERS: usize = 64;

/// The variable naming a Redis for the suite, e.g. `redis://127.0.0.1:6379`.
pub const REDIS_URL_VAR: &str = "MCP_POOL_TEST_REDIS_URL";
/// The variable naming a database for the suite, e.g. `postgres://postgres@127.0.0.1/test`.
pub const DATABASE_URL_VAR: &str = "MCP_POOL_TEST_DATABASE_URL";
pub use crate::services::{REQUIRE_SERVICES_VAR, service_url};

/// Makes backend instances for the suite: one call, one instance seeing `namespace`.
///
/// Implemented for every `Fn(StateId) -> impl Future<Output = Result<Arc<B>, BackendError>>`,
/// where `B` is a backend type or `dyn StateBackend`:
///
/// ```
/// use std::sync::Arc;
/// use mcp_pool_backends::MemoryBackend;
/// use mcp_pool_traits::{BackendError, StateId};
///
/// let store = MemoryBackend::new();
/// let factory = move |ns: StateId| {
///     let backend = store.with_namespace(ns);
///     async move { Ok::<_, BackendError>(Arc::new(backend)) }
/// };
/// # fn is_factory(_: &impl mcp_pool_conformance::backend::BackendFactory) {}
/// # is_factory(&factory);
/// ```
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend made.
    type Backend: StateBackend + ?Sized;

    /// A new instance seeing `namespace`. Instances of one namespace share state.
    ///
    /// # Errors
    /// [`BackendError`] when the instance cannot be made (the checks then fail, except
    /// [`check_unreachable`], which expects [`BackendError::Unavailable`]).
    fn create(
        &self,
        namespace: StateId,
    ) -> impl Future<Output = Result<Arc<Self::Backend>, BackendError>> + Send;
}

impl<F, Fut, B> BackendFactory for F
where
    F: Fn(StateId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<B>, BackendError>> + Send,
    B: StateBackend + ?Sized,
{
    type Backend = B;

    fn create(
        &self,
        namespace: StateId,
    ) -> impl Future<Output = Result<Arc<B>, BackendError>> + Send {
        self(namespace)
    }
}

/// A namespace no other check uses: `t` and 24 hex digits from a random hasher seed, the clock
/// and a process-wide counter.
pub fn fresh_namespace() -> StateId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let random = RandomState::new().hash_one((n, nanos, std::process::id()));
    StateId::new(format!("t{random:016x}{:08x}", n as u32 ^ nanos))
        .expect("hex digits follow the id rule")
}

fn id(s: &str) -> StateId {
    StateId::new(s).expect("the suite's ids follow the rule")
}

fn server(s: &str) -> ServerId {
    ServerId::new(s).expect("the suite's ids follow the rule")
}

async fn make<F: BackendFactory>(factory: &F, namespace: &StateId) -> Arc<F::Backend> {
    match factory.create(namespace.clone()).await {
        Ok(b) => b,
        Err(e) => panic!("the factory failed for namespace {namespace}: {e}"),
    }
}

fn ok<T>(what: &str, r: Result<T, BackendError>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

async fn next_within<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    match timeout(SIGNAL_TIMEOUT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing arrived within {SIGNAL_TIMEOUT:?}"),
    }
}

/// A config unlike the default in every field, so a round trip that drops a field shows.
pub fn sample_config(size: u32) -> PoolConfig {
    PoolConfig {
        enabled: true,
        strategy: StrategyKind::Sticky,
        size,
        min_size: 2,
        max_size: 40,
        timeout: Duration::from_secs(12),
        max_idle_time: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(7200),
        session_concurrency: 3,
        auto_scale: true,
        health_check_interval: Duration::from_secs(20),
        health_check_threshold: 55,
        rebalance_interval: Duration::from_secs(120),
    }
}

/// The config of a server as [`StateBackend::get_config`] returns it, without its version.
async fn config_of<B: StateBackend + ?Sized>(b: &B, server: &ServerId) -> Option<PoolConfig> {
    ok("get_config", b.get_config(server).await).map(|saved| saved.config)
}

/// The stored configs as [`StateBackend::list_configs`] returns them, without versions or
/// deletions.
async fn stored_configs<B: StateBackend + ?Sized>(b: &B) -> Vec<(ServerId, PoolConfig)> {
    ok("list_configs", b.list_configs().await)
        .into_iter()
        .filter_map(|change| Some((change.server, change.config?)))
        .collect()
}

/// Configs: get of a missing server is `None`; put then get returns the config unchanged; put
/// replaces; list is ordered by server id (byte order, so `A_srv` before `a-srv`); delete
/// answers whether one existed; ids differing only in case are different servers.
pub async fn check_config_round_trip<F: BackendFactory>(factory: &F) {
    let b = make(factory, &fresh_namespace()).await;
    let (a, upper_a, z) = (server("a-srv"), server("A_srv"), server("z"));
    assert_eq!(ok("get_config", b.get_config(&a).await), None);
    assert!(ok("list_configs", b.list_configs().await).is_empty());
    assert_eq!(ok("delete_config", b.delete_config(&a).await), None);

    ok("put_config", b.put_config(&z, &sample_config(7)).await);
    ok("put_config", b.put_config(&a, &sample_config(8)).await);
    ok(
        "put_config",
        b.put_config(&upper_a, &sample_config(9)).await,
    );
    assert_eq!(
        config_of(&*b, &a).await,
        Some(sample_config(8)),
        "get_config must return what put_config stored, field by field"
    );
    ok("put_config", b.put_config(&a, &PoolConfig::default()).await);
    assert_eq!(
        config_of(&*b, &a).await,
        Some(PoolConfig::default()),
        "put_config must replace"
    );
    assert_eq!(
        stored_configs(&*b).await,
        vec![
            (upper_a.clone(), sample_config(9)),
            (a.clone(), PoolConfig::default()),
            (z.clone(), sample_config(7)),
        ],
        "list_configs must hold every config, ordered by server id, case kept"
    );
    assert!(ok("delete_config", b.delete_config(&a).await).is_some());
    assert_eq!(
        ok("delete_config", b.delete_config(&a).await),
        None,
        "a second delete must answer None"
    );
    assert_eq!(ok("get_config", b.get_config(&a).await), None);
    assert_eq!(config_of(&*b, &upper_a).await, Some(sample_config(9)));
    assert_eq!(stored_configs(&*b).await.len(), 2);
}

/// Config versions: every put of a server gets a version above the last (starting at 1 or
/// more); get returns the latest put's version; a delete gets a version above the last put's,
/// and a put after it one above the delete's; a delete of nothing changes no version; list
/// returns every server's latest version, a deleted one as `config: None` with the delete's
/// version (the tombstone a watcher that missed the delete learns it from); versions of one
/// server do not depend on another's writes being absent.
pub async fn check_config_versions<F: BackendFactory>(factory: &F) {
    let b = make(factory, &fresh_namespace()).await;
    let (srv, other) = (server("srv"), server("other"));
    let v1 = ok("put_config", b.put_config(&srv, &sample_config(1)).await);
    assert!(v1 >= 1, "versions start at 1, got {v1}");
    let w1 = ok("put_config", b.put_config(&other, &sample_config(5)).await);
    let v2 = ok("put_config", b.put_config(&srv, &sample_config(2)).await);
    assert!(v2 > v1, "a second put got version {v2}, not above {v1}");
    let v3 = ok("put_config", b.put_config(&srv, &sample_config(2)).await);
    assert!(
        v3 > v2,
        "a put of the same config got version {v3}, not above {v2}"
    );
    let saved = ok("get_config", b.get_config(&srv).await).expect("a stored config");
    assert_eq!(
        (saved.config, saved.version),
        (sample_config(2), v3),
        "get_config must return the latest put's version"
    );
    let deleted =
        ok("delete_config", b.delete_config(&srv).await).expect("a stored config was deleted");
    assert!(
        deleted > v3,
        "a delete got version {deleted}, not above {v3}"
    );
    assert_eq!(ok("delete_config", b.delete_config(&srv).await), None);
    assert_eq!(
        ok("list_configs", b.list_configs().await),
        vec![
            ConfigChange {
                server: other.clone(),
                config: Some(sample_config(5)),
                version: w1,
            },
            ConfigChange {
                server: srv.clone(),
                config: None,
                version: deleted,
            },
        ],
        "list_configs must return each server's latest change and version, deletions included"
    );
    let v4 = ok("put_config", b.put_config(&srv, &sample_config(4)).await);
    assert!(
        v4 > deleted,
        "a put after a delete got version {v4}, not above the delete's {deleted}"
    );
    let listed = ok("list_configs", b.list_configs().await);
    assert_eq!(
        listed.iter().find(|c| c.server == srv),
        Some(&ConfigChange {
            server: srv.clone(),
            config: Some(sample_config(4)),
            version: v4,
        }),
        "list_configs must show the put after the delete"
    );
}

/// Versions are given atomically with the write: [`CLAIMERS`] concurrent puts of one server,
/// half through each of two instances, get distinct versions, and the config stored at the end
/// is the one of the put with the highest version.
pub async fn check_config_versions_under_contention<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let instances = [make(factory, &ns).await, make(factory, &ns).await];
    let srv = server("contended");
    let puts = (0..CLAIMERS).map(|i| {
        let b = &instances[i % 2];
        let srv = &srv;
        async move {
            let config = sample_config(i as u32 + 1);
            (ok("put_config", b.put_config(srv, &config).await), config)
        }
    });
    let mut done = join_all(puts).await;
    done.sort_by_key(|(version, _)| *version);
    let versions: HashSet<u64> = done.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.len(),
        CLAIMERS,
        "{CLAIMERS} concurrent puts got only {} distinct versions",
        versions.len()
    );
    let (last, config) = done.pop().expect("CLAIMERS > 0");
    let saved = ok("get_config", instances[0].get_config(&srv).await).expect("a stored config");
    assert_eq!(
        (saved.version, saved.config),
        (last, config),
        "the stored config must be the one of the put with the highest version"
    );
}

/// Config changes made through one instance reach watchers on another instance of the same
/// namespace and on the instance itself, in order, each carrying the version its put or delete
/// returned; a delete arrives as `config: None`; the other instance reads the new config.
pub async fn check_config_change_notified<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let mut on_b = ok("watch_configs", b.watch_configs().await);
    let mut on_a = ok("watch_configs", a.watch_configs().await);
    let srv = server("github");

    let v5 = ok("put_config", a.put_config(&srv, &sample_config(5)).await);
    let v6 = ok("put_config", a.put_config(&srv, &sample_config(6)).await);
    let deleted = ok("delete_config", a.delete_config(&srv).await).expect("a config existed");
    let expected = [
        ConfigChange {
            server: srv.clone(),
            config: Some(sample_config(5)),
            version: v5,
        },
        ConfigChange {
            server: srv.clone(),
            config: Some(sample_config(6)),
            version: v6,
        },
        ConfigChange {
            server: srv.clone(),
            config: None,
            version: deleted,
        },
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = next_within(&mut on_b, "a change through another instance").await;
        assert_eq!(&got, want, "change {i} seen by the other instance");
        let got = next_within(&mut on_a, "a change through this instance").await;
        assert_eq!(&got, want, "change {i} seen by the same instance");
    }

    let v11 = ok("put_config", b.put_config(&srv, &sample_config(11)).await);
    let got = next_within(&mut on_a, "a change made through the other instance").await;
    assert_eq!(
        (got.config, got.version),
        (Some(sample_config(11)), v11),
        "a change must carry the version its put returned"
    );
    assert_eq!(
        ok("get_config", a.get_config(&srv).await),
        Some(SavedConfig {
            config: sample_config(11),
            version: v11
        }),
        "a config stored through one instance must be read by another, with its version"
    );
}

/// A server record unlike the defaults in every field (two endpoints, a weight, a pool config,
/// disabled, credentials), so a round trip that drops a field shows. `n` varies the name and
/// the first endpoint's port.
pub fn sample_record(id: &str, n: u16) -> ServerRecord {
    ServerRecord {
        id: server(id),
        name: format!("Server {id} #{n}"),
        endpoints: vec![
            Endpoint {
                url: format!("http://127.0.0.1:{}/mcp", 9000 + n).into(),
                transport: TransportKind::StreamableHttp,
                weight: 2,
                stdio: None,
                lifecycle: Lifecycle::Discover,
            },
            Endpoint {
                url: "ws://127.0.0.1:9999/ws".into(),
                transport: TransportKind::WebSocket,
                weight: 1,
                stdio: None,
                lifecycle: Lifecycle::Initialize,
            },
        ],
        pool: sample_config(u32::from(n) + 3),
        enabled: false,
        credentials: Some(CredentialsRef {
            header: "authorization".into(),
            env: "DEMO_TOKEN".into(),
        }),
        forward_token: true,
        access: Some(mcp_pool_traits::Access {
            users: vec!["alice".into()],
            groups: vec!["ops".into()],
        }),
    }
}

/// Server records: get of a missing id is `None`; put then get returns the record unchanged
/// with the put's version; put replaces with a higher version; list is ordered by id, a delete
/// kept as a tombstone (`record: None`) with a version above the last put's, and a put after
/// it continues above; a delete of nothing answers `None`; server records and pool configs of
/// one id are separate (neither list shows the other's writes).
pub async fn check_server_records<F: BackendFactory>(factory: &F) {
    let b = make(factory, &fresh_namespace()).await;
    let (a, z) = (server("a-srv"), server("z"));
    assert_eq!(ok("get_server", b.get_server(&a).await), None);
    assert!(ok("list_servers", b.list_servers().await).is_empty());
    assert_eq!(ok("delete_server", b.delete_server(&a).await), None);

    let z1 = ok("put_server", b.put_server(&sample_record("z", 1)).await);
    let a1 = ok("put_server", b.put_server(&sample_record("a-srv", 1)).await);
    assert!(a1 >= 1 && z1 >= 1, "versions start at 1, got {a1} and {z1}");
    let a2 = ok("put_server", b.put_server(&sample_record("a-srv", 2)).await);
    assert!(a2 > a1, "a second put got version {a2}, not above {a1}");
    assert_eq!(
        ok("get_server", b.get_server(&a).await),
        Some(SavedServer {
            record: sample_record("a-srv", 2),
            version: a2
        }),
        "get_server must return what put_server stored, field by field, with its version"
    );
    ok("put_config", b.put_config(&a, &sample_config(1)).await);
    assert_eq!(
        ok("list_servers", b.list_servers().await),
        vec![
            ServerChange {
                server: a.clone(),
                record: Some(sample_record("a-srv", 2)),
                version: a2,
            },
            ServerChange {
                server: z.clone(),
                record: Some(sample_record("z", 1)),
                version: z1,
            },
        ],
        "list_servers must hold every record, ordered by id, and no config"
    );
    assert_eq!(
        stored_configs(&*b).await,
        vec![(a.clone(), sample_config(1))],
        "list_configs must not show server records"
    );
    let deleted = ok("delete_server", b.delete_server(&a).await).expect("a stored record");
    assert!(
        deleted > a2,
        "a delete got version {deleted}, not above {a2}"
    );
    assert_eq!(ok("delete_server", b.delete_server(&a).await), None);
    assert_eq!(ok("get_server", b.get_server(&a).await), None);
    assert_eq!(
        config_of(&*b, &a).await,
        Some(sample_config(1)),
        "deleting a server record must leave its pool config alone"
    );
    let listed = ok("list_servers", b.list_servers().await);
    assert_eq!(
        listed.first(),
        Some(&ServerChange {
            server: a.clone(),
            record: None,
            version: deleted,
        }),
        "list_servers must keep a deleted record as a tombstone with the delete's version"
    );
    let a3 = ok("put_server", b.put_server(&sample_record("a-srv", 3)).await);
    assert!(
        a3 > deleted,
        "a put after a delete got version {a3}, not above the delete's {deleted}"
    );
}

/// A record larger than a PostgreSQL notice may carry (8000 bytes): 64 endpoints with long
/// URLs.
fn large_record(id: &str) -> ServerRecord {
    let mut record = sample_record(id, 2);
    record.endpoints = (0..64)
        .map(|i| Endpoint {
            url: format!("https://replica-{i}.example.com/{}/mcp", "p".repeat(100)).into(),
            transport: TransportKind::StreamableHttp,
            weight: i + 1,
            stdio: None,
            lifecycle: Lifecycle::Auto,
        })
        .collect();
    record
}

/// Server record changes made through one instance reach watchers of servers on another
/// instance of the namespace and on itself, in order, with the versions the writes returned
/// (a delete as `record: None`), a record of over 8000 bytes included; config changes never
/// reach a server watcher, nor server changes a config watcher.
pub async fn check_server_change_notified<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let mut servers_b = ok("watch_servers", b.watch_servers().await);
    let mut servers_a = ok("watch_servers", a.watch_servers().await);
    let mut configs_b = ok("watch_configs", b.watch_configs().await);
    let srv = server("github");

    let v1 = ok(
        "put_server",
        a.put_server(&sample_record("github", 1)).await,
    );
    ok("put_config", a.put_config(&srv, &sample_config(4)).await);
    let v2 = ok("put_server", a.put_server(&large_record("github")).await);
    let deleted = ok("delete_server", a.delete_server(&srv).await).expect("a record existed");
    let expected = [
        ServerChange {
            server: srv.clone(),
            record: Some(sample_record("github", 1)),
            version: v1,
        },
        ServerChange {
            server: srv.clone(),
            record: Some(large_record("github")),
            version: v2,
        },
        ServerChange {
            server: srv.clone(),
            record: None,
            version: deleted,
        },
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = next_within(&mut servers_b, "a server change through another instance").await;
        assert_eq!(&got, want, "server change {i} seen by the other instance");
        let got = next_within(&mut servers_a, "a server change through this instance").await;
        assert_eq!(&got, want, "server change {i} seen by the same instance");
    }
    let got = next_within(&mut configs_b, "the config change").await;
    assert_eq!(
        got.config,
        Some(sample_config(4)),
        "a config watcher must see the config change and no server change"
    );
    ok("delete_config", a.delete_config(&srv).await);
    let v3 = ok(
        "put_server",
        a.put_server(&sample_record("github", 3)).await,
    );
    let got = next_within(&mut servers_b, "the server change after a config delete").await;
    assert_eq!(
        (got.record, got.version),
        (Some(sample_record("github", 3)), v3),
        "a server watcher must see only server changes"
    );
}

/// [`CLAIMERS`] live workers, half on each of two instances, claim one session at once: exactly
/// one wins, every other sees `Held` naming the winner, and `owner` names the winner.
pub async fn check_claim_first_writer_wins<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let instances = [make(factory, &ns).await, make(factory, &ns).await];
    let session = id("session-1");
    let workers: Vec<StateId> = (0..CLAIMERS).map(|i| id(&format!("worker-{i}"))).collect();
    for (i, w) in workers.iter().enumerate() {
        ok("heartbeat", instances[i % 2].heartbeat(w, LONG_TTL).await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(CLAIMERS));
    let tasks = workers.iter().enumerate().map(|(i, w)| {
        let (b, w, s, start) = (
            Arc::clone(&instances[i % 2]),
            w.clone(),
            session.clone(),
            Arc::clone(&start),
        );
        tokio::spawn(async move {
            start.wait().await;
            (w.clone(), b.claim(&s, &w, LONG_TTL).await)
        })
    });
    let outcomes: Vec<(StateId, Claim)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| {
            let (w, c) = r.expect("a claim task panicked");
            (w, ok("claim", c))
        })
        .collect();
    let winners: Vec<&StateId> = outcomes
        .iter()
        .filter(|(_, c)| c.is_owned())
        .map(|(w, _)| w)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {CLAIMERS} concurrent claimers must win, got {outcomes:?}"
    );
    let winner = winners[0].clone();
    assert!(
        outcomes
            .iter()
            .any(|(w, c)| *w == winner && *c == Claim::Won),
        "the winner of a free session must see Won, got {outcomes:?}"
    );
    for (w, c) in &outcomes {
        if *w != winner {
            assert_eq!(
                c,
                &Claim::Held {
                    owner: winner.clone()
                },
                "a loser must see Held naming the winner"
            );
        }
    }
    for b in &instances {
        assert_eq!(ok("owner", b.owner(&session).await), Some(winner.clone()));
    }
    assert_eq!(
        ok(
            "claim",
            instances[1].claim(&session, &winner, LONG_TTL).await
        ),
        Claim::Won,
        "the owner claiming again keeps it (and renews the TTL)"
    );
}

/// Only the owner refreshes or releases; after a release the session is free; refresh and
/// release of a free session answer `false`.
pub async fn check_refresh_and_release_only_by_owner<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (session, owner, other) = (id("s"), id("owner"), id("other"));
    ok("heartbeat", a.heartbeat(&owner, LONG_TTL).await);
    ok("heartbeat", b.heartbeat(&other, LONG_TTL).await);
    assert_eq!(
        ok("claim", a.claim(&session, &owner, LONG_TTL).await),
        Claim::Won
    );

    assert!(
        !ok("refresh", b.refresh(&session, &other, LONG_TTL).await),
        "a non-owner's refresh must answer false"
    );
    assert!(
        !ok("release", b.release(&session, &other).await),
        "a non-owner's release must answer false"
    );
    assert_eq!(ok("owner", b.owner(&session).await), Some(owner.clone()));
    assert!(ok("refresh", b.refresh(&session, &owner, LONG_TTL).await));
    assert!(ok("release", b.release(&session, &owner).await));
    assert_eq!(ok("owner", a.owner(&session).await), None);
    assert!(!ok("release", a.release(&session, &owner).await));
    assert!(
        !ok("refresh", a.refresh(&session, &owner, LONG_TTL).await),
        "refresh must not bring a released claim back"
    );
    assert_eq!(
        ok("claim", b.claim(&session, &other, LONG_TTL).await),
        Claim::Won,
        "a released session is free"
    );
}

/// A claim ends when its TTL runs out, even with its owner alive; a refresh extends it; a
/// refresh after the TTL answers `false`.
pub async fn check_claim_expiry<F: BackendFactory>(factory: &F) {
    let b = make(factory, &fresh_namespace()).await;
    let (s1, s2, owner, other) = (id("s1"), id("s2"), id("owner"), id("other"));
    ok("heartbeat", b.heartbeat(&owner, LONG_TTL).await);
    ok("heartbeat", b.heartbeat(&other, LONG_TTL).await);
    assert_eq!(
        ok("claim", b.claim(&s1, &owner, SHORT_TTL).await),
        Claim::Won
    );
    assert_eq!(
        ok("claim", b.claim(&s2, &owner, SHORT_TTL).await),
        Claim::Won
    );
    assert!(ok("refresh", b.refresh(&s2, &owner, LONG_TTL).await));
    assert_eq!(ok("owner", b.owner(&s1).await), Some(owner.clone()));

    sleep(SHORT_TTL + SLACK).await;
    assert_eq!(
        ok("owner", b.owner(&s1).await),
        None,
        "a claim must end when its TTL runs out"
    );
    assert!(
        !ok("refresh", b.refresh(&s1, &owner, LONG_TTL).await),
        "refresh of an expired claim must answer false"
    );
    assert_eq!(
        ok("owner", b.owner(&s2).await),
        Some(owner.clone()),
        "a refresh must extend the claim"
    );
    assert_eq!(
        ok("claim", b.claim(&s1, &other, LONG_TTL).await),
        Claim::Won
    );
    assert_eq!(
        ok("claim", b.claim(&s2, &other, LONG_TTL).await),
        Claim::Held {
            owner: owner.clone()
        }
    );
}

/// Heartbeats: a worker is alive only within the TTL of its last heartbeat; another heartbeat
/// renews it; workers are independent.
pub async fn check_heartbeats<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (w, v) = (id("w"), id("v"));
    assert!(
        !ok("is_alive", a.is_alive(&w).await),
        "never seen: not alive"
    );
    ok("heartbeat", a.heartbeat(&w, SHORT_TTL).await);
    ok("heartbeat", a.heartbeat(&v, LONG_TTL).await);
    assert!(ok("is_alive", b.is_alive(&w).await));
    sleep(SHORT_TTL + SLACK).await;
    assert!(
        !ok("is_alive", b.is_alive(&w).await),
        "alive past the heartbeat TTL"
    );
    assert!(ok("is_alive", b.is_alive(&v).await));
    ok("heartbeat", b.heartbeat(&w, LONG_TTL).await);
    assert!(ok("is_alive", a.is_alive(&w).await));
}

/// A claim whose owner's heartbeat ran out is taken over (`TookOver` naming it), even within the
/// claim's TTL, and `owner` no longer reports the dead owner; the dead owner can then neither
/// refresh nor release.
pub async fn check_dead_owner_reclaimed<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (session, dead, heir) = (id("s"), id("dying"), id("heir"));
    ok("heartbeat", a.heartbeat(&dead, SHORT_TTL).await);
    ok("heartbeat", b.heartbeat(&heir, LONG_TTL).await);
    assert_eq!(
        ok("claim", a.claim(&session, &dead, LONG_TTL).await),
        Claim::Won
    );
    assert_eq!(
        ok("claim", b.claim(&session, &heir, LONG_TTL).await),
        Claim::Held {
            owner: dead.clone()
        },
        "the owner is alive yet"
    );

    sleep(SHORT_TTL + SLACK).await;
    assert_eq!(
        ok("owner", b.owner(&session).await),
        None,
        "owner must not report an owner whose heartbeat ran out"
    );
    assert_eq!(
        ok("claim", b.claim(&session, &heir, LONG_TTL).await),
        Claim::TookOver {
            previous: dead.clone()
        }
    );
    assert_eq!(ok("owner", a.owner(&session).await), Some(heir.clone()));
    assert!(!ok("refresh", a.refresh(&session, &dead, LONG_TTL).await));
    assert!(!ok("release", a.release(&session, &dead).await));
    assert_eq!(ok("owner", a.owner(&session).await), Some(heir));
}

/// A live owner's claim is never taken: [`CLAIMERS`] concurrent live claimers all see `Held`,
/// also after the owner renewed its heartbeat past its first TTL.
pub async fn check_live_owner_never_stolen<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (session, owner) = (id("s"), id("owner"));
    ok("heartbeat", a.heartbeat(&owner, SHORT_TTL).await);
    assert_eq!(
        ok("claim", a.claim(&session, &owner, LONG_TTL).await),
        Claim::Won
    );
    ok("heartbeat", a.heartbeat(&owner, LONG_TTL).await);
    sleep(SHORT_TTL + SLACK).await;

    let tasks = (0..CLAIMERS).map(|i| {
        let (b, s) = (Arc::clone(&b), session.clone());
        tokio::spawn(async move {
            let thief = id(&format!("thief-{i}"));
            ok("heartbeat", b.heartbeat(&thief, LONG_TTL).await);
            b.claim(&s, &thief, LONG_TTL).await
        })
    });
    for outcome in join_all(tasks).await {
        assert_eq!(
            ok("claim", outcome.expect("a claim task panicked")),
            Claim::Held {
                owner: owner.clone()
            },
            "a live owner's claim was taken"
        );
    }
    assert_eq!(ok("owner", b.owner(&session).await), Some(owner));
}

/// Slots: [`SLOT_TAKERS`] concurrent takers of distinct slots, on two instances, with a limit of
/// 10: exactly 10 succeed and the count is 10; taking a held slot renews it without counting it
/// twice; release answers whether the slot was held; a freed slot can be taken; a limit of 0
/// and a TTL of 0 are `InvalidArgument`; counters are independent.
pub async fn check_slot_limit_under_contention<F: BackendFactory>(factory: &F) {
    const LIMIT: u32 = 10;
    let ns = fresh_namespace();
    let instances = [make(factory, &ns).await, make(factory, &ns).await];
    let counter = id("user-1");
    let start = Arc::new(tokio::sync::Barrier::new(SLOT_TAKERS));
    let tasks = (0..SLOT_TAKERS).map(|i| {
        let (b, c, start) = (
            Arc::clone(&instances[i % 2]),
            counter.clone(),
            Arc::clone(&start),
        );
        tokio::spawn(async move {
            let slot = id(&format!("slot-{i}"));
            start.wait().await;
            let taken = b.try_acquire_slot(&c, &slot, LIMIT, LONG_TTL).await;
            (slot, taken)
        })
    });
    let mut held = Vec::new();
    for r in join_all(tasks).await {
        let (slot, taken) = r.expect("a slot task panicked");
        if ok("try_acquire_slot", taken) {
            held.push(slot);
        }
    }
    assert_eq!(
        held.len(),
        LIMIT as usize,
        "{SLOT_TAKERS} concurrent takers under a limit of {LIMIT} took {} slots",
        held.len()
    );
    let [a, b] = &instances;
    assert_eq!(ok("slot_count", a.slot_count(&counter).await), LIMIT);
    assert_eq!(ok("slot_count", b.slot_count(&counter).await), LIMIT);

    assert!(
        ok(
            "try_acquire_slot",
            b.try_acquire_slot(&counter, &held[0], LIMIT, LONG_TTL)
                .await
        ),
        "taking a held slot again must succeed"
    );
    assert_eq!(
        ok("slot_count", a.slot_count(&counter).await),
        LIMIT,
        "a renewed slot counts once"
    );
    assert!(
        !ok(
            "try_acquire_slot",
            a.try_acquire_slot(&counter, &id("late"), LIMIT, LONG_TTL)
                .await
        ),
        "a full counter must refuse a new slot"
    );
    assert!(ok("release_slot", a.release_slot(&counter, &held[0]).await));
    assert!(
        !ok("release_slot", b.release_slot(&counter, &held[0]).await),
        "a second release must answer false"
    );
    assert!(!ok(
        "release_slot",
        b.release_slot(&counter, &id("never-held")).await
    ));
    assert_eq!(ok("slot_count", b.slot_count(&counter).await), LIMIT - 1);
    assert!(ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &id("late"), LIMIT, LONG_TTL)
            .await
    ));
    assert_eq!(ok("slot_count", a.slot_count(&counter).await), LIMIT);

    let other = id("user-2");
    assert_eq!(ok("slot_count", a.slot_count(&other).await), 0);
    assert!(ok(
        "try_acquire_slot",
        a.try_acquire_slot(&other, &held[1], 1, LONG_TTL).await
    ));
    assert!(matches!(
        a.try_acquire_slot(&other, &id("x"), 0, LONG_TTL).await,
        Err(BackendError::InvalidArgument(_))
    ));
    assert!(matches!(
        a.try_acquire_slot(&other, &id("x"), 5, Duration::ZERO)
            .await,
        Err(BackendError::InvalidArgument(_))
    ));
}

/// Slots come back when their TTL runs out (a crashed worker's slots), and taking a held slot
/// again renews its TTL.
pub async fn check_slots_expire<F: BackendFactory>(factory: &F) {
    let b = make(factory, &fresh_namespace()).await;
    let counter = id("user");
    let (s1, s2, s3) = (id("s1"), id("s2"), id("s3"));
    assert!(ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &s1, 2, SHORT_TTL).await
    ));
    assert!(ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &s2, 2, SHORT_TTL).await
    ));
    assert!(!ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &s3, 2, LONG_TTL).await
    ));
    assert!(
        ok(
            "try_acquire_slot",
            b.try_acquire_slot(&counter, &s2, 2, LONG_TTL).await
        ),
        "renewing a held slot at the limit must succeed"
    );

    sleep(SHORT_TTL + SLACK).await;
    assert_eq!(
        ok("slot_count", b.slot_count(&counter).await),
        1,
        "an expired slot must not count; a renewed one must"
    );
    assert!(
        !ok("release_slot", b.release_slot(&counter, &s1).await),
        "an expired slot is not held"
    );
    assert!(ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &s3, 2, LONG_TTL).await
    ));
    assert!(!ok(
        "try_acquire_slot",
        b.try_acquire_slot(&counter, &s1, 2, LONG_TTL).await
    ));
}

/// Publish / subscribe between two instances: every subscriber of a channel gets every message
/// published after it subscribed, in order, byte for byte (empty, binary and 64 KiB payloads);
/// subscribers of another channel get none of them.
pub async fn check_publish_subscribe<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (chan, other) = (id("worker-7"), id("worker-8"));
    let mut on_a = ok("subscribe", a.subscribe(&chan).await);
    let mut on_b = ok("subscribe", b.subscribe(&chan).await);
    let mut on_other = ok("subscribe", a.subscribe(&other).await);

    let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let payloads: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        Vec::new(),
        vec![0, 255, b'\n', b'\r', b'"', b'\\', 0x80],
        big,
    ];
    for p in &payloads {
        ok("publish", b.publish(&chan, p).await);
    }
    ok("publish", a.publish(&other, b"marker").await);
    for (i, want) in payloads.iter().enumerate() {
        let got = next_within(&mut on_a, "a message from another instance").await;
        assert!(got == *want, "message {i} arrived changed on instance a");
        let got = next_within(&mut on_b, "a message from this instance").await;
        assert!(got == *want, "message {i} arrived changed on instance b");
    }
    assert_eq!(
        next_within(&mut on_other, "the marker").await,
        b"marker".to_vec(),
        "a subscriber of another channel received a message not meant for it"
    );
}

/// Ids that differ only in case are different ids everywhere (the id rule keeps case): server
/// configs and records, claims, heartbeats, slot counters and slots, channels, and namespaces.
/// A backend on a case-insensitive store (MariaDB's and MySQL's default collations, a
/// case-folding key scheme) fails here.
pub async fn check_ids_differing_only_in_case<F: BackendFactory>(factory: &F) {
    let base = fresh_namespace();
    let lower = make(factory, &id(&format!("{base}x"))).await;
    let upper = make(factory, &id(&format!("{base}X"))).await;
    let (srv, srv_upper) = (server("case-srv"), server("Case-Srv"));
    ok(
        "put_config",
        lower.put_config(&srv, &sample_config(3)).await,
    );
    ok(
        "put_config",
        lower.put_config(&srv_upper, &sample_config(4)).await,
    );
    assert_eq!(
        stored_configs(&*lower).await,
        vec![
            (srv_upper.clone(), sample_config(4)),
            (srv.clone(), sample_config(3)),
        ],
        "configs of server ids differing only in case must both be kept"
    );
    ok(
        "put_server",
        lower.put_server(&sample_record("case-srv", 1)).await,
    );
    ok(
        "put_server",
        lower.put_server(&sample_record("Case-Srv", 2)).await,
    );
    let listed = ok("list_servers", lower.list_servers().await);
    assert_eq!(
        listed.iter().filter(|c| c.record.is_some()).count(),
        2,
        "server records of ids differing only in case must both be kept: {listed:?}"
    );
    assert!(
        stored_configs(&*upper).await.is_empty(),
        "namespaces differing only in case must share nothing"
    );

    let (w, w_upper) = (id("worker"), id("WORKER"));
    ok("heartbeat", lower.heartbeat(&w, LONG_TTL).await);
    assert!(
        !ok("is_alive", lower.is_alive(&w_upper).await),
        "a heartbeat of `worker` made `WORKER` alive"
    );
    ok("heartbeat", lower.heartbeat(&w_upper, LONG_TTL).await);
    let (s, s_upper) = (id("session"), id("SESSION"));
    assert_eq!(ok("claim", lower.claim(&s, &w, LONG_TTL).await), Claim::Won);
    assert_eq!(
        ok("claim", lower.claim(&s_upper, &w_upper, LONG_TTL).await),
        Claim::Won,
        "a claim of `session` held `SESSION` too"
    );
    assert_eq!(ok("owner", lower.owner(&s).await), Some(w.clone()));
    assert!(
        !ok("release", lower.release(&s, &w_upper).await),
        "`WORKER` released the claim of `worker`"
    );

    let (c, c_upper) = (id("counter"), id("COUNTER"));
    assert!(ok(
        "try_acquire_slot",
        lower.try_acquire_slot(&c, &s, 1, LONG_TTL).await
    ));
    assert!(
        ok(
            "try_acquire_slot",
            lower.try_acquire_slot(&c_upper, &s, 1, LONG_TTL).await
        ),
        "counters differing only in case share their slots"
    );
    assert!(
        !ok(
            "try_acquire_slot",
            lower.try_acquire_slot(&c, &s_upper, 1, LONG_TTL).await
        ),
        "slot `SESSION` was taken as `session`, already held, at the limit of 1"
    );

    let (chan, chan_upper) = (id("chan"), id("CHAN"));
    let mut on_lower = ok("subscribe", lower.subscribe(&chan).await);
    let mut on_upper = ok("subscribe", lower.subscribe(&chan_upper).await);
    ok("publish", lower.publish(&chan_upper, b"upper").await);
    ok("publish", lower.publish(&chan, b"lower").await);
    assert_eq!(
        next_within(&mut on_lower, "the message of `chan`").await,
        b"lower".to_vec(),
        "a subscriber of `chan` got the message of `CHAN`"
    );
    assert_eq!(
        next_within(&mut on_upper, "the message of `CHAN`").await,
        b"upper".to_vec()
    );
}

/// Two instances writing at once: each puts [`CONCURRENT_WRITES`] configs (servers of its own)
/// while the other does, and every watcher (two per instance) receives every change, each with
/// the version its put returned.
pub async fn check_concurrent_writers_reach_every_watcher<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let instances = [make(factory, &ns).await, make(factory, &ns).await];
    let mut watchers = Vec::new();
    for b in instances.iter().chain(instances.iter()) {
        watchers.push(ok("watch_configs", b.watch_configs().await));
    }
    let writes = instances.iter().enumerate().map(|(w, b)| {
        let b = Arc::clone(b);
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..CONCURRENT_WRITES {
                let s = server(&format!("w{w}-srv{i}"));
                let version = ok("put_config", b.put_config(&s, &sample_config(i + 1)).await);
                written.push((s, version));
            }
            written
        })
    });
    let mut expected: HashSet<(ServerId, u64)> = HashSet::new();
    for written in join_all(writes).await {
        expected.extend(written.expect("a writer task panicked"));
    }
    for (i, watcher) in watchers.iter_mut().enumerate() {
        let mut seen = HashSet::new();
        while seen.len() < expected.len() {
            let change = next_within(watcher, "a change of a concurrent writer").await;
            seen.insert((change.server, change.version));
        }
        assert_eq!(
            seen, expected,
            "watcher {i} did not receive exactly the changes both writers made"
        );
    }
}

/// Config, server and message streams end (return `None`) once the instance they were made
/// from is dropped, and do not end before: a consumer re-subscribes on a live backend rather
/// than holding a stream of a dead one.
pub async fn check_streams_end_when_dropped<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let b = make(factory, &ns).await;
    let mut configs = ok("watch_configs", b.watch_configs().await);
    let mut servers = ok("watch_servers", b.watch_servers().await);
    let mut messages = ok("subscribe", b.subscribe(&id("chan")).await);
    ok("publish", b.publish(&id("chan"), b"alive").await);
    assert_eq!(
        next_within(&mut messages, "a message before the drop").await,
        b"alive".to_vec()
    );
    drop(b);
    let (configs, servers, messages) = tokio::join!(
        timeout(SIGNAL_TIMEOUT, configs.next()),
        timeout(SIGNAL_TIMEOUT, servers.next()),
        timeout(SIGNAL_TIMEOUT, messages.next()),
    );
    for (what, ended) in [
        ("watch_configs", configs.map(|c| c.is_none())),
        ("watch_servers", servers.map(|c| c.is_none())),
        ("subscribe", messages.map(|m| m.is_none())),
    ] {
        match ended {
            Ok(true) => {}
            Ok(false) => panic!("{what}: the stream delivered an item nobody sent"),
            Err(_) => panic!(
                "{what}: the stream did not end within {SIGNAL_TIMEOUT:?} of its backend being dropped"
            ),
        }
    }
}

/// The fine print of claims and heartbeats, pinned:
/// - an owner that never sent a heartbeat holds its claim for the claim's TTL: others see
///   `Held`, and `owner` names it, although `is_alive` is `false` for it;
/// - an owner whose heartbeat ran out still refreshes and releases its claim while nobody has
///   taken it over; once taken over, it can neither;
/// - a TTL of 0 is `InvalidArgument` for `claim`, `refresh` and `heartbeat`, and changes
///   nothing.
pub async fn check_claim_fine_print<F: BackendFactory>(factory: &F) {
    let ns = fresh_namespace();
    let (a, b) = (make(factory, &ns).await, make(factory, &ns).await);
    let (silent, other) = (id("silent"), id("other"));
    ok("heartbeat", b.heartbeat(&other, LONG_TTL).await);
    let s1 = id("s1");
    assert_eq!(
        ok("claim", a.claim(&s1, &silent, LONG_TTL).await),
        Claim::Won
    );
    assert!(!ok("is_alive", b.is_alive(&silent).await));
    assert_eq!(
        ok("claim", b.claim(&s1, &other, LONG_TTL).await),
        Claim::Held {
            owner: silent.clone()
        },
        "an owner that never sent a heartbeat holds its claim for the claim's TTL"
    );
    assert_eq!(ok("owner", b.owner(&s1).await), Some(silent.clone()));

    let (lapsed, s2, s3) = (id("lapsed"), id("s2"), id("s3"));
    ok("heartbeat", a.heartbeat(&lapsed, SHORT_TTL).await);
    assert_eq!(
        ok("claim", a.claim(&s2, &lapsed, LONG_TTL).await),
        Claim::Won
    );
    assert_eq!(
        ok("claim", a.claim(&s3, &lapsed, LONG_TTL).await),
        Claim::Won
    );
    sleep(SHORT_TTL + SLACK).await;
    assert!(
        ok("refresh", a.refresh(&s2, &lapsed, LONG_TTL).await),
        "an owner whose heartbeat ran out refreshes its claim while nobody took it over"
    );
    assert!(
        ok("release", a.release(&s2, &lapsed).await),
        "an owner whose heartbeat ran out releases its claim while nobody took it over"
    );
    assert_eq!(
        ok("claim", b.claim(&s3, &other, LONG_TTL).await),
        Claim::TookOver {
            previous: lapsed.clone()
        }
    );
    assert!(!ok("refresh", a.refresh(&s3, &lapsed, LONG_TTL).await));
    assert!(!ok("release", a.release(&s3, &lapsed).await));

    let s4 = id("s4");
    for (what, r) in [
        (
            "claim",
            a.claim(&s4, &other, Duration::ZERO).await.map(drop),
        ),
        (
            "refresh",
            a.refresh(&s3, &other, Duration::ZERO).await.map(drop),
        ),
        ("heartbeat", a.heartbeat(&id("zero"), Duration::ZERO).await),
    ] {
        assert!(
            matches!(r, Err(BackendError::InvalidArgument(_))),
            "{what} with a TTL of 0 must be InvalidArgument, got {r:?}"
        );
    }
    assert_eq!(
        ok("owner", a.owner(&s4).await),
        None,
        "a refused claim changed nothing"
    );
    assert_eq!(
        ok("owner", a.owner(&s3).await),
        Some(other),
        "a refused refresh changed nothing"
    );
    assert!(!ok("is_alive", a.is_alive(&id("zero")).await));
}

/// The rule every id reaching a backend follows. [`StateId`] and [`ServerId`] (constructors and
/// deserialization) must reject every character a backend could read as syntax. It tests this
/// project's id types, not a backend: [`backend_conformance!`](crate::backend_conformance)
/// does not run it (this crate's own tests do).
pub fn check_ids_are_validated() {
    let long = "a".repeat(129);
    let bad = [
        "",
        "a:b",
        "a*",
        "a?",
        "[ab]",
        "{ns}",
        "a b",
        "a\nb",
        "a\0",
        "a%",
        "a'b",
        "a\"b",
        "a\\b",
        "a/b",
        "..",
        "a.b",
        "ä",
        "a;b",
        "a\u{200b}",
        &long,
    ];
    for value in bad {
        assert!(
            StateId::new(value).is_err(),
            "StateId accepted {value:?}, which could form another key or channel"
        );
        assert!(
            ServerId::new(value).is_err(),
            "ServerId accepted {value:?}, which could form another key"
        );
        let json = serde_json::to_string(value).expect("a string serializes");
        assert!(serde_json::from_str::<ServerId>(&json).is_err());
        assert!(serde_json::from_str::<StateId>(&json).is_err());
    }
    for value in ["a", "A-b_9", &"z".repeat(128)] {
        assert!(StateId::new(value).is_ok() && ServerId::new(value).is_ok());
    }
}

/// Namespaces and ids that collide under careless key building stay apart: namespaces that are
/// prefixes of each other (`N` and `Na`, with servers `abc` and `bc`: `N`+`abc` = `Na`+`bc`), or
/// match under SQL `LIKE` (`N_a` and `Nxa`), share no config, notification, claim, heartbeat,
/// slot or message.
pub async fn check_namespace_isolation<F: BackendFactory>(factory: &F) {
    let base = fresh_namespace();
    let names = [
        base.clone(),
        id(&format!("{base}a")),
        id(&format!("{base}_a")),
        id(&format!("{base}xa")),
    ];
    let mut spaces = Vec::new();
    for ns in &names {
        spaces.push(make(factory, ns).await);
    }
    let mut watches = Vec::new();
    let mut subs = Vec::new();
    let chan = id("chan");
    for b in &spaces {
        watches.push(ok("watch_configs", b.watch_configs().await));
        subs.push(ok("subscribe", b.subscribe(&chan).await));
    }

    // A config per namespace under a server id that concatenates with the namespace name
    // into the same text for the first two.
    let servers = [server("abc"), server("bc"), server("a"), server("a")];
    for (i, (b, s)) in spaces.iter().zip(&servers).enumerate() {
        ok(
            "put_config",
            b.put_config(s, &sample_config(i as u32 + 1)).await,
        );
    }
    let (session, worker, counter) = (id("s"), id("w"), id("c"));
    for (i, b) in spaces.iter().enumerate() {
        let listed = stored_configs(&**b).await;
        assert_eq!(
            listed,
            vec![(servers[i].clone(), sample_config(i as u32 + 1))],
            "namespace {} sees configs of another namespace",
            names[i]
        );
        let change = next_within(&mut watches[i], "this namespace's change").await;
        assert_eq!(
            change.config,
            Some(sample_config(i as u32 + 1)),
            "namespace {} was notified of another namespace's change",
            names[i]
        );
        let owner = id(&format!("w{i}"));
        assert_eq!(
            ok("claim", b.claim(&session, &owner, LONG_TTL).await),
            Claim::Won,
            "namespace {} shares claims with another namespace",
            names[i]
        );
        assert!(
            ok(
                "try_acquire_slot",
                b.try_acquire_slot(&counter, &owner, 1, LONG_TTL).await
            ),
            "namespace {} shares slot counters with another namespace",
            names[i]
        );
        assert!(
            !ok("is_alive", b.is_alive(&worker).await),
            "namespace {} sees another namespace's heartbeat",
            names[i]
        );
        ok("heartbeat", b.heartbeat(&worker, LONG_TTL).await);
        ok(
            "publish",
            b.publish(&chan, names[i].as_str().as_bytes()).await,
        );
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        let got = next_within(sub, "this namespace's message").await;
        assert_eq!(
            got,
            names[i].as_str().as_bytes(),
            "namespace {} received another namespace's message",
            names[i]
        );
    }
    let owners: HashSet<Option<StateId>> = join_all(spaces.iter().map(|b| b.owner(&session)))
        .await
        .into_iter()
        .map(|r| ok("owner", r))
        .collect();
    assert_eq!(owners.len(), names.len(), "claims overwrote each other");
}

/// A TCP listener on loopback that accepts connections and never answers (nor closes them)
/// until dropped: a service that hangs, for [`check_unreachable`].
#[derive(Debug)]
pub struct SilentServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    /// Starts one on a free port of `127.0.0.1`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { addr, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address nothing listens on: connections are refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    listener.local_addr().expect("a bound address")
}

/// Every operation of an unreachable backend fails with [`BackendError::Unavailable`] within
/// `bound`, never hangs or panics; operations run concurrently.
/// [`backend_conformance!`](crate::backend_conformance) runs it with the service's address
/// replaced by a port that refuses connections and by a [`SilentServer`].
///
/// The factory must make the instance without reaching its service (connect lazily, as a
/// worker must be able to start while its backend is down), so that every operation is
/// exercised: a factory that fails fails the check.
pub async fn check_unreachable<F: BackendFactory>(factory: &F, bound: Duration) {
    let started = Instant::now();
    let backend = match timeout(bound, factory.create(fresh_namespace())).await {
        Err(_) => panic!("making an unreachable backend took longer than {bound:?}"),
        Ok(Err(e)) => panic!(
            "making an instance of an unreachable backend failed ({e}): make it without \
             reaching the service (connect lazily), so that every operation can be checked"
        ),
        Ok(Ok(b)) => b,
    };
    let (s, w, c) = (id("s"), id("w"), id("c"));
    let (srv, config) = (server("srv"), PoolConfig::default());
    let record = sample_record("srv", 1);
    let b = &*backend;
    type Op<'a> = futures::future::BoxFuture<'a, Result<(), BackendError>>;
    let ops: Vec<(&str, Op<'_>)> = vec![
        (
            "put_config",
            Box::pin(async { b.put_config(&srv, &config).await.map(drop) }),
        ),
        (
            "get_config",
            Box::pin(async { b.get_config(&srv).await.map(drop) }),
        ),
        (
            "list_configs",
            Box::pin(async { b.list_configs().await.map(drop) }),
        ),
        (
            "delete_config",
            Box::pin(async { b.delete_config(&srv).await.map(drop) }),
        ),
        (
            "watch_configs",
            Box::pin(async { b.watch_configs().await.map(drop) }),
        ),
        (
            "put_server",
            Box::pin(async { b.put_server(&record).await.map(drop) }),
        ),
        (
            "get_server",
            Box::pin(async { b.get_server(&srv).await.map(drop) }),
        ),
        (
            "list_servers",
            Box::pin(async { b.list_servers().await.map(drop) }),
        ),
        (
            "delete_server",
            Box::pin(async { b.delete_server(&srv).await.map(drop) }),
        ),
        (
            "watch_servers",
            Box::pin(async { b.watch_servers().await.map(drop) }),
        ),
        (
            "claim",
            Box::pin(async { b.claim(&s, &w, LONG_TTL).await.map(drop) }),
        ),
        (
            "refresh",
            Box::pin(async { b.refresh(&s, &w, LONG_TTL).await.map(drop) }),
        ),
        (
            "release",
            Box::pin(async { b.release(&s, &w).await.map(drop) }),
        ),
        ("owner", Box::pin(async { b.owner(&s).await.map(drop) })),
        ("heartbeat", Box::pin(b.heartbeat(&w, LONG_TTL))),
        (
            "is_alive",
            Box::pin(async { b.is_alive(&w).await.map(drop) }),
        ),
        (
            "try_acquire_slot",
            Box::pin(async { b.try_acquire_slot(&c, &s, 1, LONG_TTL).await.map(drop) }),
        ),
        (
            "release_slot",
            Box::pin(async { b.release_slot(&c, &s).await.map(drop) }),
        ),
        (
            "slot_count",
            Box::pin(async { b.slot_count(&c).await.map(drop) }),
        ),
        ("publish", Box::pin(b.publish(&c, b"x"))),
        (
            "subscribe",
            Box::pin(async { b.subscribe(&c).await.map(drop) }),
        ),
    ];
    let results = join_all(
        ops.into_iter()
            .map(|(name, op)| async move { (name, timeout(bound, op).await) }),
    )
    .await;
    for (name, r) in results {
        match r {
            Err(_) => panic!("{name} on an unreachable backend did not answer within {bound:?}"),
            Ok(Err(BackendError::Unavailable { .. })) => {}
            Ok(Err(e)) => panic!("{name} on an unreachable backend must be Unavailable, got {e}"),
            Ok(Ok(())) => panic!("{name} on an unreachable backend succeeded"),
        }
    }
    assert!(
        started.elapsed() < bound * 2,
        "the unreachable backend took {:?}",
        started.elapsed()
    );
}

/// Emits one `#[tokio::test]` per check of the [`StateBackend`] suite, in a module.
///
/// ```ignore
/// mcp_pool_conformance::backend_conformance! {
///     // The module the tests go into.
///     name: redis,
///     // Optional: skip (print why, pass) unless this variable is set, and bind its value. With
///     // MCP_POOL_REQUIRE_SERVICES=1 a missing variable fails the tests instead.
///     service: url = "MCP_POOL_TEST_REDIS_URL",
///     // A `BackendFactory`: evaluated once per test; called with a fresh namespace per
///     // instance. Items of the enclosing module are in scope.
///     factory: move |ns| {
///         let url = url.clone();
///         async move { RedisBackend::connect(RedisConfig::new(url).namespace(ns)).await.map(Arc::new) }
///     },
///     // Optional capability: a factory for an instance whose service is at `addr` (the suite
///     // passes a port that refuses connections, then a server that accepts and never
///     // answers), and the bound within which each operation must fail with
///     // `BackendError::Unavailable`. It must not connect eagerly (see `check_unreachable`).
///     unreachable: |ns, addr| async move { ... }, within: Duration::from_secs(3),
/// }
/// ```
///
/// The tests run on a multi-threaded tokio runtime: the crate using the macro needs `tokio`
/// with the `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! backend_conformance {
    (
        name: $name:ident,
        $(service: $var:ident = $env:expr,)?
        factory: $factory:expr
        $(, unreachable: $unreachable:expr, within: $bound:expr)?
        $(,)?
    ) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) config_round_trip check_config_round_trip);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) config_change_notified check_config_change_notified);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) config_versions check_config_versions);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) config_versions_under_contention check_config_versions_under_contention);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) server_records check_server_records);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) server_change_notified check_server_change_notified);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) claim_first_writer_wins check_claim_first_writer_wins);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) refresh_and_release_only_by_owner check_refresh_and_release_only_by_owner);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) claim_expiry check_claim_expiry);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) heartbeats check_heartbeats);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) dead_owner_reclaimed check_dead_owner_reclaimed);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) live_owner_never_stolen check_live_owner_never_stolen);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) slot_limit_under_contention check_slot_limit_under_contention);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) slots_expire check_slots_expire);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) publish_subscribe check_publish_subscribe);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) namespace_isolation check_namespace_isolation);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) ids_differing_only_in_case check_ids_differing_only_in_case);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) concurrent_writers_reach_every_watcher check_concurrent_writers_reach_every_watcher);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) streams_end_when_dropped check_streams_end_when_dropped);
            $crate::backend_conformance!(@test [$($var = $env)?] ($factory) claim_fine_print check_claim_fine_print);

            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn unreachable_refused() {
                    let unreachable = $unreachable;
                    let addr = $crate::backend::refused_addr().await;
                    let factory = move |ns| unreachable(ns, addr);
                    $crate::backend::check_unreachable(&factory, $bound).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn unreachable_silent() {
                    let unreachable = $unreachable;
                    let silent = $crate::backend::SilentServer::start().await;
                    let addr = silent.addr();
                    let factory = move |ns| unreachable(ns, addr);
                    $crate::backend::check_unreachable(&factory, $bound).await;
                }
            )?
        }
    };
    (@test [$($var:ident = $env:expr)?] ($factory:expr) $test:ident $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $(
                let Some($var) = $crate::backend::service_url($env) else {
                    return;
                };
            )?
            let factory = $factory;
            $crate::backend::$check(&factory).await;
        }
    };
}
