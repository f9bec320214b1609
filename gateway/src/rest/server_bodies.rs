//! The bodies of the server routes (`/servers`, `/servers/{id}`): [`ServerInfo`] as the API
//! shows a server, [`ServerBody`] as `POST` and `PUT` take one, with the validation that turns
//! a body into a server record (secrets the caller sent back masked are kept as stored).

use std::{collections::BTreeMap, str::FromStr};

use mcp_pool::{
    Endpoint, Lifecycle, PoolConfig, ServerId, StrategyKind, TransportKind,
    traits::{
        Access, CredentialsRef, ID_RULE, MAX_WEIGHT, NEVER_FORWARDED, REDACTED, ServerRecord,
        StdioCommand, redact_url,
    },
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::pool_bodies::{PoolConfigUpdate, PoolConfigView, bad};
use crate::{error::ApiError, registry::FileSettings};

/// credential-looking query values, and every value of a stdio endpoint's `env`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndpointInfo {
    /// The URL, redacted (`https://***@host/mcp`); `stdio:{command}` for a stdio endpoint.
    pub url: String,
    /// `streamable_http`, `sse`, `websocket` or `stdio`.
    pub transport: String,
    /// Relative weight (1 by default).
    pub weight: u32,
    /// The MCP lifecycle its sessions speak: `initialize`, `discover` (protocol 2026-07-28)
    /// or `auto`.
    pub lifecycle: String,
    /// A stdio endpoint's program. This and `args`, `env`, `cwd`: shown to admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A stdio endpoint's arguments, as configured: keep secrets in `env`, whose values are
    /// never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// A stdio endpoint's own environment variables: their names, each value `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// A stdio endpoint's working directory, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A configured upstream server. An admin's view is a valid `ServerBody`: sent back
/// unchanged with `PUT`, it changes nothing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server id.
    pub id: String,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Whether pooling is enabled for it: `pool.enabled`, repeated for ContextForge's clients.
    pub pooling_enabled: bool,
    /// Its strategy's name: `pool.strategy`, repeated likewise.
    pub strategy: String,
    /// The pool config it runs (a disabled server: the one it runs once enabled), a config
    /// saved through `PUT /servers/{id}/pool/config` included.
    pub pool: PoolConfigView,
    /// Its display name.
    pub name: String,
    /// Whether the gateway serves it; a disabled server has no pool (its pool routes answer
    /// 404).
    pub enabled: bool,
    /// Where its upstream credential comes from (names only; the value is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsBody>,
    /// Whether the downstream request's `Authorization` header (the gateway's JWT) is sent
    /// upstream.
    pub forward_token: bool,
    /// Who may use it besides admins (absent: every authenticated caller). Shown to admins
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessBody>,
    /// Seconds a call may take, 1-3600 (default 60). Set by the configuration file's
    /// `[[servers]]` table only.
    pub call_timeout: u64,
    /// What its upstream sessions advertise in `initialize`: `sampling`, `elicitation`,
    /// `roots`. Set by the configuration file's `[[servers]]` table only.
    pub client_capabilities: Vec<String>,
}

/// A server's access list: the users and groups (a token's `sub`/`email`/`user_id` and its
/// `groups` claim) that may use its MCP routes besides admins. Both empty: admins only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessBody {
    /// Users admitted, at most 1000, each 1 to 256 characters without control characters.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups admitted, same rules.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl AccessBody {
    fn check(self) -> Result<Access, ApiError> {
        for (field, list) in [
            ("access.users", &self.users),
            ("access.groups", &self.groups),
        ] {
            if list.len() > 1000 {
                return Err(invalid(field, list.len(), "at most 1000 entries"));
            }
            if let Some(bad) = list.iter().find(|e| {
                e.is_empty() || e.chars().count() > 256 || e.chars().any(char::is_control)
            }) {
                return Err(invalid(
                    field,
                    bad,
                    "names of 1 to 256 characters, no control characters",
                ));
            }
        }
        Ok(Access {
            users: self.users,
            groups: self.groups,
        })
    }
}

/// An upstream credential, by reference: the header sent upstream and the environment
/// variable of the gateway's process that holds its value. The value itself is never accepted
/// nor returned by the API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    /// The request header that carries it upstream, e.g. `authorization`.
    pub header: String,
    /// The environment variable holding the header's value, e.g. `DEMO_TOKEN`:
    /// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
    pub env: String,
}

