//! What workers send each other on their channels (`Frame`): requests in signed envelopes
//! (`Envelope`: HMAC-SHA256 under the group's key, the body in base64) and the parts of their
//! replies (`Part`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{body::Body, extract::Request, http::StatusCode};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use mcp_pool::{ServerId, traits::StateId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{ApiError, auth::Claims};

/// The oldest envelope an owner accepts, against replays.
pub const ENVELOPE_MAX_AGE: Duration = Duration::from_secs(60);

/// Marks a request that another worker relayed here: it is served locally or not at all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Relayed;

/// One message on a worker's channel.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub(super) enum Frame {
    /// A request for a session the receiver owns.
    Request(Envelope),
    /// Frame `seq` (from 0) of the reply to request `id`: its parts in order — the head
    /// first, then body chunks, the end last. The owner sends what is ready in one frame (a
    /// quick call's whole reply is one), so a relayed request costs two messages.
    Reply { id: u64, seq: u64, parts: Vec<Part> },
    /// The sender of request `id` no longer wants its reply.
    Cancel { from: String, id: u64 },
}

impl Frame {
    /// The frame as its channel carries it.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a frame serializes")
    }
}

/// One part of a relayed reply.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "part", rename_all = "snake_case")]
pub(super) enum Part {
    /// The status line and headers.
    Head {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// A body chunk, base64.
    Chunk { data: String },
    /// The end of the body.
    End,
}

impl Part {
    /// The part of a body chunk (or of the end, for an error or `None`).
    pub(super) fn of_chunk(chunk: Option<Result<axum::body::Bytes, axum::Error>>) -> Self {
        match chunk {
            Some(Ok(data)) => Self::Chunk {
                data: BASE64.encode(&data),
            },
            Some(Err(_)) | None => Self::End,
        }
    }

    /// The bytes of a chunk's `data`; empty when it is not base64.
    pub(super) fn decode_chunk(data: String) -> Vec<u8> {
        BASE64.decode(data).unwrap_or_default()
    }
}

/// A signed request (see [`crate::cluster`]). `Debug` shows header names, never values or the
/// body (a relayed `Authorization` or cookie is a secret).
#[derive(Serialize, Deserialize, Clone)]
pub(super) struct Envelope {
    /// The sending worker: where the reply goes.
    pub(super) from: String,
    pub(super) id: u64,
    pub(super) server: String,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    /// The body, base64.
    body: String,
    /// The caller's authenticated user (the JWT's), if any.
    user: Option<String>,
    /// Seconds since the Unix epoch when it was signed.
    signed: u64,
    /// HMAC-SHA256 of the envelope with an empty `mac`, hex.
    #[serde(default)]
    mac: String,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Envelope")
            .field("from", &self.from)
            .field("id", &self.id)
            .field("server", &self.server)
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .field("user", &self.user)
            .field("signed", &self.signed)
            .finish_non_exhaustive()
    }
}

/// Headers that describe one HTTP hop, not the request. (`Host` stays: rmcp checks it.)
const HOP_HEADERS: [&str; 5] = [
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

/// Whether a relayed request keeps the caller's `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token {
    /// Kept: it is the client's own (gateway auth off), or the server receives it anyway.
    Kept,
    /// Left behind: it is the gateway's own JWT, which the owner does not need.
    Dropped,
}

