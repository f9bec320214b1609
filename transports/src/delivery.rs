//! [`call_failure`]: what a failed call on a session says about retrying it (issue 10, items 2
//! and 4).

use std::{error::Error as StdError, io};

use rmcp::{ServiceError, transport::streamable_http_client::StreamableHttpError};

use crate::SseError;

/// What a failed call on a pooled session proves, for the pool's retry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallFailure {
    /// The upstream refused the request's credentials (HTTP 401): the request never reached a
    /// handler. The pool evicts the session and retries once with the current credentials.
    Unauthorized,
    /// The request provably never reached the server's handler: retrying it cannot run it
    /// twice.
    NotDelivered(NotDelivered),
}

/// Why a request provably never reached the server's handler ([`CallFailure::NotDelivered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotDelivered {
    /// HTTP 404 on a session request: the server no longer knows the session (MCP spec,
    /// streamable HTTP: "the server MAY terminate the session … respond with 404").
    SessionExpired,
    /// The connection was refused, or failed before the request was written.
    Connect,
    /// The session was already closed when the request was handed to it.
    SessionClosed,
}

impl NotDelivered {
    /// The label of the retry metric: `session_expired`, `connect`, `session_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionExpired => "session_expired",
            Self::Connect => "connect",
            Self::SessionClosed => "session_closed",
        }
    }
}

/// What `error`, the failure of a call already handed to the session, proves: `None` when the
/// request may have reached the server (a reset after the request was written, a reply stream
/// that broke, a JSON-RPC error, a timeout) — such a call must never be retried, it may have
/// run.
///
/// Recognizes the errors of this crate's transports: rmcp's streamable HTTP client (a 404
/// `SessionExpired`, a 401 `AuthRequired` or `HTTP 401` reply, a reqwest connect error) and
/// [`SseError`] (a `POST` answered 401 or 404, a connect error), and I/O errors of kind
/// `ConnectionRefused` anywhere in the chain.
pub fn call_failure(error: &ServiceError) -> Option<CallFailure> {
    let ServiceError::TransportSend(error) = error else {
        return None;
    };
    let mut current: Option<&(dyn StdError + 'static)> = Some(error.error.as_ref());
    for _ in 0..32 {
        let error = current?;
        if let Some(e) = error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            return streamable_http(e);
        }
        if let Some(e) = error.downcast_ref::<SseError>() {
            return match e {
                SseError::PostRejected(status) if status.as_u16() == 401 => {
                    Some(CallFailure::Unauthorized)
                }
                SseError::PostRejected(status) if status.as_u16() == 404 => {
                    Some(CallFailure::NotDelivered(NotDelivered::SessionExpired))
                }
                SseError::Http(e) if e.is_connect() => {
                    Some(CallFailure::NotDelivered(NotDelivered::Connect))
                }
                _ => None,
            };
        }
        if let Some(e) = error.downcast_ref::<reqwest::Error>() {
            return e
                .is_connect()
                .then_some(CallFailure::NotDelivered(NotDelivered::Connect));
        }
        if let Some(e) = error.downcast_ref::<io::Error>() {
            return (e.kind() == io::ErrorKind::ConnectionRefused)
                .then_some(CallFailure::NotDelivered(NotDelivered::Connect));
        }
        current = error.source();
    }
    None
}

fn streamable_http(error: &StreamableHttpError<reqwest::Error>) -> Option<CallFailure> {
    use StreamableHttpError as E;
    match error {
        E::SessionExpired => Some(CallFailure::NotDelivered(NotDelivered::SessionExpired)),
        E::AuthRequired(_) => Some(CallFailure::Unauthorized),
        // Other statuses arrive as text: `HTTP 401 Unauthorized: <body>` (rmcp 3.9).
        E::UnexpectedServerResponse(text) if text.starts_with("HTTP 401") => {
            Some(CallFailure::Unauthorized)
        }
        E::Client(e) if e.is_connect() => Some(CallFailure::NotDelivered(NotDelivered::Connect)),
        _ => None,
    }
}
