//! The REST API handlers and their schemas (the seed setup guide's paths and field names).

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use mcp_pool::{
    Endpoint, HealthStatus, Lifecycle, PoolConfig, ServerId, ServerStats, StrategyKind,
    TransportKind,
    traits::{
        Access, ChosenSizes, CredentialsRef, ID_RULE, MAX_WEIGHT, NEVER_FORWARDED, REDACTED,
        ServerRecord, StdioCommand, check_range, redact_url,
    },
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AppState,
    auth::{Admin, Caller},
    error::{ApiError, ApiJson, ErrorBody},
    registry::{FileSettings, RegistryError},
};

/// One endpoint (replica) of a server, as `GET /servers/{id}` shows it and `POST`/`PUT` take
/// it back (`EndpointBody`). Secrets are masked as `***`: a URL's password and
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
    /// Whether pooling is enabled for it: `pool.enabled`, repeated for the seed's clients.
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
/// rule ends). It is also how `PUT /servers/{id}/pool/config` and the seed gateway's server
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
    /// defaults, pooling off as the seed's servers).
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
    fn new_urls<'a>(
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

/// A server's pool configuration. Durations are whole seconds; ranges as DESIGN §6.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolConfigView {
    /// Pooling on.
    pub enabled: bool,
    /// `round_robin`, `least_connections`, `sticky`, `weighted`, `none` or `peak_ewma` (or a
    /// custom strategy's name).
    pub strategy: String,
    /// Target size, 1-1000.
    pub size: u32,
    /// Sessions kept warm, 1-1000.
    pub min_size: u32,
    /// Hard cap, 1-1000.
    pub max_size: u32,
    /// Acquire timeout, 1-300 s.
    pub timeout: u64,
    /// Idle close after, 60-86400 s.
    pub max_idle_time: u64,
    /// Autoscaler on.
    pub auto_scale: bool,
    /// Health check period, 10-3600 s.
    pub health_check_interval: u64,
    /// Autoscaler period, 60-3600 s.
    pub rebalance_interval: u64,
    /// Session age cap, 60-86400 s.
    pub max_lifetime: u64,
    /// Healthy at or above this score, 0-100 %.
    pub health_check_threshold: u8,
    /// Leases per session, 1-256.
    pub session_concurrency: u32,
}

impl From<&PoolConfig> for PoolConfigView {
    fn from(c: &PoolConfig) -> Self {
        Self {
            enabled: c.enabled,
            strategy: c.strategy.as_str().to_owned(),
            size: c.size,
            min_size: c.min_size,
            max_size: c.max_size,
            timeout: c.timeout.as_secs(),
            max_idle_time: c.max_idle_time.as_secs(),
            auto_scale: c.auto_scale,
            health_check_interval: c.health_check_interval.as_secs(),
            rebalance_interval: c.rebalance_interval.as_secs(),
            max_lifetime: c.max_lifetime.as_secs(),
            health_check_threshold: c.health_check_threshold,
            session_concurrency: c.session_concurrency,
        }
    }
}

/// The body of `PUT /servers/{id}/pool/config` (and the `pool` of a server's body): every
/// field optional; absent fields keep their current value, except that the sizes it leaves
/// out follow the ones it sets, clamped (`{"max_size": 4}` over a `size` of 5 makes it 4).
/// Durations in seconds.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfigUpdate {
    /// Pooling on.
    pub enabled: Option<bool>,
    /// `round_robin`, `least_connections`, `sticky`, `weighted`, `none` or `peak_ewma` (or a
    /// custom strategy's name).
    pub strategy: Option<String>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub size: Option<u64>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub min_size: Option<u64>,
    /// 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_size: Option<u64>,
    /// 1-300 s.
    #[schema(minimum = 1, maximum = 300)]
    pub timeout: Option<u64>,
    /// 60-86400 s.
    #[schema(minimum = 60, maximum = 86400)]
    pub max_idle_time: Option<u64>,
    /// Autoscaler on.
    pub auto_scale: Option<bool>,
    /// 10-3600 s.
    #[schema(minimum = 10, maximum = 3600)]
    pub health_check_interval: Option<u64>,
    /// 60-3600 s.
    #[schema(minimum = 60, maximum = 3600)]
    pub rebalance_interval: Option<u64>,
    /// 60-86400 s.
    #[schema(minimum = 60, maximum = 86400)]
    pub max_lifetime: Option<u64>,
    /// 0-100 %.
    #[schema(minimum = 0, maximum = 100)]
    pub health_check_threshold: Option<u64>,
    /// 1-256.
    #[schema(minimum = 1, maximum = 256)]
    pub session_concurrency: Option<u64>,
}

