//! Sessions: list, show, messages, interrupt, and delete (end). The live event stream is
//! `events`, the keep-alive (and its recap) `keep_alive`.

use axum::{
    extract::State,
    http::Method,
    response::IntoResponse,
    routing::{delete, get, post},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    codes::ErrorCode,
    error::{ApiError, ApiPath, ApiQuery},
    params::SessionId,
    routes::{Access, Routes},
    state::AppState,
    views::{self, ActiveSessionView, MessageView, Page, SessionView},
};
use crate::{
    auth::{Admin, Caller},
    sessions::spares::SpareInfo,
    store::{self, messages, sessions, sessions::SessionRow},
};

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/api/sessions",
            Access::User,
            get(list),
            LIST_ERRORS,
        )
        .add(
            Method::GET,
            "/api/sessions/active",
            Access::Admin,
            get(active),
            ACTIVE_ERRORS,
        )
        .add(
            Method::GET,
            "/api/sessions/{id}",
            Access::User,
            get(show),
            SHOW_ERRORS,
        )
        .add(
            Method::DELETE,
            "/api/sessions/{id}",
            Access::User,
            delete(end),
            END_ERRORS,
        )
        .add(
            Method::GET,
            "/api/sessions/{id}/messages",
            Access::User,
            get(list_messages),
            LIST_MESSAGES_ERRORS,
        )
        .add(
            Method::POST,
            "/api/sessions/{id}/interrupt",
            Access::User,
            post(interrupt),
            INTERRUPT_ERRORS,
        )
}

/// The session if it exists and the caller may see it (else 404, to reveal nothing).
pub(super) async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<SessionRow, ApiError> {
    sessions::get(state.store.pool(), id)
        .await?
        .filter(|s| caller.can_see(&s.owner))
        .ok_or_else(|| ApiError::new(ErrorCode::SessionNotFound, format!("no session {id}")))
}

fn view(state: &AppState, s: SessionRow) -> SessionView {
    let process = state.sessions.process_info(&s.id);
    let terminal = state.sessions.holder(&s.id);
    SessionView {
        terminal_id: terminal,
        ..SessionView::new(s, process)
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct SessionList {
    sessions: Vec<SessionView>,
}

/// What [`list`] may answer besides the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidLimit, ErrorCode::InvalidQuery];

/// The caller's sessions
///
/// Newest activity first; an admin sees everyone's.
#[utoipa::path(
    get,
    path = "/api/sessions",
    operation_id = "listSessions",
    tag = "sessions",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")),
    responses(
        (status = 200, description = "The sessions", body = SessionList),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let rows = sessions::list(state.store.pool(), caller.scope(), page.limit()?).await?;
    let sessions = rows.into_iter().map(|s| view(&state, s)).collect();
    Ok(Json(SessionList { sessions }))
}

#[derive(Serialize, ToSchema)]
pub(super) struct ActiveSessions {
    sessions: Vec<ActiveSessionView>,
    /// Warm spares: CLIs started ahead for new sessions (`sessions.warm_spares`).
    spares: Vec<SpareInfo>,
    totals: ActiveTotals,
}

/// What every active session costs the machine, against the limits.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ActiveTotals {
    active_sessions: usize,
    /// Of the processes, the warm spares.
    spares: usize,
    /// Live CLI processes, against `sessions.max_processes`.
    processes: usize,
    max_processes: usize,
    /// Resident memory of every process group, against `sessions.max_total_memory`.
    memory_bytes: u64,
    max_memory_bytes: u64,
}

/// [`active`] answers only the edge's errors (see `openapi`).
const ACTIVE_ERRORS: &[ErrorCode] = &[];

/// Every active session (admin)
///
/// With what each costs the machine (process, memory, CPU, queue) and the totals against
/// the limits: what `tether sessions` shows.
#[utoipa::path(
    get,
    path = "/api/sessions/active",
    operation_id = "activeSessions",
    tag = "sessions",
    responses((status = 200, description = "Every active session", body = ActiveSessions)),
)]
pub(super) async fn active(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let now = store::now_ms();
    let rows = sessions::list_active(state.store.pool()).await?;
    let settings = &state.settings.sessions;
    let mut memory_total = 0;
    let views: Vec<ActiveSessionView> = rows
        .into_iter()
        .map(|(s, queued)| {
            let process = state.sessions.process_info(&s.id);
            let usage = state.sessions.usage_of(&s.id);
            memory_total += usage.map_or(0, |u| u.memory_bytes);
            ActiveSessionView::new(s, queued, process, usage, now)
        })
        .collect();
    let spares = state.sessions.spare_list();
    memory_total += spares.iter().filter_map(|s| s.memory_bytes).sum::<u64>();
    let totals = ActiveTotals {
        active_sessions: views.len(),
        spares: spares.len(),
        processes: state.sessions.live_processes(),
        max_processes: settings.max_processes,
        memory_bytes: memory_total,
        max_memory_bytes: settings.max_total_memory.0,
    };
    Ok(Json(ActiveSessions {
        sessions: views,
        spares,
        totals,
    }))
}

