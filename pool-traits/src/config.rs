//! Per-server pool configuration.

use std::{fmt, ops::RangeInclusive, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::names::Names;

/// A strategy as configuration names it: a built-in one, or a custom strategy a
/// pool registered (`PoolBuilder::strategy`) under its [`name`](crate::Strategy::name).
/// Serialized as its name ([`as_str`](Self::as_str)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StrategyKind {
    /// Rotate over sessions with free capacity.
    #[default]
    RoundRobin,
    /// The session with the fewest leases in flight.
    LeastConnections,
    /// One downstream session ↔ one upstream session, exclusively. For stateful servers.
    Sticky,
    /// Endpoint weights decide, smoothly.
    Weighted,
    /// No pooling: a fresh session per acquire, closed on release.
    None,
    /// Latency-aware: the session whose endpoint answered fastest lately, weighted by its
    /// load (peak EWMA).
    PeakEwma,
    /// A custom strategy, by its name.
    Custom(CustomStrategy),
}

/// The name of a custom strategy: 1 to 64 characters of `[a-z0-9_]` starting with a letter,
/// not a built-in name; interned like [`CustomTransport`](crate::CustomTransport)'s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomStrategy(&'static str);

impl fmt::Debug for CustomStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Custom strategy names created so far.
static CUSTOM_STRATEGIES: Names = Names::new();

impl StrategyKind {
    /// Every built-in kind.
    pub const ALL: [StrategyKind; 6] = [
        Self::RoundRobin,
        Self::LeastConnections,
        Self::Sticky,
        Self::Weighted,
        Self::None,
        Self::PeakEwma,
    ];

    /// What a strategy name may be, as configuration errors say it.
    pub const ALLOWED: &'static str = "one of round_robin, least_connections, sticky, weighted, \
         none, peak_ewma, or the name of a strategy registered with PoolBuilder::strategy";

    /// The custom strategy `name`: what `PoolBuilder::strategy` registers a strategy under
    /// and configuration names it by. The same name always gives the same kind.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `name` is not 1 to 64 characters of `[a-z0-9_]` starting
    /// with a letter, or is a built-in name.
    pub fn custom(name: &str) -> Result<Self, ConfigError> {
        if !Names::valid(name) || Self::ALL.iter().any(|k| k.as_str() == name) {
            return Err(ConfigError::Invalid {
                field: "strategy",
                value: name.to_owned(),
                allowed: "a custom strategy name: 1 to 64 characters of [a-z0-9_] starting \
                          with a letter, not a built-in strategy's",
            });
        }
        Ok(Self::Custom(CustomStrategy(CUSTOM_STRATEGIES.intern(name))))
    }

    /// `name` as a built-in kind, else as a custom one (interned): what a configuration file
    /// or the environment, the operator's own input, is read with. Whether a strategy of that
    /// name is registered is checked when a pool applies it.
    ///
    /// # Errors
    /// As [`custom`](Self::custom) for a name that is neither.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        name.parse().or_else(|_| {
            Self::custom(name.trim()).map_err(|_| ConfigError::Invalid {
                field: "strategy",
                value: name.to_owned(),
                allowed: Self::ALLOWED,
            })
        })
    }

    /// The configuration name: `round_robin`, `least_connections`, `sticky`, `weighted`,
    /// `none`, `peak_ewma`, or a custom strategy's own.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::Sticky => "sticky",
            Self::Weighted => "weighted",
            Self::None => "none",
            Self::PeakEwma => "peak_ewma",
            Self::Custom(CustomStrategy(name)) => name,
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in kind, or a custom one already registered (APIs parse their callers' input with
/// this: it never adds a name).
impl FromStr for StrategyKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .or_else(|| {
                CUSTOM_STRATEGIES
                    .get(s)
                    .map(|n| Self::Custom(CustomStrategy(n)))
            })
            .ok_or_else(|| ConfigError::Invalid {
                field: "strategy",
                value: s.to_owned(),
                allowed: Self::ALLOWED,
            })
    }
}

impl Serialize for StrategyKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Reads as [`named`](StrategyKind::named) does: configuration is the operator's input.
impl<'de> Deserialize<'de> for StrategyKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::named(&name).map_err(serde::de::Error::custom)
    }
}

