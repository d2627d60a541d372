//! The process of a session as its actor holds it: starting it (with `--resume` when the
//! CLI has the conversation), reading its lines into events, and stopping, killing or
//! reaping it, never leaving members of its group behind.

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::{accept::checked_folder, actor::Actor, approve::ModeRequest, ProcessState};
use crate::{
    agent::{
        process::{AgentProcess, Line},
        Launch, Parsed, PermissionRequest, Signal, TurnResult,
    },
    store::{events::EventRow, sessions},
};

/// Characters of an invalid or cut line quoted in its event and log line.
const PREVIEW_CHARS: usize = 200;

/// What a stdout line means for the turn.
pub(super) enum Read {
    Nothing,
    /// The agent asks before using a tool (its line, numbered).
    Asks(PermissionRequest, EventRow),
    /// The turn ended (its `result` line, numbered, when it could be read).
    Done(TurnResult, Option<EventRow>),
}

/// The process and what it holds.
pub(super) struct Live {
    pub(super) process: AgentProcess,
    /// How it was started (to start it the other way if the CLI refuses).
    pub(super) launch: Launch,
    /// The process-count slot, given back when the process goes.
    _slot: OwnedSemaphorePermit,
    /// Claude reports cost summed over the life of a process: what was already counted.
    pub(super) cost_so_far: f64,
    /// Its pid is recorded on the session (done with its first turn's start).
    pub(super) recorded: bool,
    /// It was a warm spare: its spare record goes when the session records it.
    pub(super) was_spare: bool,
    /// Mode changes it was sent and has not answered; dropped with it (their senders then
    /// learn that it ended first).
    pub(super) mode_requests: Vec<ModeRequest>,
}

impl Actor {
    /// How to start this session's process: resumed when the CLI holds the conversation
    /// (asked of the agent, off the async threads), else as the session's record says.
    pub(super) async fn launch(&self) -> Result<Launch, String> {
        let session = sessions::get(self.pool(), &self.id)
            .await
            .map_err(|e| format!("database error: {e}"))?
            .ok_or("the session no longer exists")?;
        let mut launch = Launch {
            conversation_id: session
                .agent_session_id
                .clone()
                .unwrap_or(session.id.clone()),
            cwd: session.project_path.clone().into(),
            resume: session.transcript_started,
            permission_mode: session
                .permission_mode
                .clone()
                .unwrap_or_else(|| self.sessions.deps().agent_settings.permission_mode.clone()),
        };
        let agent = self.sessions.deps().agent.clone();
        let probe = launch.clone();
        if let Ok(Some(known)) =
            tokio::task::spawn_blocking(move || agent.has_conversation(&probe)).await
        {
            launch.resume = known;
        }
        Ok(launch)
    }

    /// Starts the process with `slot`, in its project folder as checked right now (see
    /// [`checked_folder`]). Its `process_started` event is held for the turn's next
    /// transaction. A command that cannot start is probed again, so that chat and `/health`
    /// tell of it.
    pub(super) async fn start_process(
        &mut self,
        mut launch: Launch,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let deps = self.sessions.deps();
        launch.cwd = checked_folder(&deps.projects, &launch.cwd).map_err(|e| e.message())?;
        let cmd = deps.agent.command(&launch);
        let settings = &deps.agent_settings;
        let spawned = AgentProcess::spawn(cmd, settings.max_line_bytes, settings.stderr_tail_lines);
        let process = match spawned {
            Ok(p) => p,
            Err(e) => {
                deps.agent_health.probe().await;
                return Err(format!(
                    "could not start the agent `{}`: {e}",
                    settings.command
                ));
            }
        };
        let pid = process.pid;
        metrics::counter!("tether_processes_started_total").increment(1);
        tracing::info!(pid, resume = launch.resume, "agent process started");
        let row = self.log.stage_tether(
            "process_started",
            json!({"pid": pid, "resume": launch.resume}),
        );
        self.log.hold(row);
        self.live = Some(Live {
            process,
            launch,
            _slot: slot,
            cost_so_far: 0.0,
            recorded: false,
            was_spare: false,
            mode_requests: Vec::new(),
        });
        self.set_state(ProcessState::Starting);
        Ok(())
    }

