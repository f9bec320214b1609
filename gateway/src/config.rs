//! The gateway's own settings: `HOST`, `PORT`, `JWT_SECRET_KEY` (with `JWT_AUDIENCE`,
//! `JWT_ISSUER`), `AUTH_REQUIRED`, `MAX_BODY_BYTES`, the HTTP server's limits
//! ([`ServerLimits`]) and the hardening settings ([`Policy`]). The pool's settings are
//! [`mcp_pool::Settings`].

use std::{fmt, ops::RangeInclusive, str::FromStr, time::Duration};

use crate::{
    auth::{JwtSecret, Verifier},
    policy::Policy,
    serve::ServerLimits,
};
pub use crate::{error::ConfigError, policy::GATEWAY_VARIABLES};

/// `MAX_BODY_BYTES` by default: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The largest `MAX_BODY_BYTES` accepted: 1 GiB.
pub const MAX_MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;
/// `PORT` by default (ContextForge's, `mcpgateway --port 4444`).
pub const DEFAULT_PORT: u16 = 4444;
/// `HOST` by default: loopback only.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Every route but `/health` and `/ready` needs `Authorization: Bearer <JWT>` that this
    /// verifier accepts (`AUTH_REQUIRED=true`, the default): signed with `JWT_SECRET_KEY`,
    /// naming `JWT_AUDIENCE` and `JWT_ISSUER` when set.
    Required(Verifier),
    /// No auth (`AUTH_REQUIRED=false`): for a gateway behind another authenticating proxy.
    Disabled,
}

impl Auth {
    /// Whether requests need a bearer token.
    pub fn is_required(&self) -> bool {
        matches!(self, Auth::Required(_))
    }
}

/// The gateway's settings besides the pool's.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Address to listen on (`HOST`, `--host`; default `127.0.0.1`).
    pub host: String,
    /// Port to listen on (`PORT`, `--port`; default 4444; 0 picks a free one).
    pub port: u16,
    /// Auth (`AUTH_REQUIRED`, `JWT_SECRET_KEY`).
    pub auth: Auth,
    /// Largest request body accepted, bytes (`MAX_BODY_BYTES`; default 4 MiB, 1 to 1 GiB).
    pub max_body_bytes: usize,
    /// How long clients may take to send a request and how many connections they may hold
    /// (`HEADER_READ_TIMEOUT_SECS`, `BODY_READ_TIMEOUT_SECS`, `MAX_CONNECTIONS`; defaults
    /// [`ServerLimits::default`]).
    pub limits: ServerLimits,
    /// The hardening settings ([`Policy`]).
    pub policy: Policy,
    /// Check every server's endpoints in the background at start and when a server is added
    /// or its endpoints change (`SERVER_CHECKS`, default true): one connection each, with
    /// `initialize`, so that a server that cannot serve shows in the log and the health view
    /// before its first client ([`crate::Registry::check_servers`]).
    pub server_checks: bool,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .field("server_checks", &self.server_checks)
            .finish()
    }
}

