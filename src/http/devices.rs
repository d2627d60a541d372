//! Devices: `POST /api/devices` registers (or re-registers) the caller's APNs token (a
//! token another owner holds answers 409; only the admin can move it),
//! `GET /api/devices` lists the caller's devices (an admin's: everyone's), and
//! `DELETE /api/devices/{token}` removes one, cancelling its unsent pushes.

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
use utoipa::{
    openapi::{Object, ObjectBuilder, Type},
    IntoParams, ToSchema,
};

use super::{
    error::{ApiError, ApiJson, ApiPath},
    routes::{Access, Routes},
    state::AppState,
    views::time,
};
use crate::{
    auth::Caller,
    push::token_prefix,
    store::{
        self,
        devices::{self, DeviceRow, Environment},
        pushes,
    },
};
use axum::http::Method;

/// APNs tokens are 32 bytes today; Apple may make them longer, so up to 100 bytes is taken.
const MIN_TOKEN_HEX: usize = 64;
const MAX_TOKEN_HEX: usize = 200;
/// [`normalize_token`]'s rule as a pattern, for the API's document.
const TOKEN_PATTERN: &str = "^([0-9A-Fa-f]{2}){32,100}$";

/// A device token as the API's document describes it.
pub(super) fn token_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(TOKEN_PATTERN))
        .examples(["a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f"])
        .build()
}

/// A phone's name as the API's document describes it (or null): at most 100 characters, none that
/// [`unsafe_name_char`] refuses.
pub(super) fn name_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .max_length(Some(100))
        .pattern(Some(NAME_PATTERN))
        .examples(["Ana's iPhone"])
        .build()
}

/// A device token in a path.
#[derive(IntoParams)]
#[into_params(names("token"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct DeviceToken(
    /// The APNs device token in hex.
    #[param(schema_with = token_schema)]
    String,
);
/// Longest topic (a bundle id, perhaps with a suffix such as `.voip`).
const MAX_TOPIC_BYTES: usize = 255;
/// Longest device name.
const MAX_NAME_CHARS: usize = 100;

/// [`unsafe_name_char`]'s rule as a pattern, for the API's document: no control characters
/// (Unicode's Cc) and no text-direction marks or overrides.
const NAME_PATTERN: &str =
    "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u202A-\\u202E\\u2066-\\u2069]*$";

/// The first character of a device name that a list or a log must not show: a control
/// character (NUL, line breaks, escapes, C1) or one that reorders the text around it
/// (bidirectional embeddings, overrides, isolates and marks), which could make a name
/// read as something else.
pub(super) fn unsafe_name_char(name: &str) -> Option<char> {
    // NAME_PATTERN says the same for the API's document: keep the two alike.
    name.chars().find(|&c| {
        c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
    })
}

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/api/devices",
            Access::User,
            get(list),
            LIST_ERRORS,
        )
        .add(
            Method::POST,
            "/api/devices",
            Access::User,
            post(register),
            REGISTER_ERRORS,
        )
        .add(
            Method::DELETE,
            "/api/devices/{token}",
            Access::User,
            delete(remove),
            REMOVE_ERRORS,
        )
}

/// A phone's APNs registration.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterRequest {
    /// The APNs device token in hex (64 to 200 hex digits).
    #[schema(schema_with = token_schema)]
    token: String,
    /// `sandbox` (debug builds) or `production` (TestFlight, App Store).
    #[schema(value_type = Environment)]
    environment: String,
    /// The app's bundle id (letters, digits, `.`, `-`, `_`); default `push.apns.topic`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$", example = "com.example.tether")]
    topic: Option<String>,
    /// A name for the phone (at most 100 characters, no control or text-direction characters).
    #[schema(schema_with = name_schema)]
    name: Option<String>,
}

/// A phone that gets pushes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceView {
    id: i64,
    owner: String,
    token: String,
    environment: Environment,
    /// The topic it registered with; null: `push.apns.topic`.
    topic: Option<String>,
    name: Option<String>,
    active: bool,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    disabled_reason: Option<String>,
}

fn view(d: DeviceRow) -> DeviceView {
    DeviceView {
        id: d.id,
        active: d.is_active(),
        owner: d.owner,
        token: d.token,
        environment: d.environment,
        topic: d.topic,
        name: d.name,
        created_at: time(d.created_at),
        last_seen_at: time(d.last_seen_at),
        disabled_at: d.disabled_at.map(time),
        disabled_reason: d.disabled_reason,
    }
}

/// A token as stored: lowercase hex. `None` if it is not hex of an APNs token's length.
pub(super) fn normalize_token(token: &str) -> Option<String> {
    let ok = (MIN_TOKEN_HEX..=MAX_TOKEN_HEX).contains(&token.len())
        && token.len().is_multiple_of(2)
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| token.to_ascii_lowercase())
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// What [`register`] may answer besides the edge's errors (see `openapi`).
const REGISTER_ERRORS: &[ErrorCode] = &[
    ErrorCode::DeviceTokenTaken,
    ErrorCode::InvalidDeviceToken,
    ErrorCode::InvalidEnvironment,
    ErrorCode::InvalidTopic,
    ErrorCode::InvalidName,
    ErrorCode::TopicRequired,
];

