//! Downstream sessions owned by one worker and reached from any (DESIGN §14, issue 13 items
//! 3-5).
//!
//! # Ownership
//! The worker that creates a downstream MCP session (streamable HTTP `initialize`) claims its
//! id in the state backend ([`StateBackend::claim`]: first writer wins) and refreshes the claim
//! while the session lives; a `DELETE` releases it. A worker that stops gracefully
//! [leaves](Group::leave): its claims can be taken over at once (below). The session's upstream
//! leases live in that worker's pool; nothing of them is shared.
//!
//! # Forwarding
//! A request that carries a session id this worker does not hold is looked up: when another
//! live worker owns the session, the request is sent to it over the backend's publish/subscribe
//! (channel `fwd-{worker}`: one subscription per worker, for requests and replies alike),
//! executed there exactly as if it had arrived there — the owner's identity check included —
//! and its response relayed back as it is produced: the status and headers, then every chunk
//! of the body (an SSE stream carries the call's progress and logging before its result), in
//! order. No loopback HTTP: a load balancer would send it to a random worker again
//! (ContextForge #5206). A downstream client that goes away cancels the request at the owner.
//!
//! The request travels in an envelope signed with HMAC-SHA256 under the group's key (the
//! gateway's `JWT_SECRET_KEY`; with auth off, a key derived from the namespace, which keeps
//! groups apart but protects nothing — there is nothing to protect then) and carries the
//! caller's authenticated user, the time it was signed, the headers and the body; the owner
//! rejects an envelope whose signature does not match or that is older than
//! [`ENVELOPE_MAX_AGE`]. The gateway's own token stays behind unless the server forwards it
//! upstream anyway ([`ServerRecord::forward_token`](mcp_pool::traits::ServerRecord)).
//!
//! # Takeover
//! When the session has no live owner (its owner's heartbeat ran out: the process died), the
//! receiving worker takes the claim — atomically, and never from a live owner, which the
//! backend guarantees. The upstream session died with the old owner: on a `sticky` server the
//! client gets HTTP 404 for its session (the MCP specification's signal to initialize again)
//! and initializes a new one here; on other servers, which keep no state per downstream
//! session, the session is restored here (rmcp's session restore, with an `initialize` of the
//! protocol version the request names) and the request is served.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use mcp_pool::{
    ServerId, StrategyKind,
    traits::{Claim, StateBackend, StateId},
};
use parking_lot::Mutex;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, AppState, auth::Claims, membership::WorkerId};

/// How long a claim lives without a refresh. Liveness comes from the owner's heartbeat (a dead
/// owner's claims can be taken at once); the TTL only bounds claims of sessions that ended
/// without a `DELETE`.
pub const CLAIM_TTL: Duration = Duration::from_secs(3600);

/// The longest an `initialize` waits for its session's claim.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// How often the claims of this worker's live sessions are refreshed.
pub const CLAIM_REFRESH: Duration = Duration::from_secs(600);

/// The oldest envelope an owner accepts, against replays.
pub const ENVELOPE_MAX_AGE: Duration = Duration::from_secs(60);

/// How long the owner holds a reply's head back waiting for its first body chunk, to send both
/// in one frame; a stream that is quiet longer (a slow call, a standalone stream) gets its head
/// alone.
const HEAD_COALESCE: Duration = Duration::from_millis(50);

/// How long a forwarded request waits for the owner's status line.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames buffered per forwarded request before the relay gives up on a client that does
/// not read.
const RELAY_CAPACITY: usize = 256;

/// Forwards counted (label `outcome`: `ok`, `failed`).
pub const FORWARDS_TOTAL: &str = "mcp_pool_gateway_forwards_total";
/// Sessions taken over from a dead owner (label `outcome`: `restored`, `reinitialize`).
pub const TAKEOVERS_TOTAL: &str = "mcp_pool_gateway_takeovers_total";
/// Seconds from sending a forwarded request to the owner's status line.
pub const FORWARD_SECONDS: &str = "mcp_pool_gateway_forward_seconds";

