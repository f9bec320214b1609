//! Who a request acts for: identity hashing (DESIGN §4) and the [`PoolKey`].

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::{ServerId, TransportKind};

/// The identity headers of the reference pool, hashed into every key unless configured otherwise.
pub const DEFAULT_IDENTITY_HEADERS: [&str; 5] = [
    "authorization",
    "x-tenant-id",
    "x-user-id",
    "x-api-key",
    "cookie",
];

/// Headers internal to the gateway that must never reach an upstream server
/// (matched case-insensitively; DESIGN §4).
pub const INTERNAL_HEADERS: [&str; 2] = ["x-mcp-session-id", "mcp-session-id"];

/// A SHA-256 digest, or the literal `anonymous` when there was nothing to hash.
///
/// Displayed as 64 lowercase hex characters (or `anonymous`); [`short`](Self::short) gives the
/// 8-character prefix used in stats. Raw header values are never kept: only this digest is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest256 {
    /// No identity was present.
    Anonymous,
    /// The SHA-256 of the identity material.
    Sha256([u8; 32]),
}

impl Digest256 {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self::Sha256(Sha256::digest(bytes.as_ref()).into())
    }

    /// `true` for [`Digest256::Anonymous`].
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous)
    }

    /// The first 8 hex characters (or `anonymous`): what stats and logs show.
    pub fn short(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::Sha256(d) => hex::encode(&d[..4]),
        }
    }
}

impl fmt::Display for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::Sha256(d) => f.write_str(&hex::encode(d)),
        }
    }
}

impl fmt::Debug for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output lands in logs: show the prefix only.
        write!(f, "Digest256({})", self.short())
    }
}

impl Serialize for Digest256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Turns a request into an identity string, e.g. the `sub` claim of a verified JWT, so that a
/// rotating token does not create a new key per rotation (DESIGN §2.8).
///
/// Returning `None` or an error falls back to header hashing. The value is hashed before use and
/// never stored.
pub trait IdentityExtractor: Send + Sync + fmt::Debug + 'static {
    /// The identity of the request carrying `headers`, if this extractor can tell.
    ///
    /// # Errors
    /// Any error; the pool logs its message at debug level and falls back to header hashing.
    fn extract(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>>;
}

/// How identities are derived from request headers (DESIGN §4).
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    headers: Arc<[HeaderName]>,
    extractor: Option<Arc<dyn IdentityExtractor>>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            headers: DEFAULT_IDENTITY_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            extractor: None,
        }
    }
}

impl IdentityConfig {
    /// Identity from these headers instead of [`DEFAULT_IDENTITY_HEADERS`] (names are
    /// case-insensitive, as HTTP header names are).
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// Tries `extractor` first; header hashing is the fallback.
    pub fn with_extractor(mut self, extractor: Arc<dyn IdentityExtractor>) -> Self {
        self.extractor = Some(extractor);
        self
    }

