//! How to start a coding CLI for a conversation and how to read its lines, behind one
//! trait. Claude Code's stream-json is the one built; Codex (`app-server`) and Gemini
//! (`--acp`) speak JSON-RPC lines and fit the same shape: a command per launch, a line per
//! user message, an optional interrupt line, and a parser from stdout lines to events.

pub mod claude;
pub mod process;
pub mod transcript;

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;
use serde_json::Value;

pub use transcript::TurnRecord;

use crate::store::sessions::SessionRow;

/// What a process is started for.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The conversation id the CLI knows (for Claude: the session's UUID, or the id of its
    /// latest `result` if the CLI handed out a new one).
    pub conversation_id: String,
    pub cwd: PathBuf,
    /// The CLI has seen this conversation before: continue it instead of starting it.
    pub resume: bool,
    /// How the CLI asks before using tools (Claude's `--permission-mode`); kept with the
    /// session so a resumed process asks the same way.
    pub permission_mode: String,
}

impl Launch {
    /// How the CLI continues `session`'s conversation as its record says: in its project
    /// folder, under the id the CLI knows, resumed once the CLI has a transcript of it, in
    /// its permission mode (`default_mode`, `agent.permission_mode`, when it has none).
    /// Chat processes and `claude` terminals both start this way.
    pub fn of_session(session: &SessionRow, default_mode: &str) -> Self {
        Self {
            conversation_id: session
                .agent_session_id
                .clone()
                .unwrap_or_else(|| session.id.clone()),
            cwd: session.project_path.clone().into(),
            resume: session.transcript_started,
            permission_mode: session
                .permission_mode
                .clone()
                .unwrap_or_else(|| default_mode.to_string()),
        }
    }

    /// The same launch, resumed or not as `agent`'s own record of the conversation says
    /// (asked off the async threads); unchanged when it cannot tell.
    pub async fn probed(mut self, agent: Arc<dyn Agent>) -> Self {
        let probe = self.clone();
        if let Ok(Some(known)) =
            tokio::task::spawn_blocking(move || agent.has_conversation(&probe)).await
        {
            self.resume = known;
        }
        self
    }
}

/// One coding CLI.
pub trait Agent: Send + Sync + 'static {
    /// Short name stored with each session (`claude`).
    fn name(&self) -> &'static str;
    /// The command that starts a long-lived process for a conversation.
    fn command(&self, launch: &Launch) -> tokio::process::Command;
    /// The interactive program a person uses in a terminal (no stream flags), continuing
    /// `launch`'s conversation when given; run in a pseudo-terminal by `terminals`.
    fn interactive(&self, launch: Option<&Launch>) -> Interactive;
    /// The stdin line (without newline) that sends one user message.
    fn user_line(&self, text: &str) -> String;
    /// The stdin line that interrupts the running turn, if the tool has one.
    fn interrupt_line(&self, request_id: &str) -> Option<String>;
    /// The stdin line that answers a permission request of the agent.
    fn permission_line(&self, request_id: &str, decision: &Decision) -> Option<String>;
    /// The stdin line that changes a live process's permission mode, if the tool has one.
    fn permission_mode_line(&self, request_id: &str, mode: &str) -> Option<String>;
    /// Reads one stdout line.
    fn parse_line(&self, line: &str) -> Parsed;
    /// Whether the CLI already holds this conversation (for Claude: its transcript file
    /// exists), or None when it cannot tell. It touches the file system: call it off the
    /// async threads.
    fn has_conversation(&self, launch: &Launch) -> Option<bool>;
    /// What the CLI's own record of `launch`'s conversation says of the user message `text`
    /// sent at `sent_at_ms` (for Claude: its transcript), or None when it cannot tell. It
    /// touches the file system: call it off the async threads.
    fn read_turn(&self, _launch: &Launch, _text: &str, _sent_at_ms: i64) -> Option<TurnRecord> {
        None
    }
    /// Whether what a process printed before it ended (its error result or stderr) says it
    /// was started the wrong way for its conversation: resumed when the CLI has no such
    /// conversation, or started anew when it already exists. The caller then starts it the
    /// other way, once.
    fn wrong_start(&self, launch: &Launch, output: &str) -> bool;
}

/// An interactive program: what to run, with which arguments and extra environment.
#[derive(Debug, Clone)]
pub struct Interactive {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A stdout line, read.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A JSON object and its `type`. The line itself is what is stored and streamed, so
    /// unknown types and fields are kept whole.
    Event { kind: String, signal: Signal },
    /// A piece of a message still being written (Claude's `stream_event` lines, with
    /// `--include-partial-messages`). Never stored: the complete line follows it. Its text,
    /// when it adds text to the reply, goes to live listeners.
    Partial(Option<TextDelta>),
    /// Not a JSON object: logged and counted, never fatal.
    Invalid,
}

/// Text the agent just wrote, before the line that holds the whole block.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextDelta {
    pub text: String,
    /// The model's message this text belongs to (the id its complete line will carry).
    pub api_message_id: Option<String>,
    /// The content block of that message (a message may hold several text blocks).
    pub index: u64,
}

