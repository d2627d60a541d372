//! Tool approvals as the real CLI asks for them: a `can_use_tool` control request and its
//! answer, the Write and AskUserQuestion tools, and the host's `set_permission_mode`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::control::{answer_control, refuse_control_with};
use crate::conversation::Conversation;
use crate::input::Input;
use crate::permissions::{EDITS_ALLOWED, MODES};
use crate::protocol::emit;

/// What `[ask-write]` writes unless the host's `updatedInput` says otherwise.
pub(crate) const WRITE_CONTENT: &str = "hello from fake";
/// The real CLI's `tool_result` texts, word for word.
pub(crate) const INVALID_PERMISSION_RESULT: &str =
    "The canUseTool callback returned an invalid permission \
    result. Expected {behavior: 'allow', updatedInput?: object} or {behavior: 'deny', message: \
    string}. updatedPermissions may hold at most 4096 updates, rules and directories in all.";
pub(crate) const PERMISSION_STREAM_CLOSED: &str =
    "Tool permission request failed: AbortError: Tool permission stream closed before response received";
pub(crate) const TOOL_USE_REJECTED: &str =
    "The user doesn't want to proceed with this tool use. The tool \
    use was rejected (eg. if it was a file edit, the new_string was NOT written to the file). \
    STOP what you are doing and wait for the user to tell you how to proceed.";
pub(crate) const NO_ASK_TOOL: &str =
    "<tool_use_error>Error: No such tool available: AskUserQuestion. \
    AskUserQuestion is disabled for this session, in subagents as well as here.</tool_use_error>";

/// The host's decision on a `can_use_tool` request.
pub(crate) enum Verdict {
    /// Run the tool with this input (the original one with the host's `updatedInput` over it);
    /// `updates` is the answer's `updatedPermissions`.
    Allow { input: Value, updates: Value },
    /// Do not run it; the model gets this text as an error `tool_result`.
    Deny(String),
    /// An interrupt arrived first (already answered).
    Interrupted,
}

/// How a tool directive ended.
pub(crate) enum ToolEnd {
    /// The turn goes on; the reply says this.
    Said(String),
    /// The turn was interrupted while the tool waited for approval.
    Interrupted,
}

impl Conversation {
    /// Answers a host's `set_permission_mode` and switches to the mode, or refuses it with the
    /// real CLI's errors.
    pub(crate) fn set_permission_mode(&mut self, request_id: &Value, mode: &Value) {
        let mode = mode.as_str().unwrap_or_default();
        if !MODES.contains(&mode) {
            refuse_control_with(
                request_id,
                "Cannot set permission mode: must be one of acceptEdits, auto, \
                 bypassPermissions, default, dontAsk, plan",
                "invalid_mode",
            );
            return;
        }
        if mode == "bypassPermissions" && !self.permissions.can_bypass {
            refuse_control_with(
                request_id,
                "Cannot set permission mode to bypassPermissions because the session was not \
                 launched with --dangerously-skip-permissions",
                "bypass_not_launched",
            );
            return;
        }
        emit(&json!({
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": {"mode": mode}},
        }));
        self.switch_mode(mode);
    }

    /// Takes `mode` from now on, and says so with a `system/status` line as the real CLI does
    /// (only when the mode changes).
    pub(crate) fn switch_mode(&mut self, mode: &str) {
        if self.permissions.mode == mode {
            return;
        }
        self.permissions.mode = mode.to_owned();
        emit(&json!({
            "type": "system",
            "subtype": "status",
            "status": null,
            "permissionMode": mode,
            "uuid": Uuid::new_v4().to_string(),
            "session_id": self.session.id,
        }));
    }

