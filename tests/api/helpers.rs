//! The test harness: the real application in this process on port 0 with a temp data folder,
//! a project folder inside the allowed roots, the fake Claude CLI as its agent, and tokens;
//! and the settings with which the kit ([`crate::kit`]) starts the binary for these tests.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use reqwest::StatusCode;
// reqwest's rustls, for a verifier that pins the test server's certificate.
use rustls_023 as rustls;
use serde_json::{json, Value};
use tempfile::TempDir;
use tether::{auth::Role, config::Settings, push::PushGateway, AppState, Application};
use tokio::{sync::oneshot, task::JoinHandle};

pub use crate::kit::{wait_for, Launch, Server, DEADLINE};

/// The secret of the servers the tests start.
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret";

pub fn fake_claude() -> &'static str {
    env!("CARGO_BIN_EXE_fake-claude")
}

/// Settings for a test app living in `dir`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    s.server.bind = "127.0.0.1:0".parse().unwrap();
    s.server.shutdown_grace = Duration::from_secs(2);
    s.server.wait_timeout = Duration::from_secs(30);
    s.database.path = dir.join("data/tether.db");
    s.agent.command = fake_claude().to_string();
    s.agent.args = vec![];
    s.agent.stop_grace = Duration::from_secs(2);
    s.agent.env.insert(
        "CLAUDE_CONFIG_DIR".into(),
        dir.join("claude-config").to_string_lossy().into_owned(),
    );
    // The real CLI takes 0.3 to 0.5 s to start (it reads stdin only then).
    s.agent
        .env
        .insert("FAKE_CLAUDE_START_DELAY_MS".into(), "300".into());
    s.agent.env.insert(
        "FAKE_CLAUDE_LOG".into(),
        dir.join("fake-claude.log").to_string_lossy().into_owned(),
    );
    s.projects.roots = vec![dir.join("projects")];
    // Tests must not hold the machine awake (the keep-awake has its own tests).
    s.sessions.keep_awake = false;
    // Spares add processes that tests count; the spare tests and the load runs turn them on.
    s.sessions.warm_spares = 0;
    // Tests poll; the request rate has its own test.
    s.server.requests_per_minute = 0;
    s.auth.secret = TEST_SECRET.to_string().into();
    s.log.filter = "warn".into();
    s
}

/// A token recorded in the app's store, as `tether token` makes one.
pub async fn recorded_token(state: &AppState, owner: &str, role: Role) -> String {
    state
        .auth
        .issue_recorded(state.store.pool(), owner, role, Some("test"), false)
        .await
        .expect("a recorded token")
        .token
}

/// `tether token` (`--user OWNER`, or `--admin` for the admin's name) beside a server whose
/// database is `db` and whose secret is `secret`: a token it records and accepts.
pub fn cli_token(db: &Path, secret: &str, owner: &str) -> String {
    Launch::new()
        .setting("DATABASE__PATH", db)
        .setting("AUTH__SECRET", secret)
        .token(owner)
}

/// The project folder `projects/demo` in `dir`, made if missing, as its canonical path.
pub fn demo_project(dir: &Path) -> PathBuf {
    let project = dir.join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::canonicalize(project).unwrap()
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub token: String,
    pub admin_token: String,
    /// A user token of another owner (`stranger_token`).
    stranger: String,
    pub state: AppState,
    pub settings: Settings,
    pub project: PathBuf,
    pub dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = test_settings(dir.path());
    configure(&mut settings);
    TestApp::start(settings, dir).await
}

/// `Application::build` (with `gateway` when given) on a data folder an app of this process
/// may just have released. Its lock is free then, but a child that another test is starting
/// holds a copy of every descriptor (the lock's too) from its fork until its exec: a start
/// refused for that is tried again until the copy is gone. The lock is taken before anything
/// is written, so a refused start changed nothing.
pub async fn build_when_unlocked(
    settings: &Settings,
    gateway: Option<Arc<dyn PushGateway>>,
) -> anyhow::Result<Application> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let built = match gateway.clone() {
            Some(gateway) => Application::build_with_gateway(settings.clone(), gateway).await,
            None => Application::build(settings.clone()).await,
        };
        match built {
            Err(e)
                if e.to_string().contains("already running on the data folder")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            built => return built,
        }
    }
}

impl TestApp {
    pub async fn start(settings: Settings, dir: Arc<TempDir>) -> Self {
        Self::start_with(settings, dir, None).await
    }

    /// Starts the app on `dir`, with `gateway` as its push gateway when given (else the one
    /// the settings ask for).
    pub async fn start_with(
        settings: Settings,
        dir: Arc<TempDir>,
        gateway: Option<Arc<dyn PushGateway>>,
    ) -> Self {
        let project = demo_project(dir.path());
        let app = build_when_unlocked(&settings, gateway).await;
        Self::serve(app.expect("app builds"), settings, dir, project).await
    }

