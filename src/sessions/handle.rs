//! The pool's handle ([`Sessions`], what the HTTP layer holds) and what it shares with
//! every actor: their dependencies, the map of running actors, the process slots and the
//! held conversations; asking an actor for something (an interrupt, a decision, a mode, a
//! hold); ending a session; and shutdown that stops and reaps every child.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch, Notify, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use super::{
    control::{Control, Decide, Gone, ModeApplied, ProcessInfo, ProcessState},
    duration::human_duration,
    hold::{HoldRefused, Holds},
    log::{LiveRing, Subscription},
    spare_pool,
    usage::Usage,
};
use crate::{
    agent::{Agent, AgentHealth, Decision},
    config::{AgentSettings, ApprovalSettings, LimitSettings, ProjectSettings, SessionSettings},
    push::{self, Audience, PushEvent, PushKind},
    store::{
        self, approvals,
        approvals::{ApprovalRow, ApprovalStatus, Scope},
        messages, sessions, Store,
    },
};

/// What every actor needs.
pub struct Deps {
    pub store: Store,
    pub agent: Arc<dyn Agent>,
    /// Probed again when a process cannot start (its command may have gone).
    pub agent_health: Arc<AgentHealth>,
    pub agent_settings: AgentSettings,
    pub session_settings: SessionSettings,
    /// Where new sessions may run.
    pub projects: ProjectSettings,
    pub limits: LimitSettings,
    pub approvals: ApprovalSettings,
    /// Wakes the push worker after a push row was committed.
    pub push_wake: Arc<Notify>,
}

#[derive(Clone)]
pub(super) struct ActorHandle {
    pub(super) ctl: mpsc::Sender<Control>,
    pub(super) wake: Arc<Notify>,
    /// Counts wakes, so an actor about to retire can tell that one came meanwhile.
    pub(super) wakes: Arc<AtomicU64>,
    pub(super) live: Arc<LiveRing>,
    pub(super) process: watch::Receiver<ProcessInfo>,
    /// Tells this actor from a later one of the same session.
    pub(super) generation: u64,
}

pub(super) struct Entry {
    pub(super) handle: ActorHandle,
    pub(super) join: JoinHandle<()>,
}

/// The handle the HTTP layer holds; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) deps: Deps,
    pub(super) actors: Mutex<HashMap<String, Entry>>,
    /// One permit per live process (`sessions.max_processes`); closed at shutdown.
    pub(super) slots: Arc<Semaphore>,
    pub(super) closing: AtomicBool,
    pub(super) generations: AtomicU64,
    /// Ends background loops at shutdown.
    pub(super) stop: watch::Sender<bool>,
    /// The last reading of each live process group, by session (see `resources`).
    pub(super) usage: Mutex<HashMap<String, Usage>>,
    /// Processes started ahead for new sessions (see `spares`).
    pub(super) spares: Mutex<spare_pool::Pool>,
    /// Conversations a terminal holds: session id → terminal id (see `hold`).
    pub(super) holds: Holds,
}

/// Capacity of an actor's control channel; controls are rare and read promptly.
pub(super) const CONTROL_CHANNEL: usize = 8;
/// How long after the shutdown's grace an actor may take to stop its process before it is
/// aborted (as long as the HTTP drain's margin).
pub(super) const ACTOR_STOP_MARGIN: Duration = Duration::from_secs(2);
/// The reason given to the owner for a turn cut off by a stop of tether.
pub(super) const STOPPED_MID_TURN: &str =
    "tether stopped during this turn; send the message again to retry";

impl Sessions {
    pub fn new(deps: Deps) -> Self {
        let slots = Arc::new(Semaphore::new(deps.session_settings.max_processes.max(1)));
        Self {
            inner: Arc::new(Inner {
                deps,
                actors: Mutex::new(HashMap::new()),
                slots,
                closing: AtomicBool::new(false),
                generations: AtomicU64::new(0),
                stop: watch::Sender::new(false),
                usage: Mutex::new(HashMap::new()),
                spares: Mutex::new(spare_pool::Pool::default()),
                holds: Holds::default(),
            }),
        }
    }

