//! Warm spares (`sessions.warm_spares`): CLI processes started ahead in the most recently
//! used project folders, each holding a fresh conversation id, so that a new session's
//! first message goes to a process that has already started. A new session in that folder
//! takes the spare's id as its own (claimed when the session is created, adopted by its
//! actor at the first turn); the CLI writes nothing for a conversation until its first
//! line, so a spare that is never used leaves no trace. Spares hold process slots and
//! count toward memory, are the first to go when either is needed, are replaced after
//! use, and one that dies is replaced after a pause that doubles with each death.
//! [`Sessions::spare_tick`] is one step of the keeper; [`run`] repeats it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::{
    accept::{checked_folder, resolve_project},
    handle::Sessions,
    resources::spare_key,
    spare_pool::{Pool, Spare},
};
use crate::{
    agent::{process::AgentProcess, Launch},
    store::{self, spares},
};

/// A claimed spare not adopted by then (its session's insert failed) is stopped.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How long the wanted folders are used before they are read again (a new session makes
/// them stale at once).
const FOLDERS_FRESH: Duration = Duration::from_secs(30);
/// How often the keeper looks for dead spares when nothing wakes it.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The pause after a spare dies (doubling with each death in a row), and its cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What one step of the keeper did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpareReport {
    pub started: usize,
    /// Spares found dead (or that could not start).
    pub died: usize,
    /// Spares stopped (no longer wanted in their folder, or claimed and never taken).
    pub stopped: usize,
    /// Spares waiting now.
    pub ready: usize,
}

/// A spare as the admin sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpareInfo {
    pub pid: u32,
    pub project_path: String,
    pub age_seconds: u64,
    /// Taken by a new session whose first turn has not started yet.
    pub claimed: bool,
    /// Resident memory at the last reading (with anything it started).
    pub memory_bytes: Option<u64>,
}

