//! `POST /api/chat`: validate, write the user message (queued), wake the session's actor,
//! answer 202 (or, with `wait`, the reply once the turn ends).

use std::{path::PathBuf, time::Duration};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{limits::TooMany, views::MessageView, ApiError, ApiJson};
use crate::{
    auth::Caller,
    config::{expand_home, ProjectSettings},
    store::{self, messages, messages::Status, sessions},
    AppState,
};

/// Longest `clientMessageId` accepted.
const MAX_CLIENT_MESSAGE_ID: usize = 128;
/// The window of `limits.new_sessions_per_minute`.
const NEW_SESSION_WINDOW: Duration = Duration::from_secs(60);
/// `Retry-After` for `too_many_sessions`: no time frees a slot (ending a session does), so a
/// client is told to come back no sooner than this.
const ACTIVE_SESSIONS_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The route, also named by the request timeout (it may wait for a reply).
pub(super) const ROUTE: &str = "/api/chat";

pub fn router() -> Router<AppState> {
    Router::new().route(ROUTE, post(chat))
}

/// Where a message goes: an existing session (its id as sent), or a new one in this folder.
enum Target<'a> {
    Existing(&'a str),
    New(PathBuf),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatRequest {
    message: String,
    session_id: Option<String>,
    project_path: Option<String>,
    client_message_id: Option<String>,
    #[serde(default)]
    wait: bool,
}

async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    if state.sessions.is_closing() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "tether is shutting down; try again in a moment",
        ));
    }
    validate_message(&state, &req)?;
    let pool = state.store.pool();
    if let Some(cmid) = &req.client_message_id {
        if let Some(first) = messages::find_by_client_id(pool, &caller.owner, cmid).await? {
            return answer(&state, first, req.wait).await;
        }
    }
    state.agent_ready().await?;
    // A new session's folder is looked up on the file system before the write lock is
    // taken, on a blocking thread.
    let target = match (&req.session_id, &req.project_path) {
        (Some(id), _) => Target::Existing(id),
        (None, Some(raw)) => Target::New(resolve_project(&state.settings.projects, raw).await?),
        (None, None) => {
            return Err(ApiError::invalid(
                "project_path_required",
                "a new session needs projectPath (or send sessionId)",
            ))
        }
    };

    let now = store::now_ms();
    let mut tx = state.store.begin_write().await?;
    let session_id = match target {
        Target::Existing(id) => {
            let session = Uuid::parse_str(id)
                .ok()
                .map(|u| u.to_string())
                .ok_or_else(|| {
                    ApiError::invalid("invalid_session_id", "sessionId must be a UUID")
                })?;
            let (_, session_state, queued) = sessions::touch_for_accept(&mut *tx, &session, now)
                .await?
                .filter(|(owner, _, _)| caller.can_see(owner))
                .ok_or_else(|| {
                    ApiError::not_found("session_not_found", format!("no session {session}"))
                })?;
            if session_state != sessions::STATE_ACTIVE {
                return Err(ApiError::conflict(
                    "session_ended",
                    "this session has ended; start a new one with projectPath",
                ));
            }
            let limit = state.settings.sessions.max_queued_per_session;
            if queued >= i64::from(limit) {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("{queued} messages are already waiting in this session (sessions.max_queued_per_session = {limit}); wait for a reply"),
                ));
            }
            session
        }
        Target::New(project) => {
            if let Some(refused) = new_session_refused(&mut tx, &state, &caller, now).await? {
                tracing::info!(owner = %caller.owner, code = refused.code, "per-owner limit reached");
                return Ok(refused.into_response());
            }
            let id = Uuid::new_v4().to_string();
            let project = project.to_string_lossy();
            let title = std::path::Path::new(project.as_ref())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            sessions::insert(
                &mut *tx,
                &sessions::NewSession {
                    id: &id,
                    owner: &caller.owner,
                    agent: state.agent_name(),
                    project_path: &project,
                    title: title.as_deref(),
                    now,
                },
            )
            .await?;
            id
        }
    };
    let inserted = messages::insert_user(
        &mut *tx,
        &messages::NewUserMessage {
            session_id: &session_id,
            owner: &caller.owner,
            text: &req.message,
            client_message_id: req.client_message_id.as_deref(),
            now,
        },
    )
    .await;
    let message_id = match inserted {
        Ok(id) => id,
        Err(e) if store::is_unique_violation(&e) => {
            // The same clientMessageId raced in: answer with the first one.
            drop(tx);
            let cmid = req.client_message_id.as_deref().unwrap_or_default();
            let first = messages::find_by_client_id(pool, &caller.owner, cmid)
                .await?
                .ok_or_else(|| ApiError::from(e))?;
            return answer(&state, first, req.wait).await;
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    tracing::info!(session_id = %session_id, message_id, "message queued");
    state.sessions.wake(&session_id);
    if !req.wait {
        let body =
            json!({"sessionId": session_id, "messageId": message_id, "status": Status::Queued});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let (row, reply) = wait_for_end(&state, &session_id, message_id).await?;
    Ok(respond_with(row, reply, true))
}

fn validate_message(state: &AppState, req: &ChatRequest) -> Result<(), ApiError> {
    if req.message.trim().is_empty() {
        return Err(ApiError::invalid(
            "empty_message",
            "message must not be empty",
        ));
    }
    let limit = state.settings.sessions.max_message_bytes;
    if req.message.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "message is {} bytes; the limit (sessions.max_message_bytes) is {limit}",
                req.message.len()
            ),
        ));
    }
    if let Some(cmid) = &req.client_message_id {
        if cmid.is_empty() || cmid.len() > MAX_CLIENT_MESSAGE_ID {
            return Err(ApiError::invalid(
                "invalid_client_message_id",
                format!("clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID} bytes"),
            ));
        }
    }
    Ok(())
}

