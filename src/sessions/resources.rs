//! The resource watch: every `sessions.resource_interval`, the resident memory and CPU of
//! each live process group (the CLI and the tools it started) are read and kept for the
//! admin's view. An idle process above `sessions.max_process_memory` is recycled (stopped;
//! its next message resumes it); when all of them together pass `sessions.max_total_memory`,
//! idle ones are hibernated, oldest first. A busy process is never stopped for memory, only
//! logged. [`Sessions::resource_tick`] is one step.

use std::collections::HashSet;

use serde::Serialize;

use super::{
    usage::{Sampler, Usage},
    Control, ProcessState, Sessions,
};

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WatchReport {
    /// Idle processes stopped for their own memory.
    pub recycled: usize,
    /// Idle processes stopped for the total.
    pub hibernated: usize,
    /// Resident memory of every process group, summed.
    pub total_bytes: u64,
}

struct Watched {
    session_id: String,
    pid: u32,
    state: ProcessState,
    last_used_ms: i64,
    ctl: tokio::sync::mpsc::Sender<Control>,
}

impl Sessions {
    /// One look at every live process (see the module's doc). `sampler` keeps what CPU use
    /// is measured against; it is handed back when the reading (a blocking call) is done.
    pub async fn resource_tick(&self, sampler: Sampler) -> (WatchReport, Sampler) {
        let watched: Vec<Watched> = self
            .actors()
            .iter()
            .filter_map(|(id, e)| {
                let p = e.handle.process.borrow();
                Some(Watched {
                    session_id: id.clone(),
                    pid: p.pid.filter(|_| p.state.is_live())?,
                    state: p.state,
                    last_used_ms: p.last_used_ms,
                    ctl: e.handle.ctl.clone(),
                })
            })
            .collect();
        let pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        let (samples, sampler) = tokio::task::spawn_blocking(move || {
            let mut sampler = sampler;
            (sampler.sample(&pids), sampler)
        })
        .await
        .expect("sampling processes does not panic");
        let mut usage = self.usage();
        usage.clear();
        for w in &watched {
            if let Some(u) = samples.get(&w.pid) {
                usage.insert(w.session_id.clone(), *u);
            }
        }
        drop(usage);

        let settings = &self.deps().session_settings;
        let (per_process, total_limit) =
            (settings.max_process_memory.0, settings.max_total_memory.0);
        let memory = |w: &Watched| samples.get(&w.pid).map_or(0, |u: &Usage| u.memory_bytes);
        let mut report = WatchReport {
            total_bytes: watched.iter().map(memory).sum(),
            ..WatchReport::default()
        };
        let mut stopped = HashSet::new();
        for w in watched.iter().filter(|w| memory(w) > per_process) {
            if w.state != ProcessState::Idle {
                tracing::warn!(session_id = %w.session_id, pid = w.pid, memory_bytes = memory(w),
                    "a busy agent process is above sessions.max_process_memory; it is left to finish");
                continue;
            }
            if w.ctl.try_send(Control::Stop(RECYCLED)).is_ok() {
                tracing::info!(session_id = %w.session_id, pid = w.pid, memory_bytes = memory(w),
                    "recycling an idle agent process above sessions.max_process_memory");
                stopped.insert(w.pid);
                report.recycled += 1;
            }
        }
        let mut left: u64 = watched
            .iter()
            .filter(|w| !stopped.contains(&w.pid))
            .map(memory)
            .sum();
        if left > total_limit {
            let mut idle: Vec<&Watched> = watched
                .iter()
                .filter(|w| w.state == ProcessState::Idle && !stopped.contains(&w.pid))
                .collect();
            idle.sort_by_key(|w| w.last_used_ms);
            for w in idle {
                if left <= total_limit {
                    break;
                }
                if w.ctl.try_send(Control::Stop(OVER_TOTAL)).is_ok() {
                    tracing::info!(session_id = %w.session_id, pid = w.pid, memory_bytes = memory(w),
                        "hibernating an idle agent process: all of them passed sessions.max_total_memory");
                    left = left.saturating_sub(memory(w));
                    report.hibernated += 1;
                }
            }
            if left > total_limit {
                tracing::warn!(
                    memory_bytes = left,
                    limit = total_limit,
                    "agent processes are above sessions.max_total_memory and none is idle"
                );
            }
        }
        (report, sampler)
    }

    /// The last reading of a session's process group, if it has a live one.
    pub fn usage_of(&self, session_id: &str) -> Option<Usage> {
        self.usage().get(session_id).copied()
    }
}

const RECYCLED: &str = "recycled: its memory passed sessions.max_process_memory";
const OVER_TOTAL: &str = "hibernated: all processes passed sessions.max_total_memory";

/// Runs the watch every `sessions.resource_interval` until tether stops.
pub async fn run(sessions: Sessions) {
    let mut stop = sessions.stopping();
    let every = sessions
        .deps()
        .session_settings
        .resource_interval
        .max(std::time::Duration::from_millis(500));
    let mut sampler = Sampler::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (report, back) = sessions.resource_tick(sampler).await;
        sampler = back;
        metrics::gauge!("tether_agent_memory_bytes").set(report.total_bytes as f64);
    }
}
