//! Configuration from the environment and a TOML file.
//!
//! Precedence, lowest first: built-in defaults (listed in `docs/configuration.md`), the
//! file, the
//! environment. Per-server `[servers.pool]` tables of the file override the resulting
//! defaults for their server, `enabled` included, whatever `SESSION_POOL_ENABLED` or
//! `SESSION_POOLING_SERVERS` say. Anything invalid fails the whole load with a message that
//! names the variable or field, the value and what is allowed; nothing is applied partially.
//!
//! Sizes: the sizes a user sets are kept, the others follow them
//! ([`PoolConfig::follow_sizes`]): `SESSION_POOL_MAX_SIZE=4` alone gives `size` 4,
//! `SESSION_POOL_MIN_SIZE=12` alone gives `size` and `max_size` 12. Sizes set that contradict
//! each other fail naming both, as the variables or file fields they came from. For the
//! defaults, the file's `[pool]` and the environment together are what the user set; for a
//! server, its own `pool` table is, and the defaults it inherits follow it.
//!
//! File errors name the file, the line and column, and the field's path in the file
//! (`pool.toml:12:30: servers[1].pool.max_size = 2000 is out of range: must be 1 to 1000`;
//! array indices count from 0), type errors included.
//!
//! Warnings ([`Settings::warnings`], also logged with `tracing::warn!`): `SESSION_POOL*`
//! variables that are not read (typos), and a `REDIS_URL` / `DATABASE_URL` that the selected
//! `CACHE_TYPE` does not use.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    ops::Range,
    path::Path,
    str::FromStr,
    time::Duration,
};

use mcp_pool_backends::{BackendConfig, SelectError};
use mcp_pool_traits::{
    ChosenSizes, ConfigError, Endpoint, InvalidEndpoint, PoolConfig, ServerId, StrategyKind,
    TransportKind, check_range, rmcp::model::ClientCapabilities,
};
use serde::Deserialize;

use crate::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_MAX_KEYS, DEFAULT_MAX_SESSIONS, DEFAULT_USER_LIMIT,
    PoolBuilder, ServerConfig,
};

/// Every environment variable read.
pub const ENV_VARIABLES: [&str; 25] = [
    "SESSION_POOL_ENABLED",
    "SESSION_POOLING_ENABLED",
    "SESSION_POOLING_SERVERS",
    "SESSION_POOL_STRATEGY",
    "SESSION_POOL_SIZE",
    "SESSION_POOL_MIN_SIZE",
    "SESSION_POOL_MAX_SIZE",
    "SESSION_POOL_TIMEOUT",
    "SESSION_POOL_TTL",
    "SESSION_POOL_MAX_IDLE_TIME",
    "SESSION_POOL_MAX_IDLE",
    "SESSION_POOL_SESSION_CONCURRENCY",
    "SESSION_POOL_AUTO_SCALE",
    "SESSION_POOL_CLEANUP_INTERVAL",
    "SESSION_POOL_USER_LIMIT",
    "SESSION_POOL_MAX_SESSIONS",
    "SESSION_POOL_MAX_KEYS",
    "SESSION_POOL_METRICS_ENABLED",
    "SESSION_POOL_HEALTH_CHECK_INTERVAL",
    "SESSION_POOL_HEALTH_CHECK_THRESHOLD",
    "SESSION_POOL_REBALANCE_INTERVAL",
    "USE_STATEFUL_SESSIONS",
    "CACHE_TYPE",
    "REDIS_URL",
    "DATABASE_URL",
];

/// Why settings could not be loaded. Nothing was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// An environment variable has a value outside what is allowed.
    #[error("{variable}={value:?} is invalid: must be {allowed}")]
    Env {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// Two spellings of one setting disagree.
    #[error("{first}={first_value:?} and {second}={second_value:?} disagree: set one of them")]
    Conflict {
        /// One spelling.
        first: &'static str,
        /// Its value.
        first_value: String,
        /// The other spelling.
        second: &'static str,
        /// Its value.
        second_value: String,
    },
    /// The file could not be read. Mistakes in its content are [`SettingsError::FileField`].
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What was wrong, with the field.
        message: String,
    },
    /// A resulting configuration is invalid.
    #[error("{context}: {source}")]
    Config {
        /// Where: `defaults` or `server <id>`.
        context: String,
        /// The field, value and range.
        #[source]
        source: ConfigError,
    },
    /// A field of the configuration file is invalid: TOML syntax, a type, a value out of
    /// range, an endpoint, a server defined twice. Shown as `path:line:column: message`.
    #[error("{path}:{line}:{column}: {message}")]
    FileField {
        /// The file (the `origin` given to [`Settings::from_toml`]).
        path: String,
        /// Line of the field's value (of the mistake, for a syntax error), from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
        /// The field's path in the file, e.g. `servers[1].pool.max_size` (array indices from
        /// 0); empty for a syntax error.
        field: String,
        /// What was wrong, starting with the field's path when there is one.
        message: String,
    },
    /// Sizes the user set contradict each other (`min_size <= size <= max_size`). Sizes not
    /// set follow the ones set, so both named here were set: as environment variables
    /// (`SESSION_POOL_MAX_SIZE=4`) or file fields (`pool.max_size = 4 (pool.toml:7:12)`).
    #[error(
        "{lower} is above {upper}: {why} (min_size <= size <= max_size); change one of them \
         (sizes you do not set follow the ones you set)"
    )]
    Sizes {
        /// The setting that is too high, with its value.
        lower: String,
        /// The setting it must not exceed, with its value.
        upper: String,
        /// The rule in words.
        why: &'static str,
    },
    /// The backend selection (`CACHE_TYPE`, `REDIS_URL`, `DATABASE_URL`) is invalid.
    #[error(transparent)]
    Backend(#[from] mcp_pool_backends::SelectError),
    /// A server definition is invalid.
    #[error("server {server}: {message}")]
    Server {
        /// The server.
        server: String,
        /// What was wrong.
        message: String,
    },
}

