//! Why a push is sent: the kinds, each with its stored name, its APNs category, interruption
//! level and collapse id, its subtitle and the text sent when an event has none.

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// A turn finished with a reply.
    TurnCompleted,
    /// A turn failed (crash, not logged in, API error, timeout).
    TurnFailed,
    /// tether stopped during a turn.
    TurnInterrupted,
    /// The session's process died while idle: the next answer will be slower.
    ProcessExited,
    /// The session ends soon (`sessions.warn_before` ahead): "Keep alive" extends it.
    SessionExpiring,
    /// The session reached its end: its process stopped and it takes no more messages.
    SessionExpired,
    /// The agent waits for the owner to allow or deny a tool.
    ApprovalRequested,
    /// The agent waits for the owner to answer a question.
    QuestionAsked,
    /// A terminal's output went quiet after activity while nobody watched it
    /// (`terminals.quiet_push_after`): it may wait for its person.
    TerminalWaiting,
    /// A terminal ends soon (`sessions.warn_before` ahead): attaching or typing extends it.
    TerminalExpiring,
    /// A terminal reached its end: its program was stopped.
    TerminalExpired,
}

impl PushKind {
    /// The name stored in `pushes.kind` and sent as the `kind` custom key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TurnCompleted => "turn_completed",
            Self::TurnFailed => "turn_failed",
            Self::TurnInterrupted => "turn_interrupted",
            Self::ProcessExited => "process_exited",
            Self::SessionExpiring => "session_expiring",
            Self::SessionExpired => "session_expired",
            Self::ApprovalRequested => "approval_requested",
            Self::QuestionAsked => "question_asked",
            Self::TerminalWaiting => "terminal_waiting",
            Self::TerminalExpiring => "terminal_expiring",
            Self::TerminalExpired => "terminal_expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::TurnCompleted,
            Self::TurnFailed,
            Self::TurnInterrupted,
            Self::ProcessExited,
            Self::SessionExpiring,
            Self::SessionExpired,
            Self::ApprovalRequested,
            Self::QuestionAsked,
            Self::TerminalWaiting,
            Self::TerminalExpiring,
            Self::TerminalExpired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The notification category (`aps.category`): the actions the app offers on it.
    pub fn category(self) -> Option<&'static str> {
        match self {
            Self::SessionExpiring => Some("SESSION_EXPIRING"),
            Self::ApprovalRequested => Some("APPROVAL"),
            Self::QuestionAsked => Some("QUESTION"),
            _ => None,
        }
    }

    /// `aps.interruption-level`: a person is waiting on the answer, so it may break through
    /// Focus modes.
    pub fn interruption_level(self) -> Option<&'static str> {
        matches!(self, Self::ApprovalRequested | Self::QuestionAsked).then_some("time-sensitive")
    }

    /// The `apns-collapse-id` of a push of this kind: a later warning about a session (or
    /// terminal: `subject` is its id) replaces the earlier one on the phone, as does a later
    /// "waiting" of a terminal; other pushes collapse only with their own resends (after a
    /// crash mid-send).
    pub fn collapse_id(self, push_id: i64, subject: &str) -> String {
        match self {
            Self::SessionExpiring | Self::TerminalExpiring => format!("expiring-{subject}"),
            Self::TerminalWaiting => format!("waiting-{subject}"),
            _ => format!("tether-{push_id}"),
        }
    }

    /// The line under the title that says what happened (a reply needs none).
    pub fn subtitle(self) -> Option<&'static str> {
        match self {
            Self::TurnCompleted => None,
            Self::TurnFailed => Some("Turn failed"),
            Self::TurnInterrupted => Some("Turn interrupted"),
            Self::ProcessExited => Some("Agent process exited"),
            Self::SessionExpiring => Some("Session expires soon"),
            Self::SessionExpired => Some("Session expired"),
            Self::ApprovalRequested => Some("Approval needed"),
            Self::QuestionAsked => Some("Question"),
            Self::TerminalWaiting => Some("Terminal waiting"),
            Self::TerminalExpiring => Some("Terminal ends soon"),
            Self::TerminalExpired => Some("Terminal ended"),
        }
    }

    /// The body when the event carries no text.
    pub(super) fn fallback_text(self) -> &'static str {
        match self {
            Self::TurnCompleted => "(empty reply)",
            Self::TurnFailed => "The turn failed.",
            Self::TurnInterrupted => "tether stopped during this turn; send the message again.",
            Self::ProcessExited => "The agent process exited; the next message starts it again.",
            Self::SessionExpiring => "This session ends soon; keep it alive to continue.",
            Self::SessionExpired => "This session has ended; start a new one to continue.",
            Self::ApprovalRequested => "Claude wants to use a tool.",
            Self::QuestionAsked => "Claude has a question.",
            Self::TerminalWaiting => "The terminal has gone quiet; it may be waiting for you.",
            Self::TerminalExpiring => "This terminal ends soon; open it to keep it.",
            Self::TerminalExpired => "This terminal has ended; its last screen stays readable.",
        }
    }
}
