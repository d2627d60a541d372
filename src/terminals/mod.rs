//! Terminals: the interactive CLI or a login shell in a pseudo-terminal, for a person to
//! watch and type into over a WebSocket (chat keeps using the stream protocol). Each
//! terminal is a row in SQLite (`starting → running → exited | killed`), an output ring with
//! a running byte offset that viewers read from, and a task that waits for its program to
//! end. A `claude` terminal on a chat session holds that session's conversation (one writer
//! per conversation; see `Sessions::hold`) until it ends. Ending a terminal sends SIGHUP to
//! its process group, then SIGTERM and SIGKILL to everything it started, and reaps it; a
//! start after tether was killed stops what an earlier run left and marks it `killed`.

mod lifecycle;
mod live;
pub mod pty;
pub mod ring;
mod supervise;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle};
use tracing::Instrument;
use uuid::Uuid;

pub use lifecycle::TerminalReport;
pub use live::{Ended, Live, Refused, Snapshot, Viewer, Why};

use crate::{
    agent::{Agent, Launch},
    config::{AgentSettings, ProjectSettings, SessionSettings, TerminalSettings},
    refusal::{callers_active, refused, session_not_found, AcceptError, Asker, Refusal},
    sessions::{checked_folder, resolve_project, HoldRefused, Sessions},
    store::{self, sessions as session_rows, terminals, terminals::TerminalRow, Store},
};

/// Largest terminal side accepted, in cells.
pub const MAX_SIDE: u16 = 1000;
/// `Retry-After` for `too_many_terminals`: no time frees one (ending one does).
const FULL_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The reason a terminal left running by a killed tether ends with.
const LEFT_BY_EARLIER_RUN: &str =
    "tether stopped while it ran; its program was stopped at the next start";

/// What terminals need.
pub struct Deps {
    pub store: Store,
    pub settings: TerminalSettings,
    /// Its end and warning: `sessions.lifetime` and `sessions.warn_before`.
    pub session_settings: SessionSettings,
    /// The agent (`program: "claude"`) and how it asks (`agent.permission_mode`).
    pub agent: Arc<dyn Agent>,
    pub agent_settings: AgentSettings,
    pub projects: ProjectSettings,
    /// Chat sessions, whose conversation a `claude` terminal holds.
    pub sessions: Sessions,
    /// How long the saved output of an ended terminal is kept (`events.retention`).
    pub retention: Duration,
    /// Wakes the push worker after a push row was committed.
    pub push_wake: Arc<Notify>,
}

/// A terminal to start, as the caller asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub owner: &'a str,
    /// An admin may open a terminal on any owner's session.
    pub sees_all: bool,
    /// `claude` or `shell`.
    pub program: &'a str,
    /// Required without `session_id`; with it, the session's folder is used.
    pub project_path: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub cols: u16,
    pub rows: u16,
}

/// The handle the HTTP layer holds; cheap to clone.
#[derive(Clone)]
pub struct Terminals {
    inner: Arc<Inner>,
}

struct Inner {
    deps: Deps,
    live: Mutex<HashMap<String, Entry>>,
    closing: AtomicBool,
}

struct Entry {
    live: Arc<Live>,
    task: Option<JoinHandle<()>>,
}

impl Terminals {
    pub fn new(deps: Deps) -> Self {
        Self {
            inner: Arc::new(Inner {
                deps,
                live: Mutex::new(HashMap::new()),
                closing: AtomicBool::new(false),
            }),
        }
    }

    fn deps(&self) -> &Deps {
        &self.inner.deps
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lifetime(&self) -> Duration {
        self.deps().session_settings.lifetime
    }

    /// After a start: stops what terminals of an earlier run left running (that run was
    /// killed, or its end could not be stored) and marks them `killed`.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let pool = self.deps().store.pool();
        for (id, pid, start_time) in terminals::left_live(pool).await? {
            if let Some(pid) = pid {
                let (pid, start_time) = (pid as u32, start_time.unwrap_or(0) as u64);
                if pty::kill_orphan(pid, start_time).await {
                    tracing::warn!(terminal_id = %id, pid, "stopped a terminal's program left by an earlier run");
                }
            }
            terminals::mark_killed(pool, &id, LEFT_BY_EARLIER_RUN, store::now_ms()).await?;
        }
        Ok(())
    }

