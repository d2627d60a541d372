//! One session's actor: the only owner of its CLI process. It takes the session's queued
//! messages one at a time in id order, writes each as a stdin line, logs every stdout line
//! as a numbered event, and ends each turn in exactly one terminal state.

use std::{io, sync::Arc, time::Duration};

use serde_json::json;
use tokio::{
    sync::{broadcast, mpsc, watch, Notify, OwnedSemaphorePermit},
    time::Instant,
};
use tracing::Instrument;

use super::{Control, ProcessInfo, ProcessState, Sessions};
use crate::{
    agent::{
        process::{AgentProcess, Line},
        Launch, Parsed, Signal, TurnResult,
    },
    push::{self, Audience, PushEvent, PushKind},
    store::{self, events, events::EventRow, messages, messages::Status, sessions},
};

/// One entry of a session's event log, as live listeners get it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub seq: i64,
    pub kind: String,
    pub data: Arc<str>,
}

impl From<events::EventRow> for LiveEvent {
    fn from(e: events::EventRow) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            data: e.data.into(),
        }
    }
}

/// Characters of an invalid or cut line quoted in its event and log line.
const PREVIEW_CHARS: usize = 200;
/// Wait before looking at the queue again after a database error.
const DB_RETRY: Duration = Duration::from_secs(1);
/// How often a turn waiting for a process slot asks again for an idle one to be evicted.
const SLOT_RETRY: Duration = Duration::from_millis(250);

/// The process and what it holds.
struct Live {
    process: AgentProcess,
    /// The process-count slot, given back when the process goes.
    _slot: OwnedSemaphorePermit,
    /// Claude reports cost summed over the life of a process: what was already counted.
    cost_so_far: f64,
}

/// How a turn ended, ready to store.
struct TurnEnd<'a> {
    outcome: messages::Outcome<'a>,
    /// The reply, for a completed turn.
    reply: Option<&'a TurnResult>,
    /// The conversation id the CLI reported.
    conversation_id: Option<&'a str>,
    /// The agent's `result` line, numbered, stored with the end.
    line: Option<EventRow>,
}

/// Why the actor's loop stops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Exit {
    Shutdown(Instant),
    Ended,
}

pub(super) struct Actor {
    id: String,
    sessions: Sessions,
    ctl: mpsc::Receiver<Control>,
    wake: Arc<Notify>,
    events: broadcast::Sender<LiveEvent>,
    process_tx: watch::Sender<ProcessInfo>,
    next_seq: i64,
    live: Option<Live>,
    exit: Option<Exit>,
    interrupts_sent: u64,
    /// Who hears about this session, set once the session is loaded (before any turn).
    audience: Option<Audience>,
}

impl Actor {
    pub(super) fn new(
        id: String,
        sessions: Sessions,
        ctl: mpsc::Receiver<Control>,
        wake: Arc<Notify>,
        events: broadcast::Sender<LiveEvent>,
        process_tx: watch::Sender<ProcessInfo>,
    ) -> Self {
        Self {
            id,
            sessions,
            ctl,
            wake,
            events,
            process_tx,
            next_seq: 0,
            live: None,
            exit: None,
            interrupts_sent: 0,
            audience: None,
        }
    }

    fn store(&self) -> &store::Store {
        &self.sessions.deps().store
    }

    fn pool(&self) -> &sqlx::SqlitePool {
        self.store().pool()
    }

