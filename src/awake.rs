//! Keeps the machine from sleeping while tether has work, by holding the platform's sleep
//! inhibitor as a child process (`caffeinate` on macOS, `systemd-inhibit` on Linux) for as long
//! as it is wanted. Each inhibitor also watches tether's pid, so none outlives a killed tether.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// An inhibitor that failed to start or died by itself (systemd-inhibit without logind) is
/// tried again no sooner than this, so a machine without the service does not spawn one per turn.
const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// The reason shown by `systemd-inhibit --list`.
#[cfg(target_os = "linux")]
const WHY: &str = "Claude Code sessions are working";

/// Holds the machine awake on request. Clones share one inhibitor.
#[derive(Clone)]
pub struct KeepAwake {
    inner: Arc<Inner>,
}

struct Inner {
    /// The inhibitor's program and arguments; `None` where keeping awake is off or unavailable.
    command: Option<(OsString, Vec<OsString>)>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    child: Option<Child>,
    /// When the inhibitor last failed to start or was found dead, for the retry interval.
    failed_at: Option<Instant>,
    /// A failure has been logged; later ones are not, as they would repeat it every minute.
    warned: bool,
}

impl KeepAwake {
    /// `enabled` from config `sessions.keep_awake`. Picks the platform's inhibitor, or none
    /// (logged once at info) where there is no inhibitor to run.
    pub fn new(enabled: bool) -> Self {
        if !enabled {
            return Self::from_command(None);
        }
        let command =
            inhibitor(std::process::id()).filter(|(program, _)| which::which(program).is_ok());
        if command.is_none() {
            tracing::info!("keeping the machine awake is not available here");
        }
        Self::from_command(command)
    }

    /// For tests: uses `program` + `args` as the inhibitor command.
    pub fn with_command(program: impl Into<OsString>, args: Vec<OsString>) -> Self {
        Self::from_command(Some((program.into(), args)))
    }

    fn from_command(command: Option<(OsString, Vec<OsString>)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                command,
                state: Mutex::default(),
            }),
        }
    }

    /// Wants the machine awake (true) or not (false). Idempotent; failures are logged, never
    /// returned, as sleeping is the worst that can come of them.
    pub async fn set(&self, wanted: bool) {
        if !wanted {
            return self.release().await;
        }
        let Some((program, args)) = &self.inner.command else {
            return;
        };
        let mut state = self.inner.lock();
        if state.running()
            || state
                .failed_at
                .is_some_and(|at| at.elapsed() < RETRY_INTERVAL)
        {
            return;
        }
        let spawned = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => {
                tracing::info!(pid = child.id(), "keeping the machine awake");
                state.child = Some(child);
            }
            Err(err) => state.failed("the inhibitor did not start", err.to_string()),
        }
    }

    /// Whether an inhibitor child is running now (for the admin view and tests).
    pub fn is_held(&self) -> bool {
        self.inner.lock().running()
    }

    /// Stops the inhibitor and reaps it (called at shutdown).
    pub async fn release(&self) {
        let child = self.inner.lock().child.take();
        if let Some(mut child) = child {
            if let Err(err) = child.kill().await {
                tracing::warn!(error = %err, "could not stop the keep-awake inhibitor");
            }
            tracing::info!("the machine may sleep again");
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Is the child alive? A child that exited by itself is reaped, forgotten and counted as a
    /// failure.
    fn running(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            exited => {
                self.child = None;
                self.failed("the inhibitor exited by itself", format!("{exited:?}"));
                false
            }
        }
    }

    fn failed(&mut self, problem: &'static str, detail: String) {
        self.failed_at = Some(Instant::now());
        if !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(
                problem,
                detail,
                "cannot keep the machine awake; retrying at most once a minute"
            );
        }
    }
}

/// `caffeinate -w` ends when tether does, even on SIGKILL.
#[cfg(target_os = "macos")]
fn inhibitor(pid: u32) -> Option<(OsString, Vec<OsString>)> {
    let args = ["-i", "-w", &pid.to_string()].map(OsString::from);
    Some(("caffeinate".into(), args.into()))
}

/// The inhibitor is held by `tail`, which ends when tether does, even on SIGKILL.
#[cfg(target_os = "linux")]
fn inhibitor(pid: u32) -> Option<(OsString, Vec<OsString>)> {
    let args = [
        "--what=idle:sleep",
        "--who=tether",
        &format!("--why={WHY}"),
        "--mode=block",
        "tail",
        &format!("--pid={pid}"),
        "-f",
        "/dev/null",
    ];
    Some(("systemd-inhibit".into(), args.map(OsString::from).into()))
}

#[cfg(not(any(target_os = "macos", target_os = "linux")))]
fn inhibitor(_pid: u32) -> Option<(OsString, Vec<OsString>)> {
    None
}

#[cfg(test)]
mod tests {
    use nix::{sys::signal::kill, unistd::Pid};

    use super::*;

    fn sleeper() -> KeepAwake {
        KeepAwake::with_command("sleep", vec!["300".into()])
    }

    fn child_pid(awake: &KeepAwake) -> Option<u32> {
        awake.inner.lock().child.as_ref().and_then(Child::id)
    }

    fn exists(pid: u32) -> bool {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[tokio::test]
    async fn holds_one_inhibitor_and_reaps_it_on_release() {
        let awake = sleeper();
        awake.set(true).await;
        assert!(awake.is_held());
        let pid = child_pid(&awake).expect("a child");
        assert!(exists(pid));

        awake.clone().set(true).await;
        assert_eq!(child_pid(&awake), Some(pid), "no second inhibitor");

        awake.set(false).await;
        assert!(!awake.is_held());
        assert!(!exists(pid), "killed and reaped");
        awake.set(false).await;
    }

    #[tokio::test]
    async fn a_missing_program_is_not_held() {
        let awake = KeepAwake::with_command("/nonexistent/tether-inhibitor", vec![]);
        awake.set(true).await;
        assert!(!awake.is_held());
    }

    #[tokio::test]
    async fn a_dead_inhibitor_is_not_restarted_within_the_interval() {
        let awake = KeepAwake::with_command("sh", vec!["-c".into(), "exit 1".into()]);
        awake.set(true).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while awake.is_held() {
            assert!(Instant::now() < deadline, "the child never exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        awake.set(true).await;
        assert_eq!(child_pid(&awake), None);
    }

    #[tokio::test]
    async fn disabled_holds_nothing() {
        let awake = KeepAwake::new(false);
        awake.set(true).await;
        assert!(!awake.is_held());
    }

    #[cfg(any(target_os = "macos", target_os = "linux"))]
    #[test]
    fn the_inhibitor_watches_tethers_pid() {
        let pid = std::process::id();
        let (_, args) = inhibitor(pid).expect("an inhibitor on this OS");
        let expected = if cfg!(target_os = "linux") {
            format!("--pid={pid}")
        } else {
            pid.to_string()
        };
        assert!(args.contains(&OsString::from(expected)), "{args:?}");
    }
}
