//! The conversation of one stream-json process: its state, the loop reading stdin between
//! and during turns, and the lines of a model message (streamed or whole).

use std::collections::VecDeque;
use std::process;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::control::{answer_control, refuse_control};
use crate::input::Input;
use crate::permissions::Permissions;
use crate::protocol::{emit, fatal, usage, MODEL, VERSION};
use crate::transcript::Session;

pub(crate) const COST_PER_TURN_MILLI_USD: u64 = 1;
/// The pause between two `text_delta`s unless `FAKE_CLAUDE_DELTA_MS` says otherwise: the
/// real API streams a reply a few tokens at a time, tens of milliseconds apart.
pub(crate) const DELTA_GAP_MS: u64 = 10;
/// Most `text_delta`s of one text block: a longer text comes in bigger pieces, so that a
/// huge reply does not take minutes.
pub(crate) const MAX_DELTAS: usize = 24;

/// How a wait inside a turn ended.
pub(crate) enum Waited {
    Elapsed,
    Interrupted,
}

pub(crate) struct Conversation {
    pub(crate) session: Session,
    pub(crate) rx: Receiver<Input>,
    /// User messages that arrived while a turn was running, in order.
    pub(crate) queue: VecDeque<String>,
    pub(crate) eof: bool,
    /// Turns started by this process: the cost adds up over the process's life.
    pub(crate) turns: u64,
    pub(crate) messages: u64,
    pub(crate) last_was_error: bool,
    /// The pid of a tool started by `[spawn-tool]`, named in the reply.
    pub(crate) tool: Option<u32>,
    pub(crate) permissions: Permissions,
    /// This turn's refused tool calls, for the `result`'s `permission_denials`.
    pub(crate) denials: Vec<Value>,
    /// Tool calls of this process, for unique `tool_use` ids.
    pub(crate) tool_uses: u64,
    /// With `--include-partial-messages`: the pause between two text deltas.
    pub(crate) stream: Option<Duration>,
}

impl Conversation {
    pub(crate) fn new(
        session: Session,
        rx: Receiver<Input>,
        permissions: Permissions,
        stream: Option<Duration>,
    ) -> Self {
        Self {
            session,
            rx,
            queue: VecDeque::new(),
            eof: false,
            turns: 0,
            messages: 0,
            last_was_error: false,
            tool: None,
            permissions,
            denials: Vec::new(),
            tool_uses: 0,
            stream,
        }
    }

    /// Serves turns until stdin closes; returns the exit code.
    pub(crate) fn run(mut self) -> i32 {
        loop {
            if let Some(text) = self.queue.pop_front() {
                self.turn(&text);
                continue;
            }
            if self.eof {
                return i32::from(self.last_was_error);
            }
            match self.rx.recv().unwrap_or(Input::Eof) {
                Input::User(text) => self.turn(&text),
                input => self.handle_side_input(input),
            }
        }
    }

    /// Inputs that mean the same whether or not a turn is running.
    pub(crate) fn handle_side_input(&mut self, input: Input) {
        match input {
            Input::User(text) => self.queue.push_back(text),
            Input::Interrupt { request_id } => answer_control(&request_id),
            Input::SetPermissionMode { request_id, mode } => {
                self.set_permission_mode(&request_id, &mode);
            }
            // An answer to no pending request: ignored, as the real CLI does.
            Input::ControlResponse(_) => {}
            Input::OtherControl {
                request_id,
                subtype,
            } => refuse_control(&request_id, &subtype),
            Input::Ignored => {}
            Input::Invalid => fatal("Error parsing streaming input line", 1),
            Input::Eof => self.eof = true,
        }
    }

