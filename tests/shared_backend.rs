//! Pools sharing a state backend: a config saved through one is applied by the others without
//! a restart, the user limit spans workers, and a backend outage touches only these shared
//! features (local pooling keeps working; they recover by themselves).

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use mcp_pool::{
    DEFAULT_CLEANUP_INTERVAL, Endpoint, Pool, PoolConfig, PoolError, Principal, ServerConfig,
    ServerId, StateBackend, TransportKind,
};
use mcp_pool_backends::{
    DatabaseBackend, DatabaseConfig, MemoryBackend, RedisBackend, RedisConfig,
};
use mcp_pool_conformance::{
    ReferenceServer,
    backend::{fresh_namespace, service_url},
    faulty_watch::FaultyWatch,
    redis_process::{spare_port, start_redis},
};
use mcp_pool_traits::ConfigChange;

const WAIT: Duration = Duration::from_secs(10);

fn pool_on(
    upstream: &ReferenceServer,
    backend: Arc<dyn StateBackend>,
    user_limit: u32,
) -> (Pool, ServerId) {
    http_pool_with(
        upstream,
        pooled(4),
        Pool::builder().backend(backend).user_limit(user_limit),
    )
}

/// Waits until `pool` has `server` at `max_size`, woken by each applied configuration change.
async fn until_max_size(pool: &Pool, server: &ServerId, max_size: u32) {
    let mut changes = pool.config_changes();
    tokio::time::timeout(WAIT, async {
        while pool.server_config(server).unwrap().max_size != max_size {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("max_size never became {max_size}"));
}

fn config(max_size: u32) -> PoolConfig {
    PoolConfig {
        max_size,
        size: max_size.min(5),
        ..PoolConfig::enabled()
    }
}

#[tokio::test]
async fn a_saved_config_reaches_every_pool_sharing_the_backend() {
    let upstream = ReferenceServer::start().await.unwrap();
    let shared: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (a, id) = pool_on(&upstream, shared.clone(), 10);
    let (b, _) = pool_on(&upstream, shared.clone(), 10);
    a.save_pool_config(&id, config(7)).await.unwrap();
    assert_eq!(a.server_config(&id).unwrap().max_size, 7);
    until_max_size(&b, &id, 7).await;

    // A pool started later applies what is saved.
    let (c, _) = pool_on(&upstream, shared.clone(), 10);
    until_max_size(&c, &id, 7).await;

    // Deleting the saved config reverts every pool to the configuration it was built with.
    assert!(a.delete_saved_pool_config(&id).await.unwrap());
    until_max_size(&b, &id, 4).await;
    until_max_size(&c, &id, 4).await;

    let bad = PoolConfig {
        max_size: 0,
        ..config(1)
    };
    assert!(matches!(
        a.save_pool_config(&id, bad).await,
        Err(PoolError::Config(_))
    ));
    assert!(
        shared.get_config(&id).await.unwrap().is_none(),
        "nothing invalid is saved"
    );
}

async fn redis(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::new(url).namespace(fresh_namespace());
    Arc::new(RedisBackend::connect(config).await.unwrap())
}

#[tokio::test]
async fn over_redis_configs_and_the_user_limit_span_workers() {
    let Some(url) = service_url("MCP_POOL_TEST_REDIS_URL") else {
        return;
    };
    let upstream = ReferenceServer::start().await.unwrap();
    let namespace = fresh_namespace();
    let connect = || {
        let config = RedisConfig::new(url.clone()).namespace(namespace.clone());
        async move { Arc::new(RedisBackend::connect(config).await.unwrap()) as Arc<dyn StateBackend> }
    };
    let (a, id) = pool_on(&upstream, connect().await, 2);
    let (b, _) = pool_on(&upstream, connect().await, 2);

    a.save_pool_config(&id, config(6)).await.unwrap();
    until_max_size(&b, &id, 6).await;

    // Alice holds two sessions on worker a: worker b may not open a third.
    let alice = Principal::user("alice");
    let held = [
        a.acquire(&id, alice).await.unwrap(),
        a.acquire(&id, alice).await.unwrap(),
    ];
    let error = b.acquire(&id, alice).await.unwrap_err();
    assert!(
        matches!(error, PoolError::UserLimit { limit: 2, .. }),
        "{error}"
    );
    assert!(
        b.acquire(&id, Principal::user("bob")).await.is_ok(),
        "bob is not limited"
    );
    // When worker a closes them, the slots come back.
    drop(held);
    a.close().await;
    let lease = b.acquire(&id, alice).await.unwrap();
    assert!(!lease.is_hit());
}

#[tokio::test]
async fn a_redis_outage_stops_only_the_shared_features_and_they_recover() {
    let port = spare_port();
    let Some(mut redis_server) = start_redis(port).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let upstream = ReferenceServer::start().await.unwrap();
    let (a, id) = pool_on(&upstream, redis(&url).await, 10);
    let (b, _) = pool_on(&upstream, a.backend().clone(), 10);
    let user = Principal::user("u");
    let lease = a.acquire(&id, user).await.unwrap();
    lease.call_tool(echo("before")).await.unwrap();
    drop(lease);

    redis_server.kill().await.unwrap();
    redis_server.wait().await.unwrap();
    // Local pooling keeps working: hits and new sessions alike.
    let lease = a.acquire(&id, user).await.unwrap();
    assert!(lease.is_hit());
    assert_eq!(
        text(&lease.call_tool(echo("during")).await.unwrap()),
        "during"
    );
    let other = a.acquire(&id, Principal::user("other")).await.unwrap();
    assert!(!other.is_hit());
    drop((lease, other));
    // Shared features fail with a typed error, in bounded time.
    let error = tokio::time::timeout(WAIT, a.save_pool_config(&id, config(8)))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(error, PoolError::Backend(_)), "{error}");
    assert_eq!(a.server_config(&id).unwrap().max_size, 4, "nothing applied");

    let _redis_server = start_redis(port).await.expect("restarts");
    // The same pools, not restarted: saving works again and reaches the other pool.
    let saved = tokio::time::timeout(WAIT, async {
        loop {
            match a.save_pool_config(&id, config(8)).await {
                Ok(()) => break,
                Err(PoolError::Backend(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
    assert!(saved.is_ok(), "saving recovered");
    until_max_size(&b, &id, 8).await;
}

#[tokio::test]
async fn servers_added_in_code_and_their_saved_configs() {
    let upstream = ReferenceServer::start().await.unwrap();
    let shared: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let (a, id) = pool_on(&upstream, shared.clone(), 10);
    // A saved config for a server this pool does not know is ignored, not an error.
    let other = server_id("unknown-here");
    shared.put_config(&other, &config(3)).await.unwrap();
    a.add_server(ServerConfig::new(server_id("later"), upstream.endpoint()).pool(config(2)))
        .unwrap();
    assert!(matches!(
        a.save_pool_config(&other, config(3)).await,
        Err(PoolError::UnknownServer(_))
    ));
    assert_eq!(a.server_config(&id).unwrap().max_size, 4);
}

// Saved configs carry versions: a re-list or a late notification never reverts a newer config,
// and a silent subscription does not stop propagation.

/// A pool with one server, `watched`, whose endpoint is never connected to (these tests only
/// move configs), built with max_size 4.
fn config_pool(backend: Arc<dyn StateBackend>, cleanup_interval: Duration) -> (Pool, ServerId) {
    let id = server_id("watched");
    let endpoint = Endpoint::new("http://127.0.0.1:9/mcp", TransportKind::StreamableHttp).unwrap();
    let pool = Pool::builder()
        .backend(backend)
        .cleanup_interval(cleanup_interval)
        .server(ServerConfig::new(id.clone(), endpoint).pool(pooled(4)))
        .build()
        .unwrap();
    (pool, id)
}

/// Two instances of one backend on one fresh namespace: `a` behind a [`FaultyWatch`], `b`
/// plain. `None` (with the reason printed) when the service is not configured.
async fn backends(kind: &str) -> Option<(Arc<FaultyWatch>, Arc<dyn StateBackend>)> {
    let ns = fresh_namespace();
    let (a, b): (Arc<dyn StateBackend>, Arc<dyn StateBackend>) = match kind {
        "memory" => {
            let store = MemoryBackend::new().with_namespace(ns);
            (Arc::new(store.clone()), Arc::new(store))
        }
        "redis" => {
            let url = service_url("MCP_POOL_TEST_REDIS_URL")?;
            let connect = || RedisBackend::connect(RedisConfig::new(&url).namespace(ns.clone()));
            (
                Arc::new(connect().await.unwrap()),
                Arc::new(connect().await.unwrap()),
            )
        }
        "postgres" => {
            let url = service_url("MCP_POOL_TEST_DATABASE_URL")?;
            let connect =
                || DatabaseBackend::connect(DatabaseConfig::new(&url).namespace(ns.clone()));
            (
                Arc::new(connect().await.unwrap()),
                Arc::new(connect().await.unwrap()),
            )
        }
        other => unreachable!("no backend {other}"),
    };
    Some((FaultyWatch::new(a), b))
}

/// A saves 5 then 6; A's watcher resubscribes and re-lists a stale read (5): A keeps 6. A then
/// sets 7 locally (not saved); a resubscribe re-lists the saved 6: A keeps 7, since nothing
/// newer was saved. A save by B (8) then overrides the local set.
async fn a_resubscribe_never_reverts_a_newer_config(kind: &str) {
    let Some((faulty, plain)) = backends(kind).await else {
        return;
    };
    let (a, id) = config_pool(faulty.clone(), DEFAULT_CLEANUP_INTERVAL);
    let (b, _) = config_pool(plain, DEFAULT_CLEANUP_INTERVAL);
    faulty.until_following(1).await;

    a.save_pool_config(&id, config(5)).await.unwrap();
    faulty.freeze_list().await;
    a.save_pool_config(&id, config(6)).await.unwrap();
    until_max_size(&b, &id, 6).await;
    faulty.cut();
    faulty.until_following(2).await;
    assert_eq!(
        a.server_config(&id).unwrap().max_size,
        6,
        "{kind}: a stale re-list after a resubscribe reverted a newer saved config"
    );
    faulty.thaw_list();

    a.set_pool_config(&id, config(7)).unwrap();
    faulty.cut();
    faulty.until_following(3).await;
    assert_eq!(
        a.server_config(&id).unwrap().max_size,
        7,
        "{kind}: a re-list of a saved config already applied undid a newer local set"
    );
    b.save_pool_config(&id, config(8)).await.unwrap();
    until_max_size(&a, &id, 8).await;
}

/// A saves 5 then 6, then a late duplicate of the notification of 5 arrives, followed by B's
/// save of 9: A goes from 6 straight to 9 (one applied change), never back to 5.
async fn a_late_notification_never_reverts_a_local_save(kind: &str) {
    let Some((faulty, plain)) = backends(kind).await else {
        return;
    };
    let (a, id) = config_pool(faulty.clone(), DEFAULT_CLEANUP_INTERVAL);
    let (b, _) = config_pool(plain, DEFAULT_CLEANUP_INTERVAL);
    faulty.until_following(1).await;

    a.save_pool_config(&id, config(5)).await.unwrap();
    let first = faulty.get_config(&id).await.unwrap().unwrap();
    a.save_pool_config(&id, config(6)).await.unwrap();
    until_max_size(&b, &id, 6).await;
    let applied_before = *a.config_changes().borrow();
    // Delivered before anything the backend sends after it.
    faulty.inject(ConfigChange {
        server: id.clone(),
        config: Some(first.config),
        version: first.version,
    });
    b.save_pool_config(&id, config(9)).await.unwrap();
    until_max_size(&a, &id, 9).await;
    assert_eq!(
        *a.config_changes().borrow(),
        applied_before + 1,
        "{kind}: the late notification of an older save was applied (a reverted to it)"
    );
}

#[tokio::test]
async fn a_resubscribe_never_reverts_a_newer_config_memory() {
    a_resubscribe_never_reverts_a_newer_config("memory").await;
}

#[tokio::test]
async fn a_resubscribe_never_reverts_a_newer_config_redis() {
    a_resubscribe_never_reverts_a_newer_config("redis").await;
}

#[tokio::test]
async fn a_resubscribe_never_reverts_a_newer_config_postgres() {
    a_resubscribe_never_reverts_a_newer_config("postgres").await;
}

#[tokio::test]
async fn a_late_notification_never_reverts_a_local_save_memory() {
    a_late_notification_never_reverts_a_local_save("memory").await;
}

#[tokio::test]
async fn a_late_notification_never_reverts_a_local_save_redis() {
    a_late_notification_never_reverts_a_local_save("redis").await;
}

#[tokio::test]
async fn a_late_notification_never_reverts_a_local_save_postgres() {
    a_late_notification_never_reverts_a_local_save("postgres").await;
}

/// A's subscription is half-open from the start (it never yields and never ends): B's save
/// still reaches A within one cleanup_interval of being made, by the periodic re-list.
#[tokio::test(start_paused = true)]
async fn a_silent_subscription_still_gets_saved_changes_within_one_cleanup_interval() {
    const CLEANUP: Duration = Duration::from_secs(30);
    let store = MemoryBackend::new();
    let faulty = FaultyWatch::new(Arc::new(store.clone()));
    faulty.set_half_open(true);
    let (a, id) = config_pool(faulty.clone(), CLEANUP);
    let (b, _) = config_pool(Arc::new(store), CLEANUP);
    faulty.until_following(1).await;
    // Save a third into A's re-list period, so the bound below does not coincide with a tick.
    tokio::time::advance(CLEANUP / 3).await;

    let mut changes = a.config_changes();
    b.save_pool_config(&id, config(7)).await.unwrap();
    let saved_at = tokio::time::Instant::now();
    let applied = tokio::time::timeout(CLEANUP, async {
        while a.server_config(&id).unwrap().max_size != 7 {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        applied.is_ok(),
        "a saved change did not reach a pool with a silent subscription within one \
         cleanup_interval ({CLEANUP:?})"
    );
    assert!(saved_at.elapsed() <= CLEANUP);

    // A deletion too, and a purely local set in between is overridden only by it.
    a.set_pool_config(&id, config(3)).unwrap();
    let mut changes = a.config_changes();
    b.delete_saved_pool_config(&id).await.unwrap();
    let reverted = tokio::time::timeout(CLEANUP, async {
        while a.server_config(&id).unwrap().max_size != 4 {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        reverted.is_ok(),
        "a deletion did not reach a pool with a silent subscription within one cleanup_interval"
    );
}
