//! The push ledger (admin): `GET /api/pushes` lists pushes newest first, filtered by
//! device, session or status; `GET /api/pushes/{id}` shows one with every attempt.

use axum::{
    extract::{Path, State},
    response::IntoResponse,
    routing::get,
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    routes::{Access, Routes},
    views::{time, Page},
    ApiError, ApiQuery,
};
use crate::{
    auth::Admin,
    store::{
        devices,
        pushes::{self, AttemptRow, PushRow, PushStatus},
    },
    AppState,
};
use axum::http::Method;

/// A `device` filter this long is a token, shorter ones are device ids.
const MIN_TOKEN_LEN: usize = 64;

pub fn router() -> Routes {
    Routes::default()
        .add(Method::GET, "/api/pushes", Access::Admin, get(list))
        .add(Method::GET, "/api/pushes/{id}", Access::Admin, get(show))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushView {
    id: i64,
    device_id: Option<i64>,
    owner: String,
    /// The session it is about; null for a terminal's push.
    session_id: Option<String>,
    /// The terminal it is about; null for a session's push.
    terminal_id: Option<String>,
    message_id: Option<i64>,
    kind: String,
    status: PushStatus,
    /// False for pushes the log gateway took (no APNs key) and those APNs never answered.
    sent_to_apple: bool,
    title: String,
    subtitle: Option<String>,
    /// The plain text the preview is cut from.
    text: String,
    attempts: i64,
    /// When it is tried next (pending pushes only).
    next_attempt_at: Option<DateTime<Utc>>,
    last_status_code: Option<i64>,
    last_reason: Option<String>,
    apns_id: Option<String>,
    error: Option<String>,
    /// The exact JSON of the last attempt.
    payload: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PushRow> for PushView {
    fn from(p: PushRow) -> Self {
        Self {
            id: p.id,
            device_id: p.device_id,
            owner: p.owner,
            session_id: p.session_id,
            terminal_id: p.terminal_id,
            message_id: p.message_id,
            kind: p.kind,
            sent_to_apple: p.status != PushStatus::Logged && p.last_status_code.is_some(),
            next_attempt_at: (p.status == PushStatus::Pending).then(|| time(p.next_attempt_at)),
            status: p.status,
            title: p.title,
            subtitle: p.subtitle,
            text: p.text,
            attempts: p.attempts,
            last_status_code: p.last_status_code,
            last_reason: p.last_reason,
            apns_id: p.apns_id,
            error: p.error,
            payload: p.payload.and_then(|j| serde_json::from_str(&j).ok()),
            created_at: time(p.created_at),
            updated_at: time(p.updated_at),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptView {
    status_code: Option<i64>,
    reason: Option<String>,
    apns_id: Option<String>,
    timestamp: Option<DateTime<Utc>>,
    error: Option<String>,
    action: String,
    at: DateTime<Utc>,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            status_code: a.status_code,
            reason: a.reason,
            apns_id: a.apns_id,
            timestamp: a.timestamp.map(time),
            error: a.error,
            action: a.action,
            at: time(a.at),
        }
    }
}

/// The ledger's filters.
#[derive(Deserialize)]
struct Filters {
    /// A device id or token.
    device: Option<String>,
    session: Option<String>,
    status: Option<String>,
}

/// `?device=ID|TOKEN&session=ID&status=pending|sending|delivered|logged|failed|cancelled
/// &before=PUSH_ID&limit=N`
async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<Filters>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let pool = state.store.pool();
    let device_id = match q.device.as_deref() {
        None => None,
        Some(d) if d.len() >= MIN_TOKEN_LEN => {
            let token = d.to_ascii_lowercase();
            match devices::get_by_token(pool, &token).await? {
                Some(device) => Some(device.id),
                None => return Ok(Json(json!({ "pushes": [] }))),
            }
        }
        Some(d) => Some(d.parse::<i64>().map_err(|_| {
            ApiError::invalid("invalid_device", "device must be a device id or token")
        })?),
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(PushStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "invalid_status",
                "status must be pending, sending, delivered, logged, failed or cancelled",
            )
        })?),
    };
    let rows = pushes::list(
        pool,
        &pushes::Filter {
            device_id,
            session_id: q.session.as_deref(),
            status,
            before: page.before,
            limit: page.limit()?,
        },
    )
    .await?;
    let pushes: Vec<PushView> = rows.into_iter().map(PushView::from).collect();
    Ok(Json(json!({ "pushes": pushes })))
}

async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::not_found("push_not_found", format!("no push {id}"));
    let push_id: i64 = id.parse().map_err(|_| not_found())?;
    let pool = state.store.pool();
    let row = pushes::get(pool, push_id).await?.ok_or_else(not_found)?;
    let attempts: Vec<AttemptView> = pushes::attempts(pool, push_id)
        .await?
        .into_iter()
        .map(AttemptView::from)
        .collect();
    let mut body = serde_json::to_value(PushView::from(row)).unwrap_or_default();
    body["attemptLog"] = serde_json::to_value(attempts).unwrap_or_default();
    Ok(Json(body))
}
