//! Terminals: start one, list and show them, type into one, resize it, read its output
//! (for clients without a WebSocket), end it, and attach to it over a WebSocket (output as
//! binary frames; input as binary frames, control as JSON text frames).

use super::codes::ErrorCode;
use std::time::Duration;

use axum::{
    extract::{
        ws::{
            rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket, WebSocketUpgrade,
        },
        State,
    },
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorDetail},
    extract::{WsCaller, WS_PROTOCOL},
    params::TerminalId,
    routes::{Access, Routes},
    state::AppState,
    terminal_frames::{whole_u16, Control, Out, Signal, Size},
    views::{self, time, Cursor, Page},
};
use crate::{
    auth::Caller,
    config::TERMINAL_PROGRAMS,
    store::terminals::{self as rows, TerminalRow},
    terminals::{ring::Ring, Live, Refused, Snapshot, Start, Viewer, Why},
};

/// The WebSocket's route.
pub(super) const WS_ROUTE: &str = "/api/terminals/{id}/ws";
/// Most output bytes in one binary frame.
const FRAME_BYTES: usize = 64 * 1024;

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::POST,
            "/api/terminals",
            Access::User,
            post(start),
            START_ERRORS,
        )
        .add(
            Method::GET,
            "/api/terminals",
            Access::User,
            get(list),
            LIST_ERRORS,
        )
        .add(
            Method::GET,
            "/api/terminals/{id}",
            Access::User,
            get(show),
            SHOW_ERRORS,
        )
        .add(
            Method::DELETE,
            "/api/terminals/{id}",
            Access::User,
            delete(end),
            END_ERRORS,
        )
        .add(
            Method::POST,
            "/api/terminals/{id}/input",
            Access::User,
            post(input),
            INPUT_ERRORS,
        )
        .add(
            Method::POST,
            "/api/terminals/{id}/resize",
            Access::User,
            post(resize),
            RESIZE_ERRORS,
        )
        .add(
            Method::GET,
            "/api/terminals/{id}/output",
            Access::User,
            get(output),
            OUTPUT_ERRORS,
        )
        .add(
            Method::GET,
            WS_ROUTE,
            Access::User,
            get(attach),
            ATTACH_ERRORS,
        )
}

/// A terminal as the API shows it; for a live one, its in-memory state is the freshest.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TerminalView {
    id: String,
    owner: String,
    program: String,
    project_path: String,
    /// The chat session whose conversation it holds.
    session_id: Option<String>,
    /// `starting`, `running`, `exited` or `killed`.
    state: String,
    exit_code: Option<i64>,
    end_reason: Option<String>,
    cols: i64,
    rows: i64,
    pid: Option<i64>,
    /// Viewers attached now.
    viewers: usize,
    /// The running byte offset: bytes of output so far.
    output_bytes: i64,
    created_at: DateTime<Utc>,
    last_input_at: Option<DateTime<Utc>>,
    last_output_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    /// When it ends unless someone types in it or attaches first.
    expires_at: DateTime<Utc>,
    warned_at: Option<DateTime<Utc>>,
}

impl TerminalView {
    fn new(t: TerminalRow, live: Option<Snapshot>) -> Self {
        let mut view = Self {
            id: t.id,
            owner: t.owner,
            program: t.program,
            project_path: t.project_path,
            session_id: t.session_id,
            state: t.state,
            exit_code: t.exit_code,
            end_reason: t.end_reason,
            cols: t.cols,
            rows: t.rows,
            pid: t.pid,
            viewers: 0,
            output_bytes: t.output_bytes,
            created_at: time(t.created_at),
            last_input_at: t.last_input_at.map(time),
            last_output_at: t.last_output_at.map(time),
            ended_at: t.ended_at.map(time),
            expires_at: time(t.expires_at),
            warned_at: t.warned_at.map(time),
        };
        if let Some(s) = live {
            view.cols = s.cols.into();
            view.rows = s.rows.into();
            view.viewers = s.viewers;
            view.output_bytes = s.output_bytes as i64;
            view.last_input_at = s.last_input_at.map(time);
            view.last_output_at = s.last_output_at.map(time);
            view.expires_at = time(s.expires_at);
        }
        view
    }
}

