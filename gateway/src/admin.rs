//! The Admin UI: static pages embedded in the binary, served at `/admin`.
//!
//! The UI is one more client of the REST API ([`crate::rest`]): its script keeps the operator's
//! bearer token in `sessionStorage` and sends it as `Authorization: Bearer` on every API call.
//! Nothing rides on a cookie, so no other site can make the browser act for the operator
//! (CSRF-safe by construction). The pages themselves hold no data and are served without auth;
//! every figure they show comes from an authenticated API call.
//!
//! Caching and size: everything is gzip-compressed for browsers that accept it. `/admin` (the
//! HTML) is `no-cache` with an `ETag`, so a new binary's page is picked up at once and a reload
//! costs a 304; the assets live under `/admin/assets/{version}/…` where `version` is a hash of
//! the page and every asset, and are served `immutable` for a year. Another version gets 404.
//!
//! Sign-in: a pasted token, or, when the gateway has `ADMIN_USERNAME` and `ADMIN_PASSWORD`,
//! a username and password that [`login_routes`] exchanges for a token.
//!
//! Vendored: uPlot 1.6.32 (MIT, `gateway/admin/vendor/uplot-1.6.32/LICENSE`), the charts of the
//! Pool Health page. No build step: the files are the ones npm ships.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;

use crate::{
    ConfigError,
    auth::{self, Verifier},
    error::{ApiError, ApiJson},
};

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

/// The operator's username and password for the UI's sign-in (`ADMIN_USERNAME`,
/// `ADMIN_PASSWORD`). `Debug` never shows the password.
#[derive(Clone)]
pub struct AdminLogin {
    username: Arc<str>,
    password: Arc<str>,
}

impl AdminLogin {
    /// From the two variables' values: both set and non-empty, or neither (`None`).
    ///
    /// # Errors
    /// When only one of them is set, or the password is shorter than 12 characters.
    pub fn from_vars(
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let username = username.filter(|v| !v.is_empty());
        let password = password.filter(|v| !v.is_empty());
        match (username, password) {
            (None, None) => Ok(None),
            (Some(u), Some(p)) if p.chars().count() >= 12 => Ok(Some(Self {
                username: u.into(),
                password: p.into(),
            })),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "ADMIN_PASSWORD",
                "***",
                "at least 12 characters",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "ADMIN_USERNAME",
                "",
                "a username whenever ADMIN_PASSWORD is set",
            )),
            (Some(_), None) => Err(ConfigError::new(
                "ADMIN_PASSWORD",
                "",
                "a password whenever ADMIN_USERNAME is set",
            )),
        }
    }

    /// Whether `username` and `password` are these, comparing every byte of both whatever
    /// differs first (no early exit that would time a guess).
    fn accepts(&self, username: &str, password: &str) -> bool {
        fn same(a: &[u8], b: &[u8]) -> bool {
            let diff = a
                .iter()
                .zip(b)
                .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
            diff == 0
        }
        same(self.username.as_bytes(), username.as_bytes())
            & same(self.password.as_bytes(), password.as_bytes())
    }
}

impl fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminLogin")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The body of `POST /admin/login`.
#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// The answer of `POST /admin/login`: a bearer token as `mcp-pool-gateway token` mints it.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The HS256 JWT, `sub` = the username.
    pub access_token: String,
    /// `bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// How long a token minted by the sign-in lives: 60 minutes.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Failed sign-ins allowed per username and client address before the next one waits.
pub const FREE_LOGIN_FAILURES: u32 = 3;
/// The longest wait after repeated failed sign-ins.
pub const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Pairs (username, address) remembered at most; beyond it only those still waiting are kept.
const MAX_THROTTLED: usize = 10_000;

/// Failed sign-ins per (username, client address): after [`FREE_LOGIN_FAILURES`], each further
/// failure makes the pair wait twice as long as the last (1 s, 2 s, 4 s … up to
/// [`MAX_LOGIN_BACKOFF`]); an attempt while waiting, even with the right password, gets 429
/// with `Retry-After` and is not checked. A success clears the pair.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: parking_lot::Mutex<HashMap<(String, Option<IpAddr>), Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    until: Instant,
}

impl LoginThrottle {
    /// How long the pair must still wait, if at all.
    fn waiting(&self, key: &(String, Option<IpAddr>), now: Instant) -> Option<Duration> {
        let failures = self.failures.lock();
        let until = failures.get(key)?.until;
        (until > now).then(|| until - now)
    }

    fn failed(&self, key: (String, Option<IpAddr>), now: Instant) {
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_THROTTLED {
            failures.retain(|_, f| f.until > now);
        }
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            until: now,
        });
        entry.count += 1;
        if let Some(excess) = entry.count.checked_sub(FREE_LOGIN_FAILURES + 1) {
            let wait = Duration::from_secs(1u64 << excess.min(20)).min(MAX_LOGIN_BACKOFF);
            entry.until = now + wait;
        }
    }

    fn succeeded(&self, key: &(String, Option<IpAddr>)) {
        self.failures.lock().remove(key);
    }
}

/// `POST /admin/login` (`{"username", "password"}` → [`LoginAnswer`] with an admin token, 401
/// otherwise, 429 while throttled: [`LoginThrottle`]), for a gateway with [`AdminLogin`]
/// configured; merge it into [`crate::router`]. Without it the route does not exist and the UI
/// says that only tokens sign in.
pub fn login_routes(login: AdminLogin, verifier: impl Into<Verifier>) -> Router {
    Router::new()
        .route("/admin/login", post(sign_in))
        .with_state((login, verifier.into(), Arc::new(LoginThrottle::default())))
}

async fn sign_in(
    State((login, verifier, throttle)): State<(AdminLogin, Verifier, Arc<LoginThrottle>)>,
    parts: http::request::Parts,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<LoginAnswer>, Response> {
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let key = (body.username.clone(), address);
    let now = Instant::now();
    if let Some(wait) = throttle.waiting(&key, now) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed sign-ins for this username from this address: try again in \
                 {secs} s"
            ),
        )
        .into_response();
        error
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(error);
    }
    if !login.accepts(&body.username, &body.password) {
        throttle.failed(key, now);
        tracing::warn!("admin sign-in refused: wrong username or password");
        return Err(ApiError::unauthorized("Wrong username or password").into_response());
    }
    throttle.succeeded(&key);
    let token = verifier
        .mint(
            &body.username,
            auth::Role::Admin,
            LOGIN_TOKEN_TTL,
            SystemTime::now(),
        )
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })?;
    Ok(Json(LoginAnswer {
        access_token: token,
        token_type: "bearer".into(),
        expires_in: LOGIN_TOKEN_TTL.as_secs(),
    }))
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
