//! The push ledger (admin): `GET /api/pushes` lists pushes newest first, filtered by
//! device, session or status; `GET /api/pushes/{id}` shows one with every attempt.

use super::codes::ErrorCode;
use axum::{extract::State, response::IntoResponse, routing::get, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{
    openapi::{schema::Schema, ObjectBuilder, OneOfBuilder, Type},
    IntoParams, ToSchema,
};

use super::{
    devices::{normalize_token, token_schema},
    error::{ApiError, ApiPath, ApiQuery},
    params::NumericId,
    routes::{Access, Routes},
    state::AppState,
    views::{time, Page},
};
use crate::{
    auth::Admin,
    store::{
        devices,
        pushes::{self, AttemptRow, PushRow, PushStatus},
    },
};
use axum::http::Method;

/// A device id as the `device` filter takes it: 1 to 18 digits (an `i64` always).
const DEVICE_ID_PATTERN: &str = "^[0-9]{1,18}$";

fn is_device_id(d: &str) -> bool {
    (1..=18).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
}

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/api/pushes",
            Access::Admin,
            get(list),
            LIST_ERRORS,
        )
        .add(
            Method::GET,
            "/api/pushes/{id}",
            Access::Admin,
            get(show),
            SHOW_ERRORS,
        )
}

/// One notification to one device, and where it is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PushView {
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

/// One try to send a push, and the gateway's answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptView {
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Filters {
    /// A device's id, or its APNs token.
    #[param(schema_with = device_filter)]
    device: Option<String>,
    /// A session's id.
    session: Option<String>,
    /// Only pushes in this state.
    #[param(value_type = Option<PushStatus>)]
    status: Option<String>,
}

/// The `device` filter's schema: an id ([`DEVICE_ID_PATTERN`]) or a device token.
fn device_filter() -> Schema {
    let id = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(DEVICE_ID_PATTERN))
        .examples(["3"])
        .build();
    Schema::OneOf(OneOfBuilder::new().item(id).item(token_schema()).build())
}

#[derive(Serialize, ToSchema)]
pub(super) struct PushList {
    pushes: Vec<PushView>,
}

/// What [`list`] may answer besides the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidDevice,
    ErrorCode::InvalidStatus,
    ErrorCode::InvalidLimit,
    ErrorCode::InvalidQuery,
];

/// The push ledger (admin)
///
/// Pushes newest first, filtered by device, session or status.
#[utoipa::path(
    get,
    path = "/api/pushes",
    operation_id = "listPushes",
    tag = "pushes",
    params(
        Filters,
        ("before" = Option<i64>, Query, minimum = 0, description = "Only pushes older than this push id (digits only)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "The pushes", body = PushList),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<Filters>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let pool = state.store.pool();
    // Every filter is checked before any is looked up: an unknown device answers an empty
    // list, a bad status 422 whatever the device.
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(PushStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidStatus,
                "status must be pending, sending, delivered, logged, failed or cancelled",
            )
        })?),
    };
    let limit = page.limit()?;
    let device_id = match q.device.as_deref() {
        None => None,
        Some(d) if is_device_id(d) => d.parse::<i64>().ok(),
        Some(d) => {
            let token = normalize_token(d).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidDevice,
                    "device must be a device id or token",
                )
            })?;
            match devices::get_by_token(pool, &token).await? {
                Some(device) => Some(device.id),
                None => return Ok(Json(PushList { pushes: Vec::new() })),
            }
        }
    };
    let rows = pushes::list(
        pool,
        &pushes::Filter {
            device_id,
            session_id: q.session.as_deref(),
            status,
            before: page.before.map(|c| c.0),
            limit,
        },
    )
    .await?;
    let pushes = rows.into_iter().map(PushView::from).collect();
    Ok(Json(PushList { pushes }))
}

/// A push with every attempt to send it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PushDetail {
    #[serde(flatten)]
    push: PushView,
    attempt_log: Vec<AttemptView>,
}

/// What [`show`] may answer besides the edge's errors (see `openapi`).
const SHOW_ERRORS: &[ErrorCode] = &[ErrorCode::PushNotFound];

/// One push (admin)
///
/// With every attempt to send it.
#[utoipa::path(
    get,
    path = "/api/pushes/{id}",
    operation_id = "getPush",
    tag = "pushes",
    params(NumericId),
    responses(
        (status = 200, description = "The push", body = PushDetail),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::new(ErrorCode::PushNotFound, format!("no push {id}"));
    let push_id: i64 = id.parse().map_err(|_| not_found())?;
    let pool = state.store.pool();
    let row = pushes::get(pool, push_id).await?.ok_or_else(not_found)?;
    let attempt_log = pushes::attempts(pool, push_id)
        .await?
        .into_iter()
        .map(AttemptView::from)
        .collect();
    Ok(Json(PushDetail {
        push: PushView::from(row),
        attempt_log,
    }))
}
