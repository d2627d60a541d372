//! The test kit, shared by the integration tests and the benchmark: the real `tether` binary
//! started as a process (a config file and `TETHER__*` settings, port 0), ready once it has
//! printed the address it listens on; its tokens; stopped, killed or started again; a poll
//! that waits for a condition, never a fixed time; and the tiers (quick by default, the full
//! tier when `TETHER_TEST_FULL=1`).

#![allow(dead_code)]

use std::{
    ffi::{OsStr, OsString},
    future::Future,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often [`wait_for`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns Some, or fails the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until(DEADLINE, what, check).await
}

/// Polls `check` until it returns Some, or fails the test after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The variable that runs the full tier: the load and kill runs, the floods, the real CLI and
/// the Python SDK (`scripts/test.sh` sets it). Without it `cargo test` is the quick tier.
pub const FULL_TIER: &str = "TETHER_TEST_FULL";

/// Whether the full tier runs. When it does not, says on stderr that `what` was skipped;
/// under CI (`CI` set) it fails instead, as CI runs every tier.
pub fn full_tier(what: &str) -> bool {
    if std::env::var(FULL_TIER).is_ok_and(|v| v == "1") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{FULL_TIER}=1 is not set under CI, where every tier runs (scripts/test.sh sets it)"
    );
    skipped(&format!(
        "{what}: the full tier runs it ({FULL_TIER}=1, as scripts/test.sh sets)"
    ));
    false
}

/// Says that a test did not run, on the process's stderr itself: the harness shows it even
/// for a test that passed (it captures only `print!`/`eprint!`).
pub fn skipped(why: &str) {
    use std::io::Write;
    // The harness names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// How to start `tether serve`: its config file (if any) and the environment it gets. Other
/// `tether` commands made from it ([`Launch::command`]) read the same settings, so they find
/// the same data folder and secret.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Another tether build to run (the benchmark's baseline); this one's by default.
    binary: Option<PathBuf>,
    config: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// The open-file limit (soft and hard) set in the child before it runs (Unix).
    nofile: Option<u64>,
}

impl Launch {
    /// `tether serve` with no config file: the defaults and what [`Launch::setting`] says.
    pub fn new() -> Self {
        Self::default()
    }

    /// `tether serve --config FILE`.
    pub fn with_config(file: &Path) -> Self {
        Self {
            config: Some(file.to_path_buf()),
            ..Self::default()
        }
    }

    /// Runs `binary` (another tether build) instead of the one built with the tests.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// A setting given the usual way, by environment: `("SERVER__MAX_CONNECTIONS", "64")`
    /// becomes `TETHER__SERVER__MAX_CONNECTIONS=64`.
    pub fn setting(self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env(format!("TETHER__{key}"), value)
    }

    /// A variable of the child's environment (the agent inherits it).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts the server with its open-file limit set to `limit` (Unix; ignored elsewhere).
    pub fn open_files(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// The config file, if it has one.
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// `tether ARGS… [--config FILE]` with this launch's environment, and neither `RUST_LOG`
    /// nor `RUST_BACKTRACE` from the test's own.
    pub fn command(&self, args: &[&str]) -> Command {
        let binary = self.binary.as_deref();
        let mut cmd = Command::new(binary.unwrap_or(Path::new(env!("CARGO_BIN_EXE_tether"))));
        cmd.args(args);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `tether token` (`--user OWNER`, or `--admin` for "admin"): a token it records beside
    /// the server and the server accepts.
    pub fn token(&self, owner: &str) -> String {
        let args: &[&str] = if owner == "admin" {
            &["token", "--admin"]
        } else {
            &["token", "--user", owner]
        };
        let out = self.command(args).output().expect("tether token runs");
        assert!(
            out.status.success(),
            "tether token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Starts `tether serve` and waits until it is ready: it prints the address it listens
    /// on (and, over TLS, its certificate's fingerprint next) once the listener is bound.
    pub fn start(self) -> Server {
        let mut cmd = self.command(&["serve"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        #[cfg(unix)]
        if let Some(limit) = self.nofile {
            set_open_file_limit_in_child(&mut cmd, limit);
        }
        let mut child = cmd.spawn().expect("tether starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("tether listening on ")
            .unwrap_or_else(|| panic!("the address line, got {line:?}"))
            .to_string();
        let fingerprint = base.starts_with("https://").then(|| {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix("tls fingerprint sha256 ")
                .unwrap_or_else(|| panic!("the fingerprint line, got {line:?}"))
                .to_string()
        });
        Server {
            child,
            base,
            fingerprint,
            launch: self,
        }
    }
}

/// `tether serve` running as a process of its own. Killed (and reaped) when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or `https://…`).
    pub base: String,
    /// Over TLS, the SHA-256 fingerprint of its certificate, as it printed it.
    pub fingerprint: Option<String>,
    launch: Launch,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        let host = self.base.split_once("://").map_or(&*self.base, |(_, h)| h);
        host.parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its config file (panics for a server started without one).
    pub fn config(&self) -> &Path {
        self.launch.config().expect("started with a config file")
    }

    /// How it was started.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// Another `tether` command beside it (same config file and environment).
    pub fn command(&self, args: &[&str]) -> Command {
        self.launch.command(args)
    }

    /// A token for `owner` ("admin" for the admin), recorded by `tether token` beside it.
    pub fn token(&self, owner: &str) -> String {
        self.launch.token(owner)
    }

    /// `POST /api/chat` with `token` and `body`: the JSON it answers.
    pub async fn chat(&self, token: &str, body: serde_json::Value) -> serde_json::Value {
        let request = reqwest::Client::new()
            .post(self.url("/api/chat"))
            .json(&body);
        json_of(request.bearer_auth(token)).await
    }

    /// `GET path` with `token`: the JSON it answers.
    pub async fn get(&self, token: &str, path: &str) -> serde_json::Value {
        json_of(
            reqwest::Client::new()
                .get(self.url(path))
                .bearer_auth(token),
        )
        .await
    }

    #[cfg(unix)]
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for it to exit, at most `limit`; None if it is still running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Graceful stop (SIGTERM), waited for; gives back how to start it again.
    #[cfg(unix)]
    pub fn stop(mut self) -> Launch {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap();
        self.launch.clone()
    }

    /// SIGKILL, waited for: nothing of it runs on; gives back how to start it again.
    pub fn kill(mut self) -> Launch {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.launch.clone()
    }

    /// Stops gracefully and starts again on the same settings.
    #[cfg(unix)]
    pub fn restart(self) -> Server {
        self.stop().start()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the open-file limit (soft and hard) of the child `cmd` starts, before it runs.
#[cfg(unix)]
#[allow(unsafe_code)] // pre_exec: the closure only calls setrlimit, which is async-signal-safe
fn set_open_file_limit_in_child(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let limit = limit as nix::libc::rlim_t;
    // SAFETY: runs in the forked child before exec; setrlimit allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
}

/// Sends `request` and reads its answer as JSON.
async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}