/// Marks a request that another worker forwarded here: it is served locally or not at all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Forwarded;

/// One message on a worker's channel.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "frame", rename_all = "snake_case")]
enum Frame {
    /// A request for a session the receiver owns.
    Request(Envelope),
    /// Frame `seq` (from 0) of the reply to request `id`: its parts in order — the head
    /// first, then body chunks, the end last. The owner sends what is ready in one frame (a
    /// quick call's whole reply is one), so a forward costs two messages.
    Reply { id: u64, seq: u64, parts: Vec<Part> },
    /// The sender of request `id` no longer wants its reply.
    Cancel { from: String, id: u64 },
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "part", rename_all = "snake_case")]
enum Part {
    Head {
        status: u16,
        headers: Vec<(String, String)>,
    },
    Chunk {
        data: String,
    },
    End,
}

/// A signed request (see the module docs). `Debug` shows header names, never values or the
/// body (a forwarded `Authorization` or cookie is a secret).
#[derive(Serialize, Deserialize, Clone)]
struct Envelope {
    /// The sending worker: where the reply goes.
    from: String,
    id: u64,
    server: String,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    /// The body, base64.
    body: String,
    /// The caller's authenticated user (the JWT's), if any.
    user: Option<String>,
    /// Seconds since the Unix epoch when it was signed.
    signed: u64,
    /// HMAC-SHA256 of the envelope with an empty `mac`, hex.
    #[serde(default)]
    mac: String,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Envelope")
            .field("from", &self.from)
            .field("id", &self.id)
            .field("server", &self.server)
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .field("user", &self.user)
            .field("signed", &self.signed)
            .finish_non_exhaustive()
    }
}

