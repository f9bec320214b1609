//! [`call_failure`]: what a failed call on a session says about retrying it.

use std::{error::Error as StdError, io};

use rmcp::{ServiceError, transport::streamable_http_client::StreamableHttpError};

use crate::SseError;

/// How a transport error starts when the server answered a request on a session with a
/// JSON-RPC error that has no `id` and names the session as unknown (see
/// [`names_unknown_session`]): the answer server-everything gives a session it does not know,
/// with HTTP 400. The rest is the error's code and message.
pub(crate) const UNKNOWN_SESSION: &str = "the server does not know the session: ";

/// Whether `message`, a server's words about a request it refused, says that it does not know
/// the request's session: it names the session and says not found, no valid, invalid,
/// unknown, expired, missing, terminated or does not exist, in any case. What the official
/// SDKs' servers say: `Session not found` (Python and TypeScript SDKs, HTTP 404), `Bad
/// Request: No valid session ID provided` (server-everything, HTTP 400).
pub(crate) fn names_unknown_session(message: &str) -> bool {
    const UNKNOWN: [&str; 8] = [
        "not found",
        "no valid",
        "invalid",
        "unknown",
        "expired",
        "missing",
        "terminated",
        "does not exist",
    ];
    let message = message.to_ascii_lowercase();
    message.contains("session") && UNKNOWN.iter().any(|word| message.contains(word))
}

/// The status of `error` when it is an HTTP 404 or 400 answer to a request on a session: the
/// server refused the session (a 400 answering a session's event stream `GET` or naming the
/// session, see [`names_unknown_session`]).
pub(crate) fn rejected_status(error: &StreamableHttpError<reqwest::Error>) -> Option<u16> {
    use StreamableHttpError as E;
    match error {
        E::SessionExpired => Some(404),
        E::Client(e) => e
            .status()
            .map(|s| s.as_u16())
            .filter(|s| matches!(s, 400 | 404)),
        E::UnexpectedServerResponse(text) => {
            let status = text.strip_prefix("HTTP ")?.get(..3)?.parse().ok()?;
            matches!(status, 400 | 404).then_some(status)
        }
        _ => None,
    }
}

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
    /// streamable HTTP: "the server MAY terminate the session … respond with 404"); also an
    /// HTTP 400 answer, or a JSON-RPC error without an `id`, whose message names the session as
    /// unknown (server-everything after a restart).
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
/// `SessionExpired`, an `HTTP 400` / `HTTP 404` reply or an id-less JSON-RPC error naming the
/// session as unknown, a 401 `AuthRequired` or `HTTP 401` reply, a reqwest connect error) and
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
        // The session refused with words: `HTTP 400 Bad Request: <body naming the session>`
        // (rmcp 3.9's text of a non-JSON error answer), or an id-less JSON-RPC error naming it.
        E::UnexpectedServerResponse(text)
            if text.starts_with(UNKNOWN_SESSION)
                || (rejected_status(error).is_some() && names_unknown_session(text)) =>
        {
            Some(CallFailure::NotDelivered(NotDelivered::SessionExpired))
        }
        E::Client(e) if e.is_connect() => Some(CallFailure::NotDelivered(NotDelivered::Connect)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rmcp::transport::DynamicTransportError;

    use super::*;
    use crate::failure_cause;

    fn send_error(error: StreamableHttpError<reqwest::Error>) -> ServiceError {
        ServiceError::TransportSend(DynamicTransportError::from_parts(
            "test",
            std::any::TypeId::of::<()>(),
            Box::new(error),
        ))
    }

    #[test]
    fn what_the_official_servers_say_of_a_session_they_do_not_know_is_recognized() {
        for said in [
            "Bad Request: No valid session ID provided",
            "Session not found",
            "Not Found: Session not found",
            "Invalid or missing session ID",
            "session expired",
            "Unknown session",
            "The session was terminated",
            "session does not exist",
        ] {
            assert!(names_unknown_session(said), "{said}");
        }
        for said in [
            "Bad Request: invalid JSON",
            "Session limit reached",
            "Not Found",
            "Internal server error",
        ] {
            assert!(!names_unknown_session(said), "{said}");
        }
    }

    #[test]
    fn a_session_refused_with_words_was_never_delivered() {
        let expired = Some(CallFailure::NotDelivered(NotDelivered::SessionExpired));
        // server-everything's id-less answer, as the streamable HTTP transport words it.
        let idless = send_error(StreamableHttpError::UnexpectedServerResponse(
            format!(
                "{UNKNOWN_SESSION}JSON-RPC error -32000: Bad Request: No valid session ID \
                 provided"
            )
            .into(),
        ));
        assert_eq!(call_failure(&idless), expired);
        assert_eq!(
            failure_cause(&idless),
            "the server does not know the session: JSON-RPC error -32000: Bad Request: No \
             valid session ID provided"
        );
        // rmcp's text of a non-JSON error answer.
        let text = |s: &str| {
            send_error(StreamableHttpError::UnexpectedServerResponse(
                s.to_owned().into(),
            ))
        };
        assert_eq!(
            call_failure(&text("HTTP 400 Bad Request: No valid session ID provided")),
            expired
        );
        assert_eq!(
            call_failure(&text("HTTP 404 Not Found: Session not found")),
            expired
        );
        // A 400 for another reason may have been the request's own fault after it ran: no.
        assert_eq!(
            call_failure(&text("HTTP 400 Bad Request: invalid params")),
            None
        );
        assert_eq!(
            call_failure(&text("HTTP 500 Internal Server Error: session store down")),
            None
        );
        assert_eq!(
            call_failure(&send_error(StreamableHttpError::SessionExpired)),
            expired
        );
    }

    #[test]
    fn only_404_and_400_refuse_a_session() {
        use StreamableHttpError as E;
        assert_eq!(rejected_status(&E::SessionExpired), Some(404));
        assert_eq!(
            rejected_status(&E::UnexpectedServerResponse(
                "HTTP 400 Bad Request: x".into()
            )),
            Some(400)
        );
        assert_eq!(
            rejected_status(&E::UnexpectedServerResponse("HTTP 401 Unauthorized".into())),
            None
        );
        assert_eq!(rejected_status(&E::ServerDoesNotSupportSse), None);
        assert_eq!(rejected_status(&E::UnexpectedEndOfStream), None);
    }
}
