//! Bearer-token auth: HS256 JWTs signed with `JWT_SECRET_KEY` (RFC 7519, RFC 6750).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The shortest `JWT_SECRET_KEY` accepted, bytes: RFC 7518 §3.2 requires an HS256 key of at
/// least the hash's size (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// How far `nbf` and `iat` may lie in the future, for clocks that differ a little between the
/// token's issuer and the gateway (RFC 7519 §4.1.5 allows "some small leeway").
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(30);

/// The HMAC key of the gateway's JWTs (`JWT_SECRET_KEY`). Its `Debug` and `Display` never
/// show it.
#[derive(Clone)]
pub struct JwtSecret(Arc<str>);

impl JwtSecret {
    /// Wraps `secret`.
    ///
    /// # Errors
    /// When `secret` is shorter than [`MIN_SECRET_BYTES`] bytes: anyone could guess a short
    /// key offline from one token and mint tokens for anyone. The message says how to make
    /// one.
    pub fn new(secret: impl Into<String>) -> Result<Self, crate::ConfigError> {
        let secret: String = secret.into();
        if secret.trim().len() < MIN_SECRET_BYTES {
            return Err(crate::ConfigError::new(
                "JWT_SECRET_KEY",
                "***",
                format!(
                    "at least {MIN_SECRET_BYTES} bytes of random text (RFC 7518 §3.2; this one \
                     has {}): generate one with `openssl rand -hex 32` or \
                     `python3 -c 'import secrets; print(secrets.token_hex(32))'`",
                    secret.trim().len()
                ),
            ));
        }
        Ok(Self(secret.into()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// What a token may do: the claim `role` of a gateway token.
///
/// - `admin`: everything — every write of the REST API (servers, pool configs, drain,
///   resize, reset), the sessions of a pool, `/metrics`, and every server's MCP routes.
/// - `user`: the MCP routes of the servers the user may use
///   ([`ServerRecord::access`](mcp_pool::traits::ServerRecord::access)) and the REST API's
///   reads about them.
///
/// A token without `role` is a `user`'s: privilege is asked for, never assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The operator's role.
    Admin,
    /// Everyone else's (the default).
    #[default]
    User,
}

impl Role {
    /// `admin` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(format!("role {other:?} is invalid: must be admin or user")),
        }
    }
}

/// The claims of a gateway token. `sub` (else `email`, else `user_id`; the first that is not
/// empty) names the user, which is the pool key's user identity on the MCP routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject (`--sub` of `mcp-pool-gateway token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// An e-mail address, used when `sub` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A user id, used when `sub` and `email` are absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// What the token may do (absent: [`Role::User`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The groups the user belongs to, matched against a server's
    /// [`access`](mcp_pool::traits::ServerRecord::access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Expiry, seconds since the Unix epoch (required; enforced without leeway).
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch: a token issued more than [`CLOCK_LEEWAY`] in
    /// the future is refused.
    #[serde(default)]
    pub iat: u64,
    /// Not before, seconds since the Unix epoch: refused until then (less [`CLOCK_LEEWAY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience, checked when the gateway is given one ([`Verifier::audience`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Issuer, checked when the gateway is given one ([`Verifier::issuer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Claims {
    /// The user the token names: `sub`, else `email`, else `user_id`, skipping empty ones.
    pub fn user(&self) -> Option<&str> {
        [&self.sub, &self.email, &self.user_id]
            .into_iter()
            .filter_map(|c| c.as_deref())
            .find(|u| !u.trim().is_empty())
    }

    /// What the token may do.
    pub fn role(&self) -> Role {
        self.role.unwrap_or_default()
    }

    /// The claims of a token for `sub` with `role`, valid for `ttl` from `now`.
    pub fn new(sub: &str, role: Role, ttl: Duration, now: SystemTime) -> Self {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Self {
            sub: Some(sub.to_owned()),
            email: None,
            user_id: None,
            role: Some(role),
            groups: Vec::new(),
            exp: iat + ttl.as_secs(),
            iat,
            nbf: None,
            aud: None,
            iss: None,
        }
    }
}

