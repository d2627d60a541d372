//! The extractors that turn a request's bearer token into its caller: [`Caller`] (any valid
//! token), `Option<Caller>` (no token is fine, a bad one is not), [`Admin`], and
//! [`WsCaller`] (a WebSocket's, whose token may come as a subprotocol).

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{
        header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL},
        request::Parts,
    },
};
use jsonwebtoken::errors::ErrorKind;

use super::ApiError;
use crate::{
    auth::{Admin, Caller},
    AppState,
};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "send `Authorization: Bearer <token>`; `tether token` prints one",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
        let caller = caller_of(state, token.trim())?;
        // A caller with a valid token gets the longer time to send its body.
        super::server::BodyClock::trust(&parts.extensions);
        Ok(caller)
    }
}

/// The caller a token speaks for, or 401.
fn caller_of(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let claims = state.auth.verify(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidSubject => {
            ApiError::unauthorized("a user token may not speak for the admin's owner name")
        }
        _ => ApiError::unauthorized("the token is invalid or expired"),
    })?;
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
        let token = parts
            .headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(WS_BEARER))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "send `Authorization: Bearer <token>`, or the subprotocols \
                     `tether, bearer.<token>` (Sec-WebSocket-Protocol)",
                )
            })?;
        caller_of(state, token).map(WsCaller)
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
            return Err(ApiError::forbidden(
                "this route needs an admin token (`tether token --admin`)",
            ));
        }
        Ok(Admin(caller))
    }
}
