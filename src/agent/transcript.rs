//! Claude Code's transcript of a conversation (`<config>/projects/<folder>/<id>.jsonl`), read
//! at a start after a crash to tell what became of a turn tether could not see end: the CLI
//! appends the user's message when it reads it and the model's messages as they come, so
//! the file says whether the agent had the message and whether it finished its reply.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;

/// The longest folder name the CLI uses as is; a longer one is cut and given a hash.
const MAX_FOLDER_CHARS: usize = 200;

/// Where the CLI keeps the transcript of conversation `id` run in `cwd`, under its config
/// folder: each UTF-16 unit of the path that is not an ASCII letter or digit becomes `-`,
/// and a name over 200 units is cut there and ends with `-` and a base-36 hash of the path.
pub fn path(config: &Path, cwd: &Path, id: &str) -> PathBuf {
    config
        .join("projects")
        .join(folder(&cwd.to_string_lossy()))
        .join(format!("{id}.jsonl"))
}

fn folder(cwd: &str) -> String {
    let units: Vec<u16> = cwd.encode_utf16().collect();
    let name: String = units
        .iter()
        .map(|&u| match char::from_u32(u32::from(u)) {
            Some(c) if c.is_ascii_alphanumeric() => c,
            _ => '-',
        })
        .collect();
    if name.len() <= MAX_FOLDER_CHARS {
        return name;
    }
    let hash = java_hash(&units).unsigned_abs();
    format!("{}-{}", &name[..MAX_FOLDER_CHARS], base36(u64::from(hash)))
}

/// The hash Java gives strings (h = 31·h + unit, wrapping), as the CLI computes it.
fn java_hash(units: &[u16]) -> i32 {
    units
        .iter()
        .fold(0i32, |h, &u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// What a transcript says of one user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnRecord {
    /// The message is not in it: the CLI never read it.
    NotReceived,
    /// The CLI read it but did not finish its reply.
    Received,
    /// The CLI read it and the model's last message of the turn ended it: its text.
    Finished { reply: String },
}

/// The fields of a transcript line that are read; the rest is skipped.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<String>,
    timestamp: Option<String>,
    #[serde(rename = "promptSource")]
    prompt_source: Option<String>,
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    id: Option<String>,
    content: Option<Value>,
    stop_reason: Option<String>,
}

/// Reads `transcript` for the user message `text` sent at `since_ms` (or later): the last
/// user line with that text, written no earlier, and what the model wrote after it. A
/// missing file is [`TurnRecord::NotReceived`].
pub fn find_turn(transcript: &Path, text: &str, since_ms: i64) -> io::Result<TurnRecord> {
    let file = match File::open(transcript) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TurnRecord::NotReceived),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut record = TurnRecord::NotReceived;
    // The model's message being read since the user line, and whether it ended the turn.
    let mut reply: Option<(Option<String>, String)> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        // Only user and assistant lines matter; the rest (some tens of KB each) is not parsed.
        let is = |kind: &[u8]| buf.windows(kind.len()).any(|w| w == kind);
        if !is(br#""type":"user""#) && !is(br#""type":"assistant""#) {
            continue;
        }
        let Ok(line) = serde_json::from_slice::<Line>(&buf) else {
            continue; // a line cut short by the crash, or not ours to read
        };
        let Some(message) = line.message else {
            continue;
        };
        match line.kind.as_deref() {
            Some("user") => {
                let prompt = !matches!(line.prompt_source.as_deref(), Some("system"));
                if prompt
                    && user_text(message.content.as_ref()).as_deref() == Some(text)
                    && written_since(line.timestamp.as_deref(), since_ms)
                {
                    record = TurnRecord::Received;
                    reply = None;
                } else if record != TurnRecord::NotReceived {
                    // A tool's result or an interrupt: the turn goes on from here, or not.
                    record = TurnRecord::Received;
                    reply = None;
                }
            }
            Some("assistant") if record != TurnRecord::NotReceived => {
                let texts = block_texts(message.content.as_ref());
                match &mut reply {
                    Some((id, so_far)) if *id == message.id && message.id.is_some() => {
                        so_far.push_str(&texts)
                    }
                    _ => reply = Some((message.id.clone(), texts)),
                }
                let ended = matches!(
                    message.stop_reason.as_deref(),
                    Some("end_turn" | "stop_sequence" | "max_tokens")
                );
                record = match (&reply, ended) {
                    (Some((_, so_far)), true) => TurnRecord::Finished {
                        reply: so_far.clone(),
                    },
                    _ => TurnRecord::Received,
                };
            }
            _ => {}
        }
    }
    Ok(record)
}