    pub(super) async fn run(self) {
        let span = tracing::info_span!("session", session_id = %self.id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        match sessions::get(self.pool(), &self.id).await {
            Ok(Some(s)) if s.is_active() => self.audience = Some(Audience::of(&s)),
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "could not load session");
                return;
            }
        }
        self.next_seq = match events::last_seq(self.pool(), &self.id).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "could not read event log");
                return;
            }
        };
        while self.exit.is_none() {
            match messages::next_queued(self.pool(), &self.id).await {
                Ok(Some(msg)) => {
                    self.turn(msg).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "could not read the queue");
                    tokio::time::sleep(DB_RETRY).await;
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                ctl = self.ctl.recv() => match ctl {
                    Some(Control::Interrupt(reply)) => { let _ = reply.send(false); }
                    Some(Control::Evict) => self.stop_process("evicted to free a process slot").await,
                    Some(Control::Shutdown(deadline)) => self.exit = Some(Exit::Shutdown(deadline)),
                    Some(Control::End) | None => self.exit = Some(Exit::Ended),
                },
                line = next_line(&mut self.live) => self.idle_line(line).await,
            }
        }
        let reason = match self.exit {
            Some(Exit::Ended) => "session ended",
            _ => "tether is shutting down",
        };
        self.stop_process(reason).await;
    }

    /// Output from a process that has no turn: stray lines are logged; EOF means it died.
    async fn idle_line(&mut self, line: Option<io::Result<Line>>) {
        match line {
            Some(Ok(line)) => {
                // A stray `result` outside a turn ends nothing; it is only logged.
                if let Some((_, Some(row))) = self.on_line(line).await {
                    self.log(row).await;
                }
            }
            _ => {
                let Some(live) = self.live.take() else { return };
                let reason = self.reap(live).await;
                tracing::warn!(%reason, "agent process exited while idle");
                self.emit_tether(
                    "process_exited",
                    json!({"reason": reason, "duringTurn": false}),
                )
                .await;
                self.notify_owner(PushKind::ProcessExited, None, &reason)
                    .await;
            }
        }
    }

    /// Runs one turn for a queued user message, to exactly one terminal state.
    async fn turn(&mut self, msg: messages::MessageRow) {
        match self.start_turn(&msg).await {
            Ok(true) => {}
            Ok(false) => return, // cancelled meanwhile
            Err(e) => {
                tracing::error!(error = %e, "could not start turn");
                tokio::time::sleep(DB_RETRY).await;
                return;
            }
        }
        let started = Instant::now();
        tracing::info!(message_id = msg.id, "turn started");

        if self.live.is_none() {
            if let Err(reason) = self.start_process().await {
                self.fail(&msg, Status::Failed, &reason, started).await;
                return;
            }
        }
        self.set_state(ProcessState::Busy);
        if let Err(e) = sessions::mark_transcript_started(self.pool(), &self.id).await {
            tracing::error!(error = %e, "could not record the transcript start");
        }
        let line = self.sessions.deps().agent.user_line(&msg.text);
        if self.write(&line).await.is_err() {
            self.died_mid_turn(&msg, started).await;
            return;
        }

        let settings = &self.sessions.deps().agent_settings;
        let (timeout, interrupt_grace) = (settings.turn_timeout(), settings.interrupt_grace());
        let timeout_at = started + timeout;
        let mut interrupted_at: Option<Instant> = None;
        loop {
            let mut deadline = timeout_at;
            if let Some(at) = interrupted_at {
                deadline = deadline.min(at + interrupt_grace);
            }
            if let Some(Exit::Shutdown(at)) = self.exit {
                deadline = deadline.min(at);
            }
            tokio::select! {
                line = next_line(&mut self.live) => match line {
                    Some(Ok(line)) => {
                        if let Some((result, line)) = self.on_line(line).await {
                            self.settle(&msg, result, line, interrupted_at.is_some(), started).await;
                            return;
                        }
                    }
                    _ => {
                        self.died_mid_turn(&msg, started).await;
                        return;
                    }
                },
                ctl = self.ctl.recv() => match ctl {
                    Some(Control::Interrupt(reply)) => {
                        let sent = self.send_interrupt().await;
                        if sent && interrupted_at.is_none() {
                            interrupted_at = Some(Instant::now());
                        }
                        let _ = reply.send(true);
                        if !sent {
                            // No interrupt line for this agent, or the pipe is gone: stop it.
                            self.kill_process().await;
                            self.fail(&msg, Status::Interrupted, "interrupted", started).await;
                            return;
                        }
                    }
                    Some(Control::Evict) => {}
                    Some(Control::Shutdown(at)) => self.exit = Some(Exit::Shutdown(at)),
                    Some(Control::End) | None => {
                        self.exit = Some(Exit::Ended);
                        self.kill_process().await;
                        self.fail(&msg, Status::Interrupted, "the session was ended during the turn", started).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    self.kill_process().await;
                    let (status, reason) = if interrupted_at.is_some() {
                        (Status::Interrupted, "interrupted; the agent did not stop in time and its process was stopped".to_string())
                    } else if matches!(self.exit, Some(Exit::Shutdown(_))) {
                        (Status::Interrupted, "tether shut down during this turn; send the message again to retry".to_string())
                    } else {
                        (Status::Failed, format!("the turn took longer than {}s; the agent process was stopped", timeout.as_secs()))
                    };
                    tracing::warn!(%reason, "turn cut off");
                    self.fail(&msg, status, &reason, started).await;
                    return;
                }
            }
        }
    }

    /// Starts a process for this session: `--resume` once the CLI has seen a turn.
    async fn start_process(&mut self) -> Result<(), String> {
        let deps = self.sessions.deps();
        let slot = self.take_slot().await?;
        let session = sessions::get(self.pool(), &self.id)
            .await
            .map_err(|e| format!("database error: {e}"))?
            .ok_or("the session no longer exists")?;
        let launch = Launch {
            conversation_id: session
                .agent_session_id
                .clone()
                .unwrap_or(session.id.clone()),
            cwd: session.project_path.clone().into(),
            resume: session.transcript_started,
        };
        self.set_state(ProcessState::Starting);
        let cmd = deps.agent.command(&launch);
        let settings = &deps.agent_settings;
        let process = AgentProcess::spawn(cmd, settings.max_line_bytes, settings.stderr_tail_lines)
            .map_err(|e| {
                self.set_state(ProcessState::None);
                format!("could not start the agent `{}`: {e}", settings.command)
            })?;
        let (pid, start_time) = (process.pid, process.start_time);
        if let Err(e) = sessions::set_process(self.pool(), &self.id, Some((pid, start_time))).await
        {
            tracing::error!(error = %e, "could not record the process");
        }
        metrics::counter!("tether_processes_started_total").increment(1);
        tracing::info!(pid, resume = launch.resume, "agent process started");
        self.live = Some(Live {
            process,
            _slot: slot,
            cost_so_far: 0.0,
        });
        self.emit_tether(
            "process_started",
            json!({"pid": pid, "resume": launch.resume}),
        )
        .await;
        Ok(())
    }

    /// A process slot: free, or freed by evicting the least recently used idle process.
    /// When every process is busy, waits, asking again as they finish their turns.
    async fn take_slot(&self) -> Result<OwnedSemaphorePermit, String> {
        let slots = self.sessions.inner.slots.clone();
        loop {
            match slots.clone().try_acquire_owned() {
                Ok(slot) => return Ok(slot),
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err("tether is shutting down".into())
                }
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
            }
            self.sessions.evict_one_idle(&self.id);
            if let Ok(Ok(slot)) =
                tokio::time::timeout(SLOT_RETRY, slots.clone().acquire_owned()).await
            {
                return Ok(slot);
            }
        }
    }

    /// Logs one stdout line as an event. The line that ends the turn is not logged here but
    /// returned, numbered, with the turn's end: it is stored with the reply (see [`Self::end_turn`]).
    async fn on_line(&mut self, line: Line) -> Option<(TurnResult, Option<EventRow>)> {
        let max = self.sessions.deps().agent_settings.max_line_bytes;
        if line.truncated {
            metrics::counter!("tether_agent_lines_truncated_total").increment(1);
            let preview = preview(&line.text);
            tracing::warn!(
                len = line.len,
                limit = max,
                "agent line over agent.max_line_bytes was cut"
            );
            self.emit_tether(
                "line_truncated",
                json!({"length": line.len, "limit": max, "preview": preview}),
            )
            .await;
            // A cut `result` still ends the turn: its text is lost, so the turn fails.
            if preview.contains(r#""type":"result""#) {
                let result = TurnResult {
                    is_error: true,
                    subtype: "line_too_long".into(),
                    text: format!(
                        "the agent's final answer was {} bytes, over agent.max_line_bytes ({max})",
                        line.len
                    ),
                    conversation_id: None,
                    cumulative_cost_usd: None,
                    duration_ms: None,
                    usage: None,
                };
                return Some((result, None));
            }
            return None;
        }
        match self.sessions.deps().agent.parse_line(&line.text) {
            Parsed::Invalid => {
                metrics::counter!("tether_agent_lines_invalid_total").increment(1);
                let preview = preview(&line.text);
                tracing::warn!(%preview, "agent printed a line that is not JSON");
                self.emit_tether("invalid_line", json!({"preview": preview}))
                    .await;
                None
            }
            Parsed::Event { kind, signal } => match signal {
                Signal::TurnDone(result) => Some((*result, Some(self.stage(kind, line.text)))),
                Signal::None => {
                    self.emit(kind, line.text).await;
                    None
                }
            },
        }
    }

    /// Ends a turn at the agent's `result` (`line`: that line, numbered, to store with it).
    async fn settle(
        &mut self,
        msg: &messages::MessageRow,
        result: TurnResult,
        line: Option<EventRow>,
        interrupted: bool,
        started: Instant,
    ) {
        let cost = match (self.live.as_mut(), result.cumulative_cost_usd) {
            (Some(live), Some(total)) => {
                let turn = (total - live.cost_so_far).max(0.0);
                live.cost_so_far = total;
                turn
            }
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
        };
        self.end_turn(msg, end).await;
    }

    /// Ends a turn without a `result` from the agent.
    async fn fail(
        &mut self,
        msg: &messages::MessageRow,
        status: Status,
        reason: &str,
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
        };
        self.end_turn(msg, end).await;
    }

    /// Stores the end of a turn, then hands its events to live listeners.
    async fn end_turn(&mut self, msg: &messages::MessageRow, end: TurnEnd<'_>) {
        let status = end.outcome.status;
        match self.store_end(msg, end).await {
            Ok(rows) => {
                for row in rows {
                    self.publish(row);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, message_id = msg.id, "could not store the turn's end")
            }
        }
        if self.live.is_some() {
            self.set_state(ProcessState::Idle);
        }
        tracing::info!(message_id = msg.id, ?status, "turn ended");
    }

    /// In one transaction: the agent's `result` line, the message's terminal state, its
    /// reply, the session's totals, the pushes about it, and tether's `turn_completed` or
    /// `turn_failed` event. Returns the events written.
    async fn store_end(
        &mut self,
        msg: &messages::MessageRow,
        end: TurnEnd<'_>,
    ) -> sqlx::Result<Vec<EventRow>> {
        let outcome = &end.outcome;
        let mut rows = Vec::with_capacity(2);
        let mut tx = self.store().begin_write().await?;
        if let Some(line) = end.line {
            events::append(&mut *tx, &line).await?;
            rows.push(line);
        }
        if !messages::finish(&mut *tx, msg.id, outcome).await? {
            // Already ended (by a shutdown sweep): a message ends once only.
            tx.commit().await?;
            return Ok(rows);
        }
        let reply_id = match end.reply {
            Some(r) => Some(
                messages::insert_reply(
                    &mut *tx,
                    &messages::Reply {
                        session_id: &self.id,
                        owner: &msg.owner,
                        reply_to: msg.id,
                        text: &r.text,
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
        sessions::record_turn(
            &mut *tx,
            &self.id,
            end.conversation_id,
            outcome.cost_usd.unwrap_or(0.0),
            outcome.now,
        )
        .await?;
        let push_kind = match outcome.status {
            Status::Completed => Some(PushKind::TurnCompleted),
            Status::Failed => Some(PushKind::TurnFailed),
            _ => None, // the user asked for the interrupt, or tether is stopping
        };
        if let (Some(kind), Some(audience)) = (push_kind, &self.audience) {
            let text = match end.reply {
                Some(r) => r.text.as_str(),
                None => outcome.error.unwrap_or_default(),
            };
            let event = PushEvent {
                kind,
                audience,
                message_id: Some(reply_id.unwrap_or(msg.id)),
                text,
            };
            push::enqueue(&mut tx, &event).await?;
        }
        let kind = if outcome.status == Status::Completed {
            "turn_completed"
        } else {
            "turn_failed"
        };
        let mut data = json!({"messageId": msg.id, "status": outcome.status});
        if let Some(cost) = outcome.cost_usd {
            data["costUsd"] = cost.into();
        }
        if let Some(id) = reply_id {
            data["replyId"] = id.into();
        }
        if let Some(e) = outcome.error {
            data["error"] = e.into();
        }
        let row = self.stage_tether(kind, data);
        events::append(&mut *tx, &row).await?;
        rows.push(row);
        tx.commit().await?;
        metrics::counter!("tether_turns_total", "status" => kind).increment(1);
        if push_kind.is_some() {
            self.sessions.deps().push_wake.notify_one();
        }
        Ok(rows)
    }

    /// The process closed stdout during a turn: the message fails with what it said last.
    async fn died_mid_turn(&mut self, msg: &messages::MessageRow, started: Instant) {
        let reason = match self.live.take() {
            Some(live) => self.reap(live).await,
            None => "the agent process is gone".to_string(),
        };
        self.emit_tether(
            "process_exited",
            json!({"reason": reason, "duringTurn": true}),
        )
        .await;
        let reason = format!(
            "{reason}; the next message starts a new process that resumes the conversation"
        );
        self.fail(msg, Status::Failed, &reason, started).await;
    }

    /// Waits for a process whose stdout closed, and says how it ended.
    async fn reap(&mut self, live: Live) -> String {
        let mut process = live.process;
        let grace = self.sessions.deps().agent_settings.stop_grace();
        let status = process.wait(grace).await;
        let tail = process.stderr_tail();
        let pid = process.pid;
        if status.is_none() {
            process.kill().await;
        }
        self.forget_process().await;
        metrics::counter!("tether_processes_exited_total").increment(1);
        let how = match status {
            Some(s) => format!("the agent process (pid {pid}) exited ({s})"),
            None => format!("the agent process (pid {pid}) closed its output and was killed"),
        };
        if tail.trim().is_empty() {
            how
        } else {
            format!("{how}: {}", tail.trim())
        }
    }

    /// Stops the process gracefully (close stdin, SIGTERM, SIGKILL), if there is one.
    async fn stop_process(&mut self, reason: &str) {
        let Some(live) = self.live.take() else { return };
        let pid = live.process.pid;
        let grace = self.sessions.deps().agent_settings.stop_grace();
        let status = live.process.stop(grace).await;
        tracing::info!(pid, reason, ?status, "agent process stopped");
        self.forget_process().await;
        self.emit_tether("process_stopped", json!({"pid": pid, "reason": reason}))
            .await;
    }

    /// Kills the process at once (a turn that must end now).
    async fn kill_process(&mut self) {
        let Some(live) = self.live.take() else { return };
        let pid = live.process.pid;
        live.process.kill().await;
        tracing::info!(pid, "agent process killed");
        self.forget_process().await;
        self.emit_tether("process_stopped", json!({"pid": pid, "reason": "killed"}))
            .await;
    }

    async fn forget_process(&mut self) {
        self.set_state(ProcessState::None);
        if let Err(e) = sessions::set_process(self.pool(), &self.id, None).await {
            tracing::error!(error = %e, "could not clear the recorded process");
        }
    }

    async fn write(&mut self, line: &str) -> io::Result<()> {
        match self.live.as_mut() {
            Some(live) => live.process.write_line(line).await,
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Writes the agent's interrupt request; false if it has none or the pipe is gone.
    async fn send_interrupt(&mut self) -> bool {
        self.interrupts_sent += 1;
        let request_id = format!("tether_interrupt_{}", self.interrupts_sent);
        let Some(line) = self.sessions.deps().agent.interrupt_line(&request_id) else {
            return false;
        };
        tracing::info!(request_id, "interrupting the turn");
        self.write(&line).await.is_ok()
    }

    /// Pushes to the owner about something that is not a turn's end (its own transaction).
    async fn notify_owner(&self, kind: PushKind, message_id: Option<i64>, text: &str) {
        let Some(audience) = &self.audience else {
            return;
        };
        let event = PushEvent {
            kind,
            audience,
            message_id,
            text,
        };
        let result: sqlx::Result<()> = async {
            // enqueue reads the owner's devices, then writes: take the write lock first.
            let mut tx = self.store().begin_write().await?;
            push::enqueue(&mut tx, &event).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => self.sessions.deps().push_wake.notify_one(),
            Err(e) => tracing::error!(error = %e, "could not queue a push"),
        }
    }

    fn set_state(&self, state: ProcessState) {
        let pid = self.live.as_ref().map(|l| l.process.pid);
        self.process_tx.send_replace(ProcessInfo {
            state,
            pid: if state == ProcessState::None {
                None
            } else {
                pid
            },
            last_used_ms: store::now_ms(),
        });
    }

    /// Marks the message running and logs `tether.turn_started`, in one transaction.
    /// False when the message is no longer queued (cancelled meanwhile).
    async fn start_turn(&mut self, msg: &messages::MessageRow) -> sqlx::Result<bool> {
        let mut tx = self.store().begin_write().await?;
        if !messages::mark_running(&mut *tx, msg.id, store::now_ms()).await? {
            return Ok(false);
        }
        let row = self.stage_tether("turn_started", json!({"messageId": msg.id}));
        events::append(&mut *tx, &row).await?;
        tx.commit().await?;
        self.publish(row);
        Ok(true)
    }

    /// Logs one of tether's own events (`tether.<name>`).
    async fn emit_tether(&mut self, name: &str, data: serde_json::Value) {
        let row = self.stage_tether(name, data);
        self.log(row).await;
    }

    /// Logs an event: appended to the session's log, then handed to live listeners.
    async fn emit(&mut self, kind: String, data: String) {
        let row = self.stage(kind, data);
        self.log(row).await;
    }

    async fn log(&mut self, row: EventRow) {
        if let Err(e) = events::append(self.pool(), &row).await {
            tracing::error!(error = %e, seq = row.seq, "could not append event");
        }
        self.publish(row);
    }

    /// The next event of the log, numbered, not yet stored. A number whose row is never
    /// stored (a failed transaction) leaves a gap that listeners step over.
    fn stage(&mut self, kind: String, data: String) -> EventRow {
        self.next_seq += 1;
        EventRow {
            session_id: self.id.clone(),
            seq: self.next_seq,
            kind,
            data,
            created_at: store::now_ms(),
        }
    }

    fn stage_tether(&mut self, name: &str, mut data: serde_json::Value) -> EventRow {
        let kind = format!("tether.{name}");
        data["type"] = kind.clone().into();
        self.stage(kind, data.to_string())
    }

    /// Hands a stored event to live listeners.
    fn publish(&self, row: EventRow) {
        let _ = self.events.send(row.into());
    }
}

/// The next line of the process, or never when there is none.
async fn next_line(live: &mut Option<Live>) -> Option<io::Result<Line>> {
    match live {
        Some(live) => live.process.next_line().await,
        None => std::future::pending().await,
    }
}

fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}
