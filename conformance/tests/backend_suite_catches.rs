//! The backend suite fails the broken backends a third-party implementer can write and that
//! passed it before: one on a case-insensitive store, one whose streams
//! outlive it, one that accepts a TTL of 0, one that loses notifications under concurrent
//! writers, one whose factory connects eagerly, and one that hangs on a silent server. Each is
//! the memory backend with one flaw; each test asserts the check that must catch it and prints
//! what the suite says.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use mcp_pool_backends::MemoryBackend;
use mcp_pool_conformance::backend::{
    check_claim_fine_print, check_concurrent_writers_reach_every_watcher,
    check_ids_differing_only_in_case, check_streams_end_when_dropped, check_unreachable,
};
use mcp_pool_traits::{
    BackendError, Claim, ConfigChange, PoolConfig, SavedConfig, SavedServer, ServerChange,
    ServerId, ServerRecord, StateBackend, StateId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Ids are folded to lower case, as a case-insensitive collation compares them.
    FoldsCase,
    /// Streams come from a handle that outlives the instance.
    ImmortalStreams,
    /// A TTL of 0 is taken as 1 ms instead of refused.
    AcceptsZeroTtl,
    /// Every other config change is not delivered.
    LosesNotifications,
    /// Every operation waits forever.
    Hangs,
}

#[derive(Debug)]
struct Flawed {
    inner: MemoryBackend,
    /// A handle on the same namespace that is never dropped.
    keeper: MemoryBackend,
    flaw: Flaw,
}

impl Flawed {
    fn fold(&self, id: &StateId) -> StateId {
        match self.flaw {
            Flaw::FoldsCase => StateId::new(id.as_str().to_lowercase()).unwrap(),
            _ => id.clone(),
        }
    }

    fn fold_server(&self, id: &ServerId) -> ServerId {
        match self.flaw {
            Flaw::FoldsCase => ServerId::new(id.as_str().to_lowercase()).unwrap(),
            _ => id.clone(),
        }
    }

    fn ttl(&self, ttl: Duration) -> Duration {
        match self.flaw {
            Flaw::AcceptsZeroTtl if ttl.is_zero() => Duration::from_millis(1),
            _ => ttl,
        }
    }

    async fn hang(&self) {
        if self.flaw == Flaw::Hangs {
            std::future::pending::<()>().await;
        }
    }

    fn streams(&self) -> &MemoryBackend {
        match self.flaw {
            Flaw::ImmortalStreams => &self.keeper,
            _ => &self.inner,
        }
    }
}

#[async_trait::async_trait]
impl StateBackend for Flawed {
    fn name(&self) -> &'static str {
        "flawed"
    }

    async fn put_config(&self, s: &ServerId, c: &PoolConfig) -> Result<u64, BackendError> {
        self.hang().await;
        self.inner.put_config(&self.fold_server(s), c).await
    }

    async fn get_config(&self, s: &ServerId) -> Result<Option<SavedConfig>, BackendError> {
        self.hang().await;
        self.inner.get_config(&self.fold_server(s)).await
    }

    async fn list_configs(&self) -> Result<Vec<ConfigChange>, BackendError> {
        self.hang().await;
        self.inner.list_configs().await
    }

    async fn delete_config(&self, s: &ServerId) -> Result<Option<u64>, BackendError> {
        self.hang().await;
        self.inner.delete_config(&self.fold_server(s)).await
    }

    async fn watch_configs(&self) -> Result<BoxStream<'static, ConfigChange>, BackendError> {
        self.hang().await;
        let stream = self.streams().watch_configs().await?;
        Ok(match self.flaw {
            Flaw::LosesNotifications => stream
                .filter(|c| std::future::ready(c.version % 2 == 0))
                .boxed(),
            _ => stream,
        })
    }

    async fn put_server(&self, r: &ServerRecord) -> Result<u64, BackendError> {
        self.hang().await;
        let mut r = r.clone();
        r.id = self.fold_server(&r.id);
        self.inner.put_server(&r).await
    }

    async fn get_server(&self, s: &ServerId) -> Result<Option<SavedServer>, BackendError> {
        self.hang().await;
        self.inner.get_server(&self.fold_server(s)).await
    }

    async fn list_servers(&self) -> Result<Vec<ServerChange>, BackendError> {
        self.hang().await;
        self.inner.list_servers().await
    }

    async fn delete_server(&self, s: &ServerId) -> Result<Option<u64>, BackendError> {
        self.hang().await;
        self.inner.delete_server(&self.fold_server(s)).await
    }

    async fn watch_servers(&self) -> Result<BoxStream<'static, ServerChange>, BackendError> {
        self.hang().await;
        self.streams().watch_servers().await
    }

    async fn claim(&self, s: &StateId, o: &StateId, ttl: Duration) -> Result<Claim, BackendError> {
        self.hang().await;
        self.inner
            .claim(&self.fold(s), &self.fold(o), self.ttl(ttl))
            .await
    }

    async fn refresh(&self, s: &StateId, o: &StateId, ttl: Duration) -> Result<bool, BackendError> {
        self.hang().await;
        self.inner
            .refresh(&self.fold(s), &self.fold(o), self.ttl(ttl))
            .await
    }

    async fn release(&self, s: &StateId, o: &StateId) -> Result<bool, BackendError> {
        self.hang().await;
        self.inner.release(&self.fold(s), &self.fold(o)).await
    }

    async fn owner(&self, s: &StateId) -> Result<Option<StateId>, BackendError> {
        self.hang().await;
        self.inner.owner(&self.fold(s)).await
    }

    async fn heartbeat(&self, w: &StateId, ttl: Duration) -> Result<(), BackendError> {
        self.hang().await;
        self.inner.heartbeat(&self.fold(w), self.ttl(ttl)).await
    }

    async fn is_alive(&self, w: &StateId) -> Result<bool, BackendError> {
        self.hang().await;
        self.inner.is_alive(&self.fold(w)).await
    }

    async fn try_acquire_slot(
        &self,
        c: &StateId,
        s: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.hang().await;
        self.inner
            .try_acquire_slot(&self.fold(c), &self.fold(s), limit, self.ttl(ttl))
            .await
    }

    async fn release_slot(&self, c: &StateId, s: &StateId) -> Result<bool, BackendError> {
        self.hang().await;
        self.inner.release_slot(&self.fold(c), &self.fold(s)).await
    }

    async fn slot_count(&self, c: &StateId) -> Result<u32, BackendError> {
        self.hang().await;
        self.inner.slot_count(&self.fold(c)).await
    }

    async fn publish(&self, c: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        self.hang().await;
        self.inner.publish(&self.fold(c), payload).await
    }

    async fn subscribe(&self, c: &StateId) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        self.hang().await;
        self.streams().subscribe(&self.fold(c)).await
    }
}