    /// `[ask-write:FILE]`: a Write of `<cwd>/FILE`, run, refused or asked for as the mode and
    /// the prompt tool say.
    pub(crate) fn ask_write(&mut self, file: &str) -> ToolEnd {
        let path = Path::new(&self.session.cwd).join(file);
        let input = json!({"file_path": path, "content": WRITE_CONTENT});
        let tool_use_id = self.emit_tool_call("Write", &input);
        if EDITS_ALLOWED.contains(&self.permissions.mode.as_str()) {
            return ToolEnd::Said(self.write_file(&tool_use_id, &input));
        }
        if !self.permissions.ask_host {
            let message = format!(
                "Claude requested permissions to write to {}, but you haven't granted it yet.",
                path.display()
            );
            emit(&json!({
                "type": "system",
                "subtype": "permission_denied",
                "tool_name": "Write",
                "tool_use_id": tool_use_id,
                "message": message,
                "uuid": Uuid::new_v4().to_string(),
                "session_id": self.session.id,
            }));
            self.refuse_tool("Write", &tool_use_id, &input, &message);
            return ToolEnd::Said("refused: no permission prompt tool".to_owned());
        }
        let request = json!({
            "subtype": "can_use_tool",
            "tool_name": "Write",
            "display_name": "Write",
            "input": input,
            "description": file,
            "permission_suggestions": [
                {"type": "setMode", "mode": "acceptEdits", "destination": "session"},
            ],
            "tool_use_id": tool_use_id,
        });
        match self.ask_host(request, &input) {
            Verdict::Allow { input, updates } => {
                self.apply_permission_updates(&updates);
                ToolEnd::Said(self.write_file(&tool_use_id, &input))
            }
            Verdict::Deny(message) => {
                self.refuse_tool("Write", &tool_use_id, &input, &message);
                ToolEnd::Said(format!("denied: {message}"))
            }
            Verdict::Interrupted => {
                self.interrupted_tool("Write", &tool_use_id, &input);
                ToolEnd::Interrupted
            }
        }
    }

