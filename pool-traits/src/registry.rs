//! Server records: what the gateway's registry stores in the [`StateBackend`](crate::StateBackend).

use serde::{Deserialize, Serialize};

use crate::{Endpoint, PoolConfig, ServerId};

/// An upstream server as the registry stores it: its endpoints, pool config, whether it is
/// served, and where its upstream credential comes from.
///
/// No secret is ever part of a record: an upstream credential is stored as the *name* of an
/// environment variable ([`CredentialsRef`]), read when a session connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRecord {
    /// The server's id (the `{id}` of `/servers/{id}`).
    pub id: ServerId,
    /// A display name; cosmetic (changing it never drains the pool). Defaults to the id.
    #[serde(default)]
    pub name: String,
    /// The replicas: at least one.
    pub endpoints: Vec<Endpoint>,
    /// The server's pool config.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Whether the gateway serves it (default `true`). A disabled server keeps its record but
    /// has no pool.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The upstream credential, as a reference to an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsRef>,
    /// Whether a gateway sends the downstream request's own `Authorization` header (with
    /// gateway auth on: the gateway's JWT) upstream (default `false`: the gateway's token stops
    /// at the gateway). When sent, it is part of the pool key like every header
    /// sent upstream; [`credentials`](Self::credentials) of the same header win over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
    /// Who may use the server's MCP routes besides the gateway's admins. `None` (the
    /// default): every authenticated caller. A gateway answers anyone else as if the server
    /// did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// An access list: the users and the groups (matched against a caller's token claims, e.g. a
/// JWT's `sub` and `groups`) admitted to a server. Empty lists admit nobody but the admins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// User names admitted (compared exactly).
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups admitted: a caller in any of them is (compared exactly).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Access {
    /// Whether a caller named `user` in `groups` is admitted.
    pub fn admits(&self, user: Option<&str>, groups: &[String]) -> bool {
        user.is_some_and(|u| self.users.iter().any(|a| a == u))
            || groups.iter().any(|g| self.groups.contains(g))
    }
}

fn enabled_by_default() -> bool {
    true
}

impl ServerRecord {
    /// Whether `other` reaches the upstream the same way: same endpoints (URL, transport,
    /// weight) and same forwarded credentials ([`credentials`](Self::credentials),
    /// [`forward_token`](Self::forward_token)). When not, sessions opened under `self` must be
    /// drained.
    pub fn same_connection(&self, other: &ServerRecord) -> bool {
        self.endpoints == other.endpoints
            && self.credentials == other.credentials
            && self.forward_token == other.forward_token
    }
}

/// Where an upstream credential comes from: the header to send and the environment variable
/// holding its value. Only names are stored; the value is never part of a record, its `Debug`,
/// or an API response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRef {
    /// The request header that carries the credential upstream (e.g. `authorization`).
    pub header: String,
    /// The environment variable holding the header's value (e.g. `DEMO_TOKEN`).
    pub env: String,
}

/// A server record was stored or deleted: what
/// [`StateBackend::watch_servers`](crate::StateBackend::watch_servers) delivers and
/// [`list_servers`](crate::StateBackend::list_servers) lists. Versions follow the rules of
/// [`ConfigChange`](crate::ConfigChange#versions), per server id, separate from the configs'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChange {
    /// The server.
    pub server: ServerId,
    /// The new record, `None` when deleted.
    pub record: Option<ServerRecord>,
    /// The version of this change.
    pub version: u64,
}

/// A stored server record and the version its put was given (see [`ServerChange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedServer {
    /// The record.
    pub record: ServerRecord,
    /// The version of the put that stored it.
    pub version: u64,
}
