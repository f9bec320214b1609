//! Per-request headers ([`CallHeaders`]) on the HTTP transports.
//!
//! The pool puts a [`CallHeaders`] in a request's extensions; the HTTP transports read it here
//! when they send the message. Trace headers go on that request only; credentials go on it and
//! replace the session's for every later request (the reply stream `GET`, the `DELETE` at
//! close): a token rotated downstream reaches the upstream, and a session is never deleted with
//! a revoked one.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_pool_traits::{
    CallHeaders, SessionHandler,
    rmcp::model::{ClientJsonRpcMessage, GetExtensions, JsonRpcMessage, RequestId},
};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Error as SseStreamError, Sse};

use crate::{
    delivery::{UNKNOWN_SESSION, names_unknown_session, rejected_status},
    drain::DrainOnDrop,
    headers::{single_valued, upstream_headers},
};

/// The id of `message` when it is a request.
fn request_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        JsonRpcMessage::Request(request) => Some(request.id.clone()),
        _ => None,
    }
}

/// The [`CallHeaders`] a message carries, if any.
pub(crate) fn call_headers(message: &ClientJsonRpcMessage) -> Option<&CallHeaders> {
    match message {
        JsonRpcMessage::Request(request) => request.request.extensions().get::<CallHeaders>(),
        JsonRpcMessage::Notification(notification) => {
            notification.notification.extensions().get::<CallHeaders>()
        }
        _ => None,
    }
}

/// The credentials a session sends now: those it was created with until a request brings
/// newer ones. Shared by the clones of one session's HTTP client.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionCredentials(Arc<Mutex<Option<HeaderMap>>>);

impl SessionCredentials {
    /// Takes `call`'s credentials as the session's from now on (if it has any), and returns
    /// what `message` must send on top of the session's headers: the credentials, then the
    /// trace headers.
    pub(crate) fn for_message(&self, call: Option<&CallHeaders>) -> HeaderMap {
        let mut latest = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(call) = call
            && !call.credentials.is_empty()
        {
            *latest = Some(upstream_headers(&call.credentials));
        }
        let mut out = latest.clone().unwrap_or_default();
        if let Some(call) = call {
            // Replaces same-named headers, keeps every value of a repeated one.
            out.extend(upstream_headers(&call.trace));
        }
        out
    }

    /// Lays `extra` over `headers`, replacing same-named ones.
    pub(crate) fn overlay(headers: &mut HashMap<HeaderName, HeaderValue>, extra: &HeaderMap) {
        headers.extend(single_valued(extra));
    }
}

/// rmcp's streamable HTTP client over a [`reqwest::Client`], adding each message's
/// [`CallHeaders`], and watching what the server says about the session. One per session (the
/// credentials it remembers are the session's); clones share the connection pool.
///
/// - An event stream `GET` of the session answered HTTP 404 or 400 means the server no longer
///   knows the session (after a restart, or its own expiry: the MCP spec's 404; some servers,
///   server-everything among them, answer 400 naming the session): the session is
///   [reported forgotten](SessionHandler::report_forgotten) at once, so the pool evicts it
///   before anyone calls on it. A `GET` carries no body a valid session could be refused for.
/// - A JSON-RPC error without an `id` answering a request `POST` (the server could not tie it
///   to the request: server-everything answers an unknown session so, with HTTP 400) would
///   never reach the call, which would wait for its deadline: when its message names the
///   session as unknown, the `POST` fails as [`UNKNOWN_SESSION`] (a request the server never
///   handled, safe to retry on another session); otherwise the error is given the request's
///   id, so the call fails with it at once.
/// - An event stream answering a `POST` that rmcp stops reading before its end (once it has
///   the response) is read to its end in the background ([`DrainOnDrop`], bounded in time and
///   bytes), so that its connection goes back to the pool instead of being closed.
#[derive(Debug, Clone)]
pub(crate) struct PerCallClient {
    pub(crate) client: reqwest::Client,
    pub(crate) credentials: SessionCredentials,
    pub(crate) session: SessionHandler,
    pub(crate) streams: StreamAnswers,
}

