//! The end of a turn: its terminal state, reply, totals, pushes and events, stored in one
//! transaction; tried again while the disk is full or read-only (until tether stops), else a
//! bounded number of times, and failed with the reason if it still cannot be stored.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use sqlx::SqliteConnection;

use super::{
    actor::{Actor, Exit},
    control::ProcessState,
    duration::human_duration,
    log::{Ended, Numbering},
    turn::Cut,
};
use crate::{
    agent::TurnResult,
    faults,
    push::{self, Audience, PushEvent, PushKind},
    store::{
        self, approvals,
        approvals::{ApprovalStatus, Scope},
        events::{self, EventRow},
        messages,
        messages::Status,
        sessions,
    },
};

/// Attempts to store a turn's end before the message is failed for it.
const END_WRITE_ATTEMPTS: u32 = 4;
/// First wait between attempts; it doubles.
const END_WRITE_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts while the database cannot be written.
const END_WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How a turn ended, ready to store.
struct TurnEnd<'a> {
    outcome: messages::Outcome<'a>,
    /// The reply, for a completed turn.
    reply: Option<&'a TurnResult>,
    /// The conversation id the CLI reported.
    conversation_id: Option<&'a str>,
    /// The agent's `result` line, numbered, stored with the end.
    line: Option<EventRow>,
    /// What the owner's devices are told.
    push: Option<PushKind>,
}

impl Actor {
    /// Ends a turn at the agent's `result` (`line`: that line, numbered, to store with it).
    pub(super) async fn settle(
        &mut self,
        msg: &messages::MessageRow,
        result: TurnResult,
        line: Option<EventRow>,
        interrupted: bool,
        started: Instant,
    ) {
        let cost = match (self.live.as_mut(), result.cumulative_cost_usd) {
            (Some(live), Some(total)) => live.turn_cost(total),
            _ => 0.0,
        };
        let usage = result.usage.as_ref().map(|u| u.to_string());
        let duration_ms = result
            .duration_ms
            .or(Some(started.elapsed().as_millis() as i64));
        let (status, error) = if !result.is_error {
            (Status::Completed, None)
        } else if interrupted {
            (Status::Interrupted, Some("interrupted".to_string()))
        } else if result.text.trim().is_empty() {
            (
                Status::Failed,
                Some(format!(
                    "the agent ended the turn with an error ({})",
                    result.subtype
                )),
            )
        } else {
            (Status::Failed, Some(result.text.clone()))
        };
        let push = match status {
            Status::Completed => Some(PushKind::TurnCompleted),
            Status::Failed => Some(PushKind::TurnFailed),
            _ => None, // the user asked for the interrupt
        };
        let end = TurnEnd {
            outcome: messages::Outcome {
                status,
                error: error.as_deref(),
                cost_usd: Some(cost),
                duration_ms,
                usage: usage.as_deref(),
                now: store::now_ms(),
            },
            reply: (status == Status::Completed).then_some(&result),
            conversation_id: result.conversation_id.as_deref(),
            line,
            push,
        };
        self.end_turn(msg, end).await;
    }

    /// Ends a turn without a `result` from the agent.
    pub(super) async fn fail(
        &mut self,
        msg: &messages::MessageRow,
        status: Status,
        reason: &str,
        started: Instant,
    ) {
        let push = (status == Status::Failed).then_some(PushKind::TurnFailed);
        self.end_without_result(msg, status, reason, push, started)
            .await;
    }

    /// The process died during the turn: the message fails with what it said last.
    pub(super) async fn fail_dead(
        &mut self,
        msg: &messages::MessageRow,
        reason: &str,
        started: Instant,
    ) {
        let reason = format!(
            "{reason}; the next message starts a new process that resumes the conversation"
        );
        self.fail(msg, Status::Failed, &reason, started).await;
    }