/// A configuration value was rejected. Nothing of the configuration was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number is outside its allowed range.
    #[error("{field} = {value} is out of range: must be {min} to {max}{unit}")]
    OutOfRange {
        /// The field (or environment variable) name.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
        /// `" seconds"`, `" %"` or empty.
        unit: &'static str,
    },
    /// Sizes contradict each other: `min_size <= size <= max_size` does not hold. The message
    /// names the two fields that disagree.
    #[error("{}", sizes_message(*min_size, *size, *max_size))]
    Sizes {
        /// The configured min_size.
        min_size: u32,
        /// The configured size.
        size: u32,
        /// The configured max_size.
        max_size: u32,
    },
    /// A duration is outside its range (for settings finer than whole seconds, such as
    /// `create_timeout`).
    #[error("{field} = {value:?} is out of range: must be {min:?} to {max:?}")]
    DurationOutOfRange {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: Duration,
        /// The shortest allowed value.
        min: Duration,
        /// The longest allowed value.
        max: Duration,
    },
    /// A value is not one of the allowed ones.
    #[error("{field} = {value:?} is invalid: must be {allowed}")]
    Invalid {
        /// The field (or environment variable) name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
}

/// The words of [`ConfigError::Sizes`]: the first pair of sizes found out of order.
fn sizes_message(min_size: u32, size: u32, max_size: u32) -> String {
    let (lower, upper, why) = if min_size > max_size {
        (
            ("min_size", min_size),
            ("max_size", max_size),
            "the sessions kept warm cannot exceed the hard cap",
        )
    } else if size > max_size {
        (
            ("size", size),
            ("max_size", max_size),
            "the target size cannot exceed the hard cap",
        )
    } else {
        (
            ("min_size", min_size),
            ("size", size),
            "the target size cannot be below the sessions kept warm",
        )
    };
    format!(
        "{} ({}) is above {} ({}): {why} (min_size <= size <= max_size); set both, or let the \
         sizes you did not choose follow with PoolConfig::normalized()",
        lower.0, lower.1, upper.0, upper.1
    )
}

/// Which of the three sizes a user chose; the others follow them (see
/// [`PoolConfig::follow_sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChosenSizes {
    /// `min_size` was chosen.
    pub min_size: bool,
    /// `size` was chosen.
    pub size: bool,
    /// `max_size` was chosen.
    pub max_size: bool,
}

/// Pool settings of one upstream server. Field names, defaults and ranges are those of the
/// ContextForge gateway's session pool setup guide. Durations are whole seconds in serialized
/// form.
///
/// Build it with struct update syntax from [`PoolConfig::enabled`] or [`PoolConfig::default`].
/// [`validate`](Self::validate) (which the pool runs before applying anything) requires
/// `min_size <= size <= max_size` of the values as they are; since a struct update cannot tell
/// which sizes were written, [`normalized`](Self::normalized) takes a size still at its default
/// for one the user did not choose and lets it follow the others.
/// `mcp_pool::ServerConfig::pool` applies it, so
/// `PoolConfig { max_size: 4, ..PoolConfig::enabled() }` is a pool of at most 4 sessions whose
/// `size` is 4, and `PoolConfig { min_size: 12, ..PoolConfig::enabled() }` keeps 12 warm with
/// `size` and `max_size` 12. Deserialization does the same exactly: sizes absent from the input
/// follow the ones present (`{"max_size": 3}` gives `size` 3), and sizes present that
/// contradict each other are left for `validate` to reject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PoolConfigFields")]
pub struct PoolConfig {
    /// Pooling on for this server (default `false`). Off: every acquire gets a fresh session,
    /// closed on release, as with [`StrategyKind::None`].
    pub enabled: bool,
    /// How sessions are chosen (default `round_robin`).
    pub strategy: StrategyKind,
    /// Target number of sessions per key, 1-1000 (default 5). The autoscaler moves it.
    pub size: u32,
    /// Sessions kept warm per key while the key lives, 1-1000 (default 1).
    pub min_size: u32,
    /// Hard cap on sessions per key, idle or in use, 1-1000 (default 10). Never exceeded.
    pub max_size: u32,
    /// Acquire timeout, 1-300 s (default 30 s).
    #[serde(serialize_with = "secs::serialize")]
    pub timeout: Duration,
    /// An idle session is closed after this, 60-86400 s (default 3600 s).
    #[serde(serialize_with = "secs::serialize")]
    pub max_idle_time: Duration,
    /// Session age cap (TTL), 60-86400 s (default 3600 s).
    #[serde(serialize_with = "secs::serialize")]
    pub max_lifetime: Duration,
    /// Leases one session serves at once, 1-256 (default 1 = exclusive checkout).
    pub session_concurrency: u32,
    /// Autoscaler on (default `false`).
    pub auto_scale: bool,
    /// Background health check period, 10-3600 s (default 60 s).
    #[serde(serialize_with = "secs::serialize")]
    pub health_check_interval: Duration,
    /// Health score (percent) below which the server is unhealthy, 0-100 (default 70).
    pub health_check_threshold: u8,
    /// Autoscaler and rebalancer period, 60-3600 s (default 300 s).
    #[serde(serialize_with = "secs::serialize")]
    pub rebalance_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            strategy: StrategyKind::RoundRobin,
            size: 5,
            min_size: 1,
            max_size: 10,
            timeout: Duration::from_secs(30),
            max_idle_time: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(3600),
            session_concurrency: 1,
            auto_scale: false,
            health_check_interval: Duration::from_secs(60),
            health_check_threshold: 70,
            rebalance_interval: Duration::from_secs(300),
        }
    }
}

