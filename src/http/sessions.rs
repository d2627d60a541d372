//! Sessions: list, show, messages, the live event stream (SSE, resumable with
//! `Last-Event-ID`), interrupt, and delete (end).

use super::codes::ErrorCode;
use std::convert::Infallible;

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{delete, get, post},
    Extension, Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use utoipa::{
    openapi::{Object, ObjectBuilder, Type},
    ToSchema,
};

use super::{
    edge::Edge,
    error::{ApiError, ApiPath, ApiQuery},
    limits,
    params::SessionId,
    routes::{Access, Routes},
    state::AppState,
    views::{self, time, ActiveSessionView, Cursor, MessageView, Page, SessionView},
};
use crate::{
    auth::{Admin, Caller},
    sessions::{spares::SpareInfo, Accepted, LiveEvent, Message, Subscription, Target},
    store::{self, events, messages, messages::Status, sessions, sessions::SessionRow},
};
use axum::http::Method;

/// Events read from SQLite per step while catching a listener up.
const CATCH_UP_PAGE: i64 = 500;
/// Events queued for one SSE client before the sender waits for it.
const SSE_BUFFER: usize = 64;

/// The keep-alive's route, also named by the request timeout (a recap waits for its turn).
pub(super) const KEEP_ALIVE_ROUTE: &str = "/api/sessions/{id}/keep-alive";

/// The event stream's route, also named by the request timeout (streams are exempt).
pub(super) const EVENTS_ROUTE: &str = "/api/sessions/{id}/events";

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
            Method::GET,
            EVENTS_ROUTE,
            Access::User,
            get(stream_events),
            STREAM_EVENTS_ERRORS,
        )
        .add(
            Method::POST,
            "/api/sessions/{id}/interrupt",
            Access::User,
            post(interrupt),
            INTERRUPT_ERRORS,
        )
        .add(
            Method::POST,
            KEEP_ALIVE_ROUTE,
            Access::User,
            post(keep_alive),
            KEEP_ALIVE_ERRORS,
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

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeepAliveRequest {
    /// Also ask the agent for a short recap of the conversation (a turn; answered with its
    /// text once it ends).
    #[serde(default)]
    recap: bool,
}

/// The session's new end, and the recap when one was asked for.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeepAliveAnswer {
    session_id: String,
    expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recap: Option<Recap>,
}

/// The recap turn: its message and, once it ended, the reply's text.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Recap {
    message_id: i64,
    status: Status,
    error: Option<String>,
    reply_id: Option<i64>,
    text: Option<String>,
}

/// What [`keep_alive`] may answer besides the edge's errors (see `openapi`).
const KEEP_ALIVE_ERRORS: &[ErrorCode] = &[
    ErrorCode::SessionNotFound,
    ErrorCode::SessionEnded,
    ErrorCode::SessionExpired,
    ErrorCode::BodyTooLarge,
    ErrorCode::BodyTimeout,
    ErrorCode::UnreadableBody,
    ErrorCode::InvalidBody,
    ErrorCode::QueueFull,
    ErrorCode::AgentUnavailable,
];

