//! The OpenAI-compatible endpoint: `POST /v1/chat/completions` and `GET /v1/models`, so
//! tools that speak the OpenAI chat API can use a tether session as if it were a model. The
//! conversation lives in the session: only the request's last (user) message is sent, through
//! the same accept path as `POST /api/chat`, and it is an ordinary message of its session
//! (history, queue, pushes). Errors on `/v1` are rendered in OpenAI's shape
//! (`openai_errors`).

use super::codes::ErrorCode;
use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{HeaderName, HeaderValue, Method},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Extension, Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    edge::Edge,
    error::{ApiError, ApiJson},
    openai_errors::error_body,
    routes::{Access, Routes},
    state::AppState,
};
use crate::{
    agent::TextDelta,
    auth::Caller,
    sessions::{Accepted, Message, Target, TurnWatch, Watched},
    store::messages::{MessageRow, Status},
};

/// The completions route, also named by the request timeout (it waits for the reply).
pub(super) const COMPLETIONS_ROUTE: &str = "/v1/chat/completions";
/// The response header (and body field) naming the tether session of the conversation.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";
/// Read by the official OpenAI SDKs: false keeps them from sending a message again that
/// tether already accepted (a retry would be a second turn).
const SHOULD_RETRY: &str = "x-should-retry";
/// Chunks queued for one streaming client before the sender waits for it.
const STREAM_BUFFER: usize = 64;
/// A comment line that keeps a quiet stream's connection open (a turn may wait on a person).
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// Put between two text blocks of a streamed turn (text before and after a tool call).
const BLOCK_SEPARATOR: &str = "\n\n";

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::POST,
            COMPLETIONS_ROUTE,
            Access::User,
            post(completions),
            COMPLETIONS_ERRORS,
        )
        .add(
            Method::GET,
            "/v1/models",
            Access::User,
            get(models),
            MODELS_ERRORS,
        )
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// The tether session to continue (an extension of the OpenAI request).
    conversation_id: Option<String>,
    /// Where a new conversation runs (an extension; default `openai.default_project`).
    project_path: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    /// A string, or a list of parts; only the last message's is read.
    content: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// [`models`] answers only the edge's errors (see `openapi`).
const MODELS_ERRORS: &[ErrorCode] = &[];

/// The models (OpenAI-compatible)
///
/// The agents tether runs, as models (`claude`).
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "openaiModels",
    tag = "openai",
    responses(
        (status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\": \"claude\", \"object\": \"model\", …}]}`", body = Object),
    ),
)]
async fn models(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [model(state.agent_name())],
    }))
}

fn model(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "tether"})
}

/// What [`completions`] may answer besides the edge's errors (see `openapi`).
const COMPLETIONS_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidMessages,
    ErrorCode::UnsupportedContent,
    ErrorCode::ProjectPathRequired,
    ErrorCode::InvalidBody,
    ErrorCode::ModelNotFound,
    ErrorCode::SessionNotFound,
    ErrorCode::TurnInterrupted,
    ErrorCode::TurnCancelled,
    ErrorCode::SessionEnded,
    ErrorCode::TurnFailed,
    ErrorCode::ReplyPending,
    // What accepting its message may answer (as `POST /api/chat`).
    ErrorCode::SessionExpired,
    ErrorCode::InvalidSessionId,
    ErrorCode::EmptyMessage,
    ErrorCode::MessageTooLarge,
    ErrorCode::InvalidProjectPath,
    ErrorCode::ProjectNotFound,
    ErrorCode::ProjectNotADirectory,
    ErrorCode::Forbidden,
    ErrorCode::QueueFull,
    ErrorCode::TooManySessions,
    ErrorCode::TooManyNewSessions,
    ErrorCode::AgentUnavailable,
    // A streamed completion counts as an event stream.
    ErrorCode::TooManyStreams,
];