/// The allowed range of every numeric [`PoolConfig`] field and pool-wide setting, with its unit.
pub const RANGES: [(&str, RangeInclusive<u64>, &str); 14] = [
    ("size", 1..=1000, ""),
    ("min_size", 1..=1000, ""),
    ("max_size", 1..=1000, ""),
    ("timeout", 1..=300, " seconds"),
    ("max_idle_time", 60..=86400, " seconds"),
    ("max_lifetime", 60..=86400, " seconds"),
    ("session_concurrency", 1..=256, ""),
    ("health_check_interval", 10..=3600, " seconds"),
    ("health_check_threshold", 0..=100, " %"),
    ("rebalance_interval", 60..=3600, " seconds"),
    ("cleanup_interval", 1..=3600, " seconds"),
    ("user_limit", 1..=100_000, ""),
    ("max_sessions", 1..=1_000_000, ""),
    ("max_keys", 1..=10_000_000, ""),
];

/// Checks `value` against the range [`RANGES`] gives `field`.
///
/// # Errors
/// [`ConfigError::OutOfRange`] naming the field, the value and the range.
///
/// # Panics
/// When `field` is not in [`RANGES`] (a programming error).
pub fn check_range(field: &'static str, value: u64) -> Result<(), ConfigError> {
    let (_, range, unit) = RANGES
        .iter()
        .find(|(name, _, _)| *name == field)
        .unwrap_or_else(|| panic!("no range for {field}"));
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min: *range.start(),
            max: *range.end(),
            unit,
        })
    }
}

