//! `fake-claude`: a stand-in for the Claude Code CLI, used by tether's integration tests.
//!
//! It speaks the CLI's persistent stream-json protocol (see docs/claude-cli.md): one JSON
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

mod approvals;
mod args;
mod control;
mod conversation;
mod directives;
mod faults;
mod input;
mod interactive;
mod permissions;
mod protocol;
mod transcript;
mod turns;

use std::process;
use std::thread;
use std::time::Duration;

use args::{env_u64, log_invocation, Args};
use conversation::{Conversation, DELTA_GAP_MS};
use input::spawn_stdin_reader;
use interactive::interactive;
use permissions::{Permissions, START_MODES};
use protocol::{fatal, VERSION};
use transcript::open_session;

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
