//! A running CLI child: its own process group (and, on Linux, a parent-death signal) so it
//! dies with tether; stdin written and stdout read as bounded lines on tasks of their own, so
//! a CLI that stops reading never blocks its owner; a short tail of stderr kept for error
//! reasons; stopped the way the official SDKs do (close stdin, wait, SIGTERM the group, wait,
//! SIGKILL the group), always reaped, and never leaving members of its group behind.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::{mpsc, oneshot},
};

/// Lines read ahead of the actor; the reader waits when this many are unread.
const LINE_CHANNEL: usize = 64;
/// Longest stderr line kept in the tail.
const STDERR_LINE_BYTES: usize = 2048;

/// One stdout line. `len` is its full length; when it exceeds the bound only the first
/// `max_line_bytes` are in `text`.
#[derive(Debug)]
pub struct Line {
    pub text: String,
    pub len: usize,
    pub truncated: bool,
}

/// How long to wait for the rest of a process group to go after SIGKILL.
const GROUP_GONE_WAIT: Duration = Duration::from_secs(2);

/// One line for the stdin writer, and where to say it was written.
type Write = (Vec<u8>, oneshot::Sender<io::Result<()>>);

/// A live child process speaking lines on stdio.
pub struct AgentProcess {
    child: Child,
    /// Lines for the writer task; dropping it closes the child's stdin.
    stdin: Option<mpsc::UnboundedSender<Write>>,
    lines: mpsc::Receiver<io::Result<Line>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    pub pid: u32,
    /// The OS start time of the process (seconds since the epoch), to tell it from a later
    /// process that reuses its pid.
    pub start_time: u64,
}

/// The file a program name runs, looked up as a shell does (on `PATH`, or the path as
/// given) and executable. Checked before every start: a CLI removed since tether started
/// fails its start with this plain reason.
pub fn check_program(program: &OsStr) -> io::Result<PathBuf> {
    which::which(program).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "`{}` is not found or not executable ({e})",
                program.to_string_lossy()
            ),
        )
    })
}

impl AgentProcess {
    /// Starts `cmd` with piped stdio in a process group of its own, once its program is
    /// found (see [`check_program`]).
    pub fn spawn(
        mut cmd: tokio::process::Command,
        max_line_bytes: usize,
        stderr_lines: usize,
    ) -> io::Result<Self> {
        check_program(cmd.as_std().get_program())?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited at once"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdin = child.stdin.take().expect("stdin is piped");
        let (tx, lines) = mpsc::channel(LINE_CHANNEL);
        tokio::spawn(forward_lines(BufReader::new(stdout), max_line_bytes, tx));
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_lines(stdin, queue));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(stderr_lines)));
        tokio::spawn(keep_stderr_tail(
            BufReader::new(stderr),
            stderr_tail.clone(),
            stderr_lines,
            pid,
        ));
        Ok(Self {
            stdin: Some(writes),
            child,
            lines,
            stderr_tail,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        })
    }

    /// Hands one line (a newline is added) to the writer task, which writes lines in
    /// order. The answer says when it was written whole, or why it could not be: a CLI
    /// that never reads never blocks the caller, who can wait for this among other things.
    pub fn write_line(&self, line: &str) -> oneshot::Receiver<io::Result<()>> {
        let (done, written) = oneshot::channel();
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let refused = match &self.stdin {
            Some(stdin) => stdin.send((buf, done)).err().map(|e| e.0 .1),
            None => Some(done),
        };
        if let Some(done) = refused {
            let _ = done.send(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin closed",
            )));
        }
        written
    }

    /// The next stdout line; `None` once stdout is closed (the process is exiting).
    pub async fn next_line(&mut self) -> Option<io::Result<Line>> {
        self.lines.recv().await
    }

    /// Whether the process has exited (checked without waiting; it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines the process wrote on stderr, joined.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for the process to exit (after stdout closed).
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Stops the process: close stdin and let it finish, then SIGTERM, then SIGKILL its
    /// whole group, waiting `grace` between steps. Always reaps it.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let mut status = self.wait(grace).await;
        if status.is_none() {
            signal_group(self.pid, Signal::SIGTERM);
            status = self.wait(grace).await;
        }
        match status {
            Some(status) => {
                // Tools the CLI started and left running share its group: they go too.
                end_group(self.pid).await;
                Some(status)
            }
            None => self.kill().await,
        }
    }

    /// Kills the whole group at once and reaps the process.
    pub async fn kill(mut self) -> Option<ExitStatus> {
        signal_group(self.pid, Signal::SIGKILL);
        let _ = self.child.start_kill();
        let status = self.child.wait().await.ok();
        end_group(self.pid).await;
        status
    }

    /// After the process exited by itself: stops what is left of its group (tools it
    /// started). True once the group is gone.
    pub async fn end_group(&self) -> bool {
        end_group(self.pid).await
    }
}

