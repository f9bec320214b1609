//! [`failure_kind`] and [`failure_cause`]: the [`FailureKind`] of an error met while opening a
//! session, and its cause in words.

use std::{error::Error as StdError, io};

use http::StatusCode;
use mcp_pool_traits::{FailureKind, TransportError};
use rmcp::{
    ServiceError,
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

/// The [`TransportError::Connect`] for `url` of `error`, met while opening a session: its
/// category by [`failure_kind`], its cause in words by [`failure_cause`], `error` itself kept
/// for programs.
pub(crate) fn connect_error(url: &str, error: Box<dyn StdError + Send + Sync>) -> TransportError {
    let kind = failure_kind(error.as_ref());
    let mut cause = failure_cause(error.as_ref());
    // A resolver's error does not say which name failed; the URL does.
    if cause.starts_with(UNRESOLVED)
        && let Some(host) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    {
        cause = cause.replacen("the host name", &host, 1);
    }
    TransportError::with_cause(url, kind, cause, error)
}

/// How [`failure_cause`] words a failed name lookup whose host it does not know.
const UNRESOLVED: &str = "DNS failure: the host name could not be resolved";

/// The cause of `error`, an error met while opening a session (connect + `initialize`), in
/// words a user can act on, for
/// [`TransportError::Connect::cause`](mcp_pool_traits::TransportError::Connect::cause):
///
/// - `connection refused (nothing listens at this address)`, `the connection was closed`,
///   `host unreachable: …`, `timed out`;
/// - `DNS failure: <host> could not be resolved (<resolver's message>)`;
/// - `invalid URL: invalid port number (a port is 1 to 65535)`;
/// - `TLS handshake failed: …`;
/// - `HTTP 404 Not Found (text/html): "<title or first words>"`: the status, the content type
///   (guessed from the body as `an HTML page`, `JSON` or `text` where rmcp 3.9 does not keep
///   it: streamable HTTP error statuses) and an excerpt of at most 100 characters, tags
///   stripped;
/// - what was wrong with the answer to `initialize` (not JSON-RPC, not an initialize result,
///   a JSON-RPC error with its code and message, no protocol version in common).
///
/// Follows the chain of causes as [`failure_kind`] does; an error it does not know is worded
/// by the message of the innermost cause. Never contains Rust type names or a message twice.
/// rmcp's `ServiceError` of a call on an open session is worded the same way (its transport
/// error is not reachable through `source()`, and its message names Rust types).
pub fn failure_cause(error: &(dyn StdError + 'static)) -> String {
    describe(error, 0).unwrap_or_else(|| root_message(error))
}

/// Causes of `error`, from the outside in, stepping into an I/O error's wrapped error (which
/// `io::Error::source` skips).
fn chain<'a>(error: Dyn<'a>) -> impl Iterator<Item = Dyn<'a>> {
    std::iter::successors(Some(error), |&e: &Dyn<'a>| {
        match e.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as Dyn<'a>),
            None => e.source(),
        }
    })
    .take(MAX_DEPTH)
}

/// The message of the innermost cause of `error`.
fn root_message(error: Dyn<'_>) -> String {
    chain(error).last().unwrap_or(error).to_string()
}

fn describe(error: Dyn<'_>, depth: usize) -> Option<String> {
    if depth >= MAX_DEPTH {
        return None;
    }
    chain(error).find_map(|e| describe_one(e, depth + 1))
}