fn view(state: &AppState, t: TerminalRow) -> TerminalView {
    let live = t
        .is_live()
        .then(|| state.terminals.live(&t.id))
        .flatten()
        .map(|l| l.snapshot());
    TerminalView::new(t, live)
}

/// The terminal if it exists and the caller may see it (else 404, to reveal nothing).
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<TerminalRow, ApiError> {
    rows::get(state.store.pool(), id)
        .await?
        .filter(|t| caller.can_see(&t.owner))
        .ok_or_else(|| ApiError::new(ErrorCode::TerminalNotFound, format!("no terminal {id}")))
}

/// The live terminal, or 409 once it has ended.
fn running(state: &AppState, id: &str) -> Result<std::sync::Arc<Live>, ApiError> {
    state
        .terminals
        .live(id)
        .filter(|l| l.ended().is_none())
        .ok_or_else(ended)
}

fn ended() -> ApiError {
    ApiError::new(
        ErrorCode::TerminalEnded,
        "this terminal has ended; its last output stays readable at /api/terminals/{id}/output",
    )
}

fn refused(r: Refused, max_viewers: usize) -> ApiError {
    match r {
        Refused::Ended => ended(),
        Refused::TooManyViewers => ApiError::too_many(
            ErrorCode::TooManyViewers,
            format!("{max_viewers} viewers are attached to this terminal (terminals.max_viewers)"),
            Duration::from_secs(5),
        ),
        Refused::Resize => ApiError::new(ErrorCode::InvalidSize, "the terminal refused that size"),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StartRequest {
    /// `claude` (the interactive CLI) or `shell` (the user's login shell).
    #[schema(example = "shell")]
    program: String,
    /// The folder it runs in (inside `projects.roots`); with `sessionId`, the session's.
    project_path: Option<String>,
    /// `claude` only: resume this chat session's conversation (its chat waits meanwhile).
    session_id: Option<String>,
    #[schema(minimum = 1, maximum = 1000, example = 80)]
    #[serde(deserialize_with = "whole_u16")]
    cols: u16,
    #[schema(minimum = 1, maximum = 1000, example = 24)]
    #[serde(deserialize_with = "whole_u16")]
    rows: u16,
}

/// What [`start`] may answer besides the edge's errors (see `openapi`).
const START_ERRORS: &[ErrorCode] = &[
    ErrorCode::Forbidden,
    ErrorCode::TerminalProgramNotAllowed,
    ErrorCode::SessionNotFound,
    ErrorCode::ProjectNotFound,
    ErrorCode::ConversationInTerminal,
    ErrorCode::TurnRunning,
    ErrorCode::SessionEnded,
    ErrorCode::SessionExpired,
    ErrorCode::InvalidProgram,
    ErrorCode::InvalidSize,
    ErrorCode::InvalidProjectPath,
    ErrorCode::ProjectNotADirectory,
    ErrorCode::TooManyTerminals,
    ErrorCode::TerminalStartFailed,
    ErrorCode::AgentUnavailable,
    ErrorCode::ShuttingDown,
];

/// Start a terminal
///
/// Starts the interactive CLI (`claude`, resuming a chat session's conversation with
/// `sessionId`) or the user's login shell (`shell`) in a PTY in the project folder.
#[utoipa::path(
    post,
    path = "/api/terminals",
    operation_id = "startTerminal",
    tag = "terminals",
    request_body = StartRequest,
    responses(
        (status = 201, description = "The terminal, starting or running", body = TerminalView),
    ),
)]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<StartRequest>,
) -> Result<impl IntoResponse, ApiError> {
    may_open(&state, &caller, &req.program)?;
    if req.program == "claude" {
        state.agent_ready().await?;
    }
    let row = state
        .terminals
        .start(Start {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            program: &req.program,
            project_path: req.project_path.as_deref(),
            session_id: req.session_id.as_deref(),
            cols: req.cols,
            rows: req.rows,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view(&state, row))))
}

/// Refuses a program the caller's role may not open (`terminals.programs`); a program
/// tether does not know is left to [`crate::terminals::Terminals::start`] (422).
fn may_open(state: &AppState, caller: &Caller, program: &str) -> Result<(), ApiError> {
    let allowed = state.settings.terminals.programs.of(caller.is_admin());
    if !TERMINAL_PROGRAMS.contains(&program) || allowed.iter().any(|p| p == program) {
        return Ok(());
    }
    let role = if caller.is_admin() { "admin" } else { "user" };
    Err(ApiError::new(
        ErrorCode::TerminalProgramNotAllowed,
        format!(
            "{role} tokens may not open {program} terminals here (terminals.programs.{role}: {})",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        ),
    ))
}

