//! Upstream endpoints and transport kinds.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

/// How a client reaches an endpoint (DESIGN §9).
///
/// Part of the [`PoolKey`](crate::PoolKey): the same URL over two transport kinds is two keys,
/// never one shared session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// MCP streamable HTTP (spec 2025-03-26 and later): POST per message, SSE or JSON replies.
    StreamableHttp,
    /// The legacy HTTP+SSE transport of MCP 2024-11-05: a `GET` event stream plus POSTs.
    Sse,
    /// JSON-RPC in WebSocket text frames, subprotocol `mcp`. Not a standard MCP transport.
    #[serde(rename = "websocket")]
    WebSocket,
}

impl TransportKind {
    /// Every kind, in declaration order.
    pub const ALL: [TransportKind; 3] = [Self::StreamableHttp, Self::Sse, Self::WebSocket];

    /// The name used in configuration and metric labels: `streamable_http`, `sse`, `websocket`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StreamableHttp => "streamable_http",
            Self::Sse => "sse",
            Self::WebSocket => "websocket",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport name was not one of [`TransportKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected one of streamable_http, sse, websocket")]
pub struct UnknownTransport(pub String);

impl FromStr for TransportKind {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownTransport(s.to_owned()))
    }
}

/// The largest endpoint weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// One replica of an upstream server: where it is, how to reach it, and its share of sessions.
///
/// `Debug` and `Display` show the URL [redacted](crate::redact_url) (no user-info, no
/// credential-looking query values); serialization keeps it whole, for configuration stores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `http://` or `https://` for HTTP transports, `ws://` or `wss://` for WebSocket.
    pub url: Arc<str>,
    /// How to reach it.
    pub transport: TransportKind,
    /// Relative share of sessions, 1 to [`MAX_WEIGHT`] (default 1). Used by the weighted and
    /// round robin strategies when creating sessions.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &crate::redact_url(&self.url))
            .field("transport", &self.transport)
            .field("weight", &self.weight)
            .finish()
    }
}

/// `URL (transport)`, the URL [redacted](crate::redact_url).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", crate::redact_url(&self.url), self.transport)
    }
}

/// An endpoint was malformed. Every URL shown is [redacted](crate::redact_url).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEndpoint {
    /// The URL scheme does not match the transport.
    #[error(
        "endpoint url {url:?} does not fit transport {transport}: expected a URL starting with {expected}"
    )]
    Scheme {
        /// The rejected URL, [redacted](crate::redact_url).
        url: String,
        /// The endpoint's transport.
        transport: TransportKind,
        /// The accepted prefixes.
        expected: &'static str,
    },
    /// The URL does not parse, or has no host.
    #[error(
        "endpoint url {url:?} is invalid: {reason}; expected {scheme}host[:port][/path] with a \
         port from 1 to 65535"
    )]
    Url {
        /// The rejected URL, [redacted](crate::redact_url).
        url: String,
        /// What the parser found wrong, e.g. `empty host`, `invalid IPv6 address`.
        reason: String,
        /// The accepted schemes, as in [`InvalidEndpoint::Scheme`].
        scheme: &'static str,
    },
    /// The port is not a number from 1 to 65535.
    #[error("endpoint url {url:?} has an invalid port {port:?}: must be a number from 1 to 65535")]
    Port {
        /// The rejected URL, [redacted](crate::redact_url).
        url: String,
        /// The port as written.
        port: String,
    },
    /// The weight is outside 1 to [`MAX_WEIGHT`].
    #[error("endpoint weight {0} is out of range: must be 1 to {MAX_WEIGHT}")]
    Weight(u32),
}

impl Endpoint {
    /// An endpoint of weight 1, its URL checked as [`validate`](Self::validate) does.
    ///
    /// # Errors
    /// [`InvalidEndpoint::Scheme`] when the URL's scheme does not fit `transport`,
    /// [`InvalidEndpoint::Url`] when it does not parse or has no host,
    /// [`InvalidEndpoint::Port`] when its port is not 1-65535.
    pub fn new(
        url: impl Into<Arc<str>>,
        transport: TransportKind,
    ) -> Result<Self, InvalidEndpoint> {
        let endpoint = Self {
            url: url.into(),
            transport,
            weight: 1,
        };
        endpoint.validate()?;
        Ok(endpoint)
    }

    /// The same endpoint with another weight.
    ///
    /// # Errors
    /// [`InvalidEndpoint::Weight`] outside 1 to [`MAX_WEIGHT`].
    pub fn with_weight(mut self, weight: u32) -> Result<Self, InvalidEndpoint> {
        self.weight = weight;
        self.validate()?;
        Ok(self)
    }

