//! Headers sent upstream: what the transports share.

use std::collections::HashMap;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{
        ACCEPT_ENCODING, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
        PROXY_AUTHENTICATE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    },
};

/// Headers a transport sets itself or that describe one hop only (RFC 9110 §7.6.1 and §6.4,
/// RFC 6455 §4.1): never copied from the caller's headers, which may be a downstream request's.
/// [`ConnectRequest`](mcp_pool_traits::ConnectRequest) already drops these (and more:
/// [`NEVER_FORWARDED`](mcp_pool_traits::NEVER_FORWARDED)); this is the transports' own guard,
/// for headers that reach them another way.
const NOT_FORWARDED: [HeaderName; 15] = [
    HOST,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    ACCEPT_ENCODING,
    PROXY_AUTHENTICATE,
    TRANSFER_ENCODING,
    CONNECTION,
    TE,
    TRAILER,
    UPGRADE,
    SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION,
];

/// Hop-by-hop headers without a constant in `http`, and `last-event-id` (a stream resumption:
/// rmcp rejects it as a custom header, failing every creation).
const NOT_FORWARDED_NAMES: [&str; 3] = ["keep-alive", "proxy-connection", "last-event-id"];

/// The caller's headers minus those that describe the connection or the body (`host`,
/// `content-length`, `connection`, the WebSocket handshake headers, …), which the transport
/// sets itself. The internal `mcp-session-id` / `x-mcp-session-id` and `accept` headers are
/// already gone: [`ConnectRequest`](mcp_pool_traits::ConnectRequest) removes them.
pub(crate) fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in &NOT_FORWARDED {
        out.remove(name);
    }
    for name in NOT_FORWARDED_NAMES {
        out.remove(name);
    }
    out
}

/// rmcp takes one value per header name: values of a repeated header are joined as HTTP
/// allows (RFC 9110 §5.3; `; ` for cookies, RFC 6265 §5.4). Every value is marked sensitive.
pub(crate) fn single_valued(headers: &HeaderMap) -> HashMap<HeaderName, HeaderValue> {
    let mut out = HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let mut joined = first.as_bytes().to_vec();
        let separator: &[u8] = if name == COOKIE { b"; " } else { b", " };
        for value in values {
            joined.extend_from_slice(separator);
            joined.extend_from_slice(value.as_bytes());
        }
        // Joining valid header values with visible ASCII separators keeps them valid.
        let mut value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| first.clone());
        value.set_sensitive(true);
        out.insert(name.clone(), value);
    }
    out
}

/// Runs `connecting` (connect + `initialize`) within `timeout`, mapping its error and the
/// timeout to [`TransportError`](mcp_pool_traits::TransportError)s naming `url` (redacted),
/// the error categorized by [`failure_kind`](crate::failure_kind) and worded by
/// [`failure_cause`](crate::failure_cause).
pub(crate) async fn bounded<E>(
    url: &str,
    timeout: std::time::Duration,
    connecting: impl Future<Output = Result<mcp_pool_traits::ClientSession, E>>,
) -> Result<mcp_pool_traits::ClientSession, mcp_pool_traits::TransportError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(error)) => Err(crate::failure::connect_error(url, error.into())),
        Err(_elapsed) => Err(mcp_pool_traits::TransportError::timeout(url, timeout)),
    }
}

/// The session's start over an established `transport` (`initialize`, or discovery, as the
/// endpoint's lifecycle says: [`ConnectRequest::start`](mcp_pool_traits::ConnectRequest::start)),
/// served by the pool's handler; the error boxed for [`bounded`].
pub(crate) async fn initialize(
    request: &mcp_pool_traits::ConnectRequest<'_>,
    transport: impl rmcp::transport::Transport<rmcp::RoleClient> + 'static,
) -> Result<mcp_pool_traits::ClientSession, Box<dyn std::error::Error + Send + Sync>> {
    request
        .start(transport)
        .await
        .map_err(|error| Box::new(error) as _)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append("x-tenant-id", HeaderValue::from_static("acme"));
        h.append("x-list", HeaderValue::from_static("1"));
        h.append("x-list", HeaderValue::from_static("2"));
        let single = single_valued(&h);
        assert_eq!(single[&COOKIE], "a=1; b=2");
        assert_eq!(single[&HeaderName::from_static("x-list")], "1, 2");
        assert_eq!(single[&HeaderName::from_static("x-tenant-id")], "acme");
        assert!(single.values().all(HeaderValue::is_sensitive));
    }

    #[test]
    fn connection_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("x-tenant-id", HeaderValue::from_static("acme"));
        h.insert(HOST, HeaderValue::from_static("downstream.example"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert("last-event-id", HeaderValue::from_static("42"));
        let out = upstream_headers(&h);
        let mut names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-tenant-id"]);
    }
}
