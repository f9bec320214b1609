//! Upstream endpoints and transport kinds.

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use crate::names::Names;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a client reaches an endpoint: a built-in transport, or a custom one a pool
/// registered ([`PoolBuilder::transport`](https://docs.rs/mcp-pool) with a
/// [`Transport`](crate::Transport) whose [`kind`](crate::Transport::kind) is
/// [`TransportKind::custom`]).
///
/// Part of the [`PoolKey`](crate::PoolKey): the same URL over two transport kinds is two keys,
/// never one shared session. Serialized as its name ([`as_str`](Self::as_str)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TransportKind {
    /// MCP streamable HTTP (spec 2025-03-26 and later): POST per message, SSE or JSON replies.
    StreamableHttp,
    /// The legacy HTTP+SSE transport of MCP 2024-11-05: a `GET` event stream plus POSTs.
    Sse,
    /// JSON-RPC in WebSocket text frames, subprotocol `mcp`. Not a standard MCP transport.
    WebSocket,
    /// MCP's stdio transport: the server is a child process started per session
    /// ([`StdioCommand`]), JSON-RPC lines on its stdin and stdout.
    Stdio,
    /// A transport of the user's, by the name its [`Transport`](crate::Transport) declares.
    Custom(CustomTransport),
}

/// The name of a custom transport kind: 1 to 64 characters of `[a-z0-9_]`, starting with a
/// letter, not a built-in name. Made by [`TransportKind::custom`] (and by reading a
/// configuration that names one); names are interned, so a kind stays `Copy`, and
/// [`FromStr`] — what APIs parse their callers' input with — never adds one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomTransport(&'static str);

impl fmt::Debug for CustomTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Custom kind names created so far (see [`CustomTransport`]).
static CUSTOM_KINDS: Names = Names::new();

/// A custom transport name was malformed (see [`CustomTransport`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid custom transport name {0:?}: expected 1 to 64 characters of [a-z0-9_] starting with a letter, other than streamable_http, sse, websocket and stdio"
)]
pub struct InvalidTransportName(pub String);

impl TransportKind {
    /// The built-in kinds reached by a URL, in declaration order ([`Stdio`](Self::Stdio) is
    /// reached by a command, custom kinds by what their transport says).
    pub const ALL: [TransportKind; 3] = [Self::StreamableHttp, Self::Sse, Self::WebSocket];

    /// Every built-in kind, in declaration order.
    pub const BUILT_IN: [TransportKind; 4] = [
        Self::StreamableHttp,
        Self::Sse,
        Self::WebSocket,
        Self::Stdio,
    ];

    /// The custom kind `name` (see [`CustomTransport`]); what a custom transport's
    /// [`kind`](crate::Transport::kind) returns. The same name always gives the same kind.
    ///
    /// # Errors
    /// [`InvalidTransportName`] when `name` breaks the rule of [`CustomTransport`].
    pub fn custom(name: &str) -> Result<Self, InvalidTransportName> {
        if !Names::valid(name) || Self::BUILT_IN.iter().any(|k| k.as_str() == name) {
            return Err(InvalidTransportName(name.to_owned()));
        }
        Ok(Self::Custom(CustomTransport(CUSTOM_KINDS.intern(name))))
    }

