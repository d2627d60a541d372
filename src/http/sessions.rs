//! Sessions: list, show, messages, the live event stream (SSE, resumable with
//! `Last-Event-ID`), interrupt, and delete (end).

use std::{convert::Infallible, time::Duration};

use axum::{body::Bytes, http::StatusCode};
use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{delete, get, post},
    Extension, Json,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

use super::{
    routes::{Access, Routes},
    views::{time, ActiveSessionView, MessageView, Page, SessionView},
    ApiError, ApiQuery, Edge,
};
use crate::{
    auth::{Admin, Caller},
    sessions::{Accepted, LiveEvent, Message, Subscription, Target},
    store::{self, events, messages, sessions, sessions::SessionRow},
    AppState,
};
use axum::http::Method;

/// Events read from SQLite per step while catching a listener up.
const CATCH_UP_PAGE: i64 = 500;
/// Events queued for one SSE client before the sender waits for it.
const SSE_BUFFER: usize = 64;
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// The keep-alive's route, also named by the request timeout (a recap waits for its turn).
pub(super) const KEEP_ALIVE_ROUTE: &str = "/api/sessions/{id}/keep-alive";

/// The event stream's route, also named by the request timeout (streams are exempt).
pub(super) const EVENTS_ROUTE: &str = "/api/sessions/{id}/events";

pub fn router() -> Routes {
    Routes::default()
        .add(Method::GET, "/api/sessions", Access::User, get(list))
        .add(
            Method::GET,
            "/api/sessions/active",
            Access::Admin,
            get(active),
        )
        .add(Method::GET, "/api/sessions/{id}", Access::User, get(show))
        .add(
            Method::DELETE,
            "/api/sessions/{id}",
            Access::User,
            delete(end),
        )
        .add(
            Method::GET,
            "/api/sessions/{id}/messages",
            Access::User,
            get(list_messages),
        )
        .add(Method::GET, EVENTS_ROUTE, Access::User, get(stream_events))
        .add(
            Method::POST,
            "/api/sessions/{id}/interrupt",
            Access::User,
            post(interrupt),
        )
        .add(
            Method::POST,
            KEEP_ALIVE_ROUTE,
            Access::User,
            post(keep_alive),
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
        .ok_or_else(|| ApiError::not_found("session_not_found", format!("no session {id}")))
}

fn view(state: &AppState, s: SessionRow) -> SessionView {
    let process = state.sessions.process_info(&s.id);
    let terminal = state.sessions.holder(&s.id);
    SessionView {
        terminal_id: terminal,
        ..SessionView::new(s, process)
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let rows = sessions::list(state.store.pool(), caller.scope(), page.limit()?).await?;
    let views: Vec<_> = rows.into_iter().map(|s| view(&state, s)).collect();
    Ok(Json(json!({ "sessions": views })))
}

/// The admin's view: every active session with what it costs the machine, and the totals.
async fn active(
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
    Ok(Json(json!({
        "sessions": views,
        "spares": spares,
        "totals": {
            "activeSessions": views.len(),
            "spares": spares.len(),
            "processes": state.sessions.live_processes(),
            "maxProcesses": settings.max_processes,
            "memoryBytes": memory_total,
            "maxMemoryBytes": settings.max_total_memory.0,
        },
    })))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, s)))
}

async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    let rows = messages::list_after(
        state.store.pool(),
        &id,
        page.after.unwrap_or(0),
        page.limit()?,
    )
    .await?;
    let process = state.sessions.process_info(&id).state;
    let held = state.sessions.holder(&id).is_some();
    let views: Vec<MessageView> = rows
        .into_iter()
        .map(|m| MessageView::with_process(m, process).held(held))
        .collect();
    Ok(Json(json!({ "messages": views })))
}

async fn interrupt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    if !state.sessions.interrupt(&id).await {
        return Err(ApiError::conflict(
            "no_running_turn",
            "nothing is running in this session",
        ));
    }
    Ok(Json(json!({ "interrupted": true })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepAliveRequest {
    /// Also ask the agent for a short recap of the conversation (a turn; answered with its
    /// text once it ends).
    #[serde(default)]
    recap: bool,
}

/// Moves the session's end to now + `sessions.lifetime` (clearing a warning) and answers
/// the new `expiresAt`; with `recap: true` it also runs a turn asking for a recap, through
/// the same accept path as a chat message, and answers its text. 410 once expired.
async fn keep_alive(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none means no recap.
    let req: KeepAliveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        KeepAliveRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("invalid_body", format!("invalid body: {e}")))?
    };
    let expires_at = state
        .sessions
        .keep_alive(&id, &caller.owner, caller.is_admin())
        .await?;
    let mut body = json!({ "sessionId": id, "expiresAt": time(expires_at) });
    if !req.recap {
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
    body["expiresAt"] = json!(time(expires_at));
    let (msg, reply) = watch.end().await?;
    body["recap"] = json!({
        "messageId": msg.id,
        "status": msg.status,
        "error": msg.error,
        "replyId": reply.as_ref().map(|r| r.id),
        "text": reply.map(|r| r.text),
    });
    let status = if msg.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED // the wait timed out; the reply comes in the session's messages
    };
    Ok((status, Json(body)).into_response())
}

/// Ends the session: no new messages, the running turn is interrupted, queued ones are
/// cancelled, the process is stopped. History stays readable.
async fn end(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    state.sessions.end_session(&id, "deleted").await?;
    let s = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, s)))
}

/// Server-Sent Events of the session's log. Each event's id is its sequence number; a
/// client that reconnects with `Last-Event-ID: N` first gets every event after N. Between
/// them, live only, `tether.text_delta` events (no id) carry the agent's text as it is
/// written; the stored lines that follow hold the same text whole. An owner
/// may hold `limits.streams_per_owner` at once; every stream ends when shutdown begins.
async fn stream_events(
    State(state): State<AppState>,
    Extension(edge): Extension<Edge>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, ApiError> {
    let session = visible(&state, &caller, &id).await?;
    let last_seen = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("invalid_last_event_id", "Last-Event-ID must be a number")
            })?,
        None => page.after.unwrap_or(0),
    };
    let limit = state.settings.limits.streams_per_owner;
    let Some(permit) = edge.streams.try_acquire(&caller.owner, limit) else {
        return Err(too_many_streams(&caller.owner, limit));
    };
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
    // Last-Event-ID); one that stopped reading is closed at the drain's deadline.
    let drain = edge.drain.clone();
    let stream = futures::StreamExt::take_until(stream, async move { drain.started().await });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
        .into_response())
}

/// 429 `too_many_streams`: `owner` has `limit` streams open (event streams and streamed
/// completions).
pub(super) fn too_many_streams(owner: &str, limit: usize) -> ApiError {
    tracing::info!(owner, code = "too_many_streams", "per-owner limit reached");
    ApiError::too_many(
        "too_many_streams",
        format!("{limit} streams are already open (limits.streams_per_owner); close one first"),
        // A stream whose client vanished is noticed by its next keep-alive at the latest.
        SSE_KEEPALIVE,
    )
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
