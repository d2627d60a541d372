//! One turn, from a queued user message to exactly one terminal state: [`Turn`] holds its
//! state (its message, where it is, its clocks), and the actor drives it. Every wait of a
//! turn (a process slot, the stdin write, the agent's lines, the deadlines) happens in one
//! `select!` that also hears interrupt, end and shutdown, so nothing blocks the actor. The
//! message becomes `running` when its line is handed to the CLI, after the wait for a slot
//! and the process start: a message that never reached the agent is still `queued`.

use std::{future::Future, io, pin::Pin, time::Duration};

use serde_json::json;
use tokio::{
    sync::{oneshot, OwnedSemaphorePermit},
    time::Instant,
};

use super::{
    actor::{live_line, Actor, Exit, DB_RETRY, DB_RETRY_MAX},
    control::{Control, ProcessState},
    read::Read,
    slots,
};
use crate::{
    agent::{Agent, Launch},
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

/// What a waiting phase came to.
enum Step {
    Slot(Result<OwnedSemaphorePermit, ()>),
    Written(io::Result<()>),
}

/// Why a turn was cut off without a `result`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cut {
    /// The user interrupted and the agent did not stop in time.
    Interrupted,
    /// tether is shutting down and the grace ran out.
    Shutdown,
    /// The agent did not read the message in time.
    NotRead(Duration),
    /// The turn ran past `agent.turn_timeout`.
    Timeout(Duration),
    /// No line from the agent for `sessions.stall_timeout`: interrupted, then stopped.
    Stalled(Duration),
}

/// The limits of a turn, read from the settings when it starts.
#[derive(Clone, Copy)]
struct Limits {
    /// `agent.turn_timeout`, from when the agent is handed the message.
    timeout: Duration,
    /// `agent.interrupt_grace`: how long the agent may take to stop at an interrupt.
    interrupt_grace: Duration,
    /// `sessions.stall_timeout`: the longest silence of the agent before it is interrupted.
    stall_timeout: Duration,
}

/// When the turn's waits end, as its clocks stand now.
struct Clocks {
    /// It is cut off (its timeout, the grace after an interrupt, the end of a shutdown).
    deadline: Option<Instant>,
    /// It counts as stalled and is interrupted.
    stall_at: Option<Instant>,
}

/// The state of one running turn.
pub(super) struct Turn {
    /// The queued user message it answers.
    msg: messages::MessageRow,
    /// When it began; its duration counts from here.
    started: Instant,
    limits: Limits,
    phase: Phase,
    /// The message is marked running (done once, when it is first handed over).
    running: bool,
    /// The last sign of life from the agent (any line; its api_retry lines too).
    last_life: Instant,
    /// It was interrupted for its silence: the agent's error `result` fails it as stalled.
    stalled: bool,
    /// When it times out (`agent.turn_timeout` after the agent was handed the message,
    /// moved on by the time it waited for the owner); None while it waits for a slot.
    timeout_at: Option<Instant>,
    /// Since when it waits for the owner to answer a permission request.
    owner_since: Option<Instant>,
    /// When it was interrupted (the agent then has `interrupt_grace` to stop).
    interrupted_at: Option<Instant>,
    /// A start the CLI refused, to be tried the other way once a slot is free.
    retry_launch: Option<Launch>,
    /// The other way was tried (once per turn).
    retried: bool,
}

impl Turn {
    /// A turn for `msg` that began at `started`, in `phase`.
    fn new(msg: messages::MessageRow, started: Instant, limits: Limits, phase: Phase) -> Self {
        Self {
            msg,
            started,
            limits,
            phase,
            running: false,
            last_life: started,
            stalled: false,
            timeout_at: None,
            owner_since: None,
            interrupted_at: None,
            retry_launch: None,
            retried: false,
        }
    }