    /// The name used in configuration, keys and metric labels: `streamable_http`, `sse`,
    /// `websocket`, `stdio`, or a custom kind's own name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StreamableHttp => "streamable_http",
            Self::Sse => "sse",
            Self::WebSocket => "websocket",
            Self::Stdio => "stdio",
            Self::Custom(CustomTransport(name)) => name,
        }
    }

    /// Whether this kind reaches its endpoints by a URL of a built-in scheme.
    fn schemes(self) -> Option<(&'static [&'static str], &'static str, &'static str)> {
        match self {
            Self::StreamableHttp | Self::Sse => Some((
                &["http://", "https://"],
                "http:// or https://",
                "http(s)://",
            )),
            Self::WebSocket => Some((&["ws://", "wss://"], "ws:// or wss://", "ws(s)://")),
            Self::Stdio | Self::Custom(_) => None,
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport name was neither built in nor a custom kind a transport declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {:?}: expected one of streamable_http, sse, websocket, stdio{}", .0, custom_names())]
pub struct UnknownTransport(pub String);

fn custom_names() -> String {
    CUSTOM_KINDS.listed()
}

impl FromStr for TransportKind {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(kind) = Self::BUILT_IN
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
        {
            return Ok(kind);
        }
        CUSTOM_KINDS
            .get(s)
            .map(|name| Self::Custom(CustomTransport(name)))
            .ok_or_else(|| UnknownTransport(s.to_owned()))
    }
}

impl Serialize for TransportKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A configuration (a file, a stored record) may name a custom kind before its transport
/// exists: the pool refuses the endpoint if none is registered by then. (Parsing with
/// [`FromStr`], as APIs do with their callers' input, accepts only kinds declared already.)
impl<'de> Deserialize<'de> for TransportKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        name.parse()
            .or_else(|unknown: UnknownTransport| Self::custom(&name).map_err(|_| unknown))
            .map_err(serde::de::Error::custom)
    }
}

/// How to start a stdio MCP server ([`TransportKind::Stdio`]): a program, its arguments, extra
/// environment variables and a working directory. `Debug` and `Display` show the program and
/// the environment variables' names, never their values nor the arguments (either may carry a
/// credential).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct StdioCommand {
    /// The program: a path, or a name looked up in `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its own environment variables. The built-in stdio transport starts the program from an
    /// empty environment plus a short allow-list of the parent's (`PATH`, `HOME`, locale…, as
    /// the official MCP SDKs do) plus these, which win: nothing else of the gateway's
    /// environment, its secrets included, reaches a third-party server.
    pub env: BTreeMap<String, String>,
    /// Its working directory (default: the pool's).
    pub cwd: Option<String>,
}

impl fmt::Debug for StdioCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioCommand")
            .field("command", &self.command)
            .field("args", &self.args.len())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// The largest endpoint weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// How a session with an endpoint starts: which MCP lifecycle it speaks. Configuration spells
/// it `lifecycle = "initialize" | "discover" | "auto"` (default `initialize`).
///
/// Under protocol 2026-07-28 (`discover`) there is no `initialize`, no session id and no
/// `ping`: every request carries the protocol version and client info in its `_meta`, and the
/// server keeps no state between requests. A pooled "session" with such an endpoint is then the
/// client side only — the discovery result (server info, capabilities) and the HTTP keep-alive
/// connections — so pooling still saves the `server/discover` round trip and the connects,
/// but there is no server-side conversation to keep: `sticky` buys nothing there. Health checks
/// send `tools/list` instead of `ping` to such a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Lifecycle {
    /// `initialize` and `notifications/initialized`, then a session (protocols 2024-11-05 to
    /// 2025-11-25). What every server before 2026-07-28 speaks.
    #[default]
    Initialize,
    /// Protocol 2026-07-28: `server/discover`, no handshake and no session. A server that does
    /// not speak it fails the connect.
    Discover,
    /// `server/discover` first, falling back to `initialize` on the same connection when the
    /// server does not know it (rmcp's `ClientLifecycleMode::Auto`): for endpoints whose
    /// version is not known in advance. Costs a failed probe per session against older
    /// servers.
    Auto,
}

impl Lifecycle {
    /// The configuration name: `initialize`, `discover` or `auto`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "initialize",
            Self::Discover => "discover",
            Self::Auto => "auto",
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::Initialize
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica of an upstream server: where it is, how to reach it, and its share of sessions.
///
/// In configuration (serde) an endpoint is `{ url, transport, weight }`, or for
/// [`TransportKind::Stdio`] `{ transport = "stdio", command, args, env, cwd, weight }` with no
/// `url`: its [`url`](Self::url) is then `stdio:{command}`, what stats and logs show.
///
/// `Debug` and `Display` show the URL [redacted](crate::redact_url) (no user-info, no
/// credential-looking query values) and a command without its arguments and environment
/// values; serialization keeps everything, for configuration stores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EndpointFields", into = "EndpointFields")]
pub struct Endpoint {
    /// `http://` or `https://` for HTTP transports, `ws://` or `wss://` for WebSocket,
    /// `stdio:{command}` for stdio, anything its transport accepts for a custom kind.
    pub url: Arc<str>,
    /// How to reach it.
    pub transport: TransportKind,
    /// Relative share of sessions, 1 to [`MAX_WEIGHT`] (default 1). Used by the weighted and
    /// round robin strategies when creating sessions.
    pub weight: u32,
    /// The program to start, for [`TransportKind::Stdio`] (`None` for every other kind).
    pub stdio: Option<Arc<StdioCommand>>,
    /// The MCP lifecycle its sessions speak (default [`Lifecycle::Initialize`]). Not for
    /// [`TransportKind::Sse`], which is the 2024-11-05 protocol by definition.
    pub lifecycle: Lifecycle,
}

/// An endpoint as configuration spells it (see [`Endpoint`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    transport: TransportKind,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Lifecycle::is_default")]
    lifecycle: Lifecycle,
}