    /// `[ask-question]`: an AskUserQuestion, always asked for (it needs a person), and no tool at
    /// all without the prompt tool.
    pub(crate) fn ask_question(&mut self) -> ToolEnd {
        let input = json!({"questions": [{
            "question": "Which color?",
            "header": "Color",
            "options": [
                {"label": "Red", "description": "warm"},
                {"label": "Blue", "description": "cool"},
            ],
            "multiSelect": false,
        }]});
        let tool_use_id = self.emit_tool_call("AskUserQuestion", &input);
        if !self.permissions.ask_host {
            self.emit_tool_result(&tool_use_id, NO_ASK_TOOL, true);
            return ToolEnd::Said("refused: no permission prompt tool".to_owned());
        }
        let request = json!({
            "subtype": "can_use_tool",
            "tool_name": "AskUserQuestion",
            "display_name": "AskUserQuestion",
            "input": input,
            "tool_use_id": tool_use_id,
            "requires_user_interaction": true,
        });
        match self.ask_host(request, &input) {
            Verdict::Allow { input, .. } => {
                let answers: Vec<(String, String)> = input["answers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(question, answer)| {
                        let answer = answer
                            .as_str()
                            .map_or_else(|| answer.to_string(), str::to_owned);
                        (question.clone(), answer)
                    })
                    .collect();
                if answers.is_empty() {
                    self.emit_tool_result(
                        &tool_use_id,
                        "The user did not answer the questions.",
                        false,
                    );
                    return ToolEnd::Said("unanswered".to_owned());
                }
                let quoted: Vec<String> = answers
                    .iter()
                    .map(|(question, answer)| format!("\"{question}\"=\"{answer}\""))
                    .collect();
                let told = format!(
                    "Your questions have been answered: {}. You can now continue with these \
                     answers in mind.",
                    quoted.join(", ")
                );
                self.emit_tool_result(&tool_use_id, &told, false);
                let plain: Vec<String> = answers
                    .iter()
                    .map(|(question, answer)| format!("{question}={answer}"))
                    .collect();
                ToolEnd::Said(format!("answered: {}", plain.join(", ")))
            }
            Verdict::Deny(message) => {
                self.refuse_tool("AskUserQuestion", &tool_use_id, &input, &message);
                ToolEnd::Said(format!("denied: {message}"))
            }
            Verdict::Interrupted => {
                self.interrupted_tool("AskUserQuestion", &tool_use_id, &input);
                ToolEnd::Interrupted
            }
        }
    }

    /// Sends a `can_use_tool` control request and waits, with no time limit, for the host's
    /// answer to it, while still serving other inputs (user lines are queued).
    pub(crate) fn ask_host(&mut self, request: Value, input: &Value) -> Verdict {
        let request_id = Uuid::new_v4().to_string();
        emit(&json!({"type": "control_request", "request_id": request_id, "request": request}));
        loop {
            if self.eof {
                return Verdict::Deny(PERMISSION_STREAM_CLOSED.to_owned());
            }
            match self.rx.recv().unwrap_or(Input::Eof) {
                Input::ControlResponse(response) if response["request_id"] == request_id => {
                    return verdict(&response, input);
                }
                Input::Interrupt {
                    request_id: interrupt,
                } => {
                    emit(&json!({"type": "control_cancel_request", "request_id": request_id}));
                    answer_control(&interrupt);
                    return Verdict::Interrupted;
                }
                input => self.handle_side_input(input),
            }
        }
    }

    /// Applies the `setMode` entries of an answer's `updatedPermissions`.
    pub(crate) fn apply_permission_updates(&mut self, updates: &Value) {
        let modes = updates
            .as_array()
            .into_iter()
            .flatten()
            .filter(|update| update["type"] == "setMode")
            .filter_map(|update| update["mode"].as_str())
            .filter(|mode| MODES.contains(mode));
        for mode in modes.map(str::to_owned).collect::<Vec<_>>() {
            self.switch_mode(&mode);
        }
    }

    /// Runs a Write: creates its file, tells the model, and returns what the reply says.
    pub(crate) fn write_file(&mut self, tool_use_id: &str, input: &Value) -> String {
        let path = PathBuf::from(input["file_path"].as_str().unwrap_or_default());
        let content = input["content"].as_str().unwrap_or_default();
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, content));
        let shown = path
            .strip_prefix(&self.session.cwd)
            .unwrap_or(&path)
            .display()
            .to_string();
        match written {
            Ok(()) => {
                let told = format!(
                    "File created successfully at: {} (file state is current in your context — \
                     no need to Read it back)",
                    path.display()
                );
                self.emit_tool_result(tool_use_id, &told, false);
                format!("wrote {shown}")
            }
            Err(err) => {
                let told = format!("<tool_use_error>{err}</tool_use_error>");
                self.emit_tool_result(tool_use_id, &told, true);
                format!("write failed: {shown}: {err}")
            }
        }
    }

    /// A tool that does not run: the model gets `message` as an error, and the `result` lists it.
    pub(crate) fn refuse_tool(
        &mut self,
        name: &str,
        tool_use_id: &str,
        input: &Value,
        message: &str,
    ) {
        self.emit_tool_result(tool_use_id, message, true);
        self.denials
            .push(json!({"tool_name": name, "tool_use_id": tool_use_id, "tool_input": input}));
    }

    /// The lines the real CLI prints after an interrupt cancelled a pending approval.
    pub(crate) fn interrupted_tool(&mut self, name: &str, tool_use_id: &str, input: &Value) {
        self.refuse_tool(name, tool_use_id, input, TOOL_USE_REJECTED);
        let text = json!([{"type": "text", "text": "[Request interrupted by user for tool use]"}]);
        emit(&self.user_line(text));
    }
}

/// Reads the host's answer to a `can_use_tool` request as the real CLI does. `input` is the
/// tool's original input, which `updatedInput` overrides field by field.
pub(crate) fn verdict(response: &Value, input: &Value) -> Verdict {
    if response["subtype"] == "error" {
        let error = response["error"].as_str().unwrap_or_default();
        return Verdict::Deny(format!("Tool permission request failed: Error: {error}"));
    }
    let decision = &response["response"];
    match decision["behavior"].as_str() {
        Some("allow") => {
            let mut input = input.clone();
            if let (Some(fields), Some(updated)) =
                (input.as_object_mut(), decision["updatedInput"].as_object())
            {
                fields.extend(updated.clone());
            }
            Verdict::Allow {
                input,
                updates: decision["updatedPermissions"].clone(),
            }
        }
        Some("deny") => match decision["message"].as_str() {
            Some(message) => Verdict::Deny(message.to_owned()),
            None => Verdict::Deny(INVALID_PERMISSION_RESULT.to_owned()),
        },
        _ => Verdict::Deny(INVALID_PERMISSION_RESULT.to_owned()),
    }
}