/// Pool-wide settings and the servers of the configuration file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The pool configuration servers get unless their own `[servers.pool]` says otherwise.
    pub defaults: PoolConfig,
    /// `SESSION_POOLING_SERVERS`: when set, pooling is on by default only for these servers.
    pub pooled_servers: Option<BTreeSet<ServerId>>,
    /// Period of the maintenance task (`SESSION_POOL_CLEANUP_INTERVAL`).
    pub cleanup_interval: Duration,
    /// Sessions per user across servers (`SESSION_POOL_USER_LIMIT`).
    pub user_limit: u32,
    /// Sessions in the whole pool (`SESSION_POOL_MAX_SESSIONS`).
    pub max_sessions: u32,
    /// Keys in the whole pool (`SESSION_POOL_MAX_KEYS`).
    pub max_keys: u32,
    /// Whether metrics are recorded (`SESSION_POOL_METRICS_ENABLED`).
    pub metrics_enabled: bool,
    /// The state backend (`CACHE_TYPE` with `REDIS_URL` / `DATABASE_URL`).
    pub backend: BackendConfig,
    /// The servers of the file, their pool configuration fully resolved.
    pub servers: Vec<ServerConfig>,
    warnings: Vec<SettingsWarning>,
}

/// Something in the configuration that is ignored, probably by mistake. Logged with
/// `tracing::warn!` when the settings are loaded, and kept in [`Settings::warnings`]. Never
/// shows a value (a URL may hold a password), only names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsWarning {
    /// A `SESSION_POOL*` environment variable that mcp-pool does not read (see
    /// [`ENV_VARIABLES`]).
    UnknownVariable {
        /// The variable.
        variable: String,
        /// The known variable closest to it, when one is close.
        suggestion: Option<&'static str>,
    },
    /// A backend URL is set but `CACHE_TYPE` selects another backend, so it is not used.
    UnusedBackendUrl {
        /// `REDIS_URL` or `DATABASE_URL`, or the file field (`settings.redis_url in pool.toml`).
        setting: String,
        /// The backend in use: `memory`, `redis` or `database`.
        backend: &'static str,
        /// What selected it: `CACHE_TYPE is unset`, `CACHE_TYPE=database`, or the file field.
        selected_by: String,
        /// The `CACHE_TYPE` that would use the URL.
        wanted: &'static str,
    },
}

impl fmt::Display for SettingsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownVariable {
                variable,
                suggestion,
            } => {
                write!(
                    f,
                    "{variable} is not a variable mcp-pool reads: it is ignored"
                )?;
                if let Some(known) = suggestion {
                    write!(f, " (did you mean {known}?)")?;
                }
                Ok(())
            }
            Self::UnusedBackendUrl {
                setting,
                backend,
                selected_by,
                wanted,
            } => write!(
                f,
                "{setting} is set but the state backend is {backend} ({selected_by}), so it is \
                 ignored: set CACHE_TYPE={wanted} to use it"
            ),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            defaults: PoolConfig::default(),
            pooled_servers: None,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            user_limit: DEFAULT_USER_LIMIT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_keys: DEFAULT_MAX_KEYS,
            metrics_enabled: true,
            backend: BackendConfig::Memory,
            servers: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Per-field overrides of a [`PoolConfig`]: the `[pool]` and `[servers.pool]` tables of the
/// file. Durations are whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfigOverride {
    /// See [`PoolConfig::enabled`].
    pub enabled: Option<bool>,
    /// See [`PoolConfig::strategy`].
    pub strategy: Option<StrategyKind>,
    /// See [`PoolConfig::size`].
    pub size: Option<u32>,
    /// See [`PoolConfig::min_size`].
    pub min_size: Option<u32>,
    /// See [`PoolConfig::max_size`].
    pub max_size: Option<u32>,
    /// See [`PoolConfig::timeout`] (seconds).
    pub timeout: Option<u64>,
    /// See [`PoolConfig::max_idle_time`] (seconds).
    pub max_idle_time: Option<u64>,
    /// See [`PoolConfig::max_lifetime`] (seconds).
    pub max_lifetime: Option<u64>,
    /// See [`PoolConfig::session_concurrency`].
    pub session_concurrency: Option<u32>,
    /// See [`PoolConfig::auto_scale`].
    pub auto_scale: Option<bool>,
    /// See [`PoolConfig::health_check_interval`] (seconds).
    pub health_check_interval: Option<u64>,
    /// See [`PoolConfig::health_check_threshold`] (percent).
    pub health_check_threshold: Option<u8>,
    /// See [`PoolConfig::rebalance_interval`] (seconds).
    pub rebalance_interval: Option<u64>,
}

