//! The gateway's hardening settings: which environment variables a server's credentials may
//! name, which addresses an upstream endpoint may have, which browser origins may reach the
//! MCP routes, and the limits on downstream sessions (gateway/README.md, "Security").
//!
//! Each is read once at start ([`crate::GatewayConfig::from_lookup`]); every default is the
//! restrictive one.

use std::{net::IpAddr, time::Duration};

use http::HeaderMap;
use ipnet::IpNet;

use crate::error::ConfigError;

/// The variables the gateway reads besides the pool's ([`mcp_pool::ENV_VARIABLES`]). None of
/// them, nor the pool's, can be named by a server's `credentials.env`.
pub const GATEWAY_VARIABLES: &[&str] = &[
    "HOST",
    "PORT",
    "JWT_SECRET_KEY",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "AUTH_REQUIRED",
    "MAX_BODY_BYTES",
    "SERVER_CHECKS",
    "HEADER_READ_TIMEOUT_SECS",
    "BODY_READ_TIMEOUT_SECS",
    "MAX_CONNECTIONS",
    "ADMIN_USERNAME",
    "ADMIN_PASSWORD",
    "STATE_NAMESPACE",
    "WORKER_ID",
    "CREDENTIALS_ENV_ALLOWED",
    "DOWNSTREAM_SESSIONS_PER_USER",
    "DOWNSTREAM_SESSION_IDLE_TIMEOUT",
    "ALLOWED_ORIGINS",
    "UPSTREAM_ALLOW_CIDRS",
    "UPSTREAM_DENY_CIDRS",
];

/// The environment variables a server record's `credentials.env` may name
/// (`CREDENTIALS_ENV_ALLOWED`, `[gateway] credentials_env_allowed`): exact names, and
/// prefixes written `NAME_*`. Empty by default: no record can read the gateway's environment
/// until the operator allows a variable. The gateway's and the pool's own settings
/// ([`GATEWAY_VARIABLES`], [`mcp_pool::ENV_VARIABLES`]) are never readable,
/// whatever the list says: they hold the gateway's keys and connection strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialsPolicy {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl CredentialsPolicy {
    /// The policy of a comma-separated list such as `GITHUB_TOKEN,UPSTREAM_*`.
    ///
    /// # Errors
    /// [`ConfigError`] naming an entry that is not a variable name, or a prefix with nothing
    /// before its `*` (which would allow every variable).
    pub fn parse(setting: &str, list: &str) -> Result<Self, ConfigError> {
        let mut policy = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (entry, false),
            };
            if !is_variable_name(name) {
                return Err(ConfigError::new(
                    setting,
                    entry,
                    "a comma-separated list of environment variable names ([A-Za-z_][A-Za-z0-9_]*) \
                     and prefixes written NAME_* (at least one character before the *)",
                ));
            }
            if prefix {
                policy.prefixes.push(name.to_owned());
            } else {
                policy.names.push(name.to_owned());
            }
        }
        Ok(policy)
    }

    /// Whether a record may name `name`: listed (or under a listed prefix) and not a setting
    /// of the gateway or the pool.
    pub fn allows(&self, name: &str) -> bool {
        let listed = self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()));
        listed && !is_setting(name)
    }

    /// The value of `name` in the gateway's environment, when [allowed](Self::allows) and set.
    /// Disallowed and unset look the same to the caller: nobody learns which variables exist.
    pub fn value(&self, name: &str) -> Option<String> {
        self.allows(name)
            .then(|| std::env::var(name).ok())
            .flatten()
    }

    /// The list as written, for logs and errors (names only).
    pub fn describe(&self) -> String {
        let entries: Vec<String> = self
            .names
            .iter()
            .cloned()
            .chain(self.prefixes.iter().map(|p| format!("{p}*")))
            .collect();
        if entries.is_empty() {
            "none".to_owned()
        } else {
            entries.join(",")
        }
    }
}

