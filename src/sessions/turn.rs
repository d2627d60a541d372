//! One turn, from a queued user message to exactly one terminal state. Every wait of a
//! turn (a process slot, the stdin write, the agent's lines, the deadlines) happens in one
//! `select!` that also hears interrupt, end and shutdown, so nothing blocks the actor. The
//! message becomes `running` when its line is handed to the CLI, after the wait for a slot
//! and the process start: a message that never reached the agent is still `queued`.

use std::{future::Future, io, pin::Pin};

use serde_json::json;
use tokio::{
    sync::{oneshot, OwnedSemaphorePermit},
    time::Instant,
};

use super::{
    actor::{live_line, Actor, Exit, DB_RETRY, DB_RETRY_MAX},
    finish::Cut,
    live::Read,
    slots, Control, ProcessState,
};
use crate::{
    agent::Launch,
    faults,
    store::{events, messages, messages::Status, sessions, spares},
};

type SlotWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, ()>> + Send>>;

/// Where a turn is.
enum Phase {
    /// Waiting for a process slot; the message is still queued.
    Slot(SlotWait),
    /// The line is being written; the message is still queued until it is.
    Write(oneshot::Receiver<io::Result<()>>),
    /// The agent has the message.
    Run,
}

enum Step {
    Slot(Result<OwnedSemaphorePermit, ()>),
    Written(io::Result<()>),
}

/// The next step of a waiting phase, or never for `Run`.
async fn step(phase: &mut Phase) -> Step {
    match phase {
        Phase::Slot(wait) => Step::Slot(wait.await),
        Phase::Write(written) => Step::Written(
            written
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::BrokenPipe.into())),
        ),
        Phase::Run => std::future::pending().await,
    }
}

