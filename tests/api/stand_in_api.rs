//! A stand-in for the Anthropic Messages API, for the tests that drive the real Claude Code CLI.
//!
//! Point the CLI at it with `ANTHROPIC_BASE_URL=<base_url()>` and any `ANTHROPIC_API_KEY`. It
//! answers every `POST /v1/messages` with one text block, streamed as Server-Sent Events when the
//! request asks for `"stream": true` (the CLI always does), and records every request body so a
//! test can check what the CLI sent, e.g. that a resumed conversation still carried its history
//! (see [`user_texts`]). [`StandInApi::set_delay`] makes turns slow enough to interrupt.
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
use futures::stream::{self, Stream};
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
    let reply = state.record(request.clone());
    let delay = *lock(&state.delay);
    let waiting = InFlight::new(&state.in_flight);
    tokio::time::sleep(delay).await;
    drop(waiting);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-stand-in")
        .to_owned();
    if request["stream"] == true {
        Sse::new(reply_events(model, reply)).into_response()
    } else {
        Json(reply_message(&model, &reply)).into_response()
    }
}

/// `POST /v1/messages/count_tokens`.
async fn count_tokens() -> Json<Value> {
    Json(json!({ "input_tokens": 10 }))
}

impl Shared {
    /// Records a request and returns the text to reply to it.
    fn record(&self, request: Value) -> String {
        let mut requests = lock(&self.requests);
        requests.push(request);
        let number = requests.len();
        drop(requests);
        lock(&self.reply)
            .clone()
            .unwrap_or_else(|| format!("stand-in reply #{number}"))
    }
}

/// A whole reply as the Messages API answers a request without `stream`.
fn reply_message(model: &str, text: &str) -> Value {
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{ "type": "text", "text": text }],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": { "input_tokens": 10, "output_tokens": output_tokens(text) },
    })
}

/// A whole reply as the streaming Messages API sends it: one text block, then `end_turn`.
fn reply_events(model: String, text: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let events = [
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
            "content_block": { "type": "text", "text": "" },
        }),
        json!({ "type": "ping" }),
        json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": { "type": "text_delta", "text": text },
        }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": { "output_tokens": output_tokens(&text) },
        }),
        json!({ "type": "message_stop" }),
    ];
    stream::iter(events.map(|data| Ok(sse_event(data))))
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
