//! The conversation's transcript on disk, written line by line as the real CLI writes it,
//! and the start flags checked against it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::args::{Args, Start};
use crate::protocol::{emit, fatal, usage, user_text, MODEL, VERSION};

/// The conversation's identity and its stored history.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) cwd: String,
    pub(crate) transcript: PathBuf,
    /// Every user text of the conversation so far, oldest first.
    pub(crate) history: Vec<String>,
    /// The `uuid` of the last line written to the transcript (the next one's `parentUuid`).
    pub(crate) last_uuid: Option<String>,
}

/// Checks the start flags against the transcript on disk, as the real CLI does.
/// On refusal, prints the CLI's error and returns the exit code.
pub(crate) fn open_session(args: &Args, cwd: &str) -> Result<Session, i32> {
    let (id, resume) = match &args.start {
        Start::New(id) => (id.clone(), false),
        Start::Resume(id) => (id.clone(), true),
        Start::Fresh => (Uuid::new_v4().to_string(), false),
    };
    if !resume && Uuid::parse_str(&id).is_err() {
        eprintln!("Error: Invalid session ID. Must be a valid UUID.");
        return Err(1);
    }
    let transcript = transcript_path(cwd, &id);
    let exists = transcript.is_file();
    if !resume && exists {
        eprintln!("Error: Session ID {id} is already in use.");
        return Err(1);
    }
    if resume && !exists {
        let message = format!("No conversation found with session ID: {id}");
        eprintln!("{message}");
        emit(&json!({
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": true,
            "result": message,
            "session_id": id,
            "num_turns": 0,
            "duration_ms": 0,
            "duration_api_ms": 0,
            "total_cost_usd": 0,
            "usage": usage(0, 0),
            "stop_reason": null,
            "uuid": Uuid::new_v4().to_string(),
        }));
        return Err(1);
    }
    let history = if exists {
        read_history(&transcript)
    } else {
        Vec::new()
    };
    Ok(Session {
        id,
        cwd: cwd.to_owned(),
        transcript,
        history,
        last_uuid: None,
    })
}

/// `<config>/projects/<cwd, each UTF-16 unit not an ASCII letter or digit as '-', long
/// names cut and hashed>/<id>.jsonl`, the real CLI's rule (see `tether::agent::transcript`).
pub(crate) fn transcript_path(cwd: &str, id: &str) -> PathBuf {
    let config = match std::env::var_os("FAKE_CLAUDE_CONFIG_DIR")
        .or_else(|| std::env::var_os("CLAUDE_CONFIG_DIR"))
    {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".claude"),
    };
    tether::agent::transcript::path(&config, Path::new(cwd), id)
}

/// The user texts recorded in a transcript (the prompts, not tools' results); unreadable
/// lines are skipped.
pub(crate) fn read_history(transcript: &Path) -> Vec<String> {
    let Ok(content) = fs::read_to_string(transcript) else {
        return Vec::new();
    };
    content
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["type"] == "user")
        .filter(|entry| matches!(entry["promptSource"].as_str(), Some("sdk" | "typed")))
        .map(|entry| match &entry["message"]["content"] {
            Value::String(text) => text.clone(),
            content => user_text(content),
        })
        .collect()
}

impl Session {
    /// Appends a user line as the real CLI (2.1.329) writes it: a prompt read from stdin
    /// (`content` a list of blocks, `promptSource` `sdk`), one typed in the terminal (a plain
    /// string, `typed`), or a tool's result (no `promptSource`).
    pub(crate) fn record_user(&mut self, content: Value, source: Option<&str>) {
        let mut line = self.transcript_line("user", json!({"role": "user", "content": content}));
        if let Some(source) = source {
            line["promptSource"] = json!(source);
            line["promptId"] = json!(Uuid::new_v4().to_string());
        }
        self.append(&line);
    }

    /// Appends one content block of model message `id`, with the message's stop reason, as
    /// the real CLI writes each block of a message it received.
    pub(crate) fn record_assistant(&mut self, id: &str, block: &Value, stop_reason: &str) {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": MODEL,
            "content": [block], "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage(10, 5),
        });
        let line = self.transcript_line("assistant", message);
        self.append(&line);
    }

    pub(crate) fn transcript_line(&mut self, kind: &str, message: Value) -> Value {
        let uuid = Uuid::new_v4().to_string();
        let parent = self.last_uuid.replace(uuid.clone());
        json!({
            "parentUuid": parent, "isSidechain": false, "type": kind, "message": message,
            "uuid": uuid,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "userType": "external", "entrypoint": "sdk-cli", "cwd": self.cwd,
            "sessionId": self.id, "version": VERSION,
        })
    }

    pub(crate) fn append(&self, line: &Value) {
        let line = line.to_string() + "\n";
        let written = self
            .transcript
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.transcript)
            })
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            fatal(&format!("Error: cannot write the transcript: {err}"), 1);
        }
    }
}