impl TryFrom<EndpointFields> for Endpoint {
    type Error = InvalidEndpoint;

    fn try_from(fields: EndpointFields) -> Result<Self, InvalidEndpoint> {
        let stdio = fields.transport == TransportKind::Stdio;
        let has_command_fields = fields.command.is_some()
            || !fields.args.is_empty()
            || !fields.env.is_empty()
            || fields.cwd.is_some();
        if stdio == fields.url.is_some() || (!stdio && has_command_fields) {
            return Err(InvalidEndpoint::Fields {
                transport: fields.transport,
            });
        }
        // Shape only: the values are checked by `validate`, which configuration readers call
        // where they can point at the field (`Settings` reports `endpoints[1].url`).
        Ok(if stdio {
            let command = StdioCommand {
                command: fields.command.unwrap_or_default(),
                args: fields.args,
                env: fields.env,
                cwd: fields.cwd,
            };
            Endpoint {
                url: format!("stdio:{}", command.command).into(),
                transport: TransportKind::Stdio,
                weight: fields.weight,
                stdio: Some(Arc::new(command)),
                lifecycle: fields.lifecycle,
            }
        } else {
            Endpoint {
                url: fields.url.unwrap_or_default().into(),
                transport: fields.transport,
                weight: fields.weight,
                stdio: None,
                lifecycle: fields.lifecycle,
            }
        })
    }
}

impl From<Endpoint> for EndpointFields {
    fn from(endpoint: Endpoint) -> Self {
        let command = endpoint.stdio.as_deref().cloned().unwrap_or_default();
        let stdio = endpoint.stdio.is_some();
        Self {
            url: (!stdio).then(|| endpoint.url.to_string()),
            transport: endpoint.transport,
            weight: endpoint.weight,
            command: stdio.then_some(command.command),
            args: command.args,
            env: command.env,
            cwd: command.cwd,
            lifecycle: endpoint.lifecycle,
        }
    }
}

fn default_weight() -> u32 {
    1
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Endpoint");
        debug
            .field("url", &crate::redact_url(&self.url))
            .field("transport", &self.transport)
            .field("weight", &self.weight);
        if let Some(command) = &self.stdio {
            debug.field("stdio", command);
        }
        if self.lifecycle != Lifecycle::Initialize {
            debug.field("lifecycle", &self.lifecycle);
        }
        debug.finish()
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
    /// The endpoint's fields do not fit its transport: a `url` and no command for a network
    /// or custom transport, a `command` (with `args`, `env`, `cwd`) and no `url` for stdio.
    #[error(
        "an endpoint of transport {transport} takes {expected}",
        expected = if *transport == TransportKind::Stdio {
            "command (and optionally args, env, cwd), not url"
        } else {
            "url, not command, args, env or cwd"
        }
    )]
    Fields {
        /// The endpoint's transport.
        transport: TransportKind,
    },
    /// A stdio command is malformed.
    #[error("stdio endpoint: {0}")]
    Command(String),
    /// The lifecycle does not fit the transport (HTTP+SSE is the 2024-11-05 protocol, which
    /// only has `initialize`).
    #[error(
        "lifecycle {lifecycle} does not fit transport {transport}: it speaks only initialize \
         (protocol 2024-11-05); use streamable_http for discover or auto"
    )]
    Lifecycle {
        /// The endpoint's lifecycle.
        lifecycle: Lifecycle,
        /// The endpoint's transport.
        transport: TransportKind,
    },
    /// A custom transport refused the endpoint ([`Transport::validate_endpoint`](crate::Transport::validate_endpoint)).
    #[error("endpoint {url:?} does not fit transport {transport}: {reason}")]
    Refused {
        /// The endpoint's URL, [redacted](crate::redact_url).
        url: String,
        /// The endpoint's transport.
        transport: TransportKind,
        /// What the transport said.
        reason: String,
    },
}