impl PoolConfigOverride {
    /// `base` with every field this override sets replaced, and the sizes it does not set
    /// following the ones it sets ([`PoolConfig::follow_sizes`]): `max_size = 4` alone lowers
    /// `size` to 4, `size = 20` alone raises `max_size` to 20. Sizes it sets are kept as they
    /// are, even when they contradict each other; [`PoolConfig::validate`] rejects those.
    pub fn apply(&self, base: &PoolConfig) -> PoolConfig {
        self.set_fields(base).follow_sizes(self.chosen_sizes())
    }

    /// The sizes this override sets.
    pub fn chosen_sizes(&self) -> ChosenSizes {
        ChosenSizes {
            min_size: self.min_size.is_some(),
            size: self.size.is_some(),
            max_size: self.max_size.is_some(),
        }
    }

    /// Every field set here, else in `lower`.
    fn or(&self, lower: &Self) -> Self {
        Self {
            enabled: self.enabled.or(lower.enabled),
            strategy: self.strategy.or(lower.strategy),
            size: self.size.or(lower.size),
            min_size: self.min_size.or(lower.min_size),
            max_size: self.max_size.or(lower.max_size),
            timeout: self.timeout.or(lower.timeout),
            max_idle_time: self.max_idle_time.or(lower.max_idle_time),
            max_lifetime: self.max_lifetime.or(lower.max_lifetime),
            session_concurrency: self.session_concurrency.or(lower.session_concurrency),
            auto_scale: self.auto_scale.or(lower.auto_scale),
            health_check_interval: self.health_check_interval.or(lower.health_check_interval),
            health_check_threshold: self.health_check_threshold.or(lower.health_check_threshold),
            rebalance_interval: self.rebalance_interval.or(lower.rebalance_interval),
        }
    }

    /// The numeric fields set, by name, for range checks.
    fn numbers(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("size", self.size.map(u64::from)),
            ("min_size", self.min_size.map(u64::from)),
            ("max_size", self.max_size.map(u64::from)),
            ("timeout", self.timeout),
            ("max_idle_time", self.max_idle_time),
            ("max_lifetime", self.max_lifetime),
            (
                "session_concurrency",
                self.session_concurrency.map(u64::from),
            ),
            ("health_check_interval", self.health_check_interval),
            (
                "health_check_threshold",
                self.health_check_threshold.map(u64::from),
            ),
            ("rebalance_interval", self.rebalance_interval),
        ]
        .into_iter()
        .filter_map(|(field, value)| Some((field, value?)))
    }

    /// `base` with every field set here replaced, sizes as they are.
    fn set_fields(&self, base: &PoolConfig) -> PoolConfig {
        let secs = Duration::from_secs;
        let mut c = base.clone();
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
        if let Some(v) = self.strategy {
            c.strategy = v;
        }
        if let Some(v) = self.size {
            c.size = v;
        }
        if let Some(v) = self.min_size {
            c.min_size = v;
        }
        if let Some(v) = self.max_size {
            c.max_size = v;
        }
        if let Some(v) = self.timeout {
            c.timeout = secs(v);
        }
        if let Some(v) = self.max_idle_time {
            c.max_idle_time = secs(v);
        }
        if let Some(v) = self.max_lifetime {
            c.max_lifetime = secs(v);
        }
        if let Some(v) = self.session_concurrency {
            c.session_concurrency = v;
        }
        if let Some(v) = self.auto_scale {
            c.auto_scale = v;
        }
        if let Some(v) = self.health_check_interval {
            c.health_check_interval = secs(v);
        }
        if let Some(v) = self.health_check_threshold {
            c.health_check_threshold = v;
        }
        if let Some(v) = self.rebalance_interval {
            c.rebalance_interval = secs(v);
        }
        c
    }
}

/// The `[settings]` table of the file: pool-wide settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    pooled_servers: Option<Vec<ServerId>>,
    cleanup_interval: Option<u64>,
    user_limit: Option<u32>,
    max_sessions: Option<u32>,
    max_keys: Option<u32>,
    metrics_enabled: Option<bool>,
    cache_type: Option<String>,
    redis_url: Option<String>,
    database_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    id: ServerId,
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    pool: PoolConfigOverride,
    /// Seconds, 1-3600 ([`ServerConfig::call_timeout`]).
    call_timeout: Option<u64>,
    /// What the pool advertises in `initialize` ([`ServerConfig::client_capabilities`]).
    client_capabilities: Option<Vec<ClientCapability>>,
}

/// A client capability a server's sessions may advertise (`client_capabilities = ["sampling",
/// "elicitation", "roots"]` in a `[[servers]]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClientCapability {
    Sampling,
    Elicitation,
    Roots,
}

/// The MCP client capabilities named in a file.
fn client_capabilities(names: &[ClientCapability]) -> ClientCapabilities {
    let mut capabilities = ClientCapabilities::default();
    for name in names {
        match name {
            ClientCapability::Sampling => capabilities.sampling = Some(Default::default()),
            ClientCapability::Elicitation => capabilities.elicitation = Some(Default::default()),
            ClientCapability::Roots => capabilities.roots = Some(Default::default()),
        }
    }
    capabilities
}

