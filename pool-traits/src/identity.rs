//! Who a request acts for: identity hashing (as ContextForge's `MCPSessionPool` hashes
//! identity headers) and the [`PoolKey`].

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
/// (matched case-insensitively).
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

    /// The first 8 bytes as a number (0 for [`Anonymous`](Self::Anonymous)): a digest is
    /// uniformly distributed already, so maps keyed by digests can hash this instead of all
    /// 32 bytes (equality still compares the whole digest).
    pub fn prefix_u64(&self) -> u64 {
        match self {
            Self::Anonymous => 0,
            Self::Sha256(d) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&d[..8]);
                u64::from_le_bytes(prefix)
            }
        }
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
/// rotating token does not create a new key per rotation.
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

/// Headers never forwarded upstream, whatever the configuration (names lowercase; matched
/// case-insensitively, as HTTP header names are):
/// - hop-by-hop headers (RFC 9110 §7.6.1): `connection`, `keep-alive`, `proxy-connection`,
///   `te`, `trailer`, `transfer-encoding`, `upgrade`, and the response header
///   `proxy-authenticate` (any header the `connection` header names is dropped as well);
///   `proxy-authorization` is a credential for the next hop, so it is not on this list: it is
///   forwarded only when configured as an identity header or allow-listed
///   ([`IdentityConfig::with_forwarded_headers`]), and then hashed into the identity;
/// - headers describing one request or its body, which the transport sets itself: `host`,
///   `content-length`, `content-type`, `accept`, `accept-encoding`;
/// - `last-event-id` (it asks to resume a stream; rmcp refuses it as a custom header, so
///   forwarding it made every creation fail) and `mcp-protocol-version` (negotiated per
///   upstream session by rmcp);
/// - the [`INTERNAL_HEADERS`] (`mcp-session-id`, `x-mcp-session-id`);
/// - the WebSocket handshake headers (RFC 6455 §4.1): `sec-websocket-key`,
///   `sec-websocket-version`, `sec-websocket-protocol`, `sec-websocket-extensions`,
///   `sec-websocket-accept`.
pub const NEVER_FORWARDED: [&str; 22] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "host",
    "content-length",
    "content-type",
    "accept",
    "accept-encoding",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "x-mcp-session-id",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// Whether `name` (a lowercase [`HeaderName`]) is one of [`NEVER_FORWARDED`].
fn never_forwarded(name: &HeaderName) -> bool {
    NEVER_FORWARDED.contains(&name.as_str())
}

/// How identities are derived from request headers, and which headers are forwarded upstream
/// when a session is created.
///
/// Whatever is sent upstream on a session's creation is part of its key: the session is created
/// with one caller's headers and then served to every principal of the key, so a header
/// forwarded but not hashed would hand one caller's credential to others. Hence:
/// - the **identity headers** ([`with_headers`](Self::with_headers), default
///   [`DEFAULT_IDENTITY_HEADERS`]) are hashed and forwarded;
/// - the **forwarded headers** ([`with_forwarded_headers`](Self::with_forwarded_headers),
///   default none) are an explicit allow-list of extra headers forwarded at creation, and are
///   hashed into the identity too;
/// - every other header (`x-auth-token`, `api-key`, trace context, …) is neither forwarded at
///   creation nor hashed; [`NEVER_FORWARDED`] headers are never forwarded, even when listed.
///
/// [`forwarded_headers`](Self::forwarded_headers) gives exactly what may be sent upstream; the
/// pool stores and forwards only that.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    headers: Arc<[HeaderName]>,
    /// The allow-list, minus identity headers and [`NEVER_FORWARDED`] ones.
    forwarded: Arc<[HeaderName]>,
    extractor: Option<Arc<dyn IdentityExtractor>>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            headers: DEFAULT_IDENTITY_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            forwarded: Arc::new([]),
            extractor: None,
        }
    }
}

