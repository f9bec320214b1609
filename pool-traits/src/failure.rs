//! [`FailureKind`]: why a session could not be opened, and whether that is the endpoint's fault.

use std::fmt;

use http::StatusCode;

/// Why opening a session failed, in categories that decide who is to blame: the endpoint
/// (it is down, slow, misconfigured or broken for every caller) or the caller (its credentials
/// or its request). See [`counts_against_endpoint`](Self::counts_against_endpoint).
///
/// Transports map their errors to these ([`TransportError::kind`](crate::TransportError::kind));
/// `mcp_pool_transports::failure_kind` does it for rmcp, reqwest, tungstenite and I/O errors.
/// [`as_str`](Self::as_str) gives a stable snake_case name, fit for a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The TCP connection was refused, reset or closed by the peer before `initialize`
    /// finished: nothing (or nothing healthy) listens at the endpoint.
    ConnectionRefused,
    /// The host could not be reached: DNS resolution failed, no route, network unreachable.
    Unreachable,
    /// Connect + `initialize` did not finish within the create timeout, or a socket timed out.
    Timeout,
    /// The TLS handshake failed (bad certificate, plain HTTP on an `https://` URL, …).
    Tls,
    /// HTTP 401: the caller's credentials were missing or refused.
    Unauthorized,
    /// HTTP 403: the caller's credentials are valid but not allowed (or lack a scope).
    Forbidden,
    /// HTTP 404: nothing is served at the endpoint's URL.
    NotFound,
    /// Any other HTTP 4xx status (400, 405, 429 Too Many Requests, …).
    ClientError(StatusCode),
    /// An HTTP 5xx status from the upstream server (or a proxy in front of it).
    ServerError(StatusCode),
    /// The endpoint answered, but not as an MCP server of a supported transport does: an
    /// unexpected status or content type, a malformed message, a JSON-RPC error or an
    /// unexpected result to `initialize`, no compatible protocol version.
    Protocol,
    /// The caller's request could not be sent: an invalid or reserved header value.
    InvalidRequest,
    /// No transport is registered for the endpoint's transport kind.
    Unsupported,
    /// Anything else: an error a transport did not categorize.
    Other,
}