    /// The configured identity header names, lowercase.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// The identity digest of a request.
    ///
    /// The extractor's value wins when it returns one (its SHA-256, as the reference pool).
    /// Otherwise every present identity header contributes `"name:value"` (name lowercase, one
    /// entry per value); the sorted list is serialized as a JSON array the way Python's
    /// `json.dumps(sorted(parts))` writes it (`", "` between items) and hashed with SHA-256.
    /// No identity header gives [`Digest256::Anonymous`].
    pub fn identity(&self, headers: &HeaderMap) -> Digest256 {
        if let Some(extractor) = &self.extractor {
            match extractor.extract(headers) {
                Ok(Some(id)) if !id.is_empty() => return Digest256::of(id),
                Ok(_) => {}
                Err(error) => tracing_free_debug(&*error),
            }
        }
        let mut parts: Vec<String> = Vec::new();
        for name in self.headers.iter() {
            for value in headers.get_all(name) {
                parts.push(format!(
                    "{}:{}",
                    name.as_str(),
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
        }
        if parts.is_empty() {
            return Digest256::Anonymous;
        }
        parts.sort_unstable();
        Digest256::of(python_json_list(&parts))
    }
}

/// `json.dumps(list_of_str)` with Python's defaults: `", "` separators, non-ASCII as `\\uXXXX`.
fn python_json_list(parts: &[String]) -> String {
    let mut out = String::from("[");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        for c in part.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

// Extractor errors are expected (an unsigned token, a missing claim): this crate has no logger,
// and their text may carry token material, so they are dropped here.
fn tracing_free_debug(_error: &(dyn std::error::Error + Send + Sync)) {}

/// Who an acquire is for: the hashed user and the hashed identity. Compute it once per downstream
/// request and pass it to every acquire of that request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Principal {
    /// SHA-256 of the explicit user identity, [`Digest256::Anonymous`] when none was given.
    pub user: Digest256,
    /// The identity digest of [`IdentityConfig::identity`].
    pub identity: Digest256,
}

impl Principal {
    /// The principal with neither user nor identity.
    pub const ANONYMOUS: Principal = Principal {
        user: Digest256::Anonymous,
        identity: Digest256::Anonymous,
    };

    /// A principal from an optional explicit user identity and request headers.
    pub fn new(user: Option<&str>, headers: &HeaderMap, config: &IdentityConfig) -> Self {
        Self {
            user: user.map_or(Digest256::Anonymous, Digest256::of),
            identity: config.identity(headers),
        }
    }

    /// A principal for a user with no identity headers; handy in tests and examples.
    pub fn user(user: &str) -> Self {
        Self {
            user: Digest256::of(user),
            identity: Digest256::Anonymous,
        }
    }
}

/// What sessions are pooled by: (user, identity, server, transport). Sessions never cross keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PoolKey {
    /// The hashed user.
    pub user: Digest256,
    /// The hashed identity.
    pub identity: Digest256,
    /// The upstream server.
    pub server: ServerId,
    /// How it is reached.
    pub transport: TransportKind,
}

impl PoolKey {
    /// The key of `principal` on `server` over `transport`.
    pub fn new(principal: Principal, server: ServerId, transport: TransportKind) -> Self {
        Self {
            user: principal.user,
            identity: principal.identity,
            server,
            transport,
        }
    }

    /// The principal part of the key.
    pub fn principal(&self) -> Principal {
        Principal {
            user: self.user,
            identity: self.identity,
        }
    }

    /// A short label for stats and logs: `server/transport/user8/identity8` with 8-character
    /// hash prefixes, never raw identities.
    pub fn short(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.server,
            self.transport,
            self.user.short(),
            self.identity.short()
        )
    }
}

/// Removes the [`INTERNAL_HEADERS`] and `accept` from `headers`: what a transport may forward
/// upstream. Transports set `Accept` themselves.
pub fn forwardable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let internal = INTERNAL_HEADERS.contains(&name.as_str()) || name == http::header::ACCEPT;
        if !internal {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn matches_the_reference_pool_hash() {
        // The Python pool: sha256(json.dumps(sorted(["x-tenant-id:acme", "authorization:Bearer t"])))
        let h = headers(&[("X-Tenant-ID", "acme"), ("Authorization", "Bearer t")]);
        let id = IdentityConfig::default().identity(&h);
        let expected = Digest256::of(r#"["authorization:Bearer t", "x-tenant-id:acme"]"#);
        assert_eq!(id, expected);
        assert_eq!(id.to_string().len(), 64);
    }

    #[test]
    fn json_list_is_written_as_python_writes_it() {
        // python3 -c 'import json; print(json.dumps(["a\"b\\c\n\u00e9\U0001F600", "z"]))'
        let parts = ["a\"b\\c\n\u{e9}\u{1F600}".to_owned(), "z".to_owned()];
        assert_eq!(
            python_json_list(&parts),
            r#"["a\"b\\c\n\u00e9\ud83d\ude00", "z"]"#
        );
    }

    #[test]
    fn no_identity_header_is_anonymous_and_other_headers_do_not_count() {
        let h = headers(&[("x-trace-id", "1"), ("mcp-session-id", "s")]);
        assert_eq!(IdentityConfig::default().identity(&h), Digest256::Anonymous);
    }

    #[test]
    fn header_order_does_not_matter_but_values_do() {
        let c = IdentityConfig::default();
        let a = c.identity(&headers(&[("cookie", "a"), ("x-user-id", "u")]));
        let b = c.identity(&headers(&[("x-user-id", "u"), ("cookie", "a")]));
        let other = c.identity(&headers(&[("x-user-id", "v"), ("cookie", "a")]));
        assert_eq!(a, b);
        assert_ne!(a, other);
    }

    #[derive(Debug)]
    struct Sub;
    impl IdentityExtractor for Sub {
        fn extract(
            &self,
            headers: &HeaderMap,
        ) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
            match headers.get("x-sub") {
                Some(v) if v == "bad" => Err("unverifiable".into()),
                Some(v) => Ok(Some(v.to_str()?.to_owned())),
                None => Ok(None),
            }
        }
    }

    #[test]
    fn extractor_wins_and_falls_back_to_headers() {
        let c = IdentityConfig::default().with_extractor(Arc::new(Sub));
        assert_eq!(
            c.identity(&headers(&[("x-sub", "alice")])),
            Digest256::of("alice")
        );
        let rotated_1 = c.identity(&headers(&[("x-sub", "alice"), ("authorization", "t1")]));
        let rotated_2 = c.identity(&headers(&[("x-sub", "alice"), ("authorization", "t2")]));
        assert_eq!(rotated_1, rotated_2, "a rotating token keeps one key");
        let fallback = c.identity(&headers(&[("x-sub", "bad"), ("authorization", "t1")]));
        assert_eq!(
            fallback,
            IdentityConfig::default().identity(&headers(&[("authorization", "t1")]))
        );
    }

    #[test]
    fn internal_headers_are_not_forwarded() {
        let h = headers(&[
            ("Mcp-Session-Id", "a"),
            ("X-MCP-Session-Id", "b"),
            ("accept", "*/*"),
            ("authorization", "t"),
        ]);
        let out = forwardable_headers(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out["authorization"], "t");
    }

    #[test]
    fn keys_differ_by_transport_and_display_only_prefixes() {
        let p = Principal::user("alice");
        let server = ServerId::new("s").unwrap();
        let a = PoolKey::new(p, server.clone(), TransportKind::StreamableHttp);
        let b = PoolKey::new(p, server, TransportKind::Sse);
        assert_ne!(a, b);
        assert!(!a.short().contains("alice"));
        assert_eq!(a.short().split('/').nth(2).unwrap().len(), 8);
    }
}
