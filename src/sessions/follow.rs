//! Following one accepted message from outside its session's actor: the text its turn
//! writes, as it is written (live only), and its end, read from SQLite. Chat's `wait`, a
//! keep-alive's recap and the OpenAI-compatible endpoint all answer through it.

use serde::Deserialize;
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{
    handle::Sessions,
    log::{LiveEvent, Subscription, TEXT_DELTA},
};
use crate::{
    agent::TextDelta,
    store::{self, messages, messages::MessageRow, messages::Status},
};

/// What a [`TurnWatch`] saw next.
#[derive(Debug)]
pub enum Watched {
    /// Text the agent just wrote in this message's turn (never stored as such).
    Text(TextDelta),
    /// The message reached a terminal state: it, and its reply when it completed.
    Ended(Box<(MessageRow, Option<MessageRow>)>),
    /// The deadline passed, or the session's actor stopped, before the end: the message
    /// as it is now (its turn goes on, or waits for the next start).
    Pending(Box<MessageRow>),
}

/// One message's turn, followed on its session's live events.
pub struct TurnWatch {
    store: store::Store,
    message_id: i64,
    deadline: Instant,
    /// None once the session's actor stopped.
    events: Option<Subscription>,
    /// The message must be read again (at the start, after a turn ended or events were missed).
    look: bool,
    /// This message's turn is the one running: text deltas are its own.
    ours: bool,
}

impl std::fmt::Debug for TurnWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnWatch")
            .field("message_id", &self.message_id)
            .field("ours", &self.ours)
            .finish()
    }
}

/// The part of `tether.turn_started` a watch reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnStarted {
    message_id: i64,
}

impl Sessions {
    /// Follows message `message_id` of `session_id` until `deadline`, from now on. To see
    /// all of its text, start watching before its session's actor is woken (see
    /// `Message::watch_until`).
    pub fn watch(&self, session_id: &str, message_id: i64, deadline: Instant) -> TurnWatch {
        TurnWatch {
            store: self.deps().store.clone(),
            message_id,
            deadline,
            // Subscribing starts the session's actor if needed; it looks at its queue at once.
            events: self.subscribe(session_id),
            look: true,
            ours: false,
        }
    }

    /// [`Sessions::watch`] on `events`, subscribed before the message was committed:
    /// nothing of its turn can have happened before them, so it need not be read first.
    pub(super) fn watch_from_before(
        &self,
        events: Subscription,
        message_id: i64,
        deadline: Instant,
    ) -> TurnWatch {
        TurnWatch {
            store: self.deps().store.clone(),
            message_id,
            deadline,
            events: Some(events),
            look: false,
            ours: false,
        }
    }
}

impl TurnWatch {
    /// The next text of the turn, or its end, or [`Watched::Pending`] at the deadline.
    pub async fn next(&mut self) -> sqlx::Result<Watched> {
        loop {
            if std::mem::take(&mut self.look) {
                let (msg, reply) = self.current().await?;
                if msg.status.is_terminal() {
                    return Ok(Watched::Ended(Box::new((msg, reply))));
                }
                // Running: the turn is ours (one turn runs at a time in a session).
                self.ours |= msg.status == Status::Running;
                if self.events.is_none() {
                    return Ok(Watched::Pending(Box::new(msg)));
                }
            }
            let Some(events) = self.events.as_mut() else {
                self.look = true;
                continue;
            };
            match tokio::time::timeout_at(self.deadline, events.recv()).await {
                Err(_) => {
                    // Time is up: the message as it is now.
                    let (msg, reply) = self.current().await?;
                    return Ok(if msg.status.is_terminal() {
                        Watched::Ended(Box::new((msg, reply)))
                    } else {
                        Watched::Pending(Box::new(msg))
                    });
                }
                Ok(Ok(ev)) => {
                    // The end of this message's turn, as committed: no need to read it.
                    if let Some(ended) = ev.ended.as_ref().filter(|e| e.0.id == self.message_id) {
                        return Ok(Watched::Ended(Box::new(ended.as_ref().clone())));
                    }
                    if let Some(text) = self.read(&ev) {
                        return Ok(Watched::Text(text));
                    }
                }
                // Events were missed: the message may have changed meanwhile.
                Ok(Err(RecvError::Lagged(_))) => self.look = true,
                Ok(Err(RecvError::Closed)) => {
                    // The actor stopped: one last look.
                    self.events = None;
                    self.look = true;
                }
            }
        }
    }

    /// Waits for the end (or the deadline), skipping the text.
    pub async fn end(mut self) -> sqlx::Result<(MessageRow, Option<MessageRow>)> {
        loop {
            match self.next().await? {
                Watched::Text(_) => {}
                Watched::Ended(end) => return Ok(*end),
                Watched::Pending(msg) => return Ok((*msg, None)),
            }
        }
    }

    /// An event of the session: this turn's text, or a start or end that matters.
    fn read(&mut self, ev: &LiveEvent) -> Option<TextDelta> {
        match ev.kind.as_str() {
            TEXT_DELTA if self.ours => serde_json::from_str(&ev.data).ok(),
            "tether.turn_started" => {
                let started = serde_json::from_str::<TurnStarted>(&ev.data).ok();
                self.ours = started.is_some_and(|s| s.message_id == self.message_id);
                None
            }
            // Only a turn's end can have ended the message.
            "tether.turn_completed" | "tether.turn_failed" => {
                self.look = true;
                None
            }
            _ => None,
        }
    }

    async fn current(&self) -> sqlx::Result<(MessageRow, Option<MessageRow>)> {
        let (msg, reply) = messages::with_reply(self.store.pool(), self.message_id).await?;
        let msg = msg.ok_or(sqlx::Error::RowNotFound)?;
        Ok((msg, reply))
    }
}