impl Endpoint {
    /// An endpoint of weight 1, its URL checked as [`validate`](Self::validate) does. For
    /// [`TransportKind::Stdio`] use [`stdio`](Self::stdio).
    ///
    /// # Errors
    /// [`InvalidEndpoint::Scheme`] when the URL's scheme does not fit `transport`,
    /// [`InvalidEndpoint::Url`] when it does not parse or has no host,
    /// [`InvalidEndpoint::Port`] when its port is not 1-65535,
    /// [`InvalidEndpoint::Fields`] for `TransportKind::Stdio`.
    pub fn new(
        url: impl Into<Arc<str>>,
        transport: TransportKind,
    ) -> Result<Self, InvalidEndpoint> {
        let endpoint = Self {
            url: url.into(),
            transport,
            weight: 1,
            stdio: None,
            lifecycle: Lifecycle::Initialize,
        };
        endpoint.validate()?;
        Ok(endpoint)
    }

    /// A stdio endpoint of weight 1 that starts `command` per session; its URL is
    /// `stdio:{program}`.
    ///
    /// # Errors
    /// [`InvalidEndpoint::Command`] as [`validate`](Self::validate) says.
    pub fn stdio(command: StdioCommand) -> Result<Self, InvalidEndpoint> {
        let endpoint = Self {
            url: format!("stdio:{}", command.command).into(),
            transport: TransportKind::Stdio,
            weight: 1,
            stdio: Some(Arc::new(command)),
            lifecycle: Lifecycle::Initialize,
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

    /// The same endpoint speaking the MCP lifecycle `lifecycle` (see [`Lifecycle`]).
    ///
    /// # Errors
    /// [`InvalidEndpoint::Lifecycle`] for a lifecycle other than `initialize` on
    /// [`TransportKind::Sse`].
    pub fn with_lifecycle(mut self, lifecycle: Lifecycle) -> Result<Self, InvalidEndpoint> {
        self.lifecycle = lifecycle;
        self.validate()?;
        Ok(self)
    }

    /// Checks the endpoint against its transport, then the weight (1 to [`MAX_WEIGHT`]):
    /// - streamable HTTP, SSE, WebSocket: the scheme fits the transport (`http://` or
    ///   `https://`, `ws://` or `wss://`), the whole URL parses (WHATWG URL rules, as `reqwest`
    ///   applies them when connecting) with a host, an explicit port is 1-65535;
    /// - stdio: a command is given (not empty, no NUL), environment names are not empty and
    ///   hold no `=` or NUL, a working directory is not empty;
    /// - a custom kind: the URL is not empty (its transport checks the rest,
    ///   [`Transport::validate_endpoint`](crate::Transport::validate_endpoint));
    /// - the [`Lifecycle`] is `initialize` for SSE (the 2024-11-05 transport).
    ///
    /// # Errors
    /// The first [`InvalidEndpoint`] found, in that order.
    pub fn validate(&self) -> Result<(), InvalidEndpoint> {
        match (self.transport, &self.stdio) {
            (TransportKind::Stdio, Some(command)) => validate_command(command)?,
            (TransportKind::Stdio, None) | (_, Some(_)) => {
                return Err(InvalidEndpoint::Fields {
                    transport: self.transport,
                });
            }
            (TransportKind::Custom(_), None) if self.url.is_empty() => {
                return Err(InvalidEndpoint::Fields {
                    transport: self.transport,
                });
            }
            (kind, None) => {
                if let Some((schemes, expected, scheme)) = kind.schemes() {
                    self.validate_url(schemes, expected, scheme)?;
                }
            }
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(InvalidEndpoint::Weight(self.weight));
        }
        if self.transport == TransportKind::Sse && self.lifecycle != Lifecycle::Initialize {
            return Err(InvalidEndpoint::Lifecycle {
                lifecycle: self.lifecycle,
                transport: self.transport,
            });
        }
        Ok(())
    }

    fn validate_url(
        &self,
        schemes: &[&str],
        expected: &'static str,
        scheme: &'static str,
    ) -> Result<(), InvalidEndpoint> {
        let shown = || crate::redact_url(&self.url).into_owned();
        // The URL parser drops tabs and line breaks silently (WHATWG URL); a URL holding them
        // was meant to smuggle something into a request line or a log line.
        if self.url.chars().any(char::is_control) {
            return Err(InvalidEndpoint::Url {
                url: shown(),
                reason: "it contains control characters (such as CR or LF)".into(),
                scheme,
            });
        }
        let lower = self.url.get(..8).unwrap_or(&self.url).to_ascii_lowercase();
        if !schemes.iter().any(|s| lower.starts_with(s)) {
            return Err(InvalidEndpoint::Scheme {
                url: shown(),
                transport: self.transport,
                expected,
            });
        }
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
            Err(url::ParseError::InvalidPort) => Err(port()),
            Err(e) => Err(invalid(e.to_string())),
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                Err(invalid("it has no host".to_owned()))
            }
            Ok(parsed) if parsed.port() == Some(0) => Err(port()),
            Ok(_) => Ok(()),
        }
    }
}