/// Whether `name` is one of the variables the gateway or its pool is configured by.
fn is_setting(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    GATEWAY_VARIABLES.contains(&upper.as_str())
        || mcp_pool::ENV_VARIABLES.contains(&upper.as_str())
        || upper.starts_with("SESSION_POOL")
        || upper.starts_with("MCP_POOL")
}

/// `[A-Za-z_][A-Za-z0-9_]*`, 1 to 128 characters.
pub(crate) fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
}

/// The addresses an upstream endpoint may resolve to (`UPSTREAM_ALLOW_CIDRS`,
/// `UPSTREAM_DENY_CIDRS`). An address is refused when it is in a denied network, or when an
/// allow list is set and it is in none of its networks. By default nothing is on the allow
/// list and the deny list holds the cloud metadata services' link-local addresses
/// ([`DEFAULT_DENIED`]), where an endpoint would read the host's cloud credentials. Loopback
/// stays allowed: a gateway beside its upstreams (a sidecar, a local stdio bridge, the tests)
/// reaches them there, and only an admin can create servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// The networks denied by default: IPv4 link-local (`169.254.0.0/16`, where AWS, GCP, Azure
/// and others serve instance metadata at `169.254.169.254`) and AWS's IPv6 metadata address
/// `fd00:ec2::254`.
pub const DEFAULT_DENIED: &[&str] = &["169.254.0.0/16", "fd00:ec2::254/128"];

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: DEFAULT_DENIED
                .iter()
                .map(|n| n.parse().expect("the default networks parse"))
                .collect(),
        }
    }
}

impl UpstreamPolicy {
    /// The policy of the two settings' values: comma-separated CIDRs (`10.0.0.0/8`) or
    /// addresses (`192.0.2.7`). `deny` replaces [`DEFAULT_DENIED`] when given (empty: deny
    /// nothing).
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting and the entry that is not a network.
    pub fn parse(allow: Option<&str>, deny: Option<&str>) -> Result<Self, ConfigError> {
        let nets = |setting: &str, list: &str| -> Result<Vec<IpNet>, ConfigError> {
            list.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|entry| {
                    entry
                        .parse::<IpNet>()
                        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            ConfigError::new(
                                setting,
                                entry,
                                "a comma-separated list of networks (10.0.0.0/8, fd00::/8) or \
                                 addresses",
                            )
                        })
                })
                .collect()
        };
        let mut policy = Self::default();
        if let Some(allow) = allow {
            policy.allow = nets("UPSTREAM_ALLOW_CIDRS", allow)?;
        }
        if let Some(deny) = deny {
            policy.deny = nets("UPSTREAM_DENY_CIDRS", deny)?;
        }
        Ok(policy)
    }

    /// Why `addr` may not be an upstream's address, if it may not.
    pub fn refuses(&self, addr: IpAddr) -> Option<String> {
        let addr = addr.to_canonical();
        if let Some(net) = self.deny.iter().find(|n| n.contains(&addr)) {
            return Some(format!(
                "{addr} is in the denied network {net} (UPSTREAM_DENY_CIDRS)"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&addr)) {
            return Some(format!(
                "{addr} is in none of the allowed networks (UPSTREAM_ALLOW_CIDRS)"
            ));
        }
        None
    }

    /// Checks the host of `url` (an endpoint's): an address is checked as is, a name by the
    /// addresses it resolves to now. A name that does not resolve passes (its sessions will
    /// fail to connect); a name whose records change later is not re-checked here.
    ///
    /// # Errors
    /// The reason, naming the address and the network.
    pub async fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let Some(host) = url.host() else {
            return Ok(()); // stdio: and other schemes without a host
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match host {
            url::Host::Ipv4(a) => vec![IpAddr::V4(a)],
            url::Host::Ipv6(a) => vec![IpAddr::V6(a)],
            url::Host::Domain(name) => match tokio::net::lookup_host((name, port)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(_) => Vec::new(),
            },
        };
        match addrs.into_iter().find_map(|a| self.refuses(a)) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// The browser origins allowed on the MCP routes (`ALLOWED_ORIGINS`): the MCP transport spec
/// requires servers to validate `Origin` against DNS rebinding ("Streamable HTTP: Security
/// Warning"). A request without `Origin` (every non-browser client) passes; one whose origin
/// is the gateway's own (the `Host` it was sent to) passes; any other needs to be listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// The policy of a comma-separated list of origins (`https://app.example.com`,
    /// `http://localhost:5173`), compared without case and without a trailing `/`.
    ///
    /// # Errors
    /// [`ConfigError`] naming an entry that is not `scheme://host[:port]`.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let mut allowed = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let origin = entry.trim_end_matches('/').to_ascii_lowercase();
            let valid = url::Url::parse(&origin).is_ok_and(|u| {
                u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
            });
            if !valid {
                return Err(ConfigError::new(
                    "ALLOWED_ORIGINS",
                    entry,
                    "a comma-separated list of origins: scheme://host[:port], such as \
                     https://app.example.com",
                ));
            }
            allowed.push(origin);
        }
        Ok(Self { allowed })
    }

    /// Checks a request's `headers`.
    ///
    /// # Errors
    /// The request's origin, when it may not reach the MCP routes.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("(not text)").to_ascii_lowercase();
        let origin = origin.trim_end_matches('/');
        if self.allowed.iter().any(|a| a == origin) {
            return Ok(());
        }
        let own = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
            });
        if own { Ok(()) } else { Err(origin.to_owned()) }
    }
}

