//! `fake-claude`: a stand-in for the Claude Code CLI, used by tether's integration tests.
//!
//! It speaks the CLI's persistent stream-json protocol (see `claude-protocol.md`): one JSON
//! object per line on stdin and stdout, a `system/init` + `assistant` + `result` triple per turn,
//! with `--include-partial-messages` each model message streamed first as the real CLI prints
//! it (a `system/status` "requesting", then `stream_event` lines: `message_start`,
//! `content_block_start`, the text in `text_delta`s a few words at a time, paced, the block's
//! whole `assistant` line, `content_block_stop`, `message_delta`, `message_stop`),
//! transcripts under `<config>/projects/<mangled cwd>/<id>.jsonl` (lines shaped as the real
//! CLI's: the user line as the message is read, each block of a model message as it comes,
//! tools' results), `--session-id` refusing an
//! existing transcript, `--resume` refusing a missing one, interrupts through
//! `control_request`, and tool approvals: with `--permission-prompt-tool stdio` a tool that
//! needs approval is asked for with a `can_use_tool` control request and waits, with no time
//! limit, for the host's `control_response`; a host may change `--permission-mode` with a
//! `set_permission_mode` control request.
//!
//! The default reply echoes the message and every user message of the conversation so far, so a
//! test can prove context survived turns, processes and restarts. Square-bracket directives in a
//! message script other behaviours:
//!
//! | directive      | effect                                                                  |
//! | -------------- | ----------------------------------------------------------------------- |
//! | `[slow:MS]`    | wait MS milliseconds before replying (an interrupt ends the wait)       |
//! | `[crash]`      | print `init` and a partial `assistant` line, then exit 3 (no `result`)  |
//! | `[hang]`       | print `init`, then block forever (only a signal ends the process)       |
//! | `[garbage]`    | print a line that is not JSON before the reply                          |
//! | `[huge:N]`     | the `assistant` text is N bytes of `x`; the `result` says `huge done`   |
//! | `[bigreply:N]` | the reply is N bytes of lorem ipsum                                     |
//! | `[notloggedin]`| end with the "Not logged in" error `result`                             |
//! | `[error]`      | end with an `API Error: 529 overloaded` error `result`                  |
//! | `[tool]`       | print a `tool_use` assistant line and a `tool_result` user line first   |
//! | `[unknown]`    | print an event of an unknown type first                                 |
//! | `[exit-after]` | exit 0 right after the `result` line                                    |
//! | `[stderr]`     | write a warning line to stderr                                          |
//! | `[early-exit]` | exit 1 on reading the message, before it reaches the transcript         |
//! | `[spawn-tool]` | start `sleep 300` in the group (a tool); stderr and the reply name its pid|
//! | `[badtype]`    | print an event whose type holds a newline and a space first             |
//! | `[api-retry:N]`| print N `system/api_retry` lines 400 ms apart (as the CLI does while the API fails), then reply |
//! | `[alloc:MB]`   | hold MB MiB resident until exit; the reply starts `allocated MB MiB`    |
//! | `[stall-result]` | write the reply (stdout and transcript), then block before the `result` line |
//! | `[ask-write:FILE]` | a `tool_use` of Write for `<cwd>/FILE`; approval as below; the reply is `wrote FILE` or `denied: MESSAGE` |
//! | `[ask-question]`   | a `tool_use` of AskUserQuestion (`Which color?`, Red or Blue), asked whatever the mode; the reply is `answered: Which color?=LABEL` or `denied: MESSAGE` |
//!
//! Approvals, as the real CLI (2.1.329) does them. Mode `acceptEdits` or `bypassPermissions`:
//! Write runs at once. Otherwise, without `--permission-prompt-tool stdio`, it is refused
//! (a `system/permission_denied` line, an error `tool_result`, the reply
//! `refused: no permission prompt tool`, an entry in the result's `permission_denials`; there,
//! AskUserQuestion is no tool at all). With it, a `can_use_tool` control request, then a wait
//! that only the answer, an interrupt or the end of stdin ends:
//! - `{"behavior":"allow","updatedInput":{…}}` runs the tool with `updatedInput` over the
//!   original input; a `setMode` entry in `updatedPermissions` switches the mode (a
//!   `system/status` line), so a later Write in this process is not asked for.
//! - `{"behavior":"deny","message":M}` gives the model an error `tool_result` M; a deny without a
//!   message (or any other answer) gives it the CLI's "invalid permission result" text instead,
//!   and a `control_response` of subtype `error` gives it `Tool permission request failed: …`.
//!   Either way the turn goes on and ends with a successful `result`.
//! - An interrupt is answered with a `control_cancel_request` for the pending request, then the
//!   interrupt's `control_response`, and the turn ends interrupted.
//! - End of stdin: the tool fails (`Tool permission request failed: AbortError: …`), the turn
//!   ends, then the process exits.
//!
//! User lines that arrive during a turn are queued and run as turns of their own afterwards. (The
//! real CLI, seen while an approval was pending, folds such a line into the running turn as a
//! note to the model, with no `result` of its own.)
//!
//! Without `-p` it is the interactive CLI as a terminal shows it (see [`interactive`]): a
//! `❯ ` prompt, each typed line answered and kept in the same transcript.
//!
//! Environment: `FAKE_CLAUDE_LOG` (append one JSON line per invocation with pid, argv and cwd),
//! `FAKE_CLAUDE_DELTA_MS` (the pause between two text deltas, default 10 ms; 0 streams at once),
//! `FAKE_CLAUDE_NOT_LOGGED_IN=1` (every turn fails as not logged in),
//! `FAKE_CLAUDE_START_DELAY_MS` (sleep before reading stdin, as the real CLI takes 0.3 to
//! 0.5 s to start; the transcript is written only once the first message is read),
//! `FAKE_CLAUDE_CONFIG_DIR` (where this fake keeps transcripts, over `CLAUDE_CONFIG_DIR`, so a
//! test can make tether's view of the transcripts differ from the CLI's), `CLAUDE_CONFIG_DIR`
//! / `HOME` (where transcripts live), `FAKE_CLAUDE_CONTROL_LOG` (append
//! `{"pid":…,"control_response":<the line>}` for every `control_response` read from stdin, so a
//! test can see how the host answered).

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process;
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

