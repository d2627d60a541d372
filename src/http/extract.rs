//! The extractors that turn a request's bearer token into its caller: [`Caller`] (any valid
//! token), `Option<Caller>` (no token is fine, a bad one is not) and [`Admin`].

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{header::AUTHORIZATION, request::Parts},
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
        let claims = state
            .auth
            .verify(token.trim())
            .map_err(|e| match e.kind() {
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
