//! One writer per conversation: the conversations a terminal holds (session id → the
//! terminal's id). While a terminal runs a session's conversation in the interactive CLI,
//! the session's stream process is stopped (through its actor, as an idle process is
//! hibernated) and its actor takes no queued message; messages sent meanwhile wait, and go
//! on with `--resume` once the terminal lets go (see `Sessions::hold`).

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

/// Why a conversation could not be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefused {
    /// Another terminal holds it (its id).
    Held(String),
    /// A turn is running (or waiting for a process slot): the agent has the conversation.
    TurnRunning,
    /// tether is shutting down.
    Closing,
}

/// The held conversations.
#[derive(Default)]
pub(super) struct Holds {
    by_session: Mutex<HashMap<String, String>>,
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.by_session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `session_id`'s conversation for `holder`, unless another holder has it.
    pub(super) fn take(&self, session_id: &str, holder: &str) -> Result<(), HoldRefused> {
        let mut holds = self.lock();
        if let Some(other) = holds.get(session_id) {
            return Err(HoldRefused::Held(other.clone()));
        }
        holds.insert(session_id.to_string(), holder.to_string());
        Ok(())
    }

    /// Lets go of `session_id`'s conversation if `holder` has it; true when it did.
    pub(super) fn release(&self, session_id: &str, holder: &str) -> bool {
        let mut holds = self.lock();
        let mine = holds.get(session_id).is_some_and(|h| h == holder);
        if mine {
            holds.remove(session_id);
        }
        mine
    }

    /// The terminal that holds `session_id`'s conversation, if any.
    pub(super) fn holder(&self, session_id: &str) -> Option<String> {
        self.lock().get(session_id).cloned()
    }

    /// Whether a terminal holds `session_id`'s conversation (its actor takes no message).
    pub(super) fn is_held(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }
}