/// Whether the server answered the last `GET` of one of a session's event streams (with a
/// stream or any HTTP status): a reconnection given up on after answers proves the server
/// alive, one given up on after connection failures proves it unreachable. Shared by the
/// session's HTTP client and its retry policy.
#[derive(Debug, Clone)]
pub(crate) struct StreamAnswers(Arc<AtomicBool>);

impl Default for StreamAnswers {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl StreamAnswers {
    /// Whether the last `GET` got no HTTP answer (the connection failed, or timed out).
    pub(crate) fn last_unanswered(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }

    fn record<T>(&self, result: &Result<T, StreamableHttpError<reqwest::Error>>) {
        use StreamableHttpError as E;
        let answered = match result {
            Ok(_) => true,
            Err(E::Client(e)) => e.status().is_some(),
            Err(E::Io(_) | E::Sse(_) | E::UnexpectedEndOfStream) => false,
            // A status, a content type or a challenge: rmcp read an HTTP answer.
            Err(_) => true,
        };
        self.0.store(answered, Ordering::Relaxed);
    }
}

impl PerCallClient {
    fn headers(
        &self,
        call: Option<&CallHeaders>,
        mut custom: HashMap<HeaderName, HeaderValue>,
    ) -> HashMap<HeaderName, HeaderValue> {
        SessionCredentials::overlay(&mut custom, &self.credentials.for_message(call));
        custom
    }

    /// Reports the session forgotten when `result`, a `GET` of its event stream, was refused
    /// with HTTP 404 or 400.
    fn watch_stream<T>(
        &self,
        attached: bool,
        result: &Result<T, StreamableHttpError<reqwest::Error>>,
    ) {
        self.streams.record(result);
        if let Err(error) = result
            && attached
            && let Some(status) = rejected_status(error)
        {
            self.session.report_forgotten(format!(
                "the server does not know the session (its event stream was refused with HTTP \
                 {status})"
            ));
        }
    }
}

/// The answer to a `POST` (of the request with id `request`, if it was one), with the id-less
/// JSON-RPC errors and the event streams handled as [`PerCallClient`] describes.
fn post_answer(
    request: Option<RequestId>,
    attached: bool,
    answer: Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>,
) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
    let (mut error, session) = match answer {
        Ok(StreamableHttpPostResponse::Json(JsonRpcMessage::Error(error), session)) => {
            (error, session)
        }
        Ok(StreamableHttpPostResponse::Sse(events, session)) => {
            return Ok(StreamableHttpPostResponse::Sse(
                Box::pin(DrainOnDrop::new(events)),
                session,
            ));
        }
        answer => return answer,
    };
    if error.id.is_none() {
        if attached && names_unknown_session(&error.error.message) {
            return Err(StreamableHttpError::UnexpectedServerResponse(
                format!(
                    "{UNKNOWN_SESSION}JSON-RPC error {}: {}",
                    error.error.code.0, error.error.message
                )
                .into(),
            ));
        }
        if request.is_some() {
            error.id = request;
        }
    }
    Ok(StreamableHttpPostResponse::Json(
        JsonRpcMessage::Error(error),
        session,
    ))
}

type Stream = BoxStream<'static, Result<Sse, SseStreamError>>;