    /// Checks the URL and the weight: the scheme fits the transport (`http://` or `https://`
    /// for streamable HTTP and SSE, `ws://` or `wss://` for WebSocket), the whole URL parses
    /// (WHATWG URL rules, as `reqwest` applies them when connecting) with a host, an explicit
    /// port is 1-65535, and the weight is 1 to [`MAX_WEIGHT`].
    ///
    /// # Errors
    /// The first [`InvalidEndpoint`] found, in that order.
    pub fn validate(&self) -> Result<(), InvalidEndpoint> {
        let (schemes, expected): (&[&str], _) = match self.transport {
            TransportKind::StreamableHttp | TransportKind::Sse => {
                (&["http://", "https://"], "http:// or https://")
            }
            TransportKind::WebSocket => (&["ws://", "wss://"], "ws:// or wss://"),
        };
        let shown = || crate::redact_url(&self.url).into_owned();
        let lower = self.url.get(..8).unwrap_or(&self.url).to_ascii_lowercase();
        if !schemes.iter().any(|s| lower.starts_with(s)) {
            return Err(InvalidEndpoint::Scheme {
                url: shown(),
                transport: self.transport,
                expected,
            });
        }
        let scheme = match self.transport {
            TransportKind::StreamableHttp | TransportKind::Sse => "http(s)://",
            TransportKind::WebSocket => "ws(s)://",
        };
        let invalid = |reason: String| InvalidEndpoint::Url {
            url: shown(),
            reason,
            scheme,
        };
        let port = || InvalidEndpoint::Port {
            url: shown(),
            port: host_and_port_as_written(&self.url).1.to_owned(),
        };
        if host_and_port_as_written(&self.url).0.is_empty() {
            return Err(invalid("empty host".to_owned()));
        }
        match url::Url::parse(&self.url) {
            Err(url::ParseError::InvalidPort) => return Err(port()),
            Err(e) => return Err(invalid(e.to_string())),
            Ok(parsed) => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("it has no host".to_owned()));
                }
                if parsed.port() == Some(0) {
                    return Err(port());
                }
            }
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(InvalidEndpoint::Weight(self.weight));
        }
        Ok(())
    }
}

/// The host and the port of `url` as written: the authority after any user-info (so never a
/// password), split at the host's `:`; either may be empty. The WHATWG parser skips extra
/// slashes (`http:///mcp` has host `mcp`), so an empty host is only seen here.
fn host_and_port_as_written(url: &str) -> (&str, &str) {
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    let authority = &rest[..rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len())];
    let host_port = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    let split = match host_port.strip_prefix('[') {
        Some(v6) => v6.find(']').map_or(host_port.len(), |end| end + 2),
        None => host_port.find(':').unwrap_or(host_port.len()),
    };
    let (host, port) = host_port.split_at(split);
    (host, port.strip_prefix(':').unwrap_or(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_names_round_trip() {
        for kind in TransportKind::ALL {
            assert_eq!(kind.as_str().parse::<TransportKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("grpc".parse::<TransportKind>().is_err());
    }

    #[test]
    fn urls_are_printed_without_credentials() {
        let e = Endpoint::new("https://alice:pw123@example.test/mcp", TransportKind::Sse).unwrap();
        for shown in [format!("{e:?}"), format!("{e}")] {
            assert!(
                !shown.contains("pw123") && !shown.contains("alice"),
                "{shown}"
            );
            assert!(shown.contains("https://***@example.test/mcp"), "{shown}");
        }
        let err =
            Endpoint::new("ws://alice:pw123@example.test/mcp", TransportKind::Sse).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("pw123"));
    }

    #[test]
    fn scheme_must_fit_transport() {
        assert!(Endpoint::new("http://127.0.0.1:1/mcp", TransportKind::StreamableHttp).is_ok());
        assert!(Endpoint::new("wss://x.example/mcp", TransportKind::WebSocket).is_ok());
        let err = Endpoint::new("ws://x/mcp", TransportKind::Sse).unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        let err = Endpoint::new("http://x/mcp", TransportKind::StreamableHttp)
            .unwrap()
            .with_weight(0)
            .unwrap_err();
        assert_eq!(err, InvalidEndpoint::Weight(0));
    }

    #[test]
    fn urls_are_parsed_whole_with_host_and_port() {
        let http = TransportKind::StreamableHttp;
        for ok in [
            "http://127.0.0.1:1/mcp",
            "https://example.test:65535/mcp?x=1",
            "http://[::1]:8080/mcp",
            "http://example.test",
        ] {
            Endpoint::new(ok, http).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let cases = [
            (
                "http://127.0.0.1:70000/mcp",
                http,
                r#"endpoint url "http://127.0.0.1:70000/mcp" has an invalid port "70000": must be a number from 1 to 65535"#,
            ),
            (
                "http://alice:pw123@example.test:0/mcp",
                http,
                r#"endpoint url "http://***@example.test:0/mcp" has an invalid port "0": must be a number from 1 to 65535"#,
            ),
            (
                "ws://[::1]:99999/mcp",
                TransportKind::WebSocket,
                r#"endpoint url "ws://[::1]:99999/mcp" has an invalid port "99999": must be a number from 1 to 65535"#,
            ),
            (
                "http://example.test:80a/mcp",
                http,
                r#"endpoint url "http://example.test:80a/mcp" has an invalid port "80a": must be a number from 1 to 65535"#,
            ),
            (
                "http:///mcp",
                http,
                r#"endpoint url "http:///mcp" is invalid: empty host; expected http(s)://host[:port][/path] with a port from 1 to 65535"#,
            ),
            (
                "http://",
                http,
                r#"endpoint url "http://" is invalid: empty host; expected http(s)://host[:port][/path] with a port from 1 to 65535"#,
            ),
            (
                "wss://exa mple.test/mcp",
                TransportKind::WebSocket,
                r#"endpoint url "wss://exa mple.test/mcp" is invalid: invalid international domain name; expected ws(s)://host[:port][/path] with a port from 1 to 65535"#,
            ),
        ];
        for (url, transport, message) in cases {
            let err = Endpoint::new(url, transport).expect_err(url);
            assert_eq!(err.to_string(), message, "{url}");
        }
        assert_eq!(host_and_port_as_written("http://u:p@h:12/x"), ("h", "12"));
        assert_eq!(host_and_port_as_written("http://h/x:3"), ("h", ""));
        assert_eq!(host_and_port_as_written("http://[::1]:7/x"), ("[::1]", "7"));
    }
}