    /// A turn cut off by a deadline (its process was killed).
    pub(super) async fn cut(&mut self, msg: &messages::MessageRow, cut: Cut, started: Instant) {
        let (status, reason, push) = match cut {
            Cut::Interrupted => (
                Status::Interrupted,
                "interrupted; the agent did not stop in time and its process was stopped"
                    .to_string(),
                None,
            ),
            Cut::Shutdown => (
                Status::Interrupted,
                "tether shut down during this turn; send the message again to retry".to_string(),
                Some(PushKind::TurnInterrupted),
            ),
            Cut::NotRead(t) => (
                Status::Failed,
                format!(
                    "the agent did not read the message within {}s; its process was stopped",
                    t.as_secs()
                ),
                Some(PushKind::TurnFailed),
            ),
            Cut::Stalled(t) => (
                Status::Failed,
                format!(
                    "stalled: no output from the agent for {}; the turn was interrupted and \
                     the next message resumes the conversation",
                    human_duration(t)
                ),
                Some(PushKind::TurnFailed),
            ),
            Cut::Timeout(t) => (
                Status::Failed,
                format!(
                    "the turn took longer than {}s; the agent process was stopped",
                    t.as_secs()
                ),
                Some(PushKind::TurnFailed),
            ),
        };
        self.end_without_result(msg, status, &reason, push, started)
            .await;
    }

    async fn end_without_result(
        &mut self,
        msg: &messages::MessageRow,
        status: Status,
        reason: &str,
        push: Option<PushKind>,
        started: Instant,
    ) {
        let end = TurnEnd {
            outcome: messages::Outcome {
                status,
                error: Some(reason),
                cost_usd: None,
                duration_ms: Some(started.elapsed().as_millis() as i64),
                usage: None,
                now: store::now_ms(),
            },
            reply: None,
            conversation_id: None,
            line: None,
            push,
        };
        self.end_turn(msg, end).await;
    }

    /// Stores the end of a turn, then hands its events to live listeners. A database that
    /// cannot be written (a full disk) is waited for, the end tried again until it is stored
    /// (reply and all) or tether stops: then the message stays `running` and the next start
    /// ends it `interrupted`. Any other error fails the message, with why, after a few tries.
    async fn end_turn(&mut self, msg: &messages::MessageRow, mut end: TurnEnd<'_>) {
        let status = end.outcome.status;
        let mut wait = END_WRITE_RETRY;
        let mut attempt = 0;
        let stored = loop {
            attempt += 1;
            let Err(e) = self.store_end(msg, &mut end).await else {
                break Some(true);
            };
            let storage = store::storage_fault(&e);
            metrics::counter!("tether_turn_end_write_failures_total").increment(1);
            tracing::error!(error = %e, message_id = msg.id, attempt, ?storage, "could not store the turn's end");
            if storage.is_none() && attempt >= END_WRITE_ATTEMPTS {
                break Some(false);
            }
            if !self.wait_to_retry(wait).await {
                break None;
            }
            wait = (wait * 2).min(END_WRITE_RETRY_MAX);
        };
        match stored {
            Some(true) => {}
            Some(false) => self.fail_unstored(msg).await,
            None => tracing::warn!(
                message_id = msg.id,
                "gave up storing the turn's end: tether stops; the next start ends it"
            ),
        }
        self.approvals.clear();
        if self.live.is_some() {
            self.set_state(ProcessState::Idle);
        }
        tracing::info!(message_id = msg.id, ?status, "turn ended");
    }

    /// The last resort when a turn's end cannot be stored: the message alone is failed
    /// (no reply, no events), tried until it is, the session ends or tether stops.
    async fn fail_unstored(&mut self, msg: &messages::MessageRow) {
        let reason = "tether could not store the end of this turn; send the message again";
        let mut wait = END_WRITE_RETRY;
        loop {
            let outcome = messages::Outcome {
                status: Status::Failed,
                error: Some(reason),
                cost_usd: None,
                duration_ms: None,
                usage: None,
                now: store::now_ms(),
            };
            let id = msg.id;
            let failed = self
                .store()
                .write_alone(move |tx| {
                    Box::pin(async move { messages::finish(tx, id, &outcome).await })
                })
                .await;
            match failed {
                Ok(failed) => {
                    // Already ended otherwise (a shutdown sweep, the session's end): said then.
                    if let Some(failed) = failed {
                        self.log.publish_unstored_end(failed);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, message_id = msg.id, "could not fail the message");
                    if !self.wait_to_retry(wait).await {
                        return; // the next start ends it `interrupted`
                    }
                    wait = (wait * 2).min(END_WRITE_RETRY_MAX);
                }
            }
        }
    }

