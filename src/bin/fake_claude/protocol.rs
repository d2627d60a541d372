//! The lines this fake writes: one JSON object per stdout line, flushed at once, and the
//! parts every line shares (model, version, usage), and the fatal error on stderr.

use std::io::{self, Write};
use std::process;

use serde_json::{json, Value};

pub(crate) const MODEL: &str = "fake-model";
pub(crate) const VERSION: &str = "2.1.329-fake";

/// The text of a user message whose content is a string or a list of content blocks.
pub(crate) fn user_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

pub(crate) fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({"input_tokens": input_tokens, "output_tokens": output_tokens})
}

pub(crate) fn emit(value: &Value) {
    emit_raw(&value.to_string());
}

/// Writes one line to stdout and flushes it; a closed stdout ends the process, as nobody is
/// left to talk to.
pub(crate) fn emit_raw(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        process::exit(1);
    }
}

/// Writes `message` to stderr and exits with `code`.
pub(crate) fn fatal(message: &str, code: i32) -> ! {
    eprintln!("{message}");
    process::exit(code);
}