/// A chat completion (OpenAI-compatible)
///
/// OpenAI's chat completion request, with two extensions: `conversation_id` (a tether
/// session to continue) and `project_path` (where a new conversation runs; default
/// `openai.default_project`). Only the last message, a user's, is sent: the conversation
/// lives in the session. The answer carries `conversation_id` (also as the
/// `x-conversation-id` header) and `usage`; with `stream: true` it is OpenAI's chunk stream
/// from the live text, ending with `data: [DONE]`. Errors are in OpenAI's shape.
#[utoipa::path(
    post,
    path = COMPLETIONS_ROUTE,
    operation_id = "openaiChatCompletions",
    tag = "openai",
    request_body(content = Object, description = "`{\"model\": \"claude\", \"messages\": [{\"role\": \"user\", \"content\": \"…\"}], \"stream\"?, \"stream_options\"?, \"conversation_id\"?, \"project_path\"?}`"),
    responses(
        (status = 200, description = "The completion (`chat.completion`), or with `stream` its chunks as server-sent events", content(
            (Object = "application/json"),
            (String = "text/event-stream"),
        )),
    ),
)]
async fn completions(
    State(state): State<AppState>,
    Extension(edge): Extension<Edge>,
    caller: Caller,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let agent = state.agent_name();
    if req.model != agent {
        return Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!(
                "the model `{}` does not exist; this server's models are its agents: {agent}",
                req.model
            ),
        ));
    }
    let text = last_user_text(&req.messages)?;
    let default_project = &state.settings.openai.default_project;
    let target = match (&req.conversation_id, &req.project_path) {
        (Some(id), _) => Target::Session(id),
        (None, Some(path)) => Target::NewIn(path),
        (None, None) if !default_project.trim().is_empty() => Target::NewIn(default_project),
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::ProjectPathRequired,
                "a new conversation needs project_path (or set openai.default_project), or \
                 send conversation_id to continue one",
            ))
        }
    };
    // A stream counts against its owner's open streams, from before its message is accepted.
    let permit = if req.stream {
        let limit = state.settings.limits.streams_per_owner;
        Some(edge.streams.acquire(&caller.owner, limit)?)
    } else {
        None
    };
    if !state.sessions.is_closing() {
        state.agent_ready().await?;
    }
    let deadline = super::chat::wait_deadline(&state);
    let accepted = state
        .sessions
        .accept(Message {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            text: &text,
            target,
            client_message_id: None,
            watch_until: Some(deadline),
        })
        .await?;
    let Accepted::Queued {
        session_id,
        message_id,
        watch: Some(watch),
        ..
    } = accepted
    else {
        return Err(anyhow::anyhow!("an accepted completion has no turn to follow").into());
    };
    tracing::info!(%session_id, message_id, stream = req.stream, "completion accepted");
    let completion = Completion {
        id: format!("chatcmpl-{message_id}"),
        created: chrono::Utc::now().timestamp(),
        model: agent,
        conversation_id: session_id,
        wait: state.settings.server.wait_timeout,
    };
    if let Some(permit) = permit {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = completion.clone();
        tokio::spawn(async move {
            // The stream's owner count is held until the turn's answer is sent or the
            // client is gone; the turn itself goes on either way.
            let _counted = permit;
            stream.feed(watch, deadline, include_usage, tx).await;
        });
        // Revoking the token ends the stream (the turn goes on, as when the client goes).
        let revoked = state.auth.until_revoked(caller.token_id.clone());
        let chunks = futures::StreamExt::take_until(ReceiverStream::new(rx), revoked);
        let body = Sse::new(chunks).keep_alive(KeepAlive::new().interval(STREAM_KEEPALIVE));
        return Ok(completion.tagged(body.into_response()));
    }
    let (msg, reply) = watch.end().await?;
    let res = match completion.answer(msg, reply, deadline) {
        Ok(body) => Json(body).into_response(),
        Err(e) => not_to_retry(e.into_response()),
    };
    Ok(completion.tagged(res))
}

