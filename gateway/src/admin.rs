//! The Admin UI (issue 12): static pages embedded in the binary, served at `/admin`.
//!
//! The UI is one more client of the REST API (DESIGN §13): its script keeps the operator's
//! bearer token in `sessionStorage` and sends it as `Authorization: Bearer` on every API call.
//! Nothing rides on a cookie, so no other site can make the browser act for the operator
//! (CSRF-safe by construction). The pages themselves hold no data and are served without auth;
//! every figure they show comes from an authenticated API call.
//!
//! Caching and size: everything is gzip-compressed for browsers that accept it; `/admin` (the HTML) is `no-cache`, so a new binary's page is picked up at once; the
//! assets live under `/admin/assets/{version}/…` where `version` is a hash of all the embedded
//! assets, and are served `immutable` for a year. A request with another version gets 404.
//!
//! Vendored: uPlot 1.6.32 (MIT, `gateway/admin/vendor/uplot-1.6.32/LICENSE`), the charts of the
//! Pool Health page. No build step: the files are the ones npm ships.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use tower_http::compression::CompressionLayer;

use crate::error::ApiError;

/// The embedded assets: name under `/admin/assets/{version}/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../admin/admin.js"),
    ),
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_bytes!("../admin/admin.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../admin/vendor/uplot-1.6.32/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../admin/vendor/uplot-1.6.32/uPlot.min.css"),
    ),
];

const INDEX: &str = include_str!("../admin/index.html");

/// Scripts and styles only from the gateway itself; no frames, no plugins. Inline styles are
/// allowed because uPlot sizes its canvases through `style`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The UI's version: FNV-1a (64-bit) over the page and every asset, in hex. Changes whenever
/// one does, so a browser never mixes an old script with a new page. Also the page's `ETag`.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let files = ASSETS.iter().map(|(_, _, bytes)| *bytes);
    for bytes in files.chain([INDEX.as_bytes()]) {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
});

static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("{{version}}", &VERSION));

/// The routes of the UI: `/admin`, `/admin/` and `/admin/assets/{version}/{file}`, gzip
/// for clients that accept it.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/assets/{version}/{file}", get(asset))
        .layer(CompressionLayer::new().gzip(true))
}

fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The single page of the UI, `no-cache` with an `ETag`: a reload costs a 304.
async fn page(headers: HeaderMap) -> Response {
    let etag = format!("\"{}\"", *VERSION);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let head = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::ETAG, etag.as_str()),
    ];
    secure(if fresh {
        (StatusCode::NOT_MODIFIED, head).into_response()
    } else {
        (head, PAGE.as_str()).into_response()
    })
}

/// An embedded asset of the current version, cached for a year; 404 otherwise.
async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    let found = ASSETS.iter().find(|(name, _, _)| *name == file);
    match found {
        Some((_, content_type, bytes)) if version == *VERSION => secure(
            (
                [
                    (header::CONTENT_TYPE, *content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                ],
                *bytes,
            )
                .into_response(),
        ),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No admin asset {file} in version {version}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_assets_that_exist_in_this_version() {
        let page = PAGE.as_str();
        assert!(!page.contains("{{version}}"));
        let prefix = format!("/admin/assets/{}/", *VERSION);
        let named: Vec<&str> = page
            .match_indices(&prefix)
            .map(|(i, _)| {
                let rest = &page[i + prefix.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        assert_eq!(named.len(), ASSETS.len(), "{named:?}");
        for name in named {
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
    }
}