/// Why a token was refused. The words never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("Not authenticated: send the header Authorization: Bearer <JWT>")]
    Missing,
    /// The token's `exp` is past.
    #[error("Token has expired: mint a new one (mcp-pool-gateway token --sub <user>)")]
    Expired,
    /// Bad signature, bad shape, wrong algorithm, a missing `exp`, no user, a future `nbf` or
    /// `iat`, a wrong `aud` or `iss`.
    #[error("Invalid token: {0}")]
    Invalid(String),
    /// The token could not be signed.
    #[error("could not sign the token: {0}")]
    Sign(String),
}

/// Mints an HS256 token for `sub` with `role`, valid for `ttl` from `now`.
///
/// # Errors
/// [`AuthError::Sign`] (not expected with HS256 and a valid key).
pub fn mint(
    secret: &JwtSecret,
    sub: &str,
    role: Role,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, AuthError> {
    sign(secret, &Claims::new(sub, role, ttl, now))
}

/// Signs `claims` with `secret` (HS256).
///
/// # Errors
/// [`AuthError::Sign`] (not expected with HS256 and a valid key).
pub fn sign(secret: &JwtSecret, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.bytes()),
    )
    .map_err(|e| AuthError::Sign(e.to_string()))
}

/// How the gateway checks its bearer tokens: the HS256 key, and optionally the audience and
/// issuer every token must name (`JWT_AUDIENCE`, `JWT_ISSUER`). Its `Debug` never shows the
/// key.
#[derive(Clone, Debug)]
pub struct Verifier {
    secret: JwtSecret,
    audience: Option<String>,
    issuer: Option<String>,
}

impl From<JwtSecret> for Verifier {
    fn from(secret: JwtSecret) -> Self {
        Self {
            secret,
            audience: None,
            issuer: None,
        }
    }
}

impl Verifier {
    /// Tokens must name `audience` in `aud` (a string, or one of an array's).
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Tokens must name `issuer` in `iss`.
    #[must_use]
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The signing key.
    pub fn secret(&self) -> &JwtSecret {
        &self.secret
    }

    /// A token for `sub` with `role`, valid for `ttl` from `now`, naming this verifier's
    /// audience and issuer, so that it accepts the token.
    ///
    /// # Errors
    /// [`AuthError::Sign`] (not expected with HS256 and a valid key).
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let mut claims = Claims::new(sub, role, ttl, now);
        claims.aud = self.audience.clone().map(serde_json::Value::String);
        claims.iss = self.issuer.clone();
        sign(&self.secret, &claims)
    }

    /// Verifies `token` at `now`: HS256 signature, `exp` (no leeway), `nbf` and `iat` (no
    /// more than [`CLOCK_LEEWAY`] in the future), a user (`sub`, `email` or `user_id`, not
    /// empty), and `aud`/`iss` when configured.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`] saying which rule failed.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` against `now` below, so that tests can move the clock; nbf/iat likewise.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(self.secret.bytes()),
            &validation,
        )
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                AuthError::Invalid("signature does not match".into())
            }
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                AuthError::Invalid("algorithm must be HS256".into())
            }
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::Invalid(format!("the claim {claim} is required"))
            }
            jsonwebtoken::errors::ErrorKind::Json(_) => AuthError::Invalid(
                "a claim has the wrong type (role must be admin or user, groups a list of \
                 strings, exp/iat/nbf seconds since the epoch)"
                    .into(),
            ),
            _ => AuthError::Invalid("not a well-formed JWT".into()),
        })?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let leeway = CLOCK_LEEWAY.as_secs();
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(AuthError::Invalid(
                "not valid yet (nbf is in the future)".into(),
            ));
        }
        if claims.iat > now + leeway {
            return Err(AuthError::Invalid(
                "issued in the future (iat): check the issuer's clock".into(),
            ));
        }
        if claims.user().is_none() {
            return Err(AuthError::Invalid(
                "the token names no user: sub, email or user_id must be a non-empty string".into(),
            ));
        }
        if let Some(audience) = &self.audience {
            let named = match &claims.aud {
                Some(serde_json::Value::String(aud)) => aud == audience,
                Some(serde_json::Value::Array(auds)) => {
                    auds.iter().any(|a| a.as_str() == Some(audience))
                }
                _ => false,
            };
            if !named {
                return Err(AuthError::Invalid(format!(
                    "the audience (aud) must name {audience:?}"
                )));
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(AuthError::Invalid(format!(
                "the issuer (iss) must be {issuer:?}"
            )));
        }
        Ok(claims)
    }
}