/// One endpoint of a `ServerBody`, given whole: its absent fields take their defaults.
///
/// A masked value that `GET` showed stands for the stored one it hides. A URL with `***`
/// (`https://***@host/mcp`) is the stored URL of this server whose redacted form it is
/// (endpoint `i`'s when it fits, else the only one that does); one that is the redacted form
/// of no URL of the server, or of several different ones, is refused with 422: send the whole
/// URL then.
///
/// A stdio endpoint (`transport: "stdio"`, `command`, `args`, `env`, `cwd`) must be one the
/// server has already, as `GET` shows it (`env` values as `***` or as they are); its `weight`
/// and `lifecycle` may change. The programs the gateway starts come from its configuration
/// file, never from the API: an admin token must not be a way to run commands on the
/// gateway's host.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// `http(s)://` for `streamable_http` and `sse`, `ws(s)://` for `websocket`; required but
    /// for `stdio`, where it may only repeat `stdio:{command}`.
    pub url: Option<String>,
    /// `streamable_http` (default), `sse`, `websocket`, or `stdio` (see above).
    pub transport: Option<String>,
    /// Relative weight, 1-1000 (default 1).
    pub weight: Option<u64>,
    /// `initialize` (default), `discover` (protocol 2026-07-28: no handshake, no session) or
    /// `auto` (discover, falling back to initialize). Not `sse` with anything but
    /// `initialize`.
    pub lifecycle: Option<String>,
    /// `stdio` only: the program.
    pub command: Option<String>,
    /// `stdio` only: its arguments (default none).
    pub args: Option<Vec<String>>,
    /// `stdio` only: its own environment variables (default none).
    pub env: Option<BTreeMap<String, String>>,
    /// `stdio` only: its working directory.
    pub cwd: Option<String>,
}

/// A field of a [`ServerBody`] that tells "absent" from `null`: absent, a `PUT` keeps the
/// server's current value; `null` sets the field back to its default (what a `POST` that
/// leaves it out gets); a value sets it. (`Option<Option<T>>` says the same less plainly.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// The field is absent.
    #[default]
    Absent,
    /// The field is `null`.
    Null,
    /// The field has this value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    /// `null` is [`Patch::Null`], a value [`Patch::Value`]; an absent field is
    /// [`Patch::Absent`] through `#[serde(default)]`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(deserializer).map(|v| v.map_or(Self::Null, Self::Value))
    }
}

impl<T> Patch<T> {
    /// The value the field ends with: `keep` when absent (the default when there is nothing
    /// to keep, as for a new server), the default for `null`, `set` of a value.
    fn resolve<U>(
        self,
        keep: Option<U>,
        default: impl FnOnce() -> U,
        set: impl FnOnce(T) -> Result<U, ApiError>,
    ) -> Result<U, ApiError> {
        match self {
            Self::Absent => Ok(keep.unwrap_or_else(default)),
            Self::Null => Ok(default()),
            Self::Value(value) => set(value),
        }
    }
}

/// The body of `POST /servers` and `PUT /servers/{id}`.
///
/// `PUT` changes the fields the body names and keeps every other one: an absent field keeps
/// the server's current value, `null` sets an optional field back to its default (`name`:
/// the id; `enabled`: true; `forward_token`: false; `credentials`, `access`: none; `pool`:
/// the defaults, pooling off), a value sets it. `pool` is merged field by field as
/// `PUT /servers/{id}/pool/config` merges it (over the config in force, a saved one
/// included); `endpoints`, `credentials` and `access` are replaced whole. `POST` gives what
/// the body leaves out its default.
///
/// Why a `PUT` that keeps what it does not name, rather than a replacement of the whole
/// server: what a client sends back is what it read, and it cannot read everything — a
/// disabled server has no `pool/config` route, a URL's password and a stdio endpoint's
/// `env` values are masked — so a replacement would reset whatever a client did not know
/// about (a pool config turned back to the defaults by Deactivate/Activate, the failure this
/// rule ends). It is also how `PUT /servers/{id}/pool/config` and ContextForge's server
/// update behave, so one rule holds across the API; `null` still clears a field on purpose.
/// A `GET /servers/{id}` body sent back unchanged changes nothing.
///
/// Read-only fields, which `GET` shows, are accepted when they agree with the server and
/// refused with 422 otherwise (so that a client that thinks it changed them learns it did
/// not): `pooling_enabled` and `strategy` must agree with the resulting `pool`;
/// `call_timeout` and `client_capabilities` with the configuration file's `[[servers]]`
/// table (the defaults for a server the file does not name).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerBody {
    /// The id, 1 to 128 characters from `[a-zA-Z0-9_-]`: required by `POST`; on `PUT`,
    /// optional and equal to the path's.
    pub id: Option<String>,
    /// Display name, at most 256 characters (default: the id). Changing it never drains.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub name: Patch<String>,
    /// The replicas, at least one: required by `POST`, never `null`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EndpointBody>>)]
    pub endpoints: Patch<Vec<EndpointBody>>,
    /// The pool config; fields it leaves out keep their current values (`POST`: the
    /// defaults, pooling off as ContextForge's servers).
    #[serde(default)]
    #[schema(value_type = Option<PoolConfigUpdate>)]
    pub pool: Patch<PoolConfigUpdate>,
    /// Served by the gateway (default true).
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub enabled: Patch<bool>,
    /// The upstream credential, by reference (default none).
    #[serde(default)]
    #[schema(value_type = Option<CredentialsBody>)]
    pub credentials: Patch<CredentialsBody>,
    /// Send the downstream request's `Authorization` header (the gateway's JWT) upstream
    /// (default false: the gateway's token stops at the gateway). It is then part of the
    /// upstream session's key: a rotated token opens new upstream sessions.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub forward_token: Patch<bool>,
    /// Who may use the server besides admins (default: every authenticated caller); others
    /// get 404 on its routes, as for a server that does not exist.
    #[serde(default)]
    #[schema(value_type = Option<AccessBody>)]
    pub access: Patch<AccessBody>,
    /// Read-only: when given, equal to the resulting `pool.enabled`.
    pub pooling_enabled: Option<bool>,
    /// Read-only: when given, naming the resulting `pool.strategy`.
    pub strategy: Option<String>,
    /// Read-only: when given, equal to the server's (the configuration file's, else 60).
    pub call_timeout: Option<u64>,
    /// Read-only: when given, the server's (the configuration file's, else none), in any
    /// order.
    pub client_capabilities: Option<Vec<String>>,
}

