//! Tool approvals over stdio, spoken directly to a CLI process (no tether in between): one
//! scenario run against the fake CLI and, when it is installed, the real one, so the fake's
//! `[ask-write:FILE]` / `[ask-question]` / `set_permission_mode` stay faithful to what the real
//! CLI does. The real CLI asks for tools because the stand-in API tells it to
//! ([`StandInApi::push_tool_use`]); it also shows what the model is told of each decision.

use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::helpers::{fake_claude, DEADLINE};
use crate::real_claude::real_cli;
use crate::stand_in_api::{color_question, tool_result_text, tool_results, StandInApi};

/// What the fake's `[ask-write]` writes; the stand-in asks the real CLI for the same.
const CONTENT: &str = "hello from fake";

#[tokio::test]
async fn the_fake_cli_asks_for_approval_as_the_real_one_does() {
    run_scenario(Model::Fake).await;
}

#[tokio::test]
async fn the_real_cli_asks_for_approval_over_stdio() {
    let Some(cli) = real_cli() else { return };
    run_scenario(Model::Real {
        cli,
        api: StandInApi::start().await,
    })
    .await;
}

#[tokio::test]
async fn the_fake_cli_lets_a_host_choose_bypass_only_as_the_real_one_does() {
    bypass_scenario(Model::Fake).await;
}

#[tokio::test]
async fn the_real_cli_lets_a_host_choose_bypass_only_when_launched_for_it() {
    let Some(cli) = real_cli() else { return };
    bypass_scenario(Model::Real {
        cli,
        api: StandInApi::start().await,
    })
    .await;
}

/// `set_permission_mode bypassPermissions` is refused (`bypass_not_launched`, the mode stays)
/// by a CLI launched in another mode, and taken by one launched in that mode or allowed to
/// skip permissions. Control requests need no model: no turn is run.
async fn bypass_scenario(model: Model) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let bypass = |id: &str| {
        json!({"type": "control_request", "request_id": id,
               "request": {"subtype": "set_permission_mode", "mode": "bypassPermissions"}})
    };

    let mut cli = Cli::start_with(
        &model,
        &project,
        dir.path(),
        &["--permission-mode", "default"],
    );
    cli.send(bypass("bypass-1")).await;
    let refused = cli.until_control_response("bypass-1").await;
    assert_eq!(
        refused,
        json!({"type": "control_response", "response": {"subtype": "error", "request_id": "bypass-1",
            "error": "Cannot set permission mode to bypassPermissions because the session was not \
                      launched with --dangerously-skip-permissions",
            "error_code": "bypass_not_launched"}})
    );
    // Still in its mode: a change to plan is a change (a status line follows its answer).
    cli.send(json!({"type": "control_request", "request_id": "plan-1", "request": {"subtype": "set_permission_mode", "mode": "plan"}}))
        .await;
    let answer = cli.until_control_response("plan-1").await;
    assert_eq!(answer["response"]["subtype"], "success", "{answer}");
    let status = cli.until("the mode change", is_status).await;
    assert_eq!(status["permissionMode"], "plan");
    cli.close().await;

    for launched in [
        &["--permission-mode", "bypassPermissions"][..],
        &[
            "--allow-dangerously-skip-permissions",
            "--permission-mode",
            "default",
        ][..],
    ] {
        let mut cli = Cli::start_with(&model, &project, dir.path(), launched);
        cli.send(bypass("bypass-2")).await;
        let answer = cli.until_control_response("bypass-2").await;
        assert_eq!(
            answer,
            json!({"type": "control_response", "response": {"subtype": "success",
                "request_id": "bypass-2", "response": {"mode": "bypassPermissions"}}}),
            "launched with {launched:?}"
        );
        cli.close().await;
    }
}

