//! How an actor gets and lets go of its session's process: the launch (with `--resume`
//! when the CLI has the conversation), a start or the adoption of a warm spare, and a stop,
//! kill or reap, each told in the session's events and its record of the process.

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::{accept::checked_folder, actor::Actor, control::ProcessState, process::LiveProcess};
use crate::{
    agent::{process::AgentProcess, Launch},
    store::sessions,
};

impl Actor {
    /// How to start this session's process: resumed when the CLI holds the conversation
    /// (asked of the agent, off the async threads), else as the session's record says.
    pub(super) async fn launch(&self) -> Result<Launch, String> {
        let session = sessions::get(self.pool(), &self.id)
            .await
            .map_err(|e| format!("database error: {e}"))?
            .ok_or("the session no longer exists")?;
        let default_mode = &self.sessions.deps().agent_settings.permission_mode;
        let launch = Launch::of_session(&session, default_mode);
        let launch = launch.probed(self.sessions.deps().agent.clone()).await;
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
        self.live = Some(LiveProcess::new(process, launch, slot, false));
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
        let launch = Launch {
            conversation_id: spare.id,
            cwd: spare.cwd,
            resume: false,
            permission_mode: spare.permission_mode,
        };
        self.live = Some(LiveProcess::new(spare.process, launch, spare.slot, true));
        self.set_state(ProcessState::Starting);
        true
    }

    /// Waits for a process whose stdout closed, stops what is left of its group, and
    /// says how it ended.
    pub(super) async fn reap(&mut self, live: LiveProcess) -> String {
        let grace = self.sessions.deps().agent_settings.stop_grace;
        let (how, gone) = live.reap(grace).await;
        self.forget_process(gone).await;
        metrics::counter!("tether_processes_exited_total").increment(1);
        how
    }

    /// Stops the process gracefully (close stdin, SIGTERM, SIGKILL), if there is one.
    pub(super) async fn stop_process(&mut self, reason: &str) {
        let Some(live) = self.live.take() else { return };
        let pid = live.pid();
        let grace = self.sessions.deps().agent_settings.stop_grace;
        let status = live.stop(grace).await;
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
        let pid = live.pid();
        live.kill().await;
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
}
