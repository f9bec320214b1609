//! Interned names of custom kinds ([`TransportKind::custom`](crate::TransportKind::custom),
//! [`StrategyKind::custom`](crate::StrategyKind::custom)): a kind stays `Copy`, and only a
//! program's own transports, strategies and configuration files create names.

use std::{collections::BTreeSet, sync::Mutex};

/// One table of interned names.
pub(crate) struct Names(Mutex<BTreeSet<&'static str>>);

impl Names {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new(BTreeSet::new()))
    }

    /// Whether `name` is 1 to 64 characters of `[a-z0-9_]` starting with a letter.
    pub(crate) fn valid(name: &str) -> bool {
        name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    /// `name`, interned (each name is leaked once).
    pub(crate) fn intern(&self, name: &str) -> &'static str {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match names.get(name) {
            Some(&interned) => interned,
            None => {
                let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
                names.insert(leaked);
                leaked
            }
        }
    }

    /// `name` if it was interned.
    pub(crate) fn get(&self, name: &str) -> Option<&'static str> {
        let names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        names.get(name).copied()
    }

    /// `, or a custom one: a, b` for the names interned so far, or nothing.
    pub(crate) fn listed(&self) -> String {
        let names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if names.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = names.iter().copied().collect();
        format!(", or a custom one: {}", names.join(", "))
    }
}