    /// The next step of a waiting phase, or never once the agent has the message.
    async fn step(&mut self) -> Step {
        match &mut self.phase {
            Phase::Slot(wait) => Step::Slot(wait.await),
            Phase::Write(written) => Step::Written(
                written
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::BrokenPipe.into())),
            ),
            Phase::Run => std::future::pending().await,
        }
    }

    /// Whether the agent has the message (its lines are read).
    fn reading(&self) -> bool {
        matches!(self.phase, Phase::Run)
    }

    /// The agent showed a sign of life.
    fn alive(&mut self) {
        self.last_life = Instant::now();
    }

    /// Where its waits end now. A turn waiting for a person (`waiting_for_owner`) is
    /// neither stalled nor timed out: the time it waits is added to its timeout once the
    /// wait is over. `shutdown_at`: the end of tether's shutdown grace, if it stops.
    fn clocks(&mut self, waiting_for_owner: bool, shutdown_at: Option<Instant>) -> Clocks {
        match (waiting_for_owner, self.owner_since) {
            (true, None) => self.owner_since = Some(Instant::now()),
            (false, Some(since)) => {
                self.timeout_at = self.timeout_at.map(|t| t + since.elapsed());
                self.owner_since = None;
            }
            _ => {}
        }
        let mut deadline = if waiting_for_owner {
            None
        } else {
            self.timeout_at
        };
        let mut cap = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        if let Some(at) = self.interrupted_at {
            cap(at + self.limits.interrupt_grace);
        }
        if let (Some(at), Some(_)) = (shutdown_at, self.timeout_at) {
            cap(at);
        }
        let stall_at = (self.reading() && self.interrupted_at.is_none() && !waiting_for_owner)
            .then(|| self.last_life + self.limits.stall_timeout);
        Clocks { deadline, stall_at }
    }

    /// Why it is cut off at its deadline (`shutting_down`: tether stops).
    fn cut(&self, shutting_down: bool) -> Cut {
        if self.stalled {
            Cut::Stalled(self.limits.stall_timeout)
        } else if self.interrupted_at.is_some() {
            Cut::Interrupted
        } else if shutting_down {
            Cut::Shutdown
        } else if matches!(self.phase, Phase::Write(_)) {
            Cut::NotRead(self.limits.timeout)
        } else {
            Cut::Timeout(self.limits.timeout)
        }
    }

    /// The launch to try the other way when the CLI's `output` says it refused how it was
    /// started; once per turn.
    fn other_way(
        &mut self,
        agent: &dyn Agent,
        launch: Option<Launch>,
        output: &str,
    ) -> Option<Launch> {
        let launch = launch.filter(|l| !self.retried && agent.wrong_start(l, output))?;
        tracing::warn!(
            resume = launch.resume,
            "the agent refused how it was started for this conversation; starting it the other way"
        );
        self.retried = true;
        Some(flipped(launch))
    }
}

impl Actor {
    /// Runs one turn for a queued user message, to exactly one terminal state (or, when
    /// tether stops before the agent had it, back to the queue for the next start).
    pub(super) async fn turn(&mut self, msg: messages::MessageRow) {
        let started = Instant::now();
        tracing::info!(message_id = msg.id, "turn started");
        let deps = self.sessions.deps();
        let limits = Limits {
            timeout: deps.agent_settings.turn_timeout,
            interrupt_grace: deps.agent_settings.interrupt_grace,
            stall_timeout: deps.session_settings.stall_timeout,
        };
        // A live process (or the warm spare this new session was given) takes the message at
        // once (`hand_over` writes it next); else the turn first waits for a slot.
        let ready = self.live.is_some() || self.adopt_spare().await;
        let first = if ready {
            Phase::Run
        } else {
            self.wait_for_slot()
        };
        let mut turn = Turn::new(msg, started, limits, first);
        if ready {
            if !self.hand_over(&mut turn).await {
                return;
            }
            turn.timeout_at = Some(turn.started + limits.timeout);
        }
        loop {
            let shutdown_at = match self.exit {
                Some(Exit::Shutdown(at)) => Some(at),
                _ => None,
            };
            let clocks = turn.clocks(!self.approvals.is_empty(), shutdown_at);
            let flush_at = if turn.running {
                self.log.flush_due()
            } else {
                None
            };
            let reading = turn.reading();
            let auto_deny_at = if reading { self.auto_deny_at() } else { None };
            let goes_on = tokio::select! {
                next = turn.step() => self.on_step(&mut turn, next).await,
                line = live_line(&mut self.live), if reading => match line {
                    Some(Ok(line)) => self.on_turn_line(&mut turn, line).await,
                    _ => self.after_death(&mut turn).await,
                },
                ctl = self.ctl.recv() => self.turn_control(&mut turn, ctl).await,
                _ = sleep_until(auto_deny_at) => {
                    self.auto_deny().await;
                    turn.alive();
                    true
                }
                _ = sleep_until(clocks.stall_at) => self.on_stall(&mut turn).await,
                _ = sleep_until(clocks.deadline) => {
                    self.kill_process().await;
                    let cut = turn.cut(matches!(self.exit, Some(Exit::Shutdown(_))));
                    tracing::warn!(?cut, "turn cut off");
                    self.cut(&turn.msg, cut, turn.started).await;
                    false
                }
                _ = sleep_until(flush_at) => {
                    self.log.flush(&self.sessions.deps().store).await;
                    true
                }
            };
            if !goes_on {
                return;
            }
        }
    }