/// The owner's per-owner session limits, read in the write transaction that would create
/// the session (so two requests cannot both take the last slot): None when it may be created.
async fn new_session_refused(
    tx: &mut crate::store::WriteTx,
    state: &AppState,
    caller: &Caller,
    now: i64,
) -> Result<Option<TooMany>, ApiError> {
    let limits = &state.settings.limits;
    let window = NEW_SESSION_WINDOW.as_millis() as i64;
    let load = sessions::owner_load(&mut **tx, &caller.owner, now - window).await?;
    let active_limit = i64::from(limits.active_sessions_per_owner);
    if load.active >= active_limit {
        return Ok(Some(TooMany::new(
            "too_many_sessions",
            format!(
                "{} sessions are active (limits.active_sessions_per_owner = {active_limit}); \
                 end one (DELETE /api/sessions/{{id}}) or continue one with sessionId",
                load.active
            ),
            ACTIVE_SESSIONS_RETRY_AFTER,
        )));
    }
    let rate = i64::from(limits.new_sessions_per_minute);
    if load.created_since >= rate {
        // A slot frees when the oldest session of the window leaves it.
        let oldest = load.oldest_since.unwrap_or(now);
        let wait = (oldest + window - now).max(0) as u64;
        return Ok(Some(TooMany::new(
            "too_many_new_sessions",
            format!(
                "{} sessions were started in the last minute (limits.new_sessions_per_minute \
                 = {rate}); try again later or continue one with sessionId",
                load.created_since
            ),
            Duration::from_millis(wait),
        )));
    }
    Ok(None)
}

/// An existing directory inside one of `projects.roots`, made canonical. The file-system
/// calls run on a blocking thread.
async fn resolve_project(projects: &ProjectSettings, raw: &str) -> Result<PathBuf, ApiError> {
    let (projects, raw) = (projects.clone(), raw.to_string());
    tokio::task::spawn_blocking(move || resolve_project_blocking(&projects, &raw))
        .await
        .map_err(|e| ApiError::from(anyhow::Error::new(e)))?
}