/// Limits on what one downstream client can hold open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Downstream MCP sessions one user may hold at once in this worker, over all servers
    /// (`DOWNSTREAM_SESSIONS_PER_USER`; default [`DEFAULT_SESSIONS_PER_USER`]).
    pub per_user: u32,
    /// A downstream session with no request for this long ends
    /// (`DOWNSTREAM_SESSION_IDLE_TIMEOUT`, seconds; default [`DEFAULT_SESSION_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
}

/// `DOWNSTREAM_SESSIONS_PER_USER` by default.
pub const DEFAULT_SESSIONS_PER_USER: u32 = 100;
/// The largest `DOWNSTREAM_SESSIONS_PER_USER` accepted.
pub const MAX_SESSIONS_PER_USER: u32 = 100_000;
/// `DOWNSTREAM_SESSION_IDLE_TIMEOUT` by default: 5 minutes (rmcp's session keep-alive).
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            per_user: DEFAULT_SESSIONS_PER_USER,
            idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
        }
    }
}

/// Every hardening setting, read together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `CREDENTIALS_ENV_ALLOWED`.
    pub credentials: CredentialsPolicy,
    /// `UPSTREAM_ALLOW_CIDRS`, `UPSTREAM_DENY_CIDRS`.
    pub upstream: UpstreamPolicy,
    /// `ALLOWED_ORIGINS`.
    pub origins: OriginPolicy,
    /// `DOWNSTREAM_SESSIONS_PER_USER`, `DOWNSTREAM_SESSION_IDLE_TIMEOUT`.
    pub sessions: SessionLimits,
}

