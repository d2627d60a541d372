//! API tokens and pairing: the list (admin), revocation (admin, or the owner of the token),
//! and `POST /api/pair`, where a phone trades a one-time code for a token of its own (no
//! token needed).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    routes::{Access, Routes},
    views::time,
    ApiError, ApiJson,
};
use crate::{
    auth::{self, Admin, Caller},
    pairing::{self, RedeemError, Refused},
    store::{now_ms, tokens, tokens::TokenRow},
    AppState,
};
use axum::http::Method;

/// Longest device name kept.
const MAX_NAME: usize = 100;

pub fn router() -> Routes {
    Routes::default()
        .add(Method::GET, "/api/tokens", Access::Admin, get(list))
        .add(
            Method::DELETE,
            "/api/tokens/{id}",
            Access::User,
            delete(revoke),
        )
        .add(Method::POST, PAIR_ROUTE, Access::Public, post(pair))
}

/// The pairing route: the one besides health open without a token.
pub(super) const PAIR_ROUTE: &str = "/api/pair";

fn view(t: TokenRow) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "owner": t.owner,
        "role": t.role,
        "paired": t.paired,
        "createdAt": time(t.created_at),
        "expiresAt": time(t.expires_at),
        "lastUsedAt": t.last_used_at.map(time),
        "revokedAt": t.revoked_at.map(time),
    })
}

async fn list(State(state): State<AppState>, _admin: Admin) -> Result<impl IntoResponse, ApiError> {
    let rows = tokens::list(state.store.pool(), None).await?;
    let views: Vec<_> = rows.into_iter().map(view).collect();
    Ok(Json(json!({ "tokens": views })))
}

/// Revokes a token: it answers 401 from its next request, and the devices registered with
/// it get no more pushes.
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let pool = state.store.pool();
    tokens::get(pool, &id)
        .await?
        .filter(|t| caller.can_see(&t.owner))
        .ok_or_else(|| ApiError::not_found("token_not_found", format!("no token {id}")))?;
    let disabled = auth::revoke_recorded(&state.store, &id, now_ms()).await?;
    state.auth.forget(&id);
    tracing::info!(token_id = %id, devices = disabled.len(), by = %caller.owner, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PairRequest {
    code: String,
    device_name: Option<String>,
}

async fn pair(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PairRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = req
        .device_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > MAX_NAME) {
        return Err(ApiError::invalid(
            "invalid_device_name",
            format!("deviceName is at most {MAX_NAME} characters"),
        ));
    }
    let issued = pairing::redeem(&state.store, &state.auth, &state.pairing, &req.code, name)
        .await
        .map_err(|e| match e {
            RedeemError::Refused(Refused::BadCode) => ApiError::unauthorized(
                "this pairing code is wrong, used or expired; run `tether pair` for a new one",
            ),
            RedeemError::Refused(Refused::LockedOut(wait)) => ApiError::too_many(
                "too_many_pairing_attempts",
                "too many wrong pairing codes in the last minute (auth.pairing_attempts_per_minute); try again later",
                wait,
            ),
            RedeemError::Db(e) => e.into(),
            RedeemError::Other(e) => e.into(),
        })?;
    Ok(Json(json!({
        "token": issued.token,
        "tokenId": issued.claims.jti,
        "owner": issued.claims.sub,
    })))
}