impl PoolConfigUpdate {
    /// `current` with the fields present replaced, every one range-checked, and the sizes
    /// absent following the sizes present ([`PoolConfig::follow_sizes`]).
    ///
    /// # Errors
    /// 422 naming the field, the value and the range; nothing is applied then.
    pub fn apply(&self, current: &PoolConfig) -> Result<PoolConfig, ApiError> {
        let c = self.merge(current)?;
        c.validate().map_err(bad)?;
        Ok(c)
    }

    /// A new config: the defaults with the fields present replaced, the sizes not given
    /// following the ones given.
    ///
    /// # Errors
    /// As [`apply`](Self::apply).
    pub fn fresh(&self) -> Result<PoolConfig, ApiError> {
        let c = self.merge(&PoolConfig::default())?.normalized();
        c.validate().map_err(bad)?;
        Ok(c)
    }

    fn merge(&self, current: &PoolConfig) -> Result<PoolConfig, ApiError> {
        let mut c = current.clone();
        let num = |field: &'static str, v: Option<u64>| -> Result<Option<u64>, ApiError> {
            match v {
                Some(v) => check_range(field, v).map(|()| Some(v)).map_err(bad),
                None => Ok(None),
            }
        };
        // Each value was range-checked above, so the narrowing casts below are lossless.
        if let Some(v) = num("size", self.size)? {
            c.size = v as u32;
        }
        if let Some(v) = num("min_size", self.min_size)? {
            c.min_size = v as u32;
        }
        if let Some(v) = num("max_size", self.max_size)? {
            c.max_size = v as u32;
        }
        if let Some(v) = num("timeout", self.timeout)? {
            c.timeout = Duration::from_secs(v);
        }
        if let Some(v) = num("max_idle_time", self.max_idle_time)? {
            c.max_idle_time = Duration::from_secs(v);
        }
        if let Some(v) = num("health_check_interval", self.health_check_interval)? {
            c.health_check_interval = Duration::from_secs(v);
        }
        if let Some(v) = num("rebalance_interval", self.rebalance_interval)? {
            c.rebalance_interval = Duration::from_secs(v);
        }
        if let Some(v) = num("max_lifetime", self.max_lifetime)? {
            c.max_lifetime = Duration::from_secs(v);
        }
        if let Some(v) = num("health_check_threshold", self.health_check_threshold)? {
            c.health_check_threshold = v as u8;
        }
        if let Some(v) = num("session_concurrency", self.session_concurrency)? {
            c.session_concurrency = v as u32;
        }
        if let Some(s) = &self.strategy {
            c.strategy = StrategyKind::from_str(s).map_err(bad)?;
        }
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
        if let Some(v) = self.auto_scale {
            c.auto_scale = v;
        }
        // The sizes it leaves out follow the ones it sets, as the configuration's do.
        Ok(c.follow_sizes(ChosenSizes {
            min_size: self.min_size.is_some(),
            size: self.size.is_some(),
            max_size: self.max_size.is_some(),
        }))
    }
}

fn bad(e: mcp_pool::traits::ConfigError) -> ApiError {
    ApiError::unprocessable(e.to_string())
}

/// Health of a pool: `healthy`, `degraded`, `unhealthy` or `unknown` (no data yet).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Score at or above `health_check_threshold`.
    Healthy,
    /// Score from half the threshold up to it.
    Degraded,
    /// Below half the threshold, or every circuit open.
    Unhealthy,
    /// No operation in the window.
    Unknown,
}

impl From<HealthStatus> for Health {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Healthy => Self::Healthy,
            HealthStatus::Degraded => Self::Degraded,
            HealthStatus::Unhealthy => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }
}