    /// A waiting phase came to its end: a slot (the process starts and is handed the
    /// message), or the message written. False when the turn is over.
    async fn on_step(&mut self, turn: &mut Turn, step: Step) -> bool {
        match step {
            Step::Slot(Ok(slot)) => {
                let launch = match turn.retry_launch.take() {
                    Some(l) => Ok(l),
                    None => self.launch().await,
                };
                let process = match launch {
                    Ok(l) => self.start_process(l, slot).await,
                    Err(reason) => Err(reason),
                };
                if let Err(reason) = process {
                    self.fail(&turn.msg, Status::Failed, &reason, turn.started)
                        .await;
                    return false;
                }
                if !self.hand_over(turn).await {
                    return false;
                }
                turn.timeout_at = Some(Instant::now() + turn.limits.timeout);
                true
            }
            Step::Slot(Err(())) => false, // shutting down: the message stays queued
            Step::Written(Ok(())) => {
                self.set_state(ProcessState::Busy);
                self.mark_delivered(&turn.msg).await;
                turn.alive();
                if faults::hit(faults::ACTOR_PANIC, &turn.msg.text) {
                    panic!("injected fault: the actor panics mid-turn");
                }
                turn.phase = Phase::Run;
                true
            }
            // stdin is gone: the process died before it read the message.
            Step::Written(Err(_)) => self.after_death(turn).await,
        }
    }

    /// A line of the agent during the turn. False when it ended the turn.
    async fn on_turn_line(&mut self, turn: &mut Turn, line: crate::agent::process::Line) -> bool {
        turn.alive();
        let (result, row) = match self.on_line(line) {
            Read::Nothing => return true,
            Read::Asks(request, row) => {
                self.ask(&turn.msg, request, row).await;
                return true;
            }
            Read::Done(result, row) => (result, row),
        };
        let launch = self.live.as_ref().map(|l| l.launch.clone());
        if result.is_error {
            let agent = self.sessions.deps().agent.clone();
            if let Some(l) = turn.other_way(&*agent, launch, &result.text) {
                if let Some(row) = row {
                    self.log.hold(row);
                }
                let _ = self.process_died().await;
                turn.retry_launch = Some(l);
                turn.phase = self.wait_for_slot();
                return true;
            }
        }
        if turn.stalled && result.is_error {
            // The agent stopped at our interrupt: the turn failed as stalled.
            if let Some(row) = row {
                self.log.hold(row);
            }
            let stall = Cut::Stalled(turn.limits.stall_timeout);
            self.cut(&turn.msg, stall, turn.started).await;
            return false;
        }
        let interrupted = turn.interrupted_at.is_some();
        self.settle(&turn.msg, result, row, interrupted, turn.started)
            .await;
        false
    }

