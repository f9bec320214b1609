//! Per-server pool configuration (DESIGN §6).

use std::{fmt, ops::RangeInclusive, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// The built-in strategies (DESIGN §5), as named in configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
}

impl StrategyKind {
    /// Every kind.
    pub const ALL: [StrategyKind; 5] = [
        Self::RoundRobin,
        Self::LeastConnections,
        Self::Sticky,
        Self::Weighted,
        Self::None,
    ];

    /// The configuration name: `round_robin`, `least_connections`, `sticky`, `weighted`, `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::Sticky => "sticky",
            Self::Weighted => "weighted",
            Self::None => "none",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ConfigError::Invalid {
                field: "strategy",
                value: s.to_owned(),
                allowed: "one of round_robin, least_connections, sticky, weighted, none",
            })
    }
}

/// A configuration value was rejected. Nothing of the configuration was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number is outside its range (the ranges of the seed setup guide, DESIGN §6).
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
    /// Sizes contradict each other.
    #[error("min_size ({min_size}) <= size ({size}) <= max_size ({max_size}) does not hold")]
    Sizes {
        /// The configured min_size.
        min_size: u32,
        /// The configured size.
        size: u32,
        /// The configured max_size.
        max_size: u32,
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

/// Pool settings of one upstream server. Field names, defaults and ranges are those of the seed
/// setup guide (DESIGN §6). Durations are whole seconds in serialized form.
///
/// Build it with struct update syntax from [`PoolConfig::default`] and call
/// [`validate`](Self::validate) (the pool does so before applying anything).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// An idle session is closed after this, 60-86400 s (default 3600 s).
    #[serde(with = "secs")]
    pub max_idle_time: Duration,
    /// Session age cap (TTL), 60-86400 s (default 3600 s).
    #[serde(with = "secs")]
    pub max_lifetime: Duration,
    /// Leases one session serves at once, 1-256 (default 1 = exclusive checkout).
    pub session_concurrency: u32,
    /// Autoscaler on (default `false`).
    pub auto_scale: bool,
    /// Background health check period, 10-3600 s (default 60 s).
    #[serde(with = "secs")]
    pub health_check_interval: Duration,
    /// Health score (percent) below which the server is unhealthy, 0-100 (default 70).
    pub health_check_threshold: u8,
    /// Autoscaler and rebalancer period, 60-3600 s (default 300 s).
    #[serde(with = "secs")]
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

    /// Whether sessions are kept between acquires: pooling on and a strategy other than `none`.
    pub fn pools(&self) -> bool {
        self.enabled && self.strategy != StrategyKind::None
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::whole_secs(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_seed_guide() {
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
                "min_size (6) <= size (5) <= max_size (10) does not hold",
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
        let err = serde_json::from_str::<PoolConfig>(r#"{"strategy": "random"}"#).unwrap_err();
        assert!(err.to_string().contains("round_robin"), "{err}");
        let err = "fastest".parse::<StrategyKind>().unwrap_err();
        assert!(err.to_string().contains("least_connections"), "{err}");
        assert_eq!(
            "Sticky".parse::<StrategyKind>().unwrap(),
            StrategyKind::Sticky
        );
    }

    #[test]
    fn partial_json_fills_defaults() {
        let c: PoolConfig = serde_json::from_str(r#"{"enabled": true, "max_size": 3}"#).unwrap();
        assert!(c.enabled);
        assert_eq!(c.max_size, 3);
        assert_eq!(
            c.size, 5,
            "defaults stay; validate() then rejects size > max_size"
        );
        assert!(c.validate().is_err());
    }
}