impl IdentityConfig {
    /// Identity from these headers instead of [`DEFAULT_IDENTITY_HEADERS`] (names are
    /// case-insensitive, as HTTP header names are). Identity headers are forwarded upstream at
    /// session creation, except the [`NEVER_FORWARDED`] ones.
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = dedup(headers.into_iter());
        self.forwarded = self.extra(self.forwarded.iter().cloned());
        self
    }

    /// Also forwards these headers upstream when a session is created (default: none), and
    /// hashes them into the identity, so that callers who send different values never share a
    /// session. Names on [`NEVER_FORWARDED`] are ignored; identity headers are forwarded
    /// anyway. Replaces an earlier allow-list.
    pub fn with_forwarded_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.forwarded = self.extra(names.into_iter());
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

    /// The allow-listed extra forwarded header names (identity headers and [`NEVER_FORWARDED`]
    /// names left out), lowercase.
    pub fn forwarded_header_names(&self) -> &[HeaderName] {
        &self.forwarded
    }

    fn extra(&self, names: impl Iterator<Item = HeaderName>) -> Arc<[HeaderName]> {
        dedup(names.filter(|n| !never_forwarded(n) && !self.headers.contains(n)))
    }

    /// What may be sent upstream when a session is created for a request carrying `headers`:
    /// exactly its identity headers and allow-listed headers, all values marked
    /// [sensitive](http::HeaderValue::set_sensitive), never a [`NEVER_FORWARDED`] header nor
    /// one the request's `connection` header names. Every header returned is hashed by
    /// [`identity`](Self::identity).
    pub fn forwarded_headers(&self, headers: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        let hop_by_hop = connection_named(headers);
        for name in self.headers.iter().chain(self.forwarded.iter()) {
            if never_forwarded(name) || hop_by_hop.iter().any(|h| h == name.as_str()) {
                continue;
            }
            for value in headers.get_all(name) {
                let mut value = value.clone();
                value.set_sensitive(true);
                out.append(name.clone(), value);
            }
        }
        out
    }

    /// The identity digest of a request.
    ///
    /// **Header hashing** (as the reference pool, ContextForge `MCPSessionPool`): every value of
    /// every present identity header and allow-listed forwarded header contributes one part
    /// `"name:value"`, the name lowercase and the value's bytes decoded as Latin-1 (each byte
    /// is one character U+0000 to U+00FF, as Starlette decodes them: distinct bytes, distinct
    /// identities). The parts are sorted (by code point) and serialized as a compact JSON
    /// array the way Python's `orjson.dumps` writes it (no spaces, non-ASCII as raw UTF-8,
    /// only `"`, `\` and control characters escaped); the identity is the SHA-256 of those
    /// bytes, hex. No part gives [`Digest256::Anonymous`].
    ///
    /// **An extractor** that returns a non-empty value wins: it vouches for the identity
    /// headers, which are then not hashed (a rotating token keeps one key). With no
    /// allow-listed forwarded header present, the identity is the SHA-256 of the value's UTF-8
    /// bytes, as the reference pool; otherwise the allow-listed headers still count (they are
    /// forwarded, so they must be part of the key): the digest is that of the JSON array of
    /// `":" + value` followed by the sorted parts of the allow-listed headers. The leading
    /// `:` cannot start a header part, so no header set hashes to an extractor identity.
    /// An extractor error or `None` falls back to header hashing.
    pub fn identity(&self, headers: &HeaderMap) -> Digest256 {
        if let Some(extractor) = &self.extractor {
            match extractor.extract(headers) {
                Ok(Some(id)) if !id.is_empty() => {
                    let mut extra = header_parts(&self.forwarded, headers);
                    if extra.is_empty() {
                        return Digest256::of(id);
                    }
                    extra.sort_unstable();
                    let mut parts = Vec::with_capacity(extra.len() + 1);
                    parts.push(format!(":{id}"));
                    parts.append(&mut extra);
                    return Digest256::of(orjson_list(&parts));
                }
                Ok(_) => {}
                Err(error) => tracing_free_debug(&*error),
            }
        }
        let mut parts = header_parts(&self.headers, headers);
        parts.append(&mut header_parts(&self.forwarded, headers));
        if parts.is_empty() {
            return Digest256::Anonymous;
        }
        parts.sort_unstable();
        Digest256::of(orjson_list(&parts))
    }
}

/// `names` in order, each once.
fn dedup(names: impl Iterator<Item = HeaderName>) -> Arc<[HeaderName]> {
    let mut out: Vec<HeaderName> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out.into()
}

/// The lowercase header names listed in the `connection` header(s) of `headers`.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|name| String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// `"name:value"` for every value of the `names` present in `headers`, the value's bytes
/// decoded as Latin-1 (injective: byte `b` becomes U+00bb).
fn header_parts(names: &[HeaderName], headers: &HeaderMap) -> Vec<String> {
    let mut parts = Vec::new();
    for name in names {
        for value in headers.get_all(name) {
            let mut part = String::with_capacity(name.as_str().len() + 1 + value.len());
            part.push_str(name.as_str());
            part.push(':');
            part.extend(value.as_bytes().iter().map(|&b| char::from(b)));
            parts.push(part);
        }
    }
    parts
}

