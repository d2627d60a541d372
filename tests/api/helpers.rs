//! The test harness: the real application on port 0 with a temp data folder, a project
//! folder inside the allowed roots, the fake Claude CLI as its agent, and tokens.

#![allow(dead_code)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tether::{auth::Role, config::Settings, push::PushGateway, AppState, Application};
use tokio::{sync::oneshot, task::JoinHandle};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn fake_claude() -> &'static str {
    env!("CARGO_BIN_EXE_fake-claude")
}

/// Settings for a test app living in `dir`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    s.server.bind = "127.0.0.1:0".parse().unwrap();
    s.server.shutdown_grace_secs = 2;
    s.server.wait_timeout_secs = 30;
    s.database.path = dir.join("data/tether.db");
    s.agent.command = fake_claude().to_string();
    s.agent.args = vec![];
    s.agent.stop_grace_secs = 2;
    s.agent.env.insert(
        "CLAUDE_CONFIG_DIR".into(),
        dir.join("claude-config").to_string_lossy().into_owned(),
    );
    s.agent.env.insert(
        "FAKE_CLAUDE_LOG".into(),
        dir.join("fake-claude.log").to_string_lossy().into_owned(),
    );
    s.projects.roots = vec![dir.join("projects")];
    s.auth.secret = "test-secret-test-secret-test-secret".to_string().into();
    s.log.filter = "warn".into();
    s
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub token: String,
    pub admin_token: String,
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
        let project = dir.path().join("projects/demo");
        std::fs::create_dir_all(&project).unwrap();
        let project = std::fs::canonicalize(project).unwrap();
        let app = match gateway {
            Some(gateway) => Application::build_with_gateway(settings.clone(), gateway).await,
            None => Application::build(settings.clone()).await,
        };
        Self::serve(app.expect("app builds"), settings, dir, project)
    }

    fn serve(app: Application, settings: Settings, dir: Arc<TempDir>, project: PathBuf) -> Self {
        let base = format!("http://{}", app.local_addr());
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::new(),
            token: state.auth.issue("me", Role::User).unwrap(),
            admin_token: state.auth.issue("admin", Role::Admin).unwrap(),
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
        self.messages(session_id)
            .await
            .into_iter()
            .find(|m| m["id"] == message_id)
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

/// Polls `check` until it returns Some, or fails the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
