//! The legacy HTTP+SSE client transport of MCP 2024-11-05.
//!
//! The protocol (MCP spec 2024-11-05, "Transports → HTTP with SSE"): the client opens an event
//! stream with `GET <sse url>` (`Accept: text/event-stream`); the server's first event,
//! `endpoint`, carries the URI to POST messages to (usually relative, with a session id in
//! its query); every client message is then one `POST` of a JSON-RPC message to that URI
//! (answered `202 Accepted`), and every server message arrives as a `message` event on the
//! stream. The stream is the session: when it ends, the session is over.

use std::{fmt, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt as _, stream::BoxStream};
use http::{
    HeaderMap, HeaderValue, StatusCode,
    header::{ACCEPT, CONTENT_TYPE},
};
use mcp_pool_traits::{
    ClientSession, ConnectRequest, Transport, TransportError, TransportKind, async_trait,
    redact_url,
};
use reqwest::Url;
use rmcp::{
    RoleClient,
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
};
use sse_stream::{Sse as SseEvent, SseStream};

use crate::{
    headers::{bounded, initialize, upstream_headers},
    per_call::{SessionCredentials, call_headers},
    streamable_http::http_client,
};

/// The largest SSE event accepted from a server: 16 MiB, as rmcp's own SSE reader. A larger
/// one ends the session instead of growing a buffer without bound.
pub const MAX_SSE_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The largest body accepted in answer to a message `POST`: 1 MiB. A 2024-11-05 server answers
/// `202 Accepted` with a short body (its replies travel on the event stream); a larger body
/// fails the send ([`SseError::PostResponseTooLarge`]) instead of being read without bound.
pub const MAX_POST_RESPONSE_BYTES: usize = 1024 * 1024;

/// The legacy HTTP+SSE client transport (MCP spec 2024-11-05), for servers that predate
/// streamable HTTP.
///
/// Endpoints are the SSE URL (`http://host/sse` for most servers). Each session holds one
/// `GET` open for its event stream and POSTs its messages over the keep-alive, TCP_NODELAY
/// [`reqwest::Client`] shared by every session of the pool ([`http_client`]).
///
/// - The caller's headers (identity headers) go on the `GET` and on every `POST`; the internal
///   `mcp-session-id` / `x-mcp-session-id` never do (the [`ConnectRequest`] drops them), nor do
///   connection headers such as `host` or `content-length`.
/// - The `endpoint` event is resolved against the SSE URL and must have the same origin
///   (scheme, host, port), and redirects are not followed (with [`http_client`]; a `3xx`
///   answer fails): the identity headers are never sent to another server.
/// - The body answering a message `POST` is read up to [`MAX_POST_RESPONSE_BYTES`].
/// - Connect (the `GET`, the `endpoint` event) and `initialize` together are bounded by
///   [`ConnectRequest::timeout`].
/// - The session dies at once when the stream ends, fails, or carries a malformed message
///   (not JSON-RPC, or over [`MAX_SSE_EVENT_BYTES`]): rmcp's service stops, calls in flight
///   and later calls fail with `ServiceError::TransportClosed`, and the pool evicts it.
/// - Closing the session drops the `GET`: a 2024-11-05 server ends the session when its
///   stream's client goes away (the transport has no `DELETE`).
#[derive(Clone)]
pub struct Sse {
    client: reqwest::Client,
}

impl fmt::Debug for Sse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse").finish_non_exhaustive()
    }
}

impl Sse {
    /// A transport with its own keep-alive, TCP_NODELAY HTTP client ([`http_client`]).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (its TLS backend failed to initialize).
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self::with_client(http_client()?))
    }

    /// A transport over `client` (share one with [`StreamableHttp`](crate::StreamableHttp)
    /// to pool connections). Keep keep-alive on and TCP_NODELAY set, or every POST pays a
    /// connect or a 44 ms stall. A request timeout on the client would cut the event stream:
    /// leave it unset.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Transport for Sse {
    fn kind(&self) -> TransportKind {
        TransportKind::Sse
    }

    async fn connect(&self, request: ConnectRequest<'_>) -> Result<ClientSession, TransportError> {
        let url = &request.endpoint().url;
        let headers = upstream_headers(request.headers());
        let connecting = async {
            let transport = SseClientTransport::connect(self.client.clone(), url, headers).await?;
            initialize(&request, transport).await
        };
        bounded(url, request.timeout(), connecting).await
    }
}

