//! What passes between the pool and a session's actor: the controls sent to it with the
//! answers they wait for, and the state of its process that it publishes.

use serde::Serialize;
use tokio::{sync::oneshot, time::Instant};

use crate::agent::Decision;

/// Where a session's process is, as shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// No process: it starts (with `--resume` when needed) on the next message.
    None,
    /// A message waits for a process slot (`sessions.max_processes` are all busy).
    Waiting,
    Starting,
    Idle,
    Busy,
}

impl ProcessState {
    /// Whether a process exists (it holds a slot).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Starting | Self::Idle | Self::Busy)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub state: ProcessState,
    pub pid: Option<u32>,
    /// When the process last finished a turn or started (ms), for eviction order.
    #[serde(skip)]
    pub last_used_ms: i64,
}

impl ProcessInfo {
    pub(super) fn none() -> Self {
        Self {
            state: ProcessState::None,
            pid: None,
            last_used_ms: 0,
        }
    }
}

/// Messages to an actor besides "look at your queue" (which is a [`tokio::sync::Notify`]).
pub(super) enum Control {
    /// Interrupt the running turn; answers whether one was running.
    Interrupt(oneshot::Sender<bool>),
    /// Stop the process if idle, for the reason given (another session needs its slot,
    /// it idled too long, it holds too much memory).
    Stop(&'static str),
    /// tether is stopping: let a running turn finish until the deadline, then stop.
    Shutdown(Instant),
    /// The session was ended: stop now.
    End,
    /// The owner decided on a pending permission request.
    Decide(Decide),
    /// The session's permission mode changed: tell the live process, answering what it did.
    SetMode(String, oneshot::Sender<ModeApplied>),
    /// A terminal takes the conversation: stop the process if no turn runs, answering
    /// true, else answer false (see `hold`).
    Hold(oneshot::Sender<bool>),
}

/// A decision on its way to the actor that holds the request.
pub struct Decide {
    pub approval_id: i64,
    pub decision: Decision,
    /// Who decided (the owner, or `tether` for an automatic deny).
    pub by: String,
    /// A permission mode the decision keeps for the rest of the session.
    pub keep_mode: Option<String>,
    pub reply: oneshot::Sender<Result<(), Gone>>,
}

/// The request can no longer be answered: its turn or process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What the session's live process did with a new permission mode (stored either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeApplied {
    /// The process answered that it took the mode: it holds from now on.
    Applied,
    /// The session has no live process: its next start uses the mode.
    NoProcess,
    /// The process refused it (the CLI's error), ended first, or did not answer in time:
    /// it goes on in its old mode, and its next start uses the new one.
    NotApplied(String),
}