/// The configuration file, as operators keep it in version control.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    settings: FileSettings,
    #[serde(default)]
    pool: PoolConfigOverride,
    #[serde(default)]
    servers: Vec<FileServer>,
    /// `[gateway]`: the gateway binary's own table (host, port, auth, body limit); it reads
    /// and checks it, the library ignores it.
    #[serde(default, rename = "gateway")]
    _gateway: Option<serde::de::IgnoredAny>,
}

/// What the environment says, parsed.
#[derive(Debug, Default)]
struct EnvSettings {
    pool: PoolConfigOverride,
    pooled_servers: Option<Vec<ServerId>>,
    cleanup_interval: Option<u64>,
    user_limit: Option<u32>,
    max_sessions: Option<u32>,
    max_keys: Option<u32>,
    metrics_enabled: Option<bool>,
    stateful_sessions: Option<bool>,
}

const BOOLEANS: &str = "true or false (also 1/0, yes/no, on/off)";

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(SettingsError::Env {
            variable,
            value: value.to_owned(),
            allowed: BOOLEANS.to_owned(),
        }),
    }
}

/// Parses a whole number in the range [`check_range`] gives `field`.
fn parse_number<T: FromStr + Into<u64> + Copy>(
    variable: &'static str,
    field: &'static str,
    value: &str,
) -> Result<T, SettingsError> {
    let range = mcp_pool_traits::RANGES
        .iter()
        .find(|(name, _, _)| *name == field)
        .map(|(_, r, unit)| format!("a whole number from {} to {}{unit}", r.start(), r.end()))
        .unwrap_or_else(|| "a whole number".to_owned());
    let invalid = || SettingsError::Env {
        variable,
        value: value.to_owned(),
        allowed: range.clone(),
    };
    let n: T = value.trim().parse().map_err(|_| invalid())?;
    check_range(field, n.into()).map_err(|_| invalid())?;
    Ok(n)
}

impl EnvSettings {
    fn read(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        // A setting with two spellings: both set must agree.
        let either = |a: &'static str,
                      b: &'static str|
         -> Result<Option<(&'static str, String)>, SettingsError> {
            match (get(a), get(b)) {
                (Some(x), Some(y)) if x.trim() != y.trim() => Err(SettingsError::Conflict {
                    first: a,
                    first_value: x,
                    second: b,
                    second_value: y,
                }),
                (Some(x), _) => Ok(Some((a, x))),
                (None, Some(y)) => Ok(Some((b, y))),
                (None, None) => Ok(None),
            }
        };
        let mut env = EnvSettings::default();
        if let Some((var, v)) = either("SESSION_POOL_ENABLED", "SESSION_POOLING_ENABLED")? {
            env.pool.enabled = Some(parse_bool(var, &v)?);
        }
        if let Some(v) = get("SESSION_POOLING_SERVERS") {
            let ids = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    ServerId::new(s).map_err(|e| SettingsError::Env {
                        variable: "SESSION_POOLING_SERVERS",
                        value: v.clone(),
                        allowed: format!("a comma list of server ids ({e})"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            env.pooled_servers = Some(ids);
        }
        if let Some(v) = get("SESSION_POOL_STRATEGY") {
            env.pool.strategy = Some(StrategyKind::named(&v).map_err(|_| SettingsError::Env {
                variable: "SESSION_POOL_STRATEGY",
                value: v.clone(),
                allowed: StrategyKind::ALLOWED.into(),
            })?);
        }
        type Setter = fn(&mut EnvSettings, u64);
        let numbers: [(&'static str, &'static str, Setter); 13] = [
            ("SESSION_POOL_SIZE", "size", |e, n| {
                e.pool.size = Some(n as u32)
            }),
            ("SESSION_POOL_MIN_SIZE", "min_size", |e, n| {
                e.pool.min_size = Some(n as u32)
            }),
            ("SESSION_POOL_MAX_SIZE", "max_size", |e, n| {
                e.pool.max_size = Some(n as u32)
            }),
            ("SESSION_POOL_TIMEOUT", "timeout", |e, n| {
                e.pool.timeout = Some(n)
            }),
            ("SESSION_POOL_TTL", "max_lifetime", |e, n| {
                e.pool.max_lifetime = Some(n)
            }),
            (
                "SESSION_POOL_SESSION_CONCURRENCY",
                "session_concurrency",
                |e, n| e.pool.session_concurrency = Some(n as u32),
            ),
            (
                "SESSION_POOL_HEALTH_CHECK_INTERVAL",
                "health_check_interval",
                |e, n| e.pool.health_check_interval = Some(n),
            ),
            (
                "SESSION_POOL_HEALTH_CHECK_THRESHOLD",
                "health_check_threshold",
                |e, n| e.pool.health_check_threshold = Some(n as u8),
            ),
            (
                "SESSION_POOL_REBALANCE_INTERVAL",
                "rebalance_interval",
                |e, n| e.pool.rebalance_interval = Some(n),
            ),
            (
                "SESSION_POOL_CLEANUP_INTERVAL",
                "cleanup_interval",
                |e, n| e.cleanup_interval = Some(n),
            ),
            // The ranges parse_number checks keep these within u32.
            ("SESSION_POOL_USER_LIMIT", "user_limit", |e, n| {
                e.user_limit = Some(n as u32)
            }),
            ("SESSION_POOL_MAX_SESSIONS", "max_sessions", |e, n| {
                e.max_sessions = Some(n as u32)
            }),
            ("SESSION_POOL_MAX_KEYS", "max_keys", |e, n| {
                e.max_keys = Some(n as u32)
            }),
        ];
        for (variable, field, set) in numbers {
            if let Some(v) = get(variable) {
                set(&mut env, parse_number::<u64>(variable, field, &v)?);
            }
        }
        if let Some((var, v)) = either("SESSION_POOL_MAX_IDLE_TIME", "SESSION_POOL_MAX_IDLE")? {
            env.pool.max_idle_time = Some(parse_number::<u64>(var, "max_idle_time", &v)?);
        }
        if let Some(v) = get("SESSION_POOL_AUTO_SCALE") {
            env.pool.auto_scale = Some(parse_bool("SESSION_POOL_AUTO_SCALE", &v)?);
        }
        if let Some(v) = get("SESSION_POOL_METRICS_ENABLED") {
            env.metrics_enabled = Some(parse_bool("SESSION_POOL_METRICS_ENABLED", &v)?);
        }
        if let Some(v) = get("USE_STATEFUL_SESSIONS") {
            env.stateful_sessions = Some(parse_bool("USE_STATEFUL_SESSIONS", &v)?);
        }
        Ok(env)
    }
}

fn file_error(path: &str, message: impl fmt::Display) -> SettingsError {
    SettingsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The configuration file's text, for locating fields in errors.
struct FileText<'a> {
    path: &'a str,
    text: &'a str,
}

/// One step of a field path: a table key or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The steps of `servers[1].pool.max_size`. Keys of this file never hold `.` or `[`.
fn steps(field: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(rest) = indices.strip_prefix('[') {
            let end = rest.find(']').unwrap_or(rest.len());
            if let Ok(i) = rest[..end].parse() {
                out.push(Step::Index(i));
            }
            indices = rest.get(end + 1..).unwrap_or("");
        }
    }
    out
}

impl FileText<'_> {
    /// Line and column (from 1, the column in characters) of byte `offset`.
    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        (line, before[line_start..].chars().count() + 1)
    }

