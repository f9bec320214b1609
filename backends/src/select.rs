//! Choosing a backend from the environment: `CACHE_TYPE`, `REDIS_URL`, `DATABASE_URL`.

use std::sync::Arc;

use mcp_pool_traits::{BackendError, StateBackend, StateId};

use crate::MemoryBackend;

/// Selects the backend: `memory` (default), `redis` or `database`.
pub const CACHE_TYPE: &str = "CACHE_TYPE";
/// The Redis URL for `CACHE_TYPE=redis`, e.g. `redis://127.0.0.1:6379/0`.
pub const REDIS_URL: &str = "REDIS_URL";
/// The database URL for `CACHE_TYPE=database`: `postgres://…`, `postgresql://…` or
/// `sqlite:PATH`.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// A backend choice was rejected. Nothing was connected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// A variable has a value that is not allowed.
    #[error("{variable} = {value:?} is invalid: must be {allowed}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// The rejected value (a URL without its password).
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A variable the chosen backend needs is unset or empty.
    #[error("{variable} must be set when {CACHE_TYPE}={cache_type}, e.g. {example}")]
    Missing {
        /// The missing variable.
        variable: &'static str,
        /// The chosen backend.
        cache_type: &'static str,
        /// An example value.
        example: &'static str,
    },
    /// The chosen backend was left out of this build.
    #[error(
        "{CACHE_TYPE}={cache_type} with this URL needs the `{feature}` feature of \
         mcp-pool-backends, which this build leaves out"
    )]
    FeatureDisabled {
        /// The chosen backend.
        cache_type: &'static str,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// The backend could not be made (a URL that does not parse, an SQLite file that cannot be
    /// opened).
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Which backend to use and where it lives, as read from the environment by
/// [`from_env`](Self::from_env). [`connect`](Self::connect) makes it.
///
/// `Debug` shows the URL without its user-info ([`redact_url`](mcp_pool_traits::redact_url)).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// [`MemoryBackend`]: one process, nothing shared with other workers.
    Memory,
    /// [`RedisBackend`](crate::RedisBackend) on `url`.
    Redis {
        /// `redis://…`, `rediss://…` or `unix://…`.
        url: String,
    },
    /// [`DatabaseBackend`](crate::DatabaseBackend) on `url`.
    Database {
        /// `postgres://…`, `postgresql://…` or `sqlite:…`.
        url: String,
    },
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis { url } => f.debug_struct("Redis").field("url", &redact(url)).finish(),
            Self::Database { url } => f
                .debug_struct("Database")
                .field("url", &redact(url))
                .finish(),
        }
    }
}

const CACHE_TYPES: &str = "one of memory, redis, database";
const REDIS_SCHEMES: &str = "a URL starting with redis://, rediss:// or unix://";
const DATABASE_SCHEMES: &str = "a URL starting with postgres://, postgresql:// or sqlite:";

impl BackendConfig {
    /// Reads [`CACHE_TYPE`] (default `memory`; case and surrounding spaces ignored) and the URL
    /// variable it needs.
    ///
    /// # Errors
    /// [`SelectError`] naming the variable, its value and what is allowed.
    pub fn from_env() -> Result<Self, SelectError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `lookup` (for tests, or
    /// settings that do not live in the process environment).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SelectError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let cache_type = get(CACHE_TYPE).unwrap_or_else(|| "memory".to_owned());
        match cache_type.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => {
                let url = get(REDIS_URL).ok_or(SelectError::Missing {
                    variable: REDIS_URL,
                    cache_type: "redis",
                    example: "redis://127.0.0.1:6379/0",
                })?;
                if !["redis://", "rediss://", "unix://", "redis+unix://"]
                    .iter()
                    .any(|s| url.starts_with(s))
                {
                    return Err(SelectError::Invalid {
                        variable: REDIS_URL,
                        value: redact(&url),
                        allowed: REDIS_SCHEMES,
                    });
                }
                if !cfg!(feature = "redis") {
                    return Err(SelectError::FeatureDisabled {
                        cache_type: "redis",
                        feature: "redis",
                    });
                }
                Ok(Self::Redis { url })
            }
            "database" => {
                let url = get(DATABASE_URL).ok_or(SelectError::Missing {
                    variable: DATABASE_URL,
                    cache_type: "database",
                    example: "postgres://user@127.0.0.1:5432/db or sqlite:/var/lib/mcp-pool/state.db",
                })?;
                let feature = if url.starts_with("postgres://") || url.starts_with("postgresql://")
                {
                    ("postgres", cfg!(feature = "postgres"))
                } else if url.starts_with("sqlite:") {
                    ("sqlite", cfg!(feature = "sqlite"))
                } else {
                    return Err(SelectError::Invalid {
                        variable: DATABASE_URL,
                        value: redact(&url),
                        allowed: DATABASE_SCHEMES,
                    });
                };
                if !feature.1 {
                    return Err(SelectError::FeatureDisabled {
                        cache_type: "database",
                        feature: feature.0,
                    });
                }
                Ok(Self::Database { url })
            }
            _ => Err(SelectError::Invalid {
                variable: CACHE_TYPE,
                value: cache_type,
                allowed: CACHE_TYPES,
            }),
        }
    }

    /// The name of the choice: `memory`, `redis` or `database`.
    pub fn cache_type(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis { .. } => "redis",
            Self::Database { .. } => "database",
        }
    }

    /// Makes the backend, seeing `namespace`, with default timeouts. Redis and PostgreSQL
    /// connect lazily (a worker may start before them); an SQLite file is opened now.
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] for a URL that does not parse or a backend this build
    /// leaves out; [`BackendError::Unavailable`] when an SQLite file cannot be opened.
    pub async fn connect(&self, namespace: StateId) -> Result<Arc<dyn StateBackend>, BackendError> {
        match self {
            Self::Memory => Ok(Arc::new(MemoryBackend::new().with_namespace(namespace))),
            #[cfg(feature = "redis")]
            Self::Redis { url } => {
                let config = crate::RedisConfig::new(url.clone()).namespace(namespace);
                Ok(Arc::new(crate::RedisBackend::connect(config).await?))
            }
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            Self::Database { url } => {
                let config = crate::DatabaseConfig::new(url.clone()).namespace(namespace);
                Ok(Arc::new(crate::DatabaseBackend::connect(config).await?))
            }
            #[allow(unreachable_patterns)]
            other => Err(BackendError::InvalidArgument(format!(
                "{CACHE_TYPE}={} is not in this build of mcp-pool-backends: enable its feature",
                other.cache_type()
            ))),
        }
    }
}