#[derive(Serialize, ToSchema)]
pub(super) struct TerminalList {
    terminals: Vec<TerminalView>,
}

/// What [`list`] may answer besides the edge's errors (see `openapi`).
const LIST_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidLimit, ErrorCode::InvalidQuery];

/// List terminals
///
/// The caller's terminals, newest first (an admin sees all).
#[utoipa::path(
    get,
    path = "/api/terminals",
    operation_id = "listTerminals",
    tag = "terminals",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")),
    responses(
        (status = 200, description = "The terminals", body = TerminalList),
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let rows = rows::list(state.store.pool(), caller.scope(), page.limit()?).await?;
    let terminals = rows.into_iter().map(|t| view(&state, t)).collect();
    Ok(Json(TerminalList { terminals }))
}

/// What [`show`] may answer besides the edge's errors (see `openapi`).
const SHOW_ERRORS: &[ErrorCode] = &[ErrorCode::TerminalNotFound];

/// A terminal
#[utoipa::path(
    get,
    path = "/api/terminals/{id}",
    operation_id = "getTerminal",
    tag = "terminals",
    params(TerminalId),
    responses(
        (status = 200, description = "The terminal", body = TerminalView),
    ),
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let t = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, t)))
}

/// What [`end`] may answer besides the edge's errors (see `openapi`).
const END_ERRORS: &[ErrorCode] = &[ErrorCode::TerminalNotFound];

/// End a terminal
///
/// Ends the terminal (SIGHUP, SIGTERM, SIGKILL; reaped) and answers it ended. An ended
/// terminal is answered as it is.
#[utoipa::path(
    delete,
    path = "/api/terminals/{id}",
    operation_id = "endTerminal",
    tag = "terminals",
    params(TerminalId),
    responses(
        (status = 200, description = "The terminal, ended", body = TerminalView),
    ),
)]
async fn end(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    state.terminals.end(&id, Why::Deleted).await;
    let t = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, t)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InputRequest {
    /// What to type (`\r` is Enter).
    #[schema(example = "ls\r")]
    text: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Written {
    /// Bytes written to the terminal.
    written: usize,
}

/// What [`input`] may answer besides the edge's errors (see `openapi`).
const INPUT_ERRORS: &[ErrorCode] = &[
    ErrorCode::TerminalNotFound,
    ErrorCode::TerminalEnded,
    ErrorCode::InputTooLarge,
];

/// Type into a terminal
#[utoipa::path(
    post,
    path = "/api/terminals/{id}/input",
    operation_id = "terminalInput",
    tag = "terminals",
    params(TerminalId),
    request_body = InputRequest,
    responses(
        (status = 200, description = "Written", body = Written),
    ),
)]
async fn input(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<InputRequest>,
) -> Result<impl IntoResponse, ApiError> {
    visible(&state, &caller, &id).await?;
    let max = state.settings.terminals.max_input_bytes.0 as usize;
    if req.text.len() > max {
        return Err(ApiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "input is {} bytes; the limit (terminals.max_input_bytes) is {max}",
                req.text.len()
            ),
        ));
    }
    let live = running(&state, &id)?;
    let written = req.text.len();
    live.write(
        req.text.into_bytes(),
        state.terminals.lifetime_of_activity(),
    )
    .await
    .map_err(|r| refused(r, 0))?;
    Ok(Json(Written { written }))
}

/// What [`resize`] may answer besides the edge's errors (see `openapi`).
const RESIZE_ERRORS: &[ErrorCode] = &[
    ErrorCode::TerminalNotFound,
    ErrorCode::TerminalEnded,
    ErrorCode::InvalidSize,
];