/// Instances of one store with `flaw`; namespaces as the suite asks.
fn factory(
    flaw: Flaw,
) -> impl Fn(StateId) -> BoxFuture<'static, Result<Arc<Flawed>, BackendError>> + Send + Sync + 'static
{
    let store = MemoryBackend::new();
    move |ns: StateId| {
        let (inner, keeper) = (store.with_namespace(ns.clone()), store.with_namespace(ns));
        // The keeper is leaked on purpose for the immortal-streams flaw: it never drops.
        let keeper = if flaw == Flaw::ImmortalStreams {
            Box::leak(Box::new(keeper.clone()));
            keeper
        } else {
            keeper
        };
        Box::pin(async move {
            Ok(Arc::new(Flawed {
                inner,
                keeper,
                flaw,
            }))
        })
    }
}

/// Runs a check that must panic; returns what it said.
async fn caught<Fut>(check: Fut) -> String
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let panic = tokio::spawn(check)
        .await
        .expect_err("the suite must fail this backend");
    let payload = panic.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    eprintln!("the suite says: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_insensitive_backend_fails_the_suite() {
    let f = factory(Flaw::FoldsCase);
    let message = caught(async move { check_ids_differing_only_in_case(&f).await }).await;
    assert!(message.contains("differing only in case"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_outlive_their_backend_fail_the_suite() {
    let f = factory(Flaw::ImmortalStreams);
    let message = caught(async move { check_streams_end_when_dropped(&f).await }).await;
    assert!(message.contains("did not end within"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_a_ttl_of_zero_fails_the_suite() {
    let f = factory(Flaw::AcceptsZeroTtl);
    let message = caught(async move { check_claim_fine_print(&f).await }).await;
    assert!(
        message.contains("with a TTL of 0 must be InvalidArgument"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_loses_notifications_fails_the_suite() {
    let f = factory(Flaw::LosesNotifications);
    let message =
        caught(async move { check_concurrent_writers_reach_every_watcher(&f).await }).await;
    assert!(
        message.contains("a change of a concurrent writer"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_connects_eagerly_fails_the_unreachable_check() {
    let eager = |_: StateId| async {
        Err::<Arc<MemoryBackend>, _>(BackendError::Unavailable {
            backend: "eager",
            message: "connection refused".into(),
        })
    };
    let message =
        caught(async move { check_unreachable(&eager, Duration::from_secs(1)).await }).await;
    assert!(message.contains("connect lazily"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_hangs_on_a_silent_server_fails_the_unreachable_check() {
    let f = factory(Flaw::Hangs);
    let message =
        caught(async move { check_unreachable(&f, Duration::from_millis(300)).await }).await;
    assert!(message.contains("did not answer within"), "{message}");
}
