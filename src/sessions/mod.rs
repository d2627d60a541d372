//! The pool of live sessions: one actor task per session that has work or a process, the
//! process-count bound with least-recently-used eviction of idle processes, recovery after
//! a restart, and shutdown that stops and reaps every child.

mod actor;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::{broadcast, mpsc, watch, Notify, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    agent::{process, Agent},
    config::{AgentSettings, SessionSettings},
    push::{self, Audience, PushEvent, PushKind},
    store::{self, messages, sessions, Store},
};

pub use actor::LiveEvent;

/// What every actor needs.
pub struct Deps {
    pub store: Store,
    pub agent: Arc<dyn Agent>,
    pub agent_settings: AgentSettings,
    pub session_settings: SessionSettings,
    /// Wakes the push worker after a push row was committed.
    pub push_wake: Arc<Notify>,
}

/// Where a session's process is, as shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// No process: it starts (with `--resume` when needed) on the next message.
    None,
    Starting,
    Idle,
    Busy,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub state: ProcessState,
    pub pid: Option<u32>,
    /// When the process last finished a turn or started (ms), for eviction order.
    #[serde(skip)]
    pub last_used_ms: i64,
}

impl ProcessInfo {
    fn none() -> Self {
        Self {
            state: ProcessState::None,
            pid: None,
            last_used_ms: 0,
        }
    }
}

/// Messages to an actor besides "look at your queue" (which is a [`Notify`]).
enum Control {
    /// Interrupt the running turn; answers whether one was running.
    Interrupt(tokio::sync::oneshot::Sender<bool>),
    /// Stop the process if idle (another session needs its slot).
    Evict,
    /// tether is stopping: let a running turn finish until the deadline, then stop.
    Shutdown(Instant),
    /// The session was ended: stop now.
    End,
}

#[derive(Clone)]
struct ActorHandle {
    ctl: mpsc::Sender<Control>,
    wake: Arc<Notify>,
    events: broadcast::Sender<LiveEvent>,
    process: watch::Receiver<ProcessInfo>,
}

struct Entry {
    handle: ActorHandle,
    join: JoinHandle<()>,
}

/// The handle the HTTP layer holds; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    deps: Deps,
    actors: Mutex<HashMap<String, Entry>>,
    /// One permit per live process (`sessions.max_processes`).
    slots: Arc<Semaphore>,
    closing: AtomicBool,
}

/// Capacity of an actor's control channel; controls are rare and read promptly.
const CONTROL_CHANNEL: usize = 8;

impl Sessions {
    pub fn new(deps: Deps) -> Self {
        let slots = Arc::new(Semaphore::new(deps.session_settings.max_processes.max(1)));
        Self {
            inner: Arc::new(Inner {
                deps,
                actors: Mutex::new(HashMap::new()),
                slots,
                closing: AtomicBool::new(false),
            }),
        }
    }

    fn deps(&self) -> &Deps {
        &self.inner.deps
    }