fn describe_one(error: Dyn<'_>, depth: usize) -> Option<String> {
    if let Some(e) = error.downcast_ref::<ClientInitializeError>() {
        return describe_initialize(e, depth);
    }
    if let Some(e) = error.downcast_ref::<ServiceError>() {
        return Some(describe_service(e, depth));
    }
    if let Some(e) = error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
        return Some(describe_streamable_http(e, depth));
    }
    if let Some(e) = error.downcast_ref::<HttpStatusError>() {
        return Some(describe_http_status(e));
    }
    if let Some(e) = error.downcast_ref::<SseError>() {
        return describe_sse(e, depth);
    }
    if let Some(e) = error.downcast_ref::<WebSocketError>() {
        return match e {
            WebSocketError::Handshake(e) | WebSocketError::Send(e) => {
                Some(describe_websocket(e, depth))
            }
            WebSocketError::InvalidUrl { source, .. } => Some(invalid_url(source)),
            WebSocketError::Serialize(e) => Some(format!("could not serialize a message: {e}")),
        };
    }
    if let Some(e) = error.downcast_ref::<tungstenite::Error>() {
        return Some(describe_websocket(e, depth));
    }
    if let Some(e) = error.downcast_ref::<reqwest::Error>() {
        return describe_reqwest(e, depth);
    }
    if let Some(e) = error.downcast_ref::<url::ParseError>() {
        return Some(invalid_url(e));
    }
    if let Some(e) = error.downcast_ref::<io::Error>() {
        return describe_io(e, depth);
    }
    #[cfg(feature = "rustls")]
    if let Some(e) = error.downcast_ref::<rustls::Error>() {
        return Some(format!("TLS handshake failed: {e}"));
    }
    None
}

/// Said of answers that show the URL is not an MCP endpoint of this transport.
const NOT_MCP: &str = "is this URL an MCP endpoint?";