/// The backend the environment asks for ([`BackendConfig::from_env`]), made in the namespace
/// `default`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // With CACHE_TYPE unset, this is the memory backend.
/// let backend = mcp_pool_backends::backend_from_env().await?;
/// println!("state backend: {}", backend.name());
/// # Ok::<_, mcp_pool_backends::SelectError>(()) }).unwrap();
/// ```
///
/// # Errors
/// [`SelectError`] for a rejected variable, or when the backend cannot be made.
pub async fn backend_from_env() -> Result<Arc<dyn StateBackend>, SelectError> {
    let config = BackendConfig::from_env()?;
    // Invariant: "default" follows the id rule.
    let namespace = StateId::new("default").expect("a valid id");
    Ok(config.connect(namespace).await?)
}

/// `url` fit for an error message: [`redact_url`](mcp_pool_traits::redact_url), owned.
pub(crate) fn redact(url: &str) -> String {
    mcp_pool_traits::redact_url(url).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(vars: &[(&str, &str)]) -> Result<BackendConfig, SelectError> {
        BackendConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn memory_is_the_default() {
        assert_eq!(select(&[]).unwrap(), BackendConfig::Memory);
        assert_eq!(
            select(&[(CACHE_TYPE, "  ")]).unwrap(),
            BackendConfig::Memory
        );
        assert_eq!(
            select(&[(CACHE_TYPE, " Memory ")]).unwrap(),
            BackendConfig::Memory
        );
    }

    #[test]
    fn redis_and_database_need_their_urls() {
        let err = select(&[(CACHE_TYPE, "redis")]).unwrap_err();
        assert!(
            matches!(
                err,
                SelectError::Missing {
                    variable: REDIS_URL,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("REDIS_URL must be set when CACHE_TYPE=redis")
        );
        let err = select(&[(CACHE_TYPE, "database")]).unwrap_err();
        assert!(
            err.to_string().contains("DATABASE_URL must be set"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
        let err = select(&[(CACHE_TYPE, "memcached")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CACHE_TYPE = \"memcached\" is invalid: must be one of memory, redis, database"
        );
        let err = select(&[(CACHE_TYPE, "redis"), (REDIS_URL, "http://u:pw@host")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "REDIS_URL = \"http://***@host\" is invalid: must be a URL starting with \
             redis://, rediss:// or unix://"
        );
        let err = select(&[(CACHE_TYPE, "database"), (DATABASE_URL, "mysql://db")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("DATABASE_URL = \"mysql://db\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn urls_select_their_backend() {
        assert_eq!(
            select(&[(CACHE_TYPE, "REDIS"), (REDIS_URL, "redis://h:6379")]).ok(),
            cfg!(feature = "redis").then(|| BackendConfig::Redis {
                url: "redis://h:6379".into()
            })
        );
        assert_eq!(
            select(&[(CACHE_TYPE, "database"), (DATABASE_URL, "sqlite:/tmp/x.db")]).ok(),
            cfg!(feature = "sqlite").then(|| BackendConfig::Database {
                url: "sqlite:/tmp/x.db".into()
            })
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let config = BackendConfig::Database {
            url: "postgres://postgres:hunter2@127.0.0.1:5432/test".into(),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***@127.0.0.1:5432/test"), "{shown}");
    }

    #[tokio::test]
    async fn memory_connects() {
        let backend = BackendConfig::Memory
            .connect(StateId::new("ns").unwrap())
            .await
            .unwrap();
        assert_eq!(backend.name(), "memory");
    }
}