/// `field = value is invalid: must be allowed`, as 422.
fn invalid(field: &str, value: impl std::fmt::Debug, allowed: &str) -> ApiError {
    ApiError::unprocessable(format!("{field} = {value:?} is invalid: must be {allowed}"))
}

/// A read-only field of a body that disagrees with the server's value, as 422; `how` says
/// how the value is changed.
fn read_only<T: PartialEq + std::fmt::Debug>(
    field: &str,
    given: Option<T>,
    actual: T,
    how: &str,
) -> Result<(), ApiError> {
    match given {
        Some(given) if given != actual => Err(invalid(
            field,
            given,
            &format!("{actual:?}, the server's value (read-only: {how})"),
        )),
        _ => Ok(()),
    }
}

/// The longest display name accepted, characters.
const MAX_NAME_CHARS: usize = 256;

/// What a `PUT` builds on: the server's record and the pool config in force
/// ([`Registry::pool_in_force`](crate::Registry::pool_in_force)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current<'a> {
    pub(crate) record: &'a ServerRecord,
    pub(crate) pool: &'a PoolConfig,
}

impl ServerBody {
    /// The record this body makes, every field checked: a new server's (`current` `None`,
    /// `POST`) or the server `current` describes, changed (`PUT`, `path_id` its id). `files`
    /// gives the configuration file's settings of the server's id, which read-only fields
    /// must agree with.
    ///
    /// # Errors
    /// 422 naming the field, its value (URLs redacted) and what is allowed.
    pub(crate) fn into_record(
        self,
        path_id: Option<&ServerId>,
        current: Option<Current<'_>>,
        files: impl FnOnce(&ServerId) -> FileSettings,
    ) -> Result<ServerRecord, ApiError> {
        let id = match (self.id, path_id) {
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(ApiError::unprocessable(format!(
                    "id is missing: must be {ID_RULE}"
                )));
            }
            (Some(id), path) => {
                let id = ServerId::new(&id).map_err(|_| invalid("id", &id, ID_RULE))?;
                if let Some(path) = path.filter(|p| **p != id) {
                    return Err(invalid(
                        "id",
                        id.as_str(),
                        &format!("the path's id {path:?}"),
                    ));
                }
                id
            }
        };
        let record = current.map(|c| c.record);
        let name = self.name.resolve(
            record.map(|r| r.name.clone()),
            || id.to_string(),
            |name| {
                if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
                    Err(invalid(
                        "name",
                        &name,
                        "at most 256 characters, no control characters",
                    ))
                } else {
                    Ok(name)
                }
            },
        )?;
        let endpoints = match (self.endpoints, record) {
            (Patch::Absent, Some(record)) => record.endpoints.clone(),
            (Patch::Absent, None) => {
                return Err(ApiError::unprocessable(
                    "endpoints is missing: must be at least one endpoint",
                ));
            }
            (Patch::Null, _) => {
                return Err(ApiError::unprocessable(
                    "endpoints = null is invalid: must be at least one endpoint",
                ));
            }
            (Patch::Value(list), _) if list.is_empty() => {
                return Err(invalid("endpoints", [(); 0], "at least one endpoint"));
            }
            (Patch::Value(list), _) => list
                .into_iter()
                .enumerate()
                .map(|(i, e)| e.into_endpoint(i, record))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let pool = self.pool.resolve(
            current.map(|c| c.pool.clone()),
            PoolConfig::default,
            |update| {
                match current {
                    Some(current) => update.apply(current.pool),
                    None => update.fresh(),
                }
                .map_err(|e| ApiError::unprocessable(format!("pool: {}", e.detail)))
            },
        )?;
        let enabled = self
            .enabled
            .resolve(record.map(|r| r.enabled), || true, Ok)?;
        let credentials = self.credentials.resolve(
            record.map(|r| r.credentials.clone()),
            || None,
            |c| c.check().map(Some),
        )?;
        let forward_token =
            self.forward_token
                .resolve(record.map(|r| r.forward_token), || false, Ok)?;
        let access = self.access.resolve(
            record.map(|r| r.access.clone()),
            || None,
            |a| a.check().map(Some),
        )?;

        read_only(
            "pooling_enabled",
            self.pooling_enabled,
            pool.enabled,
            "change pool.enabled",
        )?;
        let strategy = self
            .strategy
            .map(|s| StrategyKind::from_str(&s).map_err(bad))
            .transpose()?;
        read_only(
            "strategy",
            strategy.map(StrategyKind::as_str),
            pool.strategy.as_str(),
            "change pool.strategy",
        )?;
        let files = files(&id);
        const FILE: &str = "the configuration file's [[servers]] table sets it";
        read_only(
            "call_timeout",
            self.call_timeout,
            files.call_timeout.as_secs(),
            FILE,
        )?;
        let sorted = |mut names: Vec<String>| {
            names.sort_unstable();
            names.dedup();
            names
        };
        read_only(
            "client_capabilities",
            self.client_capabilities.map(sorted),
            sorted(
                files
                    .capability_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            FILE,
        )?;

        Ok(ServerRecord {
            id,
            name,
            endpoints,
            pool,
            enabled,
            credentials,
            forward_token,
            access,
        })
    }

    /// The URLs of the body's endpoints that `current` does not have (all of them for a new
    /// server), with their index: those the upstream policy must check. A masked URL stands
    /// for a stored one and is not among them.
    pub(super) fn new_urls<'a>(
        &'a self,
        current: Option<&'a ServerRecord>,
    ) -> impl Iterator<Item = (usize, &'a str)> + 'a {
        let endpoints = match &self.endpoints {
            Patch::Value(endpoints) => endpoints.as_slice(),
            Patch::Absent | Patch::Null => &[],
        };
        endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.url.as_deref()?)))
            .filter(move |(_, url)| {
                !url.contains(REDACTED)
                    && current.is_none_or(|r| !r.endpoints.iter().any(|e| &*e.url == *url))
            })
    }
}

