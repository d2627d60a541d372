//! One turn: the user line recorded, the directives played, the reply and its `result`.

use std::process;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::approvals::ToolEnd;
use crate::args::env_u64;
use crate::conversation::{Conversation, Waited};
use crate::directives::{lorem, Ask, Directives};
use crate::faults::{allocate, hang_forever, spawn_tool};
use crate::protocol::{emit, emit_raw, fatal};

/// Time between two `api_retry` lines of `[api-retry:N]`.
pub(crate) const API_RETRY_GAP: Duration = Duration::from_millis(400);

impl Conversation {
    pub(crate) fn turn(&mut self, text: &str) {
        let started = Instant::now();
        let directives = Directives::parse(text);
        if directives.early_exit {
            fatal("fake early exit, before the transcript", 1);
        }
        self.turns += 1;
        self.denials.clear();
        self.session
            .record_user(json!([{"type": "text", "text": text}]), Some("sdk"));
        self.session.history.push(text.to_owned());

        emit(&self.init_line());
        if directives.stderr {
            eprintln!("warning: something on stderr");
        }
        if directives.hang {
            hang_forever();
        }
        if directives.garbage {
            emit_raw("this is not json {{{");
        }
        if directives.bad_type {
            emit(&json!({"type": "bad\ntype here", "session_id": self.session.id}));
        }
        if directives.spawn_tool {
            self.tool = Some(spawn_tool());
        }
        if let Some(mib) = directives.alloc_mib {
            allocate(mib);
        }
        if directives.unknown {
            emit(
                &json!({"type": "mystery_event", "foo": {"bar": 1}, "session_id": self.session.id}),
            );
        }
        if directives.tool {
            self.emit_tool_use();
        }
        for attempt in 1..=directives.api_retries.unwrap_or(0) {
            if let Waited::Interrupted = self.wait(API_RETRY_GAP) {
                let interrupted = self.result_line("error_during_execution", true, "", started);
                self.finish(&interrupted);
                return;
            }
            emit(&json!({
                "type": "system", "subtype": "api_retry", "attempt": attempt,
                "max_retries": 10, "retry_delay_ms": API_RETRY_GAP.as_millis() as u64,
                "error_status": 529, "error": "overloaded", "session_id": self.session.id,
            }));
        }
        if let Some(ms) = directives.slow_ms {
            if let Waited::Interrupted = self.wait(Duration::from_millis(ms)) {
                let interrupted = self.result_line("error_during_execution", true, "", started);
                self.finish(&interrupted);
                return;
            }
        }
        if directives.crash {
            self.say(json!([{"type": "text", "text": "partial"}]));
            fatal("fake crash", 3);
        }
        let mut said = Vec::new();
        for ask in &directives.asks {
            let end = match ask {
                Ask::Write(file) => self.ask_write(file),
                Ask::Question => self.ask_question(),
            };
            match end {
                ToolEnd::Said(text) => said.push(text),
                ToolEnd::Interrupted => {
                    let interrupted = self.result_line("error_during_execution", true, "", started);
                    self.finish(&interrupted);
                    return;
                }
            }
        }

        let failure = if directives.not_logged_in || env_u64("FAKE_CLAUDE_NOT_LOGGED_IN") == Some(1)
        {
            Some("Not logged in · Please run /login")
        } else if directives.error {
            Some("API Error: 529 overloaded")
        } else {
            None
        };
        let result = match failure {
            Some(message) => Some(self.result_line("success", true, message, started)),
            None => self.reply(text, &directives, &said, started),
        };
        // Interrupted while the reply streamed: it ends there, as an interrupted turn.
        let result =
            result.unwrap_or_else(|| self.result_line("error_during_execution", true, "", started));
        self.finish(&result);
        if directives.exit_after {
            process::exit(0);
        }
    }

    /// Prints the assistant line, records the reply and builds the successful result. `said`
    /// is what the tool directives made the model say; when there is any, it is the reply.
    pub(crate) fn reply(
        &mut self,
        text: &str,
        directives: &Directives,
        said: &[String],
        started: Instant,
    ) -> Option<Value> {
        let mut reply = match directives.bigreply {
            Some(len) => lorem(len),
            None if !said.is_empty() => said.join(" | "),
            None => format!(
                "echo: {text} | history: {}",
                self.session.history.join(" / ")
            ),
        };
        if let Some(mib) = directives.alloc_mib {
            reply = format!("allocated {mib} MiB | {reply}");
        }
        if let Some(pid) = self.tool.take() {
            reply = format!("tool pid {pid} | {reply}");
        }
        let (shown, result) = match directives.huge {
            Some(len) => ("x".repeat(len), "huge done".to_owned()),
            None => (reply.clone(), reply),
        };
        if let Waited::Interrupted = self.say(json!([{"type": "text", "text": shown}])) {
            return None;
        }
        if directives.stall_result {
            hang_forever(); // the reply is in the transcript; its `result` never comes
        }
        Some(self.result_line("success", false, &result, started))
    }

    pub(crate) fn finish(&mut self, result: &Value) {
        self.last_was_error = result["is_error"] == true;
        emit(result);
    }

    pub(crate) fn emit_tool_use(&mut self) {
        let tool_use = json!([{
            "type": "tool_use",
            "id": "toolu_1",
            "name": "Bash",
            "input": {"command": "ls"},
        }]);
        self.say(tool_use);
        emit(&json!({
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "file.txt"}],
            },
            "session_id": self.session.id,
        }));
    }
}