/// Headers that describe one HTTP hop, not the request. (`Host` stays: rmcp checks it.)
const HOP_HEADERS: [&str; 5] = [
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

/// The workers sharing a backend, as one of them sees the others: its id, the backend, the
/// group key, and the requests it relays.
pub struct Group {
    worker: WorkerId,
    channel: StateId,
    backend: Arc<dyn StateBackend>,
    key: Vec<u8>,
    next: AtomicU64,
    /// Replies awaited, by request id.
    pending: Mutex<HashMap<u64, ReplySink>>,
    /// Requests being served for other workers, by (worker, id).
    serving: Mutex<HashMap<(String, u64), CancellationToken>>,
    /// Sessions taken over and about to be restored: id → the protocol version to restore.
    adopting: Mutex<HashMap<String, String>>,
    /// The owner each session forwarded lately had: a hint that saves a lookup per request
    /// (the owner checks it holds the session), at most [`OWNER_HINTS`] entries.
    owners: Mutex<HashMap<String, StateId>>,
}

/// Where the frames of one forwarded request's reply go: (frame number, parts).
type ReplySink = mpsc::Sender<(u64, Vec<Part>)>;

/// The most owners [`Group`] remembers; it forgets them all when full.
const OWNER_HINTS: usize = 16_384;

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("worker", &self.worker)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

/// Where a request for a session this worker does not hold goes.
enum Route {
    /// To its live owner.
    Forward(StateId),
    /// Nowhere: answer 404, the client initializes again.
    Gone,
    /// Here: the session was taken over and is restored by rmcp.
    Adopted,
}

impl Group {
    /// The group of `worker` over `backend`, signing with `key` (see the module docs).
    ///
    /// # Errors
    /// When `worker` is too long to name a channel.
    pub fn new(
        worker: WorkerId,
        backend: Arc<dyn StateBackend>,
        key: &[u8],
    ) -> Result<Arc<Self>, String> {
        let channel = channel_of(worker.state_id().as_str())
            .ok_or_else(|| format!("worker id {worker} is too long: at most 120 characters"))?;
        Ok(Arc::new(Self {
            worker,
            channel,
            backend,
            key: key.to_vec(),
            next: AtomicU64::new(1),
            pending: Mutex::default(),
            serving: Mutex::default(),
            adopting: Mutex::default(),
            owners: Mutex::default(),
        }))
    }

    /// This worker's id.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    fn mac(&self, envelope: &Envelope) -> String {
        let unsigned = Envelope {
            mac: String::new(),
            ..envelope.clone()
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(&serde_json::to_vec(&unsigned).expect("an envelope serializes"));
        hex::encode(mac.finalize().into_bytes())
    }

    /// Claims a session this worker just created, before its id reaches the client: another
    /// worker that gets the client's next request must find the owner. A failure is logged
    /// (the session works here, but other workers find it only once a refresh claimed it), and
    /// the claim waits at most [`CLAIM_WAIT`] so a slow backend never holds an `initialize`.
    pub(crate) async fn claim_new(&self, session: &str) {
        let Ok(id) = StateId::new(session) else {
            return;
        };
        let claim = self.backend.claim(&id, self.worker.state_id(), CLAIM_TTL);
        match tokio::time::timeout(CLAIM_WAIT, claim).await {
            Ok(Ok(claim)) if claim.is_owned() => {}
            Ok(Ok(_)) => tracing::warn!("a new downstream session's id is claimed already"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot claim a new downstream session; serving on")
            }
            Err(_) => tracing::warn!("claiming a new downstream session timed out; serving on"),
        }
    }

    /// Releases the claim of a session of this worker that ended.
    pub(crate) fn release(self: &Arc<Self>, session: &str) {
        let Ok(id) = StateId::new(session) else {
            return;
        };
        let group = self.clone();
        tokio::spawn(async move {
            if let Err(error) = group.backend.release(&id, group.worker.state_id()).await {
                tracing::debug!(%error, "cannot release an ended session's claim");
            }
        });
    }

    /// Refreshes (or, after the backend lost them, takes again) the claims of `sessions`: the
    /// sessions another live worker holds now (they were taken over while this worker was cut
    /// off), which must end here; `None` when the backend could not be reached.
    pub async fn refresh(&self, sessions: &[String]) -> Option<Vec<String>> {
        let me = self.worker.state_id();
        let mut taken = Vec::new();
        for session in sessions {
            let Ok(id) = StateId::new(session.as_str()) else {
                continue;
            };
            let refreshed = match self.backend.refresh(&id, me, CLAIM_TTL).await {
                Ok(true) => Ok(true),
                Ok(false) => self
                    .backend
                    .claim(&id, me, CLAIM_TTL)
                    .await
                    .map(|claim| claim.is_owned()),
                Err(error) => Err(error),
            };
            match refreshed {
                Ok(true) => {}
                Ok(false) => taken.push(session.clone()),
                Err(error) => {
                    tracing::debug!(%error, "cannot refresh session claims now");
                    return None;
                }
            }
        }
        Some(taken)
    }

    /// Leaves the group (a graceful shutdown): ends this worker's heartbeat, so that the next
    /// request for any of its sessions, at any worker, takes the session over at once — as
    /// after a death, without waiting for [`HEARTBEAT_TTL`](crate::membership::HEARTBEAT_TTL).
    /// Call it once the heartbeat task has stopped.
    pub async fn leave(&self) {
        // The shortest TTL there is: gone by the time anyone looks.
        let gone = Duration::from_millis(1);
        if let Err(error) = self.backend.heartbeat(self.worker.state_id(), gone).await {
            tracing::warn!(%error, "cannot leave the workers' group: its sessions are taken over when the heartbeat expires");
        }
    }

    /// Remembers that `owner` answered for `session`.
    fn remember(&self, session: &str, owner: StateId) {
        let mut owners = self.owners.lock();
        if owners.len() >= OWNER_HINTS {
            owners.clear();
        }
        owners.insert(session.to_owned(), owner);
    }

    /// Where a request for `session`, which this worker does not hold, goes.
    async fn route(
        &self,
        state: &AppState,
        server: &ServerId,
        session: &str,
    ) -> Result<Route, ApiError> {
        let unavailable = |error: mcp_pool::traits::BackendError| {
            tracing::warn!(%error, "cannot look up a session's owner");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state backend is unavailable: cannot find the worker holding this session",
            )
        };
        let Ok(id) = StateId::new(session) else {
            return Ok(Route::Gone);
        };
        let me = self.worker.state_id();
        match self.backend.owner(&id).await.map_err(unavailable)? {
            Some(owner) if owner == *me => {
                // Ours, but gone here (it ended without a DELETE): nobody holds it any more.
                self.backend.release(&id, me).await.map_err(unavailable)?;
                return Ok(Route::Gone);
            }
            Some(owner) => return Ok(Route::Forward(owner)),
            None => {}
        }
        match self
            .backend
            .claim(&id, me, CLAIM_TTL)
            .await
            .map_err(unavailable)?
        {
            Claim::Held { owner } if owner != *me => return Ok(Route::Forward(owner)),
            Claim::TookOver { .. } => {}
            _ => {
                // Nobody held it: it ended (or never was). Not ours to keep.
                self.backend.release(&id, me).await.map_err(unavailable)?;
                return Ok(Route::Gone);
            }
        }
        let sticky = state
            .pool
            .server_config(server)
            .is_some_and(|config| config.strategy == StrategyKind::Sticky);
        if sticky {
            ::metrics::counter!(TAKEOVERS_TOTAL, "outcome" => "reinitialize").increment(1);
            tracing::info!(
                "took over a session of sticky server {server} from a dead worker: the client initializes again"
            );
            self.backend.release(&id, me).await.map_err(unavailable)?;
            Ok(Route::Gone)
        } else {
            ::metrics::counter!(TAKEOVERS_TOTAL, "outcome" => "restored").increment(1);
            tracing::info!("took over a session of server {server} from a dead worker: restored");
            Ok(Route::Adopted)
        }
    }

    /// Serves a request for `session` (not held here; the body already read and bounded):
    /// forwarded to its owner, 404, or `None` when it was adopted and is served here.
    pub(crate) async fn dispatch(
        self: &Arc<Self>,
        state: &AppState,
        server: &ServerId,
        session: &str,
        request: Request,
    ) -> Result<Response, Request> {
        let (parts, body) = request.into_parts();
        let Ok(body) = axum::body::to_bytes(body, state.max_body_bytes).await else {
            return Ok(
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    .into_response(),
            );
        };
        // The owner last seen is tried first, without a lookup; it answers 404 for a session
        // it no longer holds. An owner found dead while waiting for it is taken over: route
        // once more.
        let cached = self.owners.lock().get(session).cloned();
        if let Some(owner) = cached {
            match self.forward(state, &owner, server, &parts, &body).await {
                Some(response) if response.status() != StatusCode::NOT_FOUND => {
                    return Ok(response);
                }
                _ => {
                    self.owners.lock().remove(session);
                }
            }
        }
        for _ in 0..2 {
            match self.route(state, server, session).await {
                Err(error) => return Ok(error.into_response()),
                Ok(Route::Gone) => break,
                Ok(Route::Forward(owner)) => {
                    match self.forward(state, &owner, server, &parts, &body).await {
                        Some(response) => {
                            self.remember(session, owner);
                            return Ok(response);
                        }
                        None => continue,
                    }
                }
                Ok(Route::Adopted) => {
                    let protocol = parts
                        .headers
                        .get("mcp-protocol-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("2025-03-26")
                        .to_owned();
                    self.adopting.lock().insert(session.to_owned(), protocol);
                    return Err(Request::from_parts(parts, Body::from(body)));
                }
            }
        }
        Ok(ApiError::new(StatusCode::NOT_FOUND, "Session not found").into_response())
    }

    /// Sends a request to `owner` and relays its reply (see the module docs); `None` when the
    /// owner died before it answered (its heartbeat ran out).
    async fn forward(
        self: &Arc<Self>,
        state: &AppState,
        owner: &StateId,
        server: &ServerId,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Option<Response> {
        let started = Instant::now();
        let keep_token = !state.auth.is_required() || state.registry.forwards_token(server);
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !HOP_HEADERS.contains(&name.as_str()))
            .filter(|(name, _)| keep_token || *name != http::header::AUTHORIZATION)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut envelope = Envelope {
            from: self.worker.to_string(),
            id,
            server: server.to_string(),
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers,
            body: BASE64.encode(body),
            user: parts
                .extensions
                .get::<Claims>()
                .and_then(Claims::user)
                .map(str::to_owned),
            signed: unix_now(),
            mac: String::new(),
        };
        envelope.mac = self.mac(&envelope);

        let (sink, replies) = mpsc::channel(RELAY_CAPACITY);
        self.pending.lock().insert(id, sink);
        let mut relay = Relay {
            group: self.clone(),
            owner: owner.clone(),
            id,
            replies,
            reorder: BTreeMap::new(),
            next: 0,
            ready: Default::default(),
            done: false,
        };
        let failed = |detail: &str| {
            ::metrics::counter!(FORWARDS_TOTAL, "outcome" => "failed").increment(1);
            Some(ApiError::new(StatusCode::BAD_GATEWAY, detail).into_response())
        };
        let Some(channel) = channel_of(owner.as_str()) else {
            return failed("the session's owner has an invalid id");
        };
        let payload = serde_json::to_vec(&Frame::Request(envelope)).expect("a frame serializes");
        if let Err(error) = self.backend.publish(&channel, &payload).await {
            tracing::warn!(%error, "cannot forward a request to its session's owner");
            return failed("cannot reach the worker holding this session");
        }
        // The owner may have died since it was found alive: its heartbeat tells. (A timeout
        // per wait, not an `Interval` in a `select!`: that delayed the wake-up by a
        // millisecond per forward, measured with the workers_bench example.)
        let head = async {
            loop {
                let wait = crate::membership::HEARTBEAT_INTERVAL;
                if let Ok(part) = tokio::time::timeout(wait, relay.next_part()).await {
                    return Some(part);
                }
                if !self.backend.is_alive(owner).await.unwrap_or(true) {
                    return None;
                }
            }
        };
        let (status, headers) = match tokio::time::timeout(HEAD_TIMEOUT, head).await {
            Ok(Some(Some(Part::Head { status, headers }))) => (status, headers),
            Ok(Some(_)) => return failed("the worker holding this session answered out of order"),
            Ok(None) => {
                tracing::info!("the worker holding a session died before answering: taking over");
                relay.finish();
                return None;
            }
            Err(_) => return failed("the worker holding this session did not answer in time"),
        };
        ::metrics::counter!(FORWARDS_TOTAL, "outcome" => "ok").increment(1);
        ::metrics::histogram!(FORWARD_SECONDS).record(started.elapsed().as_secs_f64());
        let mut response = Response::new(Body::from_stream(futures::stream::unfold(
            relay,
            |mut relay| async move {
                match relay.next_part().await? {
                    Part::Chunk { data } => {
                        let bytes = BASE64.decode(data).unwrap_or_default();
                        Some((Ok::<_, std::io::Error>(bytes), relay))
                    }
                    Part::End => {
                        relay.finish();
                        None
                    }
                    Part::Head { .. } => None,
                }
            },
        )));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        Some(response)
    }

    /// Handles one message of this worker's channel.
    fn receive(self: &Arc<Self>, local: &LocalHandler, payload: &[u8]) {
        let frame: Frame = match serde_json::from_slice(payload) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "ignoring a malformed message on this worker's channel");
                return;
            }
        };
        match frame {
            Frame::Reply { id, seq, parts } => {
                let mut pending = self.pending.lock();
                if let Some(sink) = pending.get(&id)
                    && sink.try_send((seq, parts)).is_err()
                {
                    // The client stopped reading (or left): its relay ends.
                    pending.remove(&id);
                }
            }
            Frame::Cancel { from, id } => {
                if let Some(cancel) = self.serving.lock().remove(&(from, id)) {
                    cancel.cancel();
                }
            }
            Frame::Request(envelope) => {
                let group = self.clone();
                let local = local.clone();
                tokio::spawn(async move { group.serve(local, envelope).await });
            }
        }
    }

    /// Serves a request another worker forwarded (see the module docs) and sends back the
    /// reply, part by part.
    async fn serve(self: Arc<Self>, local: LocalHandler, envelope: Envelope) {
        let Some(reply_to) = channel_of(&envelope.from) else {
            return;
        };
        let (from, id) = (envelope.from.clone(), envelope.id);
        let send = |seq: u64, parts: Vec<Part>| {
            let frame = Frame::Reply { id, seq, parts };
            let payload = serde_json::to_vec(&frame).expect("a frame serializes");
            let (backend, reply_to) = (self.backend.clone(), reply_to.clone());
            async move { backend.publish(&reply_to, &payload).await.is_ok() }
        };
        let response = match self.open(&envelope) {
            Ok(request) => {
                let cancel = CancellationToken::new();
                self.serving
                    .lock()
                    .insert((from.clone(), id), cancel.clone());
                let server = envelope.server.clone();
                let response = local(server, request);
                tokio::select! {
                    response = response => Some((response, cancel)),
                    () = cancel.cancelled() => None,
                }
            }
            Err(rejected) => Some((rejected.into_response(), CancellationToken::new())),
        };
        let Some((response, cancel)) = response else {
            return;
        };
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        let head = Part::Head {
            status: parts.status.as_u16(),
            headers,
        };
        let mut body = body.into_data_stream();
        let mut parts = vec![head];
        // The first chunk, if it comes soon, travels with the head.
        let mut waited = Some(HEAD_COALESCE);
        for seq in 0.. {
            let next = async {
                match waited.take() {
                    Some(wait) => tokio::time::timeout(wait, body.next()).await.ok(),
                    None => Some(body.next().await),
                }
            };
            let chunk = tokio::select! {
                chunk = next => chunk,
                () = cancel.cancelled() => break,
            };
            let mut end = false;
            if let Some(chunk) = chunk {
                end = push(&mut parts, chunk);
                // And whatever else is ready now, the end included.
                while !end {
                    match futures::FutureExt::now_or_never(body.next()) {
                        Some(chunk) => end = push(&mut parts, chunk),
                        None => break,
                    }
                }
            }
            if !send(seq, std::mem::take(&mut parts)).await || end {
                break;
            }
        }
        self.serving.lock().remove(&(from, id));
    }

    /// The request an envelope carries, once its signature and age are checked.
    fn open(&self, envelope: &Envelope) -> Result<Request, ApiError> {
        let forbidden = |why: &str| {
            tracing::warn!("rejected a forwarded request: {why}");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("forwarded request rejected: {why}"),
            )
        };
        let signed = hex::decode(&envelope.mac).unwrap_or_default();
        let unsigned = Envelope {
            mac: String::new(),
            ..envelope.clone()
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(&serde_json::to_vec(&unsigned).expect("an envelope serializes"));
        if mac.verify_slice(&signed).is_err() {
            return Err(forbidden("its signature does not match"));
        }
        if unix_now().abs_diff(envelope.signed) > ENVELOPE_MAX_AGE.as_secs() {
            return Err(forbidden("it is too old"));
        }
        let body = BASE64
            .decode(&envelope.body)
            .map_err(|_| forbidden("its body is not base64"))?;
        let mut request = Request::builder()
            .method(envelope.method.as_str())
            .uri(envelope.uri.as_str());
        for (name, value) in &envelope.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut request = request
            .body(Body::from(body))
            .map_err(|_| forbidden("it is not a valid HTTP request"))?;
        request.extensions_mut().insert(Forwarded);
        if let Some(user) = &envelope.user {
            // The sending worker checked the caller's token and access to the server; the
            // user is all the session layer needs here.
            request.extensions_mut().insert(Claims {
                exp: envelope.signed + ENVELOPE_MAX_AGE.as_secs(),
                iat: envelope.signed,
                ..Claims::new(user, crate::auth::Role::User, Duration::ZERO, UNIX_EPOCH)
            });
        }
        Ok(request)
    }

    /// The session state rmcp restores a session taken over with (see the module docs).
    fn adopted(&self, session: &str) -> Option<SessionState> {
        let protocol = self.adopting.lock().remove(session)?;
        let mut params = rmcp::model::InitializeRequestParams::new(
            Default::default(),
            rmcp::model::Implementation::new("restored-session", "0"),
        );
        if let Ok(version) = serde_json::from_value(serde_json::Value::String(protocol)) {
            params.protocol_version = version;
        }
        Some(SessionState::new(params))
    }
}

