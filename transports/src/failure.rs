//! [`failure_kind`]: the [`FailureKind`] of an error met while opening a session.

use std::{error::Error as StdError, io};

use http::StatusCode;
use mcp_pool_traits::FailureKind;
use rmcp::{
    service::ClientInitializeError,
    transport::streamable_http_client::{HttpStatusError, StreamableHttpError},
};
use tokio_tungstenite::tungstenite;

use crate::{SseError, WebSocketError};

type Dyn<'a> = &'a (dyn StdError + 'static);

/// How deep [`failure_kind`] follows an error's causes; error chains are a handful deep, and
/// a bound keeps a cyclic `source()` (a bug elsewhere) from looping forever.
const MAX_DEPTH: usize = 32;

/// The category of `error`, an error met while opening a session (connect + `initialize`),
/// for [`TransportError::Connect`](mcp_pool_traits::TransportError::Connect).
///
/// Follows the chain of causes from the outside in and takes the first that decides:
/// - rmcp's `ClientInitializeError`: a JSON-RPC error, an unexpected or uncorrelated reply or
///   no compatible protocol version is [`FailureKind::Protocol`]; the connection closing
///   during the handshake is [`FailureKind::ConnectionRefused`]; a transport error is
///   categorized by its own cause;
/// - rmcp's `StreamableHttpError`: the HTTP status of the `initialize` POST (the auth-required
///   errors of a 401 / 403 with `WWW-Authenticate`, `HttpStatus` for 429 and 5xx, and the
///   `HTTP <status>: <body>` text of `UnexpectedServerResponse` for the rest), a malformed
///   reply as [`FailureKind::Protocol`], a reserved header as
///   [`FailureKind::InvalidRequest`];
/// - [`SseError`]: the status of the stream's `GET` or of a message `POST`;
/// - [`WebSocketError`] and tungstenite's errors: the status of a refused upgrade
///   (`Error::Http`), TLS, a closed connection, a protocol error (the `mcp` subprotocol not
///   selected);
/// - reqwest's errors: timeout, DNS ([`FailureKind::Unreachable`]), connect, status;
/// - I/O errors by kind: refused / reset / aborted / broken pipe / unexpected EOF as
///   [`FailureKind::ConnectionRefused`], host / network unreachable and failed address
///   lookups as [`FailureKind::Unreachable`], timed out as [`FailureKind::Timeout`];
/// - rustls errors (with the `rustls` feature) as [`FailureKind::Tls`].
///
/// Anything else is [`FailureKind::Other`], which counts against the endpoint.
pub fn failure_kind(error: &(dyn StdError + 'static)) -> FailureKind {
    classify(error, 0).unwrap_or(FailureKind::Other)
}

fn classify(error: Dyn<'_>, depth: usize) -> Option<FailureKind> {
    let mut current = Some(error);
    let mut depth = depth;
    while let Some(error) = current {
        if depth >= MAX_DEPTH {
            return None;
        }
        depth += 1;
        if let Some(kind) = classify_one(error, depth) {
            return Some(kind);
        }
        // `io::Error::source` skips the wrapped error and goes straight to *its* source: step
        // into the wrapped error instead, so a rustls error inside is seen.
        current = match error.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as Dyn<'_>),
            None => error.source(),
        };
    }
    None
}

/// The category `error` itself decides, without looking at its causes (except for the error
/// types whose cause is not reachable through `source()`).
fn classify_one(error: Dyn<'_>, depth: usize) -> Option<FailureKind> {
    if let Some(e) = error.downcast_ref::<ClientInitializeError>() {
        return initialize(e, depth);
    }
    if let Some(e) = error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
        return streamable_http(e, depth);
    }
    if let Some(e) = error.downcast_ref::<HttpStatusError>() {
        return status_u16(e.status);
    }
    if let Some(e) = error.downcast_ref::<SseError>() {
        return sse(e);
    }
    if let Some(e) = error.downcast_ref::<WebSocketError>() {
        return match e {
            WebSocketError::Handshake(e) | WebSocketError::Send(e) => websocket(e, depth),
            WebSocketError::Serialize(_) => None,
        };
    }
    if let Some(e) = error.downcast_ref::<tungstenite::Error>() {
        return websocket(e, depth);
    }
    if let Some(e) = error.downcast_ref::<reqwest::Error>() {
        return http_client(e);
    }
    if let Some(e) = error.downcast_ref::<io::Error>() {
        return io_kind(e);
    }
    #[cfg(feature = "rustls")]
    if error.downcast_ref::<rustls::Error>().is_some() {
        return Some(FailureKind::Tls);
    }
    None
}