    /// Where the value of `field` is written, when it is.
    fn span_of(&self, field: &str) -> Option<Range<usize>> {
        let root = toml::de::DeTable::parse(self.text).ok()?;
        let mut current: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
        for step in steps(field) {
            current = Some(match (current, step) {
                (None, Step::Key(key)) => root.get_ref().get(key)?,
                (Some(value), Step::Key(key)) => value.get_ref().get(key)?,
                (Some(value), Step::Index(i)) => value.get_ref().get(i)?,
                (None, Step::Index(_)) => return None,
            });
        }
        current.map(|value| value.span())
    }

    /// `field: message`'s error at `span` or where `field` is written, whichever is
    /// narrower (a parser's span may cover a whole array, or point at a key), else the start.
    fn error(&self, field: &str, span: Option<Range<usize>>, message: String) -> SettingsError {
        let written = self.span_of(field);
        let span = match (span, written) {
            (Some(given), Some(written))
                if given.start <= written.start
                    && written.end <= given.end
                    && written.len() < given.len() =>
            {
                Some(written)
            }
            (given, written) => given.or(written),
        };
        let (line, column) = self.line_column(span.map_or(0, |s| s.start));
        SettingsError::FileField {
            path: self.path.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        }
    }

    /// The file's value of `field` (a size), rendered for [`SettingsError::Sizes`].
    fn render(&self, field: &str, value: u32) -> String {
        let (line, column) = self.line_column(self.span_of(field).map_or(0, |s| s.start));
        format!("{field} = {value} ({}:{line}:{column})", self.path)
    }

