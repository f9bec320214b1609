//! Keeping secrets out of `Debug`, `Display`, errors and logs: raw header values are never
//! stored, logged or used as metric labels.

use std::{borrow::Cow, fmt};

use http::HeaderMap;

/// What replaces a secret in printed output.
pub const REDACTED: &str = "***";

/// Query parameter names whose values [`redact_url`] hides: a name containing one of these
/// (ASCII case-insensitive) is taken for a credential.
const SECRET_QUERY_PARTS: [&str; 8] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "credential",
];

/// `url` fit for printing: its user-info (`user:password@`, or a bare `token@`) becomes `***@`,
/// and the values of query parameters whose names look like credentials (containing `pass`,
/// `pwd`, `secret`, `token`, `key`, `auth`, `sig` or `credential`, any case) become `***`.
/// Scheme, host, port, path, the other query parameters and the fragment are kept as written.
///
/// Works on the text, so it never fails: a string that is not a URL comes back unchanged unless
/// it has the shape of an authority with user-info (`user:pw@host/…` without a scheme is
/// redacted too). Borrows when there is nothing to hide.
///
/// ```
/// use mcp_pool_traits::redact_url;
/// assert_eq!(redact_url("redis://user:hunter2@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
/// assert_eq!(redact_url("https://example.test/mcp?api_key=k&x=1"), "https://example.test/mcp?api_key=***&x=1");
/// assert_eq!(redact_url("sqlite:/tmp/state.db"), "sqlite:/tmp/state.db");
/// ```
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The user-info ends at the last `@` of the authority (a password may hold an unescaped `@`).
    let userinfo_end = rest[..authority_len].rfind('@');
    let query = redact_query(url);
    if userinfo_end.is_none() && query.is_none() {
        return Cow::Borrowed(url);
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    let host_start = match userinfo_end {
        Some(at) => {
            out.push_str(REDACTED);
            authority_start + at
        }
        None => authority_start,
    };
    match query {
        Some((query_start, redacted)) => {
            out.push_str(&url[host_start..query_start]);
            out.push_str(&redacted);
        }
        None => out.push_str(&url[host_start..]),
    }
    Cow::Owned(out)
}

/// The query and fragment of `url` (from the byte after `?`) with credential-looking values
/// hidden, when there is one to hide.
fn redact_query(url: &str) -> Option<(usize, String)> {
    let start = url.find('?')? + 1;
    let (query, fragment) = match url[start..].find('#') {
        Some(hash) => url[start..].split_at(hash),
        None => (&url[start..], ""),
    };
    let mut hidden = false;
    let mut out = String::with_capacity(url.len() - start);
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_name(name) => {
                hidden = true;
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    hidden.then_some((start, out))
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_QUERY_PARTS.iter().any(|part| name.contains(part))
}

/// `Debug` for a [`HeaderMap`] that shows the header names and hides every value:
/// `{"authorization": "***", "x-tenant-id": "***"}`. Use it in hand-written `Debug` impls of
/// anything holding request headers.
#[derive(Clone, Copy)]
pub struct RedactedHeaders<'a>(pub &'a HeaderMap);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name.as_str(), REDACTED)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_hidden_and_the_rest_kept() {
        for (url, expected) in [
            (
                "redis://user:hunter2@127.0.0.1:6379",
                "redis://***@127.0.0.1:6379",
            ),
            (
                "https://alice:pw123@example.test/mcp",
                "https://***@example.test/mcp",
            ),
            (
                "postgres://postgres:p@ss@db:5432/test?sslmode=disable",
                "postgres://***@db:5432/test?sslmode=disable",
            ),
            ("https://t0ken@example.test/", "https://***@example.test/"),
            ("rediss://:hunter2@r.example", "rediss://***@r.example"),
            ("user:pw@host/x", "***@host/x"),
            (
                "https://example.test/mcp?token=abc&x=1#frag",
                "https://example.test/mcp?token=***&x=1#frag",
            ),
            (
                "postgres://u:pw@h/db?password=pw&PassWord=pw",
                "postgres://***@h/db?password=***&PassWord=***",
            ),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn nothing_to_hide_borrows() {
        for url in [
            "http://127.0.0.1:8000/mcp",
            "http://h/p@x",
            "http://h/p?x=1&q=a@b",
            "sqlite:/tmp/x.db",
            "not a url",
            "",
            "://",
            "@",
            "?",
            "?key=",
        ] {
            let out = redact_url(url);
            if url == "@" {
                assert_eq!(out, "***@");
                continue;
            }
            assert!(matches!(out, Cow::Borrowed(_)), "{url} -> {out}");
            assert_eq!(out, url);
        }
    }

    #[test]
    fn redacted_headers_show_names_only() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
        h.insert("cookie", "sid=c00kie".parse().unwrap());
        let shown = format!("{:?}", RedactedHeaders(&h));
        assert!(shown.contains("authorization") && shown.contains("cookie"));
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("c00kie"),
            "{shown}"
        );
    }
}
