//! `POST /api/chat`: validate, write the user message (queued), wake the session's actor,
//! answer 202 (or, with `wait`, the reply once the turn ends).

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json,
};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{
    routes::{Access, Routes},
    views::MessageView,
    ApiError, ApiJson,
};
use crate::{
    auth::Caller,
    sessions::{Accepted, Message, Target},
    store::{messages, messages::Status},
    AppState,
};
use axum::http::Method;

/// The route, also named by the request timeout (it may wait for a reply).
pub(super) const ROUTE: &str = "/api/chat";

pub fn router() -> Routes {
    Routes::default().add(Method::POST, ROUTE, Access::User, post(chat))
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
    let target = match (&req.session_id, &req.project_path) {
        (Some(id), _) => Target::Session(id),
        (None, Some(raw)) => Target::NewIn(raw),
        (None, None) => {
            return Err(ApiError::invalid(
                "project_path_required",
                "a new session needs projectPath (or send sessionId)",
            ))
        }
    };
    if !state.sessions.is_closing() {
        state.agent_ready().await?;
    }
    let accepted = state
        .sessions
        .accept(Message {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            text: &req.message,
            target,
            client_message_id: req.client_message_id.as_deref(),
            watch_until: req.wait.then(|| wait_deadline(&state)),
        })
        .await?;
    match accepted {
        Accepted::Repeat(first) => answer(&state, *first, req.wait).await,
        Accepted::Queued {
            watch: Some(watch), ..
        } => {
            let (row, reply) = watch.end().await?;
            Ok(respond_with(row, reply, true))
        }
        Accepted::Queued {
            session_id,
            message_id,
            ..
        } => {
            let body =
                json!({"sessionId": session_id, "messageId": message_id, "status": Status::Queued});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// When a caller that waits for a turn's end is answered anyway: `server.wait_timeout`
/// from now.
pub(super) fn wait_deadline(state: &AppState) -> Instant {
    Instant::now() + state.settings.server.wait_timeout
}

/// An already accepted message (a repeated `clientMessageId`): as it is, or with `wait`
/// once its turn ends.
async fn answer(
    state: &AppState,
    msg: messages::MessageRow,
    wait: bool,
) -> Result<Response, ApiError> {
    if wait {
        let watch = state
            .sessions
            .watch(&msg.session_id, msg.id, wait_deadline(state));
        let (msg, reply) = watch.end().await?;
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
