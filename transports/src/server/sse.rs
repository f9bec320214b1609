//! Serves an rmcp server over the legacy HTTP+SSE transport of MCP 2024-11-05.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt, io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::{Stream, StreamExt as _, stream};
use rmcp::{
    ServerHandler,
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
};
use sse_stream::Sse as SseEvent;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::session::{SessionObserver, SessionRunner, attach_parts};

/// Who sent an HTTP request, as an [`SseServer`] compares it ([`SseServerConfig::with_owner`]):
/// computed from the request's parts (its headers, or an extension an authentication layer
/// put there), `None` for a request that names no one.
pub type SessionOwner = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// How an [`SseServer`] serves.
///
/// Defaults: the event stream at `/sse`, messages at `/message`, a keep-alive every 15 s, 64
/// messages buffered per direction and session, no owner check.
#[derive(Clone)]
#[non_exhaustive]
pub struct SseServerConfig {
    /// The path of the event stream (`GET`).
    pub sse_path: String,
    /// The path messages are POSTed to, announced in the `endpoint` event as
    /// `<message_path>?sessionId=<id>`. Relative to the server root: when the router is nested
    /// under a prefix, include the prefix here.
    pub message_path: String,
    /// How often an idle stream gets a keep-alive (an empty line, which clients ignore), so
    /// that proxies keep it open and a vanished client is noticed; `None` for none.
    pub keep_alive: Option<Duration>,
    /// Messages buffered per session and direction before the sender waits.
    pub channel_capacity: usize,
    /// Cancelled: every session ends (its stream ends) and new ones are refused with 503.
    pub shutdown: CancellationToken,
    /// Told when sessions open and end.
    pub observer: Option<Arc<dyn SessionObserver>>,
    /// Who may post to a session (see [`with_owner`](Self::with_owner)); `None`: whoever knows
    /// its id.
    pub owner: Option<Arc<SessionOwner>>,
}

