//! Approvals from the phone: a session's requests, one request, the decision (allow, deny,
//! or answers to a question), and the session's permission mode.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    routes::{Access, Routes},
    sessions::visible,
    views::{ApprovalView, Page},
    ApiError, ApiJson, ApiQuery,
};
use crate::{
    agent::Decision,
    auth::Caller,
    config::PERMISSION_MODES,
    store::{
        approvals::{self, ApprovalRow, ApprovalStatus},
        sessions,
    },
    AppState,
};
use axum::http::Method;

/// What the agent is told when the owner denies without saying why.
const DEFAULT_DENY: &str = "The user denied this from their phone.";

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/api/sessions/{id}/approvals",
            Access::User,
            get(list),
        )
        .add(Method::GET, "/api/approvals/{id}", Access::User, get(show))
        .add(
            Method::POST,
            "/api/approvals/{id}",
            Access::User,
            post(decide),
        )
        .add(
            Method::POST,
            "/api/sessions/{id}/permission-mode",
            Access::User,
            post(set_mode),
        )
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "invalid_status",
                "status must be pending, allowed, denied, expired or cancelled",
            )
        })?),
    };
    let limit = Page {
        limit: q.limit,
        ..Page::default()
    }
    .limit()?;
    let rows = approvals::list(state.store.pool(), &id, status, limit).await?;
    let views: Vec<ApprovalView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "approvals": views })))
}

/// The approval if it exists and the caller may see its session (else 404).
async fn visible_approval(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<ApprovalRow, ApiError> {
    let missing = || ApiError::not_found("approval_not_found", format!("no approval {id}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let row = approvals::get(state.store.pool(), id)
        .await?
        .ok_or_else(missing)?;
    visible(state, caller, &row.session_id)
        .await
        .map_err(|_| missing())?;
    Ok(row)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let row = visible_approval(&state, &caller, &id).await?;
    Ok(Json(ApprovalView::from(row)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecideRequest {
    /// `allow` or `deny`; may be left out when `answers` is given (a question).
    decision: Option<String>,
    updated_input: Option<Value>,
    message: Option<String>,
    /// A question's answers: question text → chosen label.
    answers: Option<Map<String, Value>>,
    /// `session`: keep the agent's own suggestion (e.g. accept edits) for the session.
    remember: Option<String>,
}

async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Response, ApiError> {
    let row = visible_approval(&state, &caller, &id).await?;
    if row.status != ApprovalStatus::Pending {
        return already(row);
    }
    let (decision, keep_mode) = decision_of(&row, req)?;
    let (after, taken) = state
        .sessions
        .decide(&row, decision, &caller.owner, keep_mode)
        .await?;
    if taken {
        Ok(Json(ApprovalView::from(after)).into_response())
    } else {
        // Decided by someone else meanwhile (409), or no longer answerable (410).
        already(after)
    }
}

/// 409 with the decision made first; 410 when it ended undecided (expired or cancelled).
fn already(row: ApprovalRow) -> Result<Response, ApiError> {
    let status = row.status;
    if matches!(status, ApprovalStatus::Expired | ApprovalStatus::Cancelled) {
        let why = row.reason.as_deref().unwrap_or("it ended");
        return Err(ApiError::new(
            StatusCode::GONE,
            "approval_expired",
            format!("this request can no longer be answered: {why}"),
        ));
    }
    let body = json!({
        "error": {
            "code": "already_decided",
            "message": format!("this request was already decided: {}", json!(status).as_str().unwrap_or("")),
        },
        "approval": ApprovalView::from(row),
    });
    Ok((StatusCode::CONFLICT, Json(body)).into_response())
}

/// The answer for the agent, and a mode to keep for the session (`remember`), from what the
/// phone sent.
fn decision_of(
    row: &ApprovalRow,
    req: DecideRequest,
) -> Result<(Decision, Option<String>), ApiError> {
    let input = || -> Result<Value, ApiError> {
        if row.input_cut {
            return Err(ApiError::invalid(
                "input_required",
                "the input was too large to keep; send updatedInput",
            ));
        }
        serde_json::from_str(&row.input).map_err(|e| anyhow::anyhow!(e).into())
    };
    let suggestions: Option<Value> = row
        .suggestions
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    let remember = match req.remember.as_deref() {
        None => false,
        Some("session") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_remember",
                "remember must be \"session\"",
            ))
        }
    };
    let decision = match (req.decision.as_deref(), req.answers) {
        (Some("deny"), _) => {
            let message = req
                .message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_DENY.to_string());
            return Ok((Decision::Deny { message }, None));
        }
        (None | Some("allow"), Some(answers)) if row.kind == "question" => {
            let mut updated = req.updated_input.map_or_else(input, Ok)?;
            let Some(obj) = updated.as_object_mut() else {
                return Err(ApiError::invalid(
                    "invalid_input",
                    "the question's input is not an object",
                ));
            };
            obj.insert("answers".into(), Value::Object(answers));
            Decision::Allow {
                updated_input: updated,
                updated_permissions: None,
            }
        }
        (_, _) if row.kind == "question" => return Err(ApiError::invalid(
            "answers_required",
            "a question is answered with {\"answers\": {\"<question>\": \"<label>\"}} (or denied)",
        )),
        (Some("allow"), None) => Decision::Allow {
            updated_input: req.updated_input.map_or_else(input, Ok)?,
            updated_permissions: remember.then(|| suggestions.clone()).flatten(),
        },
        _ => {
            return Err(ApiError::invalid(
                "invalid_decision",
                "decision must be \"allow\" or \"deny\"",
            ))
        }
    };
    // A kept mode is stored with the session, so a resumed process keeps it too.
    let keep_mode = match (&decision, remember) {
        (Decision::Allow { .. }, true) => suggestions
            .as_ref()
            .and_then(Value::as_array)
            .and_then(|s| {
                s.iter()
                    .find(|x| x["type"] == "setMode")
                    .and_then(|x| x["mode"].as_str())
            })
            .filter(|m| PERMISSION_MODES.contains(m))
            .map(str::to_string),
        _ => None,
    };
    Ok((decision, keep_mode))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: String,
}

/// Sets how the session's agent asks before using tools: stored with the session (every
/// later start uses it) and sent to its live process.
async fn set_mode(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ModeRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !PERMISSION_MODES.contains(&req.mode.as_str()) {
        return Err(ApiError::invalid(
            "invalid_permission_mode",
            format!("mode must be one of {}", PERMISSION_MODES.join(", ")),
        ));
    }
    let session = visible(&state, &caller, &id).await?;
    if !session.is_active() {
        return Err(ApiError::conflict(
            "session_ended",
            "this session has ended",
        ));
    }
    sessions::set_permission_mode(state.store.pool(), &id, &req.mode).await?;
    let applied = state.sessions.apply_permission_mode(&id, &req.mode).await;
    Ok(Json(json!({
        "sessionId": id,
        "permissionMode": req.mode,
        "appliedToLiveProcess": applied,
    })))
}
