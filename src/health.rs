//! Health checks of one idle session.
//!
//! A check runs a chain of MCP requests on the session, first to last, until one decides:
//!
//! | answer of a method | result |
//! |---|---|
//! | a result | healthy: that method answered |
//! | JSON-RPC METHOD_NOT_FOUND (-32601) | the next method (the server does not implement it) |
//! | any other JSON-RPC error | failed |
//! | a transport error (the session is dead, or expired: HTTP 404) | failed |
//! | no answer within [`HealthCheckConfig::timeout`] | failed; the next method only with [`HealthCheckConfig::timeout_moves_on`] |
//! | [`Skip`](HealthCheckMethod::Skip) reached | healthy without asking the server |
//!
//! A chain that runs out without an answer fails with the last method's reason.
//!
//! The reference Python pool treated a timeout as "try the next method" and ended its chain
//! with `skip`, so a server that accepted requests and never answered them passed every check
//!. Here a timeout is a failure by default; `timeout_moves_on` plus a chain ending
//! in `Skip` reproduces that defect and must be chosen explicitly.

use std::{fmt, str::FromStr, time::Duration};

use mcp_pool_traits::{
    ConfigError, is_transport_failure,
    rmcp::{
        Peer, RoleClient, ServiceError,
        model::{
            ClientRequest, ErrorCode, ListPromptsRequest, ListResourcesRequest, ListToolsRequest,
            PingRequest, ProtocolVersion,
        },
        service::PeerRequestOptions,
    },
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Default health check chain: `ping`, then `tools/list`.
pub const DEFAULT_CHAIN: [HealthCheckMethod; 2] =
    [HealthCheckMethod::Ping, HealthCheckMethod::ListTools];
/// Default per-method timeout of a health check: 5 s.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed per-method timeouts, in whole seconds: 1-60.
pub const CHECK_TIMEOUT_RANGE_SECS: (u64, u64) = (1, 60);

/// One MCP request a health check can send. Serialized in snake case (`list_tools`), parsed
/// case-insensitively by [`FromStr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckMethod {
    /// `ping` (MCP base protocol, utilities/ping). Protocol 2026-07-28 and later have no
    /// `ping`: on such sessions [`check_session`] sends `tools/list` in its place.
    Ping,
    /// `tools/list`, sent as a raw request so that rmcp's client response cache never answers
    /// it (a cached tool list would make a dead server look alive).
    ListTools,
    /// `prompts/list`, sent as a raw request (no response cache).
    ListPrompts,
    /// `resources/list`, sent as a raw request (no response cache).
    ListResources,
    /// Nothing is sent: reaching it counts as healthy. Put it last, if at all: every method
    /// after it is never run.
    Skip,
}

impl HealthCheckMethod {
    /// Every method, in the order of [`as_str`](Self::as_str)'s list.
    pub const ALL: [HealthCheckMethod; 5] = [
        Self::Ping,
        Self::ListTools,
        Self::ListPrompts,
        Self::ListResources,
        Self::Skip,
    ];

    /// The configuration name: `ping`, `list_tools`, `list_prompts`, `list_resources`, `skip`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::ListTools => "list_tools",
            Self::ListPrompts => "list_prompts",
            Self::ListResources => "list_resources",
            Self::Skip => "skip",
        }
    }

    /// The request this method sends; `None` for [`Skip`](Self::Skip).
    fn request(self) -> Option<ClientRequest> {
        Some(match self {
            Self::Ping => ClientRequest::PingRequest(PingRequest::default()),
            Self::ListTools => ClientRequest::ListToolsRequest(ListToolsRequest::default()),
            Self::ListPrompts => ClientRequest::ListPromptsRequest(ListPromptsRequest::default()),
            Self::ListResources => {
                ClientRequest::ListResourcesRequest(ListResourcesRequest::default())
            }
            Self::Skip => return None,
        })
    }
}

impl fmt::Display for HealthCheckMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthCheckMethod {
    type Err = ConfigError;

    /// Parses a configuration name, ignoring case and surrounding blanks.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for field `health_check_method`, naming the allowed values.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ConfigError::Invalid {
                field: "health_check_method",
                value: s.to_owned(),
                allowed: "one of ping, list_tools, list_prompts, list_resources, skip",
            })
    }
}