/// One server's pool statistics, counters since the gateway started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolStatsView {
    /// The pool's id (the server id: one pool per server).
    pub pool_id: String,
    /// The server id.
    pub server_id: String,
    /// Whether pooling is enabled.
    pub enabled: bool,
    /// The strategy's name.
    pub strategy: String,
    /// Sessions open.
    pub sessions_total: u32,
    /// Sessions with a lease out.
    pub sessions_active: u32,
    /// Sessions free to take a lease.
    pub sessions_available: u32,
    /// Health score in percent over the last 5 minutes; null before any operation.
    pub health_score: Option<u8>,
    /// Health status.
    pub health_status: Health,
    /// Leases handed out.
    pub acquisitions: u64,
    /// Leases returned.
    pub releases: u64,
    /// Acquires served by an existing session.
    pub hits: u64,
    /// Acquires that created a session.
    pub misses: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Sessions evicted.
    pub evictions: u64,
}

impl From<&ServerStats> for PoolStatsView {
    fn from(s: &ServerStats) -> Self {
        Self {
            pool_id: s.server.to_string(),
            server_id: s.server.to_string(),
            enabled: false,
            strategy: s.strategy.clone(),
            sessions_total: s.sessions_total,
            sessions_active: s.sessions_active,
            sessions_available: s.sessions_available,
            health_score: s.health_score,
            health_status: s.health_status.into(),
            acquisitions: s.acquisitions,
            releases: s.releases,
            hits: s.hits,
            misses: s.misses,
            timeouts: s.timeouts,
            evictions: s.evictions,
        }
    }
}

/// One server's pool health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolHealthView {
    /// The server id.
    pub server_id: String,
    /// Health status.
    pub status: Health,
    /// Score in percent; null before any operation.
    pub score: Option<u8>,
    /// Sessions open.
    pub total: u32,
    /// Sessions in use.
    pub active: u32,
    /// Sessions free.
    pub available: u32,
    /// `hits / (hits + misses)` since start, 0 to 1; 0 before any acquire.
    pub hit_rate: f64,
    /// Each endpoint's health and circuit breaker.
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint's health and circuit breaker state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndpointHealth {
    /// The URL, redacted (`https://***@host/mcp`).
    pub url: String,
    /// Health status (`unhealthy` while its circuit is not closed).
    pub status: Health,
    /// Score in percent over the last 5 minutes; null before any operation; 0 while its
    /// circuit is not closed.
    pub score: Option<u8>,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// The last failure seen on it, in words (URLs redacted); null before any, and for callers
    /// without the admin role (the words may quote the upstream, such as a stdio server's
    /// last stderr line).
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    pub last_error_age_secs: Option<f64>,
}

/// A strategy: what it does and when to pick it (README "Choosing a strategy").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StrategyInfo {
    /// Its configuration name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// When to pick it.
    pub when_to_use: String,
}

/// A short status answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    /// `healthy`, `ready`, `drained` or `reset`.
    pub status: String,
}

fn server_id(id: &str) -> Result<ServerId, ApiError> {
    ServerId::new(id).map_err(|_| ApiError::server_not_found(id))
}

fn server_stats(state: &AppState, id: &str) -> Result<(ServerStats, PoolConfig), ApiError> {
    let sid = server_id(id)?;
    let config = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(id))?;
    let stats = state
        .pool
        .stats()
        .servers
        .into_iter()
        .find(|s| s.server == sid)
        .ok_or_else(|| ApiError::server_not_found(id))?;
    Ok((stats, config))
}