impl StreamableHttpClient for PerCallClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        let headers = self.headers(call_headers(&message), custom_headers);
        let (attached, request) = (session_id.is_some(), request_id(&message));
        let answer = self
            .client
            .post_message(uri, message, session_id, auth_header, headers)
            .await;
        post_answer(request, attached, answer)
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        let headers = self.headers(call_headers(&message), custom_headers);
        let (attached, request) = (session_id.is_some(), request_id(&message));
        let answer = self
            .client
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await;
        post_answer(request, attached, answer)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<reqwest::Error>> {
        let headers = self.headers(None, custom_headers);
        self.client
            .delete_session(uri, session_id, auth_header, headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<Stream, StreamableHttpError<reqwest::Error>> {
        let headers = self.headers(None, custom_headers);
        let attached = session_id.is_some();
        let result = self
            .client
            .get_stream(uri, session_id, last_event_id, auth_header, headers)
            .await;
        self.watch_stream(attached, &result);
        result
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<Stream, StreamableHttpError<reqwest::Error>> {
        let headers = self.headers(None, custom_headers);
        let attached = session_id.is_some();
        let result = self
            .client
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await;
        self.watch_stream(attached, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use mcp_pool_traits::rmcp::model::{ErrorCode, ErrorData, JsonRpcError, NumberOrString};

    use super::*;

    fn idless(message: &'static str) -> StreamableHttpPostResponse {
        StreamableHttpPostResponse::Json(
            JsonRpcMessage::Error(JsonRpcError {
                jsonrpc: Default::default(),
                id: None,
                error: ErrorData::new(ErrorCode(-32000), message, None),
            }),
            None,
        )
    }

    #[test]
    fn an_idless_error_naming_the_session_fails_the_post_as_an_unknown_session() {
        let answer = post_answer(
            Some(RequestId::Number(7)),
            true,
            Ok(idless("Bad Request: No valid session ID provided")),
        );
        match answer {
            Err(StreamableHttpError::UnexpectedServerResponse(text)) => assert_eq!(
                text,
                format!(
                    "{UNKNOWN_SESSION}JSON-RPC error -32000: Bad Request: No valid session ID \
                     provided"
                )
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_get_counts_as_answered_when_the_server_said_anything() {
        let answers = StreamAnswers::default();
        assert!(!answers.last_unanswered());
        answers.record::<()>(&Err(StreamableHttpError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert!(
            answers.last_unanswered(),
            "a refused connection is no answer"
        );
        answers.record::<()>(&Err(StreamableHttpError::UnexpectedServerResponse(
            "HTTP 409 Conflict: stream exists".into(),
        )));
        assert!(!answers.last_unanswered(), "a status is an answer");
        answers.record::<()>(&Err(StreamableHttpError::UnexpectedEndOfStream));
        assert!(answers.last_unanswered());
        answers.record(&Ok(()));
        assert!(!answers.last_unanswered());
    }

    #[test]
    fn any_other_idless_error_reaches_the_request_it_answers() {
        for (attached, message) in [
            (true, "Parse error"),
            // No session yet (initialize): whatever it says is about this request.
            (false, "Bad Request: No valid session ID provided"),
        ] {
            let answer = post_answer(Some(RequestId::Number(7)), attached, Ok(idless(message)));
            match answer {
                Ok(StreamableHttpPostResponse::Json(JsonRpcMessage::Error(error), _)) => {
                    assert_eq!(error.id, Some(NumberOrString::Number(7)));
                    assert_eq!(error.error.message, message);
                }
                other => panic!("{other:?}"),
            }
        }
        // Answering a notification: nothing to give it to.
        let answer = post_answer(None, true, Ok(idless("Parse error")));
        assert!(matches!(
            answer,
            Ok(StreamableHttpPostResponse::Json(
                JsonRpcMessage::Error(JsonRpcError { id: None, .. }),
                _
            ))
        ));
        // Everything else passes through.
        assert!(matches!(
            post_answer(
                Some(RequestId::Number(1)),
                true,
                Ok(StreamableHttpPostResponse::Accepted)
            ),
            Ok(StreamableHttpPostResponse::Accepted)
        ));
        assert!(matches!(
            post_answer(
                Some(RequestId::Number(1)),
                true,
                Err(StreamableHttpError::SessionExpired)
            ),
            Err(StreamableHttpError::SessionExpired)
        ));
    }
}