const MODEL: &str = "fake-model";
const VERSION: &str = "2.1.329-fake";
const LOREM: &str = "lorem ipsum dolor sit amet ";
const COST_PER_TURN_MILLI_USD: u64 = 1;
/// The pause between two `text_delta`s unless `FAKE_CLAUDE_DELTA_MS` says otherwise: the
/// real API streams a reply a few tokens at a time, tens of milliseconds apart.
const DELTA_GAP_MS: u64 = 10;
/// Most `text_delta`s of one text block: a longer text comes in bigger pieces, so that a
/// huge reply does not take minutes.
const MAX_DELTAS: usize = 24;
/// Time between two `api_retry` lines of `[api-retry:N]`.
const API_RETRY_GAP: Duration = Duration::from_millis(400);

/// What `--permission-mode` accepts: the real CLI's list, and `default`.
const START_MODES: &[&str] = &[
    "default",
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "manual",
    "dontAsk",
    "plan",
];
/// What a host's `set_permission_mode` may choose (`bypassPermissions` only in a process
/// started in that mode, or with `--dangerously-skip-permissions` or
/// `--allow-dangerously-skip-permissions`; else the error `bypass_not_launched`).
const MODES: &[&str] = &[
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "default",
    "dontAsk",
    "plan",
];
/// Modes in which a file edit runs without asking.
const EDITS_ALLOWED: &[&str] = &["acceptEdits", "bypassPermissions"];
/// What `[ask-write]` writes unless the host's `updatedInput` says otherwise.
const WRITE_CONTENT: &str = "hello from fake";
/// The real CLI's `tool_result` texts, word for word.
const INVALID_PERMISSION_RESULT: &str = "The canUseTool callback returned an invalid permission \
    result. Expected {behavior: 'allow', updatedInput?: object} or {behavior: 'deny', message: \
    string}. updatedPermissions may hold at most 4096 updates, rules and directories in all.";