/// The text of the request's last message, which must be the user's: a string, or text
/// parts (joined by newlines).
fn last_user_text(messages: &[ChatMessage]) -> Result<String, ApiError> {
    let invalid = |code, message: &str| Err(ApiError::new(code, message.to_string()));
    let Some(last) = messages.last() else {
        return invalid(ErrorCode::InvalidMessages, "messages must not be empty");
    };
    if last.role != "user" {
        return invalid(
            ErrorCode::InvalidMessages,
            "the last message must be the user's: only it is sent, the conversation itself \
             lives in the tether session (conversation_id)",
        );
    }
    match &last.content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => {
                        return invalid(
                            ErrorCode::UnsupportedContent,
                            "only text content is supported (parts of type `text`)",
                        )
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => invalid(
            ErrorCode::InvalidMessages,
            "the last message's content must be a string or a list of text parts",
        ),
    }
}

/// One completion's fixed parts, shared by its answer and its chunks.
#[derive(Clone)]
struct Completion {
    id: String,
    created: i64,
    model: &'static str,
    conversation_id: String,
    /// `server.wait_timeout`, named in the answer that comes without a reply.
    wait: Duration,
}

impl Completion {
    /// Names the conversation in a response's header.
    fn tagged(&self, mut res: Response) -> Response {
        if let Ok(v) = HeaderValue::from_str(&self.conversation_id) {
            res.headers_mut()
                .insert(HeaderName::from_static(CONVERSATION_HEADER), v);
        }
        res
    }

    /// The `chat.completion` of a turn that completed, else the error that says how it ended.
    fn answer(
        &self,
        msg: MessageRow,
        reply: Option<MessageRow>,
        deadline: Instant,
    ) -> Result<Value, ApiError> {
        let reply = self.outcome(&msg, reply, deadline)?;
        Ok(json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage(reply.usage.as_deref().or(msg.usage.as_deref())),
            "system_fingerprint": null,
            "conversation_id": self.conversation_id,
        }))
    }

    /// The reply of a completed turn; how the turn ended otherwise, as an error.
    fn outcome(
        &self,
        msg: &MessageRow,
        reply: Option<MessageRow>,
        deadline: Instant,
    ) -> Result<MessageRow, ApiError> {
        let why = || msg.error.clone().unwrap_or_default();
        let err = match (msg.status, reply) {
            (Status::Completed, Some(reply)) => return Ok(reply),
            (Status::Completed, None) => {
                return Err(anyhow::anyhow!("message {} completed without a reply", msg.id).into())
            }
            (Status::Failed, _) => ApiError::new(
                ErrorCode::TurnFailed,
                format!("the agent's turn failed: {}", why()),
            ),
            (Status::Interrupted, _) => ApiError::new(
                ErrorCode::TurnInterrupted,
                format!("the turn was interrupted: {}", why()),
            ),
            (Status::Cancelled, _) => ApiError::new(
                ErrorCode::TurnCancelled,
                format!("the message was cancelled before its turn: {}", why()),
            ),
            (Status::Queued | Status::Running, _) => {
                let when = if Instant::now() >= deadline {
                    format!(
                        "no reply within {} (server.wait_timeout)",
                        humantime::format_duration(self.wait)
                    )
                } else {
                    "no reply: tether is stopping".to_string()
                };
                ApiError::new(
                    ErrorCode::ReplyPending,
                    format!(
                        "{when}; the message stays in conversation {} and its reply will be in \
                         its history (GET /api/sessions/{}/messages)",
                        self.conversation_id, self.conversation_id
                    ),
                )
            }
        };
        Err(err)
    }

    /// A `chat.completion.chunk` with `choices` (and `usage`, when given).
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": null,
            "conversation_id": self.conversation_id,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Event::default().data(chunk.to_string())
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        )
    }

    /// Streams the turn: a first chunk with the role, then the text as it is written, then
    /// the finish (and the usage, when asked), ending with `[DONE]`; or an error chunk when
    /// the turn does not complete. Ends early when the client goes; the turn goes on.
    async fn feed(
        self,
        mut watch: TurnWatch,
        deadline: Instant,
        include_usage: bool,
        tx: mpsc::Sender<Result<Event, Infallible>>,
    ) {
        let send = |event: Event| {
            let tx = tx.clone();
            async move { tx.send(Ok(event)).await.is_ok() }
        };
        if !send(self.delta(json!({"role": "assistant", "content": ""}), None)).await {
            return;
        }
        let mut streamed = String::new();
        let mut block: Option<(Option<String>, u64)> = None;
        let (msg, reply) = loop {
            let next = tokio::select! {
                _ = tx.closed() => {
                    tracing::info!(conversation_id = %self.conversation_id, "completion stream closed by its client; the turn goes on");
                    return;
                }
                next = watch.next() => next,
            };
            match next {
                Ok(Watched::Text(TextDelta {
                    text,
                    api_message_id,
                    index,
                })) => {
                    let this = Some((api_message_id, index));
                    let mut piece = String::new();
                    if block.is_some() && block != this && !streamed.is_empty() {
                        piece.push_str(BLOCK_SEPARATOR);
                    }
                    block = this;
                    piece.push_str(&text);
                    streamed.push_str(&piece);
                    if !send(self.delta(json!({"content": piece}), None)).await {
                        return;
                    }
                }
                Ok(Watched::Ended(end)) => break *end,
                Ok(Watched::Pending(msg)) => break (*msg, None),
                Err(e) => {
                    tracing::error!(error = %e, "could not follow a streamed completion");
                    let err = ApiError::from(e);
                    send(error_event(&err)).await;
                    return;
                }
            }
        };
        let usage_of = |reply: &MessageRow| usage(reply.usage.as_deref().or(msg.usage.as_deref()));
        match self.outcome(&msg, reply, deadline) {
            Ok(reply) => {
                // Text the stream missed (it fell behind, or the agent streamed none): the
                // rest of the reply, when what was sent begins it.
                if let Some(rest) = reply.text.strip_prefix(streamed.as_str()) {
                    if !rest.is_empty() && !send(self.delta(json!({"content": rest}), None)).await {
                        return;
                    }
                }
                if !send(self.delta(json!({}), Some("stop"))).await {
                    return;
                }
                if include_usage && !send(self.chunk(json!([]), Some(usage_of(&reply)))).await {
                    return;
                }
                send(Event::default().data("[DONE]")).await;
            }
            Err(err) => {
                send(error_event(&err)).await;
            }
        }
    }
}

