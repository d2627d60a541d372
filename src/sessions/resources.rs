//! The resource watch: every `sessions.resource_interval`, the resident memory and CPU of
//! each live process group (the CLI and the tools it started) are read and kept for the
//! admin's view. An idle process above `sessions.max_process_memory` is recycled (stopped;
//! its next message resumes it); when all of them together pass `sessions.max_total_memory`,
//! warm spares are stopped first (and none starts while they would not fit), then idle
//! ones are hibernated, oldest first. A busy process is never stopped for memory, only
//! logged. [`Sessions::resource_tick`] is one step.

use std::collections::HashSet;

use serde::Serialize;

use super::{
    handle::{PoolProcess, Sessions},
    usage::{Sampler, Usage},
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

impl Sessions {
    /// One look at every live process (see the module's doc). `sampler` keeps what CPU use
    /// is measured against; it is handed back when the reading (a blocking call) is done.
    pub async fn resource_tick(&self, sampler: Sampler) -> (WatchReport, Sampler) {
        let watched = self.processes();
        let spare_pids = self.spare_pids();
        let mut pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        pids.extend(&spare_pids);
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
        for pid in &spare_pids {
            if let Some(u) = samples.get(pid) {
                usage.insert(spare_key(*pid), *u);
            }
        }
        drop(usage);

        let settings = &self.deps().session_settings;
        let (per_process, total_limit) =
            (settings.max_process_memory.0, settings.max_total_memory.0);
        let memory_of = |pid: &u32| samples.get(pid).map_or(0, |u: &Usage| u.memory_bytes);
        let memory = |p: &PoolProcess| memory_of(&p.pid);
        let spare_bytes: Vec<u64> = spare_pids.iter().map(memory_of).collect();
        let sessions_bytes: u64 = watched.iter().map(memory).sum();
        let mut report = WatchReport {
            total_bytes: sessions_bytes + spare_bytes.iter().sum::<u64>(),
            ..WatchReport::default()
        };
        // Spares are the first to go, and none starts while they would not fit.
        let spare_need = spare_bytes.iter().copied().max().unwrap_or(0)
            * self.deps().session_settings.warm_spares as u64;
        self.hold_back_spares(sessions_bytes + spare_need > total_limit);
        let mut left = report.total_bytes;
        let per_spare = spare_bytes.iter().sum::<u64>() / spare_bytes.len().max(1) as u64;
        while left > total_limit && self.drop_one_spare(SPARE_OVER_TOTAL) {
            report.hibernated += 1;
            left = left.saturating_sub(per_spare);
        }
        let mut stopped = HashSet::new();
        for p in watched.iter().filter(|p| memory(p) > per_process) {
            if !p.is_idle() {
                tracing::warn!(session_id = %p.session_id, pid = p.pid, memory_bytes = memory(p),
                    "a busy agent process is above sessions.max_process_memory; it is left to finish");
            } else if p.stop(RECYCLED) {
                stopped.insert(p.pid);
                left = left.saturating_sub(memory(p));
                report.recycled += 1;
            }
        }
        // Least recently used first (`processes` is in that order).
        for p in watched
            .iter()
            .filter(|p| p.is_idle() && !stopped.contains(&p.pid))
        {
            if left <= total_limit {
                break;
            }
            if p.stop(OVER_TOTAL) {
                left = left.saturating_sub(memory(p));
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
        (report, sampler)
    }

    /// The last reading of a session's process group, if it has a live one.
    pub fn usage_of(&self, session_id: &str) -> Option<Usage> {
        self.usage().get(session_id).copied()
    }
}

const RECYCLED: &str = "recycled: its memory passed sessions.max_process_memory";
/// Where a spare's reading is kept beside the sessions' (no session id is like it).
pub(super) fn spare_key(pid: u32) -> String {
    format!("spare:{pid}")
}

const SPARE_OVER_TOTAL: &str = "stopped: all processes passed sessions.max_total_memory";
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
