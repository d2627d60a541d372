//! A session's live CLI process as its actor holds it: the child with its pipes, how it was
//! started, the slot it holds, what it has cost so far and the mode changes it was sent;
//! writing lines to it, and stopping, killing or reaping it, never leaving members of its
//! group behind.

use std::{io, time::Duration};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::control::ModeApplied;
use crate::agent::{
    process::{AgentProcess, Line},
    Launch,
};

/// The process and what it holds.
pub(super) struct LiveProcess {
    pub(super) process: AgentProcess,
    /// How it was started (to start it the other way if the CLI refuses).
    pub(super) launch: Launch,
    /// The process-count slot, given back when the process goes.
    _slot: OwnedSemaphorePermit,
    /// Claude reports cost summed over the life of a process: what was already counted.
    cost_so_far: f64,
    /// Its pid is recorded on the session (done with its first turn's start).
    pub(super) recorded: bool,
    /// It was a warm spare: its spare record goes when the session records it.
    pub(super) was_spare: bool,
    /// Mode changes it was sent and has not answered; dropped with it (their senders then
    /// learn that it ended first).
    mode_requests: Vec<ModeRequest>,
}

/// A mode change sent to a live process, waiting for its `control_response`.
struct ModeRequest {
    request_id: String,
    mode: String,
    reply: oneshot::Sender<ModeApplied>,
}

impl LiveProcess {
    pub(super) fn new(
        process: AgentProcess,
        launch: Launch,
        slot: OwnedSemaphorePermit,
        was_spare: bool,
    ) -> Self {
        Self {
            process,
            launch,
            _slot: slot,
            cost_so_far: 0.0,
            recorded: false,
            was_spare,
            mode_requests: Vec::new(),
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The next stdout line; None at EOF.
    pub(super) async fn next_line(&mut self) -> Option<io::Result<Line>> {
        self.process.next_line().await
    }

    /// Hands a line to the process's writer; the receiver learns whether it was written.
    pub(super) fn write_line(&self, line: &str) -> oneshot::Receiver<io::Result<()>> {
        self.process.write_line(line)
    }

    /// Writes a line without waiting for it: false when stdin is already known to be gone.
    pub(super) fn send_line(&self, line: &str) -> bool {
        let mut written = self.process.write_line(line);
        !matches!(written.try_recv(), Ok(Err(_)))
    }

    /// The cost of the turn that reported `total` (the CLI sums cost over the process's life).
    pub(super) fn turn_cost(&mut self, total: f64) -> f64 {
        let turn = (total - self.cost_so_far).max(0.0);
        self.cost_so_far = total;
        turn
    }

    /// Sends the mode change `line` (request `request_id`); `reply` learns what the process
    /// answered (see [`Self::mode_answered`]).
    pub(super) fn send_mode(
        &mut self,
        request_id: String,
        mode: String,
        line: &str,
        reply: oneshot::Sender<ModeApplied>,
    ) {
        // Not waited for: a process that no longer reads drops the request with itself.
        drop(self.process.write_line(line));
        // Requests whose sender stopped waiting (agent.control_timeout) are not kept.
        self.mode_requests.retain(|r| !r.reply.is_closed());
        self.mode_requests.push(ModeRequest {
            request_id,
            mode,
            reply,
        });
    }

    /// The process answered a control request: if it was a mode change, its sender
    /// learns whether the process took the mode (`error`: the CLI's refusal).
    pub(super) fn mode_answered(&mut self, request_id: &str, error: Option<String>) {
        let Some(at) = self
            .mode_requests
            .iter()
            .position(|r| r.request_id == request_id)
        else {
            return;
        };
        let request = self.mode_requests.remove(at);
        let applied = match error {
            None => {
                self.launch.permission_mode = request.mode.clone();
                ModeApplied::Applied
            }
            Some(error) => {
                tracing::warn!(mode = %request.mode, %error, "the live process refused a permission mode");
                ModeApplied::NotApplied(error)
            }
        };
        let _ = request.reply.send(applied);
    }

    /// Waits (at most `grace`) for a process whose stdout closed, stops what is left of its
    /// group, and says how it ended, and whether its whole group is gone.
    pub(super) async fn reap(self, grace: Duration) -> (String, bool) {
        let mut process = self.process;
        let status = process.wait(grace).await;
        let tail = process.stderr_tail();
        let pid = process.pid;
        let gone = if status.is_none() {
            process.kill().await;
            true
        } else {
            process.end_group().await
        };
        let how = match status {
            Some(s) => format!("the agent process (pid {pid}) exited ({s})"),
            None => format!("the agent process (pid {pid}) closed its output and was killed"),
        };
        let how = if tail.trim().is_empty() {
            how
        } else {
            format!("{how}: {}", tail.trim())
        };
        (how, gone)
    }

    /// Stops it gracefully (close stdin, SIGTERM, then SIGKILL after `grace`).
    pub(super) async fn stop(self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.process.stop(grace).await
    }

    /// Kills it at once.
    pub(super) async fn kill(self) {
        self.process.kill().await;
    }
}
