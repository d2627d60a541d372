//! A stand-in for the Anthropic Messages API, for the tests that drive the real Claude Code CLI.
//!
//! Point the CLI at it with `ANTHROPIC_BASE_URL=<base_url()>` and any `ANTHROPIC_API_KEY`. It
//! answers every `POST /v1/messages` with one text block, streamed as Server-Sent Events when the
//! request asks for `"stream": true` (the CLI always does) the way the API streams it, a few
//! words per `text_delta`, and records every request body so a
//! test can check what the CLI sent, e.g. that a resumed conversation still carried its history
//! (see [`user_texts`]). [`StandInApi::set_delay`] makes turns slow enough to interrupt.
//! [`StandInApi::echo_conversation`] makes each reply name the user texts of its request, so a
//! client of tether can see that context was kept.
//! [`StandInApi::push_tool_use`] scripts a model call that asks for a tool; the call after it,
//! which carries the tool's result (see [`tool_results`]), gets the text reply again.
//!
//! What the real CLI (2.1.329) was seen to send, with `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`:
//! one `POST /v1/messages?beta=true` per model call, always streaming, each carrying the whole
//! conversation and the CLI's tools, and nothing else (without that variable, a
//! `HEAD /api/hello` at each process start too). No side requests (titles, small-model calls,
//! `count_tokens`) were seen; should a version make them, [`StandInApi::main_requests`] leaves
//! them out (see [`is_main_request`]).
//!
//! Everything else (`count_tokens`, any other path or method) gets a harmless `200` answer.

// A test binary includes this module whole and may use only part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// A running stand-in API server. The server stops when this value is dropped.
pub struct StandInApi {
    addr: SocketAddr,
    state: Arc<Shared>,
    server: AbortHandle,
}

/// What the test and the server's handlers share.
#[derive(Default)]
struct Shared {
    /// `METHOD /path?query` of every request, whatever its path.
    calls: Mutex<Vec<String>>,
    /// Bodies of the `POST /v1/messages` requests.
    requests: Mutex<Vec<Value>>,
    /// `POST /v1/messages` requests whose reply has not been sent yet.
    in_flight: AtomicUsize,
    delay: Mutex<Duration>,
    reply: Mutex<Option<String>>,
    /// Reply `heard: <the request's user texts, joined by " / ">` (see [`user_texts`]).
    echo: std::sync::atomic::AtomicBool,
    /// Tool calls to answer the next conversation requests with, one per request, before
    /// going back to the text reply.
    tool_uses: Mutex<VecDeque<ToolUse>>,
}

/// A model call that asks the CLI to run a tool.
#[derive(Clone)]
struct ToolUse {
    id: String,
    name: String,
    input: Value,
}

/// What one `POST /v1/messages` is answered with.
enum Answer {
    Text(String),
    Tool(ToolUse),
}

impl StandInApi {
    /// Binds 127.0.0.1 on a free port and serves from a background task. The listener is bound
    /// before this returns, so the CLI can connect right away.
    pub async fn start() -> StandInApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in API listener");
        let addr = listener.local_addr().expect("stand-in API address");
        let state = Arc::new(Shared::default());
        let app = router(Arc::clone(&state));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve the stand-in API");
        });
        StandInApi {
            addr,
            state,
            server: server.abort_handle(),
        }
    }

    /// `http://127.0.0.1:PORT`, the value for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `METHOD /path?query` of every HTTP request received so far, in order, whatever its path.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state.calls).clone()
    }

    /// The bodies of every `POST /v1/messages` received so far, in order, side requests included.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state.requests).clone()
    }

    /// The bodies of the conversation's own requests: [`requests`](Self::requests) without the
    /// side requests that [`is_main_request`] rules out.
    pub fn main_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(is_main_request)
            .collect()
    }

    /// Waits until at least `count` requests have arrived; false if `timeout` passes first.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while lock(&self.state.requests).len() < count {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// How many `POST /v1/messages` are still waiting for their reply, e.g. delayed ones. A
    /// request whose client went away no longer counts.
    pub fn replies_in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Makes every later reply wait this long before it starts, e.g. to interrupt a slow turn.
    /// A waiting reply ends as soon as its client disconnects.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Makes every later reply say `text` instead of the default `stand-in reply #N`.
    pub fn set_reply(&self, text: &str) {
        *lock(&self.state.reply) = Some(text.to_owned());
    }

    /// Makes every later text reply `heard: A / B / …`, the user texts its request carried,
    /// instead of a fixed text: a client sees in the reply whether the context was kept.
    pub fn echo_conversation(&self) {
        self.state.echo.store(true, Ordering::SeqCst);
    }

    /// Answers the next conversation request (see [`is_main_request`]) with a call of tool
    /// `name` with `input` (stop reason `tool_use`) instead of text; returns the `tool_use` id.
    /// Calls pushed in a row answer the requests in a row; once they are used up, requests get
    /// the text reply again, so the request carrying the last tool's result ends the turn.
    pub fn push_tool_use(&self, name: &str, input: Value) -> String {
        let id = tool_use_id();
        lock(&self.state.tool_uses).push_back(ToolUse {
            id: id.clone(),
            name: name.to_owned(),
            input,
        });
        id
    }
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The texts the user sent in a request body: the `text` blocks of its user-role messages, in
/// order, with trailing whitespace trimmed.
///
/// One entry per text block rather than per message, because the CLI merges consecutive user
/// messages into one (after an interrupt, the interrupted text, `[Request interrupted by user]`
/// and the next text become three blocks of one message). Content may be a plain string or an
/// array of blocks; `tool_result` and other blocks are left out, and so are the texts the CLI
/// adds on its own (see [`is_injected_text`]).
/// The input of an AskUserQuestion asking "Which color?" (Red or Blue), as the fake CLI's
/// `[ask-question]` asks it.
pub fn color_question() -> Value {
    json!({"questions": [{
        "question": "Which color?",
        "header": "Color",
        "options": [
            {"label": "Red", "description": "warm"},
            {"label": "Blue", "description": "cool"},
        ],
        "multiSelect": false,
    }]})
}