    /// Waits `d` before a write of the turn's end is tried again, hearing controls meanwhile
    /// (a shutdown, an end of the session). False when it must not be tried again: the
    /// session was ended, or tether stops and the shutdown's grace is over.
    async fn wait_to_retry(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let give_up_at = match self.exit {
                None => None,
                Some(Exit::Ended) => return false,
                Some(Exit::Shutdown(at)) => Some(at),
            };
            if give_up_at.is_some_and(|at| at <= Instant::now()) {
                return false;
            }
            let wake = give_up_at.map_or(until, |at| at.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => if wake == until {
                    return true;
                },
                ctl = self.ctl.recv() => self.idle_control(ctl).await,
            }
        }
    }

    /// In one transaction: the events held since the last one, the agent's `result` line,
    /// the message's terminal state, its reply, the session's totals, the pushes about it,
    /// and tether's `turn_completed` or `turn_failed` event.
    async fn store_end(
        &mut self,
        msg: &messages::MessageRow,
        end: &mut TurnEnd<'_>,
    ) -> sqlx::Result<()> {
        if faults::hit(faults::TURN_END_WRITE, &msg.text) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        let o = &end.outcome;
        let write = EndWrite {
            session_id: self.id.clone(),
            message_id: msg.id,
            owner: msg.owner.clone(),
            status: o.status,
            error: o.error.map(str::to_string),
            cost_usd: o.cost_usd,
            duration_ms: o.duration_ms,
            usage: o.usage.map(str::to_string),
            now: o.now,
            reply: end.reply.map(|r| r.text.clone()),
            conversation_id: end.conversation_id.map(str::to_string),
            line: end.line.clone(),
            close_approvals: !self.approvals.is_empty(),
            push: end.push.zip(self.audience.clone()),
            held: self.log.held(),
            numbering: self.log.numbering(),
        };
        let stored = self
            .store()
            .write(move |tx| Box::pin(write.store(tx)))
            .await?;
        end.line = None;
        self.log
            .stored_numbered(stored.numbering, stored.rows, stored.message);
        if let Some(kind) = stored.kind {
            metrics::counter!("tether_turns_total", "status" => kind).increment(1);
            if stored.pushes > 0 {
                self.sessions.deps().push_wake.notify_one();
            }
        }
        Ok(())
    }
}

/// A turn's end, owned, for its write transaction.
struct EndWrite {
    session_id: String,
    message_id: i64,
    owner: String,
    status: Status,
    error: Option<String>,
    cost_usd: Option<f64>,
    duration_ms: Option<i64>,
    usage: Option<String>,
    now: i64,
    /// The reply's text, for a completed turn.
    reply: Option<String>,
    conversation_id: Option<String>,
    line: Option<EventRow>,
    /// The turn's permission requests still waiting end with it.
    close_approvals: bool,
    push: Option<(PushKind, Audience)>,
    /// Events held since the last transaction, stored first.
    held: Vec<EventRow>,
    numbering: Numbering,
}

/// What [`EndWrite::store`] committed.
struct EndStored {
    /// The numbering after the events it added.
    numbering: Numbering,
    rows: Vec<EventRow>,
    /// The kind of tether's end event; None when the message had already ended (once only).
    kind: Option<&'static str>,
    /// The message as it ended, and its reply.
    message: Option<Ended>,
    /// Pushes added about it.
    pushes: u64,
}

