//! One writer per conversation: while a terminal runs a session's conversation in the
//! interactive CLI, the session's stream process is stopped (through its actor, as an idle
//! process is hibernated) and its actor takes no queued message; messages sent meanwhile
//! wait, and go on with `--resume` once the terminal lets go.

use tokio::sync::oneshot;

use super::{control::Control, handle::Sessions};

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

impl Sessions {
    /// Holds `session_id`'s conversation for `holder` (a terminal's id): its idle stream
    /// process is stopped before this returns, and no turn starts until [`Self::release`].
    /// Refused while a turn runs, or when another holder has it.
    pub async fn hold(&self, session_id: &str, holder: &str) -> Result<(), HoldRefused> {
        {
            let mut holds = self.holds();
            if let Some(other) = holds.get(session_id) {
                return Err(HoldRefused::Held(other.clone()));
            }
            holds.insert(session_id.to_string(), holder.to_string());
        }
        // From here on the actor takes no new message; one it already has answers busy.
        let (reply, stopped) = oneshot::channel();
        let ctl = self.with_actor(session_id, |h| h.ctl.clone());
        let answer = match ctl {
            None => Err(HoldRefused::Closing),
            Some(ctl) => match ctl.send(Control::Hold(reply)).await {
                // An actor that retired or ended meanwhile has no process left.
                Err(_) => Ok(()),
                Ok(()) => match stopped.await {
                    Ok(false) => Err(HoldRefused::TurnRunning),
                    Ok(true) | Err(_) => Ok(()),
                },
            },
        };
        if answer.is_err() {
            self.release(session_id, holder);
        } else {
            tracing::info!(session_id, holder, "conversation held by a terminal");
        }
        answer
    }

    /// Lets go of a conversation `holder` held: its waiting messages are taken again.
    pub fn release(&self, session_id: &str, holder: &str) {
        let released = {
            let mut holds = self.holds();
            let mine = holds.get(session_id).is_some_and(|h| h == holder);
            if mine {
                holds.remove(session_id);
            }
            mine
        };
        if released {
            tracing::info!(session_id, holder, "conversation released by its terminal");
            self.wake(session_id);
        }
    }

    /// The terminal that holds this session's conversation, if any.
    pub fn holder(&self, session_id: &str) -> Option<String> {
        self.holds().get(session_id).cloned()
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.inner.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the actor of `session_id` may take its next queued message.
    pub(super) fn is_held(&self, session_id: &str) -> bool {
        self.holds().contains_key(session_id)
    }
}
