//! One session's actor: the only owner of its CLI process. It takes the session's queued
//! messages one at a time in id order (each a `Turn`), handles output
//! and death of an idle process, and retires when it has no process, no work and no
//! listener. It composes the session's event log, its live process and the pending
//! approvals of the running turn.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use serde_json::json;
use tokio::{
    sync::{mpsc, watch, Notify},
    time::Instant,
};
use tracing::Instrument;

use super::{
    approvals::PendingApprovals,
    control::{Control, Gone, ProcessInfo, ProcessState},
    handle::{ActorHandle, Sessions},
    log::{EventLog, LiveRing},
    process::LiveProcess,
    read::{read_line, Read},
};
use crate::{
    agent::process::Line,
    faults,
    push::{self, Audience, PushEvent, PushKind},
    store::{self, events, messages, sessions},
};

/// First wait before trying a failed database read again; it doubles up to `DB_RETRY_MAX`.
pub(super) const DB_RETRY: Duration = Duration::from_millis(200);
pub(super) const DB_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long an actor with no process, no work and no listener stays before it retires.
const LINGER: Duration = Duration::from_secs(2);

/// Why the actor's loop stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Exit {
    Shutdown(Instant),
    Ended,
}

pub(super) struct Actor {
    pub(super) id: String,
    pub(super) sessions: Sessions,
    pub(super) ctl: mpsc::Receiver<Control>,
    wake: Arc<Notify>,
    wakes: Arc<std::sync::atomic::AtomicU64>,
    generation: u64,
    pub(super) log: EventLog,
    process_tx: watch::Sender<ProcessInfo>,
    pub(super) live: Option<LiveProcess>,
    pub(super) exit: Option<Exit>,
    /// Control requests tether sent this actor's processes (their ids count up).
    requests_sent: u64,
    /// Who hears about this session, set once the session is loaded (before any turn).
    pub(super) audience: Option<Audience>,
    /// Permission requests of the running turn waiting for the owner, oldest first.
    pub(super) approvals: PendingApprovals,
    /// The wait before a message that could not be marked running is tried again; it
    /// doubles while the database cannot be written.
    pub(super) start_retry: Duration,
}

impl Actor {
    pub(super) fn new(
        id: String,
        sessions: Sessions,
        ctl: mpsc::Receiver<Control>,
        handle: &ActorHandle,
        process_tx: watch::Sender<ProcessInfo>,
    ) -> Self {
        Self {
            log: EventLog::new(id.clone(), handle.live.clone()),
            id,
            sessions,
            ctl,
            wake: handle.wake.clone(),
            wakes: handle.wakes.clone(),
            generation: handle.generation,
            process_tx,
            live: None,
            exit: None,
            requests_sent: 0,
            audience: None,
            approvals: PendingApprovals::default(),
            start_retry: DB_RETRY,
        }
    }

    pub(super) fn live_ring(&self) -> Arc<LiveRing> {
        self.log.live().clone()
    }

    pub(super) fn store(&self) -> &store::Store {
        &self.sessions.deps().store
    }

    pub(super) fn pool(&self) -> &sqlx::SqlitePool {
        self.store().pool()
    }

