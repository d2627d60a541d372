//! Stdin, read on its own thread and classified line by line, and the control log tests read.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Write};
use std::process;
use std::sync::mpsc::{self, Receiver};
use std::thread;

use serde_json::{json, Value};

use crate::protocol::user_text;

/// One stdin line, already classified.
pub(crate) enum Input {
    User(String),
    Interrupt {
        request_id: Value,
    },
    SetPermissionMode {
        request_id: Value,
        mode: Value,
    },
    /// The host's answer to a control request of this process: the line's `response`.
    ControlResponse(Value),
    OtherControl {
        request_id: Value,
        subtype: String,
    },
    /// Valid JSON the CLI would accept but this fake has no use for.
    Ignored,
    /// Not JSON: fatal, as in the real CLI.
    Invalid,
    Eof,
}

/// Reads stdin on its own thread so a running turn can still see interrupts.
pub(crate) fn spawn_stdin_reader() -> Receiver<Input> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let input = match line {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => classify(&line),
                Err(err) if err.kind() == io::ErrorKind::InvalidData => Input::Invalid,
                Err(_) => break,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });
    rx
}

pub(crate) fn classify(line: &str) -> Input {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return Input::Invalid;
    };
    match value["type"].as_str() {
        Some("user") => Input::User(user_text(&value["message"]["content"])),
        Some("control_request") => {
            let request_id = value["request_id"].clone();
            match value["request"]["subtype"].as_str() {
                Some("interrupt") => Input::Interrupt { request_id },
                Some("set_permission_mode") => Input::SetPermissionMode {
                    request_id,
                    mode: value["request"]["mode"].clone(),
                },
                other => Input::OtherControl {
                    request_id,
                    subtype: other.unwrap_or_default().to_owned(),
                },
            }
        }
        Some("control_response") => {
            log_control_response(&value);
            Input::ControlResponse(value["response"].clone())
        }
        _ => Input::Ignored,
    }
}

/// Appends `{"pid":…,"control_response":<line>}` to `$FAKE_CLAUDE_CONTROL_LOG`, if set.
pub(crate) fn log_control_response(line: &Value) {
    let Some(path) = std::env::var_os("FAKE_CLAUDE_CONTROL_LOG") else {
        return;
    };
    let entry = json!({"pid": process::id(), "control_response": line}).to_string() + "\n";
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(entry.as_bytes()));
    if let Err(err) = written {
        eprintln!("fake-claude: cannot write the control log: {err}");
    }
}
