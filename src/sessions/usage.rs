//! Memory and CPU use of the CLI process groups, and of the server itself, for the admin view.

use std::collections::HashMap;

use nix::unistd::{getpgid, Pid};
use serde::Serialize;
use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// What one process group uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub memory_bytes: u64,
    /// Percent of one core, summed over the group's members: 250.0 is two and a half cores.
    pub cpu_percent: f32,
}

/// Samples process groups. CPU use is the time spent between two samples, so the same sampler
/// is kept and called again rather than built anew each time.
pub struct Sampler {
    system: System,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self {
            system: System::new(),
        }
    }

    /// Resident memory summed over every live (non-zombie) member of each process group in
    /// `pgids` (each agent process leads its own group, pgid == its pid), and their CPU use since
    /// the previous sample (percent of one core, summed). Groups with no live member are absent
    /// from the map.
    pub fn sample(&mut self, pgids: &[u32]) -> HashMap<u32, Usage> {
        let mut usage = HashMap::new();
        if pgids.is_empty() {
            return usage;
        }
        // Every process must be looked at: a group's members are found by their pgid.
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        for (pid, process) in self.system.processes() {
            // On Linux threads are listed too, each with its process's memory: count processes.
            if process.thread_kind().is_some()
                || matches!(
                    process.status(),
                    ProcessStatus::Zombie | ProcessStatus::Dead
                )
            {
                continue;
            }
            let Ok(pgid) = getpgid(Some(Pid::from_raw(pid.as_u32() as i32))) else {
                continue;
            };
            let pgid = pgid.as_raw() as u32;
            if pgids.contains(&pgid) {
                let group: &mut Usage = usage.entry(pgid).or_default();
                group.memory_bytes += process.memory();
                group.cpu_percent += process.cpu_usage();
            }
        }
        usage
    }
}

/// Resident memory of this process alone (the server, without its children).
pub fn own_memory_bytes() -> Option<u64> {
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map(|p| p.memory())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::Duration;

    use nix::sys::signal::{killpg, Signal};

    use super::*;
    use crate::agent::process::live_group_members;

    /// Runs `sh -c script` as the leader of a new process group.
    fn spawn_group(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .expect("sh starts")
    }

    /// Kills the whole group and reaps the leader.
    fn kill_group(mut child: Child) {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }

    fn rss(pid: u32) -> u64 {
        let pid = sysinfo::Pid::from_u32(pid);
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(pid).map_or(0, |p| p.memory())
    }

    #[test]
    fn a_group_is_summed_over_its_members_and_gone_once_killed() {
        let child = spawn_group("sleep 30 & sleep 30");
        let pgid = child.id();
        // Wait for the shell to have started the background sleep (the shell may exec the other).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while live_group_members(pgid) < 2 {
            assert!(std::time::Instant::now() < deadline, "the group never grew");
            std::thread::sleep(Duration::from_millis(20));
        }

        let mut sampler = Sampler::new();
        let usage = sampler.sample(&[pgid, u32::MAX]);
        let group = usage.get(&pgid).copied().expect("the group is sampled");
        assert!(group.memory_bytes > 0);
        // The other member's resident pages (hundreds of KiB) put the sum above the leader's.
        assert!(
            group.memory_bytes > rss(pgid),
            "{group:?} vs the leader alone"
        );
        assert!(!usage.contains_key(&u32::MAX), "an unknown group is absent");

        kill_group(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sampler.sample(&[pgid]).contains_key(&pgid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the group outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_busy_group_shows_cpu_use() {
        let child = spawn_group("while :; do :; done");
        let pgid = child.id();
        // sysinfo measures from a process's second sighting, and only if by then it had used
        // some CPU time: let the loop run before the first sample.
        std::thread::sleep(Duration::from_millis(100));
        let mut sampler = Sampler::new();
        sampler.sample(&[pgid]);
        std::thread::sleep(Duration::from_millis(300));
        let usage = sampler.sample(&[pgid]);
        kill_group(child);
        let group = usage.get(&pgid).copied().expect("the group is sampled");
        assert!(group.cpu_percent > 10.0, "{group:?}");
    }

    #[test]
    fn the_server_knows_its_own_memory() {
        assert!(own_memory_bytes().is_some_and(|bytes| bytes > 0));
    }
}