fn resolve_project_blocking(projects: &ProjectSettings, raw: &str) -> Result<PathBuf, ApiError> {
    let path = expand_home(std::path::Path::new(raw.trim()));
    if raw.trim().is_empty() || !path.is_absolute() {
        return Err(ApiError::invalid(
            "invalid_project_path",
            "projectPath must be an absolute path",
        ));
    }
    let canonical = std::fs::canonicalize(&path).map_err(|_| {
        ApiError::invalid(
            "project_not_found",
            format!("projectPath {raw} does not exist"),
        )
    })?;
    if !canonical.is_dir() {
        return Err(ApiError::invalid(
            "project_not_a_directory",
            format!("projectPath {raw} is not a directory"),
        ));
    }
    let roots = projects.canonical_roots();
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(ApiError::forbidden(format!(
            "projectPath {raw} is outside the folders tether may use (projects.roots)"
        )));
    }
    Ok(canonical)
}

/// An already accepted message (a repeated `clientMessageId`): as it is, or with `wait`
/// once its turn ends.
async fn answer(
    state: &AppState,
    msg: messages::MessageRow,
    wait: bool,
) -> Result<Response, ApiError> {
    if wait {
        let (msg, reply) = wait_for_end(state, &msg.session_id, msg.id).await?;
        return Ok(respond_with(msg, reply, true));
    }
    respond(state, msg, false).await
}

/// 202 with the ids while the turn runs; once it ended, its status, error and reply (200
/// when the caller waited for it).
async fn respond(
    state: &AppState,
    msg: messages::MessageRow,
    waited: bool,
) -> Result<Response, ApiError> {
    let reply = if msg.status.is_terminal() {
        messages::reply_to(state.store.pool(), msg.id).await?
    } else {
        None
    };
    Ok(respond_with(msg, reply, waited))
}

fn respond_with(
    msg: messages::MessageRow,
    reply: Option<messages::MessageRow>,
    waited: bool,
) -> Response {
    let mut body = json!({
        "sessionId": msg.session_id,
        "messageId": msg.id,
        "status": msg.status,
    });
    if !msg.status.is_terminal() {
        return (StatusCode::ACCEPTED, Json(body)).into_response();
    }
    if let Some(e) = &msg.error {
        body["error"] = e.as_str().into();
    }
    body["reply"] = serde_json::to_value(reply.map(MessageView::from)).unwrap_or_default();
    let status = if waited {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(body)).into_response()
}

/// The message once it is in a terminal state, or as it is when `server.wait_timeout_secs`
/// pass first. It is read again only when a turn of its session ended (or events were missed).
async fn wait_for_end(
    state: &AppState,
    session_id: &str,
    message_id: i64,
) -> Result<(messages::MessageRow, Option<messages::MessageRow>), ApiError> {
    let pool = state.store.pool();
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(state.settings.server.wait_timeout_secs);
    let look = || async {
        let (msg, reply) = messages::with_reply(pool, message_id).await?;
        let msg = msg.ok_or_else(|| anyhow::anyhow!("message {message_id} vanished"))?;
        Ok::<_, ApiError>((msg, reply))
    };
    // Subscribe first, then look: an end after the look is always seen as an event.
    // (Subscribing starts the session's actor if needed; it looks at its queue at once.)
    let mut events = state.sessions.subscribe(session_id);
    loop {
        let current = look().await?;
        if current.0.status.is_terminal() {
            return Ok(current);
        }
        let Some(rx) = events.as_mut() else {
            return Ok(current);
        };
        // Only a turn's end, or missed events, can have changed the message.
        let closed = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                // Time is up: answer with where the message is now.
                Err(_) => return look().await,
                Ok(Ok(ev)) if is_turn_end(&ev.kind) => break false,
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(_))) => break false,
                Ok(Err(RecvError::Closed)) => break true,
            }
        };
        if closed {
            events = None; // the actor stopped: one last look
        }
    }
}

fn is_turn_end(kind: &str) -> bool {
    kind == "tether.turn_completed" || kind == "tether.turn_failed"
}
