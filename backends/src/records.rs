//! The two kinds of versioned per-server records every backend keeps: pool configs and server
//! records. Both follow one rule set (versions per server, tombstones kept, notification with
//! the write), so each backend implements it once, generic over [`Versioned`].

use mcp_pool_traits::{ConfigChange, PoolConfig, ServerChange, ServerId, ServerRecord};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Which records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Config,
    Server,
}

impl Kind {
    /// The word in lock names: `config`, `server`.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Server => "server",
        }
    }
}

/// A change of either kind, as in-process channels and PostgreSQL notices carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub(crate) enum Change {
    Config(ConfigChange),
    Server(ServerChange),
}

/// A change type of one kind of record ([`ConfigChange`], [`ServerChange`]).
pub(crate) trait Versioned:
    Clone + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// What is stored.
    type Value: Clone + Send + Sync + Serialize + DeserializeOwned + 'static;
    const KIND: Kind;
    /// The word errors use: `config`, `server record`.
    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres", feature = "sqlite")),
        allow(dead_code)
    )]
    const WHAT: &'static str;
    fn new(server: ServerId, value: Option<Self::Value>, version: u64) -> Self;
    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres", feature = "sqlite")),
        allow(dead_code)
    )]
    fn server(&self) -> &ServerId;
    fn value(&self) -> Option<&Self::Value>;
    fn version(&self) -> u64;
    fn wrap(self) -> Change;
    fn unwrap(change: &Change) -> Option<Self>;
}

impl Versioned for ConfigChange {
    type Value = PoolConfig;
    const KIND: Kind = Kind::Config;
    const WHAT: &'static str = "config";
    fn new(server: ServerId, config: Option<PoolConfig>, version: u64) -> Self {
        Self {
            server,
            config,
            version,
        }
    }
    fn server(&self) -> &ServerId {
        &self.server
    }
    fn value(&self) -> Option<&PoolConfig> {
        self.config.as_ref()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn wrap(self) -> Change {
        Change::Config(self)
    }
    fn unwrap(change: &Change) -> Option<Self> {
        match change {
            Change::Config(c) => Some(c.clone()),
            Change::Server(_) => None,
        }
    }
}

impl Versioned for ServerChange {
    type Value = ServerRecord;
    const KIND: Kind = Kind::Server;
    const WHAT: &'static str = "server record";
    fn new(server: ServerId, record: Option<ServerRecord>, version: u64) -> Self {
        Self {
            server,
            record,
            version,
        }
    }
    fn server(&self) -> &ServerId {
        &self.server
    }
    fn value(&self) -> Option<&ServerRecord> {
        self.record.as_ref()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn wrap(self) -> Change {
        Change::Server(self)
    }
    fn unwrap(change: &Change) -> Option<Self> {
        match change {
            Change::Server(c) => Some(c.clone()),
            Change::Config(_) => None,
        }
    }
}

/// The ten record methods of [`StateBackend`](mcp_pool_traits::StateBackend), for a backend
/// with inherent async methods generic over [`Versioned`] `C`:
/// `put(&ServerId, &C::Value) -> Result<u64, _>`,
/// `get(&ServerId) -> Result<Option<(C::Value, u64)>, _>`, `list() -> Result<Vec<C>, _>`,
/// `delete(&ServerId) -> Result<Option<u64>, _>` and
/// `watch() -> Result<BoxStream<'static, C>, _>`. Used inside an `#[async_trait]` impl, which
/// expands before this macro does: the methods are written as `async_trait` writes them.
macro_rules! record_methods {
    () => {
        fn put_config<'s, 'a, 'b, 'async_trait>(
            &'s self,
            server: &'a ::mcp_pool_traits::ServerId,
            config: &'b ::mcp_pool_traits::PoolConfig,
        ) -> ::futures::future::BoxFuture<'async_trait, Result<u64, ::mcp_pool_traits::BackendError>>
        where
            's: 'async_trait,
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(self.put::<::mcp_pool_traits::ConfigChange>(server, config))
        }

        fn put_server<'s, 'a, 'async_trait>(
            &'s self,
            record: &'a ::mcp_pool_traits::ServerRecord,
        ) -> ::futures::future::BoxFuture<'async_trait, Result<u64, ::mcp_pool_traits::BackendError>>
        where
            's: 'async_trait,
            'a: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(self.put::<::mcp_pool_traits::ServerChange>(&record.id, record))
        }

        $crate::records::record_methods!(
            get_config, list_configs, delete_config, watch_configs, ConfigChange, SavedConfig, config
        );
        $crate::records::record_methods!(
            get_server, list_servers, delete_server, watch_servers, ServerChange, SavedServer, record
        );
    };
    // The get, list, delete and watch methods of one kind: its change type, its saved type and
    // the saved type's value field.
    ($get:ident, $list:ident, $delete:ident, $watch:ident, $change:ident, $saved:ident, $field:ident) => {
        fn $get<'s, 'a, 'async_trait>(
            &'s self,
            server: &'a ::mcp_pool_traits::ServerId,
        ) -> ::futures::future::BoxFuture<
            'async_trait,
            Result<Option<::mcp_pool_traits::$saved>, ::mcp_pool_traits::BackendError>,
        >
        where
            's: 'async_trait,
            'a: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let saved = self.get::<::mcp_pool_traits::$change>(server).await?;
                Ok(saved.map(|($field, version)| ::mcp_pool_traits::$saved { $field, version }))
            })
        }

        fn $list<'s, 'async_trait>(
            &'s self,
        ) -> ::futures::future::BoxFuture<
            'async_trait,
            Result<Vec<::mcp_pool_traits::$change>, ::mcp_pool_traits::BackendError>,
        >
        where
            's: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(self.list::<::mcp_pool_traits::$change>())
        }

        fn $delete<'s, 'a, 'async_trait>(
            &'s self,
            server: &'a ::mcp_pool_traits::ServerId,
        ) -> ::futures::future::BoxFuture<'async_trait, Result<Option<u64>, ::mcp_pool_traits::BackendError>>
        where
            's: 'async_trait,
            'a: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(self.delete::<::mcp_pool_traits::$change>(server))
        }

        fn $watch<'s, 'async_trait>(
            &'s self,
        ) -> ::futures::future::BoxFuture<
            'async_trait,
            Result<
                ::futures::stream::BoxStream<'static, ::mcp_pool_traits::$change>,
                ::mcp_pool_traits::BackendError,
            >,
        >
        where
            's: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(self.watch::<::mcp_pool_traits::$change>())
        }
    };
}
pub(crate) use record_methods;
