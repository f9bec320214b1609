//! How configs and config-change events are stored and sent: JSON, as [`PoolConfig`]'s serde
//! form (durations in whole seconds).

#[cfg(feature = "redis")]
use mcp_pool_traits::ConfigChange;
use mcp_pool_traits::{BackendError, PoolConfig, ServerId};
#[cfg(feature = "redis")]
use serde::{Deserialize, Serialize};

/// A config change as Redis publishes it, after its version and a space (the version is given
/// inside the Lua script that writes the change, so the script prepends it).
#[cfg(feature = "redis")]
#[derive(Serialize, Deserialize)]
struct ConfigEvent {
    server: ServerId,
    config: Option<PoolConfig>,
}

/// `config` as stored.
pub(crate) fn encode_config(config: &PoolConfig) -> String {
    // Invariant: PoolConfig has string keys and plain values; serializing it cannot fail.
    serde_json::to_string(config).expect("a PoolConfig serializes")
}

/// A stored config of `server`.
///
/// # Errors
/// [`BackendError::InvalidData`] when it does not parse.
pub(crate) fn decode_config(
    backend: &'static str,
    server: &str,
    text: &str,
) -> Result<PoolConfig, BackendError> {
    serde_json::from_str(text).map_err(|e| BackendError::InvalidData {
        backend,
        message: format!("the stored config of server {server:?} does not parse: {e}"),
    })
}

/// A stored server id.
///
/// # Errors
/// [`BackendError::InvalidData`] when it breaks the id rule (someone else wrote the record).
pub(crate) fn decode_server(backend: &'static str, text: &str) -> Result<ServerId, BackendError> {
    ServerId::new(text).map_err(|e| BackendError::InvalidData {
        backend,
        message: format!("a stored server id is invalid: {e}"),
    })
}

/// A config change as sent to other instances, without its version.
#[cfg(feature = "redis")]
pub(crate) fn encode_change(server: &ServerId, config: Option<&PoolConfig>) -> String {
    // Invariant: as in encode_config.
    serde_json::to_string(&ConfigEvent {
        server: server.clone(),
        config: config.cloned(),
    })
    .expect("a config event serializes")
}

/// A config change received from another instance: `VERSION CHANGE-JSON`.
///
/// # Errors
/// [`BackendError::InvalidData`] when it does not parse.
#[cfg(feature = "redis")]
pub(crate) fn decode_change(
    backend: &'static str,
    text: &str,
) -> Result<ConfigChange, BackendError> {
    let invalid = |e: &dyn std::fmt::Display| BackendError::InvalidData {
        backend,
        message: format!("a config change notification does not parse: {e}"),
    };
    let (version, json) = text
        .split_once(' ')
        .ok_or_else(|| invalid(&"no version before the change"))?;
    let version = version.parse().map_err(|e| invalid(&e))?;
    let ev: ConfigEvent = serde_json::from_str(json).map_err(|e| invalid(&e))?;
    Ok(ConfigChange {
        server: ev.server,
        config: ev.config,
        version,
    })
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn a_change_round_trips_with_the_version_the_script_prepends() {
        let server = ServerId::new("srv").unwrap();
        let text = format!("42 {}", encode_change(&server, None));
        let change = decode_change("redis", &text).unwrap();
        assert!(decode_change("redis", &encode_change(&server, None)).is_err());
        assert_eq!(
            (change.server, change.config, change.version),
            (server, None, 42)
        );
    }
}
