//! The gateway's own settings: `HOST`, `PORT`, `JWT_SECRET_KEY`, `AUTH_REQUIRED`,
//! `MAX_BODY_BYTES`. The pool's settings are [`mcp_pool::Settings`].

use std::fmt;

use crate::auth::JwtSecret;

/// `MAX_BODY_BYTES` by default: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The largest `MAX_BODY_BYTES` accepted: 1 GiB.
pub const MAX_MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;
/// `PORT` by default (the seed's `mcpgateway --port 4444`).
pub const DEFAULT_PORT: u16 = 4444;
/// `HOST` by default: loopback only.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The variables the gateway reads besides the pool's ([`mcp_pool::ENV_VARIABLES`]).
pub const GATEWAY_VARIABLES: [&str; 5] = [
    "HOST",
    "PORT",
    "JWT_SECRET_KEY",
    "AUTH_REQUIRED",
    "MAX_BODY_BYTES",
];

/// A configuration value was rejected: start-up stops with these words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.words())]
pub struct ConfigError {
    /// The variable or flag (`PORT`, `--port`).
    pub setting: String,
    /// The rejected value (empty for a secret, which is never shown).
    pub value: String,
    /// What is allowed.
    pub allowed: String,
}

impl ConfigError {
    fn words(&self) -> String {
        let Self {
            setting,
            value,
            allowed,
        } = self;
        if value.is_empty() {
            format!("{setting} is not set: must be {allowed}")
        } else {
            format!("{setting} = {value:?} is invalid: must be {allowed}")
        }
    }

    /// `setting = "value" is invalid: must be allowed`.
    pub fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.into(),
            allowed: allowed.into(),
        }
    }
}

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Every route but `/health` and `/ready` needs `Authorization: Bearer <JWT>` signed with
    /// this key (`AUTH_REQUIRED=true`, the default).
    Required(JwtSecret),
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
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth)
            .field("max_body_bytes", &self.max_body_bytes)
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
            (true, Some(secret)) => Auth::Required(JwtSecret::new(secret)?),
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
        Ok(Self {
            host,
            port,
            auth,
            max_body_bytes,
        })
    }
}

/// The `[gateway]` table of the `--config` file: `host`, `port`, `auth_required`,
/// `max_body_bytes`, each the value of the variable of the same name in upper case when that
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
                    "host (text), port (0-65535), auth_required (true/false), max_body_bytes \
                     (1 to 1 GiB); JWT_SECRET_KEY stays in the environment",
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
            _ => None,
        }
    }
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