fn initialize(error: &ClientInitializeError, depth: usize) -> Option<FailureKind> {
    match error {
        // The cause is a field, not a `source()`.
        ClientInitializeError::TransportError { error, .. } => {
            classify(error.error.as_ref(), depth).or(Some(FailureKind::Other))
        }
        ClientInitializeError::LegacyFallbackFailed { fallback, .. } => {
            classify(fallback.as_ref(), depth)
        }
        ClientInitializeError::ConnectionClosed(_) => Some(FailureKind::ConnectionRefused),
        ClientInitializeError::Cancelled => Some(FailureKind::Other),
        ClientInitializeError::ExpectedInitResponse(_)
        | ClientInitializeError::ExpectedInitResult(_)
        | ClientInitializeError::ConflictInitResponseId(..)
        | ClientInitializeError::UncorrelatedErrorResponse { .. }
        | ClientInitializeError::JsonRpcError(_)
        | ClientInitializeError::NoCompatibleProtocolVersion { .. }
        | ClientInitializeError::NoPreferredProtocolVersion => Some(FailureKind::Protocol),
        // `ClientInitializeError` is non-exhaustive.
        _ => Some(FailureKind::Other),
    }
}

fn streamable_http(
    error: &StreamableHttpError<reqwest::Error>,
    depth: usize,
) -> Option<FailureKind> {
    use StreamableHttpError as E;
    match error {
        // rmcp answers a 401 / 403 carrying `WWW-Authenticate` with these.
        E::AuthRequired(_) => Some(FailureKind::Unauthorized),
        E::InsufficientScope(_) => Some(FailureKind::Forbidden),
        E::HttpStatus(status) => status_u16(status.status),
        // Other error statuses arrive as text: `HTTP 404 Not Found: <body>` (rmcp 3.9,
        // `post_message`). A text without a status is a reply the client could not use.
        E::UnexpectedServerResponse(text) => {
            Some(status_in_text(text).unwrap_or(FailureKind::Protocol))
        }
        E::Client(e) => classify(e, depth).or(Some(FailureKind::Other)),
        E::Io(e) => classify(e, depth),
        E::ReservedHeaderConflict(_) => Some(FailureKind::InvalidRequest),
        E::Sse(_)
        | E::UnexpectedEndOfStream
        | E::ResponseBodyTooLarge { .. }
        | E::UnexpectedContentType(_)
        | E::ServerDoesNotSupportSse
        | E::Deserialize(_)
        | E::MissingSessionIdInResponse
        | E::SessionExpired => Some(FailureKind::Protocol),
        _ => None,
    }
}

/// The status of rmcp's `HTTP <code> <reason>: <body>` text.
fn status_in_text(text: &str) -> Option<FailureKind> {
    let rest = text.strip_prefix("HTTP ")?;
    let code = rest.get(..3)?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    FailureKind::from_status(status)
}

fn status_u16(code: u16) -> Option<FailureKind> {
    StatusCode::from_u16(code)
        .ok()
        .and_then(FailureKind::from_status)
        .or(Some(FailureKind::Protocol))
}

/// An HTTP status that should not have ended the handshake: an error status by its
/// category, anything else (a redirect, a 200 that is not an event stream) as a reply a
/// client of this transport cannot use.
fn status(status: StatusCode) -> Option<FailureKind> {
    Some(FailureKind::from_status(status).unwrap_or(FailureKind::Protocol))
}

fn sse(error: &SseError) -> Option<FailureKind> {
    match error {
        SseError::NotAnEventStream { status: s, .. } => status(*s),
        // A redirect is the endpoint's (it moved, for everyone): not followed, counted.
        SseError::PostRejected(s) | SseError::Redirected(s) => status(*s),
        SseError::PostResponseTooLarge => Some(FailureKind::Protocol),
        SseError::NoEndpoint(_) | SseError::BadEndpoint { .. } => Some(FailureKind::Protocol),
        // The cause decides (connect, TLS, DNS, …).
        SseError::Http(_) => None,
        SseError::InvalidUrl { .. } | SseError::Serialize(_) => Some(FailureKind::Other),
    }
}