    /// Parses the file, naming the field of a type error by its path.
    fn parse(&self) -> Result<File, SettingsError> {
        let syntax = |e: toml::de::Error| self.error("", e.span(), e.message().to_owned());
        let deserializer = toml::de::Deserializer::parse(self.text).map_err(syntax)?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let field = if field == "." { String::new() } else { field };
            let mut message = if field.is_empty() {
                inner.message().to_owned()
            } else {
                format!("{field}: {}", inner.message())
            };
            // A number of the wrong type or size: say what is allowed.
            let name = field.rsplit('.').next().unwrap_or_default();
            if let Some((_, range, unit)) = mcp_pool_traits::RANGES
                .iter()
                .find(|(known, _, _)| *known == name)
            {
                message.push_str(&format!(
                    " (must be a whole number from {} to {}{unit})",
                    range.start(),
                    range.end()
                ));
            }
            self.error(&field, inner.span(), message)
        })
    }

    /// Range checks of the fields `pool` sets, `prefix` being its path (`pool.`,
    /// `servers[1].pool.`).
    fn check_override(&self, prefix: &str, pool: &PoolConfigOverride) -> Result<(), SettingsError> {
        for (field, value) in pool.numbers() {
            // ConfigError's message starts with the field's name: prefixed, it is the path.
            check_range(field, value).map_err(|e| {
                self.error(&format!("{prefix}{field}"), None, format!("{prefix}{e}"))
            })?;
        }
        Ok(())
    }

    /// Every value of the file on its own: ranges, endpoints, server ids defined once.
    fn check(&self, file: &File) -> Result<(), SettingsError> {
        let s = &file.settings;
        for (field, value) in [
            ("cleanup_interval", s.cleanup_interval),
            ("user_limit", s.user_limit.map(u64::from)),
            ("max_sessions", s.max_sessions.map(u64::from)),
            ("max_keys", s.max_keys.map(u64::from)),
        ] {
            if let Some(value) = value {
                check_range(field, value).map_err(|e| {
                    self.error(&format!("settings.{field}"), None, format!("settings.{e}"))
                })?;
            }
        }
        self.check_override("pool.", &file.pool)?;
        let mut first_seen: HashMap<&ServerId, usize> = HashMap::new();
        for (i, server) in file.servers.iter().enumerate() {
            if let Some(first) = first_seen.insert(&server.id, i) {
                let field = format!("servers[{i}].id");
                let message = format!(
                    "{field}: server {} is defined twice (also servers[{first}].id)",
                    server.id
                );
                return Err(self.error(&field, None, message));
            }
            if server.endpoints.is_empty() {
                let field = format!("servers[{i}].endpoints");
                let message = format!("{field}: a server needs at least one endpoint");
                return Err(self.error(&field, None, message));
            }
            for (j, endpoint) in server.endpoints.iter().enumerate() {
                endpoint.validate().map_err(|e| {
                    let part = match (&e, endpoint.transport) {
                        (InvalidEndpoint::Weight(_), _) => "weight",
                        (InvalidEndpoint::Command(_), _) => "command",
                        (InvalidEndpoint::Lifecycle { .. }, _) => "lifecycle",
                        (_, TransportKind::Stdio) => "transport",
                        _ => "url",
                    };
                    let field = format!("servers[{i}].endpoints[{j}].{part}");
                    let message = format!("{field}: {e}");
                    self.error(&field, None, message)
                })?;
            }
            self.check_override(&format!("servers[{i}].pool."), &server.pool)?;
        }
        Ok(())
    }
}

/// Where a size was set, for [`SettingsError::Sizes`].
enum SizeOrigin {
    Env(&'static str),
    File(String),
}

/// Fails when two sizes set by the user (those with an origin) contradict each other. The
/// others followed them ([`PoolConfig::follow_sizes`]), so they are never to blame.
fn check_sizes(
    config: &PoolConfig,
    origins: [Option<SizeOrigin>; 3],
    file: Option<&FileText<'_>>,
) -> Result<(), SettingsError> {
    let [min, size, max] = origins;
    let render = |origin: &SizeOrigin, value: u32| match (origin, file) {
        (SizeOrigin::Env(variable), _) => format!("{variable}={value}"),
        (SizeOrigin::File(field), Some(file)) => file.render(field, value),
        (SizeOrigin::File(field), None) => format!("{field} = {value}"),
    };
    let pairs = [
        (
            &min,
            config.min_size,
            &max,
            config.max_size,
            "the sessions kept warm cannot exceed the hard cap",
        ),
        (
            &size,
            config.size,
            &max,
            config.max_size,
            "the target size cannot exceed the hard cap",
        ),
        (
            &min,
            config.min_size,
            &size,
            config.size,
            "the target size cannot be below the sessions kept warm",
        ),
    ];
    for (lower, low, upper, high, why) in pairs {
        if let (Some(lower), Some(upper)) = (lower, upper)
            && low > high
        {
            return Err(SettingsError::Sizes {
                lower: render(lower, low),
                upper: render(upper, high),
                why,
            });
        }
    }
    Ok(())
}

/// The known variable closest to `variable` (an unknown `SESSION_POOL*` one), if close.
fn closest_variable(variable: &str) -> Option<&'static str> {
    let upper = variable.to_ascii_uppercase();
    ENV_VARIABLES
        .iter()
        .map(|known| (edit_distance(&upper, known), *known))
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance over bytes (variable names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Warnings about `SESSION_POOL*` variables among `names` that are not read.
fn unknown_variables(names: &[String]) -> Vec<SettingsWarning> {
    let mut unknown: Vec<&String> = names
        .iter()
        .filter(|name| name.to_ascii_uppercase().starts_with("SESSION_POOL"))
        .filter(|name| !ENV_VARIABLES.contains(&name.as_str()))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|variable| SettingsWarning::UnknownVariable {
            variable: variable.clone(),
            suggestion: closest_variable(variable),
        })
        .collect()
}

impl Settings {
    /// Settings from the process environment, warning about unknown `SESSION_POOL*`
    /// variables ([`warnings`](Self::warnings)).
    ///
    /// # Errors
    /// [`SettingsError`] naming the variable, its value and what is allowed.
    pub fn from_env() -> Result<Self, SettingsError> {
        let vars = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        Self::from_vars(None::<&Path>, vars)
    }

    /// Settings from the TOML file at `path` (if any), then the variables `vars` (the
    /// environment's, or a list in tests). Unlike [`load`](Self::load), every variable is
    /// known, so unknown `SESSION_POOL*` ones are warned about.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_vars(
        path: Option<impl AsRef<Path>>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let mut names: Vec<String> = vars.keys().cloned().collect();
        names.sort();
        let file = read_file(path)?;
        Self::from_parts(
            file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            &|name| vars.get(name).cloned(),
            Some(&names),
        )
    }