fn describe_initialize(error: &ClientInitializeError, depth: usize) -> Option<String> {
    use ClientInitializeError as E;
    Some(match error {
        // The cause is a field, not a `source()`.
        E::TransportError { error, .. } => describe(error.error.as_ref(), depth)
            .unwrap_or_else(|| root_message(error.error.as_ref())),
        E::LegacyFallbackFailed { fallback, .. } => return describe(fallback.as_ref(), depth),
        E::ConnectionClosed(_) => "the connection was closed".into(),
        E::Cancelled => "initialize was cancelled".into(),
        E::JsonRpcError(e) if e.code == rmcp::model::ErrorCode::UNSUPPORTED_PROTOCOL_VERSION => {
            // The server names what it supports in `data.supported` (MCP 2026-07-28).
            let supported = e
                .data
                .as_ref()
                .and_then(|d| d.get("supported"))
                .and_then(|s| s.as_array())
                .map(|versions| {
                    versions
                        .iter()
                        .filter_map(|v| v.as_str())
                        .map(excerpt)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "not said".into());
            format!(
                "the server refused initialize: it supports protocol versions {supported}; an \
                 endpoint of a 2026-07-28 server takes lifecycle = \"discover\" (or \"auto\")"
            )
        }
        E::JsonRpcError(e) => format!(
            "the server answered initialize with JSON-RPC error {}: {}",
            e.code.0,
            excerpt(&e.message)
        ),
        E::NoCompatibleProtocolVersion {
            client_supported,
            server_supported,
        } => format!(
            "no MCP protocol version in common (client: {}; server: {})",
            join(client_supported),
            join(server_supported)
        ),
        E::ExpectedInitResponse(_)
        | E::ExpectedInitResult(_)
        | E::ConflictInitResponseId(..)
        | E::UncorrelatedErrorResponse { .. } => {
            format!("the answer to initialize is not an initialize result ({NOT_MCP})")
        }
        // Messages of their own, free of type names (`ClientInitializeError` is
        // non-exhaustive).
        other => other.to_string(),
    })
}

/// A call's error on an open session (rmcp keeps a transport error as a field, not a
/// `source()`, and names the transport's Rust type in its message).
fn describe_service(error: &ServiceError, depth: usize) -> String {
    match error {
        ServiceError::McpError(e) => format!(
            "the server answered with JSON-RPC error {}: {}",
            e.code.0,
            excerpt(&e.message)
        ),
        ServiceError::TransportSend(e) => {
            describe(e.error.as_ref(), depth).unwrap_or_else(|| root_message(e.error.as_ref()))
        }
        ServiceError::TransportClosed => "the session's connection is closed".into(),
        ServiceError::UnexpectedResponse => "the answer does not fit the request".into(),
        ServiceError::Timeout { timeout } => format!("no answer within {timeout:?}"),
        ServiceError::Cancelled { reason } => match reason {
            Some(reason) => format!("the request was cancelled: {}", excerpt(reason)),
            None => "the request was cancelled".into(),
        },
        // Messages of their own, free of type names (`ServiceError` is non-exhaustive).
        other => other.to_string(),
    }
}

fn join(versions: &[impl std::fmt::Display]) -> String {
    let names: Vec<String> = versions.iter().map(ToString::to_string).collect();
    names.join(", ")
}

fn describe_streamable_http(error: &StreamableHttpError<reqwest::Error>, depth: usize) -> String {
    use StreamableHttpError as E;
    match error {
        E::Client(e) => describe_reqwest(e, depth).unwrap_or_else(|| root_message(e)),
        E::Io(e) => describe_io(e, depth).unwrap_or_else(|| root_message(e)),
        E::HttpStatus(status) => describe_http_status(status),
        E::AuthRequired(e) => format!(
            "HTTP 401 Unauthorized: the server requires authorization (WWW-Authenticate: {})",
            excerpt(&e.www_authenticate_header)
        ),
        E::InsufficientScope(e) => format!(
            "HTTP 403 Forbidden: the credentials lack a scope the server requires \
             (WWW-Authenticate: {})",
            excerpt(&e.www_authenticate_header)
        ),
        // `HTTP 404 Not Found: <body>` (rmcp 3.9, `post_message`), or a JSON body that is not
        // JSON-RPC; rmcp keeps no content type for either.
        E::UnexpectedServerResponse(text) => {
            if let Some(rest) = text.strip_prefix(crate::delivery::UNKNOWN_SESSION) {
                return format!("{}{}", crate::delivery::UNKNOWN_SESSION, excerpt(rest));
            }
            if let Some((status, body)) = status_and_body(text) {
                return http_answer(status, None, body.as_bytes());
            }
            match text.strip_prefix("could not parse JSON response as ServerJsonRpcMessage: ") {
                Some(rest) => {
                    // `<serde error>: <body preview>`; serde's messages hold no `: `.
                    let body = rest.split_once(": ").map_or(rest, |(_, body)| body);
                    format!(
                        "the answer to initialize is JSON but not JSON-RPC ({NOT_MCP}): {}",
                        excerpt(body)
                    )
                }
                None => format!("unexpected answer: {}", excerpt(text)),
            }
        }
        E::UnexpectedContentType(Some(content_type)) => format!(
            "the answer to initialize has content type {}, not application/json or \
             text/event-stream ({NOT_MCP})",
            excerpt(content_type)
        ),
        E::UnexpectedContentType(None) => {
            format!("the answer to initialize has no content type ({NOT_MCP})")
        }
        E::Deserialize(e) => format!("the answer is not valid JSON-RPC: {e}"),
        E::Sse(e) => format!("the answer's event stream is invalid: {}", root_message(e)),
        E::UnexpectedEndOfStream => "the answer's event stream ended before the reply".into(),
        E::SessionExpired => "the server does not know the session (HTTP 404)".into(),
        E::MissingSessionIdInResponse => {
            "the answer to initialize carries no Mcp-Session-Id header".into()
        }
        // The other messages are rmcp's own, free of type names.
        other => other.to_string(),
    }
}

fn describe_http_status(error: &HttpStatusError) -> String {
    let status = StatusCode::from_u16(error.status).map_or_else(
        |_| format!("HTTP {}", error.status),
        |s| format!("HTTP {s}"),
    );
    match &error.retry_after {
        Some(after) => format!("{status} (Retry-After: {})", excerpt(after)),
        None => status,
    }
}

/// The status and body of rmcp's `HTTP <code> <reason>: <body>` text.
fn status_and_body(text: &str) -> Option<(StatusCode, &str)> {
    let rest = text.strip_prefix("HTTP ")?;
    let status = StatusCode::from_bytes(rest.get(..3)?.as_bytes()).ok()?;
    let body = rest.split_once(": ").map_or("", |(_, body)| body);
    Some((status, body))
}

fn describe_sse(error: &SseError, depth: usize) -> Option<String> {
    Some(match error {
        SseError::InvalidUrl { source, .. } => invalid_url(source),
        SseError::Http(e) => return describe_reqwest(e, depth),
        SseError::NotAnEventStream {
            status,
            content_type,
            body,
        } => format!(
            "{}, where an SSE endpoint answers 200 with text/event-stream",
            http_answer(*status, content_type.as_deref(), body.as_bytes())
        ),
        // Messages of their own, free of type names.
        other => other.to_string(),
    })
}

fn describe_websocket(error: &tungstenite::Error, depth: usize) -> String {
    use tungstenite::Error as E;
    match error {
        E::Http(response) => {
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let body = response.body().as_deref().unwrap_or_default();
            format!(
                "{}, where a WebSocket endpoint answers 101 Switching Protocols",
                http_answer(response.status(), content_type, body)
            )
        }
        E::Io(e) => describe_io(e, depth).unwrap_or_else(|| root_message(e)),
        E::Tls(e) => format!("TLS handshake failed: {}", root_message(e)),
        E::ConnectionClosed | E::AlreadyClosed => "the connection was closed".into(),
        E::Protocol(e) => format!("WebSocket protocol error: {e}"),
        E::Url(e) => format!("invalid URL: {e}"),
        other => other.to_string(),
    }
}

fn describe_reqwest(error: &reqwest::Error, depth: usize) -> Option<String> {
    if error.is_timeout() {
        return Some("timed out".into());
    }
    if error.is_dns() {
        let host = error.url().and_then(|u| u.host_str()).unwrap_or("the host");
        let reason = root_message(error);
        let reason = reason
            .strip_prefix("failed to lookup address information: ")
            .unwrap_or(&reason);
        return Some(format!(
            "DNS failure: {host} could not be resolved ({reason})"
        ));
    }
    if let Some(status) = error.status() {
        return Some(http_answer(status, None, b""));
    }
    // What the causes say (refused, unreachable, TLS, an invalid URL); a bare connect error
    // is a refusal.
    let cause = error.source().and_then(|cause| describe(cause, depth));
    if cause.is_none() && error.is_connect() {
        return Some(REFUSED.into());
    }
    cause.or_else(|| Some(root_message(error)))
}

const REFUSED: &str = "connection refused (nothing listens at this address)";

fn describe_io(error: &io::Error, depth: usize) -> Option<String> {
    use io::ErrorKind as K;
    // A wrapped error may say more (a TLS error inside).
    if let Some(inner) = error.get_ref()
        && let Some(said) = describe(inner, depth)
    {
        return Some(said);
    }
    Some(match error.kind() {
        K::ConnectionRefused => REFUSED.into(),
        K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected
        | K::UnexpectedEof => "the connection was closed".into(),
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            format!("host unreachable: {error}")
        }
        K::TimedOut => "timed out".into(),
        _ => {
            let message = error.to_string();
            let reason = message.strip_prefix("failed to lookup address information: ")?;
            format!("{UNRESOLVED} ({reason})")
        }
    })
}