/// Adds a body chunk (or the end, for an error or `None`) to `parts`; whether it was the end.
fn push(parts: &mut Vec<Part>, chunk: Option<Result<axum::body::Bytes, axum::Error>>) -> bool {
    match chunk {
        Some(Ok(data)) => {
            parts.push(Part::Chunk {
                data: BASE64.encode(&data),
            });
            false
        }
        Some(Err(_)) | None => {
            parts.push(Part::End);
            true
        }
    }
}

/// The channel of `worker`: `fwd-{worker}`.
fn channel_of(worker: &str) -> Option<StateId> {
    StateId::new(format!("fwd-{worker}")).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The reply to one forwarded request, in order.
struct Relay {
    group: Arc<Group>,
    owner: StateId,
    id: u64,
    replies: mpsc::Receiver<(u64, Vec<Part>)>,
    /// Frames that arrived ahead of their turn.
    reorder: BTreeMap<u64, Vec<Part>>,
    /// The next frame's number.
    next: u64,
    /// Parts of the frames taken in order, not yet relayed.
    ready: std::collections::VecDeque<Part>,
    /// The end was relayed: nothing to cancel.
    done: bool,
}

impl Relay {
    /// The end was relayed: the drop has nothing to cancel.
    fn finish(mut self) {
        self.done = true;
    }

    /// The next part in order; `None` when the relay broke off (the client's reader was too
    /// slow, or the worker is shutting down).
    async fn next_part(&mut self) -> Option<Part> {
        loop {
            if let Some(part) = self.ready.pop_front() {
                return Some(part);
            }
            if let Some(parts) = self.reorder.remove(&self.next) {
                self.next += 1;
                self.ready.extend(parts);
                continue;
            }
            let (seq, parts) = self.replies.recv().await?;
            if seq >= self.next {
                self.reorder.insert(seq, parts);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.group.pending.lock().remove(&self.id);
        if self.done {
            return;
        }
        // The downstream client left before the end: the owner stops serving it.
        let (group, owner, id) = (self.group.clone(), self.owner.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancel = Frame::Cancel {
                    from: group.worker.to_string(),
                    id,
                };
                if let Some(channel) = channel_of(owner.as_str()) {
                    let payload = serde_json::to_vec(&cancel).expect("a frame serializes");
                    let _ = group.backend.publish(&channel, &payload).await;
                }
            });
        }
    }
}

/// What serves a request another worker forwarded here: this worker's MCP endpoint of the
/// server named (`/servers/{server}/mcp`), given when the worker joins the group.
pub type LocalHandler =
    Arc<dyn Fn(String, Request) -> futures::future::BoxFuture<'static, Response> + Send + Sync>;

/// Subscribes to this worker's channel and hands each forwarded request to `local` until
/// `shutdown`, subscribing again after the backend failed (messages sent meanwhile are lost:
/// their forwards fail and are retried by their clients).
pub fn spawn_channel(
    group: Arc<Group>,
    local: LocalHandler,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        let mut lost = false;
        loop {
            match group.backend.subscribe(&group.channel).await {
                Ok(mut messages) => {
                    wait = Duration::from_millis(100);
                    if lost {
                        tracing::info!(
                            "worker {}: subscribed to this worker's channel again",
                            group.worker
                        );
                    }
                    lost = true;
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(payload) => group.receive(&local, &payload),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("this worker's channel ended; subscribing again");
                }
                Err(error) => tracing::debug!(%error, "cannot subscribe to this worker's channel"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    })
}

/// rmcp's session store for sessions taken over (see the module docs): it knows only those.
pub(crate) struct AdoptedSessions(pub(crate) Arc<Group>);

#[async_trait::async_trait]
impl SessionStore for AdoptedSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        Ok(self.0.adopted(session_id))
    }

    async fn store(&self, _: &str, _: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    async fn delete(&self, _: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mcp_pool::traits::StateBackend;
    use mcp_pool_backends::MemoryBackend;

    use super::*;

    fn group(key: &[u8]) -> Arc<Group> {
        let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        Group::new(WorkerId::new("w1").unwrap(), backend, key).unwrap()
    }

    fn envelope(group: &Group) -> Envelope {
        let mut envelope = Envelope {
            from: "w2".into(),
            id: 7,
            server: "s".into(),
            method: "POST".into(),
            uri: "/servers/s/mcp".into(),
            headers: vec![("mcp-session-id".into(), "abc".into())],
            body: BASE64.encode(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            user: Some("alice".into()),
            signed: unix_now(),
            mac: String::new(),
        };
        envelope.mac = group.mac(&envelope);
        envelope
    }

    fn rejection(group: &Group, envelope: &Envelope) -> String {
        let error = group.open(envelope).expect_err("rejected");
        error.into_response().status().to_string()
    }

    #[tokio::test]
    async fn an_envelope_signed_with_the_groups_key_opens_with_the_callers_user() {
        let group = group(b"key");
        let request = group.open(&envelope(&group)).unwrap();
        let claims = request.extensions().get::<Claims>().unwrap();
        assert_eq!(claims.user(), Some("alice"));
        assert!(request.extensions().get::<Forwarded>().is_some());
        assert_eq!(request.headers()["mcp-session-id"], "abc");
    }

    #[tokio::test]
    async fn unsigned_tampered_foreign_or_stale_envelopes_are_rejected() {
        let group = group(b"key");
        let signed = envelope(&group);
        let unsigned = Envelope {
            mac: String::new(),
            ..signed.clone()
        };
        let other_user = Envelope {
            user: Some("mallory".into()),
            ..signed.clone()
        };
        let other_body = Envelope {
            body: BASE64.encode(b"{}"),
            ..signed.clone()
        };
        let foreign = envelope(&self::group(b"another group's key"));
        let mut stale = Envelope {
            signed: unix_now() - 2 * ENVELOPE_MAX_AGE.as_secs(),
            ..signed.clone()
        };
        stale.mac = group.mac(&stale);
        for rejected in [unsigned, other_user, other_body, foreign, stale] {
            assert_eq!(
                rejection(&group, &rejected),
                "403 Forbidden",
                "{rejected:?}"
            );
        }
    }

    #[test]
    fn debug_shows_no_header_value_nor_body() {
        let group = group(b"key");
        let mut envelope = envelope(&group);
        envelope
            .headers
            .push(("authorization".into(), "Bearer s3cret-token".into()));
        let shown = format!("{envelope:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(!shown.contains(&envelope.body), "{shown}");
    }
}