pub fn user_texts(body: &Value) -> Vec<String> {
    let Some(messages) = body["messages"].as_array() else {
        return Vec::new();
    };
    messages
        .iter()
        .filter(|message| message["role"] == "user")
        .flat_map(|message| content_texts(&message["content"]))
        .filter(|text| !is_injected_text(text))
        .map(|text| text.trim_end().to_owned())
        .collect()
}

/// The `tool_result` blocks of the last user message of a request body, whole: what the model
/// is told about the tools it asked for (`tool_use_id`, `content`, `is_error`).
///
/// Empty when the last user message is plain text.
pub fn tool_results(body: &Value) -> Vec<Value> {
    let Some(last) = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
    else {
        return Vec::new();
    };
    match last["content"].as_array() {
        Some(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "tool_result")
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

/// The text of a `tool_result` block, whose `content` is a string or a list of text blocks.
pub fn tool_result_text(result: &Value) -> String {
    match &result["content"] {
        Value::String(text) => text.clone(),
        content => content_texts(content).join("\n"),
    }
}

/// Whether a request is part of the conversation rather than a side request of the CLI.
///
/// The conversation's requests always offer the CLI's tools; side requests offer none.
pub fn is_main_request(body: &Value) -> bool {
    body["tools"]
        .as_array()
        .is_some_and(|tools| !tools.is_empty())
}

/// Texts the CLI puts into user messages by itself, which the user never typed.
fn is_injected_text(text: &str) -> bool {
    const MARKERS: [&str; 4] = [
        "<system-reminder>",
        "[Request interrupted by user",
        "<command-",
        "<local-command-",
    ];
    let text = text.trim_start();
    MARKERS.iter().any(|marker| text.starts_with(marker))
}

/// The texts of a message's content: the string itself, or its `text` blocks.
fn content_texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(text) => vec![text.as_str()],
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect(),
        _ => Vec::new(),
    }
}

fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .fallback(|| async { Json(json!({})) })
        // The CLI's requests hold the whole conversation and its tool list: no size limit.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            record_call,
        ))
        .with_state(state)
}

/// Notes down every request, whatever its path, before handling it.
async fn record_call(State(state): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    lock(&state.calls).push(format!("{} {}", request.method(), request.uri()));
    next.run(request).await
}

/// `POST /v1/messages`: records the request, waits the configured delay, then replies.
///
/// The delay is spent before the response starts. Hyper drops this handler as soon as the
/// client disconnects, so an abandoned (e.g. interrupted) request ends at once.
async fn messages(State(state): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = state.record(request.clone());
    let delay = *lock(&state.delay);
    let waiting = InFlight::new(&state.in_flight);
    tokio::time::sleep(delay).await;
    drop(waiting);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-stand-in")
        .to_owned();
    if request["stream"] == true {
        // Text deltas come paced, as the model writes them.
        let events = stream::iter(reply_events(&model, &answer)).then(|data| async move {
            if data["delta"]["type"] == "text_delta" {
                tokio::time::sleep(DELTA_GAP).await;
            }
            Ok::<_, Infallible>(sse_event(data))
        });
        Sse::new(events).into_response()
    } else {
        Json(reply_message(&model, &answer)).into_response()
    }
}

/// `POST /v1/messages/count_tokens`.
async fn count_tokens() -> Json<Value> {
    Json(json!({ "input_tokens": 10 }))
}

