//! Approvals from the phone: a session's requests, one request, the decision (allow, deny,
//! or answers to a question), and the session's permission mode.

use super::codes::ErrorCode;
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{
    openapi::{Object, ObjectBuilder, Type},
    IntoParams, ToSchema,
};

use super::{
    error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorDetail},
    params::{NumericId, SessionId},
    routes::{Access, Routes},
    sessions::visible,
    state::AppState,
    views::{ApprovalView, Page},
};
use crate::{
    agent::Decision,
    auth::Caller,
    config::PERMISSION_MODES,
    sessions::ModeApplied,
    store::{
        approvals::{self, ApprovalRow, ApprovalStatus},
        sessions,
    },
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
            LIST_ERRORS,
        )
        .add(
            Method::GET,
            "/api/approvals/{id}",
            Access::User,
            get(show),
            SHOW_ERRORS,
        )
        .add(
            Method::POST,
            "/api/approvals/{id}",
            Access::User,
            post(decide),
            DECIDE_ERRORS,
        )
        .add(
            Method::POST,
            "/api/sessions/{id}/permission-mode",
            Access::User,
            post(set_mode),
            SET_MODE_ERRORS,
        )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only approvals in this state.
    #[param(value_type = Option<ApprovalStatus>)]
    status: Option<String>,
    /// At most this many (default 100), newest first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ApprovalList {
    approvals: Vec<ApprovalView>,
}

/// What [`list`] may answer besides the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[
    ErrorCode::SessionNotFound,
    ErrorCode::InvalidStatus,
    ErrorCode::InvalidLimit,
    ErrorCode::InvalidQuery,
];

/// A session's approvals
///
/// What the agent asked about in this session, newest first; `?status=pending` for what
/// waits for an answer.
#[utoipa::path(
    get,
    path = "/api/sessions/{id}/approvals",
    operation_id = "listApprovals",
    tag = "approvals",
    params(SessionId, ListQuery),
    responses(
        (status = 200, description = "The approvals", body = ApprovalList),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidStatus,
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
    let approvals = rows.into_iter().map(Into::into).collect();
    Ok(Json(ApprovalList { approvals }))
}

/// The approval if it exists and the caller may see its session (else 404).
async fn visible_approval(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<ApprovalRow, ApiError> {
    let missing = || ApiError::new(ErrorCode::ApprovalNotFound, format!("no approval {id}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let row = approvals::get(state.store.pool(), id)
        .await?
        .ok_or_else(missing)?;
    visible(state, caller, &row.session_id)
        .await
        .map_err(|_| missing())?;
    Ok(row)
}

/// What [`show`] may answer besides the edge's errors (see `openapi`).
const SHOW_ERRORS: &[ErrorCode] = &[ErrorCode::ApprovalNotFound];

/// One approval
#[utoipa::path(
    get,
    path = "/api/approvals/{id}",
    operation_id = "getApproval",
    tag = "approvals",
    params(NumericId),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let row = visible_approval(&state, &caller, &id).await?;
    Ok(Json(ApprovalView::from(row)))
}

/// The answer to an approval: allow or deny a tool, or answer a question.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"decision": "allow", "remember": "session"}))]
pub(super) struct DecideRequest {
    /// `allow` or `deny`; may be left out when `answers` is given (a question).
    #[schema(value_type = Option<Verdict>)]
    decision: Option<String>,
    /// The tool's input to use instead of the one asked for (required when `inputCut`).
    updated_input: Option<Value>,
    /// With `deny`: why, for the agent.
    message: Option<String>,
    /// A question's answers: question text → chosen label.
    #[schema(value_type = Option<Object>, example = json!({"Which color?": "Blue"}))]
    answers: Option<Map<String, Value>>,
    /// `session`: keep the agent's own suggestion (e.g. accept edits) for the session.
    #[schema(value_type = Option<Remember>)]
    remember: Option<String>,
}

/// What is decided.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // the document's only
enum Verdict {
    Allow,
    Deny,
}

impl DecideRequest {
    /// Refuses a `decision` or `remember` that no approval takes.
    fn check_values(&self) -> Result<(), ApiError> {
        if !matches!(self.remember.as_deref(), None | Some("session")) {
            return Err(ApiError::new(
                ErrorCode::InvalidRemember,
                "remember must be \"session\"",
            ));
        }
        if !matches!(self.decision.as_deref(), None | Some("allow" | "deny")) {
            return Err(invalid_decision());
        }
        Ok(())
    }
}

fn invalid_decision() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidDecision,
        "decision must be \"allow\" or \"deny\"",
    )
}