impl FailureKind {
    /// The category of an HTTP error status answered to the request that opens a session:
    /// 401 [`Unauthorized`](Self::Unauthorized), 403 [`Forbidden`](Self::Forbidden), 404
    /// [`NotFound`](Self::NotFound), other 4xx [`ClientError`](Self::ClientError), 5xx
    /// [`ServerError`](Self::ServerError); `None` for any other status (1xx, 2xx, 3xx), which
    /// the caller judges by context (usually [`Protocol`](Self::Protocol)).
    pub fn from_status(status: StatusCode) -> Option<Self> {
        Some(match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            s if s.is_client_error() => Self::ClientError(s),
            s if s.is_server_error() => Self::ServerError(s),
            _ => return None,
        })
    }

    /// The HTTP status this category stands for, when it stands for one.
    pub fn status(self) -> Option<StatusCode> {
        match self {
            Self::Unauthorized => Some(StatusCode::UNAUTHORIZED),
            Self::Forbidden => Some(StatusCode::FORBIDDEN),
            Self::NotFound => Some(StatusCode::NOT_FOUND),
            Self::ClientError(s) | Self::ServerError(s) => Some(s),
            _ => None,
        }
    }

    /// Whether a failure of this kind is evidence against the endpoint, for every caller, and
    /// so counts towards opening the endpoint's circuit breaker. The breaker is shared by every tenant of the endpoint: a failure that only
    /// says something about one caller must not refuse the others.
    ///
    /// Count (the endpoint's fault): [`ConnectionRefused`](Self::ConnectionRefused),
    /// [`Unreachable`](Self::Unreachable), [`Timeout`](Self::Timeout), [`Tls`](Self::Tls),
    /// [`NotFound`](Self::NotFound) (the endpoint's path is wrong for everyone),
    /// [`ServerError`](Self::ServerError), [`Protocol`](Self::Protocol), and
    /// [`Other`](Self::Other) (unknown, so treated as the endpoint's, as before categories
    /// existed).
    ///
    /// Do not count (the caller's): [`Unauthorized`](Self::Unauthorized) and
    /// [`Forbidden`](Self::Forbidden) (one tenant's bad or underprivileged token),
    /// [`ClientError`](Self::ClientError) (a 4xx blames the request; 429 is a per-caller
    /// rate limit and the upstream is alive), [`InvalidRequest`](Self::InvalidRequest) (the
    /// caller's headers). [`Unsupported`](Self::Unsupported) does not count either: the
    /// endpoint was never contacted, and every acquire reports the error anyway.
    pub fn counts_against_endpoint(self) -> bool {
        match self {
            Self::ConnectionRefused
            | Self::Unreachable
            | Self::Timeout
            | Self::Tls
            | Self::NotFound
            | Self::ServerError(_)
            | Self::Protocol
            | Self::Other => true,
            Self::Unauthorized
            | Self::Forbidden
            | Self::ClientError(_)
            | Self::InvalidRequest
            | Self::Unsupported => false,
        }
    }

    /// A stable snake_case name: `connection_refused`, `unreachable`, `timeout`, `tls`,
    /// `unauthorized`, `forbidden`, `not_found`, `client_error`, `server_error`, `protocol`,
    /// `invalid_request`, `unsupported`, `other` (the status is not part of it, so the set of
    /// names stays small enough for a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "connection_refused",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::ClientError(_) => "client_error",
            Self::ServerError(_) => "server_error",
            Self::Protocol => "protocol",
            Self::InvalidRequest => "invalid_request",
            Self::Unsupported => "unsupported",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    /// The [`as_str`](Self::as_str) name, with the status for the status categories
    /// (`client_error 429`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientError(s) | Self::ServerError(s) => {
                write!(f, "{} {}", self.as_str(), s.as_u16())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_categories() {
        let cases = [
            (401, Some(FailureKind::Unauthorized)),
            (403, Some(FailureKind::Forbidden)),
            (404, Some(FailureKind::NotFound)),
            (400, Some(FailureKind::ClientError(StatusCode::BAD_REQUEST))),
            (
                429,
                Some(FailureKind::ClientError(StatusCode::TOO_MANY_REQUESTS)),
            ),
            (
                500,
                Some(FailureKind::ServerError(StatusCode::INTERNAL_SERVER_ERROR)),
            ),
            (
                503,
                Some(FailureKind::ServerError(StatusCode::SERVICE_UNAVAILABLE)),
            ),
            (200, None),
            (302, None),
        ];
        for (code, expected) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            let kind = FailureKind::from_status(status);
            assert_eq!(kind, expected, "HTTP {code}");
            if let Some(kind) = kind {
                assert_eq!(kind.status(), Some(status), "HTTP {code}");
            }
        }
    }

    #[test]
    fn only_endpoint_caused_failures_count() {
        let counting = [
            FailureKind::ConnectionRefused,
            FailureKind::Unreachable,
            FailureKind::Timeout,
            FailureKind::Tls,
            FailureKind::NotFound,
            FailureKind::ServerError(StatusCode::BAD_GATEWAY),
            FailureKind::Protocol,
            FailureKind::Other,
        ];
        let not_counting = [
            FailureKind::Unauthorized,
            FailureKind::Forbidden,
            FailureKind::ClientError(StatusCode::TOO_MANY_REQUESTS),
            FailureKind::ClientError(StatusCode::BAD_REQUEST),
            FailureKind::InvalidRequest,
            FailureKind::Unsupported,
        ];
        for kind in counting {
            assert!(kind.counts_against_endpoint(), "{kind} must count");
        }
        for kind in not_counting {
            assert!(!kind.counts_against_endpoint(), "{kind} must not count");
        }
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(
            FailureKind::ClientError(StatusCode::TOO_MANY_REQUESTS).to_string(),
            "client_error 429"
        );
        assert_eq!(FailureKind::Unauthorized.to_string(), "unauthorized");
        assert_eq!(
            FailureKind::ConnectionRefused.as_str(),
            "connection_refused"
        );
    }
}