async fn run_scenario(model: Model) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    // The real CLI reports the resolved path (macOS: /private/var/…).
    let project = project.canonicalize().unwrap();
    let mut cli = Cli::start(&model, &project, dir.path());

    // Allowed with a changed input: the host's content is written.
    cli.user(&model.write(&project, "hello.txt")).await;
    let asked = cli.until_control_request().await;
    let request = &asked["request"];
    let keys: Vec<&str> = request
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "subtype",
            "tool_name",
            "display_name",
            "input",
            "description",
            "permission_suggestions",
            "tool_use_id"
        ],
        "{asked}"
    );
    assert_eq!(request["subtype"], "can_use_tool");
    assert_eq!(request["tool_name"], "Write");
    assert_eq!(request["display_name"], "Write");
    assert_eq!(request["description"], "hello.txt");
    assert_eq!(
        request["input"],
        json!({"file_path": project.join("hello.txt"), "content": CONTENT})
    );
    assert_eq!(
        request["permission_suggestions"],
        json!([{"type": "setMode", "mode": "acceptEdits", "destination": "session"}])
    );
    assert!(request["tool_use_id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    let mut input = request["input"].clone();
    input["content"] = json!("from the phone");
    cli.answer(&asked, json!({"behavior": "allow", "updatedInput": input}))
        .await;
    let result = cli.until_result().await;
    assert_eq!(result["subtype"], "success", "{result}");
    assert_eq!(result["permission_denials"], json!([]));
    assert_eq!(
        std::fs::read_to_string(project.join("hello.txt")).unwrap(),
        "from the phone"
    );

    // Denied with a message: the model gets it as an error, the result lists the denial.
    cli.user(&model.write(&project, "denied.txt")).await;
    let asked = cli.until_control_request().await;
    cli.answer(&asked, json!({"behavior": "deny", "message": "Not now"}))
        .await;
    let result = cli.until_result().await;
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["permission_denials"][0]["tool_name"], "Write");
    assert!(!project.join("denied.txt").exists());
    if let Some(told) = model.told() {
        assert_eq!(told["is_error"], true, "{told}");
        assert_eq!(tool_result_text(&told), "Not now");
    }

    // Denied without a message: an invalid answer, yet the turn still ends well.
    cli.user(&model.write(&project, "invalid.txt")).await;
    let asked = cli.until_control_request().await;
    cli.answer(&asked, json!({"behavior": "deny"})).await;
    let result = cli.until_result().await;
    assert_eq!(result["subtype"], "success", "{result}");
    assert!(!project.join("invalid.txt").exists());
    if let Some(told) = model.told() {
        assert!(
            tool_result_text(&told)
                .starts_with("The canUseTool callback returned an invalid permission result."),
            "{told}"
        );
    }

    // A question: answered with `updatedInput` plus `answers`.
    cli.user(&model.question()).await;
    let asked = cli.until_control_request().await;
    let request = &asked["request"];
    assert_eq!(request["tool_name"], "AskUserQuestion");
    assert_eq!(request["requires_user_interaction"], true);
    assert!(request.get("description").is_none(), "{asked}");
    assert_eq!(request["input"]["questions"][0]["question"], "Which color?");
    let mut input = request["input"].clone();
    input["answers"] = json!({"Which color?": "Blue"});
    cli.answer(&asked, json!({"behavior": "allow", "updatedInput": input}))
        .await;
    let result = cli.until_result().await;
    assert_eq!(result["subtype"], "success", "{result}");
    match model.told() {
        Some(told) => assert_eq!(
            tool_result_text(&told),
            "Your questions have been answered: \"Which color?\"=\"Blue\". You can now continue \
             with these answers in mind."
        ),
        None => assert_eq!(result["result"], "answered: Which color?=Blue"),
    }

    // An interrupt while the approval is pending cancels the request and ends the turn.
    cli.user(&model.write(&project, "interrupted.txt")).await;
    let asked = cli.until_control_request().await;
    cli.send(json!({"type": "control_request", "request_id": "int-1", "request": {"subtype": "interrupt"}}))
        .await;
    let cancel = cli
        .until("the cancel", |line| {
            line["type"] == "control_cancel_request"
        })
        .await;
    assert_eq!(cancel["request_id"], asked["request_id"]);
    let answer = cli.until_control_response("int-1").await;
    assert_eq!(answer["response"]["subtype"], "success");
    let result = cli.until_result().await;
    assert_eq!(result["subtype"], "error_during_execution", "{result}");
    assert_eq!(result["is_error"], true);

    // Allowed with the suggested `setMode`: the mode changes, the next write is not asked for.
    cli.user(&model.write(&project, "a.txt")).await;
    let asked = cli.until_control_request().await;
    let suggestions = asked["request"]["permission_suggestions"].clone();
    cli.answer(
        &asked,
        json!({"behavior": "allow", "updatedInput": asked["request"]["input"], "updatedPermissions": suggestions}),
    )
    .await;
    let status = cli.until("the mode change", is_status).await;
    assert_eq!(status["permissionMode"], "acceptEdits");
    cli.until_result().await;
    cli.user(&model.write(&project, "b.txt")).await;
    let turn = cli.until_result_collecting().await;
    assert!(
        !turn.iter().any(|line| line["type"] == "control_request"),
        "asked in acceptEdits: {turn:?}"
    );
    let init = turn.iter().find(|line| line["subtype"] == "init").unwrap();
    assert_eq!(init["permissionMode"], "acceptEdits");
    assert_eq!(
        std::fs::read_to_string(project.join("b.txt")).unwrap(),
        CONTENT
    );

    // The host sets the mode itself; an unknown mode is refused.
    cli.send(json!({"type": "control_request", "request_id": "mode-1", "request": {"subtype": "set_permission_mode", "mode": "default"}}))
        .await;
    let answer = cli.until_control_response("mode-1").await;
    assert_eq!(
        answer,
        json!({"type": "control_response", "response": {"subtype": "success", "request_id": "mode-1", "response": {"mode": "default"}}})
    );
    let status = cli.until("the mode change", is_status).await;
    assert_eq!(status["permissionMode"], "default");
    cli.send(json!({"type": "control_request", "request_id": "mode-2", "request": {"subtype": "set_permission_mode", "mode": "sometimes"}}))
        .await;
    let refused = cli.until_control_response("mode-2").await;
    assert_eq!(refused["response"]["subtype"], "error");
    assert_eq!(refused["response"]["error_code"], "invalid_mode");
    assert!(refused["response"]["error"]
        .as_str()
        .unwrap()
        .starts_with("Cannot set permission mode"));
    cli.user(&model.write(&project, "c.txt")).await;
    let asked = cli.until_control_request().await;
    cli.answer(
        &asked,
        json!({"behavior": "allow", "updatedInput": asked["request"]["input"]}),
    )
    .await;
    cli.until_result().await;

    cli.close().await;
}