/// The caller's view of server `r`: an admin's shows where its credential comes from, who
/// may use it and its stdio endpoints' commands; a user's does not.
fn server_info(state: &AppState, r: &ServerRecord, admin: bool) -> ServerInfo {
    let pool = state.registry.pool_in_force(r);
    let files = state.registry.file_settings(&r.id);
    ServerInfo {
        id: r.id.to_string(),
        endpoints: r
            .endpoints
            .iter()
            .map(|e| {
                let stdio = e.stdio.as_deref().filter(|_| admin);
                EndpointInfo {
                    url: redact_url(&e.url).into_owned(),
                    transport: e.transport.to_string(),
                    weight: e.weight,
                    lifecycle: e.lifecycle.as_str().to_owned(),
                    command: stdio.map(|c| c.command.clone()),
                    args: stdio.map(|c| c.args.clone()),
                    env: stdio.map(|c| {
                        c.env
                            .keys()
                            .map(|name| (name.clone(), REDACTED.to_owned()))
                            .collect()
                    }),
                    cwd: stdio.and_then(|c| c.cwd.clone()),
                }
            })
            .collect(),
        pooling_enabled: pool.enabled,
        strategy: pool.strategy.as_str().to_owned(),
        pool: (&pool).into(),
        name: r.name.clone(),
        enabled: r.enabled,
        credentials: r
            .credentials
            .as_ref()
            .filter(|_| admin)
            .map(|c| CredentialsBody {
                header: c.header.clone(),
                env: c.env.clone(),
            }),
        forward_token: r.forward_token,
        access: r.access.as_ref().filter(|_| admin).map(|a| AccessBody {
            users: a.users.clone(),
            groups: a.groups.clone(),
        }),
        call_timeout: files.call_timeout.as_secs(),
        client_capabilities: files
            .capability_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(id) => ApiError::server_not_found(id.as_str()),
            RegistryError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RegistryError::Pool(e) => e.into(),
            RegistryError::Credentials { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            RegistryError::Backend(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

/// List the servers, disabled ones included.
#[utoipa::path(get, path = "/servers", tag = "servers",
    responses((status = 200, body = Vec<ServerInfo>), (status = 401, body = ErrorBody)))]
pub async fn list_servers(State(state): State<AppState>, caller: Caller) -> Json<Vec<ServerInfo>> {
    let records = state.registry.list().await;
    Json(
        records
            .iter()
            .filter(|r| caller.may_use(&state.registry, &r.id))
            .map(|r| server_info(&state, r, caller.admin))
            .collect(),
    )
}

/// One server.
#[utoipa::path(get, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = ServerInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_server(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ServerInfo>, ApiError> {
    let sid = usable(&state, &caller, &id)?;
    let record = state
        .registry
        .get(&sid)
        .await
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json(server_info(&state, &record, caller.admin)))
}

/// The server `id` names, when the caller may use it; else 404 as for an unknown server (a
/// user learns nothing of servers they may not use).
fn usable(state: &AppState, caller: &Caller, id: &str) -> Result<ServerId, ApiError> {
    let sid = server_id(id)?;
    if caller.may_use(&state.registry, &sid) {
        Ok(sid)
    } else {
        Err(ApiError::server_not_found(id))
    }
}

/// Refuses endpoint URLs (with their index in the body) whose host is an address the
/// operator's policy denies ([`crate::policy::UpstreamPolicy`]): 422 naming the endpoint, the
/// address and the network.
async fn check_upstreams(
    state: &AppState,
    urls: impl IntoIterator<Item = (usize, &str)>,
) -> Result<(), ApiError> {
    for (i, url) in urls {
        let Ok(url) = url::Url::parse(url) else {
            continue; // refused by Endpoint::new; stdio endpoints have no host
        };
        if let Err(reason) = state.policy.upstream.check_url(&url).await {
            return Err(ApiError::unprocessable(format!(
                "endpoints[{i}].url is not allowed: {reason}"
            )));
        }
    }
    Ok(())
}