impl GatewayConfig {
    /// Reads the gateway's variables through `lookup` (the environment after `.env`), with
    /// `host` and `port` given on the command line winning over `HOST` and `PORT`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable or flag, its value and what is allowed; among
    /// them: auth required (the default) but no `JWT_SECRET_KEY`.
    pub fn from_lookup(
        host: Option<&str>,
        port: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let host = match host {
            Some(h) => h.to_owned(),
            None => lookup("HOST").unwrap_or_else(|| DEFAULT_HOST.to_owned()),
        };
        if host.trim().is_empty() {
            return Err(ConfigError::new(
                "HOST",
                host,
                "an IP address or host name to listen on, such as 127.0.0.1 or 0.0.0.0",
            ));
        }
        let port = match port {
            Some(p) => parse_port("--port", p)?,
            None => match lookup("PORT") {
                Some(p) => parse_port("PORT", &p)?,
                None => DEFAULT_PORT,
            },
        };
        let auth_required = match lookup("AUTH_REQUIRED") {
            None => true,
            Some(v) => parse_bool("AUTH_REQUIRED", &v)?,
        };
        let secret = lookup("JWT_SECRET_KEY").filter(|s| !s.is_empty());
        let auth = match (auth_required, secret) {
            (true, None) => {
                return Err(ConfigError::new(
                    "JWT_SECRET_KEY",
                    "",
                    "set while AUTH_REQUIRED is true (the default): the gateway signs and \
                     checks its bearer tokens with it; set JWT_SECRET_KEY, or \
                     AUTH_REQUIRED=false to run without auth",
                ));
            }
            (true, Some(secret)) => {
                let mut verifier = Verifier::from(JwtSecret::new(secret)?);
                if let Some(audience) = lookup("JWT_AUDIENCE").filter(|v| !v.trim().is_empty()) {
                    verifier = verifier.audience(audience.trim());
                }
                if let Some(issuer) = lookup("JWT_ISSUER").filter(|v| !v.trim().is_empty()) {
                    verifier = verifier.issuer(issuer.trim());
                }
                Auth::Required(verifier)
            }
            (false, _) => Auth::Disabled,
        };
        let max_body_bytes = match lookup("MAX_BODY_BYTES") {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_MAX_BODY_BYTES).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "MAX_BODY_BYTES",
                        v.clone(),
                        format!("a number of bytes from 1 to {MAX_MAX_BODY_BYTES}"),
                    )
                })?,
        };
        let limits = server_limits(&lookup)?;
        let policy = Policy::from_lookup(&lookup)?;
        let server_checks = match lookup("SERVER_CHECKS") {
            None => true,
            Some(v) => parse_bool("SERVER_CHECKS", &v)?,
        };
        Ok(Self {
            host,
            port,
            auth,
            max_body_bytes,
            limits,
            policy,
            server_checks,
        })
    }
}

/// The `[gateway]` table of the `--config` file: `host`, `port`, `auth_required`,
/// `max_body_bytes`, the server limits and the hardening settings ([`Policy`]; lists as TOML
/// arrays of strings), each the value of the variable of the same name in upper case when that
/// variable is not set (flags win over variables, variables over the file). The signing key
/// is not read from the file: keep it in `JWT_SECRET_KEY` (or `.env`), out of version
/// control.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTable {
    /// `HOST`.
    pub host: Option<String>,
    /// `PORT`.
    pub port: Option<u16>,
    /// `AUTH_REQUIRED`.
    pub auth_required: Option<bool>,
    /// `MAX_BODY_BYTES`.
    pub max_body_bytes: Option<usize>,
    /// `SERVER_CHECKS`.
    pub server_checks: Option<bool>,
    /// `CREDENTIALS_ENV_ALLOWED`, as a list.
    pub credentials_env_allowed: Option<Vec<String>>,
    /// `ALLOWED_ORIGINS`, as a list.
    pub allowed_origins: Option<Vec<String>>,
    /// `UPSTREAM_ALLOW_CIDRS`, as a list.
    pub upstream_allow_cidrs: Option<Vec<String>>,
    /// `UPSTREAM_DENY_CIDRS`, as a list.
    pub upstream_deny_cidrs: Option<Vec<String>>,
    /// `DOWNSTREAM_SESSIONS_PER_USER`.
    pub downstream_sessions_per_user: Option<u64>,
    /// `DOWNSTREAM_SESSION_IDLE_TIMEOUT`, seconds.
    pub downstream_session_idle_timeout: Option<u64>,
    /// `HEADER_READ_TIMEOUT_SECS`.
    pub header_read_timeout_secs: Option<u64>,
    /// `BODY_READ_TIMEOUT_SECS`.
    pub body_read_timeout_secs: Option<u64>,
    /// `MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
}

