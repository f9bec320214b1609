//! In-process delivery of record changes (configs, server records) and published messages,
//! for the backends whose instances share one process (memory, SQLite).

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use mcp_pool_traits::StateId;
use tokio::sync::broadcast;

use crate::records::{Change, Versioned};

/// Events buffered per receiver before a slow one is cut off (its stream ends; the trait tells
/// consumers to re-subscribe then).
const CAPACITY: usize = 1024;

#[derive(Debug)]
struct ChangeEvent {
    namespace: StateId,
    change: Change,
}

#[derive(Debug)]
struct MessageEvent {
    namespace: StateId,
    channel: StateId,
    payload: Vec<u8>,
}

/// Broadcasts record changes and messages to every in-process subscriber of a namespace.
#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    changes: broadcast::Sender<Arc<ChangeEvent>>,
    messages: broadcast::Sender<Arc<MessageEvent>>,
}

impl Fanout {
    pub(crate) fn new() -> Self {
        Self {
            changes: broadcast::channel(CAPACITY).0,
            messages: broadcast::channel(CAPACITY).0,
        }
    }

    pub(crate) fn send_change(&self, namespace: &StateId, change: Change) {
        // An error only means nobody listens.
        let _ = self.changes.send(Arc::new(ChangeEvent {
            namespace: namespace.clone(),
            change,
        }));
    }

    pub(crate) fn send_message(&self, namespace: &StateId, channel: &StateId, payload: &[u8]) {
        let _ = self.messages.send(Arc::new(MessageEvent {
            namespace: namespace.clone(),
            channel: channel.clone(),
            payload: payload.to_vec(),
        }));
    }

    /// Changes of kind `C` in `namespace` from now on. Ends when every sender is gone or this
    /// receiver fell more than [`CAPACITY`] events behind.
    pub(crate) fn watch<C: Versioned>(&self, namespace: &StateId) -> BoxStream<'static, C> {
        let namespace = namespace.clone();
        filtered(self.changes.subscribe(), move |ev: &ChangeEvent| {
            (ev.namespace == namespace)
                .then(|| C::unwrap(&ev.change))
                .flatten()
        })
    }

    /// Messages of `channel` in `namespace` from now on. Ends as [`watch`](Self::watch) does.
    pub(crate) fn subscribe(
        &self,
        namespace: &StateId,
        channel: &StateId,
    ) -> BoxStream<'static, Vec<u8>> {
        let (namespace, channel) = (namespace.clone(), channel.clone());
        filtered(self.messages.subscribe(), move |ev: &MessageEvent| {
            (ev.namespace == namespace && ev.channel == channel).then(|| ev.payload.clone())
        })
    }
}

fn filtered<E, T, F>(rx: broadcast::Receiver<Arc<E>>, pick: F) -> BoxStream<'static, T>
where
    E: Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(&E) -> Option<T> + Send + 'static,
{
    futures::stream::unfold((rx, pick), |(mut rx, pick)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(item) = pick(&ev) {
                        return Some((item, (rx, pick)));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "state backend subscriber fell behind; ending its stream"
                    );
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}