/// What [`show`] may answer besides the edge's errors (see `openapi`).
const SHOW_ERRORS: &[ErrorCode] = &[ErrorCode::SessionNotFound];

/// One session
#[utoipa::path(
    get,
    path = "/api/sessions/{id}",
    operation_id = "getSession",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "The session", body = SessionView),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, s)))
}

#[derive(Serialize, ToSchema)]
pub(super) struct MessageList {
    messages: Vec<MessageView>,
}

/// What [`list_messages`] may answer besides the edge's errors (see `openapi`).
const LIST_MESSAGES_ERRORS: &[ErrorCode] = &[
    ErrorCode::SessionNotFound,
    ErrorCode::InvalidLimit,
    ErrorCode::InvalidQuery,
];

/// A session's messages
///
/// Oldest first, after the message id `after`: the user's and the agent's replies.
#[utoipa::path(
    get,
    path = "/api/sessions/{id}/messages",
    operation_id = "listMessages",
    tag = "sessions",
    params(
        SessionId,
        ("after" = Option<i64>, Query, minimum = 0, description = "Only messages with a larger id (default 0; digits only)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "The messages", body = MessageList),
    ),
)]
pub(super) async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    let rows = messages::list_after(
        state.store.pool(),
        &id,
        views::after(page.after),
        page.limit()?,
    )
    .await?;
    let process = state.sessions.process_info(&id).state;
    let held = state.sessions.holder(&id).is_some();
    let messages = rows
        .into_iter()
        .map(|m| MessageView::with_process(m, process).held(held))
        .collect();
    Ok(Json(MessageList { messages }))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Interrupted {
    /// Always true: a turn was running and was told to stop.
    interrupted: bool,
}

/// What [`interrupt`] may answer besides the edge's errors (see `openapi`).
const INTERRUPT_ERRORS: &[ErrorCode] = &[ErrorCode::SessionNotFound, ErrorCode::NoRunningTurn];

/// Interrupt the running turn
///
/// The turn ends `interrupted` (its process is killed if it does not stop within
/// `agent.interrupt_grace`); queued messages go on.
#[utoipa::path(
    post,
    path = "/api/sessions/{id}/interrupt",
    operation_id = "interrupt",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "The running turn was told to stop", body = Interrupted),
    ),
)]
pub(super) async fn interrupt(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    if !state.sessions.interrupt(&id).await {
        return Err(ApiError::new(
            ErrorCode::NoRunningTurn,
            "nothing is running in this session",
        ));
    }
    Ok(Json(Interrupted { interrupted: true }))
}

/// What [`end`] may answer besides the edge's errors (see `openapi`).
const END_ERRORS: &[ErrorCode] = &[ErrorCode::SessionNotFound];

/// End a session
///
/// No new messages, the running turn is interrupted, queued ones are cancelled, the process
/// is stopped. Its history stays readable. Ending an ended session changes nothing.
#[utoipa::path(
    delete,
    path = "/api/sessions/{id}",
    operation_id = "endSession",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "The session, as it is now", body = SessionView),
    ),
)]
pub(super) async fn end(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    state.sessions.end_session(&id, "deleted").await?;
    let s = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, s)))
}
