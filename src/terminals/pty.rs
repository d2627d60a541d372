//! A program in a pseudo-terminal (portable-pty, on Linux and macOS): started as the leader
//! of a session of its own with the PTY as its controlling terminal, its output read and its
//! input written on threads of their own, its exit awaited by a third thread that reaps it.
//! Everything it starts stays in its session, so ending a terminal signals that session:
//! SIGHUP to its process group first (as a closing terminal window does), then SIGTERM and
//! SIGKILL to every process of the session. If tether dies, the kernel closes the PTY's
//! master side and sends the session SIGHUP; what ignores it is stopped at the next start.

use std::{
    ffi::OsString,
    io::{self, Read, Write},
    path::PathBuf,
    time::Duration,
};

use nix::{
    sys::signal::{kill, killpg, Signal},
    unistd::Pid,
};
use portable_pty::{native_pty_system, CommandBuilder, MasterPty, PtySize};
use tokio::sync::{mpsc, oneshot};

use crate::agent::process::{self, process_start_time};

/// Bytes read from the PTY at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long to wait for the last processes of a session to go after SIGKILL (long on a
/// loaded machine: the reaping thread has to run).
const SESSION_GONE_WAIT: Duration = Duration::from_secs(5);
/// The terminal type programs are told they run in.
const TERM: &str = "xterm-256color";

/// What to run: the program and its arguments (empty: the user's login shell), where, and
/// the whole environment it gets.
#[derive(Debug, Clone)]
pub struct Program {
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
}

impl Program {
    /// The user's login shell (`shell` empty: $SHELL, else the password database's).
    pub fn login_shell(shell: &str, cwd: PathBuf) -> Self {
        let argv = if shell.trim().is_empty() {
            Vec::new()
        } else {
            vec![shell.trim().into(), "-l".into()]
        };
        Self {
            argv,
            cwd,
            env: base_env(),
        }
    }

    /// `program args…` with `extra` added to the environment.
    pub fn command(
        program: impl Into<OsString>,
        args: &[String],
        extra: &[(String, String)],
        cwd: PathBuf,
    ) -> Self {
        let mut env = base_env();
        for (k, v) in extra {
            let name = OsString::from(k);
            if crate::agent::claude::is_settings_var(&name) {
                continue;
            }
            env.retain(|(n, _)| *n != name);
            env.push((name, v.into()));
        }
        let mut argv = vec![program.into()];
        argv.extend(args.iter().map(OsString::from));
        Self { argv, cwd, env }
    }
}

/// tether's own environment without its settings variables (they hold secrets) or a size
/// that would override the PTY's, with `TERM` set for a modern terminal.
fn base_env() -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| !crate::agent::claude::is_settings_var(name))
        .filter(|(name, _)| !matches!(name.to_str(), Some("COLUMNS" | "LINES" | "TERM")))
        .collect();
    env.push(("TERM".into(), TERM.into()));
    env.push(("COLORTERM".into(), "truecolor".into()));
    env
}

/// How the program ended.
#[derive(Debug, Clone)]
pub struct ExitStatus {
    /// Its exit code; None when a signal ended it.
    pub code: Option<i64>,
    /// The signal that ended it, described.
    pub signal: Option<String>,
}

/// A started program: its pid, the PTY's master side (kept open while it runs: closing it
/// hangs the terminal up), and the channels of its threads.
pub struct Spawned {
    pub pid: u32,
    pub start_time: u64,
    pub master: Box<dyn MasterPty + Send>,
    /// Resolves once the program was reaped.
    pub exit: oneshot::Receiver<ExitStatus>,
    /// Input for the writer thread, written in order.
    pub input: mpsc::Sender<Vec<u8>>,
}

/// Chunks of input queued for the writer before senders wait.
const INPUT_QUEUE: usize = 256;