    /// Takes the warm spare claimed for this session when it was created, if there is one
    /// and it was started the way this session's first process must be. True when the
    /// session now has its process (its `process_started` event is held for the turn).
    pub(super) async fn adopt_spare(&mut self) -> bool {
        let Some(spare) = self.sessions.take_spare(&self.id) else {
            return false;
        };
        let fits = match self.launch().await {
            Ok(l) => {
                !l.resume
                    && l.conversation_id == spare.id
                    && l.permission_mode == spare.permission_mode
                    && l.cwd == spare.cwd
            }
            Err(_) => false,
        };
        if !fits {
            self.sessions
                .stop_spare(spare, "it does not fit its session's start")
                .await;
            return false;
        }
        let pid = spare.process.pid;
        tracing::info!(pid, "agent process taken from the warm spares");
        let row = self.log.stage_tether(
            "process_started",
            json!({"pid": pid, "resume": false, "spare": true}),
        );
        self.log.hold(row);
        self.live = Some(Live {
            process: spare.process,
            launch: Launch {
                conversation_id: spare.id,
                cwd: spare.cwd,
                resume: false,
                permission_mode: spare.permission_mode,
            },
            _slot: spare.slot,
            cost_so_far: 0.0,
            recorded: false,
            was_spare: true,
            mode_requests: Vec::new(),
        });
        self.set_state(ProcessState::Starting);
        true
    }

    /// Waits for a process whose stdout closed, stops what is left of its group, and
    /// says how it ended.
    pub(super) async fn reap(&mut self, live: Live) -> String {
        let mut process = live.process;
        let grace = self.sessions.deps().agent_settings.stop_grace;
        let status = process.wait(grace).await;
        let tail = process.stderr_tail();
        let pid = process.pid;
        let gone = if status.is_none() {
            process.kill().await;
            true
        } else {
            process.end_group().await
        };
        self.forget_process(gone).await;
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
    pub(super) async fn stop_process(&mut self, reason: &str) {
        let Some(live) = self.live.take() else { return };
        let pid = live.process.pid;
        let grace = self.sessions.deps().agent_settings.stop_grace;
        let status = live.process.stop(grace).await;
        tracing::info!(pid, reason, ?status, "agent process stopped");
        self.forget_process(true).await;
        let row = self
            .log
            .stage_tether("process_stopped", json!({"pid": pid, "reason": reason}));
        self.log.log_now(&self.sessions.deps().store, row).await;
    }

    /// Kills the process at once (a turn that must end now). Its event is held for the
    /// turn's end.
    pub(super) async fn kill_process(&mut self) {
        let Some(live) = self.live.take() else { return };
        let pid = live.process.pid;
        live.process.kill().await;
        tracing::info!(pid, "agent process killed");
        self.forget_process(true).await;
        let row = self
            .log
            .stage_tether("process_stopped", json!({"pid": pid, "reason": "killed"}));
        self.log.hold(row);
    }

    /// The process is gone. Its record is cleared once its whole group is gone; while
    /// something of it may still run, the record stays so the next start stops it.
    async fn forget_process(&mut self, group_gone: bool) {
        self.set_state(ProcessState::None);
        if !group_gone {
            return;
        }
        let cleared: sqlx::Result<()> = async {
            let mut tx = self.store().begin_write().await?;
            sessions::set_process(&mut *tx, &self.id, None).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = cleared {
            tracing::error!(error = %e, "could not clear the recorded process");
        }
    }

    /// Reads one stdout line: an event to hold, a permission request, or the turn's end.
    /// The line that asks or ends is returned, numbered, to be stored with what it causes.
    pub(super) fn on_line(&mut self, line: Line) -> Read {
        let max = self.sessions.deps().agent_settings.max_line_bytes;
        if line.truncated {
            metrics::counter!("tether_agent_lines_truncated_total").increment(1);
            let preview = preview(&line.text);
            tracing::warn!(
                len = line.len,
                limit = max,
                "agent line over agent.max_line_bytes was cut"
            );
            let row = self.log.stage_tether(
                "line_truncated",
                json!({"length": line.len, "limit": max, "preview": preview}),
            );
            self.log.hold(row);
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
                return Read::Done(result, None);
            }
            return Read::Nothing;
        }
        match self.sessions.deps().agent.parse_line(&line.text) {
            // A message still being written: its text goes to live listeners now; the
            // complete line that follows is what is stored.
            Parsed::Partial(delta) => {
                if let Some(delta) = delta {
                    self.log.publish_delta(&delta);
                }
                Read::Nothing
            }
            Parsed::Invalid => {
                metrics::counter!("tether_agent_lines_invalid_total").increment(1);
                let preview = preview(&line.text);
                tracing::warn!(%preview, "agent printed a line that is not JSON");
                let row = self
                    .log
                    .stage_tether("invalid_line", json!({"preview": preview}));
                self.log.hold(row);
                Read::Nothing
            }
            Parsed::Event { kind, signal } => {
                let row = self.log.stage(&kind, line.text);
                match signal {
                    Signal::TurnDone(result) => Read::Done(*result, Some(row)),
                    Signal::Permission(request) => Read::Asks(*request, row),
                    Signal::ControlAnswer { request_id, error } => {
                        self.log.hold(row);
                        self.mode_answered(&request_id, error);
                        Read::Nothing
                    }
                    Signal::None => {
                        self.log.hold(row);
                        Read::Nothing
                    }
                }
            }
        }
    }
}

fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}