impl GatewayTable {
    /// The `[gateway]` table of the TOML text `toml` read from `path` (empty when absent).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the field and its line when the table has an unknown
    /// field or a value of the wrong type.
    pub fn parse(path: &str, toml: &str) -> Result<Self, ConfigError> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            gateway: GatewayTable,
        }
        toml::from_str::<File>(toml)
            .map(|file| file.gateway)
            .map_err(|error| {
                let line = error
                    .span()
                    .map(|span| toml[..span.start].matches('\n').count() + 1);
                ConfigError::new(
                    match line {
                        Some(line) => format!("{path}, line {line}, [gateway]"),
                        None => format!("{path}, [gateway]"),
                    },
                    error.message().to_owned(),
                    "host (text), port (0-65535), auth_required, server_checks (true/false), \
                     max_body_bytes (1 to 1 GiB), credentials_env_allowed, allowed_origins, \
                     upstream_allow_cidrs, upstream_deny_cidrs (lists of text), \
                     downstream_sessions_per_user, downstream_session_idle_timeout \
                     (numbers), header_read_timeout_secs, body_read_timeout_secs (1 to 3600), \
                     max_connections (1 to 1000000); JWT_SECRET_KEY stays in the environment",
                )
            })
    }

    /// The value the table gives variable `name` (`HOST`, `PORT`, `AUTH_REQUIRED`,
    /// `MAX_BODY_BYTES`), as text.
    pub fn var(&self, name: &str) -> Option<String> {
        match name {
            "HOST" => self.host.clone(),
            "PORT" => self.port.map(|p| p.to_string()),
            "AUTH_REQUIRED" => self.auth_required.map(|b| b.to_string()),
            "MAX_BODY_BYTES" => self.max_body_bytes.map(|n| n.to_string()),
            "SERVER_CHECKS" => self.server_checks.map(|b| b.to_string()),
            "CREDENTIALS_ENV_ALLOWED" => self.credentials_env_allowed.as_ref().map(|l| l.join(",")),
            "ALLOWED_ORIGINS" => self.allowed_origins.as_ref().map(|l| l.join(",")),
            "UPSTREAM_ALLOW_CIDRS" => self.upstream_allow_cidrs.as_ref().map(|l| l.join(",")),
            "UPSTREAM_DENY_CIDRS" => self.upstream_deny_cidrs.as_ref().map(|l| l.join(",")),
            "DOWNSTREAM_SESSIONS_PER_USER" => {
                self.downstream_sessions_per_user.map(|n| n.to_string())
            }
            "DOWNSTREAM_SESSION_IDLE_TIMEOUT" => {
                self.downstream_session_idle_timeout.map(|n| n.to_string())
            }
            "HEADER_READ_TIMEOUT_SECS" => self.header_read_timeout_secs.map(|n| n.to_string()),
            "BODY_READ_TIMEOUT_SECS" => self.body_read_timeout_secs.map(|n| n.to_string()),
            "MAX_CONNECTIONS" => self.max_connections.map(|n| n.to_string()),
            _ => None,
        }
    }
}

/// `HEADER_READ_TIMEOUT_SECS` and `BODY_READ_TIMEOUT_SECS` (1 to 3600 seconds) and
/// `MAX_CONNECTIONS` (1 to 1 000 000), each [`ServerLimits::default`]'s when unset.
fn server_limits(lookup: &impl Fn(&str) -> Option<String>) -> Result<ServerLimits, ConfigError> {
    let defaults = ServerLimits::default();
    let seconds = |name: &str, default: Duration| match lookup(name) {
        None => Ok(default),
        Some(v) => parse_number(name, &v, 1..=3600, "seconds").map(Duration::from_secs),
    };
    Ok(ServerLimits {
        header_read_timeout: seconds("HEADER_READ_TIMEOUT_SECS", defaults.header_read_timeout)?,
        body_read_timeout: seconds("BODY_READ_TIMEOUT_SECS", defaults.body_read_timeout)?,
        max_connections: match lookup("MAX_CONNECTIONS") {
            None => defaults.max_connections,
            Some(v) => parse_number("MAX_CONNECTIONS", &v, 1..=1_000_000, "connections")?,
        },
    })
}

/// A whole number of `unit` within `range`.
fn parse_number<N: FromStr + PartialOrd + fmt::Display>(
    setting: &str,
    value: &str,
    range: RangeInclusive<N>,
    unit: &str,
) -> Result<N, ConfigError> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            let (low, high) = (range.start(), range.end());
            ConfigError::new(
                setting,
                value,
                format!("a number of {unit} from {low} to {high}"),
            )
        })
}

fn parse_port(setting: &str, value: &str) -> Result<u16, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(setting, value, "a port number from 0 to 65535"))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
fn parse_bool(setting: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            setting,
            value,
            "true or false (also 1/0, yes/no, on/off)",
        )),
    }
}