    /// Sleeps for `duration` while still reading stdin: queues user lines, ends early on an
    /// interrupt (after answering it).
    pub(crate) fn wait(&mut self, duration: Duration) -> Waited {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::Elapsed;
            }
            if self.eof {
                thread::sleep(left);
                return Waited::Elapsed;
            }
            match self.rx.recv_timeout(left) {
                Ok(Input::Interrupt { request_id }) => {
                    answer_control(&request_id);
                    return Waited::Interrupted;
                }
                Ok(input) => self.handle_side_input(input),
                Err(RecvTimeoutError::Timeout) => return Waited::Elapsed,
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Prints an assistant line calling tool `name`; returns the `tool_use` id.
    pub(crate) fn emit_tool_call(&mut self, name: &str, input: &Value) -> String {
        self.tool_uses += 1;
        let id = format!("toolu_fake_{:06}_{}", self.tool_uses, process::id());
        let call = json!([{"type": "tool_use", "id": id, "name": name, "input": input}]);
        self.say(call);
        id
    }

    pub(crate) fn emit_tool_result(&mut self, tool_use_id: &str, content: &str, is_error: bool) {
        let mut block =
            json!({"type": "tool_result", "content": content, "tool_use_id": tool_use_id});
        if is_error {
            block["is_error"] = json!(true);
        }
        emit(&self.user_line(json!([block.clone()])));
        self.session.record_user(json!([block]), None);
    }

    pub(crate) fn user_line(&self, content: Value) -> Value {
        json!({
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": null,
            "session_id": self.session.id,
            "uuid": Uuid::new_v4().to_string(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    pub(crate) fn init_line(&self) -> Value {
        // Without a prompt tool, the real CLI offers no AskUserQuestion.
        let tools = if self.permissions.ask_host {
            json!(["AskUserQuestion", "Bash", "Read", "Write"])
        } else {
            json!(["Bash", "Read", "Write"])
        };
        json!({
            "type": "system",
            "subtype": "init",
            "cwd": self.session.cwd,
            "session_id": self.session.id,
            "tools": tools,
            "mcp_servers": [],
            "model": MODEL,
            "permissionMode": self.permissions.mode,
            "apiKeySource": "none",
            "claude_code_version": VERSION,
        })
    }

    /// One model message: its `assistant` line, one per content block. With
    /// `--include-partial-messages`, streamed first as the real CLI (2.1.329) prints it: a
    /// `system/status` "requesting", `message_start`, then for each block its
    /// `content_block_start`, its deltas (text a few words at a time, `self.stream` apart; a
    /// tool's input in one `input_json_delta`), its whole `assistant` line, and
    /// `content_block_stop`; then `message_delta` and `message_stop`. An interrupt while the
    /// text streams ends the message there.
    pub(crate) fn say(&mut self, content: Value) -> Waited {
        self.messages += 1;
        let id = format!("msg_{}", self.messages);
        let blocks = content.as_array().cloned().unwrap_or_default();
        let stop_reason = if blocks.iter().any(|b| b["type"] == "tool_use") {
            "tool_use"
        } else {
            "end_turn"
        };
        let Some(gap) = self.stream else {
            for block in blocks {
                emit(&self.assistant_line(&id, json!([block.clone()])));
                self.session.record_assistant(&id, &block, stop_reason);
            }
            return Waited::Elapsed;
        };
        emit(&json!({
            "type": "system", "subtype": "status", "status": "requesting",
            "session_id": self.session.id, "uuid": Uuid::new_v4().to_string(),
        }));
        self.stream_event(
            &id,
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage(10, 1),
            }}),
        );
        for (index, block) in blocks.into_iter().enumerate() {
            let mut empty = block.clone();
            match block["type"].as_str() {
                Some("text") => empty["text"] = json!(""),
                Some("tool_use") => empty["input"] = json!({}),
                _ => {}
            }
            self.stream_event(
                &id,
                json!({"type": "content_block_start", "index": index, "content_block": empty}),
            );
            if let Some(text) = block["text"].as_str() {
                for (n, piece) in text_pieces(text).into_iter().enumerate() {
                    if n > 0 && !gap.is_zero() {
                        if let Waited::Interrupted = self.wait(gap) {
                            return Waited::Interrupted;
                        }
                    }
                    let delta = json!({"type": "text_delta", "text": piece});
                    self.stream_event(
                        &id,
                        json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    );
                }
            } else if block["type"] == "tool_use" {
                let delta =
                    json!({"type": "input_json_delta", "partial_json": block["input"].to_string()});
                self.stream_event(
                    &id,
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                );
            }
            emit(&self.assistant_line(&id, json!([block.clone()])));
            self.session.record_assistant(&id, &block, stop_reason);
            self.stream_event(&id, json!({"type": "content_block_stop", "index": index}));
        }
        self.stream_event(
            &id,
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": 5}}),
        );
        self.stream_event(&id, json!({"type": "message_stop"}));
        Waited::Elapsed
    }

    /// A `stream_event` line of model message `id`.
    pub(crate) fn stream_event(&self, id: &str, event: Value) {
        emit(&json!({
            "type": "stream_event",
            "event": event,
            "session_id": self.session.id,
            "parent_tool_use_id": null,
            "uuid": Uuid::new_v4().to_string(),
            "api_message_id": id,
        }));
    }

    pub(crate) fn assistant_line(&self, id: &str, content: Value) -> Value {
        json!({
            "type": "assistant",
            "message": {
                "id": id,
                "role": "assistant",
                "model": MODEL,
                "content": content,
                "stop_reason": null,
                "usage": usage(10, 5),
            },
            "parent_tool_use_id": null,
            "session_id": self.session.id,
            "uuid": Uuid::new_v4().to_string(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    pub(crate) fn result_line(
        &self,
        subtype: &str,
        is_error: bool,
        text: &str,
        started: Instant,
    ) -> Value {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stop_reason = if subtype == "success" {
            json!("end_turn")
        } else {
            Value::Null
        };
        json!({
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "result": text,
            "session_id": self.session.id,
            "num_turns": 1,
            "duration_ms": duration_ms,
            "duration_api_ms": duration_ms,
            // Exact decimal: n / 1000 rounds to the double nearest to 0.00n.
            "total_cost_usd": (self.turns * COST_PER_TURN_MILLI_USD) as f64 / 1000.0,
            "usage": usage(10, 5),
            "stop_reason": stop_reason,
            "permission_denials": self.denials,
            "uuid": Uuid::new_v4().to_string(),
        })
    }
}

/// `text` in the pieces its `text_delta`s carry: a word each (with the space before it, as
/// the API sends them), or several words when there would be more than `MAX_DELTAS`; joined,
/// they are `text`.
pub(crate) fn text_pieces(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for c in text.chars() {
        let starts_word = c.is_whitespace()
            && words
                .last()
                .is_some_and(|w| w.chars().last().is_some_and(|l| !l.is_whitespace()));
        match words.last_mut() {
            Some(word) if !starts_word => word.push(c),
            _ => words.push(c.to_string()),
        }
    }
    // A single long word (e.g. `[huge:N]`'s x's) is cut by characters.
    if words.len() == 1 && text.chars().count() > MAX_DELTAS {
        let chars: Vec<char> = text.chars().collect();
        let size = chars.len().div_ceil(MAX_DELTAS);
        return chars.chunks(size).map(|c| c.iter().collect()).collect();
    }
    let per_piece = words.len().div_ceil(MAX_DELTAS).max(1);
    words.chunks(per_piece).map(|w| w.concat()).collect()
}