fn is_status(line: &Value) -> bool {
    line["type"] == "system" && line["subtype"] == "status"
}

/// What asks the CLI for tools: the fake's directives, or the stand-in API's tool calls.
enum Model {
    Fake,
    Real { cli: String, api: StandInApi },
}

impl Model {
    /// The user text of a turn in which the model writes `file` with [`CONTENT`].
    fn write(&self, project: &Path, file: &str) -> String {
        match self {
            Model::Fake => format!("[ask-write:{file}]"),
            Model::Real { api, .. } => {
                let input = json!({"file_path": project.join(file), "content": CONTENT});
                api.push_tool_use("Write", input);
                format!("Please write {file}")
            }
        }
    }

    /// The user text of a turn in which the model asks "Which color?" (Red or Blue).
    fn question(&self) -> String {
        match self {
            Model::Fake => "[ask-question]".to_owned(),
            Model::Real { api, .. } => {
                api.push_tool_use("AskUserQuestion", color_question());
                "Ask me something".to_owned()
            }
        }
    }

    /// The `tool_result` the model got last, when a stand-in API served the model.
    fn told(&self) -> Option<Value> {
        match self {
            Model::Fake => None,
            Model::Real { api, .. } => {
                let last = api
                    .main_requests()
                    .pop()
                    .expect("a request reached the API");
                let mut results = tool_results(&last);
                assert_eq!(results.len(), 1, "{last}");
                results.pop()
            }
        }
    }
}

/// A CLI process started with `--permission-prompt-tool stdio --permission-mode default`.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Cli {
    fn start(model: &Model, project: &Path, dir: &Path) -> Cli {
        Self::start_with(model, project, dir, &["--permission-mode", "default"])
    }

    /// Started with `--permission-prompt-tool stdio` and `mode_args`.
    fn start_with(model: &Model, project: &Path, dir: &Path, mode_args: &[&str]) -> Cli {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let program = match model {
            Model::Fake => fake_claude().to_owned(),
            Model::Real { cli, .. } => cli.clone(),
        };
        let mut command = Command::new(program);
        command
            .args(["-p", "--input-format", "stream-json", "--output-format"])
            .args(["stream-json", "--verbose", "--session-id"])
            .arg(uuid::Uuid::new_v4().to_string())
            .args(["--permission-prompt-tool", "stdio"])
            .args(mode_args)
            .current_dir(project)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Model::Real { api, .. } = model {
            command
                .env("ANTHROPIC_BASE_URL", api.base_url())
                .env("ANTHROPIC_API_KEY", "test-key")
                .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
                .env("DISABLE_AUTOUPDATER", "1")
                .env("DISABLE_TELEMETRY", "1")
                // Run as root (in a container), the CLI refuses to bypass permissions otherwise.
                .env("IS_SANDBOX", "1");
            api.set_reply("Done.");
        }
        let mut child = command.spawn().expect("start the CLI");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                // Lines that are not JSON are not part of this protocol.
                if let Ok(value) = serde_json::from_str(&line) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Cli {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, line: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let line = line.to_string() + "\n";
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn user(&mut self, text: &str) {
        self.send(json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": text}]}}))
            .await;
    }

    async fn answer(&mut self, request: &Value, decision: Value) {
        self.send(json!({
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request["request_id"], "response": decision},
        }))
        .await;
    }

    /// Reads lines until one matches; fails on a `result` first, unless a result is looked for.
    async fn until(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self.next(what).await;
            if matches(&line) {
                return line;
            }
            assert_ne!(line["type"], "result", "the turn ended before {what}");
        }
    }

    async fn next(&mut self, what: &str) -> Value {
        tokio::time::timeout(DEADLINE, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
            .unwrap_or_else(|| panic!("the CLI closed its stdout before {what}"))
    }

    async fn until_control_request(&mut self) -> Value {
        self.until("a can_use_tool request", |line| {
            line["type"] == "control_request" && line["request"]["subtype"] == "can_use_tool"
        })
        .await
    }

    async fn until_control_response(&mut self, request_id: &str) -> Value {
        self.until("a control_response", |line| {
            line["type"] == "control_response" && line["response"]["request_id"] == request_id
        })
        .await
    }

    async fn until_result(&mut self) -> Value {
        self.until("the result", |line| line["type"] == "result")
            .await
    }

    /// Every line of the turn, its `result` last.
    async fn until_result_collecting(&mut self) -> Vec<Value> {
        let mut turn = Vec::new();
        loop {
            let line = self.next("the result").await;
            let done = line["type"] == "result";
            turn.push(line);
            if done {
                return turn;
            }
        }
    }

    /// Closes stdin: the CLI ends and exits 0 (its last result was a success).
    async fn close(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the CLI exits after stdin closes")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}