    async fn serve(
        app: Application,
        settings: Settings,
        dir: Arc<TempDir>,
        project: PathBuf,
    ) -> Self {
        let base = app.base_url();
        let state = app.state().clone();
        // Over TLS, the client trusts the server's certificate as the app does: by pinning it.
        let client = match &state.tls_fingerprint {
            Some(fingerprint) => pinned_client(fingerprint),
            None => reqwest::Client::new(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client,
            token: recorded_token(&state, "me", Role::User).await,
            admin_token: recorded_token(&state, "admin", Role::Admin).await,
            stranger: recorded_token(&state, "someone-else", Role::User).await,
            state,
            settings,
            project,
            dir,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// Graceful stop (as on SIGTERM); returns when every child is reaped.
    pub async fn stop(mut self) -> (Settings, Arc<TempDir>) {
        self.stop_inner().await;
        (self.settings.clone(), self.dir.clone())
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            join.await.expect("server task").expect("server ran");
        }
    }

    /// Stops gracefully and starts again on the same data folder.
    pub async fn restart(self) -> TestApp {
        let (settings, dir) = self.stop().await;
        TestApp::start(settings, dir).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status(), StatusCode::OK, "GET {path}");
        res.json().await.unwrap()
    }

    /// Sends a message and waits for the turn to end; returns the 200 body.
    pub async fn chat_wait(&self, text: &str, session_id: Option<&str>) -> Value {
        let mut body = json!({"message": text, "wait": true});
        match session_id {
            Some(id) => body["sessionId"] = id.into(),
            None => body["projectPath"] = self.project.to_string_lossy().into(),
        }
        let res = self.post("/api/chat", body).await;
        assert_eq!(res.status(), StatusCode::OK, "chat_wait({text})");
        res.json().await.unwrap()
    }

    /// Starts a session with `text` and waits for the reply; returns the session's id.
    pub async fn new_session(&self, text: &str) -> String {
        self.chat_wait(text, None).await["sessionId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The pid of the session's live process (panics when it has none).
    pub fn pid_of(&self, session_id: &str) -> u32 {
        self.state
            .sessions
            .process_info(session_id)
            .pid
            .expect("a live process")
    }

    /// The warm spares the admin sees now (`GET /api/sessions/active`).
    pub async fn spares(&self) -> Vec<Value> {
        let v: Value = self
            .get_as(&self.admin_token, "/api/sessions/active")
            .await
            .json()
            .await
            .unwrap();
        v["spares"].as_array().unwrap().clone()
    }

    /// A user token of another owner, who must see none of "me"'s things.
    pub fn stranger_token(&self) -> String {
        self.stranger.clone()
    }

    /// A new recorded token for `owner` (the server accepts only those).
    pub async fn token_for(&self, owner: &str, role: Role) -> String {
        recorded_token(&self.state, owner, role).await
    }

    /// Sends a message without waiting; returns the 202 body.
    pub async fn chat(&self, text: &str, session_id: Option<&str>) -> Value {
        let mut body = json!({"message": text});
        match session_id {
            Some(id) => body["sessionId"] = id.into(),
            None => body["projectPath"] = self.project.to_string_lossy().into(),
        }
        let res = self.post("/api/chat", body).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "chat({text})");
        res.json().await.unwrap()
    }

    pub async fn messages(&self, session_id: &str) -> Vec<Value> {
        let v = self
            .get_json(&format!("/api/sessions/{session_id}/messages"))
            .await;
        v["messages"].as_array().unwrap().clone()
    }

    pub async fn message(&self, session_id: &str, message_id: i64) -> Value {
        let page = self
            .get_json(&format!(
                "/api/sessions/{session_id}/messages?after={}&limit=1",
                message_id - 1
            ))
            .await;
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == message_id)
            .cloned()
            .expect("message exists")
    }

    /// Waits until a message reaches a terminal state and returns it.
    pub async fn wait_terminal(&self, session_id: &str, message_id: i64) -> Value {
        wait_for("message to end", || async {
            let m = self.message(session_id, message_id).await;
            let done = !matches!(m["status"].as_str(), Some("queued" | "running"));
            done.then_some(m)
        })
        .await
    }

    /// The invocations the fake CLI logged: each `{"pid", "argv", "cwd"}`.
    pub fn invocations(&self) -> Vec<Value> {
        let path = self.dir.path().join("fake-claude.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits until the process `pid` is gone (reaped or a zombie).
pub async fn wait_gone(pid: u32) {
    wait_for(&format!("process {pid} to end"), || async {
        (!pid_alive(pid)).then_some(())
    })
    .await
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    tether::agent::process::process_start_time(pid).is_some()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(false)
}

impl TestApp {
    /// Waits until a message has left the queue (running or ended).
    pub async fn wait_terminal_or_running(&self, session_id: &str, message_id: i64) -> Value {
        wait_for("message to start", || async {
            let m = self.message(session_id, message_id).await;
            (m["status"] != "queued").then_some(m)
        })
        .await
    }
}

impl TestApp {
    /// GET with another caller's token.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `GET /health` with the admin token: the whole report.
    pub async fn health(&self) -> Value {
        let res = self.get_as(&self.admin_token, "/health").await;
        res.json().await.expect("health JSON")
    }

    /// `GET /health` without a token, as a monitor sends it: (status code, body).
    pub async fn health_anonymous(&self) -> (StatusCode, Value) {
        let res = self
            .client
            .get(self.url("/health"))
            .send()
            .await
            .expect("request");
        (res.status(), res.json().await.expect("health JSON"))
    }
}

/// The status and `error.code` of an error answer.
pub async fn error_code(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: Value = res.json().await.expect("JSON error body");
    let code = body["error"]["code"].as_str().unwrap_or_default();
    (status, code.to_string())
}

/// `tether serve` configured by `TETHER__*` settings alone (no config file) on port 0, its
/// data in `dir`, the fake CLI as its agent; add settings, then start it.
pub fn env_launch(dir: &Path) -> Launch {
    demo_project(dir);
    Launch::new()
        .setting("SERVER__BIND", "127.0.0.1:0")
        .setting("SERVER__SHUTDOWN_GRACE", "2")
        .setting("DATABASE__PATH", dir.join("data/tether.db"))
        .setting("AGENT__COMMAND", fake_claude())
        .setting("AUTH__SECRET", "listener-test-secret-of-more-than-32-bytes")
        .setting(
            "PROJECTS__ROOTS",
            format!("[{:?}]", dir.join("projects").to_string_lossy()),
        )
        .setting("LOG__FILTER", "warn")
        .env("RUST_LOG", "warn")
        // Read by the fake CLI (inherited): transcripts and its invocation log stay in `dir`.
        .env("CLAUDE_CONFIG_DIR", dir.join("claude-config"))
        .env("FAKE_CLAUDE_LOG", dir.join("fake-claude.log"))
}

/// Raises this (test) process's soft open-file limit to at least `wanted`, if the hard limit
/// allows it; false if it does not.
#[cfg(unix)]
pub fn raise_own_open_file_limit(wanted: u64) -> bool {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = wanted as nix::libc::rlim_t;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    soft >= wanted || (hard >= wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).is_ok())
}

/// A `tether.toml` for the real binary with the test's settings (secret, folder, agent).
pub fn write_config(settings: &Settings, dir: &Path) -> PathBuf {
    let config = dir.join("tether.toml");
    let env: String = settings
        .agent
        .env
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\nrequests_per_minute = {}
[database]\npath = {:?}\n\
             [agent]\ncommand = {:?}\nenv = {{ {env} }}\n[sessions]\nmax_processes = {}\nwarm_spares = {}\n\
             [projects]\nroots = [{:?}]\n[log]\nfilter = \"warn\"\n",
            settings.server.requests_per_minute,
            settings.database.path,
            settings.agent.command,
            settings.sessions.max_processes,
            settings.sessions.warm_spares,
            settings.projects.roots[0],
        ),
    )
    .unwrap();
    config
}

/// `tether … --config FILE` with the test secret given the usual way, by environment.
pub fn launch(config: &Path) -> Launch {
    Launch::with_config(config).setting("AUTH__SECRET", TEST_SECRET)
}

/// `tether serve --config FILE` with the test secret, not started yet.
pub fn serve(config: &Path) -> Command {
    launch(config).command(&["serve"])
}

/// `tether ARGS… --config FILE` with the test secret given the usual way, by environment.
pub fn tether_command(config: &Path, args: &[&str]) -> Command {
    launch(config).command(args)
}

/// tether as a separate process (`tether serve --config FILE` written from `settings`), to
/// kill with SIGKILL.
pub fn start_server(settings: &Settings, dir: &Path) -> Server {
    launch(&write_config(settings, dir)).start()
}

/// The arguments of one logged invocation of the fake CLI.
pub fn argv(run: &Value) -> Vec<String> {
    run["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A client that trusts exactly the certificate whose SHA-256 fingerprint is `fingerprint`
/// (uppercase hex pairs joined by `:`), whatever its names, dates or issuer, as the app does.
pub fn pinned_client(fingerprint: &str) -> reqwest::Client {
    pinned_client_builder(fingerprint).build().unwrap()
}

/// [`pinned_client`] before it is built, for more settings.
pub fn pinned_client_builder(fingerprint: &str) -> reqwest::ClientBuilder {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCert {
        fingerprint: fingerprint.to_string(),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(config)
}

/// The SHA-256 of a certificate's DER, as tether prints it (computed here on its own).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let pairs: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

#[derive(Debug)]
struct PinnedCert {
    fingerprint: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if sha256_fingerprint(end_entity) == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One Server-Sent Event as a client reads it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:`, if it had one.
    pub id: Option<i64>,
    /// Its `event:` name, if it had one.
    pub event: Option<String>,
    /// Its `data:` lines, joined.
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads the events of an SSE response, skipping comments (keep-alives).
pub struct SseReader {
    stream:
        std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event, or None when the stream ended; fails the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let field = |name: &str| {
                        line.strip_prefix(name)
                            .map(|v| v.strip_prefix(' ').unwrap_or(v).to_string())
                    };
                    if let Some(v) = field("id:") {
                        ev.id = v.trim().parse().ok();
                        any = true;
                    } else if let Some(v) = field("event:") {
                        ev.event = Some(v);
                        any = true;
                    } else if let Some(v) = field("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(&v);
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("SSE events in time")?;
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk.expect("the stream reads")));
        }
    }
}