const PERMISSION_STREAM_CLOSED: &str =
    "Tool permission request failed: AbortError: Tool permission stream closed before response received";
const TOOL_USE_REJECTED: &str = "The user doesn't want to proceed with this tool use. The tool \
    use was rejected (eg. if it was a file edit, the new_string was NOT written to the file). \
    STOP what you are doing and wait for the user to tell you how to proceed.";
const NO_ASK_TOOL: &str = "<tool_use_error>Error: No such tool available: AskUserQuestion. \
    AskUserQuestion is disabled for this session, in subagents as well as here.</tool_use_error>";

fn main() {
    if std::env::args().any(|a| a == "--version" || a == "-v") {
        println!("{VERSION} (Claude Code)");
        return;
    }
    let args = Args::parse(std::env::args().skip(1));
    if !START_MODES.contains(&args.permission_mode.as_str()) {
        fatal(
            &format!(
                "error: option '--permission-mode <mode>' argument '{}' is invalid. Allowed \
                 choices are acceptEdits, auto, bypassPermissions, manual, dontAsk, plan.",
                args.permission_mode
            ),
            1,
        );
    }
    let cwd = match std::env::current_dir() {
        Ok(dir) => dir.to_string_lossy().into_owned(),
        Err(err) => fatal(
            &format!("Error: cannot read the working directory: {err}"),
            1,
        ),
    };
    log_invocation(&cwd);

    let session = match open_session(&args, &cwd) {
        Ok(session) => session,
        Err(code) => process::exit(code),
    };

    if let Some(ms) = env_u64("FAKE_CLAUDE_START_DELAY_MS") {
        thread::sleep(Duration::from_millis(ms));
    }
    if !args.print {
        process::exit(interactive(session));
    }
    let rx = spawn_stdin_reader();
    let permissions = Permissions::from_args(&args);
    let stream = args
        .partial_messages
        .then(|| Duration::from_millis(env_u64("FAKE_CLAUDE_DELTA_MS").unwrap_or(DELTA_GAP_MS)));
    let code = Conversation::new(session, rx, permissions, stream).run();
    process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// How the process was asked to start its conversation.
enum Start {
    /// `--session-id ID`: a new conversation with a caller-chosen id.
    New(String),
    /// `--resume ID`: an existing conversation.
    Resume(String),
    /// Neither flag: a new conversation with a fresh id.
    Fresh,
}

struct Args {
    start: Start,
    /// `--permission-prompt-tool`: only `stdio` (ask the host) means anything here.
    permission_prompt_tool: Option<String>,
    /// `--permission-mode`, `default` when absent.
    permission_mode: String,
    /// `--dangerously-skip-permissions`: starts in `bypassPermissions` and lets a host choose it.
    skip_permissions: bool,
    /// `--allow-dangerously-skip-permissions`: lets a host choose `bypassPermissions` later.
    allow_skip_permissions: bool,
    /// `--include-partial-messages`: stream each model message as `stream_event` lines first.
    partial_messages: bool,
    /// `-p` / `--print`: the stream protocol; without it, the interactive screen.
    print: bool,
}

/// Flags of the real CLI that take a value; the value must be skipped, not read as a flag.
const VALUE_FLAGS: &[&str] = &[
    "--session-id",
    "--resume",
    "-r",
    "--model",
    "--fallback-model",
    "--permission-mode",
    "--permission-prompt-tool",
    "--input-format",
    "--output-format",
    "--append-system-prompt",
    "--system-prompt",
    "--max-turns",
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--mcp-config",
    "--settings",
    "--add-dir",
];

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Self {
        let mut start = Start::Fresh;
        let mut permission_prompt_tool = None;
        let mut permission_mode = None;
        let mut skip_permissions = false;
        let mut allow_skip_permissions = false;
        let mut partial_messages = false;
        let mut print = false;
        while let Some(arg) = args.next() {
            if arg == "--dangerously-skip-permissions" {
                skip_permissions = true;
                continue;
            }
            if arg == "--allow-dangerously-skip-permissions" {
                allow_skip_permissions = true;
                continue;
            }
            if arg == "--include-partial-messages" {
                partial_messages = true;
                continue;
            }
            if arg == "-p" || arg == "--print" {
                print = true;
                continue;
            }
            let (flag, inline_value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg, None),
            };
            if !VALUE_FLAGS.contains(&flag.as_str()) {
                continue; // `-p`, `--verbose` and unknown flags are accepted and ignored.
            }
            let value = inline_value.or_else(|| args.next()).unwrap_or_default();
            match flag.as_str() {
                "--session-id" => start = Start::New(value),
                "--resume" | "-r" => start = Start::Resume(value),
                "--permission-prompt-tool" => permission_prompt_tool = Some(value),
                "--permission-mode" => permission_mode = Some(value),
                _ => {}
            }
        }
        let permission_mode = permission_mode.unwrap_or_else(|| {
            if skip_permissions {
                "bypassPermissions"
            } else {
                "default"
            }
            .to_owned()
        });
        Self {
            start,
            permission_prompt_tool,
            permission_mode,
            skip_permissions,
            allow_skip_permissions,
            partial_messages,
            print,
        }
    }
}