/// An error in the middle of a stream, as OpenAI sends one (the SDKs raise it).
fn error_event(err: &ApiError) -> Event {
    Event::default().data(error_body(err.status(), Some(err.code), &err.message).to_string())
}

/// OpenAI's `usage` from the CLI's (Anthropic's) usage of the turn: prompt tokens are the
/// input ones, cached or not.
fn usage(raw: Option<&str>) -> Value {
    let u: Value = raw
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let n = |key: &str| u[key].as_u64().unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + n("cache_creation_input_tokens") + cached;
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Tells the OpenAI SDKs not to send the request again by themselves.
fn not_to_retry(mut res: Response) -> Response {
    res.headers_mut().insert(
        HeaderName::from_static(SHOULD_RETRY),
        HeaderValue::from_static("false"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(v: Value) -> Vec<ChatMessage> {
        serde_json::from_value::<Vec<Value>>(v)
            .unwrap()
            .into_iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().to_string(),
                content: m.get("content").cloned(),
            })
            .collect()
    }

    #[test]
    fn only_the_last_message_is_sent_and_it_must_be_the_users() {
        let text = last_user_text(&messages(json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ])))
        .unwrap();
        assert_eq!(text, "a\nb");
        let code = |v| last_user_text(&messages(v)).unwrap_err().code;
        assert_eq!(code(json!([])), "invalid_messages");
        assert_eq!(
            code(json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])),
            "invalid_messages"
        );
        assert_eq!(
            code(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
            ),
            "unsupported_content"
        );
        assert_eq!(code(json!([{"role": "user"}])), "invalid_messages");
    }

    #[test]
    fn usage_counts_cached_input_as_prompt_tokens() {
        let u = usage(Some(
            r#"{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":100,"output_tokens":7}"#,
        ));
        assert_eq!(u["prompt_tokens"], 113);
        assert_eq!(u["completion_tokens"], 7);
        assert_eq!(u["total_tokens"], 120);
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(usage(None)["total_tokens"], 0);
    }
}
