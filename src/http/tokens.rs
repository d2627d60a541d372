//! API tokens and pairing: the list (admin), revocation (admin, or the owner of the token),
//! and `POST /api/pair`, where a phone trades a one-time code for a token of its own (no
//! token needed).

use super::codes::ErrorCode;
use axum::{
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    error::{ApiError, ApiJson, ApiPath},
    routes::{Access, Routes},
    state::AppState,
    views::time,
};
use crate::{
    auth::{self, Admin, Caller},
    pairing::{self, RedeemError, Refused},
    store::{now_ms, tokens, tokens::TokenRow},
};
use axum::http::Method;

/// Longest device name kept.
const MAX_NAME: usize = 100;

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/api/tokens",
            Access::Admin,
            get(list),
            LIST_ERRORS,
        )
        .add(
            Method::DELETE,
            "/api/tokens/{id}",
            Access::User,
            delete(revoke),
            REVOKE_ERRORS,
        )
        .add(
            Method::POST,
            PAIR_ROUTE,
            Access::Public,
            post(pair),
            PAIR_ERRORS,
        )
}

/// The pairing route: the one besides health open without a token.
pub(super) const PAIR_ROUTE: &str = "/api/pair";

/// An API token as recorded (never the token itself).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenView {
    /// The token's `jti`.
    id: String,
    name: Option<String>,
    owner: String,
    /// `user` or `admin`.
    #[schema(example = "user")]
    role: String,
    /// Made by pairing a phone.
    paired: bool,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> Self {
        Self {
            id: t.id,
            name: t.name,
            owner: t.owner,
            role: t.role,
            paired: t.paired,
            created_at: time(t.created_at),
            expires_at: time(t.expires_at),
            last_used_at: t.last_used_at.map(time),
            revoked_at: t.revoked_at.map(time),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenList {
    tokens: Vec<TokenView>,
}

/// [`list`] answers only the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[];

/// Every API token (admin)
///
/// Id, owner, role, name, creation, last use, revocation.
#[utoipa::path(
    get,
    path = "/api/tokens",
    operation_id = "listTokens",
    tag = "pairing",
    responses((status = 200, description = "The tokens", body = TokenList)),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let rows = tokens::list(state.store.pool(), None).await?;
    let tokens = rows.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { tokens }))
}

/// What [`revoke`] may answer besides the edge's errors (see `openapi`).
const REVOKE_ERRORS: &[ErrorCode] = &[ErrorCode::TokenNotFound];

/// Revoke a token
///
/// The admin may revoke any token, a user its own. The token answers 401 from its next
/// request, its event streams, `/v1` streams and terminal WebSockets end (within a second),
/// and the devices registered with it get no more pushes.
#[utoipa::path(
    delete,
    path = "/api/tokens/{id}",
    operation_id = "revokeToken",
    tag = "pairing",
    params(("id" = String, Path, description = "The token's id (`tokenId`, its `jti`)")),
    responses(
        (status = 204, description = "Revoked"),
    ),
)]
pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let pool = state.store.pool();
    tokens::get(pool, &id)
        .await?
        .filter(|t| caller.can_see(&t.owner))
        .ok_or_else(|| ApiError::new(ErrorCode::TokenNotFound, format!("no token {id}")))?;
    let disabled = auth::revoke_recorded(&state.store, &id, now_ms()).await?;
    state.auth.forget(&id);
    tracing::info!(token_id = %id, devices = disabled.len(), by = %caller.owner, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// A pairing code from `tether pair`, and the phone's name.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"code": "K7MQ-2XRT-9P", "deviceName": "Ana's iPhone"}))]
pub(super) struct PairRequest {
    /// The one-time code (dashes and case do not matter).
    code: String,
    /// At most 100 characters, no control or text-direction characters.
    #[schema(schema_with = super::devices::name_schema)]
    device_name: Option<String>,
}

/// The phone's own token, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Paired {
    /// `Authorization: Bearer <token>` from now on; it does not expire (revoke it instead).
    token: String,
    /// Its id, for revoking it (`DELETE /api/tokens/{id}`).
    token_id: String,
    /// The owner it speaks for.
    owner: String,
}

/// What [`pair`] may answer besides the edge's errors (see `openapi`).
const PAIR_ERRORS: &[ErrorCode] = &[
    ErrorCode::Unauthorized,
    ErrorCode::InvalidDeviceName,
    ErrorCode::TooManyPairingAttempts,
    ErrorCode::InternalError,
    ErrorCode::StorageUnavailable,
];

/// Pair a phone
///
/// No token needed: the phone trades a one-time code from `tether pair` (valid for
/// `auth.pairing_ttl`, once) for a token of its own.
#[utoipa::path(
    post,
    path = PAIR_ROUTE,
    operation_id = "pair",
    tag = "pairing",
    request_body = PairRequest,
    responses(
        (status = 200, description = "Paired", body = Paired),
    ),
)]
pub(super) async fn pair(
    State(state): State<AppState>,
    peer: Option<axum::Extension<super::server::Peer>>,
    ApiJson(req): ApiJson<PairRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Wrong codes are counted per address; a request not from the listener (none) counts
    // under one address of its own.
    let peer = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0 .0.ip());
    let name = req
        .device_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > MAX_NAME) {
        return Err(ApiError::new(
            ErrorCode::InvalidDeviceName,
            format!("deviceName is at most {MAX_NAME} characters"),
        ));
    }
    if let Some(c) = name.and_then(super::devices::unsafe_name_char) {
        return Err(ApiError::new(
            ErrorCode::InvalidDeviceName,
            format!(
                "deviceName must not hold control or text-direction characters (U+{:04X})",
                c as u32
            ),
        ));
    }
    let issued = pairing::redeem(
        &state.store,
        &state.auth,
        &state.pairing,
        peer,
        &req.code,
        name,
    )
    .await
    .map_err(|e| match e {
        RedeemError::Refused(Refused::BadCode) => ApiError::new(
            ErrorCode::Unauthorized,
            "this pairing code is wrong, used or expired; run `tether pair` for a new one",
        ),
        RedeemError::Refused(Refused::LockedOut(wait)) => ApiError::too_many(
            ErrorCode::TooManyPairingAttempts,
            "too many wrong pairing codes in the last minute from this address \
                 (auth.pairing_attempts_per_minute), or from everyone \
                 (auth.pairing_attempts_per_minute_total); try again later",
            wait,
        ),
        RedeemError::Db(e) => e.into(),
        RedeemError::Other(e) => e.into(),
    })?;
    Ok(Json(Paired {
        token: issued.token,
        token_id: issued.claims.jti,
        owner: issued.claims.sub,
    }))
}
