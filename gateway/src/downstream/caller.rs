//! Who sent a downstream request ([`Caller`]): the owner of the downstream session it opens or
//! uses, and the principal and headers of its upstream lease.

use mcp_pool::{Principal, ServerId, traits::Digest256};

use crate::{Auth, Registry, auth::Claims};

/// What the `Authorization` header of a downstream request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Authorization {
    /// The gateway's own JWT (gateway auth on): it reaches the upstream only on a server that
    /// forwards it, and never identifies the session's owner.
    GatewayToken,
    /// Whatever the client sent (gateway auth off): it goes upstream as it is.
    Client,
}

impl Authorization {
    /// What `Authorization` carries under `auth`.
    pub(super) fn under(auth: &Auth) -> Self {
        if auth.is_required() {
            Self::GatewayToken
        } else {
            Self::Client
        }
    }
}

/// Who sent a downstream request, as the gateway sees it.
pub(super) struct Caller {
    /// Who owns the downstream session: the JWT's user (`sub`, else `email`, else `user_id`)
    /// and the identity headers, without the gateway's JWT, so that a rotated token keeps its
    /// sessions.
    pub(super) owner: Principal,
    /// The principal of the upstream lease: `owner`, or, on a server that forwards the
    /// gateway's token ([`ServerRecord::forward_token`](mcp_pool::traits::ServerRecord::forward_token)),
    /// the same with the token, which is then part of the pool key: what is sent upstream is
    /// part of the key, so that two tokens never share an upstream session.
    pub(super) principal: Principal,
    /// The headers the pool sees and sends upstream: with gateway auth on, `Authorization`
    /// (the gateway's JWT) only where the server forwards it.
    pub(super) headers: http::HeaderMap,
}

impl Caller {
    /// The caller of a request with `headers` and `extensions` to `server`.
    pub(super) fn of(
        registry: &Registry,
        server: &ServerId,
        authorization: Authorization,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Self {
        let pool = registry.pool();
        let user = extensions.get::<Claims>().and_then(Claims::user);
        let mut headers = headers.clone();
        let token = match authorization {
            Authorization::GatewayToken => headers.remove(http::header::AUTHORIZATION),
            Authorization::Client => None,
        };
        let owner = pool.principal(user, &headers);
        let principal = match token {
            Some(token) if registry.forwards_token(server) => {
                headers.insert(http::header::AUTHORIZATION, token);
                pool.principal(user, &headers)
            }
            _ => owner,
        };
        Self {
            owner,
            principal,
            headers,
        }
    }
}

/// Whom a downstream session of `owner` counts against: the token's user when there is one (so
/// that varying identity headers does not open more), else the whole owner.
pub(super) fn slot_holder(owner: Principal) -> Principal {
    if owner.user == Digest256::Anonymous {
        owner
    } else {
        Principal {
            identity: Digest256::Anonymous,
            ..owner
        }
    }
}