/// What the session actor must act on in an event; most events need nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    None,
    /// The turn ended.
    TurnDone(Box<TurnResult>),
    /// The agent asks before using a tool (or asks the user a question) and waits.
    Permission(Box<PermissionRequest>),
    /// The agent answered a control request tether sent (e.g. a mode change): `error` is
    /// its refusal, None when it did what was asked.
    ControlAnswer {
        request_id: String,
        error: Option<String>,
    },
}

/// A tool the agent wants to use, or a question it asks the user, waiting for an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionRequest {
    /// The agent's id for the request, quoted in the answer.
    pub request_id: String,
    pub tool_name: String,
    pub input: Value,
    /// What the agent says it is about to do (e.g. the file's name).
    pub description: Option<String>,
    /// What the agent offers to remember (e.g. switch the session to `acceptEdits`).
    pub suggestions: Option<Value>,
    /// A question for the user (AskUserQuestion), not a tool to allow.
    pub question: bool,
}

/// The user's answer to a [`PermissionRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        /// The input the tool runs with (for a question: the input with its answers).
        updated_input: Value,
        /// Permission changes to keep for the session (the agent's own suggestions).
        updated_permissions: Option<Value>,
    },
    Deny {
        /// Told to the model; never empty.
        message: String,
    },
}

/// The end of a turn, as the CLI reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnResult {
    pub is_error: bool,
    pub subtype: String,
    /// The final text (the reply, or the error message).
    pub text: String,
    /// The conversation id the CLI used; store it, some versions change it on resume.
    pub conversation_id: Option<String>,
    /// Cost so far in this process (Claude adds up over the life of a process).
    pub cumulative_cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub usage: Option<Value>,
}

/// Is the agent command usable? Shown on `/health`; chat answers 503 while it is not.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// `agent.command`.
    pub command: String,
    pub found: bool,
    /// Where the command was found.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    pub error: Option<String>,
}

/// Whether the agent command is usable now, shared by chat, `/health` and the starts of
/// processes: a command found at start-up may be removed later (or installed later).
#[derive(Debug)]
pub struct AgentHealth {
    /// `agent.command`.
    command: String,
    status: tokio::sync::RwLock<AgentStatus>,
}

impl AgentHealth {
    /// Starts from a probe made at start-up.
    pub fn new(command: &str, status: AgentStatus) -> Self {
        Self {
            command: command.to_string(),
            status: tokio::sync::RwLock::new(status),
        }
    }

    /// The status, probed again (`--version`) while the command is missing or failing, or
    /// once the file it was found at is gone.
    pub async fn status(&self) -> AgentStatus {
        let current = self.status.read().await.clone();
        if current.error.is_none() && still_there(&current) {
            return current;
        }
        self.probe().await
    }

    /// Whether a message may go to the agent: the command was found and its file is still
    /// there (a look at the file, no `--version` run, while it is), else why not.
    pub async fn ready(&self) -> Result<(), String> {
        if still_there(&*self.status.read().await) {
            return Ok(());
        }
        let status = self.probe().await;
        if status.found {
            return Ok(());
        }
        Err(status
            .error
            .unwrap_or_else(|| "the agent command is not available".into()))
    }

    /// Probes the command again and keeps what it found: after a start that failed, so
    /// that chat and `/health` tell of a command that went missing.
    pub async fn probe(&self) -> AgentStatus {
        let fresh = probe(&self.command).await;
        if !fresh.found {
            tracing::warn!(command = %self.command, "the agent command is missing");
        }
        *self.status.write().await = fresh.clone();
        fresh
    }
}

/// Found, and its file is still where it was found, executable.
fn still_there(status: &AgentStatus) -> bool {
    status.found
        && status
            .path
            .as_deref()
            .is_some_and(|p| process::check_program(p.as_os_str()).is_ok())
}

/// How long `<command> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(15);

/// Looks the command up (PATH or a path) and asks its version.
pub async fn probe(command: &str) -> AgentStatus {
    let mut status = AgentStatus {
        command: command.to_string(),
        found: false,
        path: None,
        version: None,
        error: None,
    };
    let path = match which::which(command) {
        Ok(p) => p,
        Err(_) => {
            status.error = Some(format!(
                "agent command `{command}` was not found. Install Claude Code \
                 (npm install -g @anthropic-ai/claude-code), log in once with `claude`, or set \
                 agent.command (TETHER__AGENT__COMMAND) to its path"
            ));
            return status;
        }
    };
    status.found = true;
    status.path = Some(path.clone());
    let out = tokio::time::timeout(
        VERSION_TIMEOUT,
        tokio::process::Command::new(&path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match out {
        Ok(Ok(out)) if out.status.success() => {
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            status.version = Some(v);
        }
        Ok(Ok(out)) => status.error = Some(format!("`{command} --version` failed: {}", out.status)),
        Ok(Err(e)) => status.error = Some(format!("`{command} --version` could not run: {e}")),
        Err(_) => status.error = Some(format!("`{command} --version` did not answer in time")),
    }
    status
}