fn invalid_url(error: &url::ParseError) -> String {
    match error {
        url::ParseError::InvalidPort => {
            "invalid URL: invalid port number (a port is 1 to 65535)".into()
        }
        other => format!("invalid URL: {other}"),
    }
}

/// The longest body excerpt, in characters.
const EXCERPT_CHARS: usize = 100;

/// `HTTP <status> (<content type>): "<excerpt>"`: the content type when known, else what the
/// body looks like; the excerpt of an HTML page is its title, or its first words with the tags
/// stripped.
pub(crate) fn http_answer(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let html = content_type.map_or_else(|| looks_like_html(text), |t| t.contains("html"));
    let kind = match content_type {
        // The media type without its parameters (`; charset=utf-8`).
        Some(t) => excerpt(t.split(';').next().unwrap_or(t).trim()),
        None if text.is_empty() => String::new(),
        None if html => "an HTML page".into(),
        None if text.starts_with(['{', '[']) => "JSON".into(),
        None => "text".into(),
    };
    let shown = if html {
        html_excerpt(text)
    } else {
        excerpt(text)
    };
    // Words are quoted; JSON shows its own structure.
    let shown = if shown.is_empty() || shown.starts_with(['{', '[']) {
        shown
    } else {
        format!("\"{shown}\"")
    };
    match (kind.is_empty(), shown.is_empty()) {
        (true, true) => format!("HTTP {status}"),
        (true, false) => format!("HTTP {status}: {shown}"),
        (false, true) => format!("HTTP {status} ({kind}, empty body)"),
        (false, false) => format!("HTTP {status} ({kind}): {shown}"),
    }
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .chars()
        .take(256)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with('<')
        && ["<!doctype html", "<html", "<head", "<body", "<title"]
            .iter()
            .any(|tag| head.contains(tag))
}