/// A user line's text: its content as a string (the terminal CLI) or its text blocks
/// (stream-json); None for a tool's result.
fn user_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) if blocks.iter().all(|b| b["type"] == "text") => {
            Some(block_texts(Some(&Value::Array(blocks.clone()))))
        }
        _ => None,
    }
}

/// The text blocks of a message's content, joined.
fn block_texts(content: Option<&Value>) -> String {
    let Some(Value::Array(blocks)) = content else {
        return String::new();
    };
    blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect()
}

/// Whether an RFC 3339 `timestamp` is at or after `since_ms`; a line without one counts.
fn written_since(timestamp: Option<&str>, since_ms: i64) -> bool {
    match timestamp.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(at) => at.timestamp_millis() >= since_ms,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_follow_the_cli() {
        assert_eq!(folder("/w/my.proj v2_x"), "-w-my-proj-v2-x");
        assert_eq!(folder("/w/e😀x"), "-w-e--x", "two UTF-16 units, two dashes");
        assert_eq!(folder("/w/ünï"), "-w--n-");
        let long = format!("/w/{}/{}", "a".repeat(120), "b".repeat(120));
        let units: Vec<u16> = long.encode_utf16().collect();
        let hash = base36(u64::from(java_hash(&units).unsigned_abs()));
        let kept = format!("-w-{}-{}", "a".repeat(120), "b".repeat(76)); // 200 units
        assert_eq!(folder(&long), format!("{kept}-{hash}"));
        let hello: Vec<u16> = "hello".encode_utf16().collect();
        assert_eq!(java_hash(&hello), 99_162_322, "Java's \"hello\".hashCode()");
        assert_eq!(base36(99_162_322), "1n1e4y");
    }

    fn write(lines: &[Value]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            use std::io::Write;
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    fn user(text: &str, at: &str) -> Value {
        serde_json::json!({"type": "user", "promptSource": "sdk", "timestamp": at,
            "message": {"role": "user", "content": [{"type": "text", "text": text}]}})
    }

    fn assistant(id: &str, content: Value, stop: Option<&str>) -> Value {
        serde_json::json!({"type": "assistant", "timestamp": "2026-12-04T03:00:05.000Z",
            "message": {"id": id, "role": "assistant", "content": content, "stop_reason": stop}})
    }

    const AT: &str = "2026-12-04T03:00:01.000Z";
    const SENT_MS: i64 = 1_796_353_200_500; // 2026-12-04T03:00:00.500Z

    #[test]
    fn a_finished_turn_gives_its_last_message_text() {
        let f = write(&[
            user("hi", AT),
            assistant(
                "m1",
                serde_json::json!([{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]),
                Some("tool_use"),
            ),
            serde_json::json!({"type": "user", "message": {"role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}}),
            assistant(
                "m2",
                serde_json::json!([{"type": "text", "text": "done "}]),
                Some("end_turn"),
            ),
            assistant(
                "m2",
                serde_json::json!([{"type": "text", "text": "now"}]),
                Some("end_turn"),
            ),
            serde_json::json!({"type": "last-prompt", "lastPrompt": "hi"}),
        ]);
        assert_eq!(
            find_turn(f.path(), "hi", SENT_MS).unwrap(),
            TurnRecord::Finished {
                reply: "done now".into()
            }
        );
    }

    #[test]
    fn a_turn_cut_off_was_received_and_an_old_copy_does_not_count() {
        let f = write(&[
            user("hi", AT),
            assistant(
                "m1",
                serde_json::json!([{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]),
                Some("tool_use"),
            ),
        ]);
        assert_eq!(
            find_turn(f.path(), "hi", SENT_MS).unwrap(),
            TurnRecord::Received
        );
        assert_eq!(
            find_turn(f.path(), "other", SENT_MS).unwrap(),
            TurnRecord::NotReceived
        );
        // Sent after the line was written: that line is an earlier turn with the same text.
        assert_eq!(
            find_turn(f.path(), "hi", SENT_MS + 60_000).unwrap(),
            TurnRecord::NotReceived
        );
        let missing = f.path().with_extension("gone");
        assert_eq!(
            find_turn(&missing, "hi", 0).unwrap(),
            TurnRecord::NotReceived
        );
    }
}