    /// A control during the turn. False when it ended the turn.
    async fn turn_control(&mut self, turn: &mut Turn, ctl: Option<Control>) -> bool {
        let (msg, started) = (&turn.msg, turn.started);
        match ctl {
            Some(Control::Interrupt(reply)) => {
                let _ = reply.send(true);
                if !turn.running {
                    // The agent never had it: nothing to stop but our own waiting.
                    self.kill_process().await;
                    let why = "interrupted before the agent read the message";
                    self.fail(msg, Status::Interrupted, why, started).await;
                    return false;
                }
                let sent = self.send_interrupt();
                if sent && turn.interrupted_at.is_none() {
                    turn.interrupted_at = Some(Instant::now());
                }
                if !sent {
                    // No interrupt line for this agent, or the pipe is gone: stop it.
                    self.kill_process().await;
                    self.fail(msg, Status::Interrupted, "interrupted", started)
                        .await;
                    return false;
                }
                true
            }
            Some(Control::Stop(_)) => true, // busy: it stays
            Some(Control::Hold(reply)) => {
                let _ = reply.send(false); // the agent has the conversation
                true
            }
            Some(Control::Decide(d)) => {
                self.answer(d).await;
                turn.alive();
                true
            }
            Some(Control::SetMode(mode, reply)) => {
                self.send_permission_mode(mode, reply);
                true
            }
            Some(Control::Shutdown(at)) => {
                self.exit = Some(Exit::Shutdown(at));
                // The agent never had a message still waiting for a slot: it stays queued.
                !matches!(turn.phase, Phase::Slot(_))
            }
            Some(Control::End) | None => {
                self.exit = Some(Exit::Ended);
                self.kill_process().await;
                let why = "the session was ended during the turn";
                self.fail(msg, Status::Interrupted, why, started).await;
                false
            }
        }
    }

    /// The agent was silent for `sessions.stall_timeout`: it is interrupted, or, when it
    /// cannot be, stopped and the turn failed. False when the turn is over.
    async fn on_stall(&mut self, turn: &mut Turn) -> bool {
        let stall = turn.limits.stall_timeout;
        tracing::warn!(silent_for = ?stall, "turn stalled; interrupting it");
        turn.stalled = true;
        if self.send_interrupt() {
            turn.interrupted_at = Some(Instant::now());
            return true;
        }
        self.kill_process().await;
        self.cut(&turn.msg, Cut::Stalled(stall), turn.started).await;
        false
    }

    /// The agent gets the message: it is marked running (once) and its line is handed to
    /// the process's writer. False when the turn is over (it was cancelled meanwhile).
    async fn hand_over(&mut self, turn: &mut Turn) -> bool {
        if !turn.running {
            match self.start_turn(&turn.msg).await {
                Ok(true) => {
                    turn.running = true;
                    self.start_retry = DB_RETRY;
                }
                Ok(false) => {
                    // Cancelled meanwhile (the session was ended).
                    self.kill_process().await;
                    self.log.flush(&self.sessions.deps().store).await;
                    return false;
                }
                Err(e) => {
                    // Not handed over: the message stays queued for another look.
                    tracing::error!(error = %e, "could not mark the message running");
                    self.pause(self.start_retry).await;
                    self.start_retry = (self.start_retry * 2).min(DB_RETRY_MAX);
                    return false;
                }
            }
        }
        turn.phase = Phase::Write(self.write_message(&turn.msg));
        true
    }

    /// The wait for a process slot, shown as `waiting`.
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
            Some(live) => live.write_line(&line),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(io::ErrorKind::BrokenPipe.into()));
                rx
            }
        }
    }

    /// The process ended during the turn (stdout closed, or stdin refused the message):
    /// it is started again the other way, when it refused how it was started, else the
    /// message fails with how it ended. False when the turn is over.
    async fn after_death(&mut self, turn: &mut Turn) -> bool {
        let (reason, launch) = self.process_died().await;
        let agent = self.sessions.deps().agent.clone();
        match turn.other_way(&*agent, launch, &reason) {
            Some(l) => {
                turn.retry_launch = Some(l);
                turn.phase = self.wait_for_slot();
                true
            }
            None => {
                self.fail_dead(&turn.msg, &reason, turn.started).await;
                false
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
            .map(|l| (l.pid(), l.process.start_time, l.was_spare));
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
        live.send_line(&line)
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
