//! A running CLI child: its own process group (and, on Linux, a parent-death signal) so it
//! dies with tether; stdin written at once when the pipe has room, else on a task of its
//! own, so a CLI that stops reading never blocks its owner; stdout read as bounded lines by
//! the owner itself (no hand-over between tasks per line); a short tail of stderr kept for
//! error reasons; stopped the way the official SDKs do (close stdin, wait, SIGTERM the
//! group, wait, SIGKILL the group), always reaped, and never leaving members of its group
//! behind.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, BufReader},
    net::unix::pipe,
    process::{Child, ChildStdout},
    sync::{mpsc, oneshot},
};

/// Longest stderr line kept in the tail.
const STDERR_LINE_BYTES: usize = 2048;
/// How long, after the process exited, its last stderr lines may take to reach the tail
/// (its stderr closes with it, unless something it started keeps it open).
const STDERR_DRAIN: Duration = Duration::from_millis(500);

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

/// The child's stdin. A line is written at once when the pipe has room for it and no line
/// waits before it (a turn's message, nearly always), else by the writer task, in order.
struct Stdin {
    pipe: Arc<pipe::Sender>,
    /// Lines for the writer task.
    queue: mpsc::UnboundedSender<Write>,
    /// Lines handed to the writer task and not yet written (or failed).
    queued: Arc<AtomicUsize>,
}

