//! Both sides of relaying a request between workers: the sender dispatches a request for a
//! session another worker owns (`Group::dispatch_to_owner`) and streams the owner's reply
//! back (`ReplyStream`); the owner, reading its channel ([`spawn_channel`]), serves the
//! request through the [`LocalHandler`] it was given and sends the reply back part by part.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use mcp_pool::{ServerId, traits::StateId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    claims::Route,
    group::Group,
    membership::HEARTBEAT_INTERVAL,
    wire::{Envelope, Frame, Part, Token, channel_of},
};
use crate::{ApiError, AppState};

/// How long the owner holds a reply's head back waiting for its first body chunk, to send both
/// in one frame; a stream that is quiet longer (a slow call, a standalone stream) gets its head
/// alone.
const HEAD_COALESCE: Duration = Duration::from_millis(50);

/// How long a relayed request waits for the owner's status line.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames buffered per relayed request before the sender gives up on a client that does not
/// read.
const REPLY_CAPACITY: usize = 256;

/// Relayed requests counted (label `outcome`: `ok`, `failed`).
pub const FORWARDS_TOTAL: &str = "mcp_pool_gateway_forwards_total";
/// Seconds from sending a relayed request to the owner's status line.
pub const FORWARD_SECONDS: &str = "mcp_pool_gateway_forward_seconds";

impl Group {
    /// Serves a request for `session` (not held here; the body already read and bounded):
    /// relayed to its owner, 404, or `Err` with the request when it was adopted and is served
    /// here.
    pub(crate) async fn dispatch_to_owner(
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
            match self.relay_to(state, &owner, server, &parts, &body).await {
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
                Ok(Route::Owner(owner)) => {
                    match self.relay_to(state, &owner, server, &parts, &body).await {
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

    /// Sends a request to `owner` and streams its reply back (see [`crate::cluster`]); `None`
    /// when the owner died before it answered (its heartbeat ran out).
    async fn relay_to(
        self: &Arc<Self>,
        state: &AppState,
        owner: &StateId,
        server: &ServerId,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Option<Response> {
        let started = Instant::now();
        let token = if !state.auth.is_required() || state.registry.forwards_token(server) {
            Token::Kept
        } else {
            Token::Dropped
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope::seal(
            &self.key,
            self.worker.to_string(),
            id,
            server,
            parts,
            body,
            token,
        );

        let (sink, replies) = mpsc::channel(REPLY_CAPACITY);
        self.pending.lock().insert(id, sink);
        let mut reply = ReplyStream {
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
        let payload = Frame::Request(envelope).to_bytes();
        if let Err(error) = self.backend.publish(&channel, &payload).await {
            tracing::warn!(%error, "cannot forward a request to its session's owner");
            return failed("cannot reach the worker holding this session");
        }
        // The owner may have died since it was found alive: its heartbeat tells. (A timeout
        // per wait, not an `Interval` in a `select!`: that delayed the wake-up by a
        // millisecond per relayed request, measured with the workers_bench example.)
        let head = async {
            loop {
                if let Ok(part) = tokio::time::timeout(HEARTBEAT_INTERVAL, reply.next_part()).await
                {
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
                reply.finish();
                return None;
            }
            Err(_) => return failed("the worker holding this session did not answer in time"),
        };
        ::metrics::counter!(FORWARDS_TOTAL, "outcome" => "ok").increment(1);
        ::metrics::histogram!(FORWARD_SECONDS).record(started.elapsed().as_secs_f64());
        let mut response = Response::new(Body::from_stream(futures::stream::unfold(
            reply,
            |mut reply| async move {
                match reply.next_part().await? {
                    Part::Chunk { data } => {
                        let bytes = Part::decode_chunk(data);
                        Some((Ok::<_, std::io::Error>(bytes), reply))
                    }
                    Part::End => {
                        reply.finish();
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
                    // The client stopped reading (or left): its reply stream ends.
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

    /// Serves a request another worker relayed (see [`crate::cluster`]) and sends back the
    /// reply, part by part.
    async fn serve(self: Arc<Self>, local: LocalHandler, envelope: Envelope) {
        let Some(reply_to) = channel_of(&envelope.from) else {
            return;
        };
        let (from, id) = (envelope.from.clone(), envelope.id);
        let send = |seq: u64, parts: Vec<Part>| {
            let payload = Frame::Reply { id, seq, parts }.to_bytes();
            let (backend, reply_to) = (self.backend.clone(), reply_to.clone());
            async move { backend.publish(&reply_to, &payload).await.is_ok() }
        };
        let response = match envelope.open(&self.key) {
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
}

/// Adds a body chunk (or the end, for an error or `None`) to `parts`; whether it was the end.
fn push(parts: &mut Vec<Part>, chunk: Option<Result<axum::body::Bytes, axum::Error>>) -> bool {
    let part = Part::of_chunk(chunk);
    let end = matches!(part, Part::End);
    parts.push(part);
    end
}

/// The reply to one relayed request, in order.
struct ReplyStream {
    group: Arc<Group>,
    owner: StateId,
    id: u64,
    replies: mpsc::Receiver<(u64, Vec<Part>)>,
    /// Frames that arrived ahead of their turn.
    reorder: BTreeMap<u64, Vec<Part>>,
    /// The next frame's number.
    next: u64,
    /// Parts of the frames taken in order, not yet relayed.
    ready: VecDeque<Part>,
    /// The end was relayed: nothing to cancel.
    done: bool,
}

impl ReplyStream {
    /// The end was relayed: the drop has nothing to cancel.
    fn finish(mut self) {
        self.done = true;
    }

    /// The next part in order; `None` when the stream broke off (the client's reader was too
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

impl Drop for ReplyStream {
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
                    let _ = group.backend.publish(&channel, &cancel.to_bytes()).await;
                }
            });
        }
    }
}

/// What serves a request another worker relayed here: this worker's downstream MCP route of
/// the server named (`/servers/{server}/mcp`), given when the worker joins the group.
pub type LocalHandler =
    Arc<dyn Fn(String, Request) -> futures::future::BoxFuture<'static, Response> + Send + Sync>;

/// Subscribes to this worker's channel and hands each relayed request to `local` until
/// `shutdown`, subscribing again after the backend failed (messages sent meanwhile are lost:
/// their relayed requests fail and are retried by their clients).
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