impl Actor {
    /// Runs one turn for a queued user message, to exactly one terminal state (or, when
    /// tether stops before the agent had it, back to the queue for the next start).
    pub(super) async fn turn(&mut self, msg: messages::MessageRow) {
        let started = Instant::now();
        tracing::info!(message_id = msg.id, "turn started");
        let settings = &self.sessions.deps().agent_settings;
        let (timeout, interrupt_grace) = (settings.turn_timeout, settings.interrupt_grace);
        let stall_timeout = self.sessions.deps().session_settings.stall_timeout;
        // The last sign of life from the agent (any line; its api_retry lines too).
        let mut last_life = Instant::now();
        let mut stalled = false;
        // Since when the turn waits for the owner to answer a permission request.
        let mut owner_since: Option<Instant> = None;
        let mut running = false;
        // A live process (or the warm spare this new session was given) takes the message at
        // once; else the turn first waits for a slot.
        let (mut phase, mut timeout_at) = if self.live.is_some() || self.adopt_spare().await {
            match self.hand_over(&msg, &mut running).await {
                Some(p) => (p, Some(started + timeout)),
                None => return,
            }
        } else {
            (self.wait_for_slot(), None)
        };
        let mut interrupted_at: Option<Instant> = None;
        // A start the CLI refused (resumed without a conversation, or the reverse) is
        // tried once the other way.
        let mut retry_launch: Option<Launch> = None;
        let mut retried = false;
        loop {
            // A turn waiting for a person is neither stalled nor timed out: the time it
            // waits is added to its deadline once the wait is over.
            let waiting_for_owner = !self.approvals.is_empty();
            match (waiting_for_owner, owner_since) {
                (true, None) => owner_since = Some(Instant::now()),
                (false, Some(since)) => {
                    timeout_at = timeout_at.map(|t| t + since.elapsed());
                    owner_since = None;
                }
                _ => {}
            }
            let mut deadline = if waiting_for_owner { None } else { timeout_at };
            let mut cap = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
            if let Some(at) = interrupted_at {
                cap(at + interrupt_grace);
            }
            if let (Some(Exit::Shutdown(at)), Some(_)) = (self.exit, timeout_at) {
                cap(at);
            }
            let flush_at = if running { self.log.flush_due() } else { None };
            let reading = matches!(phase, Phase::Run);
            let stall_at = (reading && interrupted_at.is_none() && !waiting_for_owner)
                .then(|| last_life + stall_timeout);
            let auto_deny_at = if reading { self.auto_deny_at() } else { None };
            tokio::select! {
                next = step(&mut phase) => match next {
                    Step::Slot(Ok(slot)) => {
                        let launch = match retry_launch.take() {
                            Some(l) => Ok(l),
                            None => self.launch().await,
                        };
                        let process = match launch {
                            Ok(l) => self.start_process(l, slot).await,
                            Err(reason) => Err(reason),
                        };
                        if let Err(reason) = process {
                            self.fail(&msg, Status::Failed, &reason, started).await;
                            return;
                        }
                        match self.hand_over(&msg, &mut running).await {
                            Some(p) => phase = p,
                            None => return,
                        }
                        timeout_at = Some(Instant::now() + timeout);
                    }
                    Step::Slot(Err(())) => return, // shutting down: the message stays queued
                    Step::Written(Ok(())) => {
                        self.set_state(ProcessState::Busy);
                        self.mark_delivered(&msg).await;
                        last_life = Instant::now();
                        if faults::hit(faults::ACTOR_PANIC, &msg.text) {
                            panic!("injected fault: the actor panics mid-turn");
                        }
                        phase = Phase::Run;
                    }
                    Step::Written(Err(_)) => {
                        // stdin is gone: the process died before it read the message.
                        match self.after_death(&msg, started, &mut retried, &mut retry_launch).await {
                            Some(p) => phase = p,
                            None => return,
                        }
                    }
                },
                line = live_line(&mut self.live), if reading => match line {
                    Some(Ok(line)) => {
                        last_life = Instant::now();
                        let (result, row) = match self.on_line(line) {
                            Read::Nothing => continue,
                            Read::Asks(request, row) => {
                                self.ask(&msg, request, row).await;
                                continue;
                            }
                            Read::Done(result, row) => (result, row),
                        };
                        let launch = self.live.as_ref().map(|l| l.launch.clone());
                        if result.is_error {
                            if let Some(l) = self.other_way(launch, &result.text, &mut retried) {
                                if let Some(row) = row {
                                    self.log.hold(row);
                                }
                                let _ = self.process_died().await;
                                retry_launch = Some(l);
                                phase = self.wait_for_slot();
                                continue;
                            }
                        }
                        if stalled && result.is_error {
                            // The agent stopped at our interrupt: the turn failed as stalled.
                            if let Some(row) = row {
                                self.log.hold(row);
                            }
                            self.cut(&msg, Cut::Stalled(stall_timeout), started).await;
                            return;
                        }
                        self.settle(&msg, result, row, interrupted_at.is_some(), started).await;
                        return;
                    }
                    _ => {
                        match self.after_death(&msg, started, &mut retried, &mut retry_launch).await {
                            Some(p) => phase = p,
                            None => return,
                        }
                    }
                },
                ctl = self.ctl.recv() => match ctl {
                    Some(Control::Interrupt(reply)) => {
                        let _ = reply.send(true);
                        if !running {
                            // The agent never had it: nothing to stop but our own waiting.
                            self.kill_process().await;
                            self.fail(&msg, Status::Interrupted, "interrupted before the agent read the message", started).await;
                            return;
                        }
                        let sent = self.send_interrupt();
                        if sent && interrupted_at.is_none() {
                            interrupted_at = Some(Instant::now());
                        }
                        if !sent {
                            // No interrupt line for this agent, or the pipe is gone: stop it.
                            self.kill_process().await;
                            self.fail(&msg, Status::Interrupted, "interrupted", started).await;
                            return;
                        }
                    }
                    Some(Control::Stop(_)) => {} // busy: it stays
                    Some(Control::Hold(reply)) => {
                        let _ = reply.send(false); // the agent has the conversation
                    }
                    Some(Control::Decide(d)) => {
                        self.answer(d).await;
                        last_life = Instant::now();
                    }
                    Some(Control::SetMode(mode, reply)) => self.send_permission_mode(mode, reply),
                    Some(Control::Shutdown(at)) => {
                        self.exit = Some(Exit::Shutdown(at));
                        if matches!(phase, Phase::Slot(_)) {
                            return; // the agent never had it: it stays queued
                        }
                    }
                    Some(Control::End) | None => {
                        self.exit = Some(Exit::Ended);
                        self.kill_process().await;
                        self.fail(&msg, Status::Interrupted, "the session was ended during the turn", started).await;
                        return;
                    }
                },
                _ = sleep_until(auto_deny_at) => {
                    self.auto_deny().await;
                    last_life = Instant::now();
                }
                _ = sleep_until(stall_at) => {
                    tracing::warn!(silent_for = ?stall_timeout, "turn stalled; interrupting it");
                    stalled = true;
                    if self.send_interrupt() {
                        interrupted_at = Some(Instant::now());
                    } else {
                        self.kill_process().await;
                        self.cut(&msg, Cut::Stalled(stall_timeout), started).await;
                        return;
                    }
                }
                _ = sleep_until(deadline) => {
                    self.kill_process().await;
                    let cut = if stalled {
                        Cut::Stalled(stall_timeout)
                    } else if interrupted_at.is_some() {
                        Cut::Interrupted
                    } else if matches!(self.exit, Some(Exit::Shutdown(_))) {
                        Cut::Shutdown
                    } else if matches!(phase, Phase::Write(_)) {
                        Cut::NotRead(timeout)
                    } else {
                        Cut::Timeout(timeout)
                    };
                    tracing::warn!(?cut, "turn cut off");
                    self.cut(&msg, cut, started).await;
                    return;
                }
                _ = sleep_until(flush_at) => self.log.flush(&self.sessions.deps().store).await,
            }
        }
    }

