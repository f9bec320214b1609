//! [`FaultyWatch`]: a [`StateBackend`] wrapper that injects the faults a config watcher must
//! survive — a subscription that ends, one that goes silent without ending (a half-open
//! connection), a stale re-list, a late duplicate notification — for tests of
//! [`Pool`](mcp_pool::Pool)'s saved-config watcher over any real backend.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use mcp_pool_traits::{
    BackendError, Claim, ConfigChange, PoolConfig, SavedConfig, SavedServer, ServerChange,
    ServerId, ServerRecord, StateBackend, StateId,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::SIGNAL_TIMEOUT;

/// Passes every call to the backend it wraps, except that the test controls what
/// [`watch_configs`](StateBackend::watch_configs) streams and
/// [`list_configs`](StateBackend::list_configs) return.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use mcp_pool_backends::MemoryBackend;
/// use mcp_pool_conformance::faulty_watch::FaultyWatch;
/// use mcp_pool_traits::StateBackend;
///
/// let backend = FaultyWatch::new(Arc::new(MemoryBackend::new()));
/// let mut changes = backend.watch_configs().await.unwrap();
/// backend.cut(); // the subscription ends, as when its connection breaks
/// assert!(futures::StreamExt::next(&mut changes).await.is_none());
/// # });
/// ```
#[derive(Debug)]
pub struct FaultyWatch {
    inner: Arc<dyn StateBackend>,
    state: Mutex<State>,
    /// How many subscriptions have been polled at least once.
    followed: watch::Sender<usize>,
}

#[derive(Debug)]
struct State {
    half_open: bool,
    /// Cancelled by [`FaultyWatch::cut`], then replaced.
    cut: CancellationToken,
    frozen: Option<Vec<ConfigChange>>,
    injectors: Vec<mpsc::UnboundedSender<ConfigChange>>,
    subscriptions: usize,
}