/// Appends `{"pid":…,"argv":[…],"cwd":…}` to `$FAKE_CLAUDE_LOG`, if set.
fn log_invocation(cwd: &str) {
    let Some(path) = std::env::var_os("FAKE_CLAUDE_LOG") else {
        return;
    };
    let argv: Vec<String> = std::env::args().collect();
    let line = json!({"pid": process::id(), "argv": argv, "cwd": cwd}).to_string() + "\n";
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(err) = written {
        eprintln!("fake-claude: cannot write the invocation log: {err}");
    }
}

/// Appends `{"pid":…,"control_response":<line>}` to `$FAKE_CLAUDE_CONTROL_LOG`, if set.
fn log_control_response(line: &Value) {
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

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Transcript
// ---------------------------------------------------------------------------------------------

/// The conversation's identity and its stored history.
struct Session {
    id: String,
    cwd: String,
    transcript: PathBuf,
    /// Every user text of the conversation so far, oldest first.
    history: Vec<String>,
    /// The `uuid` of the last line written to the transcript (the next one's `parentUuid`).
    last_uuid: Option<String>,
}

/// Checks the start flags against the transcript on disk, as the real CLI does.
/// On refusal, prints the CLI's error and returns the exit code.
fn open_session(args: &Args, cwd: &str) -> Result<Session, i32> {
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
fn transcript_path(cwd: &str, id: &str) -> PathBuf {
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
fn read_history(transcript: &Path) -> Vec<String> {
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
    fn record_user(&mut self, content: Value, source: Option<&str>) {
        let mut line = self.transcript_line("user", json!({"role": "user", "content": content}));
        if let Some(source) = source {
            line["promptSource"] = json!(source);
            line["promptId"] = json!(Uuid::new_v4().to_string());
        }
        self.append(&line);
    }

    /// Appends one content block of model message `id`, with the message's stop reason, as
    /// the real CLI writes each block of a message it received.
    fn record_assistant(&mut self, id: &str, block: &Value, stop_reason: &str) {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": MODEL,
            "content": [block], "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage(10, 5),
        });
        let line = self.transcript_line("assistant", message);
        self.append(&line);
    }

    fn transcript_line(&mut self, kind: &str, message: Value) -> Value {
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

    fn append(&self, line: &Value) {
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

// ---------------------------------------------------------------------------------------------
// Interactive
// ---------------------------------------------------------------------------------------------

/// The interactive screen (no `-p`), as a person sees it in a terminal: a banner, a `❯ `
/// prompt, each line typed (the terminal echoes it) answered with `● ` and the same reply
/// the stream mode gives, both kept in the conversation's transcript, which a later
/// `--resume` (chat) continues. `/exit` or the end of input ends it with code 0; Ctrl-C
/// (SIGINT from the terminal) ends it as a signal does.
fn interactive(mut session: Session) -> i32 {
    let mut out = io::stdout();
    let _ = write!(
        out,
        "fake-claude {VERSION} (interactive)\n{}\n",
        session.cwd
    );
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let _ = write!(out, "\u{276f} ");
        let _ = out.flush();
        let Some(Ok(line)) = lines.next() else {
            return 0;
        };
        let text = line.trim().to_owned();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" {
            let _ = writeln!(
                out,
                "Resume this session with:\nclaude --resume {}",
                session.id
            );
            return 0;
        }
        session.record_user(json!(text), Some("typed"));
        session.history.push(text.clone());
        let reply = format!("echo: {text} | history: {}", session.history.join(" / "));
        let block = json!({"type": "text", "text": reply});
        session.record_assistant(&format!("msg_typed_{}", Uuid::new_v4()), &block, "end_turn");
        let _ = writeln!(out, "\u{25cf} {reply}");
    }
}

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

/// One stdin line, already classified.
enum Input {
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
fn spawn_stdin_reader() -> Receiver<Input> {
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

fn classify(line: &str) -> Input {
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

/// The text of a user message whose content is a string or a list of content blocks.
fn user_text(content: &Value) -> String {
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

// ---------------------------------------------------------------------------------------------
// Directives
// ---------------------------------------------------------------------------------------------

/// The behaviours scripted by `[word]` / `[word:N]` markers in a user message.
#[derive(Default)]
struct Directives {
    slow_ms: Option<u64>,
    crash: bool,
    hang: bool,
    garbage: bool,
    huge: Option<usize>,
    bigreply: Option<usize>,
    not_logged_in: bool,
    error: bool,
    tool: bool,
    unknown: bool,
    exit_after: bool,
    stderr: bool,
    early_exit: bool,
    spawn_tool: bool,
    bad_type: bool,
    api_retries: Option<u64>,
    alloc_mib: Option<usize>,
    /// `[stall-result]`: after the reply (stdout and transcript), block before the `result`.
    stall_result: bool,
    /// `[ask-write:FILE]` and `[ask-question]`, in the message's order.
    asks: Vec<Ask>,
}

/// A tool call that needs approval, scripted by a directive.
enum Ask {
    /// `[ask-write:FILE]`: Write `<cwd>/FILE`.
    Write(String),
    /// `[ask-question]`: AskUserQuestion.
    Question,
}

impl Directives {
    fn parse(text: &str) -> Self {
        let mut directives = Self::default();
        for chunk in text.split('[').skip(1) {
            let Some((body, _)) = chunk.split_once(']') else {
                continue;
            };
            let (name, arg) = match body.split_once(':') {
                Some((name, arg)) => (name, Some(arg.trim())),
                None => (body, None),
            };
            directives.apply(name.trim(), arg);
        }
        directives
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        match name {
            "slow" => self.slow_ms = number(arg),
            "crash" => self.crash = true,
            "hang" => self.hang = true,
            "api-retry" => self.api_retries = number(arg),
            "garbage" => self.garbage = true,
            "huge" => self.huge = number(arg),
            "bigreply" => self.bigreply = number(arg),
            "notloggedin" => self.not_logged_in = true,
            "error" => self.error = true,
            "tool" => self.tool = true,
            "unknown" => self.unknown = true,
            "exit-after" => self.exit_after = true,
            "stderr" => self.stderr = true,
            "early-exit" => self.early_exit = true,
            "spawn-tool" => self.spawn_tool = true,
            "badtype" => self.bad_type = true,
            "alloc" => self.alloc_mib = number(arg),
            "stall-result" => self.stall_result = true,
            "ask-write" => {
                if let Some(file) = arg.filter(|file| !file.is_empty()) {
                    self.asks.push(Ask::Write(file.to_owned()));
                }
            }
            "ask-question" => self.asks.push(Ask::Question),
            _ => {}
        }
    }
}

fn number<T: FromStr>(arg: Option<&str>) -> Option<T> {
    arg?.parse().ok()
}

/// `text` in the pieces its `text_delta`s carry: a word each (with the space before it, as
/// the API sends them), or several words when there would be more than `MAX_DELTAS`; joined,
/// they are `text`.
fn text_pieces(text: &str) -> Vec<String> {
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

/// `LOREM` repeated and cut to exactly `len` bytes.
fn lorem(len: usize) -> String {
    LOREM.chars().cycle().take(len).collect()
}

// ---------------------------------------------------------------------------------------------
// Conversation loop
// ---------------------------------------------------------------------------------------------

/// How a wait inside a turn ended.
enum Waited {
    Elapsed,
    Interrupted,
}

/// How tools that need approval are handled, from the flags and later `set_permission_mode`.
struct Permissions {
    /// `--permission-prompt-tool stdio`: ask the host with `can_use_tool`.
    ask_host: bool,
    /// The current permission mode, shown in every `system/init`.
    mode: String,
    /// Whether a host may switch to `bypassPermissions`.
    can_bypass: bool,
}

impl Permissions {
    fn from_args(args: &Args) -> Self {
        Self {
            ask_host: args.permission_prompt_tool.as_deref() == Some("stdio"),
            mode: args.permission_mode.clone(),
            // As the real CLI: launched in the mode, or with either flag.
            can_bypass: args.skip_permissions
                || args.allow_skip_permissions
                || args.permission_mode == "bypassPermissions",
        }
    }
}

/// The host's decision on a `can_use_tool` request.
enum Verdict {
    /// Run the tool with this input (the original one with the host's `updatedInput` over it);
    /// `updates` is the answer's `updatedPermissions`.
    Allow { input: Value, updates: Value },
    /// Do not run it; the model gets this text as an error `tool_result`.
    Deny(String),
    /// An interrupt arrived first (already answered).
    Interrupted,
}

/// How a tool directive ended.
enum ToolEnd {
    /// The turn goes on; the reply says this.
    Said(String),
    /// The turn was interrupted while the tool waited for approval.
    Interrupted,
}

struct Conversation {
    session: Session,
    rx: Receiver<Input>,
    /// User messages that arrived while a turn was running, in order.
    queue: VecDeque<String>,
    eof: bool,
    /// Turns started by this process: the cost adds up over the process's life.
    turns: u64,
    messages: u64,
    last_was_error: bool,
    /// The pid of a tool started by `[spawn-tool]`, named in the reply.
    tool: Option<u32>,
    permissions: Permissions,
    /// This turn's refused tool calls, for the `result`'s `permission_denials`.
    denials: Vec<Value>,
    /// Tool calls of this process, for unique `tool_use` ids.
    tool_uses: u64,
    /// With `--include-partial-messages`: the pause between two text deltas.
    stream: Option<Duration>,
}

impl Conversation {
    fn new(
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
    fn run(mut self) -> i32 {
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
    fn handle_side_input(&mut self, input: Input) {
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
    fn wait(&mut self, duration: Duration) -> Waited {
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

    fn turn(&mut self, text: &str) {
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
    fn reply(
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

    fn finish(&mut self, result: &Value) {
        self.last_was_error = result["is_error"] == true;
        emit(result);
    }

    fn emit_tool_use(&mut self) {
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

    /// Answers a host's `set_permission_mode` and switches to the mode, or refuses it with the
    /// real CLI's errors.
    fn set_permission_mode(&mut self, request_id: &Value, mode: &Value) {
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
    fn switch_mode(&mut self, mode: &str) {
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
    fn ask_write(&mut self, file: &str) -> ToolEnd {
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
    fn ask_question(&mut self) -> ToolEnd {
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
    fn ask_host(&mut self, request: Value, input: &Value) -> Verdict {
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
    fn apply_permission_updates(&mut self, updates: &Value) {
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
    fn write_file(&mut self, tool_use_id: &str, input: &Value) -> String {
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
    fn refuse_tool(&mut self, name: &str, tool_use_id: &str, input: &Value, message: &str) {
        self.emit_tool_result(tool_use_id, message, true);
        self.denials
            .push(json!({"tool_name": name, "tool_use_id": tool_use_id, "tool_input": input}));
    }

    /// The lines the real CLI prints after an interrupt cancelled a pending approval.
    fn interrupted_tool(&mut self, name: &str, tool_use_id: &str, input: &Value) {
        self.refuse_tool(name, tool_use_id, input, TOOL_USE_REJECTED);
        let text = json!([{"type": "text", "text": "[Request interrupted by user for tool use]"}]);
        emit(&self.user_line(text));
    }

    /// Prints an assistant line calling tool `name`; returns the `tool_use` id.
    fn emit_tool_call(&mut self, name: &str, input: &Value) -> String {
        self.tool_uses += 1;
        let id = format!("toolu_fake_{:06}_{}", self.tool_uses, process::id());
        let call = json!([{"type": "tool_use", "id": id, "name": name, "input": input}]);
        self.say(call);
        id
    }

    fn emit_tool_result(&mut self, tool_use_id: &str, content: &str, is_error: bool) {
        let mut block =
            json!({"type": "tool_result", "content": content, "tool_use_id": tool_use_id});
        if is_error {
            block["is_error"] = json!(true);
        }
        emit(&self.user_line(json!([block.clone()])));
        self.session.record_user(json!([block]), None);
    }

    fn user_line(&self, content: Value) -> Value {
        json!({
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": null,
            "session_id": self.session.id,
            "uuid": Uuid::new_v4().to_string(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    fn init_line(&self) -> Value {
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
    fn say(&mut self, content: Value) -> Waited {
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
    fn stream_event(&self, id: &str, event: Value) {
        emit(&json!({
            "type": "stream_event",
            "event": event,
            "session_id": self.session.id,
            "parent_tool_use_id": null,
            "uuid": Uuid::new_v4().to_string(),
            "api_message_id": id,
        }));
    }

    fn assistant_line(&self, id: &str, content: Value) -> Value {
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

    fn result_line(&self, subtype: &str, is_error: bool, text: &str, started: Instant) -> Value {
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

/// Reads the host's answer to a `can_use_tool` request as the real CLI does. `input` is the
/// tool's original input, which `updatedInput` overrides field by field.
fn verdict(response: &Value, input: &Value) -> Verdict {
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

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({"input_tokens": input_tokens, "output_tokens": output_tokens})
}

fn answer_control(request_id: &Value) {
    emit(&json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": {}},
    }));
}

/// A control request refused with the real CLI's `error` and `error_code`.
fn refuse_control_with(request_id: &Value, error: &str, code: &str) {
    emit(&json!({
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": request_id,
            "error": error,
            "error_code": code,
        },
    }));
}

fn refuse_control(request_id: &Value, subtype: &str) {
    emit(&json!({
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": request_id,
            "error": format!("Unsupported control request subtype: {subtype}"),
        },
    }));
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn emit(value: &Value) {
    emit_raw(&value.to_string());
}

/// Writes one line to stdout and flushes it; a closed stdout ends the process, as nobody is
/// left to talk to.
fn emit_raw(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        process::exit(1);
    }
}

/// Starts a long-running tool in this process's group (as a Bash tool call would) and
/// leaves it running.
fn spawn_tool() -> u32 {
    match process::Command::new("sleep")
        .arg("300")
        .stdin(process::Stdio::null())
        .stdout(process::Stdio::null())
        .spawn()
    {
        Ok(child) => {
            eprintln!("tool pid {}", child.id());
            child.id()
        }
        Err(err) => fatal(&format!("Error: cannot start a tool: {err}"), 1),
    }
}

/// Makes `mib` MiB resident (every page written) and keeps it until the process ends, so a
/// test can watch a CLI's memory grow.
fn allocate(mib: usize) {
    let held: &'static mut [u8] = vec![1u8; mib << 20].leak();
    // Keeps the compiler from dropping an allocation that is never read.
    std::hint::black_box(held);
}

/// Writes `message` to stderr and exits with `code`.
fn fatal(message: &str, code: i32) -> ! {
    eprintln!("{message}");
    process::exit(code);
}

/// A turn that never ends: only a signal stops the process.
fn hang_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