impl Sessions {
    fn spares(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of a waiting spare in `project`, reserved for the new session about to be
    /// created there (which takes it as its own id); None when there is none.
    pub(super) fn claim_spare(&self, project: &Path) -> Option<String> {
        let mode = &self.deps().agent_settings.permission_mode;
        let mut pool = self.spares();
        for spare in pool.spares.iter_mut() {
            if spare.claimed_at.is_none()
                && spare.cwd == project
                && &spare.permission_mode == mode
                && !spare.process.has_exited()
            {
                spare.claimed_at = Some(Instant::now());
                tracing::debug!(pid = spare.process.pid, session_id = %spare.id, "spare claimed");
                return Some(spare.id.clone());
            }
        }
        None
    }

    /// The spare claimed for `session_id`, handed over to its actor; the keeper is woken
    /// to start its replacement.
    pub(super) fn take_spare(&self, session_id: &str) -> Option<Spare> {
        let mut pool = self.spares();
        let at = pool
            .spares
            .iter()
            .position(|s| s.claimed_at.is_some() && s.id == session_id)?;
        let spare = pool.spares.swap_remove(at);
        pool.failures = 0;
        pool.not_before = None;
        drop(pool);
        metrics::counter!("tether_spares_used_total").increment(1);
        // Replaced at the keeper's next step, not now: starting a process costs CPU the
        // session's first turn is using.
        Some(spare)
    }

    /// Stops the oldest unclaimed spare to free its slot (a session needs one). True when
    /// there was one; its slot is free once it has stopped.
    pub(super) fn drop_one_spare(&self, reason: &'static str) -> bool {
        let spare = {
            let mut pool = self.spares();
            let Some(at) = oldest_unclaimed(&pool.spares) else {
                return false;
            };
            pool.spares.remove(at)
        };
        let sessions = self.clone();
        tokio::spawn(async move { sessions.stop_spare(spare, reason).await });
        true
    }

    /// While `full`, no spare starts (the memory watch's say).
    pub(super) fn hold_back_spares(&self, full: bool) {
        self.spares().memory_full = full;
    }

    /// Pids of the spares (for the memory watch).
    pub(super) fn spare_pids(&self) -> Vec<u32> {
        self.spares().spares.iter().map(|s| s.process.pid).collect()
    }

    /// The spares, oldest first.
    pub fn spare_list(&self) -> Vec<SpareInfo> {
        let mut list: Vec<SpareInfo> = self
            .spares()
            .spares
            .iter()
            .map(|s| SpareInfo {
                pid: s.process.pid,
                project_path: s.cwd.to_string_lossy().into_owned(),
                age_seconds: s.started.elapsed().as_secs(),
                claimed: s.claimed_at.is_some(),
                memory_bytes: None,
            })
            .collect();
        for s in &mut list {
            s.memory_bytes = self.usage_of(&spare_key(s.pid)).map(|u| u.memory_bytes);
        }
        list.sort_by_key(|s| std::cmp::Reverse(s.age_seconds));
        list
    }

    /// Stops a spare, forgets its record and frees its slot. It has read nothing and holds
    /// no conversation, so it is killed at once (with its group) rather than asked to stop:
    /// its slot is free in a moment.
    pub(super) async fn stop_spare(&self, spare: Spare, reason: &str) {
        let Spare { process, slot, .. } = spare;
        let pid = process.pid;
        process.kill().await;
        drop(slot);
        if let Err(e) = spares::remove(self.deps().store.pool(), pid).await {
            tracing::error!(pid, error = %e, "could not forget a spare's record");
        }
        tracing::info!(pid, reason, "spare process stopped");
    }

    /// Stops every spare (at shutdown, or when spares are off).
    pub(super) async fn stop_all_spares(&self, reason: &str) -> usize {
        let all: Vec<Spare> = self.spares().spares.drain(..).collect();
        let n = all.len();
        futures::future::join_all(all.into_iter().map(|s| self.stop_spare(s, reason))).await;
        n
    }

    /// Stops spares an earlier run recorded and left behind (a start after a crash).
    pub(super) async fn stop_orphan_spares(&self) -> sqlx::Result<()> {
        let pool = self.deps().store.pool();
        for (pid, start_time) in spares::all(pool).await? {
            if crate::agent::process::kill_orphan(pid, start_time).await {
                tracing::warn!(pid, "stopped a spare process left by an earlier run");
            }
            spares::remove(pool, pid).await?;
        }
        Ok(())
    }

    /// One step of the keeper: dead spares and stale claims go, spares no longer wanted
    /// in their folder stop, and missing ones start (while a slot is free and no backoff
    /// holds them back). The wanted folders are the `sessions.warm_spares` most recently
    /// used ones still inside `projects.roots`; fewer folders than spares means several
    /// in the most recent ones.
    pub async fn spare_tick(&self) -> SpareReport {
        let mut report = SpareReport::default();
        let wanted_count = self.deps().session_settings.warm_spares;
        if self.is_closing() || wanted_count == 0 {
            report.stopped = self.stop_all_spares("spares are off").await;
            return report;
        }
        let (dead, stale) = self.take_dead_and_stale();
        report.died = dead.len();
        report.stopped = stale.len();
        if !dead.is_empty() {
            self.back_off();
        }
        for spare in dead {
            let tail = spare.process.stderr_tail();
            tracing::warn!(pid = spare.process.pid, stderr = %tail.trim(), "a spare process died");
            // Reaped, with what is left of its group, its record and its slot.
            self.stop_spare(spare, "it died").await;
        }
        for spare in stale {
            self.stop_spare(spare, "claimed but never taken").await;
        }

        let wanted = match self.wanted_folders(wanted_count).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "could not read recent project folders");
                return report;
            }
        };
        // Unclaimed spares matched against the wanted folders; the rest are surplus.
        let mut missing = wanted;
        let surplus: Vec<Spare> = {
            let mut pool = self.spares();
            let mut keep = Vec::new();
            let mut extra = Vec::new();
            for s in pool.spares.drain(..) {
                if s.claimed_at.is_some() {
                    keep.push(s);
                } else if let Some(i) = missing.iter().position(|f| *f == s.cwd) {
                    missing.swap_remove(i);
                    keep.push(s);
                } else {
                    extra.push(s);
                }
            }
            pool.spares = keep;
            extra
        };
        report.stopped += surplus.len();
        for spare in surplus {
            self.stop_spare(spare, "its folder is no longer among the most recent")
                .await;
        }
        for folder in missing {
            {
                let pool = self.spares();
                if pool.memory_full || pool.not_before.is_some_and(|t| Instant::now() < t) {
                    break;
                }
            }
            // Only a free slot: a spare never makes a session's process wait or go.
            let Ok(slot) = self.inner.slots.clone().try_acquire_owned() else {
                break;
            };
            match self.start_spare(folder, slot).await {
                Ok(()) => report.started += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a spare process");
                    report.died += 1;
                    self.back_off();
                    break;
                }
            }
        }
        report.ready = self.spares().spares.len();
        metrics::gauge!("tether_spares").set(report.ready as f64);
        report
    }

    /// Removes spares whose process exited, and claimed spares never adopted.
    fn take_dead_and_stale(&self) -> (Vec<Spare>, Vec<Spare>) {
        let mut pool = self.spares();
        let (mut dead, mut stale, mut keep) = (Vec::new(), Vec::new(), Vec::new());
        for mut s in pool.spares.drain(..) {
            if s.process.has_exited() {
                dead.push(s);
            } else if s.claimed_at.is_some_and(|t| t.elapsed() > CLAIM_TTL) {
                stale.push(s);
            } else {
                keep.push(s);
            }
        }
        pool.spares = keep;
        (dead, stale)
    }

    /// The next start waits twice as long as the last (from [`FIRST_BACKOFF`]).
    fn back_off(&self) {
        let mut pool = self.spares();
        pool.failures += 1;
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << pool.failures.min(16).saturating_sub(1))
            .min(MAX_BACKOFF);
        pool.not_before = Some(Instant::now() + pause);
        tracing::info!(
            failures = pool.failures,
            pause_ms = pause.as_millis() as u64,
            "next spare start held back"
        );
    }

    /// A session was created: the most recently used folders may have changed.
    pub(super) fn folders_changed(&self) {
        self.spares().folders = None;
    }

    /// `n` folders for spares: the most recently used ones that are still allowed, the
    /// most recent repeated when there are fewer than `n`.
    async fn wanted_folders(&self, n: usize) -> sqlx::Result<Vec<PathBuf>> {
        if let Some((at, folders)) = &self.spares().folders {
            if at.elapsed() < FOLDERS_FRESH {
                return Ok(folders.clone());
            }
        }
        let read = self.read_wanted_folders(n).await?;
        self.spares().folders = Some((Instant::now(), read.clone()));
        Ok(read)
    }

    async fn read_wanted_folders(&self, n: usize) -> sqlx::Result<Vec<PathBuf>> {
        let recent = spares::recent_projects(self.deps().store.pool(), n).await?;
        let mut folders = Vec::new();
        for raw in recent {
            if let Ok(path) = resolve_project(&self.deps().projects, &raw).await {
                folders.push(path);
            }
        }
        if folders.is_empty() {
            return Ok(folders);
        }
        Ok(folders.iter().cycle().take(n).cloned().collect())
    }

    /// Starts one spare in `folder` with `slot`, and records it.
    async fn start_spare(&self, folder: PathBuf, slot: OwnedSemaphorePermit) -> anyhow::Result<()> {
        let deps = self.deps();
        // Checked again right before the start, as every process's folder is.
        let folder =
            checked_folder(&deps.projects, &folder).map_err(|e| anyhow::anyhow!(e.message()))?;
        let launch = Launch {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            cwd: folder,
            resume: false,
            permission_mode: deps.agent_settings.permission_mode.clone(),
        };
        let settings = &deps.agent_settings;
        let process = AgentProcess::spawn(
            deps.agent.command(&launch),
            settings.max_line_bytes,
            settings.stderr_tail_lines,
        )?;
        let spare = Spare {
            id: launch.conversation_id,
            cwd: launch.cwd,
            permission_mode: launch.permission_mode,
            process,
            slot,
            started: Instant::now(),
            claimed_at: None,
        };
        let recorded = spares::insert(
            deps.store.pool(),
            &spares::NewSpare {
                pid: spare.process.pid,
                start_time: spare.process.start_time,
                conversation_id: &spare.id,
                project_path: &spare.cwd.to_string_lossy(),
                now: store::now_ms(),
            },
        )
        .await;
        if let Err(e) = recorded {
            self.stop_spare(spare, "its record could not be stored")
                .await;
            return Err(e.into());
        }
        metrics::counter!("tether_spares_started_total").increment(1);
        tracing::info!(pid = spare.process.pid, cwd = %spare.cwd.display(), "spare process started");
        self.spares().spares.push(spare);
        Ok(())
    }
}

fn oldest_unclaimed(spares: &[Spare]) -> Option<usize> {
    spares
        .iter()
        .enumerate()
        .filter(|(_, s)| s.claimed_at.is_none())
        .min_by_key(|(_, s)| s.started)
        .map(|(i, _)| i)
}

/// Keeps the spares until tether stops: a step at start and every second (a taken spare is
/// replaced, a dead one found). With `sessions.warm_spares = 0` there is nothing to keep.
pub async fn run(sessions: Sessions) {
    if sessions.deps().session_settings.warm_spares == 0 {
        return;
    }
    let mut stop = sessions.stopping();
    loop {
        let report = sessions.spare_tick().await;
        if report.started + report.died + report.stopped > 0 {
            tracing::debug!(?report, "spare step");
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    sessions.stop_all_spares("tether is shutting down").await;
}
