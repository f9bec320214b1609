//! Fault tolerance of the Redis backend against a redis-server this test starts on a spare
//! loopback port: while it is stopped every operation fails with a typed error within the
//! operation timeout; once it is back, the same backend instance works again.
#![cfg(feature = "redis")]

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use mcp_pool_backends::{RedisBackend, RedisConfig};
use mcp_pool_conformance::{
    backend::{LONG_TTL, SIGNAL_TIMEOUT, fresh_namespace},
    redis_process::{spare_port, start_redis},
};
use mcp_pool_traits::{BackendError, Claim, StateBackend, StateId};
use tokio::time::{Instant, timeout};

const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// An operation against a stopped Redis must have failed by then: the operation timeout plus
/// scheduling slack.
const BOUND: Duration = Duration::from_millis(1500);

fn id(s: &str) -> StateId {
    StateId::new(s).unwrap()
}

async fn assert_unavailable<T>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, BackendError>>,
) {
    let started = Instant::now();
    let outcome = timeout(BOUND * 2, op).await.map(|r| r.map(|_| "a value"));
    let elapsed = started.elapsed();
    match outcome {
        Ok(Err(BackendError::Unavailable { backend, .. })) => assert_eq!(backend, "redis"),
        other => panic!("{what} with Redis stopped: expected Unavailable, got {other:?}"),
    }
    assert!(
        elapsed <= BOUND,
        "{what} took {elapsed:?} to fail, more than {BOUND:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_typed_while_redis_is_down_and_recover_after() {
    let port = spare_port();
    let Some(mut server) = start_redis(port).await else {
        return;
    };
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}"))
        .namespace(fresh_namespace())
        .operation_timeout(OP_TIMEOUT);
    let backend = Arc::new(RedisBackend::connect(config).await.unwrap());
    let (session, worker, counter) = (id("s"), id("w"), id("c"));
    backend.heartbeat(&worker, LONG_TTL).await.unwrap();
    assert_eq!(
        backend.claim(&session, &worker, LONG_TTL).await.unwrap(),
        Claim::Won
    );
    let mut messages = backend.subscribe(&worker).await.unwrap();
    let mut changes = backend.watch_configs().await.unwrap();

    server.kill().await.unwrap();
    server.wait().await.unwrap();

    assert_unavailable("claim", backend.claim(&session, &worker, LONG_TTL)).await;
    assert_unavailable("owner", backend.owner(&session)).await;
    assert_unavailable("heartbeat", backend.heartbeat(&worker, LONG_TTL)).await;
    assert_unavailable(
        "try_acquire_slot",
        backend.try_acquire_slot(&counter, &worker, 3, LONG_TTL),
    )
    .await;
    assert_unavailable("publish", backend.publish(&worker, b"x")).await;
    assert_unavailable("subscribe", backend.subscribe(&worker)).await;
    assert_unavailable("list_configs", backend.list_configs()).await;
    assert_unavailable("ping", backend.ping()).await;
    // Streams end when their connection breaks, so their owners know to subscribe again.
    assert_eq!(
        timeout(SIGNAL_TIMEOUT, messages.next()).await,
        Ok(None),
        "a subscription must end when Redis goes away"
    );
    assert!(
        matches!(timeout(SIGNAL_TIMEOUT, changes.next()).await, Ok(None)),
        "a config watch must end when Redis goes away"
    );

    let _server = start_redis(port)
        .await
        .expect("redis-server started before");
    // The same instance recovers by itself: the connection manager reconnects.
    let recovered = timeout(Duration::from_secs(10), async {
        loop {
            match backend.ping().await {
                Ok(()) => break,
                Err(BackendError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("unexpected error while Redis restarts: {e}"),
            }
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the backend did not reconnect within 10 s"
    );

    // The restarted Redis kept nothing (no persistence): the state starts over, and works.
    backend.heartbeat(&worker, LONG_TTL).await.unwrap();
    assert_eq!(backend.owner(&session).await.unwrap(), None);
    assert_eq!(
        backend.claim(&session, &worker, LONG_TTL).await.unwrap(),
        Claim::Won
    );
    assert!(
        backend
            .try_acquire_slot(&counter, &worker, 3, LONG_TTL)
            .await
            .unwrap()
    );
    let mut messages = backend.subscribe(&worker).await.unwrap();
    backend.publish(&worker, b"back").await.unwrap();
    assert_eq!(
        timeout(SIGNAL_TIMEOUT, messages.next()).await,
        Ok(Some(b"back".to_vec()))
    );
}
