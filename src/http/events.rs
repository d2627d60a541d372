//! A session's live event stream (SSE): its stored log from `Last-Event-ID` on, then live
//! events, catching up from SQLite whenever the live channel skipped some.

use std::convert::Infallible;

use axum::{
    extract::State,
    http::{HeaderMap, Method},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::get,
    Extension,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use utoipa::{
    openapi::{Object, ObjectBuilder, Type},
    ToSchema,
};

use super::{
    codes::ErrorCode,
    edge::Edge,
    error::{ApiError, ApiPath, ApiQuery},
    limits,
    params::SessionId,
    routes::{Access, Routes},
    sessions::visible,
    state::AppState,
    views::{self, Cursor, Page},
};
use crate::{
    auth::Caller,
    sessions::{LiveEvent, Subscription},
    store::{self, events},
};

/// Events read from SQLite per step while catching a listener up.
const CATCH_UP_PAGE: i64 = 500;
/// Events queued for one SSE client before the sender waits for it.
const SSE_BUFFER: usize = 64;

/// The event stream's route, also named by the request timeout (streams are exempt).
pub(super) const EVENTS_ROUTE: &str = "/api/sessions/{id}/events";

pub fn router() -> Routes {
    Routes::default().add(
        Method::GET,
        EVENTS_ROUTE,
        Access::User,
        get(stream_events),
        STREAM_EVENTS_ERRORS,
    )
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