    /// After a start: stops CLI processes an earlier run left behind, ends the turns it
    /// left `running` as `interrupted` (telling their owners), and resumes queued work.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let pool = self.deps().store.pool();
        for (id, pid, start_time) in sessions::with_recorded_process(pool).await? {
            let (pid, start_time) = (pid as u32, start_time as u64);
            if process::kill_orphan(pid, start_time) {
                tracing::warn!(session_id = %id, pid, "stopped a CLI process left by an earlier run");
            }
            sessions::set_process(pool, &id, None).await?;
        }
        let now = store::now_ms();
        let mut tx = self.deps().store.begin_write().await?;
        let interrupted = messages::interrupt_all_running(
            &mut *tx,
            "tether stopped during this turn; send the message again to retry",
            now,
        )
        .await?;
        for m in &interrupted {
            let session = sessions::get(&mut *tx, &m.session_id).await?;
            if let Some(session) = session {
                let event = PushEvent {
                    kind: PushKind::TurnInterrupted,
                    audience: &Audience::of(&session),
                    message_id: Some(m.id),
                    text: m.error.as_deref().unwrap_or_default(),
                };
                push::enqueue(&mut tx, &event).await?;
            }
        }
        tx.commit().await?;
        if !interrupted.is_empty() {
            tracing::warn!(
                count = interrupted.len(),
                "turns interrupted by the last stop"
            );
            self.deps().push_wake.notify_one();
        }
        for id in messages::sessions_with_queued(pool).await? {
            self.wake(&id);
        }
        Ok(())
    }

    /// Tells a session's actor to look at its queue, starting the actor if needed.
    pub fn wake(&self, session_id: &str) {
        if let Some(h) = self.handle(session_id) {
            h.wake.notify_one();
        }
    }

    /// Live events of a session from now on (the actor is started if needed).
    pub fn subscribe(&self, session_id: &str) -> Option<broadcast::Receiver<LiveEvent>> {
        self.handle(session_id).map(|h| h.events.subscribe())
    }

    /// The state of a session's process.
    pub fn process_info(&self, session_id: &str) -> ProcessInfo {
        let actors = self.inner.actors.lock().expect("actors lock");
        actors
            .get(session_id)
            .map(|e| e.handle.process.borrow().clone())
            .unwrap_or_else(ProcessInfo::none)
    }

    /// Number of live CLI processes.
    pub fn live_processes(&self) -> usize {
        let actors = self.inner.actors.lock().expect("actors lock");
        actors
            .values()
            .filter(|e| e.handle.process.borrow().state != ProcessState::None)
            .count()
    }

    /// Interrupts the running turn; false when none was running.
    pub async fn interrupt(&self, session_id: &str) -> bool {
        let ctl = {
            let actors = self.inner.actors.lock().expect("actors lock");
            actors.get(session_id).map(|e| e.handle.ctl.clone())
        };
        let Some(ctl) = ctl else { return false };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if ctl.send(Control::Interrupt(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stops a session's actor and process (a running turn ends `interrupted`) and waits
    /// for it. The caller marks the session ended first so nothing new is queued.
    pub async fn end(&self, session_id: &str) {
        let entry = self
            .inner
            .actors
            .lock()
            .expect("actors lock")
            .remove(session_id);
        if let Some(entry) = entry {
            let _ = entry.handle.ctl.send(Control::End).await;
            let _ = entry.join.await;
        }
    }

    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// Stops every actor: running turns get `grace` to finish, then every process is
    /// stopped and reaped; whatever is still `running` becomes `interrupted`.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let entries: Vec<Entry> = {
            let mut actors = self.inner.actors.lock().expect("actors lock");
            actors.drain().map(|(_, e)| e).collect()
        };
        let deadline = Instant::now() + grace;
        for e in &entries {
            let _ = e.handle.ctl.send(Control::Shutdown(deadline)).await;
        }
        for e in entries {
            let _ = e.join.await;
        }
        let pool = self.deps().store.pool();
        match messages::interrupt_all_running(
            pool,
            "tether shut down during this turn",
            store::now_ms(),
        )
        .await
        {
            Ok(left) if !left.is_empty() => {
                tracing::warn!(
                    count = left.len(),
                    "turns still running at shutdown marked interrupted"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not mark running turns at shutdown"),
        }
    }

    /// The actor of a session, started if it is not running. None while shutting down.
    fn handle(&self, session_id: &str) -> Option<ActorHandle> {
        if self.is_closing() {
            return None;
        }
        let mut actors = self.inner.actors.lock().expect("actors lock");
        if let Some(e) = actors.get(session_id) {
            if !e.handle.ctl.is_closed() {
                return Some(e.handle.clone());
            }
        }
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_CHANNEL);
        let (events, _) = broadcast::channel(self.deps().session_settings.event_buffer.max(16));
        let (process_tx, process_rx) = watch::channel(ProcessInfo::none());
        let handle = ActorHandle {
            ctl: ctl_tx,
            wake: Arc::new(Notify::new()),
            events: events.clone(),
            process: process_rx,
        };
        let actor = actor::Actor::new(
            session_id.to_string(),
            self.clone(),
            ctl_rx,
            handle.wake.clone(),
            events,
            process_tx,
        );
        let join = tokio::spawn(actor.run());
        actors.insert(
            session_id.to_string(),
            Entry {
                handle: handle.clone(),
                join,
            },
        );
        Some(handle)
    }

    /// Asks the least recently used idle process (not `except`'s) to stop, to free a slot.
    fn evict_one_idle(&self, except: &str) -> bool {
        let actors = self.inner.actors.lock().expect("actors lock");
        let victim = actors
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .filter_map(|(id, e)| {
                let p = e.handle.process.borrow();
                (p.state == ProcessState::Idle).then(|| (p.last_used_ms, id, e.handle.ctl.clone()))
            })
            .min_by_key(|(used, _, _)| *used);
        match victim {
            Some((_, id, ctl)) => {
                tracing::info!(session_id = %id, "evicting idle process to free a slot");
                ctl.try_send(Control::Evict).is_ok()
            }
            None => false,
        }
    }
}