/// Create a server: persisted in the state backend, its pool created at once (when enabled).
/// Fields the body leaves out take their defaults (see `ServerBody`); stdio endpoints are
/// refused (they come from the configuration file).
#[utoipa::path(post, path = "/servers", tag = "servers",
    request_body = ServerBody,
    responses((status = 201, body = ServerInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn create_server(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<ServerBody>,
) -> Result<(StatusCode, Json<ServerInfo>), ApiError> {
    check_upstreams(&state, body.new_urls(None)).await?;
    let record = body.into_record(None, None, |id| state.registry.file_settings(id))?;
    state.registry.create(record.clone()).await?;
    tracing::info!(server = %record.id, enabled = record.enabled, "server created");
    Ok((
        StatusCode::CREATED,
        Json(server_info(&state, &record, true)),
    ))
}

/// Change a server: the fields the body names, every other one kept (absent: kept; `null`:
/// back to its default; see `ServerBody` for why). A `GET /servers/{id}` body sent back
/// unchanged changes nothing: masked secrets (`***` in a URL or a stdio `env` value) stand
/// for the stored values, and read-only fields must agree with the server (422 otherwise).
/// A changed endpoint (URL, transport, weight) or credentials reference drains its pool; a
/// changed `name` alone does not; `enabled: false` removes its pool, and its record keeps the
/// pool config in force, which `enabled: true` brings back.
#[utoipa::path(put, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    request_body = ServerBody,
    responses((status = 200, body = ServerInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn replace_server(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ServerBody>,
) -> Result<Json<ServerInfo>, ApiError> {
    let sid = server_id(&id)?;
    let before = state
        .registry
        .get(&sid)
        .await
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    // Checked before the registry's writes are held (a name may take a DNS lookup). A URL the
    // server had then was checked when it came, so what the update keeps or adds is checked.
    check_upstreams(&state, body.new_urls(Some(&before))).await?;
    let files = state.registry.file_settings(&sid);
    let record = state
        .registry
        .update(&sid, |record, pool| {
            body.into_record(Some(&sid), Some(Current { record, pool }), |_| files)
        })
        .await?;
    if !record.enabled {
        // Its downstream sessions end with its pool.
        state.mcp.forget(&sid);
    }
    tracing::info!(server = %sid, enabled = record.enabled, "server replaced");
    Ok(Json(server_info(&state, &record, true)))
}

/// Delete a server: its record and saved pool config; its pool is drained and removed.
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "server id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete_server(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let sid = server_id(&id)?;
    state.registry.delete(&sid).await?;
    state.mcp.forget(&sid);
    tracing::info!(server = %sid, "server deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A server's pool configuration.
#[utoipa::path(get, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = PoolConfigView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_pool_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let config = state
        .pool
        .server_config(&usable(&state, &caller, &id)?)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json((&config).into()))
}

/// Change a server's pool configuration; saved in the state backend and applied at once.
#[utoipa::path(put, path = "/servers/{id}/pool/config", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    request_body = PoolConfigUpdate,
    responses((status = 200, body = PoolConfigView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_pool_config(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(update): ApiJson<PoolConfigUpdate>,
) -> Result<Json<PoolConfigView>, ApiError> {
    let sid = server_id(&id)?;
    let current = state
        .pool
        .server_config(&sid)
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    let next = update.apply(&current)?;
    crate::log_pool_update(&sid, &next);
    save_pool_config(&state, &sid, next).await
}

/// Saves `next` for `sid` (the backend, then this pool) and answers what the pool now runs.
pub(crate) async fn save_pool_config(
    state: &AppState,
    sid: &ServerId,
    next: PoolConfig,
) -> Result<Json<PoolConfigView>, ApiError> {
    state.pool.save_pool_config(sid, next).await?;
    let applied = state
        .pool
        .server_config(sid)
        .ok_or_else(|| ApiError::server_not_found(sid.as_str()))?;
    Ok(Json((&applied).into()))
}

/// A server's pool statistics.
#[utoipa::path(get, path = "/servers/{id}/pool/stats", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = PoolStatsView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Pooling not enabled for server", body = ErrorBody)))]
pub async fn pool_stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PoolStatsView>, ApiError> {
    usable(&state, &caller, &id)?;
    let (stats, config) = server_stats(&state, &id)?;
    if !config.enabled {
        return Err(ApiError::pooling_disabled());
    }
    let mut view = PoolStatsView::from(&stats);
    view.enabled = true;
    Ok(Json(view))
}

/// Every server's pool statistics.
#[utoipa::path(get, path = "/servers/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolStatsView>), (status = 401, body = ErrorBody)))]
pub async fn all_pool_stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Json<Vec<PoolStatsView>> {
    let stats = state.pool.stats();
    Json(
        stats
            .servers
            .iter()
            .filter(|s| caller.may_use(&state.registry, &s.server))
            .map(|s| {
                let mut view = PoolStatsView::from(s);
                view.enabled = state
                    .pool
                    .server_config(&s.server)
                    .is_some_and(|c| c.enabled);
                view
            })
            .collect(),
    )
}

/// Every server's pool health.
#[utoipa::path(get, path = "/servers/pools/health", tag = "pools",
    responses((status = 200, body = Vec<PoolHealthView>), (status = 401, body = ErrorBody)))]
pub async fn pools_health(
    State(state): State<AppState>,
    caller: Caller,
) -> Json<Vec<PoolHealthView>> {
    let stats = state.pool.stats();
    Json(
        stats
            .servers
            .iter()
            .filter(|s| caller.may_use(&state.registry, &s.server))
            .map(|s| PoolHealthView {
                server_id: s.server.to_string(),
                status: s.health_status.into(),
                score: s.health_score,
                total: s.sessions_total,
                active: s.sessions_active,
                available: s.sessions_available,
                hit_rate: s.hit_rate,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| EndpointHealth {
                        url: e.url.clone(),
                        status: e.health_status.into(),
                        score: e.health_score,
                        circuit: e.circuit.to_owned(),
                        // The words may quote an upstream (a stdio server's last stderr
                        // line): an operator's, not every user's.
                        last_error: e.last_error.clone().filter(|_| caller.admin),
                        last_error_age_secs: e.last_error_age_secs.filter(|_| caller.admin),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The built-in strategies (README "Choosing a strategy").
#[utoipa::path(get, path = "/servers/pools/strategies", tag = "pools",
    responses((status = 200, body = Vec<StrategyInfo>), (status = 401, body = ErrorBody)))]
pub async fn strategies() -> Json<Vec<StrategyInfo>> {
    let rows: [(StrategyKind, &str, &str); 6] = [
        (
            StrategyKind::RoundRobin,
            "rotates over sessions with free capacity; new sessions rotate over endpoints",
            "the server is stateless (every call stands alone) and replicas are alike",
        ),
        (
            StrategyKind::LeastConnections,
            "picks the session with the fewest leases in flight",
            "calls vary in duration (some tools are slow), session_concurrency > 1",
        ),
        (
            StrategyKind::Sticky,
            "binds each downstream session to one upstream session exclusively",
            "the server is stateful (a conversation builds state in its upstream session)",
        ),
        (
            StrategyKind::Weighted,
            "smooth weighted round robin by endpoint weight (2:1 gives A B A)",
            "replicas differ in capacity",
        ),
        (
            StrategyKind::None,
            "a fresh session per acquire, closed on release",
            "the server must never share a session, or you are migrating from per-request sessions",
        ),
        (
            StrategyKind::PeakEwma,
            "the session whose endpoint answered fastest lately (peak EWMA of lease times), \
             weighted by its leases in flight",
            "one endpoint of the server can turn slow (a busy replica, a far region)",
        ),
    ];
    Json(
        rows.into_iter()
            .map(|(k, d, w)| StrategyInfo {
                name: k.as_str().to_owned(),
                description: d.to_owned(),
                when_to_use: w.to_owned(),
            })
            .collect(),
    )
}

/// Close a server's sessions (idle now, leased ones on release); the pool stays usable.
#[utoipa::path(post, path = "/servers/{id}/pool/drain", tag = "pools",
    params(("id" = String, Path, description = "server id")),
    responses((status = 200, body = StatusBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<StatusBody>, ApiError> {
    state.pool.drain_server(&server_id(&id)?)?;
    Ok(Json(StatusBody {
        status: "drained".into(),
    }))
}

/// Liveness.
#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, body = StatusBody)))]
pub async fn health() -> Json<StatusBody> {
    Json(StatusBody {
        status: "healthy".into(),
    })
}

/// Readiness: 200 once the pools are loaded, 503 once the pool is closed (shutting down).
#[utoipa::path(get, path = "/ready", tag = "health", security(()),
    responses((status = 200, body = StatusBody), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    if state.pool.is_closed() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: the pool is closed",
        ));
    }
    Ok(Json(StatusBody {
        status: "ready".into(),
    }))
}

/// Prometheus text exposition of the pool's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let handle = state.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off (SESSION_POOL_METRICS_ENABLED=false)",
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
