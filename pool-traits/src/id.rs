//! Validated names: [`ServerId`] and [`StateId`].

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize};

/// The rule every id that can reach a key, a channel or a metric label follows:
/// `^[a-zA-Z0-9_-]{1,128}$`. Nothing a client sends can then form another
/// key or channel name.
pub const ID_RULE: &str = "1 to 128 characters from [a-zA-Z0-9_-]";

/// An id was outside [`ID_RULE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: must be {ID_RULE}")]
pub struct InvalidId {
    /// What kind of id it was (`"server id"`, `"state id"`).
    pub what: &'static str,
    /// The rejected value, truncated to 64 characters.
    pub value: String,
}

pub(crate) fn check_id(what: &'static str, value: &str) -> Result<(), InvalidId> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            what,
            value: value.chars().take(64).collect(),
        })
    }
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` against [`ID_RULE`].
            ///
            /// # Errors
            /// [`InvalidId`] naming the value when it breaks the rule.
            pub fn new(value: impl AsRef<str>) -> Result<Self, InvalidId> {
                let value = value.as_ref();
                check_id($what, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_id!(
    /// The name of an upstream MCP server, e.g. `github` or `search-eu`.
    ///
    /// Follows [`ID_RULE`] because it appears in state backend keys and metric labels.
    ServerId,
    "server id"
);

validated_id!(
    /// An id used by a [`StateBackend`](crate::StateBackend): a worker, a downstream session,
    /// a counter, a channel or a slot. Follows [`ID_RULE`].
    StateId,
    "state id"
);

impl From<ServerId> for StateId {
    fn from(id: ServerId) -> Self {
        // Same rule, so no re-validation is needed.
        StateId(id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rule_and_rejects_everything_else() {
        assert!(ServerId::new("github_main-2").is_ok());
        assert!(ServerId::new("a".repeat(128)).is_ok());
        for bad in [
            "",
            "a b",
            "a:b",
            "a/b",
            "ä",
            "a.b",
            "a\nb",
            &"a".repeat(129),
        ] {
            let err = ServerId::new(bad).unwrap_err();
            assert!(err.to_string().contains("[a-zA-Z0-9_-]"), "{err}");
        }
    }

    #[test]
    fn deserialization_validates() {
        let ok: ServerId = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(ok.as_str(), "ok");
        assert!(serde_json::from_str::<ServerId>("\"no:pe\"").is_err());
    }
}
