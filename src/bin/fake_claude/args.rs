//! The command line as the real CLI reads it, the environment's numbers, and the
//! invocation log tests read.

use std::fs::OpenOptions;
use std::io::Write;
use std::process;

use serde_json::json;

/// How the process was asked to start its conversation.
pub(crate) enum Start {
    /// `--session-id ID`: a new conversation with a caller-chosen id.
    New(String),
    /// `--resume ID`: an existing conversation.
    Resume(String),
    /// Neither flag: a new conversation with a fresh id.
    Fresh,
}

pub(crate) struct Args {
    pub(crate) start: Start,
    /// `--permission-prompt-tool`: only `stdio` (ask the host) means anything here.
    pub(crate) permission_prompt_tool: Option<String>,
    /// `--permission-mode`, `default` when absent.
    pub(crate) permission_mode: String,
    /// `--dangerously-skip-permissions`: starts in `bypassPermissions` and lets a host choose it.
    pub(crate) skip_permissions: bool,
    /// `--allow-dangerously-skip-permissions`: lets a host choose `bypassPermissions` later.
    pub(crate) allow_skip_permissions: bool,
    /// `--include-partial-messages`: stream each model message as `stream_event` lines first.
    pub(crate) partial_messages: bool,
    /// `-p` / `--print`: the stream protocol; without it, the interactive screen.
    pub(crate) print: bool,
}

/// Flags of the real CLI that take a value; the value must be skipped, not read as a flag.
pub(crate) const VALUE_FLAGS: &[&str] = &[
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
    pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Self {
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
pub(crate) fn log_invocation(cwd: &str) {
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

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}