    pub(super) fn deps(&self) -> &Deps {
        &self.inner.deps
    }

    pub(super) fn actors(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // An actor that panicked never holds this lock; a poisoned one is still consistent.
        self.inner.actors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every message left `running` as `interrupted` and tells each owner, in one
    /// transaction. Returns how many there were.
    pub(super) async fn interrupt_running(&self, reason: &str) -> sqlx::Result<usize> {
        let mut tx = self.deps().store.begin_write().await?;
        let interrupted =
            messages::interrupt_all_running(&mut *tx, reason, store::now_ms()).await?;
        for m in &interrupted {
            tell_owner(
                &mut tx,
                &m.session_id,
                PushKind::TurnInterrupted,
                Some(m.id),
                reason,
            )
            .await?;
        }
        tx.commit().await?;
        if !interrupted.is_empty() {
            self.deps().push_wake.notify_one();
        }
        Ok(interrupted.len())
    }

    pub(super) fn usage(&self) -> MutexGuard<'_, HashMap<String, Usage>> {
        self.inner.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells a session's actor to look at its queue, starting the actor if needed.
    pub fn wake(&self, session_id: &str) {
        let wake = self.with_actor(session_id, |h| {
            h.wakes.fetch_add(1, Ordering::SeqCst);
            h.wake.clone()
        });
        if let Some(wake) = wake {
            wake.notify_one();
        }
    }

    /// Live events of a session from now on (the actor is started if needed).
    pub fn subscribe(&self, session_id: &str) -> Option<Subscription> {
        self.with_actor(session_id, |h| h.live.subscribe())
    }

    /// A subscription to the session's events if its actor is running; none is started.
    pub(super) fn subscribe_running(&self, session_id: &str) -> Option<Subscription> {
        let actors = self.actors();
        let actor = actors
            .get(session_id)
            .filter(|e| !e.handle.ctl.is_closed())?;
        Some(actor.handle.live.subscribe())
    }

    /// The state of a session's process.
    pub fn process_info(&self, session_id: &str) -> ProcessInfo {
        self.actors()
            .get(session_id)
            .map(|e| e.handle.process.borrow().clone())
            .unwrap_or_else(ProcessInfo::none)
    }

    /// Number of live CLI processes, warm spares included.
    pub fn live_processes(&self) -> usize {
        let sessions = self
            .actors()
            .values()
            .filter(|e| e.handle.process.borrow().state.is_live())
            .count();
        sessions + self.spare_pids().len()
    }

    /// Bytes held in memory for live listeners, over all sessions.
    pub fn live_bytes(&self) -> usize {
        self.actors()
            .values()
            .map(|e| e.handle.live.held_bytes())
            .sum()
    }

    /// Number of running actors (sessions with work, a process or a listener).
    pub fn live_actors(&self) -> usize {
        self.actors().len()
    }

    /// Interrupts the running turn; false when none was running.
    pub async fn interrupt(&self, session_id: &str) -> bool {
        let ctl = self.actors().get(session_id).map(|e| e.handle.ctl.clone());
        let Some(ctl) = ctl else { return false };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if ctl.send(Control::Interrupt(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Ends a session at its owner's request: see [`Self::end_session_as`].
    pub async fn end_session(&self, session_id: &str, reason: &str) -> sqlx::Result<bool> {
        self.end_session_as(session_id, sessions::STATE_ENDED, reason, store::now_ms())
            .await
    }

    /// Ends a session as `ended` or `expired`: in one transaction its state changes, its
    /// queued messages are cancelled and, when it expired, its owner's push is queued; then
    /// its actor stops its process (a running turn ends `interrupted`) and is waited for.
    /// False when it was not active (or, for an expiry, its end had moved past `now`).
    pub(crate) async fn end_session_as(
        &self,
        session_id: &str,
        state: &str,
        reason: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut tx = self.deps().store.begin_write().await?;
        if !sessions::end(&mut *tx, session_id, state, reason, now).await? {
            return Ok(false);
        }
        let expired = state == sessions::STATE_EXPIRED;
        let why = if expired {
            "the session expired"
        } else {
            "the session was ended"
        };
        let cancelled = messages::cancel_queued(&mut *tx, session_id, why, now).await?;
        approvals::close_pending(
            &mut *tx,
            Scope::Session(session_id),
            ApprovalStatus::Cancelled,
            why,
            now,
        )
        .await?;
        if expired {
            let text = "This session has ended. Its history stays readable; start a new \
                        session to continue.";
            tell_owner(&mut tx, session_id, PushKind::SessionExpired, None, text).await?;
        }
        tx.commit().await?;
        if expired {
            self.deps().push_wake.notify_one();
        }
        tracing::info!(session_id, cancelled, reason, state, "session ended");
        let entry = self.actors().remove(session_id);
        if let Some(entry) = entry {
            let _ = entry.handle.ctl.send(Control::End).await;
            let _ = entry.join.await;
        }
        Ok(true)
    }

    /// Decides a pending approval: handed to the actor whose turn holds it, which stores
    /// it and answers the agent. When no live turn holds it any more (its process or turn is
    /// gone), it is ended `expired` here. Returns the approval as it is afterwards, and
    /// whether this decision was the one taken.
    pub async fn decide(
        &self,
        row: &ApprovalRow,
        decision: Decision,
        by: &str,
        keep_mode: Option<String>,
    ) -> sqlx::Result<(ApprovalRow, bool)> {
        let taken = self
            .hand_decision(row, decision, by, keep_mode)
            .await
            .is_ok();
        let pool = self.deps().store.pool();
        if !taken {
            let why = "its agent process is gone";
            approvals::close_pending(
                pool,
                Scope::One(row.id),
                ApprovalStatus::Expired,
                why,
                store::now_ms(),
            )
            .await?;
        }
        let after = approvals::get(pool, row.id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((after, taken))
    }

    async fn hand_decision(
        &self,
        row: &ApprovalRow,
        decision: Decision,
        by: &str,
        keep_mode: Option<String>,
    ) -> Result<(), Gone> {
        let ctl = self
            .actors()
            .get(&row.session_id)
            .map(|e| e.handle.ctl.clone())
            .ok_or(Gone)?;
        let (reply, answer) = oneshot::channel();
        let decide = Decide {
            approval_id: row.id,
            decision,
            by: by.to_string(),
            keep_mode,
            reply,
        };
        ctl.send(Control::Decide(decide)).await.map_err(|_| Gone)?;
        answer.await.unwrap_or(Err(Gone))
    }

    /// Tells a live process of the session its new permission mode (stored by the caller)
    /// and waits, at most `agent.control_timeout`, for what the process answered.
    pub async fn apply_permission_mode(&self, session_id: &str, mode: &str) -> ModeApplied {
        let live = self
            .actors()
            .get(session_id)
            .filter(|e| e.handle.process.borrow().state.is_live())
            .map(|e| e.handle.ctl.clone());
        let Some(ctl) = live else {
            return ModeApplied::NoProcess;
        };
        let (reply, answer) = oneshot::channel();
        if ctl
            .send(Control::SetMode(mode.to_string(), reply))
            .await
            .is_err()
        {
            return ModeApplied::NoProcess;
        }
        let limit = self.deps().agent_settings.control_timeout;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(applied)) => applied,
            Ok(Err(_)) => ModeApplied::NotApplied("the process ended before it answered".into()),
            Err(_) => ModeApplied::NotApplied(format!(
                "the process did not answer within {} (agent.control_timeout)",
                human_duration(limit)
            )),
        }
    }

    /// Holds `session_id`'s conversation for `holder` (a terminal's id): its idle stream
    /// process is stopped before this returns, and no turn starts until [`Self::release`].
    /// Refused while a turn runs, or when another holder has it.
    pub async fn hold(&self, session_id: &str, holder: &str) -> Result<(), HoldRefused> {
        self.inner.holds.take(session_id, holder)?;
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
        if self.inner.holds.release(session_id, holder) {
            tracing::info!(session_id, holder, "conversation released by its terminal");
            self.wake(session_id);
        }
    }

    /// The terminal that holds this session's conversation, if any.
    pub fn holder(&self, session_id: &str) -> Option<String> {
        self.inner.holds.holder(session_id)
    }

    /// Whether the actor of `session_id` may take its next queued message.
    pub(super) fn is_held(&self, session_id: &str) -> bool {
        self.inner.holds.is_held(session_id)
    }

    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// A receiver that turns true when tether starts to stop (for background loops).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Stops every actor: no new process starts, running turns get `grace` to finish,
    /// then every process is stopped and reaped; whatever is still `running` becomes
    /// `interrupted` and its owner is told.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.slots.close();
        self.inner.stop.send_replace(true);
        let entries: Vec<Entry> = self.actors().drain().map(|(_, e)| e).collect();
        let deadline = Instant::now() + grace;
        for e in &entries {
            let _ = e.handle.ctl.send(Control::Shutdown(deadline)).await;
        }
        // An actor has until the grace is over (and its turn cut off) plus a margin: one
        // still running then (a child that does not stop) is aborted, its processes killed
        // as it drops, so that a stop always ends.
        let limit = deadline + ACTOR_STOP_MARGIN;
        for mut e in entries {
            if tokio::time::timeout_at(limit, &mut e.join).await.is_err() {
                tracing::warn!("a session actor did not stop in time; aborted");
                e.join.abort();
                let _ = e.join.await;
            }
        }
        self.stop_all_spares("tether is shutting down").await;
        match self.interrupt_running(STOPPED_MID_TURN).await {
            Ok(0) => {}
            Ok(left) => tracing::warn!(
                count = left,
                "turns still running at shutdown marked interrupted"
            ),
            Err(e) => tracing::error!(error = %e, "could not mark running turns at shutdown"),
        }
    }

    /// Every process that exists, least recently used first.
    pub(super) fn processes(&self) -> Vec<PoolProcess> {
        let mut all: Vec<PoolProcess> = self
            .actors()
            .iter()
            .filter_map(|(id, e)| {
                let p = e.handle.process.borrow();
                Some(PoolProcess {
                    session_id: id.clone(),
                    pid: p.pid.filter(|_| p.state.is_live())?,
                    state: p.state,
                    last_used_ms: p.last_used_ms,
                    ctl: e.handle.ctl.clone(),
                })
            })
            .collect();
        all.sort_by_key(|p| p.last_used_ms);
        all
    }

    /// Asks the least recently used idle process (not `except`'s) to stop, to free a slot.
    pub(super) fn evict_one_idle(&self, except: &str) -> bool {
        self.processes()
            .iter()
            .find(|p| p.is_idle() && p.session_id != except)
            .is_some_and(|p| p.stop("hibernated to free a process slot"))
    }
}

/// Queues, in `tx`, a push to the owner of `session_id` (looked up, for a path with no
/// actor holding its audience).
pub(super) async fn tell_owner(
    tx: &mut store::WriteTx,
    session_id: &str,
    kind: PushKind,
    message_id: Option<i64>,
    text: &str,
) -> sqlx::Result<()> {
    if let Some(session) = sessions::get(&mut **tx, session_id).await? {
        let audience = Audience::of(&session);
        push::enqueue(tx, &PushEvent::new(kind, &audience, message_id, text)).await?;
    }
    Ok(())
}

/// A session's process as the pool sees it, for the decisions to stop one.
pub(super) struct PoolProcess {
    pub(super) session_id: String,
    pub(super) pid: u32,
    pub(super) state: ProcessState,
    pub(super) last_used_ms: i64,
    pub(super) ctl: mpsc::Sender<Control>,
}

impl PoolProcess {
    pub(super) fn is_idle(&self) -> bool {
        self.state == ProcessState::Idle
    }

    /// Asks its actor to stop it if it is still idle then; true when asked.
    pub(super) fn stop(&self, reason: &'static str) -> bool {
        let asked = self.ctl.try_send(Control::Stop(reason)).is_ok();
        if asked {
            tracing::info!(session_id = %self.session_id, pid = self.pid, reason, "stopping an idle process");
        }
        asked
    }
}
