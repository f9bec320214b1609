//! Bearer-token auth: HS256 JWTs signed with `JWT_SECRET_KEY` (DESIGN §13).

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

/// The HMAC key of the gateway's JWTs (`JWT_SECRET_KEY`). Its `Debug` and `Display` never
/// show it.
#[derive(Clone)]
pub struct JwtSecret(Arc<str>);

impl JwtSecret {
    /// Wraps `secret`.
    ///
    /// # Errors
    /// When `secret` is empty or only whitespace: an HMAC key must have some bytes.
    pub fn new(secret: impl Into<String>) -> Result<Self, crate::ConfigError> {
        let secret: String = secret.into();
        if secret.trim().is_empty() {
            return Err(crate::ConfigError::new(
                "JWT_SECRET_KEY",
                "",
                "a non-empty secret (32 random bytes or more recommended)",
            ));
        }
        Ok(Self(secret.into()))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// The claims of a gateway token. `sub` (else `email`, else `user_id`) names the user; the
/// downstream MCP layer will take it as the pool key's user identity (issue 11, item 5).
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
    /// Expiry, seconds since the Unix epoch (enforced, no leeway).
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

impl Claims {
    /// The user the token names: `sub`, else `email`, else `user_id`.
    pub fn user(&self) -> Option<&str> {
        self.sub
            .as_deref()
            .or(self.email.as_deref())
            .or(self.user_id.as_deref())
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
    /// Bad signature, bad shape, wrong algorithm or a missing `exp`.
    #[error("Invalid token: {0}")]
    Invalid(String),
    /// The token could not be signed.
    #[error("could not sign the token: {0}")]
    Sign(String),
}

/// Mints an HS256 token for `sub` valid for `ttl` from `now`.
///
/// # Errors
/// [`AuthError::Sign`] (not expected with HS256 and a non-empty key).
pub fn mint(
    secret: &JwtSecret,
    sub: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, AuthError> {
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = Claims {
        sub: Some(sub.to_owned()),
        email: None,
        user_id: None,
        exp: iat + ttl.as_secs(),
        iat,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.bytes()),
    )
    .map_err(|e| AuthError::Sign(e.to_string()))
}

/// Verifies an HS256 `token` against `secret`: signature, algorithm and `exp` (against the
/// system clock, no leeway).
///
/// # Errors
/// [`AuthError::Expired`] or [`AuthError::Invalid`].
pub fn verify(secret: &JwtSecret, token: &str) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
            AuthError::Invalid("signature does not match".into())
        }
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
            AuthError::Invalid("algorithm must be HS256".into())
        }
        jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Invalid(format!("the claim {claim} is required"))
        }
        _ => AuthError::Invalid("not a well-formed JWT".into()),
    })
}

/// The middleware of the protected routes: a valid bearer token, else 401
/// `{"detail": …}` with `WWW-Authenticate: Bearer`. The token's [`Claims`] go into the
/// request's extensions for the handlers.
pub(crate) async fn require_bearer(
    State(secret): State<JwtSecret>,
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
        Some(token) => verify(&secret, token),
    };
    match result {
        Ok(claims) => {
            request.extensions_mut().insert(claims);
            next.run(request).await
        }
        Err(error) => ApiError::unauthorized(error.to_string()).into_response(),
    }
}