impl Policy {
    /// Reads the settings through `lookup`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting, its value and what is allowed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let credentials = match lookup("CREDENTIALS_ENV_ALLOWED") {
            Some(list) => CredentialsPolicy::parse("CREDENTIALS_ENV_ALLOWED", &list)?,
            None => CredentialsPolicy::default(),
        };
        let upstream = UpstreamPolicy::parse(
            lookup("UPSTREAM_ALLOW_CIDRS").as_deref(),
            lookup("UPSTREAM_DENY_CIDRS").as_deref(),
        )?;
        let origins = match lookup("ALLOWED_ORIGINS") {
            Some(list) => OriginPolicy::parse(&list)?,
            None => OriginPolicy::default(),
        };
        let number = |name: &str,
                      range: std::ops::RangeInclusive<u64>|
         -> Result<Option<u64>, ConfigError> {
            lookup(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| range.contains(n))
                        .ok_or_else(|| {
                            ConfigError::new(
                                name,
                                v.clone(),
                                format!("a whole number from {} to {}", range.start(), range.end()),
                            )
                        })
                })
                .transpose()
        };
        let mut sessions = SessionLimits::default();
        if let Some(n) = number(
            "DOWNSTREAM_SESSIONS_PER_USER",
            1..=u64::from(MAX_SESSIONS_PER_USER),
        )? {
            sessions.per_user = n as u32;
        }
        if let Some(secs) = number("DOWNSTREAM_SESSION_IDLE_TIMEOUT", 5..=86_400)? {
            sessions.idle_timeout = Duration::from_secs(secs);
        }
        Ok(Self {
            credentials,
            upstream,
            origins,
            sessions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_only_allowed_variables_never_a_setting() {
        let policy = CredentialsPolicy::parse(
            "CREDENTIALS_ENV_ALLOWED",
            "GITHUB_TOKEN, UPSTREAM_*, JWT_SECRET_KEY",
        )
        .unwrap();
        assert!(policy.allows("GITHUB_TOKEN"));
        assert!(policy.allows("UPSTREAM_A"));
        assert!(!policy.allows("GITHUB_TOKENS"));
        assert!(!policy.allows("PATH"));
        // Listed, yet a gateway setting.
        assert!(!policy.allows("JWT_SECRET_KEY"));
        let everything = CredentialsPolicy::parse("X", "*").unwrap_err();
        assert!(
            everything.to_string().contains("at least one character"),
            "{everything}"
        );
        assert!(!CredentialsPolicy::default().allows("HOME"));
        let settings = CredentialsPolicy::parse("X", "DATABASE_*,REDIS_*,ADMIN_*").unwrap();
        for name in ["DATABASE_URL", "REDIS_URL", "ADMIN_PASSWORD"] {
            assert!(!settings.allows(name), "{name}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_by_default_loopback_is_not() {
        let policy = UpstreamPolicy::default();
        assert!(policy.refuses("169.254.169.254".parse().unwrap()).is_some());
        assert!(
            policy
                .refuses("::ffff:169.254.169.254".parse().unwrap())
                .is_some()
        );
        assert!(policy.refuses("fd00:ec2::254".parse().unwrap()).is_some());
        assert!(policy.refuses("127.0.0.1".parse().unwrap()).is_none());
        assert!(policy.refuses("::1".parse().unwrap()).is_none());
        let only_lan = UpstreamPolicy::parse(Some("10.0.0.0/8"), Some("")).unwrap();
        assert!(only_lan.refuses("10.1.2.3".parse().unwrap()).is_none());
        assert!(only_lan.refuses("192.0.2.1".parse().unwrap()).is_some());
        assert!(UpstreamPolicy::parse(None, Some("nope")).is_err());
    }

    #[test]
    fn origins_pass_when_absent_own_or_listed() {
        let policy = OriginPolicy::parse("https://app.example.com/").unwrap();
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, "gw.example.com:4444".parse().unwrap());
            if let Some(o) = origin {
                h.insert(http::header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        assert!(policy.check(&headers(None)).is_ok());
        assert!(
            policy
                .check(&headers(Some("https://APP.example.com")))
                .is_ok()
        );
        assert!(
            policy
                .check(&headers(Some("http://gw.example.com:4444")))
                .is_ok()
        );
        assert_eq!(
            policy.check(&headers(Some("https://evil.example"))),
            Err("https://evil.example".to_owned())
        );
        assert!(policy.check(&headers(Some("null"))).is_err());
        assert!(OriginPolicy::parse("app.example.com").is_err());
    }
}
