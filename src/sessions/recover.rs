//! Recovery after a start: CLI processes an earlier run left behind are stopped, its
//! pending approvals expire, queued work resumes, and the turns a crash left `running` are
//! ended by what the agent's own record says of them (for Claude: its transcript): one the
//! CLI finished is stored `completed` with the reply it wrote, one it had but did not
//! finish ends `interrupted` saying the agent had it, and one it never read ends
//! `interrupted` saying so.

use serde_json::json;
use sqlx::SqliteConnection;

use super::{
    handle::{Sessions, STOPPED_MID_TURN},
    log::Numbering,
};
use crate::{
    agent::{process, Launch, TurnRecord},
    push::{self, Audience, PushEvent, PushKind},
    store::{
        self, approvals,
        approvals::{ApprovalStatus, Scope},
        events, messages,
        messages::{MessageRow, Status},
        sessions,
    },
};

/// The reason of a turn the agent had received but not finished when tether stopped.
const RECEIVED: &str = "tether stopped while the agent was working on it; the agent had \
                        received it (resending it may repeat work it did)";
/// The reason of a turn whose message the agent never read.
const NOT_RECEIVED: &str =
    "tether stopped before the agent received this message; send it again to retry";

/// How a turn left running is ended.
struct Settled {
    status: Status,
    reason: Option<&'static str>,
    reply: Option<String>,
    /// The agent's record shows it had the message.
    received: bool,
}

impl Settled {
    fn from(record: Option<TurnRecord>) -> Self {
        let ended = |reason, received| Settled {
            status: Status::Interrupted,
            reason: Some(reason),
            reply: None,
            received,
        };
        match record {
            Some(TurnRecord::Finished { reply }) => Settled {
                status: Status::Completed,
                reason: None,
                reply: Some(reply),
                received: true,
            },
            Some(TurnRecord::Received) => ended(RECEIVED, true),
            Some(TurnRecord::NotReceived) => ended(NOT_RECEIVED, false),
            None => ended(STOPPED_MID_TURN, false),
        }
    }
}

impl Sessions {
    /// After a start: stops CLI processes an earlier run left behind, ends the turns it
    /// left `running` by what the agent's record says of them (see `recover`; telling their
    /// owners), and resumes queued work.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let pool = self.deps().store.pool();
        self.stop_orphan_spares().await?;
        for (id, pid, start_time) in sessions::with_recorded_process(pool).await? {
            let (pid, start_time) = (pid as u32, start_time as u64);
            if process::kill_orphan(pid, start_time).await {
                tracing::warn!(session_id = %id, pid, "stopped a CLI process left by an earlier run");
            }
            if !process::group_exists(pid) {
                sessions::set_process(pool, &id, None).await?;
            }
        }
        let expired = approvals::close_pending(
            pool,
            Scope::All,
            ApprovalStatus::Expired,
            "tether restarted while it waited; its turn was interrupted",
            store::now_ms(),
        )
        .await?;
        if !expired.is_empty() {
            tracing::warn!(
                count = expired.len(),
                "pending approvals expired by the restart"
            );
        }
        let left = self.settle_left_running().await?;
        if left > 0 {
            tracing::warn!(count = left, "turns left running by the last stop");
        }
        for id in messages::sessions_with_queued(pool).await? {
            self.wake(&id);
        }
        Ok(())
    }

    /// Ends every message a crash left `running` by what the agent's record says of it,
    /// telling its owner as the end of any turn would. Returns how many there were.
    pub(super) async fn settle_left_running(&self) -> anyhow::Result<usize> {
        let pool = self.deps().store.pool();
        let left = messages::list_running(pool).await?;
        for msg in &left {
            let Some(session) = sessions::get(pool, &msg.session_id).await? else {
                continue;
            };
            let launch = Launch {
                resume: true,
                ..Launch::of_session(&session, "")
            };
            let agent = self.deps().agent.clone();
            let (text, sent_at) = (msg.text.clone(), msg.started_at.unwrap_or(msg.created_at));
            let record =
                tokio::task::spawn_blocking(move || agent.read_turn(&launch, &text, sent_at))
                    .await
                    .unwrap_or(None);
            let settled = Settled::from(record);
            tracing::warn!(
                session_id = %msg.session_id,
                message_id = msg.id,
                status = settled.status.as_str(),
                agent_had_it = settled.received,
                "a turn left running by the last stop, settled from the agent's record"
            );
            let end = LeftRunning {
                msg: msg.clone(),
                conversation_id: session
                    .agent_session_id
                    .clone()
                    .unwrap_or(session.id.clone()),
                audience: Audience::of(&session),
                numbering: Numbering::after(
                    msg.session_id.clone(),
                    events::last_seq(pool, &msg.session_id).await?,
                ),
                settled,
                now: store::now_ms(),
            };
            let pushes = self
                .deps()
                .store
                .write(move |tx| Box::pin(end.store(tx)))
                .await?;
            if pushes > 0 {
                self.deps().push_wake.notify_one();
            }
        }
        Ok(left.len())
    }
}

