//! The extractors that turn a request's bearer token into its caller: [`Caller`] (any valid
//! token), `Option<Caller>` (no token is fine, a bad one is not), [`Admin`], and
//! [`WsCaller`] (a WebSocket's, whose token may come as a subprotocol).

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{
        header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL},
        request::Parts,
        HeaderMap,
    },
};

use super::{codes::ErrorCode, error::ApiError, state::AppState};
use crate::auth::{Admin, Caller};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).unwrap_or_else(|| {
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "send `Authorization: Bearer <token>`; `tether token` prints one",
            ))
        })?;
        let caller = caller_of(state, token).await?;
        // A caller with a valid token gets the longer time to send its body.
        super::server::BodyClock::trust(&parts.extensions);
        Ok(caller)
    }
}

/// The token of the `Authorization` header: None without one, 401 when it is not
/// `Bearer <token>` (spaces around the token do not matter).
fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let header = headers.get(AUTHORIZATION)?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the Authorization header must be `Bearer <token>`",
            )
        });
    Some(token)
}

/// The token a WebSocket client offers as the subprotocol `bearer.<token>`.
fn ws_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER))
}

/// The id of the valid token a request carries, read as its extractors read it (the
/// `Authorization` header, else a WebSocket's subprotocol): what its request rate counts
/// against. None without a valid one.
pub(super) async fn token_id(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let token = match bearer(headers) {
        Some(token) => token.ok()?,
        None => ws_bearer(headers)?,
    };
    let claims = state.auth.verify(state.store.pool(), token).await.ok()?;
    Some(claims.jti)
}

/// The caller a token speaks for, or 401: it must be one this server issued and that is
/// not revoked (see [`crate::auth::Auth::verify`]).
async fn caller_of(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let claims = state.auth.verify(state.store.pool(), token).await?;
    state.note_token_use(&claims.jti);
    Ok(Caller {
        owner: claims.sub,
        role: claims.role,
        token_id: Some(claims.jti),
    })
}

/// The subprotocol a WebSocket client offers with `bearer.<token>` (browsers cannot set
/// headers on a WebSocket), and the one the server answers with (never the token).
pub const WS_PROTOCOL: &str = "tether";
const WS_BEARER: &str = "bearer.";

/// The caller of a WebSocket upgrade: from `Authorization: Bearer`, or, for browsers, from
/// `Sec-WebSocket-Protocol: tether, bearer.<token>`. Never from the URL, which logs keep.
pub struct WsCaller(pub Caller);

impl FromRequestParts<AppState> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.headers.contains_key(AUTHORIZATION) {
            return <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .map(WsCaller);
        }
        let token = ws_bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "send `Authorization: Bearer <token>`, or the subprotocols \
                 `tether, bearer.<token>` (Sec-WebSocket-Protocol)",
            )
        })?;
        caller_of(state, token).await.map(WsCaller)
    }
}

/// For routes open to everyone that say more to a caller with a token: no `Authorization`
/// header is `None`; one that does not hold a valid token is still refused (401).
impl OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(None);
        }
        <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller =
            <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
        if !caller.is_admin() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this route needs an admin token (`tether token --admin`)",
            ));
        }
        Ok(Admin(caller))
    }
}