/// Keep a session alive
///
/// Moves the session's end to now + `sessions.lifetime` (clearing an "expires soon"
/// warning) and answers the new `expiresAt`. With `{"recap": true}` it also runs a turn
/// asking the agent for a short recap, through the same accept path as a chat message, and
/// answers its text once it ends (202 if it has not ended within `server.wait_timeout`). The
/// body is optional.
#[utoipa::path(
    post,
    path = KEEP_ALIVE_ROUTE,
    operation_id = "keepAlive",
    tag = "sessions",
    params(SessionId),
    request_body(content = Option<KeepAliveRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Kept alive (and the recap, when asked for)", body = KeepAliveAnswer,
            example = json!({"sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11", "expiresAt": "2025-05-02T10:00:00Z"})),
        (status = 202, description = "Kept alive; the recap's turn has not ended yet (its reply comes in the session's messages)", body = KeepAliveAnswer),
    ),
)]
pub(super) async fn keep_alive(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    // The body is optional: none (or `null`) means no recap. (JSON's white space only: a
    // form feed is no JSON.)
    let blank = body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let req: KeepAliveRequest = if blank {
        KeepAliveRequest::default()
    } else {
        let invalid =
            |e: String| ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}"));
        // An object or null: serde would also take a struct from an array.
        match serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| invalid(e.to_string()))?
        {
            serde_json::Value::Null => KeepAliveRequest::default(),
            v @ serde_json::Value::Object(_) => {
                serde_json::from_value(v).map_err(|e| invalid(e.to_string()))?
            }
            _ => return Err(invalid("expected a JSON object (or null)".into())),
        }
    };
    let expires_at = state
        .sessions
        .keep_alive(&id, &caller.owner, caller.is_admin())
        .await?;
    if !req.recap {
        let body = KeepAliveAnswer {
            session_id: id,
            expires_at: time(expires_at),
            recap: None,
        };
        return Ok(Json(body).into_response());
    }
    state.agent_ready().await?;
    let prompt = &state.settings.sessions.recap_prompt;
    let accepted = state
        .sessions
        .accept(Message {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            text: prompt,
            target: Target::Session(&id),
            client_message_id: None,
            watch_until: Some(super::chat::wait_deadline(&state)),
        })
        .await?;
    let Accepted::Queued {
        expires_at,
        watch: Some(watch),
        ..
    } = accepted
    else {
        unreachable!("a recap has no clientMessageId to repeat, and asked to be watched");
    };
    let (msg, reply) = watch.end().await?;
    let status = if msg.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED // the wait timed out; the reply comes in the session's messages
    };
    let body = KeepAliveAnswer {
        session_id: id,
        expires_at: time(expires_at),
        recap: Some(Recap {
            message_id: msg.id,
            status: msg.status,
            error: msg.error,
            reply_id: reply.as_ref().map(|r| r.id),
            text: reply.map(|r| r.text),
        }),
    };
    Ok((status, Json(body)).into_response())
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

/// One event of a session's stream, as its `id:`, `event:` and `data:` lines. (In OpenAPI
/// 3.1 the schema of `text/event-stream` describes each event.)
#[derive(ToSchema)]
#[allow(dead_code)] // read by the document only
pub(super) struct SessionEvent {
    /// The event's sequence number in the session's log (resume after it with
    /// `Last-Event-ID`).
    #[schema(pattern = "^[0-9]+$", example = "3")]
    id: String,
    /// Its type: the agent's (`system`, `assistant`, `user`, `result`, …) or tether's own
    /// (`tether.turn_started`, …): letters, digits and `_ . : -`, at most 64.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "assistant")]
    event: String,
    /// The event: one JSON object.
    #[schema(schema_with = json_object_text)]
    data: String,
}