/// The `<title>` of an HTML page, else its text with tags, scripts and styles stripped, as an
/// [`excerpt`].
fn html_excerpt(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    if let Some(start) = lower.find("<title")
        && let Some(open_end) = lower[start..].find('>')
        && let Some(len) = lower[start + open_end + 1..].find("</title")
    {
        let title = &html[start + open_end + 1..start + open_end + 1 + len];
        let title = excerpt(&decode_entities(title));
        if !title.is_empty() {
            return title;
        }
    }
    let mut text = String::with_capacity(html.len().min(4096));
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        text.push(' ');
        let tag = rest[open..].to_ascii_lowercase();
        // Skip the content of scripts and styles with their tags.
        let skip_to = ["script", "style"]
            .iter()
            .find(|name| tag[1..].starts_with(*name))
            .and_then(|name| tag.find(&format!("</{name}")))
            .unwrap_or(0);
        match rest[open + skip_to..].find('>') {
            Some(close) => rest = &rest[open + skip_to + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
        if text.len() > 4 * EXCERPT_CHARS {
            break;
        }
    }
    text.push_str(rest);
    excerpt(&decode_entities(&text))
}

fn decode_entities(text: &str) -> String {
    text.replace("&nbsp;", " ")
        .replace("&lt;", "‹")
        .replace("&gt;", "›")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// `text` with its whitespace collapsed, at most [`EXCERPT_CHARS`] characters (`…` marks a
/// cut). Angle brackets become `‹ ›`, so that no markup is shown as such.
pub(crate) fn excerpt(text: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars >= EXCERPT_CHARS {
                out.push('…');
                return out;
            }
            out.push(match c {
                '<' => '‹',
                '>' => '›',
                c => c,
            });
            chars += 1;
        }
    }
    out
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
            WebSocketError::InvalidUrl { .. } => Some(FailureKind::Other),
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
    fn html_pages_show_their_title_or_their_first_words() {
        let page = "<!DOCTYPE html><html><head><TITLE> Bad &amp; Gateway </TITLE></head>\
                    <body>ignored</body></html>";
        assert_eq!(html_excerpt(page), "Bad & Gateway");
        let untitled = "<html><head><style>p { color: red }</style><script>var x = 1 < 2;\
                        </script></head><body><h1>Oops</h1>\n<p>It&#39;s   gone &lt;b&gt;</p>\
                        </body></html>";
        assert_eq!(html_excerpt(untitled), "Oops It's gone ‹b›");
        let long = format!("<html><body><p>{}</p></body></html>", "word ".repeat(100));
        let shown = html_excerpt(&long);
        assert_eq!(shown.chars().count(), EXCERPT_CHARS + 1, "{shown}");
        assert!(shown.ends_with('…'), "{shown}");
    }

    #[test]
    fn http_answers_give_status_content_type_and_an_excerpt() {
        let html = b"<html><head><title>Not here</title></head><body>x</body></html>";
        let cases: [(StatusCode, Option<&str>, &[u8], &str); 7] = [
            (
                StatusCode::NOT_FOUND,
                Some("text/html; charset=utf-8"),
                html,
                "HTTP 404 Not Found (text/html): \"Not here\"",
            ),
            (
                StatusCode::NOT_FOUND,
                None,
                html,
                "HTTP 404 Not Found (an HTML page): \"Not here\"",
            ),
            (
                StatusCode::UNAUTHORIZED,
                None,
                br#" {"error": "no"} "#,
                r#"HTTP 401 Unauthorized (JSON): {"error": "no"}"#,
            ),
            (
                StatusCode::BAD_GATEWAY,
                None,
                b"upstream\n  down",
                "HTTP 502 Bad Gateway (text): \"upstream down\"",
            ),
            (
                StatusCode::OK,
                Some("application/json"),
                b"",
                "HTTP 200 OK (application/json, empty body)",
            ),
            (StatusCode::FORBIDDEN, None, b"", "HTTP 403 Forbidden"),
            (
                StatusCode::OK,
                Some("text/plain"),
                b"a <b> c",
                "HTTP 200 OK (text/plain): \"a ‹b› c\"",
            ),
        ];
        for (status, content_type, body, expected) in cases {
            assert_eq!(http_answer(status, content_type, body), expected);
        }
    }

    #[test]
    fn rmcp_errors_are_worded_without_type_names() {
        type E = StreamableHttpError<reqwest::Error>;
        let page = format!(
            "HTTP 404 Not Found: <html><head><title>Missing</title></head><body>{}</body></html>",
            "x".repeat(5000)
        );
        let cases = [
            (
                boxed(E::UnexpectedServerResponse(page.into())),
                "HTTP 404 Not Found (an HTML page): \"Missing\"",
            ),
            (
                boxed(E::UnexpectedServerResponse(
                    "could not parse JSON response as ServerJsonRpcMessage: unrecognized \
                     JSON-RPC message: {\"a\": 1}"
                        .into(),
                )),
                "the answer to initialize is JSON but not JSON-RPC (is this URL an MCP \
                 endpoint?): {\"a\": 1}",
            ),
            (
                boxed(E::HttpStatus(HttpStatusError::new(429, Some("5".into())))),
                "HTTP 429 Too Many Requests (Retry-After: 5)",
            ),
            (
                boxed(E::UnexpectedContentType(Some("text/html".into()))),
                "the answer to initialize has content type text/html, not application/json \
                 or text/event-stream (is this URL an MCP endpoint?)",
            ),
            (
                boxed(ClientInitializeError::JsonRpcError(
                    rmcp::model::ErrorData::invalid_params("bad client info", None),
                )),
                "the server answered initialize with JSON-RPC error -32602: bad client info",
            ),
            (
                boxed(ClientInitializeError::ConnectionClosed("initialize".into())),
                "the connection was closed",
            ),
            (
                boxed(io::Error::from(io::ErrorKind::ConnectionRefused)),
                "connection refused (nothing listens at this address)",
            ),
            (
                boxed(io::Error::other(
                    "failed to lookup address information: Name or service not known",
                )),
                "DNS failure: the host name could not be resolved (Name or service not known)",
            ),
            (
                boxed(WebSocketError::Handshake(
                    tungstenite::Error::ConnectionClosed,
                )),
                "the connection was closed",
            ),
            (
                boxed(url::ParseError::InvalidPort),
                "invalid URL: invalid port number (a port is 1 to 65535)",
            ),
            // Unknown errors: the innermost message.
            (
                boxed(SseError::NoEndpoint("the stream ended".into())),
                "the SSE stream sent no `endpoint` event: the stream ended",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(failure_cause(error.as_ref()), expected);
        }
    }

    #[test]
    fn a_call_error_is_worded_through_rmcp_s_transport_wrapper() {
        use rmcp::{RoleClient, transport::DynamicTransportError};
        let send = ServiceError::TransportSend(DynamicTransportError::new::<
            crate::WebSocketClientTransport,
            RoleClient,
        >(WebSocketError::Send(
            tungstenite::Error::Io(io::Error::from(io::ErrorKind::BrokenPipe)),
        )));
        assert!(
            send.to_string().contains("WebSocketClientTransport"),
            "{send}"
        );
        assert_eq!(failure_cause(&send), "the connection was closed");
        let refused = ServiceError::McpError(rmcp::model::ErrorData::method_not_found::<
            rmcp::model::PingRequestMethod,
        >());
        assert_eq!(
            failure_cause(&refused),
            "the server answered with JSON-RPC error -32601: ping"
        );
        let timeout = ServiceError::Timeout {
            timeout: std::time::Duration::from_secs(3),
        };
        assert_eq!(failure_cause(&timeout), "no answer within 3s");
    }

    #[test]
    fn a_connect_error_names_the_unresolved_host_and_hides_user_info() {
        let error = connect_error(
            "ws://bob:hunter2@nowhere.invalid:9/ws",
            boxed(io::Error::other(
                "failed to lookup address information: Name or service not known",
            )),
        );
        assert_eq!(
            error.to_string(),
            "cannot open an MCP session at ws://***@nowhere.invalid:9/ws: DNS failure: \
             nowhere.invalid could not be resolved (Name or service not known)"
        );
        assert_eq!(error.kind(), FailureKind::Unreachable);
        assert!(StdError::source(&error).is_none());
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