    pub(super) async fn run(self) {
        let span = tracing::info_span!("session", session_id = %self.id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        if !self.load().await {
            return;
        }
        let mut look = true;
        let mut retry = DB_RETRY;
        while self.exit.is_none() {
            let seen = self.wakes.load(Ordering::SeqCst);
            if look && self.sessions.is_held(&self.id) {
                look = false; // a terminal has the conversation; its release wakes us
            }
            if look {
                match messages::next_queued(self.pool(), &self.id).await {
                    Ok(Some(msg)) => {
                        self.turn(msg).await;
                        retry = DB_RETRY;
                        continue;
                    }
                    Ok(None) => look = false,
                    Err(e) => {
                        tracing::error!(error = %e, "could not read the queue; trying again");
                        self.pause(retry).await;
                        retry = (retry * 2).min(DB_RETRY_MAX);
                        continue;
                    }
                }
            }
            let idle = self.live.is_none();
            tokio::select! {
                _ = self.wake.notified() => look = true,
                ctl = self.ctl.recv() => self.idle_control(ctl).await,
                line = live_line(&mut self.live) => self.idle_line(line).await,
                _ = tokio::time::sleep(LINGER), if idle => {
                    if self.sessions.retire(&self.id, self.generation, seen) {
                        return;
                    }
                }
            }
        }
        let reason = match self.exit {
            Some(Exit::Ended) => "session ended",
            _ => "tether is shutting down",
        };
        self.stop_process(reason).await;
    }

    /// Loads the session and its log's position, trying again while the database fails.
    /// False when the actor has nothing to do (the session is gone or ended, or tether or
    /// the session stopped meanwhile).
    async fn load(&mut self) -> bool {
        let mut retry = DB_RETRY;
        loop {
            let loaded: sqlx::Result<_> = async {
                if faults::hit(faults::SESSION_LOAD, &self.id) {
                    return Err(sqlx::Error::PoolTimedOut);
                }
                let session = sessions::get(self.pool(), &self.id).await?;
                let last_seq = events::last_seq(self.pool(), &self.id).await?;
                Ok((session, last_seq))
            }
            .await;
            match loaded {
                Ok((Some(s), last_seq)) if s.is_active() => {
                    self.audience = Some(Audience::of(&s));
                    self.log.continue_after(last_seq);
                    return true;
                }
                Ok(_) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "could not load the session; trying again");
                    self.pause(retry).await;
                    retry = (retry * 2).min(DB_RETRY_MAX);
                    if self.exit.is_some() {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits `d`, still hearing controls (a stop ends the wait).
    pub(super) async fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while self.exit.is_none() {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                ctl = self.ctl.recv() => self.idle_control(ctl).await,
            }
        }
    }

    /// A control while no turn runs.
    pub(super) async fn idle_control(&mut self, ctl: Option<Control>) {
        match ctl {
            Some(Control::Interrupt(reply)) => {
                let _ = reply.send(false);
            }
            Some(Control::Stop(reason)) => self.stop_process(reason).await,
            Some(Control::Decide(d)) => {
                let _ = d.reply.send(Err(Gone)); // no turn: nothing waits for an answer
            }
            Some(Control::SetMode(mode, reply)) => self.send_permission_mode(mode, reply),
            Some(Control::Hold(reply)) => {
                self.stop_process("a terminal holds the conversation").await;
                let _ = reply.send(true);
            }
            Some(Control::Shutdown(deadline)) => self.exit = Some(Exit::Shutdown(deadline)),
            Some(Control::End) | None => self.exit = Some(Exit::Ended),
        }
    }

    /// Output from a process that has no turn: stray lines are logged; EOF means it died.
    async fn idle_line(&mut self, line: Option<io::Result<Line>>) {
        match line {
            Some(Ok(line)) => {
                // A stray `result` (or request) outside a turn ends nothing; it is only logged.
                match self.on_line(line) {
                    Read::Done(_, Some(row)) | Read::Asks(_, row) => self.log.hold(row),
                    Read::Done(_, None) | Read::Nothing => {}
                }
                self.log.flush(&self.sessions.deps().store).await;
            }
            _ => {
                let Some(live) = self.live.take() else { return };
                let reason = self.reap(live).await;
                tracing::warn!(%reason, "agent process exited while idle");
                let row = self.log.stage_tether(
                    "process_exited",
                    json!({"reason": reason, "duringTurn": false}),
                );
                self.log.log_now(&self.sessions.deps().store, row).await;
                self.notify_owner(PushKind::ProcessExited, None, &reason)
                    .await;
            }
        }
    }

    /// Pushes to the owner about something that is not a turn's end (its own transaction).
    pub(super) async fn notify_owner(&self, kind: PushKind, message_id: Option<i64>, text: &str) {
        let Some(audience) = &self.audience else {
            return;
        };
        let event = PushEvent::new(kind, audience, message_id, text);
        let result: sqlx::Result<()> = async {
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

    /// A new id for a control request tether sends the agent (`tether_<what>_<n>`).
    pub(super) fn next_request_id(&mut self, what: &str) -> String {
        self.requests_sent += 1;
        format!("tether_{what}_{}", self.requests_sent)
    }

    /// Reads one stdout line of the process (see [`read_line`]).
    pub(super) fn on_line(&mut self, line: Line) -> Read {
        let deps = self.sessions.deps();
        let max = deps.agent_settings.max_line_bytes;
        read_line(line, &*deps.agent, max, &mut self.log, self.live.as_mut())
    }

    pub(super) fn set_state(&self, state: ProcessState) {
        let pid = self.live.as_ref().map(LiveProcess::pid);
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
}

/// The next line of the process, or never when there is none.
pub(super) async fn live_line(live: &mut Option<LiveProcess>) -> Option<io::Result<Line>> {
    match live {
        Some(live) => live.next_line().await,
        None => std::future::pending().await,
    }
}
