//! [`CountingSessionManager`]: rmcp's `LocalSessionManager`, counting sessions as they open and
//! close.

use std::sync::Arc;

use futures::Stream;
use rmcp::{
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
    transport::streamable_http_server::session::{
        ServerSseMessage, SessionId, SessionManager,
        local::{LocalSessionManager, LocalSessionManagerError},
    },
};

use super::{options::ServerOptions, stats::Counters};

/// Delegates to a [`LocalSessionManager`] and keeps `sessions_opened` / `sessions_alive` exact.
///
/// A session is alive exactly while it is in the local manager's session map: it enters on
/// `initialize` and leaves on `DELETE`, when its worker ends (idle timeout, server shutdown),
/// or on [`expire_all`](Self::expire_all). Whoever removes the entry from the map counts the
/// session as closed, so a session closed twice (a `DELETE`, then its worker ending) is counted
/// once.
#[derive(Debug)]
pub(crate) struct CountingSessionManager {
    inner: LocalSessionManager,
    counters: Arc<Counters>,
}

impl CountingSessionManager {
    pub(crate) fn new(counters: Arc<Counters>, options: &ServerOptions) -> Self {
        let mut inner = LocalSessionManager::default();
        // The session layer sends its own priming events on request streams.
        inner.session_config.sse_retry = options.sse_retry;
        inner.session_config.keep_alive = options.session_idle_timeout;
        Self { inner, counters }
    }

    /// Removes and closes every session; returns how many there were.
    pub(crate) async fn expire_all(&self) -> usize {
        let handles: Vec<_> = self.inner.sessions.write().await.drain().collect();
        self.counters.sessions_closed(handles.len() as u64);
        for (_, handle) in &handles {
            // Err means the worker already ended: nothing left to close.
            let _ = handle.close().await;
        }
        handles.len()
    }
}

impl SessionManager for CountingSessionManager {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let created = self.inner.create_session().await?;
        self.counters.session_opened();
        Ok(created)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        // What LocalSessionManager::close_session does, plus counting when the entry was there.
        let handle = self.inner.sessions.write().await.remove(id);
        if let Some(handle) = handle {
            self.counters.sessions_closed(1);
            // Err means the worker already ended: nothing left to close.
            let _ = handle.close().await;
        }
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }
}