impl EndpointBody {
    /// Endpoint `i` of a body for the server `current` (`None`: a new server).
    fn into_endpoint(self, i: usize, current: Option<&ServerRecord>) -> Result<Endpoint, ApiError> {
        let transport = match &self.transport {
            None => TransportKind::StreamableHttp,
            Some(t) => t.parse().map_err(|_| {
                invalid(
                    &format!("endpoints[{i}].transport"),
                    t,
                    "streamable_http, sse or websocket (or stdio, for one of the server's own \
                     stdio endpoints)",
                )
            })?,
        };
        let weight = self.weight.unwrap_or(1);
        let allowed = format!("1 to {MAX_WEIGHT}");
        let weight = u32::try_from(weight)
            .ok()
            .filter(|w| (1..=MAX_WEIGHT).contains(w))
            .ok_or_else(|| invalid(&format!("endpoints[{i}].weight"), weight, &allowed))?;
        let lifecycle = match self.lifecycle.as_deref() {
            None | Some("initialize") => Lifecycle::Initialize,
            Some("discover") => Lifecycle::Discover,
            Some("auto") => Lifecycle::Auto,
            Some(other) => {
                return Err(invalid(
                    &format!("endpoints[{i}].lifecycle"),
                    other,
                    "initialize, discover or auto",
                ));
            }
        };
        let endpoint = if transport == TransportKind::Stdio {
            let command = self.own_stdio(i, current)?;
            Endpoint::stdio(command)
        } else {
            for (field, given) in [
                ("command", self.command.is_some()),
                ("args", self.args.is_some()),
                ("env", self.env.is_some()),
                ("cwd", self.cwd.is_some()),
            ] {
                if given {
                    return Err(ApiError::unprocessable(format!(
                        "endpoints[{i}].{field} is invalid here: only a stdio endpoint takes \
                         command, args, env and cwd"
                    )));
                }
            }
            let url = self.url.ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "endpoints[{i}].url is missing: must be the endpoint's URL"
                ))
            })?;
            Endpoint::new(unmask_url(i, url, current)?, transport)
        };
        let endpoint = endpoint
            .and_then(|e| e.with_weight(weight))
            .map_err(|e| ApiError::unprocessable(format!("endpoints[{i}].url: {e}")))?;
        endpoint
            .with_lifecycle(lifecycle)
            .map_err(|e| ApiError::unprocessable(format!("endpoints[{i}].lifecycle: {e}")))
    }

    /// The command of the stdio endpoint of `current` this body names (see [`EndpointBody`]).
    fn own_stdio(
        &self,
        i: usize,
        current: Option<&ServerRecord>,
    ) -> Result<StdioCommand, ApiError> {
        let command = self.command.as_deref().ok_or_else(|| {
            ApiError::unprocessable(format!(
                "endpoints[{i}].command is missing: a stdio endpoint names its program"
            ))
        })?;
        if let Some(url) = self
            .url
            .as_deref()
            .filter(|u| *u != format!("stdio:{command}"))
        {
            return Err(invalid(
                &format!("endpoints[{i}].url"),
                redact_url(url),
                &format!("absent or \"stdio:{command}\" for a stdio endpoint"),
            ));
        }
        let args = self.args.as_deref().unwrap_or_default();
        let env = self.env.clone().unwrap_or_default();
        let named = |c: &StdioCommand| {
            c.command == command
                && c.args == args
                && c.cwd == self.cwd
                && c.env.len() == env.len()
                && c.env.iter().all(|(name, value)| {
                    env.get(name)
                        .is_some_and(|given| given == value || given == REDACTED)
                })
        };
        current
            .into_iter()
            .flat_map(|r| &r.endpoints)
            .filter_map(|e| e.stdio.as_deref())
            .find(|c| named(c))
            .cloned()
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "endpoints[{i}] (stdio, command {command:?}) is not one of this server's \
                     stdio endpoints: must repeat one as GET shows it (env values as {REDACTED} \
                     or as they are), with any weight and lifecycle. The programs the gateway \
                     starts come from its configuration file, never from the API"
                ))
            })
    }
}