/// Register a phone
///
/// Registers (or registers again) the caller's APNs device token. A token another owner
/// holds answers 409; only the admin can move it.
#[utoipa::path(
    post,
    path = "/api/devices",
    operation_id = "registerDevice",
    tag = "devices",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "Registered again (enabled, if it was disabled)", body = DeviceView),
        (status = 201, description = "Registered", body = DeviceView),
    ),
)]
pub(super) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let token = normalize_token(&req.token).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidDeviceToken,
            format!(
                "token must be the APNs device token in hex: {MIN_TOKEN_HEX} to {MAX_TOKEN_HEX} \
                 hex digits (got {} characters)",
                req.token.chars().count()
            ),
        )
    })?;
    let environment = Environment::parse(&req.environment).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidEnvironment,
            "environment must be \"sandbox\" (debug builds) or \"production\" (TestFlight, App Store)",
        )
    })?;
    if let Some(topic) = &req.topic {
        if !valid_topic(topic) {
            return Err(ApiError::new(
                ErrorCode::InvalidTopic,
                "topic must be the app's bundle id (letters, digits, '.', '-', '_')",
            ));
        }
    }
    // Counted as sent, as the document says.
    if req
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            format!("name must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if let Some(c) = req.name.as_deref().and_then(unsafe_name_char) {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            format!(
                "name must not hold control or text-direction characters (it holds U+{:04X})",
                c as u32
            ),
        ));
    }
    let name = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if req.topic.is_none()
        && state.push.config().default_topic.is_none()
        && state.push.gateway().needs_topic()
    {
        return Err(ApiError::new(
            ErrorCode::TopicRequired,
            "send the app's bundle id as topic (push.apns.topic is not set on this server)",
        ));
    }

    let now = store::now_ms();
    let mut tx = state.store.begin_write().await?;
    let before = devices::get_by_token(&mut *tx, &token).await?;
    if let Some(before) = &before {
        if before.owner != caller.owner && !caller.is_admin() {
            // Moving it would cut its owner's pushes off and send this caller's to a phone
            // they may not hold: whoever knows a token could take a phone over.
            tracing::warn!(device_id = before.id, device = %token_prefix(&token), "device token registered by another owner: refused");
            return Err(ApiError::new(
                ErrorCode::DeviceTokenTaken,
                "this device token is registered by another owner; remove it there first \
                 (DELETE /api/devices/{token}) or ask the admin",
            ));
        }
    }
    let row = devices::upsert(
        &mut *tx,
        &devices::NewDevice {
            owner: &caller.owner,
            token: &token,
            environment,
            topic: req.topic.as_deref(),
            name,
            token_id: caller.token_id.as_deref(),
            now,
        },
    )
    .await?;
    if let Some(before) = &before {
        if before.owner != row.owner {
            // The admin moved the phone to someone else: the old owner's pushes stay unsent.
            pushes::cancel_pending_for_device(
                &mut *tx,
                row.id,
                "the device was registered again by another owner",
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    let device = token_prefix(&token);
    let status = match &before {
        None => {
            tracing::info!(device_id = row.id, %device, environment = environment.as_str(), "device registered");
            StatusCode::CREATED
        }
        Some(before) => {
            if !before.is_active() {
                tracing::info!(device_id = row.id, %device, "disabled device registered again: enabled");
            }
            StatusCode::OK
        }
    };
    Ok((status, Json(view(row))))
}

#[derive(Serialize, ToSchema)]
pub(super) struct DeviceList {
    devices: Vec<DeviceView>,
}

/// [`list`] answers only the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[];

/// The caller's phones
///
/// An admin sees everyone's.
#[utoipa::path(
    get,
    path = "/api/devices",
    operation_id = "listDevices",
    tag = "devices",
    responses((status = 200, description = "The devices", body = DeviceList)),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let rows = devices::list(state.store.pool(), caller.scope()).await?;
    let devices = rows.into_iter().map(view).collect();
    Ok(Json(DeviceList { devices }))
}

/// What [`remove`] may answer besides the edge's errors (see `openapi`).
const REMOVE_ERRORS: &[ErrorCode] = &[ErrorCode::DeviceNotFound];

/// Remove a phone
///
/// Its pushes not yet sent are cancelled.
#[utoipa::path(
    delete,
    path = "/api/devices/{token}",
    operation_id = "removeDevice",
    tag = "devices",
    params(DeviceToken),
    responses(
        (status = 204, description = "Removed"),
    ),
)]
pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(token): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::new(ErrorCode::DeviceNotFound, "no such device");
    let token = normalize_token(&token).ok_or_else(not_found)?;
    let now = store::now_ms();
    let mut tx = state.store.begin_write().await?;
    let Some(device) = devices::get_by_token(&mut *tx, &token)
        .await?
        .filter(|d| caller.can_see(&d.owner))
    else {
        return Err(not_found());
    };
    let cancelled =
        pushes::cancel_pending_for_device(&mut *tx, device.id, "the device was removed", now)
            .await?;
    devices::delete(&mut *tx, &token, None).await?;
    tx.commit().await?;
    tracing::info!(device_id = device.id, device = %token_prefix(&token), cancelled, "device removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_hex_of_an_apns_length() {
        let good = "A0b1".repeat(16);
        assert_eq!(normalize_token(&good), Some(good.to_ascii_lowercase()));
        assert!(normalize_token(&"ab".repeat(100)).is_some());
        for bad in [
            String::new(),
            "ab".repeat(31),                 // 62 digits: too short
            "ab".repeat(101),                // too long
            format!("{}a", "ab".repeat(32)), // odd
            "zz".repeat(32),                 // not hex
            format!("<{}>", "ab".repeat(32)),
            format!("{} ", "ab".repeat(32)),
        ] {
            assert_eq!(normalize_token(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn topics_look_like_bundle_ids() {
        assert!(valid_topic("com.example.tether"));
        assert!(valid_topic("com.example.tether.voip"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("com example"));
        assert!(!valid_topic(&"a".repeat(256)));
    }
}