/// Verifies an HS256 `token` against `secret` now, with no audience or issuer required (see
/// [`Verifier::verify_at`]).
///
/// # Errors
/// [`AuthError::Expired`] or [`AuthError::Invalid`].
pub fn verify(secret: &JwtSecret, token: &str) -> Result<Claims, AuthError> {
    Verifier::from(secret.clone()).verify_at(token, SystemTime::now())
}

/// The caller must hold the admin role: an extractor for the handlers of admin routes. With
/// auth off (`AUTH_REQUIRED=false`, a gateway behind another authenticating proxy) every
/// caller is the operator. Otherwise a token of another role gets 403 `{"detail": …}` naming
/// the role needed.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl axum::extract::FromRequestParts<crate::AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &crate::AppState,
    ) -> Result<Self, ApiError> {
        if is_admin(state.auth.is_required(), &parts.extensions) {
            return Ok(Admin);
        }
        let role = parts
            .extensions
            .get::<Claims>()
            .map_or(Role::User, Claims::role);
        Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            format!(
                "Forbidden: {} {} needs the admin role; this token's role is {role} (an \
                 operator mints one with: mcp-pool-gateway token --sub <user> --role admin)",
                parts.method,
                parts
                    .extensions
                    .get::<axum::extract::MatchedPath>()
                    .map_or_else(|| parts.uri.path(), |p| p.as_str()),
            ),
        ))
    }
}

/// Who sent a request to a protected route: the token's claims (`None` with auth off) and
/// whether the caller is an admin. Never refuses; see [`Admin`] for routes that need the role.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's claims; `None` with auth off.
    pub claims: Option<Claims>,
    /// Auth is off, or the token's role is admin.
    pub admin: bool,
}

impl axum::extract::FromRequestParts<crate::AppState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            claims: parts.extensions.get::<Claims>().cloned(),
            admin: is_admin(state.auth.is_required(), &parts.extensions),
        })
    }
}

impl Caller {
    /// Whether this caller may use server `id` ([`crate::Registry::may_use`]).
    pub fn may_use(&self, registry: &crate::Registry, id: &mcp_pool::ServerId) -> bool {
        self.admin || registry.may_use(id, self.claims.as_ref())
    }
}

/// Whether a request with `extensions` (after the bearer-token middleware) is an admin's: auth is off,
/// or its token's role is admin.
pub fn is_admin(auth_required: bool, extensions: &http::Extensions) -> bool {
    !auth_required
        || extensions
            .get::<Claims>()
            .is_some_and(|c| c.role() == Role::Admin)
}

/// The middleware of the protected routes: a valid bearer token, else 401
/// `{"detail": …}` with `WWW-Authenticate: Bearer`. The token's [`Claims`] go into the
/// request's extensions for the handlers.
pub(crate) async fn require_bearer(
    State(verifier): State<Verifier>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let result = match token {
        None | Some("") => Err(AuthError::Missing),
        Some(token) => verifier.verify_at(token, SystemTime::now()),
    };
    match result {
        Ok(claims) => {
            request.extensions_mut().insert(claims);
            next.run(request).await
        }
        Err(error) => ApiError::unauthorized(error.to_string()).into_response(),
    }
}