/// A live child process speaking lines on stdio.
pub struct AgentProcess {
    child: Child,
    /// Dropping it closes the child's stdin (once the writer task wrote what it holds).
    stdin: Option<Stdin>,
    /// Its stdout, read by the process's owner.
    stdout: LineReader<BufReader<ChildStdout>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The task that reads stderr into the tail; it ends when stderr closes.
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
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
        let pipe = Arc::new(pipe::Sender::from_owned_fd(stdin.into_owned_fd()?)?);
        let (writes, queue) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_lines(pipe.clone(), queue, queued.clone()));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(stderr_lines)));
        let stderr_reader = Some(tokio::spawn(keep_stderr_tail(
            BufReader::new(stderr),
            stderr_tail.clone(),
            stderr_lines,
            pid,
        )));
        Ok(Self {
            stdin: Some(Stdin {
                pipe,
                queue: writes,
                queued,
            }),
            child,
            stdout: LineReader::new(BufReader::new(stdout), max_line_bytes),
            stderr_tail,
            stderr_reader,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        })
    }

    /// Writes one line (a newline is added), in order after the lines before it: at once
    /// when the pipe has room, else the rest by the writer task. The answer says when it
    /// was written whole, or why it could not be: a CLI that never reads never blocks the
    /// caller, who can wait for this among other things.
    pub fn write_line(&self, line: &str) -> oneshot::Receiver<io::Result<()>> {
        let (done, written) = oneshot::channel();
        let Some(stdin) = &self.stdin else {
            let _ = done.send(Err(stdin_closed()));
            return written;
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // The owner is the only writer: with nothing queued, no line is being written.
        if stdin.queued.load(Ordering::Acquire) == 0 {
            match write_now(&stdin.pipe, &buf) {
                Ok(n) if n == buf.len() => {
                    let _ = done.send(Ok(()));
                    return written;
                }
                Ok(n) => drop(buf.drain(..n)),
                Err(e) => {
                    let _ = done.send(Err(e));
                    return written;
                }
            }
        }
        stdin.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(refused) = stdin.queue.send((buf, done)) {
            stdin.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = refused.0 .1.send(Err(stdin_closed()));
        }
        written
    }

    /// The next stdout line; `None` once stdout is closed (the process is exiting).
    /// Cancel-safe (see [`LineReader::next`]); the process waits to write while its owner
    /// does not read.
    pub async fn next_line(&mut self) -> Option<io::Result<Line>> {
        self.stdout.next().await
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

    /// Waits for the process to exit, reading (and dropping) what it still prints
    /// meanwhile, so that it is never stuck writing to a full pipe. Once it has exited, its
    /// last stderr lines are in [`AgentProcess::stderr_tail`] (waited for at most
    /// `STDERR_DRAIN`).
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let exited = async {
            loop {
                tokio::select! {
                    status = self.child.wait() => return status,
                    Some(_) = self.stdout.next() => {}
                }
            }
        };
        let status = tokio::time::timeout(limit, exited).await.ok()?.ok()?;
        // Once: a stderr kept open by what the process left running is not waited for again.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
        }
        Some(status)
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
/// the child's stdin (with the owner's handle gone), when the sender is dropped or a write
/// fails.
async fn write_lines(
    pipe: Arc<pipe::Sender>,
    mut queue: mpsc::UnboundedReceiver<Write>,
    queued: Arc<AtomicUsize>,
) {
    while let Some((buf, done)) = queue.recv().await {
        let mut rest = &buf[..];
        let result = loop {
            if rest.is_empty() {
                break Ok(());
            }
            if let Err(e) = pipe.writable().await {
                break Err(e);
            }
            match write_now(&pipe, rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) => break Err(e),
            }
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        let failed = result.is_err();
        let _ = done.send(result);
        if failed {
            return;
        }
    }
}

/// Writes what the pipe takes of `buf` without waiting: how many bytes (0 when it is full).
fn write_now(pipe: &pipe::Sender, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match pipe.try_write(&buf[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

fn stdin_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "stdin closed")
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

/// `\n`-terminated lines of a stream, each kept to at most `max` bytes, so a runaway line
/// costs bounded memory. Read by its owner in place (no task of its own between them):
/// [`LineReader::next`] is cancel-safe, a line's part read so far stays here, so it can
/// wait in a `select!` beside other things.
pub struct LineReader<R> {
    reader: R,
    max: usize,
    /// The current line's kept bytes, and its full length so far.
    kept: Vec<u8>,
    len: usize,
    /// EOF or an error was returned: nothing more comes.
    done: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            kept: Vec::new(),
            len: 0,
            done: false,
        }
    }

    /// The next line; `None` at EOF (a last line without `\n` comes first), and after an
    /// error.
    pub async fn next(&mut self) -> Option<io::Result<Line>> {
        if self.done {
            return None;
        }
        loop {
            // The only wait: what it filled stays in the buffer if this is cancelled.
            let buf = match self.reader.fill_buf().await {
                Ok(buf) => buf,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if buf.is_empty() {
                self.done = true;
                return (self.len > 0).then(|| Ok(self.take()));
            }
            let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = self.max.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.len += chunk.len();
            self.reader.consume(used);
            if end {
                return Some(Ok(self.take()));
            }
        }
    }

    /// The line read so far, whole; the next starts empty.
    fn take(&mut self) -> Line {
        let mut kept = std::mem::take(&mut self.kept);
        let len = std::mem::take(&mut self.len);
        if kept.last() == Some(&b'\r') {
            kept.pop();
        }
        let text = match String::from_utf8(kept) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Line {
            text,
            len,
            truncated: len > self.max,
        }
    }
}

async fn keep_stderr_tail<R: AsyncBufRead + Unpin>(
    reader: R,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    pid: u32,
) {
    let mut lines = LineReader::new(reader, STDERR_LINE_BYTES);
    while let Some(Ok(line)) = lines.next().await {
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
        let mut r = LineReader::new(BufReader::with_capacity(7, &input[..]), 10);
        let first = r.next().await.unwrap().unwrap();
        assert_eq!(
            (first.text.len(), first.len, first.truncated),
            (10, 100, true)
        );
        let second = r.next().await.unwrap().unwrap();
        assert_eq!((second.text.as_str(), second.truncated), ("short", false));
        let third = r.next().await.unwrap().unwrap();
        assert_eq!(third.text, "last");
        assert!(r.next().await.is_none());
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
    async fn a_read_given_up_mid_line_loses_nothing_of_it() {
        use tokio::io::AsyncWriteExt;
        let (mut cli, out) = tokio::io::duplex(64);
        let mut lines = LineReader::new(BufReader::new(out), 100);
        cli.write_all(b"hel").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(20), lines.next()).await;
        assert!(waited.is_err(), "no whole line yet");
        cli.write_all(b"lo\nnext\n").await.unwrap();
        assert_eq!(lines.next().await.unwrap().unwrap().text, "hello");
        assert_eq!(lines.next().await.unwrap().unwrap().text, "next");
    }

    #[tokio::test]
    async fn a_line_longer_than_the_pipe_holds_is_written_whole_and_in_order() {
        let cmd = tokio::process::Command::new("cat");
        let mut p = AgentProcess::spawn(cmd, 1 << 20, 4).unwrap();
        let long = "x".repeat(300_000);
        let first = p.write_line(&long);
        let second = p.write_line("after");
        let read = p.next_line().await.unwrap().unwrap();
        assert_eq!((read.len, read.truncated), (long.len(), false));
        assert_eq!(p.next_line().await.unwrap().unwrap().text, "after");
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert!(p.stop(Duration::from_secs(5)).await.unwrap().success());
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
