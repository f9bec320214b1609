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

/// An endpoint was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The weight is outside 1 to [`MAX_WEIGHT`].
    #[error("endpoint weight {0} is out of range: must be 1 to {MAX_WEIGHT}")]
    Weight(u32),
}

impl Endpoint {
    /// An endpoint of weight 1.
    ///
    /// # Errors
    /// [`InvalidEndpoint::Scheme`] when the URL's scheme does not fit `transport`.
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

    /// Checks the scheme against the transport and the weight against its range.
    ///
    /// # Errors
    /// The first [`InvalidEndpoint`] found.
    pub fn validate(&self) -> Result<(), InvalidEndpoint> {
        let (schemes, expected): (&[&str], _) = match self.transport {
            TransportKind::StreamableHttp | TransportKind::Sse => {
                (&["http://", "https://"], "http:// or https://")
            }
            TransportKind::WebSocket => (&["ws://", "wss://"], "ws:// or wss://"),
        };
        let lower = self.url.get(..8).unwrap_or(&self.url).to_ascii_lowercase();
        if !schemes.iter().any(|s| lower.starts_with(s)) || self.url.len() <= 8 {
            return Err(InvalidEndpoint::Scheme {
                url: crate::redact_url(&self.url).into_owned(),
                transport: self.transport,
                expected,
            });
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(InvalidEndpoint::Weight(self.weight));
        }
        Ok(())
    }
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
}
