//! Streams that end with the backend handle that made them (the trait's rule: "the stream ends
//! when the backend is dropped").

use std::sync::Arc;

use futures::{Stream, StreamExt, stream::BoxStream};
use tokio::sync::watch;

/// Shared by a backend handle and its clones; when the last of them is dropped, every stream
/// made through [`bound`](Self::bound) ends.
#[derive(Debug, Clone)]
pub(crate) struct HandleLifetime(Arc<watch::Sender<()>>);

impl HandleLifetime {
    pub(crate) fn new() -> Self {
        Self(Arc::new(watch::channel(()).0))
    }

    /// `stream`, ending when the handle is dropped (or when `stream` ends by itself).
    pub(crate) fn bound<S>(&self, stream: S) -> BoxStream<'static, S::Item>
    where
        S: Stream + Send + 'static,
    {
        let mut dropped = self.0.subscribe();
        // Nothing is ever sent: `changed` returns when the sender, the handle, is gone.
        stream
            .take_until(async move {
                let _ = dropped.changed().await;
            })
            .boxed()
    }
}