/// How long an allowed suggestion holds.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // the document's only
enum Remember {
    Session,
}

/// 409: the approval was decided before, and how.
#[derive(Serialize, ToSchema)]
pub(super) struct AlreadyDecided {
    error: ErrorDetail,
    approval: ApprovalView,
}

/// What [`decide`] may answer besides the edge's errors (see `openapi`).
const DECIDE_ERRORS: &[ErrorCode] = &[
    ErrorCode::PermissionModeNotAllowed,
    ErrorCode::ApprovalNotFound,
    ErrorCode::ApprovalExpired,
    ErrorCode::InvalidDecision,
    ErrorCode::AnswersRequired,
    ErrorCode::InvalidRemember,
    ErrorCode::InputRequired,
    ErrorCode::InvalidInput,
];

/// Answer an approval
///
/// The decision is stored first, then written to the agent, and announced as
/// `tether.approval_decided` on the session's events. A tool is answered with `decision`
/// (`allow`, perhaps with `remember: "session"` and `updatedInput`; `deny`, perhaps with a
/// `message`); a question with `answers` (question → chosen label) or `deny`.
#[utoipa::path(
    post,
    path = "/api/approvals/{id}",
    operation_id = "decideApproval",
    tag = "approvals",
    params(NumericId),
    request_body = DecideRequest,
    responses(
        (status = 200, description = "Decided: the approval as it is now", body = ApprovalView),
        (status = 409, description = "Someone decided it first (`already_decided`): their decision", body = AlreadyDecided),
    ),
)]
pub(super) async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Response, ApiError> {
    // A value no approval takes is 422 whatever became of this one (answered, expired).
    req.check_values()?;
    let row = visible_approval(&state, &caller, &id).await?;
    if row.status != ApprovalStatus::Pending {
        return already(row);
    }
    let (decision, keep_mode) = decision_of(&row, req)?;
    if let Some(mode) = &keep_mode {
        may_choose(&state, &caller, mode)?;
    }
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
            ErrorCode::ApprovalExpired,
            format!("this request can no longer be answered: {why}"),
        ));
    }
    let body = AlreadyDecided {
        error: ErrorDetail {
            code: ErrorCode::AlreadyDecided,
            message: format!(
                "this request was already decided: {}",
                serde_json::json!(status).as_str().unwrap_or("")
            ),
        },
        approval: ApprovalView::from(row),
    };
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
            return Err(ApiError::new(
                ErrorCode::InputRequired,
                "the input was too large to keep; send updatedInput",
            ));
        }
        serde_json::from_str(&row.input).map_err(|e| anyhow::anyhow!(e).into())
    };
    let suggestions: Option<Value> = row
        .suggestions
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    // `remember` is "session" or absent ([`DecideRequest::check_values`] ran first).
    let remember = req.remember.is_some();
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
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    "the question's input is not an object",
                ));
            };
            obj.insert("answers".into(), Value::Object(answers));
            Decision::Allow {
                updated_input: updated,
                updated_permissions: None,
            }
        }
        (_, _) if row.kind == "question" => return Err(ApiError::new(
            ErrorCode::AnswersRequired,
            "a question is answered with {\"answers\": {\"<question>\": \"<label>\"}} (or denied)",
        )),
        (Some("allow"), None) => Decision::Allow {
            updated_input: req.updated_input.map_or_else(input, Ok)?,
            updated_permissions: remember.then(|| suggestions.clone()).flatten(),
        },
        _ => return Err(invalid_decision()),
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ModeRequest {
    /// One of the CLI's permission modes.
    #[schema(schema_with = permission_modes)]
    mode: String,
}

