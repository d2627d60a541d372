//! A running terminal as tether holds it: its output ring, its viewers, its input queue and
//! size, its activity (for the end, the idle end and the "waiting" push), and the task that
//! waits for its program to end (by itself, or asked to) and records how it ended.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use portable_pty::MasterPty;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    pty::{self, ExitStatus},
    ring::{Ring, Slice},
};
use crate::{
    push::Audience,
    store::{self, terminals},
};

/// End requests queued for the task; one is enough, the rest are dropped.
const END_QUEUE: usize = 4;

/// How a terminal ended, as viewers and the API are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `exited` (by itself) or `killed` (tether ended it).
    pub state: &'static str,
    pub exit_code: Option<i64>,
    pub reason: String,
}

/// What is read of a live terminal for its view.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub cols: u16,
    pub rows: u16,
    pub viewers: usize,
    pub last_input_at: Option<i64>,
    pub last_output_at: Option<i64>,
    pub expires_at: i64,
    pub output_bytes: u64,
}

/// The parts that change while it runs.
struct State {
    cols: u16,
    rows: u16,
    viewers: usize,
    last_input_at: Option<i64>,
    last_output_at: Option<i64>,
    /// When a viewer last attached or left (or the terminal started): idle time counts from
    /// the later of this and the last output.
    last_seen_at: i64,
    expires_at: i64,
    /// Output came that no viewer saw and no "waiting" push told of yet.
    unseen_output: bool,
    /// Activity not yet written to SQLite.
    dirty: bool,
}

/// A running terminal; shared by its task, its viewers, its reader thread and the API.
pub struct Live {
    pub id: String,
    pub owner: String,
    pub session_id: Option<String>,
    pub audience: Audience,
    /// Its program's pid, set once it started (the reader thread holds the terminal before).
    pid: AtomicU32,
    output: Mutex<Ring>,
    /// The output's end offset, changed with each output: viewers wait on it.
    written: watch::Sender<u64>,
    /// Set once, when it has ended (and that is stored).
    ended: watch::Sender<Option<Ended>>,
    /// Input for the writer thread; None once it ended.
    input: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// The PTY's master side, for resizes; dropped (hanging the terminal up) at the end.
    master: Mutex<Option<Box<dyn MasterPty + Send>>>,
    state: Mutex<State>,
    end_requests: mpsc::Sender<Why>,
}

/// What the task needs besides the terminal.
pub(super) struct Parts {
    pub exit: oneshot::Receiver<ExitStatus>,
    pub output_done: oneshot::Receiver<()>,
    pub end_requests: mpsc::Receiver<Why>,
}

/// Refusals of a live terminal's methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It has ended (or is ending).
    Ended,
    /// `terminals.max_viewers` are attached.
    TooManyViewers,
    /// The PTY refused the size.
    Resize,
}

/// A viewer attached to a terminal; counted until dropped.
pub struct Viewer {
    live: Arc<Live>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let mut s = self.live.state();
        s.viewers = s.viewers.saturating_sub(1);
        s.last_seen_at = store::now_ms();
    }
}

impl Live {
    /// A terminal about to start; `pid` is set by [`Self::started`].
    pub(super) fn new(
        id: &str,
        owner: &str,
        session_id: Option<&str>,
        project_path: &str,
        size: (u16, u16),
        buffer_bytes: usize,
        expires_at: i64,
    ) -> (Arc<Self>, mpsc::Receiver<Why>) {
        let (end_requests, requests) = mpsc::channel(END_QUEUE);
        let now = store::now_ms();
        let live = Arc::new(Self {
            id: id.to_string(),
            owner: owner.to_string(),
            session_id: session_id.map(str::to_string),
            audience: Audience::of_terminal(id, owner, project_path),
            pid: AtomicU32::new(0),
            output: Mutex::new(Ring::new(buffer_bytes)),
            written: watch::Sender::new(0),
            ended: watch::Sender::new(None),
            input: Mutex::new(None),
            master: Mutex::new(None),
            state: Mutex::new(State {
                cols: size.0,
                rows: size.1,
                viewers: 0,
                last_input_at: None,
                last_output_at: None,
                last_seen_at: now,
                expires_at,
                unseen_output: false,
                dirty: false,
            }),
            end_requests,
        });
        (live, requests)
    }

    /// Its program started: its pid, input queue and PTY.
    pub(super) fn started(
        &self,
        pid: u32,
        input: mpsc::Sender<Vec<u8>>,
        master: Box<dyn MasterPty + Send>,
    ) {
        self.pid.store(pid, Ordering::SeqCst);
        *lock(&self.input) = Some(input);
        *lock(&self.master) = Some(master);
    }

    /// The pid of its program (0 before it started).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Output from the program (the reader thread).
    pub(super) fn output(&self, bytes: &[u8]) {
        let end = {
            let mut ring = lock(&self.output);
            ring.push(bytes);
            ring.end()
        };
        {
            let mut s = self.state();
            s.last_output_at = Some(store::now_ms());
            s.unseen_output |= s.viewers == 0;
            s.dirty = true;
        }
        self.written.send_replace(end);
    }

    /// The output after `offset` (see [`Ring::since`]).
    pub fn read_since(&self, offset: u64) -> Slice {
        lock(&self.output).since(offset)
    }

