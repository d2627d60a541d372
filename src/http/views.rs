//! The JSON shapes the API returns (camelCase), built from store rows.

use super::codes::ErrorCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::{
    sessions::{ProcessInfo, ProcessState, Usage},
    store::{
        approvals::{ApprovalRow, ApprovalStatus},
        messages::MessageRow,
        messages::Status,
        sessions::SessionRow,
    },
};

/// A time column (ms since the epoch) as the API shows it (RFC 3339, UTC).
pub fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A session: one conversation with one agent in one project folder.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// A UUID, also the agent's conversation id.
    #[schema(example = "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11")]
    pub id: String,
    pub owner: String,
    /// The agent serving it (`claude`).
    #[schema(example = "claude")]
    pub agent: String,
    #[schema(example = "/Users/ana/code/app")]
    pub project_path: String,
    /// The project folder's name, unless set otherwise.
    pub title: Option<String>,
    /// `active`, `ended` (by its owner) or `expired`.
    #[schema(example = "active")]
    pub state: String,
    pub process: ProcessInfo,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    /// When it ends unless a message or keep-alive comes first.
    pub expires_at: DateTime<Utc>,
    /// When this period's "expires soon" push went out (a keep-alive clears it).
    pub warned_at: Option<DateTime<Utc>>,
    /// How its agent asks before using tools; null: `agent.permission_mode`.
    pub permission_mode: Option<String>,
    pub message_count: i64,
    pub total_cost_usd: f64,
    /// The conversation id the CLI reported last (equal to `id` unless the CLI changed it).
    pub agent_session_id: Option<String>,
    /// The terminal that holds its conversation now; its messages wait until it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
}

impl SessionView {
    pub fn new(s: SessionRow, process: ProcessInfo) -> Self {
        Self {
            id: s.id,
            owner: s.owner,
            agent: s.agent,
            project_path: s.project_path,
            title: s.title,
            state: s.state,
            process,
            created_at: time(s.created_at),
            last_activity_at: time(s.last_activity_at),
            ended_at: s.ended_at.map(time),
            end_reason: s.end_reason,
            expires_at: time(s.expires_at),
            warned_at: s.warned_at.map(time),
            permission_mode: s.permission_mode,
            message_count: s.message_count,
            total_cost_usd: s.total_cost_usd,
            agent_session_id: s.agent_session_id,
            terminal_id: None,
        }
    }
}

/// A tool the agent asked to use, or a question it asked, and what became of it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalView {
    pub id: i64,
    pub session_id: String,
    pub message_id: i64,
    /// `tool` (Allow / Deny) or `question` (answer with one of the options).
    #[schema(example = "tool")]
    pub kind: String,
    #[schema(example = "Write")]
    pub tool_name: String,
    /// The tool's input (for a question: its `questions`), as the agent sent it; when
    /// `inputCut`, only its size (answer with `updatedInput`).
    pub input: Value,
    pub input_cut: bool,
    pub description: Option<String>,
    /// What the agent offers to remember when allowed with `remember: "session"`.
    pub suggestions: Option<Value>,
    pub status: ApprovalStatus,
    /// The answer given to the agent.
    pub decision: Option<Value>,
    pub decided_by: Option<String>,
    /// Why it expired or was cancelled.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

impl From<ApprovalRow> for ApprovalView {
    fn from(a: ApprovalRow) -> Self {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
        Self {
            id: a.id,
            session_id: a.session_id,
            message_id: a.message_id,
            kind: a.kind,
            tool_name: a.tool_name,
            input: json(&a.input),
            input_cut: a.input_cut,
            description: a.description,
            suggestions: a.suggestions.as_deref().map(json),
            status: a.status,
            decision: a.decision.as_deref().map(json),
            decided_by: a.decided_by,
            reason: a.reason,
            created_at: time(a.created_at),
            decided_at: a.decided_at.map(time),
        }
    }
}

/// One line of the admin's view of active sessions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSessionView {
    pub id: String,
    pub owner: String,
    pub title: Option<String>,
    pub project_path: String,
    pub state: ActiveState,
    pub pid: Option<u32>,
    /// Resident memory of the process and the tools it started, at the last reading.
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f32>,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub age_secs: i64,
    pub idle_secs: i64,
    pub expires_in_secs: i64,
    pub queued: i64,
    pub message_count: i64,
    pub total_cost_usd: f64,
}