/// The modes [`PERMISSION_MODES`] lists, as a schema.
fn permission_modes() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(PERMISSION_MODES))
        .examples(["acceptEdits"])
        .build()
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11",
    "permissionMode": "bypassPermissions", "appliedToLiveProcess": false,
    "liveProcessError": "Cannot set permission mode to bypassPermissions because the session was not launched with --dangerously-skip-permissions",
    "takesEffect": "nextStart"}))]
pub(super) struct ModeAnswer {
    session_id: String,
    /// The mode stored with the session: every later start of its CLI uses it.
    permission_mode: String,
    /// Whether the session's live process answered that it took the mode.
    applied_to_live_process: bool,
    /// Why the live process did not take it: the CLI's own error (e.g. it refuses
    /// `bypassPermissions` when it was not started with it), or that it ended or did not
    /// answer within `agent.control_timeout`. Null when it took it or there is no process.
    live_process_error: Option<String>,
    /// `now` when the live process took it; `nextStart` when it holds from the CLI's next
    /// start (no live process, or the process refused it and goes on in its old mode).
    takes_effect: TakesEffect,
}

/// When a stored permission mode holds.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) enum TakesEffect {
    Now,
    NextStart,
}

/// Refuses a mode the caller may not choose (`agent.permission_modes`; an admin may choose
/// any mode the CLI knows).
fn may_choose(state: &AppState, caller: &Caller, mode: &str) -> Result<(), ApiError> {
    let agent = &state.settings.agent;
    if agent.may_choose(caller.is_admin(), mode) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::PermissionModeNotAllowed,
        format!(
            "a user token may not choose the permission mode {mode} here (agent.permission_modes: {})",
            agent.permission_modes.join(", ")
        ),
    ))
}

/// What [`set_mode`] may answer besides the edge's errors (see `openapi`).
const SET_MODE_ERRORS: &[ErrorCode] = &[
    ErrorCode::PermissionModeNotAllowed,
    ErrorCode::SessionNotFound,
    ErrorCode::SessionEnded,
    ErrorCode::InvalidPermissionMode,
];

/// Set a session's permission mode
///
/// How the session's agent asks before using tools: stored with the session (every later
/// start uses it) and sent to its live process, whose answer says whether it holds now
/// (`appliedToLiveProcess`, `takesEffect`) or only from the next start (`liveProcessError`
/// says why). A user may choose the modes `agent.permission_modes` lists; an admin any.
#[utoipa::path(
    post,
    path = "/api/sessions/{id}/permission-mode",
    operation_id = "setPermissionMode",
    tag = "approvals",
    params(SessionId),
    request_body = ModeRequest,
    responses(
        (status = 200, description = "Set", body = ModeAnswer),
    ),
)]
pub(super) async fn set_mode(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ModeRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !PERMISSION_MODES.contains(&req.mode.as_str()) {
        return Err(ApiError::new(
            ErrorCode::InvalidPermissionMode,
            format!("mode must be one of {}", PERMISSION_MODES.join(", ")),
        ));
    }
    let session = visible(&state, &caller, &id).await?;
    may_choose(&state, &caller, &req.mode)?;
    if !session.is_active() {
        return Err(ApiError::new(
            ErrorCode::SessionEnded,
            "this session has ended",
        ));
    }
    sessions::set_permission_mode(state.store.pool(), &id, &req.mode).await?;
    let (applied, error) = match state.sessions.apply_permission_mode(&id, &req.mode).await {
        ModeApplied::Applied => (true, None),
        ModeApplied::NoProcess => (false, None),
        ModeApplied::NotApplied(error) => (false, Some(error)),
    };
    Ok(Json(ModeAnswer {
        session_id: id,
        permission_mode: req.mode,
        applied_to_live_process: applied,
        live_process_error: error,
        takes_effect: if applied {
            TakesEffect::Now
        } else {
            TakesEffect::NextStart
        },
    }))
}