/// Starts `program` in a new PTY of `cols`×`rows`. Each chunk of output goes to `output`
/// on the reader thread; `output_done` is sent when the output ends (nothing holds the
/// terminal any more). Blocking: call it off the async threads.
pub fn spawn(
    program: &Program,
    cols: u16,
    rows: u16,
    mut output: impl FnMut(&[u8]) + Send + 'static,
    output_done: oneshot::Sender<()>,
) -> anyhow::Result<Spawned> {
    let pair = native_pty_system().openpty(size(cols, rows))?;
    let mut cmd = match program.argv.first() {
        None => CommandBuilder::new_default_prog(),
        Some(_) => CommandBuilder::from_argv(program.argv.clone()),
    };
    cmd.env_clear();
    for (k, v) in &program.env {
        cmd.env(k, v);
    }
    cmd.cwd(&program.cwd);
    let mut child = pair.slave.spawn_command(cmd)?;
    // Only the child holds the terminal's other side: its output ends when it (and what it
    // started) let go.
    drop(pair.slave);
    let pid = child
        .process_id()
        .ok_or_else(|| anyhow::anyhow!("the program exited at once"))?;
    let mut reader = pair.master.try_clone_reader()?;
    let mut writer = pair.master.take_writer()?;
    let (exit_tx, exit) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("pty-wait-{pid}"))
        .spawn(move || {
            let status = match child.wait() {
                Ok(s) => ExitStatus {
                    code: s.signal().is_none().then(|| i64::from(s.exit_code())),
                    signal: s.signal().map(str::to_string),
                },
                Err(e) => ExitStatus {
                    code: None,
                    signal: Some(format!("could not be waited for: {e}")),
                },
            };
            let _ = exit_tx.send(status);
        })?;
    std::thread::Builder::new()
        .name(format!("pty-read-{pid}"))
        .spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => output(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = output_done.send(());
        })?;
    let (input, mut queue) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    std::thread::Builder::new()
        .name(format!("pty-write-{pid}"))
        .spawn(move || {
            while let Some(bytes) = queue.blocking_recv() {
                if writer
                    .write_all(&bytes)
                    .and_then(|()| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
        })?;
    Ok(Spawned {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        master: pair.master,
        exit,
        input,
    })
}

pub fn size(cols: u16, rows: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// Ends a program that is still running: SIGHUP to its process group, then SIGTERM, then
/// SIGKILL to every process of its session, `grace` apart, until it was reaped (`exit`
/// resolved). Then nothing of its session is left (see [`end_session`]).
pub async fn stop(
    pid: u32,
    grace: Duration,
    exit: &mut oneshot::Receiver<ExitStatus>,
) -> Option<ExitStatus> {
    let steps = [
        (Signal::SIGHUP, false),
        (Signal::SIGTERM, true),
        (Signal::SIGKILL, true),
    ];
    for (signal, whole_session) in steps {
        // The group always (the program itself, even before sysinfo lists it), then the
        // rest of the session.
        let _ = killpg(Pid::from_raw(pid as i32), signal);
        if whole_session {
            signal_session(pid, signal);
        }
        let wait = if signal == Signal::SIGKILL {
            SESSION_GONE_WAIT
        } else {
            grace
        };
        if let Ok(status) = tokio::time::timeout(wait, &mut *exit).await {
            end_session(pid).await;
            return status.ok();
        }
    }
    tracing::warn!(pid, "a terminal's program outlived SIGKILL");
    end_session(pid).await;
    None
}

/// After the leader was reaped: SIGKILLs what is left of its session (jobs it started,
/// in their own process groups too) and waits, bounded, until none is alive. True when
/// nothing is left.
pub async fn end_session(sid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + SESSION_GONE_WAIT;
    loop {
        let members = session_members(sid);
        if members.is_empty() {
            return true;
        }
        for pid in &members {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sid,
                left = members.len(),
                "processes of a terminal outlived SIGKILL"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` to every live process of the session `sid`.
fn signal_session(sid: u32, signal: Signal) {
    for pid in session_members(sid) {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Live (not zombie) processes whose session is `sid`: the terminal's program and all it
/// started, whatever their process group.
pub fn session_members(sid: u32) -> Vec<u32> {
    use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let mut sys = System::new();
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    sys.processes()
        .iter()
        .filter(|(_, p)| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
        .map(|(pid, _)| pid.as_u32())
        .filter(|pid| {
            nix::unistd::getsid(Some(Pid::from_raw(*pid as i32)))
                .is_ok_and(|s| s.as_raw() as u32 == sid)
        })
        .collect()
}

/// Stops what a terminal of an earlier run of tether left behind: its program (when the
/// pid still is that program, by its start time) and every process of its session. True
/// when something alive was stopped.
pub async fn kill_orphan(pid: u32, start_time: u64) -> bool {
    if process_start_time(pid).is_some_and(|t| t != start_time) {
        return false; // the pid belongs to another process now
    }
    let leader = process::kill_orphan(pid, start_time).await;
    let members = !session_members(pid).is_empty();
    end_session(pid).await;
    leader || members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        Program::command(
            "/bin/sh",
            &["-c".to_string(), script.to_string()],
            &[],
            std::env::temp_dir(),
        )
    }

    /// Starts `program` and collects its output.
    fn start(
        program: &Program,
    ) -> (
        Spawned,
        std::sync::mpsc::Receiver<Vec<u8>>,
        oneshot::Receiver<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done) = oneshot::channel();
        let spawned = spawn(program, 80, 24, move |b| drop(tx.send(b.to_vec())), done_tx).unwrap();
        (spawned, rx, done)
    }

    fn text(rx: &std::sync::mpsc::Receiver<Vec<u8>>) -> String {
        String::from_utf8_lossy(&rx.try_iter().flatten().collect::<Vec<u8>>()).into_owned()
    }

    #[tokio::test]
    async fn a_program_runs_in_a_terminal_of_its_size_with_an_explicit_environment() {
        std::env::set_var("TETHER__TEST__SECRET", "hidden");
        let (mut p, rx, done) = start(&sh(
            "stty size; echo \"term=$TERM secret=${TETHER__TEST__SECRET:-none}\"; exit 3",
        ));
        let status = (&mut p.exit).await.unwrap();
        done.await.unwrap();
        assert_eq!(status.code, Some(3));
        let out = text(&rx);
        assert!(out.contains("24 80"), "{out}");
        assert!(out.contains("term=xterm-256color secret=none"), "{out}");
    }

    #[tokio::test]
    async fn input_is_written_in_order_and_echoed() {
        let (mut p, rx, _done) = start(&Program::command("cat", &[], &[], std::env::temp_dir()));
        for chunk in ["one ", "two ", "three\n"] {
            p.input.send(chunk.as_bytes().to_vec()).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        while !seen.contains("one two three\r\none two three") {
            assert!(tokio::time::Instant::now() < deadline, "{seen}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen.push_str(&text(&rx));
        }
        let status = stop(p.pid, Duration::from_secs(2), &mut p.exit)
            .await
            .unwrap();
        assert_eq!(status.code, None, "ended by SIGHUP: {status:?}");
    }

    #[tokio::test]
    async fn stop_escalates_and_leaves_nothing_of_the_session() {
        // A program that ignores SIGHUP and SIGTERM, with a job in another process group.
        let (mut p, _rx, _done) = start(&sh("trap '' HUP TERM; set -m; sleep 300 & sleep 300"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while session_members(p.pid).len() < 3 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = stop(p.pid, Duration::from_millis(200), &mut p.exit)
            .await
            .unwrap();
        assert_eq!(status.code, None);
        assert!(session_members(p.pid).is_empty());
    }
}