/// The URL endpoint `i` of a body stands for: `url` itself, unless it holds the mark of a
/// hidden secret (`***`); then the URL of `current` whose redacted form it is (see
/// [`EndpointBody`]).
fn unmask_url(i: usize, url: String, current: Option<&ServerRecord>) -> Result<String, ApiError> {
    if !url.contains(REDACTED) {
        return Ok(url);
    }
    let endpoints = current.map_or(&[][..], |r| r.endpoints.as_slice());
    let masks = |e: &&Endpoint| e.stdio.is_none() && redact_url(&e.url) == url;
    let found = match endpoints.get(i).filter(masks) {
        Some(own) => Ok(own),
        None => {
            let mut fitting = endpoints.iter().filter(masks);
            match fitting.next() {
                Some(first) if fitting.all(|e| e.url == first.url) => Ok(first),
                Some(_) => Err("the hidden form of several different URLs of this server"),
                None => Err("not the hidden form of a URL of this server"),
            }
        }
    };
    found.map(|e| e.url.to_string()).map_err(|why| {
        ApiError::unprocessable(format!(
            "endpoints[{i}].url = {:?} shows {REDACTED} where GET hides a secret, but it is \
             {why}: send the whole URL",
            redact_url(&url)
        ))
    })
}

impl CredentialsBody {
    fn check(self) -> Result<CredentialsRef, ApiError> {
        let header = self.header.to_ascii_lowercase();
        let valid = http::HeaderName::from_lowercase(header.as_bytes()).is_ok();
        if !valid || NEVER_FORWARDED.contains(&header.as_str()) {
            return Err(invalid(
                "credentials.header",
                &self.header,
                "an HTTP header name that may be forwarded (not hop-by-hop, not Host or \
                 Content-Length, not an internal session header)",
            ));
        }
        let env_ok =
            self.env.len() <= 128
                && self.env.chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                })
                && !self.env.is_empty();
        if !env_ok {
            return Err(invalid(
                "credentials.env",
                &self.env,
                "an environment variable name: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters",
            ));
        }
        Ok(CredentialsRef {
            header,
            env: self.env,
        })
    }
}