impl FaultyWatch {
    /// A wrapper on `inner` that injects nothing until told to.
    pub fn new(inner: Arc<dyn StateBackend>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            state: Mutex::new(State {
                half_open: false,
                cut: CancellationToken::new(),
                frozen: None,
                injectors: Vec::new(),
                subscriptions: 0,
            }),
            followed: watch::channel(0).0,
        })
    }

    /// Ends every stream handed out so far, as a broken connection does.
    pub fn cut(&self) {
        let mut state = self.state.lock();
        state.cut.cancel();
        state.cut = CancellationToken::new();
        state.injectors.clear();
    }

    /// From now on (`true`), `watch_configs` succeeds but hands out a stream that never yields
    /// and never ends: the subscription of a connection that died half-open.
    pub fn set_half_open(&self, half_open: bool) {
        self.state.lock().half_open = half_open;
    }

    /// Captures what the wrapped backend lists now and returns that from every later
    /// `list_configs` until [`thaw_list`](Self::thaw_list): a stale read.
    ///
    /// # Panics
    /// When the wrapped backend fails to list.
    pub async fn freeze_list(&self) {
        let listed = self
            .inner
            .list_configs()
            .await
            .unwrap_or_else(|e| panic!("list_configs failed: {e}"));
        self.state.lock().frozen = Some(listed);
    }

    /// `list_configs` reads the wrapped backend again.
    pub fn thaw_list(&self) {
        self.state.lock().frozen = None;
    }

    /// Delivers `change` on every live stream (not half-open, not cut) before anything the
    /// wrapped backend sends: a late or duplicate notification. Nothing is stored.
    pub fn inject(&self, change: ConfigChange) {
        self.state
            .lock()
            .injectors
            .retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// How many times `watch_configs` succeeded.
    pub fn subscriptions(&self) -> usize {
        self.state.lock().subscriptions
    }

    /// Waits until `n` subscriptions have been read from at least once: a watcher that
    /// subscribes, lists and applies what is stored, then reads its stream, has applied its
    /// list by then.
    ///
    /// # Panics
    /// When that does not happen within [`SIGNAL_TIMEOUT`].
    pub async fn until_following(&self, n: usize) {
        let mut followed = self.followed.subscribe();
        let reached = tokio::time::timeout(SIGNAL_TIMEOUT, followed.wait_for(|&k| k >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "no watcher followed subscription {n} within {SIGNAL_TIMEOUT:?} ({} did)",
            *self.followed.borrow()
        );
    }
}

/// A stream handed out by [`FaultyWatch::watch_configs`].
struct Faulty {
    inner: BoxStream<'static, ConfigChange>,
    injected: mpsc::UnboundedReceiver<ConfigChange>,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    followed: Option<watch::Sender<usize>>,
}

impl futures::Stream for Faulty {
    type Item = ConfigChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConfigChange>> {
        if let Some(followed) = self.followed.take() {
            followed.send_modify(|n| *n += 1);
        }
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(Some(change)) = self.injected.poll_recv(cx) {
            return Poll::Ready(Some(change));
        }
        self.inner.poll_next_unpin(cx)
    }
}

#[mcp_pool_traits::async_trait]
impl StateBackend for FaultyWatch {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn put_config(
        &self,
        server: &ServerId,
        config: &PoolConfig,
    ) -> Result<u64, BackendError> {
        self.inner.put_config(server, config).await
    }

    async fn get_config(&self, server: &ServerId) -> Result<Option<SavedConfig>, BackendError> {
        self.inner.get_config(server).await
    }

    async fn list_configs(&self) -> Result<Vec<ConfigChange>, BackendError> {
        let frozen = self.state.lock().frozen.clone();
        match frozen {
            Some(listed) => Ok(listed),
            None => self.inner.list_configs().await,
        }
    }

    async fn delete_config(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        self.inner.delete_config(server).await
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<u64, BackendError> {
        self.inner.put_server(record).await
    }

    async fn get_server(&self, server: &ServerId) -> Result<Option<SavedServer>, BackendError> {
        self.inner.get_server(server).await
    }

    async fn list_servers(&self) -> Result<Vec<ServerChange>, BackendError> {
        self.inner.list_servers().await
    }

    async fn delete_server(&self, server: &ServerId) -> Result<Option<u64>, BackendError> {
        self.inner.delete_server(server).await
    }

    async fn watch_servers(&self) -> Result<BoxStream<'static, ServerChange>, BackendError> {
        self.inner.watch_servers().await
    }

    async fn watch_configs(&self) -> Result<BoxStream<'static, ConfigChange>, BackendError> {
        let half_open = self.state.lock().half_open;
        let inner = if half_open {
            futures::stream::pending().boxed()
        } else {
            self.inner.watch_configs().await?
        };
        let (tx, injected) = mpsc::unbounded_channel();
        let mut state = self.state.lock();
        state.subscriptions += 1;
        if !half_open {
            state.injectors.push(tx);
        }
        Ok(Faulty {
            inner,
            injected,
            cut: Box::pin(state.cut.clone().cancelled_owned()),
            followed: Some(self.followed.clone()),
        }
        .boxed())
    }

    async fn claim(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<Claim, BackendError> {
        self.inner.claim(session, owner, ttl).await
    }

    async fn refresh(
        &self,
        session: &StateId,
        owner: &StateId,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.refresh(session, owner, ttl).await
    }

    async fn release(&self, session: &StateId, owner: &StateId) -> Result<bool, BackendError> {
        self.inner.release(session, owner).await
    }

    async fn owner(&self, session: &StateId) -> Result<Option<StateId>, BackendError> {
        self.inner.owner(session).await
    }

    async fn heartbeat(&self, worker: &StateId, ttl: Duration) -> Result<(), BackendError> {
        self.inner.heartbeat(worker, ttl).await
    }

    async fn is_alive(&self, worker: &StateId) -> Result<bool, BackendError> {
        self.inner.is_alive(worker).await
    }

    async fn try_acquire_slot(
        &self,
        counter: &StateId,
        slot: &StateId,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.try_acquire_slot(counter, slot, limit, ttl).await
    }

    async fn release_slot(&self, counter: &StateId, slot: &StateId) -> Result<bool, BackendError> {
        self.inner.release_slot(counter, slot).await
    }

    async fn slot_count(&self, counter: &StateId) -> Result<u32, BackendError> {
        self.inner.slot_count(counter).await
    }

    async fn publish(&self, channel: &StateId, payload: &[u8]) -> Result<(), BackendError> {
        self.inner.publish(channel, payload).await
    }

    async fn subscribe(
        &self,
        channel: &StateId,
    ) -> Result<BoxStream<'static, Vec<u8>>, BackendError> {
        self.inner.subscribe(channel).await
    }
}