    /// Settings from the TOML file at `path` (if any), then the environment read through
    /// `lookup` (`std::env::var` in production; a map in tests). `lookup` cannot list the
    /// variables, so unknown ones are not warned about: [`from_vars`](Self::from_vars) does.
    ///
    /// # Errors
    /// [`SettingsError`] naming the variable or the file field (with line and column), the
    /// value and what is allowed.
    pub fn load(
        path: Option<impl AsRef<Path>>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let file = read_file(path)?;
        Self::from_parts(
            file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            &lookup,
            None,
        )
    }

    /// Settings from TOML text (`origin` names it in errors) and then `lookup`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_toml(
        origin: &str,
        toml: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        Self::from_parts(Some((origin, toml)), &lookup, None)
    }

    /// What was ignored in the configuration, probably by mistake (also logged at load).
    pub fn warnings(&self) -> &[SettingsWarning] {
        &self.warnings
    }

    fn from_parts(
        file: Option<(&str, &str)>,
        lookup: &dyn Fn(&str) -> Option<String>,
        variables: Option<&[String]>,
    ) -> Result<Self, SettingsError> {
        let text = file.map(|(path, text)| FileText { path, text });
        let file = match &text {
            Some(text) => {
                let file = text.parse()?;
                text.check(&file)?;
                file
            }
            None => File::default(),
        };
        let env = EnvSettings::read(lookup)?;
        let s = &file.settings;
        let mut settings = Settings::default();

        // Defaults: the file's [pool], then the environment; the sizes either sets are the
        // user's, the others follow them.
        let merged = env.pool.or(&file.pool);
        let mut defaults = merged.apply(&settings.defaults);
        if env.stateful_sessions == Some(true) && merged.strategy.is_none() {
            // USE_STATEFUL_SESSIONS: conversations keep their own upstream session.
            defaults.strategy = StrategyKind::Sticky;
        }
        let origin = |env_value: Option<u32>, variable, file_value: Option<u32>, field: &str| match (
            env_value, file_value,
        ) {
            (Some(_), _) => Some(SizeOrigin::Env(variable)),
            (None, Some(_)) => Some(SizeOrigin::File(format!("pool.{field}"))),
            (None, None) => None,
        };
        let origins = [
            origin(
                env.pool.min_size,
                "SESSION_POOL_MIN_SIZE",
                file.pool.min_size,
                "min_size",
            ),
            origin(env.pool.size, "SESSION_POOL_SIZE", file.pool.size, "size"),
            origin(
                env.pool.max_size,
                "SESSION_POOL_MAX_SIZE",
                file.pool.max_size,
                "max_size",
            ),
        ];
        check_sizes(&defaults, origins, text.as_ref())?;
        // Every value was checked where it was read; this only guards the combination.
        defaults
            .validate()
            .map_err(|source| SettingsError::Config {
                context: "pool defaults".into(),
                source,
            })?;
        settings.defaults = defaults;

        if let Some(v) = env.cleanup_interval.or(s.cleanup_interval) {
            settings.cleanup_interval = Duration::from_secs(v);
        }
        settings.user_limit = env
            .user_limit
            .or(s.user_limit)
            .unwrap_or(settings.user_limit);
        settings.max_sessions = env
            .max_sessions
            .or(s.max_sessions)
            .unwrap_or(settings.max_sessions);
        settings.max_keys = env.max_keys.or(s.max_keys).unwrap_or(settings.max_keys);
        settings.metrics_enabled = env.metrics_enabled.or(s.metrics_enabled).unwrap_or(true);
        settings.pooled_servers = env
            .pooled_servers
            .or_else(|| s.pooled_servers.clone())
            .map(|ids| ids.into_iter().collect());

        let mut warnings = variables.map(unknown_variables).unwrap_or_default();
        let (backend, backend_warnings) = select_backend(s, lookup, text.as_ref())?;
        settings.backend = backend;
        warnings.extend(backend_warnings);

        for (i, server) in file.servers.into_iter().enumerate() {
            let mut base = settings.defaults.clone();
            base.enabled = settings.pooling_by_default(&server.id);
            let pool = server.pool.apply(&base);
            let origin = |set: Option<u32>, field: &str| {
                set.map(|_| SizeOrigin::File(format!("servers[{i}].pool.{field}")))
            };
            let origins = [
                origin(server.pool.min_size, "min_size"),
                origin(server.pool.size, "size"),
                origin(server.pool.max_size, "max_size"),
            ];
            check_sizes(&pool, origins, text.as_ref())?;
            let mut config = ServerConfig::from_parts(server.id.clone(), server.endpoints, pool);
            if let Some(secs) = server.call_timeout {
                if !(1..=3600).contains(&secs) {
                    return Err(SettingsError::Server {
                        server: server.id.to_string(),
                        message: format!(
                            "servers[{i}].call_timeout = {secs} is out of range: must be 1 to 3600 seconds"
                        ),
                    });
                }
                config = config.call_timeout(Duration::from_secs(secs));
            }
            if let Some(names) = &server.client_capabilities {
                config = config.client_capabilities(client_capabilities(names));
            }
            config.validate().map_err(|e| SettingsError::Server {
                server: server.id.to_string(),
                message: e.to_string(),
            })?;
            settings.servers.push(config);
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        settings.warnings = warnings;
        Ok(settings)
    }

    /// Whether pooling is on for `server` by default: `SESSION_POOL_ENABLED`, narrowed to
    /// `SESSION_POOLING_SERVERS` when that is set.
    pub fn pooling_by_default(&self, server: &ServerId) -> bool {
        self.defaults.enabled
            && self
                .pooled_servers
                .as_ref()
                .is_none_or(|servers| servers.contains(server))
    }

    /// The pool configuration a server defined in code gets by default.
    pub fn pool_config_for(&self, server: &ServerId) -> PoolConfig {
        PoolConfig {
            enabled: self.pooling_by_default(server),
            ..self.defaults.clone()
        }
    }

    /// A builder with these settings and the file's servers applied. The backend is connected
    /// by the caller (`settings.backend.connect(namespace).await`) and passed to
    /// [`PoolBuilder::backend`].
    pub fn builder(&self) -> PoolBuilder {
        let mut builder = PoolBuilder::default()
            .cleanup_interval(self.cleanup_interval)
            .user_limit(self.user_limit)
            .max_sessions(self.max_sessions)
            .max_keys(self.max_keys)
            .metrics(self.metrics_enabled);
        for server in &self.servers {
            builder = builder.server(server.clone());
        }
        builder
    }
}