/// Why an SSE session could not be opened or went on no further.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// The SSE URL is not a valid absolute URL.
    #[error("invalid SSE URL {url:?}")]
    InvalidUrl {
        /// The URL given, [redacted](mcp_pool_traits::redact_url).
        url: String,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
    /// The HTTP request failed (connect refused, reset, TLS, …): the cause is its
    /// [`source`](std::error::Error::source).
    #[error("the HTTP request failed")]
    Http(#[from] reqwest::Error),
    /// The `GET` of the SSE URL was not answered `200` with an event stream.
    #[error(
        "the SSE endpoint answered HTTP {status} with content type {}, expected 200 \
         text/event-stream",
        content_type.as_deref().unwrap_or("(none)")
    )]
    NotAnEventStream {
        /// The response status.
        status: StatusCode,
        /// The response `content-type`, if any.
        content_type: Option<String>,
        /// The start of the response body (at most [`MAX_ERROR_BODY_BYTES`], decoded lossily),
        /// for an excerpt in the error's cause.
        body: String,
    },
    /// The event stream ended, failed or sent a message before its `endpoint` event.
    #[error("the SSE stream sent no `endpoint` event: {0}")]
    NoEndpoint(String),
    /// The `endpoint` event's URI is invalid or points to another origin than the SSE URL
    /// (identity headers are only sent to the origin the caller named).
    #[error("unusable `endpoint` event {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The event's data.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message could not be serialized.
    #[error("could not serialize a message: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A `POST` of a message was not answered with a 2xx status (202 expected).
    #[error("posting a message answered HTTP {0}, expected 202 Accepted")]
    PostRejected(StatusCode),
    /// A request was answered with a redirect, which is not followed: identity headers are
    /// only sent to the origin the caller named.
    #[error(
        "the server answered HTTP {0}, a redirect; redirects are not followed (configure the endpoint's new URL)"
    )]
    Redirected(StatusCode),
    /// The body answering a message `POST` exceeded [`MAX_POST_RESPONSE_BYTES`].
    #[error("the answer to a message POST exceeded {MAX_POST_RESPONSE_BYTES} bytes")]
    PostResponseTooLarge,
}

/// How much of an unexpected answer's body [`SseError::NotAnEventStream`] keeps: 4 KiB.
pub const MAX_ERROR_BODY_BYTES: usize = 4096;