impl Shared {
    /// Records a request and returns what to answer it with: the next scripted tool call for
    /// a conversation request, else the text reply.
    fn record(&self, request: Value) -> Answer {
        let tool = if is_main_request(&request) {
            lock(&self.tool_uses).pop_front()
        } else {
            None
        };
        let heard = format!("heard: {}", user_texts(&request).join(" / "));
        let mut requests = lock(&self.requests);
        requests.push(request);
        let number = requests.len();
        drop(requests);
        match tool {
            Some(tool) => Answer::Tool(tool),
            None if self.echo.load(Ordering::SeqCst) => Answer::Text(heard),
            None => Answer::Text(
                lock(&self.reply)
                    .clone()
                    .unwrap_or_else(|| format!("stand-in reply #{number}")),
            ),
        }
    }
}

impl Answer {
    /// The content block as a whole message holds it.
    fn block(&self) -> Value {
        match self {
            Answer::Text(text) => json!({ "type": "text", "text": text }),
            Answer::Tool(tool) => json!({
                "type": "tool_use",
                "id": tool.id,
                "name": tool.name,
                "input": tool.input,
            }),
        }
    }

    /// The content block as `content_block_start` opens it: empty, filled by the delta.
    fn empty_block(&self) -> Value {
        match self {
            Answer::Text(_) => json!({ "type": "text", "text": "" }),
            Answer::Tool(tool) => json!({
                "type": "tool_use",
                "id": tool.id,
                "name": tool.name,
                "input": {},
            }),
        }
    }

    /// The `content_block_delta`s that fill the block: a text a few words at a time, as the
    /// API streams it; a tool's input in one piece.
    fn deltas(&self) -> Vec<Value> {
        match self {
            Answer::Text(text) => text_pieces(text)
                .into_iter()
                .map(|piece| json!({ "type": "text_delta", "text": piece }))
                .collect(),
            Answer::Tool(tool) => vec![json!({
                "type": "input_json_delta",
                "partial_json": tool.input.to_string(),
            })],
        }
    }

    fn stop_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "end_turn",
            Answer::Tool(_) => "tool_use",
        }
    }

    fn output_tokens(&self) -> usize {
        match self {
            Answer::Text(text) => output_tokens(text),
            Answer::Tool(tool) => output_tokens(&tool.input.to_string()),
        }
    }
}

/// A whole reply as the Messages API answers a request without `stream`.
fn reply_message(model: &str, answer: &Answer) -> Value {
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [answer.block()],
        "stop_reason": answer.stop_reason(),
        "stop_sequence": null,
        "usage": { "input_tokens": 10, "output_tokens": answer.output_tokens() },
    })
}

/// The pause before each `text_delta`.
const DELTA_GAP: Duration = Duration::from_millis(10);
/// Words per `text_delta`.
const WORDS_PER_DELTA: usize = 2;

/// A text in the pieces the API streams it in: a couple of words each, every piece but the
/// first starting with the space before its word. Joined, they are the text.
fn text_pieces(text: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let mut words = 0;
    let mut after_word = false;
    for c in text.chars() {
        if c.is_whitespace() && after_word {
            words += 1;
            if words % WORDS_PER_DELTA == 0 {
                pieces.push(String::new());
            }
        }
        after_word = !c.is_whitespace();
        match pieces.last_mut() {
            Some(piece) => piece.push(c),
            None => pieces.push(c.to_string()),
        }
    }
    pieces
}

/// A whole reply as the streaming Messages API sends it: one content block (text in several
/// `text_delta`s, or a tool call whose input comes as one `input_json_delta`), then `end_turn`
/// or `tool_use`.
fn reply_events(model: &str, answer: &Answer) -> Vec<Value> {
    let mut events = vec![
        json!({
            "type": "message_start",
            "message": {
                "id": message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        }),
        json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": answer.empty_block(),
        }),
        json!({ "type": "ping" }),
    ];
    events.extend(answer.deltas().into_iter().map(|delta| {
        json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": delta,
        })
    }));
    events.extend([
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": answer.stop_reason(), "stop_sequence": null },
            "usage": { "output_tokens": answer.output_tokens() },
        }),
        json!({ "type": "message_stop" }),
    ]);
    events
}

/// One SSE event named after its `type`, as the real API names them.
fn sse_event(data: Value) -> Event {
    let name = data["type"].as_str().unwrap_or("message").to_owned();
    Event::default().event(name).data(data.to_string())
}

/// Counts a waiting reply for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `toolu_standin_NNNNNN`, unique in the test binary.
fn tool_use_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("toolu_standin_{:06}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("msg_standin_{:06}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn output_tokens(text: &str) -> usize {
    text.split_whitespace().count().max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