/// Resize a terminal
#[utoipa::path(
    post,
    path = "/api/terminals/{id}/resize",
    operation_id = "resizeTerminal",
    tag = "terminals",
    params(TerminalId),
    request_body = Size,
    responses(
        (status = 200, description = "The terminal, resized", body = TerminalView),
    ),
)]
async fn resize(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(size): ApiJson<Size>,
) -> Result<impl IntoResponse, ApiError> {
    let t = visible(&state, &caller, &id).await?;
    let size = size.check()?;
    let live = running(&state, &id)?;
    live.resize(size.cols, size.rows)
        .map_err(|r| refused(r, 0))?;
    Ok(Json(view(&state, t)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct OffsetQuery {
    /// The byte offset the client has: only what came after it (default 0; digits only).
    #[param(value_type = Option<u64>)]
    offset: Option<Cursor>,
}

impl OffsetQuery {
    fn offset(&self) -> u64 {
        views::after(self.offset) as u64
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutputSlice {
    /// Where `data` starts in the terminal's output.
    offset: u64,
    /// Where the next read starts.
    next_offset: u64,
    /// The bytes asked for were gone: `data` starts later than asked.
    reset: bool,
    /// The terminal's state.
    state: String,
    /// The bytes, base64.
    data: String,
}

/// What [`output`] may answer besides the edge's errors (see `openapi`).
const OUTPUT_ERRORS: &[ErrorCode] = &[ErrorCode::TerminalNotFound, ErrorCode::InvalidQuery];

/// A terminal's output
///
/// The output after `offset`, for clients without a WebSocket: from the live buffer, or
/// from the tail saved when the terminal ended.
#[utoipa::path(
    get,
    path = "/api/terminals/{id}/output",
    operation_id = "terminalOutput",
    tag = "terminals",
    params(TerminalId, OffsetQuery),
    responses(
        (status = 200, description = "The output after `offset`", body = OutputSlice),
    ),
)]
async fn output(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<OffsetQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let t = visible(&state, &caller, &id).await?;
    let offset = q.offset();
    let slice = match state.terminals.live(&id) {
        Some(live) => live.read_since(offset),
        None => {
            // Ended: re-read, as the end may have been stored since the row was read.
            let (tail, tail_offset) = rows::tail(state.store.pool(), &id)
                .await?
                .unwrap_or_default();
            Ring::from_tail(tail_offset.max(0) as u64, tail).since(offset)
        }
    };
    let t = rows::get(state.store.pool(), &t.id).await?.unwrap_or(t);
    let next = slice.offset + slice.bytes.len() as u64;
    Ok(Json(OutputSlice {
        offset: slice.offset,
        next_offset: next,
        reset: slice.reset,
        state: t.state,
        data: base64::engine::general_purpose::STANDARD.encode(&slice.bytes),
    }))
}

/// What [`attach`] may answer besides the edge's errors (see `openapi`).
const ATTACH_ERRORS: &[ErrorCode] = &[
    ErrorCode::WebsocketRequired,
    ErrorCode::TerminalNotFound,
    ErrorCode::TerminalEnded,
    ErrorCode::TooManyViewers,
];

/// Attach to a terminal (WebSocket)
///
/// A WebSocket: output comes as binary frames; input goes as binary frames and control as
/// JSON text frames (`{"resize":{"cols","rows"}}`, `{"signal":"interrupt"}`,
/// `{"signal":"terminate"}`). `?offset=N` sends only what came after N. The token may come
/// as `Sec-WebSocket-Protocol: tether, bearer.<token>` (browsers cannot set headers).
#[utoipa::path(
    get,
    path = "/api/terminals/{id}/ws",
    operation_id = "attachTerminal",
    tag = "terminals",
    params(TerminalId, OffsetQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
    ),
)]
async fn attach(
    State(state): State<AppState>,
    WsCaller(caller): WsCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<OffsetQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    visible(&state, &caller, &id).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            ErrorCode::WebsocketRequired,
            format!("this route is a WebSocket: {}", e.body_text()),
        )
    })?;
    let live = running(&state, &id)?;
    let settings = &state.settings.terminals;
    let viewer = live
        .attach(settings.max_viewers, state.terminals.lifetime_of_activity())
        .map_err(|r| refused(r, settings.max_viewers))?;
    let max_input = settings.max_input_bytes.0 as usize;
    tracing::info!(terminal_id = %id, owner = %caller.owner, "viewer attached");
    let token_id = caller.token_id;
    Ok(upgrade
        .protocols([WS_PROTOCOL])
        .max_message_size(max_input)
        .max_frame_size(max_input)
        .on_upgrade(move |socket| serve_viewer(socket, state, live, viewer, q.offset(), token_id)))
}