/// The first [`MAX_ERROR_BODY_BYTES`] of `response`'s body, decoded lossily; what could be read
/// of it when reading fails.
async fn body_start(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match chunks.next().await {
            Some(Ok(chunk)) => body.extend_from_slice(&chunk),
            Some(Err(_)) | None => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}

/// One open HTTP+SSE session as an rmcp transport: `receive` reads the event stream, `send`
/// POSTs to the URL of the `endpoint` event.
///
/// [`Sse`] builds these; use one directly to serve an rmcp client of your own over SSE:
/// `ClientConfig::default().serve(SseClientTransport::connect(client, url, headers).await?)`.
pub struct SseClientTransport {
    client: reqwest::Client,
    message_url: Url,
    headers: Arc<HeaderMap>,
    /// Credentials brought by the latest request that had any ([`CallHeaders`](mcp_pool_traits::CallHeaders)).
    credentials: SessionCredentials,
    /// The event stream; `None` once it ended or the transport was closed.
    events: Option<BoxStream<'static, Result<SseEvent, sse_stream::Error>>>,
}

impl fmt::Debug for SseClientTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseClientTransport")
            .field("message_url", &redact_url(self.message_url.as_str()))
            .field("open", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl SseClientTransport {
    /// Opens the event stream at `sse_url` (sending `headers` and `Accept: text/event-stream`)
    /// and waits for its `endpoint` event. No timeout of its own: bound it by the caller's.
    ///
    /// # Errors
    /// [`SseError::InvalidUrl`], [`SseError::Http`], [`SseError::NotAnEventStream`],
    /// [`SseError::NoEndpoint`], [`SseError::BadEndpoint`].
    pub async fn connect(
        client: reqwest::Client,
        sse_url: &str,
        headers: HeaderMap,
    ) -> Result<Self, SseError> {
        let base = Url::parse(sse_url).map_err(|source| SseError::InvalidUrl {
            url: redact_url(sse_url).into_owned(),
            source,
        })?;
        let response = client
            .get(base.clone())
            .headers(headers.clone())
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .send()
            .await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_event_stream = content_type
            .as_deref()
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        if response.status().is_redirection() {
            return Err(SseError::Redirected(response.status()));
        }
        if response.status() != StatusCode::OK || !is_event_stream {
            let status = response.status();
            return Err(SseError::NotAnEventStream {
                status,
                content_type,
                body: body_start(response).await,
            });
        }
        let mut events = event_stream(response.bytes_stream());
        let endpoint = loop {
            match events.next().await {
                Some(Ok(event)) => match event.event.as_deref() {
                    Some("endpoint") => break event.data.unwrap_or_default(),
                    // Only `endpoint` may come first (spec 2024-11-05); anything else with data
                    // is a message the session cannot have asked for yet.
                    _ if event.data.is_some() => {
                        return Err(SseError::NoEndpoint(format!(
                            "got a {:?} event first",
                            event.event.as_deref().unwrap_or("message")
                        )));
                    }
                    _ => continue,
                },
                Some(Err(error)) => return Err(SseError::NoEndpoint(error.to_string())),
                None => return Err(SseError::NoEndpoint("the stream ended".to_owned())),
            }
        };
        let message_url = resolve_endpoint(&base, &endpoint)?;
        Ok(Self {
            client,
            message_url,
            headers: Arc::new(headers),
            credentials: SessionCredentials::default(),
            events: Some(events),
        })
    }

    /// The URL messages are POSTed to: the `endpoint` event resolved against the SSE URL.
    pub fn message_url(&self) -> &Url {
        &self.message_url
    }
}

/// Resolves the `endpoint` event's URI against the SSE URL (RFC 3986 §5) and checks that it
/// stays on the SSE URL's origin.
fn resolve_endpoint(base: &Url, endpoint: &str) -> Result<Url, SseError> {
    let bad = |reason: String| SseError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let url = base
        .join(endpoint.trim())
        .map_err(|error| bad(error.to_string()))?;
    if url.origin() != base.origin() {
        return Err(bad(format!(
            "it points to {}, another origin than the SSE URL's {}",
            url.origin().ascii_serialization(),
            base.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

/// The body too large for one SSE event, or the body's own error.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("an SSE event exceeded {MAX_SSE_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Parses `body` as SSE events, failing the stream on an event over [`MAX_SSE_EVENT_BYTES`].
fn event_stream(
    body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
) -> BoxStream<'static, Result<SseEvent, sse_stream::Error>> {
    let mut limit = EventSizeLimit::default();
    let body = body.map(move |chunk| {
        let chunk = chunk?;
        limit.observe(&chunk)?;
        Ok::<_, BodyError>(chunk)
    });
    Box::pin(SseStream::from_bytes_stream(body))
}

/// Counts the bytes of the event being received: the bytes of its lines since the last blank
/// line (an event ends with a blank line, WHATWG HTML §9.2.6).
#[derive(Debug, Default)]
struct EventSizeLimit {
    event: usize,
    line: usize,
    after_cr: bool,
}

impl EventSizeLimit {
    fn observe(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                // The `\n` of a `\r\n` line end.
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    if self.line == 0 {
                        self.event = 0;
                    }
                    self.line = 0;
                }
                _ => {
                    self.line += 1;
                    self.event += 1;
                    if self.event > MAX_SSE_EVENT_BYTES {
                        return Err(BodyError::EventTooLarge);
                    }
                }
            }
        }
        Ok(())
    }
}

impl rmcp::transport::Transport<RoleClient> for SseClientTransport {
    type Error = SseError;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let body = serde_json::to_vec(&item);
        let mut headers = HeaderMap::clone(&self.headers);
        // Replaces the session's same-named headers, keeps every value of a repeated one.
        headers.extend(self.credentials.for_message(call_headers(&item)));
        let request = self
            .client
            .post(self.message_url.clone())
            .headers(headers)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        async move {
            let response = request.body(body?).send().await?;
            let status = response.status();
            // Read the (short) body to its end so the connection goes back to the pool.
            let drained = drain(response).await;
            if status.is_redirection() {
                return Err(SseError::Redirected(status));
            }
            if !status.is_success() {
                return Err(SseError::PostRejected(status));
            }
            drained
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        receive(&mut self.events, &self.message_url)
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Dropping the GET closes its connection: the server ends the session.
        self.events = None;
        Ok(())
    }
}

/// Reads `response`'s body to its end, up to [`MAX_POST_RESPONSE_BYTES`].
async fn drain(response: reqwest::Response) -> Result<(), SseError> {
    let limit = MAX_POST_RESPONSE_BYTES;
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(SseError::PostResponseTooLarge);
    }
    let mut body = response.bytes_stream();
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        read += chunk?.len();
        if read > limit {
            return Err(SseError::PostResponseTooLarge);
        }
    }
    Ok(())
}

/// The next server message of the stream; `None` (and the stream dropped) when the stream
/// ended, failed or carried something that is not a JSON-RPC message: the session is over.
async fn receive(
    events: &mut Option<BoxStream<'static, Result<SseEvent, sse_stream::Error>>>,
    url: &Url,
) -> Option<ServerJsonRpcMessage> {
    let stream: &mut Pin<Box<_>> = events.as_mut()?;
    let url = redact_url(url.as_str());
    loop {
        match stream.next().await {
            Some(Ok(event)) => {
                match event.event.as_deref() {
                    // The default event type is `message` (WHATWG HTML §9.2.6).
                    None | Some("message") => {}
                    Some(other) => {
                        tracing::debug!(url = %url, event = other, "SSE: ignoring an unknown event");
                        continue;
                    }
                }
                // An event without data (only `id` or `retry`) carries no message.
                let Some(data) = event.data else { continue };
                match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
                    Ok(message) => return Some(message),
                    Err(error) => {
                        tracing::warn!(
                            url = %url, %error, bytes = data.len(),
                            "SSE: a message event is not a JSON-RPC message; ending the session"
                        );
                        break;
                    }
                }
            }
            Some(Err(error)) => {
                tracing::debug!(url = %url, %error, "SSE: the event stream failed; the session is over");
                break;
            }
            None => {
                tracing::debug!(url = %url, "SSE: the event stream ended; the session is over");
                break;
            }
        }
    }
    *events = None;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_resolved_against_the_sse_url() {
        let base = Url::parse("http://127.0.0.1:8000/mcp/sse").unwrap();
        assert_eq!(
            resolve_endpoint(&base, "/messages/?session_id=abc")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/messages/?session_id=abc"
        );
        assert_eq!(
            resolve_endpoint(&base, "message?sessionId=1")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/mcp/message?sessionId=1"
        );
        assert_eq!(
            resolve_endpoint(&base, " http://127.0.0.1:8000/m?x=1\n")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/m?x=1"
        );
    }

    #[test]
    fn endpoint_on_another_origin_is_refused() {
        let base = Url::parse("http://127.0.0.1:8000/sse").unwrap();
        for endpoint in [
            "http://evil.example/m",
            "https://127.0.0.1:8000/m",
            "http://127.0.0.1:8001/m",
            "//evil.example/m",
        ] {
            let error = resolve_endpoint(&base, endpoint).unwrap_err();
            assert!(
                matches!(error, SseError::BadEndpoint { .. }),
                "{endpoint}: {error}"
            );
        }
    }

    #[test]
    fn event_size_is_limited_per_event() {
        let mut limit = EventSizeLimit::default();
        let line = vec![b'x'; MAX_SSE_EVENT_BYTES / 2 + 1];
        // Two events of just over half the limit each pass: the count restarts at the blank line.
        for _ in 0..2 {
            limit.observe(b"data: ").unwrap();
            limit.observe(&line).unwrap();
            limit.observe(b"\r\n\r\n").unwrap();
        }
        // One event of two such lines does not.
        limit.observe(&line).unwrap();
        limit.observe(b"\r\n").unwrap();
        assert!(matches!(
            limit.observe(&line),
            Err(BodyError::EventTooLarge)
        ));
    }
}