/// How a session is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// Methods tried in order (default [`DEFAULT_CHAIN`]: `ping`, `list_tools`). Must not be
    /// empty.
    pub chain: Vec<HealthCheckMethod>,
    /// How long each method may take, 1-60 s (default 5 s). A whole check takes at most
    /// `chain.len() × timeout`.
    pub timeout: Duration,
    /// Whether a method that timed out moves on to the next one instead of failing the check
    /// (default `false`: a timeout is a failure). Together with a chain ending in
    /// [`Skip`](HealthCheckMethod::Skip) a server that never answers passes every check: the
    /// reference pool's defect, available only as this explicit choice.
    pub timeout_moves_on: bool,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            chain: DEFAULT_CHAIN.to_vec(),
            timeout: DEFAULT_CHECK_TIMEOUT,
            timeout_moves_on: false,
        }
    }
}

impl HealthCheckConfig {
    /// The default configuration with another chain.
    pub fn with_chain(mut self, chain: impl IntoIterator<Item = HealthCheckMethod>) -> Self {
        self.chain = chain.into_iter().collect();
        self
    }

    /// The same configuration with another per-method timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same configuration with [`timeout_moves_on`](Self::timeout_moves_on) set.
    pub fn with_timeout_moves_on(mut self, moves_on: bool) -> Self {
        self.timeout_moves_on = moves_on;
        self
    }

    /// Checks the chain and the timeout.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] (field `health_check_chain`) for an empty chain;
    /// [`ConfigError::OutOfRange`] (field `health_check_timeout`) for a timeout outside 1-60 s
    /// (a fraction of a second above a whole second counts as the next second).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chain.is_empty() {
            return Err(ConfigError::Invalid {
                field: "health_check_chain",
                value: "[]".to_owned(),
                allowed: "a non-empty list of ping, list_tools, list_prompts, list_resources, skip",
            });
        }
        let secs = self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0);
        let (min, max) = CHECK_TIMEOUT_RANGE_SECS;
        if !(min..=max).contains(&secs) {
            return Err(ConfigError::OutOfRange {
                field: "health_check_timeout",
                value: secs,
                min,
                max,
                unit: " seconds",
            });
        }
        Ok(())
    }
}

/// Why a health check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthFailure {
    /// No answer within the per-method timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The transport failed: the session is dead or expired server-side (HTTP 404 surfaces
    /// here too). See [`is_transport_failure`].
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered with a JSON-RPC error other than METHOD_NOT_FOUND.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i32,
        /// The server's message.
        message: String,
    },
    /// The last method of the chain answered METHOD_NOT_FOUND (-32601): the server implements
    /// none of the chain's methods.
    #[error("the server implements none of the health check methods (METHOD_NOT_FOUND)")]
    MethodNotFound,
    /// Another client-side error (rmcp's own cancellation, an unexpected response type…).
    #[error("{0}")]
    Other(String),
    /// The chain was empty ([`HealthCheckConfig::validate`] rejects that).
    #[error("the health check chain is empty")]
    EmptyChain,
}

/// The result of [`check_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthOutcome {
    /// The session answered `method` (or the chain reached [`HealthCheckMethod::Skip`]).
    Healthy {
        /// The method that decided.
        method: HealthCheckMethod,
    },
    /// The session failed `method`: close it and replace it.
    Failed {
        /// The method that failed (the last one tried when the chain ran out).
        method: HealthCheckMethod,
        /// Why.
        failure: HealthFailure,
    },
}

impl HealthOutcome {
    /// Whether the session passed.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy { .. })
    }

    /// The method that decided.
    pub fn method(&self) -> HealthCheckMethod {
        match self {
            Self::Healthy { method } | Self::Failed { method, .. } => *method,
        }
    }

    /// Why the check failed; `None` when healthy.
    pub fn failure(&self) -> Option<&HealthFailure> {
        match self {
            Self::Healthy { .. } => None,
            Self::Failed { failure, .. } => Some(failure),
        }
    }
}

