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
use tokio::sync::broadcast::error::RecvError;

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
        })
        .await?;
    let (session_id, message_id) = match accepted {
        Accepted::Repeat(first) => return answer(&state, *first, req.wait).await,
        Accepted::Queued {
            session_id,
            message_id,
            ..
        } => (session_id, message_id),
    };
    if !req.wait {
        let body =
            json!({"sessionId": session_id, "messageId": message_id, "status": Status::Queued});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let (row, reply) = wait_for_end(&state, &session_id, message_id).await?;
    Ok(respond_with(row, reply, true))
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

/// The message once it is in a terminal state, or as it is when `server.wait_timeout`
/// pass first. It is read again only when a turn of its session ended (or events were missed).
pub(super) async fn wait_for_end(
    state: &AppState,
    session_id: &str,
    message_id: i64,
) -> Result<(messages::MessageRow, Option<messages::MessageRow>), ApiError> {
    let pool = state.store.pool();
    let deadline = tokio::time::Instant::now() + state.settings.server.wait_timeout;
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