/// A turn left running and how it ends, owned, for its write transaction.
struct LeftRunning {
    msg: MessageRow,
    conversation_id: String,
    audience: Audience,
    numbering: Numbering,
    settled: Settled,
    now: i64,
}

impl LeftRunning {
    /// In one transaction: the message's end (once only), its reply, the session's last
    /// activity, the owner's push and tether's end event. Returns the pushes queued.
    async fn store(mut self, tx: &mut SqliteConnection) -> sqlx::Result<u64> {
        let (id, now) = (self.msg.id, self.now);
        let outcome = messages::Outcome {
            status: self.settled.status,
            error: self.settled.reason,
            cost_usd: None,
            duration_ms: self.msg.started_at.map(|at| now - at),
            usage: None,
            now,
        };
        if messages::finish(&mut *tx, id, &outcome).await?.is_none() {
            return Ok(0); // it ended meanwhile
        }
        if self.settled.received {
            messages::mark_delivered(&mut *tx, id, now).await?;
        }
        let reply_id = match &self.settled.reply {
            Some(text) => {
                let reply = messages::Reply {
                    session_id: &self.msg.session_id,
                    owner: &self.msg.owner,
                    reply_to: id,
                    text,
                    cost_usd: 0.0,
                    duration_ms: outcome.duration_ms,
                    usage: None,
                    now,
                };
                let reply_id = messages::insert_reply(&mut *tx, &reply).await?.id;
                sessions::record_turn(
                    &mut *tx,
                    &self.msg.session_id,
                    Some(&self.conversation_id),
                    0.0,
                    now,
                )
                .await?;
                Some(reply_id)
            }
            None => None,
        };
        // As a turn that ends while tether runs: a reply is pushed as a reply.
        let (kind, text, about) = match (&self.settled.reply, reply_id) {
            (Some(reply), Some(reply_id)) => (PushKind::TurnCompleted, reply.as_str(), reply_id),
            _ => (
                PushKind::TurnInterrupted,
                self.settled.reason.unwrap_or_default(),
                id,
            ),
        };
        let event = PushEvent::new(kind, &self.audience, Some(about), text);
        let pushes = push::enqueue(&mut *tx, &event).await?;
        let mut data = json!({"messageId": id, "status": outcome.status, "recovered": true});
        match (reply_id, outcome.error) {
            (Some(reply_id), _) => data["replyId"] = reply_id.into(),
            (None, Some(e)) => data["error"] = e.into(),
            (None, None) => {}
        }
        let name = if reply_id.is_some() {
            "turn_completed"
        } else {
            "turn_failed"
        };
        let row = self.numbering.stage_tether(name, data);
        events::append_all(tx, [&row]).await?;
        Ok(pushes)
    }
}