/// A string that holds one JSON object.
fn json_object_text() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .content_schema(Some(Object::with_type(Type::Object)))
        .examples([r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hi"}]}}"#])
        .build()
}

/// What [`stream_events`] may answer besides the edge's errors (see `openapi`).
const STREAM_EVENTS_ERRORS: &[ErrorCode] = &[
    ErrorCode::SessionNotFound,
    ErrorCode::InvalidLastEventId,
    ErrorCode::InvalidQuery,
    ErrorCode::TooManyStreams,
];

/// A session's events (SSE)
///
/// Server-Sent Events of the session's log: the agent's lines (`system`, `assistant`,
/// `user`, `result`, …) and tether's own (`tether.turn_started`, `tether.turn_completed`,
/// `tether.approval_requested`, …). Each event's `id` is its sequence number and its `data`
/// one JSON object; a client that reconnects with `Last-Event-ID: N` (or `?after=N`) first
/// gets every event after N. The stream stays open while the session is active (a comment
/// every 15 s keeps it alive) and ends after the backlog of an ended one, when the server
/// shuts down, or when its token is revoked. Between stored events, live only, `tether.text_delta` events (no `id`; `data`
/// `{"type", "text", "apiMessageId", "index"}`) carry the agent's text as it is written; the stored lines that
/// follow hold the same text whole. An owner may hold `limits.streams_per_owner` streams at
/// once.
#[utoipa::path(
    get,
    path = EVENTS_ROUTE,
    operation_id = "sessionEvents",
    tag = "sessions",
    params(
        SessionId,
        ("after" = Option<i64>, Query, minimum = 0, description = "Only events after this sequence number (default 0; digits only)"),
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "As `after`, sent by an EventSource that reconnects; wins over `after`"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = SessionEvent,
            example = "id: 1\nevent: tether.turn_started\ndata: {\"messageId\":12}\n\nid: 2\nevent: system\ndata: {\"type\":\"system\",\"subtype\":\"init\"}\n\n"),
    ),
)]
pub(super) async fn stream_events(
    State(state): State<AppState>,
    Extension(edge): Extension<Edge>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, ApiError> {
    let session = visible(&state, &caller, &id).await?;
    let last_seen = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| Cursor::parse(s.trim()))
            .map(|c| c.0)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidLastEventId,
                    "Last-Event-ID must be a non-negative whole number (digits only)",
                )
            })?,
        None => views::after(page.after),
    };
    let limit = state.settings.limits.streams_per_owner;
    let permit = edge.streams.acquire(&caller.owner, limit)?;
    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = if session.is_active() {
        state.sessions.subscribe(&id)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(SSE_BUFFER);
    tokio::spawn(feed(state.store.clone(), id, last_seen, live, tx));
    let stream = ReceiverStream::new(rx).map(move |e: LiveEvent| {
        // The stream counts against its owner until its body is dropped.
        let _counted = &permit;
        let event = Event::default()
            .event(events::sanitize_kind(&e.kind))
            .data(e.data.as_ref());
        // A transient event (text as it is written) has no id: a client that reconnects
        // resumes after the last stored event it got, and gets whole lines from there.
        Ok::<_, Infallible>(if e.transient {
            event
        } else {
            event.id(e.seq.to_string())
        })
    });
    // Shutdown ends the stream, so the connection can close (a client resumes later with
    // Last-Event-ID); one that stopped reading is closed at the drain's deadline. Revoking
    // the token ends it too.
    let drain = edge.drain.clone();
    let revoked = state.auth.until_revoked(caller.token_id.clone());
    let stream = futures::StreamExt::take_until(stream, async move {
        tokio::select! {
            () = drain.started() => {}
            () = revoked => {}
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(limits::SSE_KEEPALIVE))
        .into_response())
}

/// Sends the backlog after `sent`, then live events, catching up from SQLite whenever
/// the live channel skipped some. Ends when the client goes or the session's actor stops.
async fn feed(
    store: store::Store,
    id: String,
    mut sent: i64,
    live: Option<Subscription>,
    tx: mpsc::Sender<LiveEvent>,
) {
    if catch_up(&store, &id, &mut sent, &tx).await.is_err() {
        return;
    }
    let Some(mut live) = live else { return };
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = live.recv() => next,
        };
        match next {
            // Text as it is written, sent when the client has every stored event before
            // it; one that is behind catches up from SQLite, where the whole lines are.
            Ok(ev) if ev.transient => {
                if ev.seq > sent && catch_up(&store, &id, &mut sent, &tx).await.is_err() {
                    return;
                }
                if ev.seq == sent && tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(ev) if ev.seq <= sent => {}
            Ok(ev) if ev.seq == sent + 1 => {
                sent = ev.seq;
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {
                if catch_up(&store, &id, &mut sent, &tx).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Closed) => {
                let _ = catch_up(&store, &id, &mut sent, &tx).await;
                return;
            }
        }
    }
}

/// Sends every stored event after `sent`. Err when the client is gone.
async fn catch_up(
    store: &store::Store,
    id: &str,
    sent: &mut i64,
    tx: &mpsc::Sender<LiveEvent>,
) -> Result<(), ()> {
    loop {
        let rows = match events::list_after(store.pool(), id, *sent, CATCH_UP_PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "could not read the event log");
                return Err(());
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            *sent = row.seq;
            tx.send(row.into()).await.map_err(|_| ())?;
        }
    }
}