impl fmt::Debug for SseServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseServerConfig")
            .field("sse_path", &self.sse_path)
            .field("message_path", &self.message_path)
            .field("keep_alive", &self.keep_alive)
            .field("channel_capacity", &self.channel_capacity)
            .field("observer", &self.observer.is_some())
            .field("owner", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for SseServerConfig {
    fn default() -> Self {
        Self {
            sse_path: "/sse".to_owned(),
            message_path: "/message".to_owned(),
            keep_alive: Some(Duration::from_secs(15)),
            channel_capacity: 64,
            shutdown: CancellationToken::new(),
            observer: None,
            owner: None,
        }
    }
}

impl SseServerConfig {
    /// The same config with the stream at `sse_path` and messages at `message_path`.
    pub fn with_paths(mut self, sse_path: &str, message_path: &str) -> Self {
        self.sse_path = sse_path.to_owned();
        self.message_path = message_path.to_owned();
        self
    }

    /// The same config with keep-alives every `interval` (`None`: none).
    pub fn with_keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// The same config ending every session when `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The same config telling `observer` of sessions opening and ending.
    pub fn with_observer(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The same config accepting the messages of a session only from the session's owner.
    ///
    /// Without it, whoever knows a session's id (it travels in URLs: proxy and access logs,
    /// a `Referer`) may post any message into the session; a `notifications/cancelled` of the
    /// owner's request in flight, for one. With it, `owner` is asked who sent the `GET` opening a
    /// session, and the answer is kept with the session; it is then asked who sent each `POST`
    /// to the session, and a `POST` whose answer differs (`Some` and `None` differ, two `None`s
    /// match) is answered as a `POST` to an unknown session is, `404` `no such session`, before
    /// its body is read: its message reaches no handler, and the answer does not tell that the
    /// session exists.
    ///
    /// `owner` runs on every `GET` and `POST`, outside any lock of the server. It typically
    /// returns the authenticated user: a claim an authentication layer put in the request's
    /// extensions, or a header that a trusted proxy in front of the server sets.
    pub fn with_owner<F>(mut self, owner: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.owner = Some(Arc::new(owner));
        self
    }
}

/// Serves any rmcp [`ServerHandler`] over the legacy HTTP+SSE transport (MCP spec 2024-11-05),
/// as an axum [`Router`]:
///
/// - `GET <sse_path>` opens a session: a fresh handler from the factory, and an event stream
///   (`text/event-stream`) whose first event is `endpoint` with data
///   `<message_path>?sessionId=<id>` (a random UUID), then one `message` event per JSON-RPC
///   message of the server.
/// - `POST <message_path>?sessionId=<id>` with one JSON-RPC message as its body delivers it to
///   the session: `202 Accepted`; `400` without a session id or for a body that is not a
///   JSON-RPC message; `404` for an unknown or ended session, and for a session of another
///   owner when [`SseServerConfig::with_owner`] is set. The
///   request's `http::request::Parts` (headers included) ride along in the extensions of a
///   request, as rmcp's streamable HTTP server does.
/// - The stream is the session: when the client goes away the session ends; when the session
///   ends (its handler is done, [`SseServerConfig::shutdown`] is cancelled) the stream ends.
///
/// Serve the router with TCP_NODELAY on the accepted sockets: clients keep connections alive.
#[derive(Clone, Debug)]
pub struct SseServer {
    inner: Arc<Inner>,
}

struct Inner {
    runner: SessionRunner,
    /// The live sessions, by session id.
    sessions: Mutex<HashMap<String, Session>>,
    message_path: String,
    sse_path: String,
    keep_alive: Option<Duration>,
    owner: Option<Arc<SessionOwner>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("runner", &self.runner)
            .field("message_path", &self.message_path)
            .field("sse_path", &self.sse_path)
            .field("keep_alive", &self.keep_alive)
            .field("owner", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

/// A live session, as the `POST`s to it find it.
struct Session {
    /// Its messages from the client, to its handler.
    inbox: mpsc::Sender<ClientJsonRpcMessage>,
    /// Who opened it: the answer of [`Inner::owner`] for its `GET` (`None` without one).
    owner: Option<String>,
}

impl SseServer {
    /// An adapter serving a fresh handler from `factory` per session.
    pub fn new<S, F>(factory: F, config: SseServerConfig) -> Self
    where
        S: ServerHandler,
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
    {
        let runner = SessionRunner::new(
            factory,
            config.observer,
            config.shutdown,
            config.channel_capacity,
        );
        Self {
            inner: Arc::new(Inner {
                runner,
                sessions: Mutex::default(),
                message_path: config.message_path,
                sse_path: config.sse_path,
                keep_alive: config.keep_alive,
                owner: config.owner,
            }),
        }
    }

    /// The routes: `GET <sse_path>` and `POST <message_path>`. Merge it into an app or serve it
    /// as it is.
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.inner.sse_path, get(open_stream))
            .route(&self.inner.message_path, post(post_message))
            .with_state(self.inner.clone())
    }

    /// Ends every session open now (their streams end) and keeps serving; returns how many
    /// were open. They end asynchronously, soon after this returns.
    pub fn close_sessions(&self) -> usize {
        self.inner.runner.close_sessions()
    }

    /// How many sessions are open.
    pub fn live_sessions(&self) -> usize {
        self.inner.runner.live()
    }

    /// Ends every session (their streams end), refuses new ones, and returns once every
    /// session has finished. The same as cancelling [`SseServerConfig::shutdown`], then
    /// waiting.
    pub async fn shutdown(&self) {
        self.inner.runner.shutdown().await;
    }
}

impl Inner {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // The map holds no invariant a panic could break half-way.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who sent the request of `parts`, for the owner check; `None` without one.
    fn owner_of(&self, parts: &Parts) -> Option<String> {
        self.owner.as_ref().and_then(|owner| owner(parts))
    }
}

/// Removes a session from the map when its stream is dropped, and ends the session.
struct StreamGuard {
    inner: Arc<Inner>,
    id: String,
    _end: DropGuard,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.inner.sessions().remove(&self.id);
    }
}

async fn open_stream(State(inner): State<Arc<Inner>>, parts: Parts) -> Response {
    let owner = inner.owner_of(&parts);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let Some(ends) = inner.runner.open(&id) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
            .into_response();
    };
    let session = Session {
        inbox: ends.to_handler,
        owner,
    };
    inner.sessions().insert(id.clone(), session);
    let endpoint = format!("{}?sessionId={id}", inner.message_path);
    let guard = StreamGuard {
        inner: inner.clone(),
        id,
        _end: ends.ended.clone().drop_guard(),
    };
    let events = session_events(ends.from_handler, ends.ended, inner.keep_alive, guard);
    let first = SseEvent::default().event("endpoint").data(endpoint);
    let body = stream::once(async { first })
        .chain(events)
        .map(|event| Ok::<_, Infallible>(Bytes::from(event)));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Tells a buffering reverse proxy (nginx) to pass events on at once.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The session's `message` events (and keep-alives), until the session ends. Holds `guard`:
/// dropping the stream (the client went away) ends the session.
fn session_events(
    from_handler: mpsc::Receiver<ServerJsonRpcMessage>,
    ended: CancellationToken,
    keep_alive: Option<Duration>,
    guard: StreamGuard,
) -> impl Stream<Item = SseEvent> + Send + 'static {
    let ticker = keep_alive.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    stream::unfold(
        (from_handler, ended, ticker, guard),
        |(mut from_handler, ended, mut ticker, guard)| async move {
            let keep_alive = async {
                match ticker.as_mut() {
                    Some(ticker) => {
                        ticker.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                () = ended.cancelled() => return None,
                message = from_handler.recv() => {
                    let message = message?;
                    match serde_json::to_string(&message) {
                        Ok(json) => SseEvent::default().event("message").data(json),
                        Err(error) => {
                            tracing::error!(%error, "SSE server: could not serialize a message; ending the session");
                            return None;
                        }
                    }
                }
                // An event with no field is a blank line: clients skip it.
                () = keep_alive => SseEvent::default(),
            };
            Some((event, (from_handler, ended, ticker, guard)))
        },
    )
}

async fn post_message(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
    body: Bytes,
) -> Response {
    // `sessionId` as the spec's examples; `session_id` as the Python SDK spells it.
    let Some(id) = query.get("sessionId").or_else(|| query.get("session_id")) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing the sessionId query parameter",
        )
            .into_response();
    };
    // Without an owner function both sides are `None`: every sender matches.
    let sender = inner.owner_of(&parts);
    let inbox = inner
        .sessions()
        .get(id)
        .filter(|session| session.owner == sender)
        .map(|session| session.inbox.clone());
    // Another owner's session is answered as no session at all.
    let Some(inbox) = inbox else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    let mut message = match serde_json::from_slice::<ClientJsonRpcMessage>(&body) {
        Ok(message) => message,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not a JSON-RPC message: {error}"),
            )
                .into_response();
        }
    };
    attach_parts(&mut message, &parts);
    match inbox.send(message).await {
        Ok(()) => (StatusCode::ACCEPTED, "Accepted").into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "the session has ended").into_response(),
    }
}