/// One viewer: output out as binary frames from its offset on, input and control in, until
/// it leaves, the terminal ends (a last `ended` text frame, then a close) or the token it
/// attached with is revoked (a close with 1008, policy violation; nothing it sends after
/// is run).
async fn serve_viewer(
    mut socket: WebSocket,
    state: AppState,
    live: std::sync::Arc<Live>,
    viewer: Viewer,
    offset: u64,
    token_id: Option<String>,
) {
    let mut revoked = std::pin::pin!(state.auth.until_revoked(token_id.clone()));
    let is_revoked = || {
        token_id
            .as_deref()
            .is_some_and(|id| state.auth.is_revoked(id))
    };
    let mut written = live.written();
    let mut ended = live.ended_watch();
    let first = live.read_since(offset);
    let mut offset = first.offset;
    let hello = Out::Attached {
        offset: first.offset,
        reset: first.reset,
    };
    if socket.send(hello.message()).await.is_err() {
        return;
    }
    if send_output(&mut socket, first.bytes, &mut offset)
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            changed = written.changed() => {
                if changed.is_err() {
                    break;
                }
                let slice = live.read_since(offset);
                if slice.reset {
                    // It fell behind by more than the buffer: say where the bytes start now.
                    let reset = Out::Reset { offset: slice.offset };
                    if socket.send(reset.message()).await.is_err() {
                        return;
                    }
                    offset = slice.offset;
                }
                if send_output(&mut socket, slice.bytes, &mut offset).await.is_err() {
                    return;
                }
            }
            () = until_ended(&mut ended) => {
                let rest = live.read_since(offset);
                let _ = send_output(&mut socket, rest.bytes, &mut offset).await;
                let end = live.ended().unwrap_or_else(unknown_end);
                let text = Out::Ended {
                    state: end.state,
                    exit_code: end.exit_code,
                    reason: &end.reason,
                    offset,
                };
                let _ = socket.send(text.message()).await;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1000, reason: "ended".into() })))
                    .await;
                break;
            }
            () = &mut revoked => {
                tracing::info!(terminal_id = %live.id, "viewer closed: its token was revoked");
                let close = CloseFrame { code: 1008, reason: "token revoked".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                break;
            }
            msg = socket.recv(), if !is_revoked() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if live.write(bytes.to_vec(), state.terminals.lifetime_of_activity()).await.is_err() {
                        continue; // ended: the `ended` frame comes next
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Err(e) = control(&state, &live, text.as_str()).await {
                        let error = Out::Error {
                            error: ErrorDetail { code: e.code, message: e.message },
                        };
                        if socket.send(error.message()).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by the socket itself
            },
        }
    }
    drop(viewer);
}

/// Resolves once the terminal has ended.
async fn until_ended(ended: &mut tokio::sync::watch::Receiver<Option<crate::terminals::Ended>>) {
    let _ = ended.wait_for(Option::is_some).await;
}

/// What a viewer is told if the end it was woken for cannot be read (it always can).
fn unknown_end() -> crate::terminals::Ended {
    crate::terminals::Ended {
        state: rows::STATE_KILLED,
        exit_code: None,
        reason: "ended".into(),
    }
}

/// Sends output in frames of at most [`FRAME_BYTES`], moving `offset` past them.
async fn send_output(
    socket: &mut WebSocket,
    bytes: Vec<u8>,
    offset: &mut u64,
) -> Result<(), axum::Error> {
    for chunk in bytes.chunks(FRAME_BYTES) {
        socket.send(Message::Binary(chunk.to_vec().into())).await?;
        *offset += chunk.len() as u64;
    }
    Ok(())
}

/// A viewer's control frame: a resize, Ctrl-C (`interrupt`), or ending the terminal.
async fn control(
    state: &AppState,
    live: &std::sync::Arc<Live>,
    text: &str,
) -> Result<(), ApiError> {
    let control = Control::parse(text)?;
    if let Some(size) = control.resize {
        let size = size.check()?;
        live.resize(size.cols, size.rows)
            .map_err(|r| refused(r, 0))?;
    }
    match control.signal {
        None => {}
        Some(Signal::Interrupt) => live
            .write(vec![0x03], state.terminals.lifetime_of_activity())
            .await
            .map_err(|r| refused(r, 0))?,
        Some(Signal::Terminate) => live.request_end(Why::Terminated),
    }
    Ok(())
}
