//! Reading a `POST`'s event stream to its end, so that its keep-alive connection is reused.
//!
//! A streamable HTTP server may answer a request `POST` with an event stream that it ends after
//! the JSON-RPC response. rmcp 3.9's client stops reading that stream once the response has
//! arrived (`StreamableHttpClientWorker::execute_sse_stream` and `run_response_stream`):
//! - after the initialize response, at once (`expect_initialized`);
//! - under the `initialize` lifecycle (protocols up to 2025-11-25), when the worker has taken
//!   the response: it drops the request's cancellation registration, which cancels the token
//!   `run_response_stream` selects on first, and that aborts rmcp's own drain;
//! - under protocol 2026-07-28, 50 ms after the response (rmcp's bounded drain).
//!
//! A chunked response body dropped before its end cannot go back to reqwest's pool: hyper
//! closes the connection, and the next request opens (over TLS, handshakes) a new one. Whether
//! the end had arrived first is a race: a server whose stream end comes in a later write (the
//! Python SDK's when its event loop is busy) loses most of its connections.
//!
//! [`DrainOnDrop`] wraps such a stream: dropped before its end, it hands the rest to a
//! background task that reads it to its end, for at most [`RESPONSE_STREAM_DRAIN_TIME`] and
//! [`RESPONSE_STREAM_DRAIN_BYTES`], and then drops it (if unfinished, closing the connection as
//! before). The caller's result never waits for it.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt as _, stream::BoxStream};
use sse_stream::{Error as SseStreamError, Sse};

/// How long the rest of a `POST`'s event stream that rmcp stopped reading is still read, from
/// the moment it stopped, so that its connection can be reused. A server that keeps the stream
/// open longer (a call that was cancelled, a stream it never ends) has its connection closed
/// then, as without the drain.
pub const RESPONSE_STREAM_DRAIN_TIME: Duration = Duration::from_secs(1);

/// How many bytes of event data the drain reads at most from the rest of one `POST`'s event
/// stream (events are discarded as they come; each is bounded by rmcp's
/// `max_sse_event_size`). Past that, the connection is closed.
pub const RESPONSE_STREAM_DRAIN_BYTES: usize = 256 * 1024;

type Events = BoxStream<'static, Result<Sse, SseStreamError>>;

/// An event stream that, dropped before its end, is read to its end in the background (within
/// [`RESPONSE_STREAM_DRAIN_TIME`] and [`RESPONSE_STREAM_DRAIN_BYTES`]), so that its HTTP/1.1
/// connection returns to the pool. See the [module docs](self).
pub(crate) struct DrainOnDrop {
    /// `None` once the stream has ended (or failed): nothing left to read.
    events: Option<Events>,
}

impl DrainOnDrop {
    pub(crate) fn new(events: Events) -> Self {
        Self {
            events: Some(events),
        }
    }
}

impl std::fmt::Debug for DrainOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainOnDrop")
            .field("ended", &self.events.is_none())
            .finish()
    }
}

impl Stream for DrainOnDrop {
    type Item = Result<Sse, SseStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(events) = self.events.as_mut() else {
            return Poll::Ready(None);
        };
        let next = events.poll_next_unpin(cx);
        // Ended, or failed (the connection is not reusable then): nothing to drain.
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.events = None;
        }
        next
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        // Outside a runtime (a client dropped after its runtime), there is nothing to drain
        // on: the stream is dropped here, and its connection closed.
        if let Some(events) = self.events.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(drain(events));
        }
    }
}

/// Reads `events` to its end, within [`RESPONSE_STREAM_DRAIN_TIME`] and
/// [`RESPONSE_STREAM_DRAIN_BYTES`]; returns whether it ended.
async fn drain(mut events: Events) -> bool {
    let read_to_end = async {
        let mut read = 0;
        while let Some(event) = events.next().await {
            let Ok(event) = event else {
                return false;
            };
            read += event.data.as_ref().map_or(0, String::len);
            if read > RESPONSE_STREAM_DRAIN_BYTES {
                tracing::debug!(
                    "a response event stream sent over {RESPONSE_STREAM_DRAIN_BYTES} bytes \
                     after rmcp stopped reading it: closing its connection"
                );
                return false;
            }
        }
        true
    };
    let ended = tokio::time::timeout(RESPONSE_STREAM_DRAIN_TIME, read_to_end)
        .await
        .unwrap_or(false);
    if !ended {
        tracing::trace!("a response event stream did not end in time: closing its connection");
    }
    ended
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures::stream;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    fn event(data: &str) -> Sse {
        Sse {
            event: None,
            data: Some(data.to_owned()),
            id: None,
            retry: None,
        }
    }

    /// The events sent on the returned sender, as a stream that counts the events read from it
    /// and says when it is dropped.
    fn watched() -> (
        mpsc::UnboundedSender<Sse>,
        Events,
        Arc<AtomicUsize>,
        oneshot::Receiver<()>,
    ) {
        struct OnDrop(Option<oneshot::Sender<()>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if let Some(dropped) = self.0.take() {
                    let _ = dropped.send(());
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (dropped_tx, dropped) = oneshot::channel();
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let events = stream::unfold((rx, OnDrop(Some(dropped_tx))), move |(mut rx, guard)| {
            let counted = counted.clone();
            async move {
                let event = rx.recv().await?;
                counted.fetch_add(1, Ordering::Relaxed);
                Some((Ok(event), (rx, guard)))
            }
        });
        (tx, Box::pin(events), read, dropped)
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_end_is_read_to_its_end_in_the_background() {
        let (tx, events, read, dropped) = watched();
        let mut events = DrainOnDrop::new(events);
        tx.send(event("the response")).unwrap();
        assert!(events.next().await.is_some());
        drop(events);
        // The server ends the stream after the response and a last event.
        tx.send(event("after the response")).unwrap();
        drop(tx);
        dropped.await.unwrap();
        assert_eq!(read.load(Ordering::Relaxed), 2, "read to its end");
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_is_not_drained_again() {
        let (tx, events, _, dropped) = watched();
        let mut events = DrainOnDrop::new(events);
        drop(tx);
        assert!(events.next().await.is_none());
        // Ended: dropped with its end, not handed to a drain.
        dropped.await.unwrap();
        assert!(events.events.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_left_open_is_dropped_after_the_drain_time() {
        let (_tx, events, _, dropped) = watched();
        let start = tokio::time::Instant::now();
        drop(DrainOnDrop::new(events));
        dropped.await.unwrap();
        assert!(start.elapsed() >= RESPONSE_STREAM_DRAIN_TIME);
    }

    #[tokio::test]
    async fn a_drain_stops_past_its_byte_bound() {
        let chunk = "x".repeat(1024);
        let endless = stream::repeat_with(move || Ok(event(&chunk))).boxed();
        assert!(!drain(endless).await);
        assert!(drain(stream::iter([Ok(event("last"))]).boxed()).await);
    }

    #[test]
    fn outside_a_runtime_a_stream_is_just_dropped() {
        let (_tx, events, _, mut dropped) = watched();
        drop(DrainOnDrop::new(events));
        assert!(dropped.try_recv().is_ok());
    }
}
