//! [`ApiError`]: every error of the REST API, as `{"detail": "…"}` with its status.

use axum::{
    Json,
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use mcp_pool::PoolError;
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

/// The body of every error response: `{"detail": "…"}` (ContextForge's shape, FastAPI's).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words: the field, the value and what is allowed where that applies.
    pub detail: String,
}

/// An error response: a status and the words of [`ErrorBody::detail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `detail` text. Never holds a secret (URLs are redacted where they are built).
    pub detail: String,
    /// Whether to send `WWW-Authenticate: Bearer` (401 responses, RFC 6750 §3).
    pub(crate) challenge: bool,
}

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            challenge: false,
        }
    }

    /// 404 `{"detail": "Server not found: {id}"}`.
    pub fn server_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("Server not found: {id}"))
    }

    /// 503 `{"detail": "Pooling not enabled for server"}`: a pool route of a server whose
    /// pooling is off.
    pub fn pooling_disabled() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Pooling not enabled for server",
        )
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, detail)
        }
    }

    /// 422 Unprocessable Entity: the request was well-formed but a value is not allowed.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response();
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<PoolError> for ApiError {
    /// Unknown servers → 404, rejected configuration → 422, an unreachable state backend →
    /// 503, anything else → 500. `PoolError`'s words never hold a secret (it redacts URLs).
    fn from(error: PoolError) -> Self {
        match &error {
            PoolError::UnknownServer(id) => Self::server_not_found(id.as_str()),
            PoolError::Config(_) | PoolError::InvalidServer { .. } => {
                Self::unprocessable(error.to_string())
            }
            PoolError::Backend(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("state backend unavailable: {error}"),
            ),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }
}

/// The body limit in force for a request, put in its extensions by the body-limit layer so
/// that [`ApiJson`] can name it in a 413.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// The 413 of a body above `limit` bytes.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is too large: the limit is {limit} bytes (MAX_BODY_BYTES)"),
    )
}

/// axum's `Json` extractor with its rejections (plain text) turned into [`ApiError`]s:
/// malformed JSON → 400, a body of the wrong shape or a wrong `Content-Type` → 422 / 415,
/// a body above the limit → 413, each as `{"detail": …}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().copied();
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection, limit)),
        }
    }
}

fn json_rejection(rejection: JsonRejection, limit: Option<BodyLimit>) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return match limit {
            Some(BodyLimit(limit)) => too_large(limit),
            None => ApiError::new(status, "request body is too large"),
        };
    }
    let detail = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body: send the header Content-Type: application/json".to_owned()
        }
        _ => rejection.body_text(),
    };
    ApiError::new(status, detail)
}

/// A configuration value was rejected: start-up stops with these words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.words())]
pub struct ConfigError {
    /// The variable or flag (`PORT`, `--port`).
    pub setting: String,
    /// The rejected value (empty for a secret, which is never shown).
    pub value: String,
    /// What is allowed.
    pub allowed: String,
}

impl ConfigError {
    fn words(&self) -> String {
        let Self {
            setting,
            value,
            allowed,
        } = self;
        if value.is_empty() {
            format!("{setting} is not set: must be {allowed}")
        } else {
            format!("{setting} = {value:?} is invalid: must be {allowed}")
        }
    }

    /// `setting = "value" is invalid: must be allowed`.
    pub fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.into(),
            allowed: allowed.into(),
        }
    }
}