/// SIGKILLs a process group and waits (bounded) until no live member is left. True when
/// the group is gone (members that are only zombies count as gone).
pub async fn end_group(pgid: u32) -> bool {
    signal_group(pgid, Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + GROUP_GONE_WAIT;
    loop {
        if !group_exists(pgid) || live_group_members(pgid) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pgid, "a process group outlived SIGKILL");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Does any process (zombies included) still belong to this group?
pub fn group_exists(pgid: u32) -> bool {
    // Signal 0 checks for existence without sending anything.
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// Members of a process group that are not zombies.
pub fn live_group_members(pgid: u32) -> usize {
    use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let mut sys = System::new();
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    sys.processes()
        .iter()
        .filter(|(_, p)| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
        .filter(|(pid, _)| {
            nix::unistd::getpgid(Some(Pid::from_raw(pid.as_u32() as i32)))
                .is_ok_and(|g| g.as_raw() as u32 == pgid)
        })
        .count()
}

/// Writes queued lines in order; each is answered once written (or failed). Ends, closing
/// the child's stdin, when the sender is dropped or a write fails.
async fn write_lines(mut stdin: ChildStdin, mut queue: mpsc::UnboundedReceiver<Write>) {
    while let Some((buf, done)) = queue.recv().await {
        let result = match stdin.write_all(&buf).await {
            Ok(()) => stdin.flush().await,
            Err(e) => Err(e),
        };
        let failed = result.is_err();
        let _ = done.send(result);
        if failed {
            return;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Dropped without stop() (a task aborted): leave no group members behind.
        if let Ok(None) = self.child.try_wait() {
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// Sends a signal to a process group, ignoring "no such process".
fn signal_group(pgid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

/// Stops what is left of a CLI process group from an earlier run of tether. Returns true
/// if a live process was killed (members that are only zombies are not survivors).
/// - The leader is alive with the recorded start time: it and its group are killed.
/// - The pid now belongs to another process (another start time): nothing is touched.
/// - The leader is gone (on Linux it died with tether): tools it started may still run in
///   its group. The kernel does not hand out a pid while a group of that id exists, so a
///   group with this id can only be the old one: it is killed.
pub async fn kill_orphan(pid: u32, start_time: u64) -> bool {
    match process_start_time(pid) {
        Some(t) if t != start_time => return false,
        _ => {}
    }
    if !group_exists(pid) {
        return false;
    }
    let survivors = live_group_members(pid);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    end_group(pid).await;
    survivors > 0
}

/// The OS start time of a process, in seconds since the epoch.
pub fn process_start_time(pid: u32) -> Option<u64> {
    use sysinfo::{Pid as SPid, ProcessRefreshKind, ProcessesToUpdate, System};
    let mut sys = System::new();
    let spid = SPid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(spid).map(|p| p.start_time())
}

/// On Linux the child gets SIGKILL when tether dies, however it dies. (macOS has no such
/// call: there a survivor is stopped by [`kill_orphan`] at the next start.)
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
    // parent; it is the only thing done between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}

/// Reads `\n`-terminated lines, keeping at most `max` bytes of each, so a runaway line
/// costs bounded memory. The channel closes at EOF.
async fn forward_lines<R: AsyncBufRead + Unpin>(
    mut reader: R,
    max: usize,
    tx: mpsc::Sender<io::Result<Line>>,
) {
    loop {
        match read_bounded_line(&mut reader, max).await {
            Ok(Some(line)) => {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// One line of at most `max` kept bytes; `None` at EOF with nothing read.
pub async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<Line>> {
    let mut kept = Vec::new();
    let mut len = 0usize;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        len += chunk.len();
        reader.consume(used);
        if end {
            break;
        }
    }
    if kept.last() == Some(&b'\r') {
        kept.pop();
    }
    Ok(Some(Line {
        text: String::from_utf8_lossy(&kept).into_owned(),
        len,
        truncated: len > max,
    }))
}

async fn keep_stderr_tail<R: AsyncBufRead + Unpin>(
    mut reader: R,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    pid: u32,
) {
    while let Ok(Some(line)) = read_bounded_line(&mut reader, STDERR_LINE_BYTES).await {
        tracing::debug!(pid, line = %line.text, "agent stderr");
        if keep == 0 {
            continue;
        }
        let mut tail = tail.lock().expect("stderr tail lock");
        if tail.len() == keep {
            tail.pop_front();
        }
        tail.push_back(line.text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_the_next_line_is_intact() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nshort\r\nlast");
        let mut r = BufReader::with_capacity(7, &input[..]);
        let first = read_bounded_line(&mut r, 10).await.unwrap().unwrap();
        assert_eq!(
            (first.text.len(), first.len, first.truncated),
            (10, 100, true)
        );
        let second = read_bounded_line(&mut r, 10).await.unwrap().unwrap();
        assert_eq!((second.text.as_str(), second.truncated), ("short", false));
        let third = read_bounded_line(&mut r, 10).await.unwrap().unwrap();
        assert_eq!(third.text, "last");
        assert!(read_bounded_line(&mut r, 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn stop_closes_stdin_and_reaps() {
        let cmd = tokio::process::Command::new("cat");
        let mut p = AgentProcess::spawn(cmd, 1024, 4).unwrap();
        p.write_line("hello").await.unwrap().unwrap();
        assert_eq!(p.next_line().await.unwrap().unwrap().text, "hello");
        assert!(p.start_time > 0);
        let status = p.stop(Duration::from_secs(5)).await.unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn stop_also_stops_what_the_process_left_running() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "sleep 300 & echo $!; read line; exit 0"]);
        let mut p = AgentProcess::spawn(cmd, 1024, 4).unwrap();
        let tool: u32 = p.next_line().await.unwrap().unwrap().text.parse().unwrap();
        assert!(process_start_time(tool).is_some());
        let status = p.stop(Duration::from_secs(5)).await.unwrap();
        assert!(status.success(), "the shell ended when stdin closed");
        let gone = async {
            while process_start_time(tool).is_some() && !is_zombie(tool) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("the tool was stopped with its group");
    }

    /// A killed process whose parent has not reaped it yet.
    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(false)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_recorded_process_that_is_only_a_zombie_is_not_a_survivor() {
        let mut cmd = std::process::Command::new("true");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie that still holds its pid and group.
        while !is_zombie(pid) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start_time = process_start_time(pid).unwrap_or(0);
        assert!(!kill_orphan(pid, start_time).await);
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_live_survivor_and_its_group_are_stopped() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 300 & sleep 300"]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let start_time = process_start_time(pid).unwrap();
        assert!(kill_orphan(pid, start_time).await);
        assert!(!child.wait().unwrap().success());
        assert_eq!(live_group_members(pid), 0);
    }

    #[tokio::test]
    async fn stop_escalates_to_kill_when_stdin_is_ignored() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        let p = AgentProcess::spawn(cmd, 1024, 4).unwrap();
        let pid = p.pid;
        let status = p.stop(Duration::from_millis(200)).await.unwrap();
        assert!(!status.success());
        assert!(process_start_time(pid).is_none());
    }
}