impl ActiveSessionView {
    pub fn new(
        s: SessionRow,
        queued: i64,
        process: ProcessInfo,
        usage: Option<Usage>,
        now: i64,
    ) -> Self {
        let state = match process.state {
            ProcessState::Busy | ProcessState::Starting => ActiveState::Running,
            ProcessState::Waiting => ActiveState::Waiting,
            ProcessState::Idle => ActiveState::Idle,
            ProcessState::None => ActiveState::Hibernated,
        };
        let secs = |ms: i64| ms.max(0) / 1000;
        Self {
            state,
            pid: process.pid,
            memory_bytes: usage.map(|u| u.memory_bytes),
            cpu_percent: usage.map(|u| u.cpu_percent),
            age_secs: secs(now - s.created_at),
            idle_secs: secs(now - s.last_activity_at),
            expires_in_secs: secs(s.expires_at - now),
            created_at: time(s.created_at),
            last_activity_at: time(s.last_activity_at),
            expires_at: time(s.expires_at),
            queued,
            message_count: s.message_count,
            total_cost_usd: s.total_cost_usd,
            id: s.id,
            owner: s.owner,
            title: s.title,
            project_path: s.project_path,
        }
    }
}

/// Where an active session's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActiveState {
    /// A turn runs.
    Running,
    /// A message waits for a process slot.
    Waiting,
    /// A process waits for the next message.
    Idle,
    /// No process; the next message resumes it.
    Hibernated,
}

/// A message of a session: the user's (a turn's request) or the agent's reply.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: i64,
    pub session_id: String,
    /// `user` or `assistant`.
    #[schema(example = "user")]
    pub role: String,
    pub status: Status,
    pub text: String,
    pub client_message_id: Option<String>,
    pub reply_to: Option<i64>,
    pub error: Option<String>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    /// The agent's token counts for the turn, as its CLI reported them.
    pub usage: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Whether the agent got the message: for a user message, true once tether wrote it to
    /// the agent's input (or, after a crash, the agent's own record showed it had it), so a
    /// message that failed or was interrupted with `delivered: true` may have been acted on
    /// (resending it may do the work twice); false while queued and when it never reached
    /// the agent. Always true for a reply (it came from the agent).
    pub delivered: bool,
    /// Why a queued message has not started: `process_slot` (every process slot is busy;
    /// it starts when one frees), `terminal` (a terminal holds the conversation; it starts
    /// when that ends) or `turn` (its turn in the session's queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
}

/// Why a queued message has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// Every process slot is busy; it starts when one frees.
    ProcessSlot,
    /// A terminal holds the session's conversation; it starts when that ends.
    Terminal,
    /// Its turn in the session's queue.
    Turn,
}

impl MessageView {
    /// The view, saying what a queued message waits for given its session's process.
    pub fn with_process(m: MessageRow, process: ProcessState) -> Self {
        let queued = m.status == Status::Queued;
        let mut view = Self::from(m);
        view.waiting_for = queued.then_some(match process {
            ProcessState::Waiting => WaitingFor::ProcessSlot,
            _ => WaitingFor::Turn,
        });
        view
    }
}

impl MessageView {
    /// Says `terminal` as what a queued message waits for, when a terminal holds its
    /// session's conversation.
    pub fn held(mut self, held: bool) -> Self {
        if held && self.waiting_for.is_some() {
            self.waiting_for = Some(WaitingFor::Terminal);
        }
        self
    }
}

impl From<MessageRow> for MessageView {
    fn from(m: MessageRow) -> Self {
        // A completed turn's message reached the agent even if its mark was not stored.
        let delivered =
            m.role == "assistant" || m.delivered_at.is_some() || m.status == Status::Completed;
        Self {
            id: m.id,
            session_id: m.session_id,
            role: m.role,
            status: m.status,
            text: m.text,
            client_message_id: m.client_message_id,
            reply_to: m.reply_to,
            error: m.error,
            cost_usd: m.cost_usd,
            duration_ms: m.duration_ms,
            usage: m.usage.and_then(|u| serde_json::from_str(&u).ok()),
            created_at: time(m.created_at),
            started_at: m.started_at.map(time),
            finished_at: m.finished_at.map(time),
            delivered,
            waiting_for: None,
        }
    }
}

/// Rows per page of a listing when the caller gives no `limit`, and the most it may ask.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// Paging of a listing: `?after=ID` (oldest first) or `?before=ID` (newest first), `limit`.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    pub after: Option<Cursor>,
    pub before: Option<Cursor>,
    pub limit: Option<i64>,
}

/// A position in a listing or a log (an id or a sequence number): digits only, so `-1`,
/// `+1`, ` 1` or `1.0` are refused (422) rather than read as something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    /// The cursor `text` spells, or None when it is not a plain non-negative integer.
    pub fn parse(text: &str) -> Option<Cursor> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(Cursor)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Cursor::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a non-negative whole number (digits only)"
            ))
        })
    }
}

/// A cursor, or 0 (the start) when none was given.
pub fn after(cursor: Option<Cursor>) -> i64 {
    cursor.map_or(0, |c| c.0)
}

impl Page {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::new(
                ErrorCode::InvalidLimit,
                format!("limit must be 1 to {MAX_PAGE}"),
            )),
        }
    }
}