    /// The agent gets the message: it is marked running (once) and its line is handed to
    /// the process's writer. None when the turn is over (it was cancelled meanwhile).
    async fn hand_over(&mut self, msg: &messages::MessageRow, running: &mut bool) -> Option<Phase> {
        if !*running {
            match self.start_turn(msg).await {
                Ok(true) => {
                    *running = true;
                    self.start_retry = DB_RETRY;
                }
                Ok(false) => {
                    // Cancelled meanwhile (the session was ended).
                    self.kill_process().await;
                    self.log.flush(&self.sessions.deps().store).await;
                    return None;
                }
                Err(e) => {
                    // Not handed over: the message stays queued for another look.
                    tracing::error!(error = %e, "could not mark the message running");
                    self.pause(self.start_retry).await;
                    self.start_retry = (self.start_retry * 2).min(DB_RETRY_MAX);
                    return None;
                }
            }
        }
        Some(Phase::Write(self.write_message(msg)))
    }

    fn wait_for_slot(&self) -> Phase {
        self.set_state(ProcessState::Waiting);
        Phase::Slot(Box::pin(slots::take(
            self.sessions.clone(),
            self.id.clone(),
        )))
    }

    /// Hands the message's line to the process's writer.
    fn write_message(&self, msg: &messages::MessageRow) -> oneshot::Receiver<io::Result<()>> {
        let line = self.sessions.deps().agent.user_line(&msg.text);
        match &self.live {
            Some(live) => live.process.write_line(&line),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(io::ErrorKind::BrokenPipe.into()));
                rx
            }
        }
    }

    /// The launch to try the other way when the CLI's `output` says it refused how it was
    /// started; once per turn (`retried`).
    fn other_way(
        &self,
        launch: Option<Launch>,
        output: &str,
        retried: &mut bool,
    ) -> Option<Launch> {
        let launch =
            launch.filter(|l| !*retried && self.sessions.deps().agent.wrong_start(l, output))?;
        tracing::warn!(
            resume = launch.resume,
            "the agent refused how it was started for this conversation; starting it the other way"
        );
        *retried = true;
        Some(flipped(launch))
    }

    /// The process ended during the turn (stdout closed, or stdin refused the message):
    /// the phase that starts it again the other way, when it refused how it was started,
    /// or None once the message has failed with how it ended.
    async fn after_death(
        &mut self,
        msg: &messages::MessageRow,
        started: Instant,
        retried: &mut bool,
        retry_launch: &mut Option<Launch>,
    ) -> Option<Phase> {
        let (reason, launch) = self.process_died().await;
        match self.other_way(launch, &reason, retried) {
            Some(l) => {
                *retry_launch = Some(l);
                Some(self.wait_for_slot())
            }
            None => {
                self.fail_dead(msg, &reason, started).await;
                None
            }
        }
    }

    /// Marks the message running, records the process, and stores the held events and
    /// `tether.turn_started`, in one transaction. False when the message is no longer
    /// queued (cancelled meanwhile).
    async fn start_turn(&mut self, msg: &messages::MessageRow) -> sqlx::Result<bool> {
        let now = crate::store::now_ms();
        let (id, session_id) = (msg.id, self.id.clone());
        // The process, the first time it takes a turn (and the spare it was, if it was one).
        let process = self
            .live
            .as_ref()
            .filter(|l| !l.recorded)
            .map(|l| (l.process.pid, l.process.start_time, l.was_spare));
        let held = self.log.held();
        let mut numbering = self.log.numbering();
        let started = self
            .store()
            .write_unless(move |tx| {
                Box::pin(async move {
                    if !messages::mark_running(&mut *tx, id, now).await? {
                        return Ok(Err(()));
                    }
                    if let Some((pid, start_time, was_spare)) = process {
                        let process = Some((pid, start_time));
                        sessions::set_process(&mut *tx, &session_id, process).await?;
                        if was_spare {
                            spares::remove(&mut *tx, pid).await?;
                        }
                    }
                    let row = numbering.stage_tether("turn_started", json!({"messageId": id}));
                    events::append_all(tx, held.iter().chain([&row])).await?;
                    Ok(Ok((numbering, row)))
                })
            })
            .await?;
        let Ok((numbering, row)) = started else {
            return Ok(false);
        };
        self.log.stored_numbered(numbering, vec![row], None);
        if let Some(live) = self.live.as_mut() {
            live.recorded = true;
        }
        Ok(true)
    }

    /// Records that the agent has the message (its line is on the CLI's stdin): one small
    /// update, as no transaction of the turn falls at this point. A failure only loses the
    /// mark: the turn goes on, its end says completed or not, and a start after a crash asks
    /// the CLI's transcript.
    async fn mark_delivered(&self, msg: &messages::MessageRow) {
        let (id, now) = (msg.id, crate::store::now_ms());
        let marked = self
            .store()
            .write_alone(move |tx| Box::pin(messages::mark_delivered(tx, id, now)))
            .await;
        if let Err(e) = marked {
            tracing::warn!(error = %e, message_id = id, "could not record that the agent has the message");
        }
    }

    /// Writes the agent's interrupt request; false if it has none or stdin is gone.
    fn send_interrupt(&mut self) -> bool {
        let request_id = self.next_request_id("interrupt");
        let Some(line) = self.sessions.deps().agent.interrupt_line(&request_id) else {
            return false;
        };
        let Some(live) = &self.live else { return false };
        tracing::info!(request_id, "interrupting the turn");
        // Not waited for: a CLI that does not read gets the interrupt grace, then is killed.
        let mut written = live.process.write_line(&line);
        !matches!(written.try_recv(), Ok(Err(_)))
    }

    /// The process ended (stdout closed or stdin refused): reaps it and logs it. Returns
    /// how it ended and how it had been started.
    async fn process_died(&mut self) -> (String, Option<Launch>) {
        let Some(live) = self.live.take() else {
            return ("the agent process is gone".to_string(), None);
        };
        let launch = live.launch.clone();
        let reason = self.reap(live).await;
        let row = self.log.stage_tether(
            "process_exited",
            json!({"reason": reason, "duringTurn": true}),
        );
        self.log.hold(row);
        (reason, Some(launch))
    }
}

/// The same launch, the other way (`--resume` ↔ `--session-id`).
fn flipped(mut launch: Launch) -> Launch {
    launch.resume = !launch.resume;
    launch
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