/// Whether a session negotiated a protocol without `ping` (2026-07-28 or later: SEP-2567
/// moved the lifecycle into per-request metadata and dropped `ping`). Dates compare lexically.
/// A session without peer info (not initialized) is taken to have `ping`.
pub fn lacks_ping(peer: &Peer<RoleClient>) -> bool {
    peer.peer_info().is_some_and(|info| {
        info.protocol_version.as_str() >= ProtocolVersion::V_2026_07_28.as_str()
    })
}

/// The methods [`check_session`] runs for a chain: the chain itself, except that on a session
/// without `ping` ([`lacks_ping`]) `Ping` becomes `ListTools`, and a method already run earlier
/// in the chain is not run again. So the default chain `[ping, list_tools]` runs just
/// `list_tools` on 2026-07-28 servers, and `[ping]` alone still checks something.
pub fn effective_chain(
    chain: &[HealthCheckMethod],
    without_ping: bool,
) -> impl Iterator<Item = HealthCheckMethod> + '_ {
    let map = move |m: HealthCheckMethod| {
        if without_ping && m == HealthCheckMethod::Ping {
            HealthCheckMethod::ListTools
        } else {
            m
        }
    };
    chain
        .iter()
        .enumerate()
        .filter(move |(i, m)| !chain[..*i].iter().any(|earlier| map(*earlier) == map(**m)))
        .map(move |(_, m)| map(*m))
}

/// What one method of the chain found.
enum Step {
    Answered,
    NotFound,
    Failed(HealthFailure),
}

/// Checks one session with the chain of `config` (see the module docs for the rules). Run it
/// on idle sessions only: it uses the session like a lease would.
///
/// Never takes longer than `chain.len() × config.timeout`. A request that timed out is
/// cancelled (`notifications/cancelled`) from a background task bounded by the same timeout.
/// `tools/list`, `prompts/list` and `resources/list` go out as raw requests, never through
/// rmcp's client response cache, whose configuration stays as it was for the lease users.
pub async fn check_session(peer: &Peer<RoleClient>, config: &HealthCheckConfig) -> HealthOutcome {
    let mut last: Option<(HealthCheckMethod, HealthFailure)> = None;
    for method in effective_chain(&config.chain, lacks_ping(peer)) {
        let Some(request) = method.request() else {
            return HealthOutcome::Healthy { method };
        };
        match run(peer, request, config.timeout).await {
            Step::Answered => return HealthOutcome::Healthy { method },
            Step::NotFound => last = Some((method, HealthFailure::MethodNotFound)),
            Step::Failed(failure @ HealthFailure::Timeout(_)) if config.timeout_moves_on => {
                last = Some((method, failure));
            }
            Step::Failed(failure) => return HealthOutcome::Failed { method, failure },
        }
    }
    let (method, failure) = last.unwrap_or((HealthCheckMethod::Skip, HealthFailure::EmptyChain));
    HealthOutcome::Failed { method, failure }
}

/// Sends `request` and waits at most `timeout` for its answer.
async fn run(peer: &Peer<RoleClient>, request: ClientRequest, timeout: Duration) -> Step {
    let deadline = Instant::now() + timeout;
    let sent = tokio::time::timeout_at(
        deadline,
        peer.send_request_with_option(request, PeerRequestOptions::no_options()),
    )
    .await;
    let mut handle = match sent {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => return classify(error),
        Err(_elapsed) => return Step::Failed(HealthFailure::Timeout(timeout)),
    };
    match tokio::time::timeout_at(deadline, &mut handle.rx).await {
        Ok(Ok(Ok(_answer))) => Step::Answered,
        Ok(Ok(Err(error))) => classify(error),
        // The service dropped the responder: it ended.
        Ok(Err(_closed)) => classify(ServiceError::TransportClosed),
        Err(_elapsed) => {
            // Tell the server we stopped waiting, without making the check wait for that: on a
            // hung server the notification itself is never answered.
            tokio::spawn(async move {
                let cancel = handle.cancel(Some("health check timed out".to_owned()));
                let _ = tokio::time::timeout(timeout, cancel).await;
            });
            Step::Failed(HealthFailure::Timeout(timeout))
        }
    }
}