fn websocket(error: &tungstenite::Error, depth: usize) -> Option<FailureKind> {
    use tungstenite::Error as E;
    match error {
        E::Http(response) => status(response.status()),
        E::Io(e) => classify(e, depth).or(Some(FailureKind::Other)),
        E::Tls(_) => Some(FailureKind::Tls),
        E::ConnectionClosed | E::AlreadyClosed => Some(FailureKind::ConnectionRefused),
        E::Protocol(_) | E::Capacity(_) | E::Utf8(_) | E::AttackAttempt => {
            Some(FailureKind::Protocol)
        }
        // An invalid header value of the caller's on the upgrade request.
        E::HttpFormat(_) => Some(FailureKind::InvalidRequest),
        E::Url(_) | E::WriteBufferFull(_) => Some(FailureKind::Other),
    }
}

fn http_client(error: &reqwest::Error) -> Option<FailureKind> {
    if error.is_timeout() {
        return Some(FailureKind::Timeout);
    }
    if error.is_dns() {
        return Some(FailureKind::Unreachable);
    }
    if let Some(s) = error.status() {
        return status(s);
    }
    // A connect error's cause says more (refused, unreachable, TLS); `classify` goes on to it,
    // and a bare connect error is a refusal.
    if error.is_connect() {
        let cause = error.source().and_then(|cause| classify(cause, 1));
        return Some(cause.unwrap_or(FailureKind::ConnectionRefused));
    }
    None
}

fn io_kind(error: &io::Error) -> Option<FailureKind> {
    use io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected
        | K::UnexpectedEof => Some(FailureKind::ConnectionRefused),
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            Some(FailureKind::Unreachable)
        }
        K::TimedOut => Some(FailureKind::Timeout),
        // getaddrinfo's failures carry no kind of their own (std's `ToSocketAddrs`, tokio's
        // `lookup_host`, which tungstenite's connect uses).
        _ if error.to_string().contains("failed to lookup address") => {
            Some(FailureKind::Unreachable)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(error: impl StdError + Send + Sync + 'static) -> Box<dyn StdError + Send + Sync> {
        Box::new(error)
    }

    #[test]
    fn statuses_in_rmcp_text_are_read() {
        type E = StreamableHttpError<reqwest::Error>;
        let cases = [
            ("HTTP 401 Unauthorized: no token", FailureKind::Unauthorized),
            ("HTTP 403 Forbidden: ", FailureKind::Forbidden),
            ("HTTP 404 Not Found: <html>", FailureKind::NotFound),
            (
                "HTTP 400 Bad Request: bad",
                FailureKind::ClientError(StatusCode::BAD_REQUEST),
            ),
            (
                "invalid www-authenticate header value",
                FailureKind::Protocol,
            ),
            ("HTTP 2", FailureKind::Protocol),
        ];
        for (text, expected) in cases {
            let error = boxed(E::UnexpectedServerResponse(text.into()));
            assert_eq!(failure_kind(error.as_ref()), expected, "{text}");
        }
        let error = boxed(E::HttpStatus(HttpStatusError::new(429, None)));
        assert_eq!(
            failure_kind(error.as_ref()),
            FailureKind::ClientError(StatusCode::TOO_MANY_REQUESTS)
        );
        let error = boxed(E::ReservedHeaderConflict("last-event-id".into()));
        assert_eq!(failure_kind(error.as_ref()), FailureKind::InvalidRequest);
    }

    #[test]
    fn io_errors_are_read_through_wrappers() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(failure_kind(&refused), FailureKind::ConnectionRefused);
        // Wrapped in an error whose `source()` is the I/O error.
        let wrapped = SseError::NoEndpoint("x".into());
        assert_eq!(failure_kind(&wrapped), FailureKind::Protocol);
        let ws = WebSocketError::Handshake(tungstenite::Error::Io(io::Error::from(
            io::ErrorKind::HostUnreachable,
        )));
        assert_eq!(failure_kind(&ws), FailureKind::Unreachable);
        let lookup =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(failure_kind(&lookup), FailureKind::Unreachable);
        assert_eq!(
            failure_kind(&io::Error::other("something else")),
            FailureKind::Other
        );
    }

    #[test]
    fn refused_websocket_upgrades_are_read_by_status() {
        for (code, expected) in [
            (401, FailureKind::Unauthorized),
            (404, FailureKind::NotFound),
            (502, FailureKind::ServerError(StatusCode::BAD_GATEWAY)),
            (200, FailureKind::Protocol),
        ] {
            let response = http::Response::builder().status(code).body(None).unwrap();
            let error = WebSocketError::Handshake(tungstenite::Error::Http(Box::new(response)));
            assert_eq!(failure_kind(&error), expected, "HTTP {code}");
        }
    }
}