    /// Starts a terminal: see the module's doc. Answers its row (`running`).
    pub async fn start(&self, s: Start<'_>) -> Result<TerminalRow, AcceptError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(refused(
                Refusal::ShuttingDown,
                "tether is shutting down; try again in a moment",
            ));
        }
        if !(1..=MAX_SIDE).contains(&s.cols) || !(1..=MAX_SIDE).contains(&s.rows) {
            return Err(refused(
                Refusal::InvalidSize,
                format!("cols and rows must be 1 to {MAX_SIDE}"),
            ));
        }
        let deps = self.deps();
        let (program, session) = match (s.program, s.session_id) {
            ("claude", Some(id)) => ("claude", Some(self.session_for(&s, id).await?)),
            ("claude", None) => ("claude", None),
            ("shell", None) => ("shell", None),
            ("shell", Some(_)) => {
                return Err(refused(
                    Refusal::InvalidProgram,
                    "a shell runs no conversation: sessionId needs program \"claude\"",
                ))
            }
            _ => {
                return Err(refused(
                    Refusal::InvalidProgram,
                    "program must be \"claude\" or \"shell\"",
                ))
            }
        };
        let project: PathBuf = match (&session, s.project_path) {
            (Some(session), _) => session.project_path.clone().into(),
            (None, Some(raw)) => resolve_project(&deps.projects, raw).await?,
            (None, None) => {
                return Err(refused(
                    Refusal::InvalidProjectPath,
                    "projectPath is needed (or sessionId, to use that session's folder)",
                ))
            }
        };
        let id = Uuid::new_v4().to_string();
        let now = store::now_ms();
        let expires_at = now + self.lifetime().as_millis() as i64;
        let session_id = session.as_ref().map(|s| s.id.clone());
        self.insert(
            &s,
            &id,
            program,
            &project,
            session_id.as_deref(),
            now,
            expires_at,
        )
        .await?;
        if let Some(session_id) = &session_id {
            if let Err(refusal) = deps.sessions.hold(session_id, &id).await {
                self.not_started(&id, "its conversation could not be taken")
                    .await;
                return Err(match refusal {
                    HoldRefused::Held(_) => in_terminal(),
                    HoldRefused::TurnRunning => refused(
                        Refusal::TurnRunning,
                        "a turn is running in this session; wait for its reply or interrupt it \
                         (POST /api/sessions/{id}/interrupt), then open the terminal",
                    ),
                    HoldRefused::Closing => refused(
                        Refusal::ShuttingDown,
                        "tether is shutting down; try again in a moment",
                    ),
                });
            }
        }
        let command = match program {
            "shell" => pty::Program::login_shell(&deps.settings.shell, project.clone()),
            _ => {
                let launch = match &session {
                    Some(session) => Some(self.launch(session, &project).await),
                    None => None,
                };
                let i = deps.agent.interactive(launch.as_ref());
                pty::Program::command(i.program, &i.args, &i.env, project.clone())
            }
        };
        match self
            .spawn(
                &id,
                s.owner,
                session_id.as_deref(),
                &project,
                command,
                (s.cols, s.rows),
                expires_at,
            )
            .await
        {
            Ok(()) => {}
            Err(e) => {
                if let Some(FolderRefused(refusal)) = e.downcast_ref::<FolderRefused>() {
                    let reason = refusal.message();
                    self.not_started(&id, &reason).await;
                    if let Some(session_id) = &session_id {
                        deps.sessions.release(session_id, &id);
                    }
                    return Err(match e.downcast::<FolderRefused>() {
                        Ok(FolderRefused(refusal)) => refusal,
                        Err(_) => refused(Refusal::OutsideProjects, reason),
                    });
                }
                let reason = format!("could not start: {e}");
                tracing::warn!(terminal_id = %id, program, error = %e, "terminal could not start");
                self.not_started(&id, &reason).await;
                if let Some(session_id) = &session_id {
                    deps.sessions.release(session_id, &id);
                }
                return Err(refused(Refusal::TerminalStartFailed, reason));
            }
        }
        terminals::get(deps.store.pool(), &id)
            .await?
            .ok_or(AcceptError::Db(sqlx::Error::RowNotFound))
    }

    /// The chat session a `claude` terminal continues: the caller's, and active.
    async fn session_for(
        &self,
        s: &Start<'_>,
        id: &str,
    ) -> Result<session_rows::SessionRow, AcceptError> {
        let id = Uuid::parse_str(id)
            .map_err(|_| session_not_found(id))?
            .to_string();
        let session = session_rows::get(self.deps().store.pool(), &id).await?;
        let asker = Asker {
            owner: s.owner,
            sees_all: s.sees_all,
        };
        callers_active(&id, session, asker, |row| {
            (row.owner.as_str(), row.state.as_str())
        })
    }

    /// How the CLI continues the session's conversation (as its next chat process would),
    /// in `project` as checked for this terminal.
    async fn launch(
        &self,
        session: &session_rows::SessionRow,
        project: &std::path::Path,
    ) -> Launch {
        let default_mode = &self.deps().agent_settings.permission_mode;
        let launch = Launch {
            cwd: project.to_path_buf(),
            ..Launch::of_session(session, default_mode)
        };
        launch.probed(self.deps().agent.clone()).await
    }

    /// Adds the terminal's row (`starting`) within the limits, read in the same write
    /// transaction; a second live terminal on one session is refused (409).
    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        s: &Start<'_>,
        id: &str,
        program: &str,
        project: &std::path::Path,
        session_id: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<(), AcceptError> {
        let settings = &self.deps().settings;
        let mut tx = self.deps().store.begin_write().await?;
        let (all, owners) = terminals::count_live(&mut *tx, s.owner).await?;
        if all >= settings.max as i64 || owners >= settings.max_per_owner as i64 {
            let (count, key, limit) = if all >= settings.max as i64 {
                (all, "terminals.max", settings.max)
            } else {
                (owners, "terminals.max_per_owner", settings.max_per_owner)
            };
            tracing::info!(owner = s.owner, limit = key, "terminal limit reached");
            return Err(refused(
                Refusal::TooManyTerminals(FULL_RETRY_AFTER),
                format!("{count} terminals are running ({key} = {limit}); end one (DELETE /api/terminals/{{id}})"),
            ));
        }
        let project = project.to_string_lossy();
        let inserted = terminals::insert(
            &mut *tx,
            &terminals::NewTerminal {
                id,
                owner: s.owner,
                program,
                project_path: &project,
                session_id,
                cols: s.cols,
                rows: s.rows,
                now,
                expires_at,
            },
        )
        .await;
        match inserted {
            Err(e) if store::is_unique_violation(&e) => return Err(in_terminal()),
            other => other?,
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a terminal that never ran as ended with `reason`.
    async fn not_started(&self, id: &str, reason: &str) {
        let pool = self.deps().store.pool();
        let end = terminals::End {
            state: terminals::STATE_EXITED,
            exit_code: None,
            reason,
            now: store::now_ms(),
            tail: b"",
            tail_offset: 0,
            activity: terminals::Activity {
                last_input_at: None,
                last_output_at: None,
                output_bytes: 0,
                expires_at: store::now_ms(),
            },
        };
        if let Err(e) = terminals::end(pool, id, &end).await {
            tracing::error!(terminal_id = %id, error = %e, "could not record a terminal that did not start");
        }
    }

    /// Starts the program in its PTY (off the async threads), records it `running`, and
    /// starts the terminal's task.
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        &self,
        id: &str,
        owner: &str,
        session_id: Option<&str>,
        project: &std::path::Path,
        program: pty::Program,
        size: (u16, u16),
        expires_at: i64,
    ) -> anyhow::Result<()> {
        let settings = &self.deps().settings;
        let (live, end_requests) = Live::new(
            id,
            owner,
            session_id,
            &project.to_string_lossy(),
            size,
            settings.buffer_bytes.0 as usize,
            expires_at,
        );
        let (done_tx, output_done) = tokio::sync::oneshot::channel();
        let reader = live.clone();
        let projects = self.deps().projects.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            // Checked again right before the start, and run in the path checked.
            let mut program = program;
            program.cwd = checked_folder(&projects, &program.cwd).map_err(FolderRefused)?;
            pty::spawn(&program, size.0, size.1, move |b| reader.output(b), done_tx)
        })
        .await??;
        let pid = spawned.pid;
        live.started(pid, spawned.input, spawned.master);
        let parts = live::Parts {
            exit: spawned.exit,
            output_done,
            end_requests,
        };
        // Registered before it is recorded running, so a shutdown meanwhile ends it too.
        self.map().insert(
            id.to_string(),
            Entry {
                live: live.clone(),
                task: None,
            },
        );
        let recorded = async {
            let mut tx = self.deps().store.begin_write().await?;
            terminals::set_running(&mut *tx, id, pid, spawned.start_time).await?;
            tx.commit().await
        }
        .await;
        let span = tracing::info_span!("terminal", terminal_id = %id, pid);
        let task = tokio::spawn(
            self.clone()
                .supervise(live.clone(), pid, parts)
                .instrument(span),
        );
        if let Some(entry) = self.map().get_mut(id) {
            entry.task = Some(task);
        }
        if let Err(e) = recorded {
            live.request_end(Why::Shutdown);
            return Err(e.into());
        }
        metrics::counter!("tether_terminals_started_total").increment(1);
        tracing::info!(terminal_id = %id, pid, "terminal started");
        Ok(())
    }

    /// The live terminal `id`, if it runs.
    pub fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.map().get(id).map(|e| e.live.clone())
    }

    /// Number of live terminals.
    pub fn live_count(&self) -> usize {
        self.map().len()
    }

    /// How long a terminal lives after its last input or attach.
    pub fn lifetime_of_activity(&self) -> Duration {
        self.lifetime()
    }

    /// Ends a live terminal for `why` and waits until its end is stored. False when it
    /// was not live.
    pub async fn end(&self, id: &str, why: Why) -> bool {
        let Some(live) = self.live(id) else {
            return false;
        };
        let mut ended = live.ended_watch();
        live.request_end(why);
        let _ = ended.wait_for(Option::is_some).await;
        true
    }

    /// Forgets a terminal that ended (its task is ending).
    fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    /// Ends every terminal (SIGHUP, SIGTERM, SIGKILL; reaped) and waits for their tasks.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let entries: Vec<(Arc<Live>, Option<JoinHandle<()>>)> = self
            .map()
            .values_mut()
            .map(|e| (e.live.clone(), e.task.take()))
            .collect();
        for (live, _) in &entries {
            live.request_end(Why::Shutdown);
        }
        for (live, task) in entries {
            match task {
                Some(task) => {
                    let _ = task.await;
                }
                None => {
                    let _ = live.ended_watch().wait_for(Option::is_some).await;
                }
            }
        }
    }
}

/// A terminal's folder refused right before its start (see `sessions::checked_folder`).
#[derive(Debug)]
struct FolderRefused(AcceptError);

impl std::fmt::Display for FolderRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message())
    }
}

impl std::error::Error for FolderRefused {}

fn in_terminal() -> AcceptError {
    refused(
        Refusal::ConversationInTerminal,
        "this session's conversation is open in another terminal; end that one first",
    )
}