impl EndWrite {
    async fn store(mut self, tx: &mut SqliteConnection) -> sqlx::Result<EndStored> {
        let outcome = messages::Outcome {
            status: self.status,
            error: self.error.as_deref(),
            cost_usd: self.cost_usd,
            duration_ms: self.duration_ms,
            usage: self.usage.as_deref(),
            now: self.now,
        };
        let mut rows = Vec::with_capacity(2);
        let Some(ended) = messages::finish(&mut *tx, self.message_id, &outcome).await? else {
            // Already ended (by a shutdown sweep or an end of the session): once only.
            rows.extend(self.line);
            events::append_all(tx, self.held.iter().chain(&rows)).await?;
            return Ok(EndStored {
                numbering: self.numbering,
                rows,
                kind: None,
                message: None,
                pushes: 0,
            });
        };
        let reply = match &self.reply {
            Some(text) => Some(
                messages::insert_reply(
                    &mut *tx,
                    &messages::Reply {
                        session_id: &self.session_id,
                        owner: &self.owner,
                        reply_to: self.message_id,
                        text,
                        cost_usd: outcome.cost_usd.unwrap_or(0.0),
                        duration_ms: outcome.duration_ms,
                        usage: outcome.usage,
                        now: outcome.now,
                    },
                )
                .await?,
            ),
            None => None,
        };
        let reply_id = reply.as_ref().map(|r| r.id);
        if self.close_approvals {
            let (status, reason) = match outcome.status {
                Status::Failed => (
                    ApprovalStatus::Expired,
                    "the turn failed before it was answered",
                ),
                _ => (
                    ApprovalStatus::Cancelled,
                    "the turn ended before it was answered",
                ),
            };
            let turn = Scope::Turn(self.message_id);
            for id in approvals::close_pending(&mut *tx, turn, status, reason, outcome.now).await? {
                rows.push(self.numbering.stage_tether(
                    "approval_decided",
                    json!({"approvalId": id, "status": status, "decidedBy": "tether", "reason": reason}),
                ));
            }
        }
        if let Some(line) = &self.line {
            rows.push(match reply_id {
                Some(id) => without_reply_text(line, id),
                None => line.clone(),
            });
        }
        sessions::record_turn(
            &mut *tx,
            &self.session_id,
            self.conversation_id.as_deref(),
            outcome.cost_usd.unwrap_or(0.0),
            outcome.now,
        )
        .await?;
        let mut pushes = 0;
        if let Some((kind, audience)) = &self.push {
            let text = match &self.reply {
                Some(text) => text.as_str(),
                None => outcome.error.unwrap_or_default(),
            };
            let about = Some(reply_id.unwrap_or(self.message_id));
            pushes = push::enqueue(tx, &PushEvent::new(*kind, audience, about, text)).await?;
        }
        let kind = if outcome.status == Status::Completed {
            "turn_completed"
        } else {
            "turn_failed"
        };
        let mut data = json!({"messageId": self.message_id, "status": outcome.status});
        if let Some(cost) = outcome.cost_usd {
            data["costUsd"] = cost.into();
        }
        if let Some(id) = reply_id {
            data["replyId"] = id.into();
        }
        if let Some(e) = outcome.error {
            data["error"] = e.into();
        }
        rows.push(self.numbering.stage_tether(kind, data));
        events::append_all(tx, self.held.iter().chain(&rows)).await?;
        Ok(EndStored {
            numbering: self.numbering,
            rows,
            kind: Some(kind),
            message: Some((ended, reply)),
            pushes,
        })
    }
}

/// The `result` line as stored when its text is stored as the reply: the text is left out
/// and the reply's id put in its place, so a reply is not kept twice (the assistant lines
/// before it carry what the agent wrote as it wrote it).
fn without_reply_text(line: &EventRow, reply_id: i64) -> EventRow {
    let mut row = line.clone();
    if let Ok(serde_json::Value::Object(mut v)) = serde_json::from_str(&line.data) {
        v.remove("result");
        v.insert("replyId".into(), reply_id.into());
        row.data = serde_json::Value::Object(v).to_string();
    }
    row
}