fn classify(error: ServiceError) -> Step {
    match error {
        ServiceError::McpError(e) if e.code == ErrorCode::METHOD_NOT_FOUND => Step::NotFound,
        ServiceError::McpError(e) => Step::Failed(HealthFailure::Rpc {
            code: e.code.0,
            message: e.message.into_owned(),
        }),
        ServiceError::Timeout { timeout } => Step::Failed(HealthFailure::Timeout(timeout)),
        // In words (rmcp's own message names Rust types): it becomes the endpoint's last error.
        error if is_transport_failure(&error) => Step::Failed(HealthFailure::Transport(
            mcp_pool_transports::failure_cause(&error),
        )),
        error => Step::Failed(HealthFailure::Other(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthCheckMethod::*;

    #[test]
    fn methods_parse_and_serialize_in_snake_case() {
        for method in HealthCheckMethod::ALL {
            assert_eq!(method.as_str().parse::<HealthCheckMethod>(), Ok(method));
            let json = serde_json::to_string(&method).unwrap();
            assert_eq!(json, format!("\"{}\"", method.as_str()));
            assert_eq!(
                serde_json::from_str::<HealthCheckMethod>(&json).unwrap(),
                method
            );
        }
        assert_eq!(" List_Tools ".parse::<HealthCheckMethod>(), Ok(ListTools));
    }

    #[test]
    fn an_unknown_method_names_the_allowed_ones() {
        let error = "pong".parse::<HealthCheckMethod>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "health_check_method = \"pong\" is invalid: must be one of ping, list_tools, \
             list_prompts, list_resources, skip"
        );
    }

    #[test]
    fn the_default_config_is_ping_then_list_tools_and_fails_on_timeouts() {
        let config = HealthCheckConfig::default();
        assert_eq!(config.chain, vec![Ping, ListTools]);
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert!(!config.timeout_moves_on);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn validation_rejects_an_empty_chain_and_timeouts_outside_1_to_60_s() {
        let empty = HealthCheckConfig::default().with_chain([]);
        assert!(matches!(
            empty.validate(),
            Err(ConfigError::Invalid {
                field: "health_check_chain",
                ..
            })
        ));
        for (timeout, ok) in [
            (Duration::ZERO, false),
            (Duration::from_millis(500), true),
            (Duration::from_secs(1), true),
            (Duration::from_secs(60), true),
            (Duration::from_millis(60_001), false),
            (Duration::from_secs(61), false),
        ] {
            let config = HealthCheckConfig::default().with_timeout(timeout);
            assert_eq!(config.validate().is_ok(), ok, "{timeout:?}");
        }
        let error = HealthCheckConfig::default()
            .with_timeout(Duration::from_secs(61))
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "health_check_timeout = 61 is out of range: must be 1 to 60 seconds"
        );
    }

    #[test]
    fn without_ping_the_chain_uses_list_tools_once() {
        let run = |chain: &[HealthCheckMethod], without_ping| {
            effective_chain(chain, without_ping).collect::<Vec<_>>()
        };
        assert_eq!(run(&[Ping, ListTools], false), [Ping, ListTools]);
        assert_eq!(run(&[Ping, ListTools], true), [ListTools]);
        assert_eq!(run(&[Ping], true), [ListTools]);
        assert_eq!(run(&[Ping, Skip], true), [ListTools, Skip]);
        assert_eq!(
            run(&[ListPrompts, Ping, ListResources], true),
            [ListPrompts, ListTools, ListResources]
        );
        assert_eq!(run(&[ListTools, Ping], true), [ListTools]);
        // Duplicates in a configured chain run once.
        assert_eq!(run(&[Ping, Ping, ListTools], false), [Ping, ListTools]);
    }

    #[test]
    fn errors_are_classified() {
        use mcp_pool_traits::rmcp::ErrorData;
        assert!(matches!(
            classify(ServiceError::McpError(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                "no",
                None
            ))),
            Step::NotFound
        ));
        assert!(matches!(
            classify(ServiceError::McpError(ErrorData::internal_error(
                "boom", None
            ))),
            Step::Failed(HealthFailure::Rpc { code: -32603, .. })
        ));
        assert!(matches!(
            classify(ServiceError::TransportClosed),
            Step::Failed(HealthFailure::Transport(_))
        ));
        assert!(matches!(
            classify(ServiceError::Cancelled { reason: None }),
            Step::Failed(HealthFailure::Other(_))
        ));
    }
}