/// `orjson.dumps(list_of_str)`: `[` `"a","b"` `]` with no spaces; `"` and `\` escaped,
/// control characters below U+0020 as `\b \f \n \r \t` or `\u00xx`; everything else,
/// non-ASCII included, written as UTF-8.
fn orjson_list(parts: &[String]) -> String {
    let mut out = String::with_capacity(2 + parts.iter().map(|p| p.len() + 3).sum::<usize>());
    out.push('[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in part.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    out.push_str(&format!("\\u{:04x}", c as u32));
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

/// `headers` minus the [`NEVER_FORWARDED`] ones and those the `connection` header names, every
/// value marked [sensitive](http::HeaderValue::set_sensitive): what a transport may send
/// upstream. [`ConnectRequest::new`](crate::ConnectRequest::new) applies it, so no transport can
/// forward a hop-by-hop, body, internal or handshake header. It does not apply the allow-list:
/// pass it [`IdentityConfig::forwarded_headers`], not a downstream request's headers.
pub fn forwardable_headers(headers: &HeaderMap) -> HeaderMap {
    let hop_by_hop = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if never_forwarded(name) || hop_by_hop.iter().any(|h| h == name.as_str()) {
            continue;
        }
        let mut value = value.clone();
        value.set_sensitive(true);
        out.append(name.clone(), value);
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

    /// A header name and its raw value bytes.
    type Raw<'a> = (&'a str, &'a [u8]);

    fn raw(pairs: &[Raw]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    /// Digests computed with the reference pool's serialization, by real Python `orjson` 3:
    /// `hashlib.sha256(orjson.dumps(sorted(parts))).hexdigest()` with
    /// `parts = [f"{name.lower()}:{value.decode('latin-1')}" for name, value in headers]`.
    #[test]
    fn matches_python_orjson_vectors() {
        let cases: [(&[Raw], &str); 9] = [
            (
                &[("X-Tenant-ID", b"acme"), ("Authorization", b"Bearer t")],
                "5e92e8233a67e83623f6f951f6f79d8e83ab9d6f8ee0bdd6f4cae97654142f52",
            ),
            (
                &[("authorization", b"Bearer \xff")],
                "9db0d2ded2f36fbce26e924cb1845df0910fee5de2d327057a48c32eacdefcab",
            ),
            (
                &[("authorization", b"Bearer \xfe")],
                "d4a29cc570d159199f37cb3435f5aee422b960dc506f3e2d63df9f044badd635",
            ),
            (
                &[("authorization", b"Bearer\tt")],
                "86daf93e7af37d4e3d0b8007d5f54cd9bf2a73bae5070f424e2bec075afcd7ba",
            ),
            (
                &[("x-user-id", br#"a"b\c"#)],
                "4f6fbc91b947d0f72d818e75f74b8de187f9edfe6d9537c6f2a8c46a17099558",
            ),
            (
                &[
                    ("cookie", b"sid=1"),
                    ("x-api-key", b"k"),
                    ("x-user-id", b"u"),
                    ("x-tenant-id", b"acme"),
                    ("authorization", b"Bearer s3cr3t-t0ken"),
                ],
                "0c3c1c9651ea8c45cbaf2dc21bb06819883159a2872d3d5321c2c52dbc20ca8e",
            ),
            (
                &[("cookie", b"b=2"), ("cookie", b"a=1"), ("x-api-key", b"k")],
                "1f0e0e5ff676d4f4bc83299acf9b377c0f90d897e60fb6298098c1cc3bfc91f2",
            ),
            (
                // UTF-8 bytes of `é`, read as Latin-1 (`Ã©`) as Starlette reads them.
                &[("x-user-id", "\u{e9}".as_bytes())],
                "cca96588bccd2d9671de9f91ab6103210c10b9b5ccffc206ba04cc989ab8b7d5",
            ),
            (
                // Not an identity header: does not count.
                &[("authorization", b"Bearer t"), ("x-region", b"eu")],
                "04bf56add06eb34439c0f8f89e7d700e8f4cd05a3aac60660b69b42063da20ca",
            ),
        ];
        let config = IdentityConfig::default();
        for (pairs, expected) in cases {
            assert_eq!(
                config.identity(&raw(pairs)).to_string(),
                expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_bytes_give_distinct_identities() {
        let c = IdentityConfig::default();
        let ff = c.identity(&raw(&[("authorization", b"Bearer \xff")]));
        let fe = c.identity(&raw(&[("authorization", b"Bearer \xfe")]));
        assert_ne!(ff, fe);
    }

    #[test]
    fn json_list_is_written_as_orjson_writes_it() {
        // orjson.dumps(["a\"b\\c\n\t\x08\x0c\r\x01\x1f\x7f\u00e9\U0001F600", "z"])
        let parts = [
            "a\"b\\c\n\t\u{8}\u{c}\r\u{1}\u{1f}\u{7f}\u{e9}\u{1F600}".to_owned(),
            "z".to_owned(),
        ];
        assert_eq!(
            orjson_list(&parts).as_bytes(),
            b"[\"a\\\"b\\\\c\\n\\t\\b\\f\\r\\u0001\\u001f\x7f\xc3\xa9\xf0\x9f\x98\x80\",\"z\"]"
        );
    }

    #[test]
    fn allow_listed_headers_are_hashed_and_forwarded_others_are_not() {
        let region = HeaderName::from_static("x-region");
        let c = IdentityConfig::default().with_forwarded_headers([region.clone()]);
        let eu = headers(&[
            ("authorization", "Bearer t"),
            ("x-region", "eu"),
            ("x-auth-token", "other-credential"),
            ("api-key", "k"),
            ("proxy-authorization", "Basic cHJveHk="),
        ]);
        // python: sha256(orjson.dumps(sorted(["authorization:Bearer t", "x-region:eu"])))
        assert_eq!(
            c.identity(&eu).to_string(),
            "c2588e2b91d06ee87366eeeda8028cd20b8f11fc6bd8a6175ed8981f5de5a746"
        );
        let us = headers(&[("authorization", "Bearer t"), ("x-region", "us")]);
        assert_ne!(
            c.identity(&eu),
            c.identity(&us),
            "an allow-listed header is in the key"
        );
        let out = c.forwarded_headers(&eu);
        let mut names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-region"]);
        assert!(out.values().all(HeaderValue::is_sensitive));
        // Not allow-listed: neither forwarded nor hashed.
        let plain = IdentityConfig::default();
        assert!(plain.forwarded_headers(&eu).get("x-region").is_none());
        assert_eq!(
            plain.identity(&eu),
            plain.identity(&headers(&[("authorization", "Bearer t")]))
        );
    }

    #[test]
    fn never_forwarded_headers_stay_out_even_when_listed() {
        let listed = NEVER_FORWARDED.iter().map(|n| HeaderName::from_static(n));
        let c = IdentityConfig::default()
            .with_forwarded_headers(listed.chain([HeaderName::from_static("x-hop")]));
        assert_eq!(
            c.forwarded_header_names(),
            [HeaderName::from_static("x-hop")]
        );
        let mut h = headers(&[
            ("authorization", "t"),
            ("x-hop", "1"),
            ("connection", "x-hop"),
        ]);
        for name in NEVER_FORWARDED {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        let out = c.forwarded_headers(&h);
        assert_eq!(out.len(), 1, "{:?}", out.keys().collect::<Vec<_>>());
        assert!(out.contains_key("authorization"));
        let out = forwardable_headers(&h);
        assert_eq!(out.len(), 1, "{:?}", out.keys().collect::<Vec<_>>());
        assert!(out.get("last-event-id").is_none());
    }

    #[test]
    fn extractor_hashes_allow_listed_headers_with_its_value() {
        let c = IdentityConfig::default()
            .with_extractor(Arc::new(Sub))
            .with_forwarded_headers([HeaderName::from_static("x-region")]);
        // No allow-listed header present: sha256("alice"), as the reference pool.
        assert_eq!(
            c.identity(&headers(&[("x-sub", "alice"), ("authorization", "t1")]))
                .to_string(),
            "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
        );
        // python: sha256(orjson.dumps([":alice"] + sorted(["x-region:eu"])))
        let eu = c.identity(&headers(&[("x-sub", "alice"), ("x-region", "eu")]));
        assert_eq!(
            eu.to_string(),
            "8b6c05a51ec2e91b9173698d398a5b51d4de55b2c5cc20c50eb145eebf479fde"
        );
        let us = c.identity(&headers(&[("x-sub", "alice"), ("x-region", "us")]));
        assert_ne!(eu, us);
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
            ("accept-encoding", "gzip"),
            ("last-event-id", "7"),
            ("authorization", "t"),
        ]);
        let out = forwardable_headers(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out["authorization"], "t");
        assert!(out["authorization"].is_sensitive());
        let out = IdentityConfig::default().forwarded_headers(&h);
        assert_eq!(out.len(), 1);
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