/// The file at `path` as (path shown, text).
fn read_file(path: Option<impl AsRef<Path>>) -> Result<Option<(String, String)>, SettingsError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let shown = path.as_ref().display().to_string();
    let text = std::fs::read_to_string(path.as_ref()).map_err(|e| file_error(&shown, e))?;
    Ok(Some((shown, text)))
}

/// The backend from `CACHE_TYPE`, `REDIS_URL` and `DATABASE_URL`, else the file's
/// `settings.cache_type`, `settings.redis_url` and `settings.database_url`; with warnings
/// about a URL the selected backend does not use. A mistake in a value taken from the file
/// is named as the file's field.
fn select_backend(
    s: &FileSettings,
    lookup: &dyn Fn(&str) -> Option<String>,
    file: Option<&FileText<'_>>,
) -> Result<(BackendConfig, Vec<SettingsWarning>), SettingsError> {
    const SETTINGS: [(&str, &str); 3] = [
        ("CACHE_TYPE", "cache_type"),
        ("REDIS_URL", "redis_url"),
        ("DATABASE_URL", "database_url"),
    ];
    let env = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let from_file = |name: &str| {
        match name {
            "CACHE_TYPE" => s.cache_type.clone(),
            "REDIS_URL" => s.redis_url.clone(),
            "DATABASE_URL" => s.database_url.clone(),
            _ => None,
        }
        .filter(|v| !v.trim().is_empty())
    };
    // Which of the three came from the file (the environment wins).
    let file_field = |name: &str| {
        (env(name).is_none() && from_file(name).is_some())
            .then(|| SETTINGS.iter().find(|(v, _)| *v == name).map(|(_, f)| *f))
            .flatten()
    };
    let backend = BackendConfig::from_lookup(|name| env(name).or_else(|| from_file(name)));
    let backend = match (backend, file) {
        (Ok(backend), _) => backend,
        (
            Err(SelectError::Invalid {
                variable,
                value,
                allowed,
            }),
            Some(file),
        ) if file_field(variable).is_some() => {
            let field = format!("settings.{}", file_field(variable).unwrap_or_default());
            let message = format!("{field} = {value:?} is invalid: must be {allowed}");
            return Err(file.error(&field, None, message));
        }
        (
            Err(SelectError::Missing {
                variable,
                cache_type,
                example,
            }),
            Some(file),
        ) if file_field("CACHE_TYPE").is_some() => {
            let url_field = SETTINGS
                .iter()
                .find(|(v, _)| *v == variable)
                .map_or("", |(_, f)| *f);
            let message = format!(
                "settings.cache_type = {cache_type:?} needs settings.{url_field} (or \
                 {variable}), e.g. {example}"
            );
            return Err(file.error("settings.cache_type", None, message));
        }
        (Err(e), _) => return Err(e.into()),
    };
    let in_use = backend.cache_type();
    let selected_by = match (env("CACHE_TYPE"), file_field("CACHE_TYPE"), file) {
        (Some(v), _, _) => format!("CACHE_TYPE={}", v.trim()),
        (None, Some(_), Some(file)) => format!("settings.cache_type in {}", file.path),
        _ => "CACHE_TYPE is unset".to_owned(),
    };
    let mut warnings = Vec::new();
    for (variable, wanted) in [("REDIS_URL", "redis"), ("DATABASE_URL", "database")] {
        if in_use == wanted {
            continue;
        }
        let setting = match (env(variable), file_field(variable), file) {
            (Some(_), _, _) => variable.to_owned(),
            (None, Some(field), Some(file)) => format!("settings.{field} in {}", file.path),
            _ => continue,
        };
        warnings.push(SettingsWarning::UnusedBackendUrl {
            setting,
            backend: in_use,
            selected_by: selected_by.clone(),
            wanted,
        });
    }
    Ok((backend, warnings))
}
