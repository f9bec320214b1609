//! Per-request headers ([`CallHeaders`]) on the HTTP transports (issue 10, item 2).
//!
//! The pool puts a [`CallHeaders`] in a request's extensions; the HTTP transports read it here
//! when they send the message. Trace headers go on that request only; credentials go on it and
//! replace the session's for every later request (the reply stream `GET`, the `DELETE` at
//! close): a token rotated downstream reaches the upstream, and a session is never deleted with
//! a revoked one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_pool_traits::{
    CallHeaders,
    rmcp::model::{ClientJsonRpcMessage, GetExtensions, JsonRpcMessage},
};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Error as SseStreamError, Sse};

use crate::headers::{single_valued, upstream_headers};

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
/// [`CallHeaders`]. One per session (the credentials it remembers are the session's); clones
/// share the connection pool.
#[derive(Debug, Clone)]
pub(crate) struct PerCallClient {
    pub(crate) client: reqwest::Client,
    pub(crate) credentials: SessionCredentials,
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
        self.client
            .post_message(uri, message, session_id, auth_header, headers)
            .await
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
        self.client
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await
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
        self.client
            .get_stream(uri, session_id, last_event_id, auth_header, headers)
            .await
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
        self.client
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await
    }
}