    /// A receiver that changes with each output.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// A receiver that becomes `Some` once the terminal has ended.
    pub fn ended_watch(&self) -> watch::Receiver<Option<Ended>> {
        self.ended.subscribe()
    }

    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// Attaches a viewer (moving the end to now + `lifetime`), unless `max` are attached.
    pub fn attach(self: &Arc<Self>, max: usize, lifetime: Duration) -> Result<Viewer, Refused> {
        if self.ended().is_some() {
            return Err(Refused::Ended);
        }
        let now = store::now_ms();
        let mut s = self.state();
        if s.viewers >= max {
            return Err(Refused::TooManyViewers);
        }
        s.viewers += 1;
        s.last_seen_at = now;
        s.unseen_output = false;
        s.expires_at = now + lifetime.as_millis() as i64;
        s.dirty = true;
        Ok(Viewer { live: self.clone() })
    }

    /// Types `bytes` into the terminal, after any input before it (moving the end).
    pub async fn write(&self, bytes: Vec<u8>, lifetime: Duration) -> Result<(), Refused> {
        let input = lock(&self.input).clone().ok_or(Refused::Ended)?;
        input.send(bytes).await.map_err(|_| Refused::Ended)?;
        let now = store::now_ms();
        let mut s = self.state();
        s.last_input_at = Some(now);
        s.expires_at = now + lifetime.as_millis() as i64;
        s.dirty = true;
        Ok(())
    }

    /// Sets the terminal's size (the program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), Refused> {
        let master = lock(&self.master);
        let master = master.as_ref().ok_or(Refused::Ended)?;
        master.resize(pty::size(cols, rows)).map_err(|e| {
            tracing::warn!(terminal_id = %self.id, error = %e, "resize refused");
            Refused::Resize
        })?;
        let mut s = self.state();
        (s.cols, s.rows) = (cols, rows);
        Ok(())
    }

    /// Asks the task to end the terminal (it may already be ending).
    pub fn request_end(&self, why: Why) {
        let _ = self.end_requests.try_send(why);
    }

    pub fn snapshot(&self) -> Snapshot {
        let output_bytes = lock(&self.output).end();
        let s = self.state();
        Snapshot {
            cols: s.cols,
            rows: s.rows,
            viewers: s.viewers,
            last_input_at: s.last_input_at,
            last_output_at: s.last_output_at,
            expires_at: s.expires_at,
            output_bytes,
        }
    }

    /// Since when it has had neither a viewer nor output, if no viewer is attached.
    pub fn idle_since(&self) -> Option<i64> {
        let s = self.state();
        (s.viewers == 0).then(|| s.last_seen_at.max(s.last_output_at.unwrap_or(0)))
    }

    /// When output that nobody saw went quiet (no viewer attached, no push about it yet).
    pub fn quiet_since(&self) -> Option<i64> {
        let s = self.state();
        if s.viewers == 0 && s.unseen_output {
            s.last_output_at
        } else {
            None
        }
    }

    /// Marks the unseen output as told (a "waiting" push went out).
    pub fn told_quiet(&self) {
        self.state().unseen_output = false;
    }

    /// Its activity, for SQLite.
    /// The last `max` bytes of output and the offset they start at, for the stored end.
    pub(super) fn output_tail(&self, max: usize) -> (u64, Vec<u8>) {
        lock(&self.output).tail(max)
    }

    /// The program is gone: no more input or resizes.
    pub(super) fn close_input(&self) {
        *lock(&self.input) = None;
        *lock(&self.master) = None;
    }

    /// Every viewer learns how it ended.
    pub(super) fn set_ended(&self, ended: Ended) {
        self.ended.send_replace(Some(ended));
    }

    pub(super) fn activity(&self) -> terminals::Activity {
        let output_bytes = lock(&self.output).end();
        let s = self.state();
        terminals::Activity {
            last_input_at: s.last_input_at,
            last_output_at: s.last_output_at,
            output_bytes,
            expires_at: s.expires_at,
        }
    }

    /// Writes its activity to SQLite if it changed since the last time.
    pub(super) async fn flush_activity(&self, store: &store::Store) {
        let activity = {
            let mut s = self.state();
            if !s.dirty {
                return;
            }
            s.dirty = false;
            drop(s);
            self.activity()
        };
        let written: sqlx::Result<()> = async {
            let mut tx = store.begin_write().await?;
            terminals::record_activity(&mut *tx, &self.id, &activity).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = written {
            self.state().dirty = true;
            tracing::warn!(terminal_id = %self.id, error = %e, "could not record a terminal's activity");
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a terminal is ended by tether (the `killed` state's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// `DELETE /api/terminals/{id}`.
    Deleted,
    /// A viewer sent `{"signal": "terminate"}`.
    Terminated,
    /// Its end came (`sessions.lifetime` after its last input or attach).
    Expired,
    /// No viewer and no output for `terminals.idle_timeout`.
    Idle(Duration),
    /// tether is shutting down.
    Shutdown,
}

impl Why {
    pub fn reason(&self) -> String {
        match self {
            Self::Deleted => "ended by its owner".into(),
            Self::Terminated => "terminated by a viewer".into(),
            Self::Expired => "expired".into(),
            Self::Idle(after) => format!(
                "idle: no viewer and no output for {} (terminals.idle_timeout)",
                crate::sessions::lifecycle::human_duration(*after)
            ),
            Self::Shutdown => "tether shut down".into(),
        }
    }
}
