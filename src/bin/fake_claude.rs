//! `fake-claude`: a stand-in for the Claude Code CLI, used by tether's integration tests.
//!
//! It speaks the CLI's persistent stream-json protocol (see `claude-protocol.md`): one JSON
//! object per line on stdin and stdout, a `system/init` + `assistant` + `result` triple per turn,
//! transcripts under `<config>/projects/<mangled cwd>/<id>.jsonl`, `--session-id` refusing an
//! existing transcript, `--resume` refusing a missing one, and interrupts through
//! `control_request`.
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
//!
//! Environment: `FAKE_CLAUDE_LOG` (append one JSON line per invocation with pid, argv and cwd),
//! `FAKE_CLAUDE_NOT_LOGGED_IN=1` (every turn fails as not logged in),
//! `FAKE_CLAUDE_START_DELAY_MS` (sleep before reading stdin, as the real CLI takes 0.3 to
//! 0.5 s to start; the transcript is written only once the first message is read),
//! `FAKE_CLAUDE_CONFIG_DIR` (where this fake keeps transcripts, over `CLAUDE_CONFIG_DIR`, so a
//! test can make tether's view of the transcripts differ from the CLI's), `CLAUDE_CONFIG_DIR`
//! / `HOME` (where transcripts live).

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
/// Time between two `api_retry` lines of `[api-retry:N]`.
const API_RETRY_GAP: Duration = Duration::from_millis(400);

fn main() {
    if std::env::args().any(|a| a == "--version" || a == "-v") {
        println!("{VERSION} (Claude Code)");
        return;
    }
    let args = Args::parse(std::env::args().skip(1));
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
    let rx = spawn_stdin_reader();
    let code = Conversation::new(session, rx).run();
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
        while let Some(arg) = args.next() {
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
                _ => {}
            }
        }
        Self { start }
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
    })
}

/// `<config>/projects/<cwd with every non-alphanumeric char replaced by '-'>/<id>.jsonl`.
fn transcript_path(cwd: &str, id: &str) -> PathBuf {
    let config = match std::env::var_os("FAKE_CLAUDE_CONFIG_DIR")
        .or_else(|| std::env::var_os("CLAUDE_CONFIG_DIR"))
    {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".claude"),
    };
    let project: String = cwd
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    config
        .join("projects")
        .join(project)
        .join(format!("{id}.jsonl"))
}

/// The user texts recorded in a transcript; unreadable lines are skipped.
fn read_history(transcript: &Path) -> Vec<String> {
    let Ok(content) = fs::read_to_string(transcript) else {
        return Vec::new();
    };
    content
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["type"] == "user")
        .filter_map(|entry| entry["text"].as_str().map(str::to_owned))
        .collect()
}

fn append_transcript(transcript: &Path, kind: &str, text: &str) {
    let line = json!({"type": kind, "text": text}).to_string() + "\n";
    let written = transcript
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(transcript)
        })
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(err) = written {
        fatal(&format!("Error: cannot write the transcript: {err}"), 1);
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
                other => Input::OtherControl {
                    request_id,
                    subtype: other.unwrap_or_default().to_owned(),
                },
            }
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
            _ => {}
        }
    }
}

fn number<T: FromStr>(arg: Option<&str>) -> Option<T> {
    arg?.parse().ok()
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
}

impl Conversation {
    fn new(session: Session, rx: Receiver<Input>) -> Self {
        Self {
            session,
            rx,
            queue: VecDeque::new(),
            eof: false,
            turns: 0,
            messages: 0,
            last_was_error: false,
            tool: None,
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
        append_transcript(&self.session.transcript, "user", text);
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
            emit(&self.assistant_line(json!([{"type": "text", "text": "partial"}])));
            fatal("fake crash", 3);
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
            Some(message) => self.result_line("success", true, message, started),
            None => self.reply(text, &directives, started),
        };
        self.finish(&result);
        if directives.exit_after {
            process::exit(0);
        }
    }

    /// Prints the assistant line, records the reply and builds the successful result.
    fn reply(&mut self, text: &str, directives: &Directives, started: Instant) -> Value {
        let mut reply = match directives.bigreply {
            Some(len) => lorem(len),
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
        emit(&self.assistant_line(json!([{"type": "text", "text": shown}])));
        append_transcript(&self.session.transcript, "assistant", &result);
        self.result_line("success", false, &result, started)
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
        emit(&self.assistant_line(tool_use));
        emit(&json!({
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "file.txt"}],
            },
            "session_id": self.session.id,
        }));
    }

    fn init_line(&self) -> Value {
        json!({
            "type": "system",
            "subtype": "init",
            "cwd": self.session.cwd,
            "session_id": self.session.id,
            "tools": ["Bash", "Read"],
            "mcp_servers": [],
            "model": MODEL,
            "permissionMode": "default",
            "apiKeySource": "none",
            "claude_code_version": VERSION,
        })
    }

    fn assistant_line(&mut self, content: Value) -> Value {
        self.messages += 1;
        json!({
            "type": "assistant",
            "message": {
                "id": format!("msg_{}", self.messages),
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
            "uuid": Uuid::new_v4().to_string(),
        })
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
