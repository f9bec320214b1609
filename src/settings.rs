//! Configuration from the environment and a TOML file (DESIGN §6).
//!
//! Precedence, lowest first: built-in defaults (the seed setup guide's), the file, the
//! environment. Per-server `[servers.pool]` tables of the file override the resulting
//! defaults for their server, `enabled` included, whatever `SESSION_POOL_ENABLED` or
//! `SESSION_POOLING_SERVERS` say. Anything invalid fails the whole load with a message that
//! names the variable or field, the value and what is allowed; nothing is applied partially.

use std::{collections::BTreeSet, fmt, path::Path, str::FromStr, time::Duration};

use mcp_pool_backends::BackendConfig;
use mcp_pool_traits::{ConfigError, Endpoint, PoolConfig, ServerId, StrategyKind, check_range};
use serde::Deserialize;

use crate::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_MAX_KEYS, DEFAULT_MAX_SESSIONS, DEFAULT_USER_LIMIT,
    PoolBuilder, ServerConfig,
};

/// Every environment variable read, with the spellings the seeds use (DESIGN §6).
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
    /// The file could not be read or parsed (the message names the field).
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
    /// `base` with every field this override sets replaced. When `size` is raised above
    /// `base.max_size` and `max_size` is not set, `max_size` follows it (so that
    /// `SESSION_POOL_SIZE=20` alone is a valid setting).
    pub fn apply(&self, base: &PoolConfig) -> PoolConfig {
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
            if self.max_size.is_none() && v > c.max_size {
                c.max_size = v;
            }
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
            env.pool.strategy = Some(v.parse().map_err(|_| SettingsError::Env {
                variable: "SESSION_POOL_STRATEGY",
                value: v.clone(),
                allowed: "one of round_robin, least_connections, sticky, weighted, none".into(),
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

impl Settings {
    /// Settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the variable, its value and what is allowed.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::load(None::<&Path>, |name| std::env::var(name).ok())
    }

    /// Settings from the TOML file at `path` (if any), then the environment read through
    /// `lookup` (`std::env::var` in production; a map in tests).
    ///
    /// # Errors
    /// [`SettingsError`] naming the variable or the field, the value and what is allowed.
    pub fn load(
        path: Option<impl AsRef<Path>>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let file = match &path {
            Some(path) => {
                let shown = path.as_ref().display().to_string();
                let text =
                    std::fs::read_to_string(path.as_ref()).map_err(|e| file_error(&shown, e))?;
                Some((shown, text))
            }
            None => None,
        };
        Self::from_parts(
            file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            &lookup,
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
        Self::from_parts(Some((origin, toml)), &lookup)
    }

    fn from_parts(
        file: Option<(&str, &str)>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let (origin, file) = match file {
            Some((origin, text)) => {
                let parsed: File =
                    toml::from_str(text).map_err(|e| file_error(origin, e.message()))?;
                (origin, parsed)
            }
            None => ("environment", File::default()),
        };
        let env = EnvSettings::read(lookup)?;
        let s = &file.settings;
        let mut settings = Settings::default();

        // Defaults, then the file's [pool], then the environment.
        let mut defaults = file.pool.apply(&settings.defaults);
        if env.stateful_sessions == Some(true)
            && env.pool.strategy.is_none()
            && file.pool.strategy.is_none()
        {
            // USE_STATEFUL_SESSIONS: conversations keep their own upstream session.
            defaults.strategy = StrategyKind::Sticky;
        }
        defaults = env.pool.apply(&defaults);
        defaults
            .validate()
            .map_err(|source| SettingsError::Config {
                context: "pool defaults".into(),
                source,
            })?;
        settings.defaults = defaults;

        for (field, value) in [
            (
                "cleanup_interval",
                env.cleanup_interval.or(s.cleanup_interval),
            ),
            ("user_limit", env.user_limit.or(s.user_limit).map(u64::from)),
            (
                "max_sessions",
                env.max_sessions.or(s.max_sessions).map(u64::from),
            ),
            ("max_keys", env.max_keys.or(s.max_keys).map(u64::from)),
        ] {
            if let Some(value) = value {
                check_range(field, value)
                    .map_err(|e| file_error(origin, format!("[settings] {e}")))?;
            }
        }
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

        // The backend: the environment's variables, else the file's.
        let backend_lookup = |name: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| match name {
                    "CACHE_TYPE" => s.cache_type.clone(),
                    "REDIS_URL" => s.redis_url.clone(),
                    "DATABASE_URL" => s.database_url.clone(),
                    _ => None,
                })
        };
        settings.backend = BackendConfig::from_lookup(backend_lookup)?;

        let mut seen = BTreeSet::new();
        for server in file.servers {
            if !seen.insert(server.id.clone()) {
                return Err(file_error(
                    origin,
                    format!("server {} is defined twice", server.id),
                ));
            }
            let mut base = settings.defaults.clone();
            base.enabled = settings.pooling_by_default(&server.id);
            let config = ServerConfig {
                id: server.id.clone(),
                endpoints: server.endpoints,
                pool: server.pool.apply(&base),
                strategy: None,
            };
            config.validate().map_err(|e| SettingsError::Server {
                server: server.id.to_string(),
                message: e.to_string(),
            })?;
            settings.servers.push(config);
        }
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
