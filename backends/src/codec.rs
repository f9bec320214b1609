//! How records and change events are stored and sent: JSON, as the records' serde form
//! ([`PoolConfig`](mcp_pool_traits::PoolConfig)'s durations in whole seconds).

use mcp_pool_traits::{BackendError, ServerId};
use serde::Serialize;

use crate::records::Versioned;

/// `value` as stored.
pub(crate) fn encode<V: Serialize>(value: &V) -> String {
    // Invariant: records have string keys and plain values; serializing cannot fail.
    serde_json::to_string(value).expect("a record serializes")
}

/// A stored record of kind `C` of `server`.
///
/// # Errors
/// [`BackendError::InvalidData`] when it does not parse.
pub(crate) fn decode<C: Versioned>(
    backend: &'static str,
    server: &str,
    text: &str,
) -> Result<C::Value, BackendError> {
    serde_json::from_str(text).map_err(|e| BackendError::InvalidData {
        backend,
        message: format!(
            "the stored {} of server {server:?} does not parse: {e}",
            C::WHAT
        ),
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

/// A change as sent to other instances, with version 0: the Lua script that writes it
/// prepends the real version.
#[cfg(feature = "redis")]
pub(crate) fn encode_change<C: Versioned>(server: &ServerId, value: Option<&C::Value>) -> String {
    encode(&C::new(server.clone(), value.cloned(), 0))
}

/// A change received from another instance: `VERSION CHANGE-JSON`.
///
/// # Errors
/// [`BackendError::InvalidData`] when it does not parse.
#[cfg(feature = "redis")]
pub(crate) fn decode_change<C: Versioned>(
    backend: &'static str,
    text: &str,
) -> Result<C, BackendError> {
    let invalid = |e: &dyn std::fmt::Display| BackendError::InvalidData {
        backend,
        message: format!("a {} change notification does not parse: {e}", C::WHAT),
    };
    let (version, json) = text
        .split_once(' ')
        .ok_or_else(|| invalid(&"no version before the change"))?;
    let version = version.parse().map_err(|e| invalid(&e))?;
    let change: C = serde_json::from_str(json).map_err(|e| invalid(&e))?;
    Ok(C::new(
        change.server().clone(),
        change.value().cloned(),
        version,
    ))
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use mcp_pool_traits::ConfigChange;

    use super::*;

    #[test]
    fn a_change_round_trips_with_the_version_the_script_prepends() {
        let server = ServerId::new("srv").unwrap();
        let event = encode_change::<ConfigChange>(&server, None);
        let change: ConfigChange = decode_change("redis", &format!("42 {event}")).unwrap();
        assert!(decode_change::<ConfigChange>("redis", &event).is_err());
        assert_eq!(
            (change.server, change.config, change.version),
            (server, None, 42)
        );
    }
}