/// The rules of a stdio command (see [`Endpoint::validate`]).
fn validate_command(command: &StdioCommand) -> Result<(), InvalidEndpoint> {
    let bad = |what: String| Err(InvalidEndpoint::Command(what));
    if command.command.trim().is_empty() || command.command.contains('\0') {
        return bad("command must be a program name or path, not empty".into());
    }
    if command.args.iter().any(|a| a.contains('\0')) {
        return bad("args must not contain NUL".into());
    }
    if let Some(name) = command
        .env
        .keys()
        .find(|n| n.is_empty() || n.contains(['=', '\0']))
    {
        return bad(format!(
            "env name {name:?} is invalid: must be non-empty, without = or NUL"
        ));
    }
    if command.cwd.as_deref().is_some_and(str::is_empty) {
        return bad("cwd must not be empty when given".into());
    }
    Ok(())
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
        assert_eq!(
            "stdio".parse::<TransportKind>().unwrap(),
            TransportKind::Stdio
        );
    }

    #[test]
    fn custom_kinds_are_named_once_and_parse_once_declared() {
        let error = "unit_quic".parse::<TransportKind>().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("unknown transport \"unit_quic\"")
        );
        let quic = TransportKind::custom("unit_quic").unwrap();
        assert_eq!(quic, TransportKind::custom("unit_quic").unwrap());
        assert_eq!(quic.as_str(), "unit_quic");
        assert_eq!("unit_quic".parse::<TransportKind>().unwrap(), quic);
        assert_eq!(serde_json::to_string(&quic).unwrap(), "\"unit_quic\"");
        let listed = "grpc".parse::<TransportKind>().unwrap_err().to_string();
        assert!(
            listed.contains("or a custom one:") && listed.contains("unit_quic"),
            "{listed}"
        );
        for bad in [
            "",
            "Quic",
            "1quic",
            "quic-1",
            "stdio",
            "websocket",
            &"q".repeat(65),
        ] {
            assert!(TransportKind::custom(bad).is_err(), "{bad:?}");
        }
        let endpoint = Endpoint::new("anything://goes", quic).unwrap();
        assert_eq!(endpoint.transport, quic);
        assert!(Endpoint::new("", quic).is_err());
    }

    #[test]
    fn urls_with_control_characters_are_refused() {
        for url in [
            "http://127.0.0.1:1/mcp\r\nX-Injected: 1",
            "http://evil\n.example/mcp",
            "http://127.0.0.1:1/m\tcp",
        ] {
            let error = Endpoint::new(url, TransportKind::StreamableHttp).unwrap_err();
            let words = error.to_string();
            assert!(words.contains("control characters"), "{words}");
            assert!(!words.contains('\n') && !words.contains('\r'), "{words}");
        }
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