impl Envelope {
    /// The envelope of request `id` from worker `from` to `server`: the request's `parts`
    /// (without hop headers, and without `Authorization` unless `token` is kept) and `body`,
    /// signed with `key` now.
    pub(super) fn seal(
        key: &[u8],
        from: String,
        id: u64,
        server: &ServerId,
        parts: &http::request::Parts,
        body: &[u8],
        token: Token,
    ) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !HOP_HEADERS.contains(&name.as_str()))
            .filter(|(name, _)| token == Token::Kept || *name != http::header::AUTHORIZATION)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let mut envelope = Self {
            from,
            id,
            server: server.to_string(),
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers,
            body: BASE64.encode(body),
            user: parts
                .extensions
                .get::<Claims>()
                .and_then(Claims::user)
                .map(str::to_owned),
            signed: unix_now(),
            mac: String::new(),
        };
        envelope.sign(key);
        envelope
    }

    /// Signs the envelope with `key`.
    fn sign(&mut self, key: &[u8]) {
        self.mac = hex::encode(self.hmac(key).finalize().into_bytes());
    }

    /// The HMAC of the envelope under `key`, its `mac` left out: what [`sign`](Self::sign)
    /// writes and [`open`](Self::open) checks (in constant time).
    fn hmac(&self, key: &[u8]) -> Hmac<Sha256> {
        let unsigned = Self {
            mac: String::new(),
            ..self.clone()
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&serde_json::to_vec(&unsigned).expect("an envelope serializes"));
        mac
    }

    /// The request the envelope carries, once its signature under `key` and its age are
    /// checked: marked [`Relayed`], with the caller's user as its claims.
    pub(super) fn open(&self, key: &[u8]) -> Result<Request, ApiError> {
        let forbidden = |why: &str| {
            tracing::warn!("rejected a forwarded request: {why}");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("forwarded request rejected: {why}"),
            )
        };
        let signed = hex::decode(&self.mac).unwrap_or_default();
        if self.hmac(key).verify_slice(&signed).is_err() {
            return Err(forbidden("its signature does not match"));
        }
        if unix_now().abs_diff(self.signed) > ENVELOPE_MAX_AGE.as_secs() {
            return Err(forbidden("it is too old"));
        }
        let body = BASE64
            .decode(&self.body)
            .map_err(|_| forbidden("its body is not base64"))?;
        let mut request = Request::builder()
            .method(self.method.as_str())
            .uri(self.uri.as_str());
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut request = request
            .body(Body::from(body))
            .map_err(|_| forbidden("it is not a valid HTTP request"))?;
        request.extensions_mut().insert(Relayed);
        if let Some(user) = &self.user {
            // The sending worker checked the caller's token and access to the server; the
            // user is all the session layer needs here.
            request.extensions_mut().insert(Claims {
                exp: self.signed + ENVELOPE_MAX_AGE.as_secs(),
                iat: self.signed,
                ..Claims::new(user, crate::auth::Role::User, Duration::ZERO, UNIX_EPOCH)
            });
        }
        Ok(request)
    }
}

/// The channel of `worker`: `fwd-{worker}`.
pub(super) fn channel_of(worker: &str) -> Option<StateId> {
    StateId::new(format!("fwd-{worker}")).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse as _;

    use super::*;

    fn envelope(key: &[u8]) -> Envelope {
        let mut envelope = Envelope {
            from: "w2".into(),
            id: 7,
            server: "s".into(),
            method: "POST".into(),
            uri: "/servers/s/mcp".into(),
            headers: vec![("mcp-session-id".into(), "abc".into())],
            body: BASE64.encode(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            user: Some("alice".into()),
            signed: unix_now(),
            mac: String::new(),
        };
        envelope.sign(key);
        envelope
    }

    fn rejection(key: &[u8], envelope: &Envelope) -> String {
        let error = envelope.open(key).expect_err("rejected");
        error.into_response().status().to_string()
    }

    #[tokio::test]
    async fn an_envelope_signed_with_the_groups_key_opens_with_the_callers_user() {
        let request = envelope(b"key").open(b"key").unwrap();
        let claims = request.extensions().get::<Claims>().unwrap();
        assert_eq!(claims.user(), Some("alice"));
        assert!(request.extensions().get::<Relayed>().is_some());
        assert_eq!(request.headers()["mcp-session-id"], "abc");
    }

    #[tokio::test]
    async fn unsigned_tampered_foreign_or_stale_envelopes_are_rejected() {
        let key = b"key";
        let signed = envelope(key);
        let unsigned = Envelope {
            mac: String::new(),
            ..signed.clone()
        };
        let other_user = Envelope {
            user: Some("mallory".into()),
            ..signed.clone()
        };
        let other_body = Envelope {
            body: BASE64.encode(b"{}"),
            ..signed.clone()
        };
        let foreign = envelope(b"another group's key");
        let mut stale = Envelope {
            signed: unix_now() - 2 * ENVELOPE_MAX_AGE.as_secs(),
            ..signed.clone()
        };
        stale.sign(key);
        for rejected in [unsigned, other_user, other_body, foreign, stale] {
            assert_eq!(rejection(key, &rejected), "403 Forbidden", "{rejected:?}");
        }
    }

    #[test]
    fn debug_shows_no_header_value_nor_body() {
        let mut envelope = envelope(b"key");
        envelope
            .headers
            .push(("authorization".into(), "Bearer s3cret-token".into()));
        let shown = format!("{envelope:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(!shown.contains(&envelope.body), "{shown}");
    }
}