/// Seconds of a duration, rounded up so that 0.5 s is not taken for 0 s.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl PoolConfig {
    /// A config with pooling on and everything else at its default.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }

    /// Checks every field against its range and `min_size <= size <= max_size`.
    ///
    /// # Errors
    /// The first [`ConfigError`] found, in field order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields: [(&'static str, u64); 10] = [
            ("size", self.size.into()),
            ("min_size", self.min_size.into()),
            ("max_size", self.max_size.into()),
            ("timeout", whole_secs(self.timeout)),
            ("max_idle_time", whole_secs(self.max_idle_time)),
            ("max_lifetime", whole_secs(self.max_lifetime)),
            ("session_concurrency", self.session_concurrency.into()),
            (
                "health_check_interval",
                whole_secs(self.health_check_interval),
            ),
            ("health_check_threshold", self.health_check_threshold.into()),
            ("rebalance_interval", whole_secs(self.rebalance_interval)),
        ];
        for (field, value) in fields {
            check_range(field, value)?;
        }
        if !(self.min_size <= self.size && self.size <= self.max_size) {
            return Err(ConfigError::Sizes {
                min_size: self.min_size,
                size: self.size,
                max_size: self.max_size,
            });
        }
        Ok(())
    }

    /// This config with the sizes not in `chosen` moved to fit the chosen ones, each kept
    /// within 1-1000:
    /// - `size`, not chosen, is clamped into [chosen `min_size`, chosen `max_size`];
    /// - `min_size`, not chosen, is lowered to `size` when above it;
    /// - `max_size`, not chosen, is raised to `size` (and `min_size`) when below it.
    ///
    /// Chosen sizes never move: when they contradict each other (or one is out of range),
    /// [`validate`](Self::validate) still fails, naming two chosen fields. This is the rule of
    /// `SESSION_POOL_SIZE` / `SESSION_POOL_MIN_SIZE` / `SESSION_POOL_MAX_SIZE` and of the
    /// configuration file: `SESSION_POOL_MAX_SIZE=4` alone gives sizes 1 / 4 / 4,
    /// `SESSION_POOL_MIN_SIZE=6` alone gives 6 / 6 / 10.
    #[must_use]
    pub fn follow_sizes(mut self, chosen: ChosenSizes) -> Self {
        let in_range = |v: u32| v.clamp(1, 1000);
        if !chosen.size {
            if chosen.max_size {
                self.size = self.size.min(in_range(self.max_size));
            }
            if chosen.min_size {
                self.size = self.size.max(in_range(self.min_size));
            }
            self.size = in_range(self.size);
        }
        if !chosen.min_size {
            self.min_size = in_range(self.min_size.min(self.size));
            if chosen.max_size {
                self.min_size = self.min_size.min(in_range(self.max_size));
            }
        }
        if !chosen.max_size {
            self.max_size = in_range(self.max_size.max(self.size).max(self.min_size));
        }
        self
    }

    /// This config with every size still equal to its default (`min_size` 1, `size` 5,
    /// `max_size` 10) taken as not chosen, through [`follow_sizes`](Self::follow_sizes). Meant
    /// for configs built with struct update syntax, where nothing else tells which sizes were
    /// written: a size written equal to its default follows too, which only ever moves it
    /// toward the sizes written.
    #[must_use]
    pub fn normalized(self) -> Self {
        let d = Self::default();
        let chosen = ChosenSizes {
            min_size: self.min_size != d.min_size,
            size: self.size != d.size,
            max_size: self.max_size != d.max_size,
        };
        self.follow_sizes(chosen)
    }

    /// Whether sessions are kept between acquires: pooling on and a strategy other than `none`.
    pub fn pools(&self) -> bool {
        self.enabled && self.strategy != StrategyKind::None
    }
}

/// The serialized form of [`PoolConfig`]: every field optional. Absent fields take their
/// defaults, and absent sizes follow the present ones ([`PoolConfig::follow_sizes`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolConfigFields {
    enabled: Option<bool>,
    strategy: Option<StrategyKind>,
    size: Option<u32>,
    min_size: Option<u32>,
    max_size: Option<u32>,
    timeout: Option<u64>,
    max_idle_time: Option<u64>,
    max_lifetime: Option<u64>,
    session_concurrency: Option<u32>,
    auto_scale: Option<bool>,
    health_check_interval: Option<u64>,
    health_check_threshold: Option<u8>,
    rebalance_interval: Option<u64>,
}

impl From<PoolConfigFields> for PoolConfig {
    fn from(f: PoolConfigFields) -> Self {
        let d = PoolConfig::default();
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let chosen = ChosenSizes {
            min_size: f.min_size.is_some(),
            size: f.size.is_some(),
            max_size: f.max_size.is_some(),
        };
        PoolConfig {
            enabled: f.enabled.unwrap_or(d.enabled),
            strategy: f.strategy.unwrap_or(d.strategy),
            size: f.size.unwrap_or(d.size),
            min_size: f.min_size.unwrap_or(d.min_size),
            max_size: f.max_size.unwrap_or(d.max_size),
            timeout: secs(f.timeout, d.timeout),
            max_idle_time: secs(f.max_idle_time, d.max_idle_time),
            max_lifetime: secs(f.max_lifetime, d.max_lifetime),
            session_concurrency: f.session_concurrency.unwrap_or(d.session_concurrency),
            auto_scale: f.auto_scale.unwrap_or(d.auto_scale),
            health_check_interval: secs(f.health_check_interval, d.health_check_interval),
            health_check_threshold: f.health_check_threshold.unwrap_or(d.health_check_threshold),
            rebalance_interval: secs(f.rebalance_interval, d.rebalance_interval),
        }
        .follow_sizes(chosen)
    }
}

mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::whole_secs(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_ones() {
        let c = PoolConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["timeout"], 30);
        assert_eq!(json["max_idle_time"], 3600);
        assert_eq!(json["strategy"], "round_robin");
        assert_eq!(json["health_check_threshold"], 70);
    }

    #[test]
    fn every_out_of_range_field_is_named_with_value_and_range() {
        type Set = fn(&mut PoolConfig);
        let cases: [(&str, Set, &str); 12] = [
            (
                "size",
                |c| c.size = 0,
                "size = 0 is out of range: must be 1 to 1000",
            ),
            (
                "min_size",
                |c| c.min_size = 0,
                "min_size = 0 is out of range: must be 1 to 1000",
            ),
            (
                "max_size",
                |c| c.max_size = 1001,
                "max_size = 1001 is out of range: must be 1 to 1000",
            ),
            (
                "timeout",
                |c| c.timeout = Duration::ZERO,
                "timeout = 0 is out of range: must be 1 to 300 seconds",
            ),
            (
                "timeout",
                |c| c.timeout = Duration::from_secs(301),
                "timeout = 301 is out of range: must be 1 to 300 seconds",
            ),
            (
                "max_idle_time",
                |c| c.max_idle_time = Duration::from_secs(59),
                "max_idle_time = 59 is out of range: must be 60 to 86400 seconds",
            ),
            (
                "max_lifetime",
                |c| c.max_lifetime = Duration::from_secs(86401),
                "max_lifetime = 86401 is out of range: must be 60 to 86400 seconds",
            ),
            (
                "session_concurrency",
                |c| c.session_concurrency = 257,
                "session_concurrency = 257 is out of range: must be 1 to 256",
            ),
            (
                "health_check_interval",
                |c| c.health_check_interval = Duration::from_secs(9),
                "health_check_interval = 9 is out of range: must be 10 to 3600 seconds",
            ),
            (
                "health_check_threshold",
                |c| c.health_check_threshold = 101,
                "health_check_threshold = 101 is out of range: must be 0 to 100 %",
            ),
            (
                "rebalance_interval",
                |c| c.rebalance_interval = Duration::from_secs(3601),
                "rebalance_interval = 3601 is out of range: must be 60 to 3600 seconds",
            ),
            (
                "sizes",
                |c| c.min_size = 6,
                "min_size (6) is above size (5): the target size cannot be below the sessions \
                 kept warm (min_size <= size <= max_size); set both, or let the sizes you did \
                 not choose follow with PoolConfig::normalized()",
            ),
        ];
        for (field, set, message) in cases {
            let mut c = PoolConfig::default();
            set(&mut c);
            let err = c.validate().expect_err(field);
            assert_eq!(err.to_string(), message, "{field}");
        }
    }

    #[test]
    fn unknown_fields_and_strategies_are_rejected() {
        assert!(serde_json::from_str::<PoolConfig>(r#"{"sise": 3}"#).is_err());
        // A well-formed name may be a custom strategy (checked when a pool applies it); a
        // malformed one is refused at once.
        let err = serde_json::from_str::<PoolConfig>(r#"{"strategy": "Random!"}"#).unwrap_err();
        assert!(err.to_string().contains("round_robin"), "{err}");
        let custom: PoolConfig = serde_json::from_str(r#"{"strategy": "random"}"#).unwrap();
        assert_eq!(custom.strategy.as_str(), "random");
        let err = "fastest".parse::<StrategyKind>().unwrap_err();
        assert!(err.to_string().contains("least_connections"), "{err}");
        assert_eq!(
            "Sticky".parse::<StrategyKind>().unwrap(),
            StrategyKind::Sticky
        );
    }

    #[test]
    fn partial_json_fills_defaults_and_absent_sizes_follow() {
        let c: PoolConfig = serde_json::from_str(r#"{"enabled": true, "max_size": 3}"#).unwrap();
        assert!(c.enabled);
        assert_eq!((c.min_size, c.size, c.max_size), (1, 3, 3));
        assert_eq!(c.timeout, Duration::from_secs(30));
        c.validate().unwrap();
        let c: PoolConfig = serde_json::from_str(r#"{"min_size": 12}"#).unwrap();
        assert_eq!((c.min_size, c.size, c.max_size), (12, 12, 12));
        // Sizes given together are kept as given: validate names the two that disagree.
        let c: PoolConfig = serde_json::from_str(r#"{"size": 6, "max_size": 4}"#).unwrap();
        assert_eq!((c.min_size, c.size, c.max_size), (1, 6, 4));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("size (6) is above max_size (4)"), "{err}");
        // A full config round-trips unchanged.
        let full = PoolConfig {
            min_size: 2,
            size: 3,
            max_size: 4,
            ..PoolConfig::enabled()
        };
        let back: PoolConfig =
            serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }

    #[test]
    fn unchosen_sizes_follow_the_chosen_ones() {
        let chosen = |min_size, size, max_size| ChosenSizes {
            min_size,
            size,
            max_size,
        };
        let sizes = |min_size, size, max_size| PoolConfig {
            min_size,
            size,
            max_size,
            ..PoolConfig::default()
        };
        // (given min/size/max, chosen, expected min/size/max)
        let cases = [
            ((1, 5, 4), chosen(false, false, true), (1, 4, 4)),
            ((6, 5, 10), chosen(true, false, false), (6, 6, 10)),
            ((12, 5, 10), chosen(true, false, false), (12, 12, 12)),
            ((1, 20, 10), chosen(false, true, false), (1, 20, 20)),
            ((3, 2, 10), chosen(false, true, false), (2, 2, 10)),
            ((3, 5, 2), chosen(false, false, true), (2, 2, 2)),
            ((2, 3, 4), chosen(true, true, true), (2, 3, 4)),
            // Chosen sizes that contradict stay as they are; the others never get the blame.
            ((8, 5, 4), chosen(true, false, true), (8, 8, 4)),
            ((6, 8, 4), chosen(false, true, true), (4, 8, 4)),
        ];
        for (given, chosen, expected) in cases {
            let c = sizes(given.0, given.1, given.2).follow_sizes(chosen);
            assert_eq!(
                (c.min_size, c.size, c.max_size),
                expected,
                "{given:?} {chosen:?}"
            );
        }
        let err = sizes(8, 5, 4)
            .follow_sizes(chosen(true, false, true))
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("min_size (8) is above max_size (4)")
        );
        let err = sizes(6, 8, 4)
            .follow_sizes(chosen(false, true, true))
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("size (8) is above max_size (4)")
        );
        // An out-of-range chosen size is reported as such, not through a follower.
        let err = sizes(1, 5, 0)
            .follow_sizes(chosen(false, false, true))
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_size = 0 is out of range: must be 1 to 1000"
        );
    }

    #[test]
    fn struct_update_sizes_are_normalized() {
        let c = PoolConfig {
            max_size: 4,
            ..PoolConfig::enabled()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "size (5) is above max_size (4): the target size cannot exceed the hard cap \
             (min_size <= size <= max_size); set both, or let the sizes you did not choose \
             follow with PoolConfig::normalized()"
        );
        let n = c.normalized();
        assert_eq!((n.min_size, n.size, n.max_size), (1, 4, 4));
        n.validate().unwrap();
        let n = PoolConfig {
            min_size: 12,
            ..PoolConfig::enabled()
        }
        .normalized();
        assert_eq!((n.min_size, n.size, n.max_size), (12, 12, 12));
        assert!(n.enabled);
        assert_eq!(PoolConfig::enabled().normalized(), PoolConfig::enabled());
    }
}
