//! The real Claude Code CLI behind tether, against a stand-in Messages API served by the
//! test: two turns, a restart of tether, a third turn whose API request carries all three
//! user messages, an interrupt of a slow turn, approvals, a new session on a warm spare, the
//! official `openai` Python SDK through `/v1` (its streamed reply from the CLI's live text),
//! the interactive CLI in a terminal on a chat's conversation, and the permission-mode
//! answer reporting what the live CLI did, and a SIGKILL recovered from the transcript. In
//! the full tier (`TETHER_TEST_FULL=1`), with `TETHER_TEST_CLAUDE_BIN` (set by
//! `scripts/test.sh` from `scripts/install-claude.sh`); without either the test says so and
//! skips, except under CI, where it must run.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{start_server, test_settings, wait_for, wait_gone, TestApp},
    stand_in_api::{color_question, tool_result_text, tool_results, user_texts, StandInApi},
};

const BIN_VAR: &str = "TETHER_TEST_CLAUDE_BIN";

/// The real CLI's path in the full tier, or None (skip) with the reason printed; under CI it
/// must be there.
pub(crate) fn real_cli() -> Option<String> {
    if !crate::kit::full_tier("real_claude (the real Claude Code CLI)") {
        return None;
    }
    match std::env::var(BIN_VAR) {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var("CI").is_ok() => {
            panic!("{BIN_VAR} is not set under CI: .ci/run must install the real CLI")
        }
        _ => {
            crate::kit::skipped(&format!(
                "real_claude: set {BIN_VAR} to a Claude Code binary \
                 (export {BIN_VAR}=\"$(bash scripts/install-claude.sh | tail -n1)\")"
            ));
            None
        }
    }
}

async fn start_tether(cli: &str, api: &StandInApi, dir: Arc<tempfile::TempDir>) -> TestApp {
    start_tether_with(cli, api, dir, &[]).await
}

async fn start_tether_with(
    cli: &str,
    api: &StandInApi,
    dir: Arc<tempfile::TempDir>,
    args: &[&str],
) -> TestApp {
    start_tether_configured(cli, api, dir, |s| {
        s.agent.args = args.iter().map(|a| a.to_string()).collect();
    })
    .await
}

async fn start_tether_configured(
    cli: &str,
    api: &StandInApi,
    dir: Arc<tempfile::TempDir>,
    configure: impl FnOnce(&mut tether::config::Settings),
) -> TestApp {
    let mut settings = test_settings(dir.path());
    configure(&mut settings);
    settings.agent.command = cli.to_string();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    settings.agent.env.clear();
    for (k, v) in [
        ("ANTHROPIC_BASE_URL", api.base_url()),
        ("ANTHROPIC_API_KEY", "test-key".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        ("DISABLE_TELEMETRY", "1".to_string()),
        ("HOME", home.to_string_lossy().into_owned()),
    ] {
        settings.agent.env.insert(k.to_string(), v);
    }
    settings.agent.turn_timeout = Duration::from_secs(120);
    settings.server.wait_timeout = Duration::from_secs(120);
    TestApp::start(settings, dir).await
}

#[tokio::test]
async fn the_real_cli_keeps_context_across_a_restart_and_can_be_interrupted() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start_tether(&cli, &api, dir.clone()).await;

    api.set_reply("Noted: BANANA.");
    let first = app.chat_wait("Remember the word BANANA", None).await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["reply"]["text"], "Noted: BANANA.");
    let id = first["sessionId"].as_str().unwrap().to_string();
    api.set_reply("You said BANANA.");
    let second = app
        .chat_wait("Which word did I ask you to remember?", Some(&id))
        .await;
    assert_eq!(second["reply"]["text"], "You said BANANA.");
    let s = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(s["agentSessionId"], id.as_str(), "the CLI kept tether's id");

    // Restart tether: the next process must resume the conversation from the CLI's transcript.
    let app = app.restart().await;
    api.set_reply("Still BANANA.");
    let third = app.chat_wait("And after the restart?", Some(&id)).await;
    assert_eq!(third["status"], "completed", "{third}");
    let last = api
        .main_requests()
        .last()
        .cloned()
        .expect("a request reached the API");
    assert_eq!(
        user_texts(&last),
        vec![
            "Remember the word BANANA",
            "Which word did I ask you to remember?",
            "And after the restart?"
        ],
        "the third turn carried the whole conversation"
    );

    // Interrupt a slow turn: the message ends interrupted and the session goes on.
    api.set_delay(Duration::from_secs(60));
    let before = api.requests().len();
    let slow = app.chat("Take your time", Some(&id)).await;
    let msg = slow["messageId"].as_i64().unwrap();
    assert!(
        api.wait_for_requests(before + 1, Duration::from_secs(60))
            .await,
        "the slow turn reached the API"
    );
    let res = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ended = app.wait_terminal(&id, msg).await;
    assert_eq!(ended["status"], "interrupted", "{ended}");
    api.set_delay(Duration::ZERO);
    api.set_reply("Back again.");
    let after = app.chat_wait("Are you there?", Some(&id)).await;
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["reply"]["text"], "Back again.");

    // Hibernate: the idle CLI is stopped (30 min idle, as the scheduler sees it), and the
    // next message starts it again with --resume and the whole conversation.
    let pid = app.pid_of(&id);
    let later = tether::store::now_ms() + 31 * 60 * 1000;
    let report = app.state.sessions.lifecycle_tick(later).await.unwrap();
    assert_eq!(report.hibernated, 1);
    wait_gone(pid).await;
    api.set_reply("Awake: BANANA.");
    let resumed = app.chat_wait("Still there after the nap?", Some(&id)).await;
    assert_eq!(resumed["status"], "completed", "{resumed}");
    assert_ne!(
        app.state.sessions.process_info(&id).pid,
        Some(pid),
        "a new process"
    );
    let last = api.main_requests().last().cloned().unwrap();
    let texts = user_texts(&last);
    assert_eq!(
        texts.first().map(String::as_str),
        Some("Remember the word BANANA")
    );
    assert_eq!(
        texts.last().map(String::as_str),
        Some("Still there after the nap?")
    );
}

#[tokio::test]
async fn a_first_start_the_real_cli_refuses_does_not_break_the_session() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // A bad flag: the CLI exits at start, before it saves any transcript.
    let app = start_tether_with(&cli, &api, dir.clone(), &["--no-such-flag-for-tether"]).await;
    let first = app.chat_wait("Remember the word KIWI", None).await;
    assert_eq!(first["status"], "failed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    let (_, dir) = app.stop().await;

    // Fixed configuration: the session starts the conversation anew (--session-id), where a
    // blind --resume would be answered "No conversation found" for ever.
    let app = start_tether(&cli, &api, dir).await;
    api.set_reply("Noted: MANGO.");
    let second = app.chat_wait("Remember the word MANGO", Some(&id)).await;
    assert_eq!(second["status"], "completed", "{second}");
    api.set_reply("MANGO.");
    let third = app.chat_wait("Which word?", Some(&id)).await;
    assert_eq!(third["status"], "completed", "{third}");
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(
        user_texts(&last),
        vec!["Remember the word MANGO", "Which word?"]
    );
}

/// The session's one pending approval, as the phone sees it.
async fn pending_approval(app: &TestApp, id: &str) -> serde_json::Value {
    wait_for("a pending approval", || async {
        let v = app
            .get_json(&format!("/api/sessions/{id}/approvals?status=pending"))
            .await;
        v["approvals"].as_array().unwrap().first().cloned()
    })
    .await
}

#[tokio::test]
async fn the_real_cli_asks_the_phone_before_writing_and_hears_the_answer() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start_tether(&cli, &api, dir.clone()).await;
    let hello = app.project.join("hello.txt");

    // Allowed: the file is written and the turn completes.
    api.push_tool_use(
        "Write",
        json!({"file_path": hello, "content": "hello from the model"}),
    );
    api.set_reply("Written.");
    let first = app.chat("Create hello.txt", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let msg = first["messageId"].as_i64().unwrap();
    let a = pending_approval(&app, &id).await;
    assert_eq!(a["toolName"], "Write");
    assert_eq!(a["kind"], "tool");
    assert_eq!(a["input"]["file_path"], hello.to_string_lossy().as_ref());
    assert!(!hello.exists());
    let res = app
        .post(
            &format!("/api/approvals/{}", a["id"]),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        std::fs::read_to_string(&hello).unwrap(),
        "hello from the model"
    );

    // Denied: no file, and the model hears the message.
    let denied = app.project.join("denied.txt");
    api.push_tool_use("Write", json!({"file_path": denied, "content": "no"}));
    api.set_reply("Understood.");
    let second = app.chat("Create denied.txt", Some(&id)).await;
    let msg = second["messageId"].as_i64().unwrap();
    let a = pending_approval(&app, &id).await;
    let res = app
        .post(
            &format!("/api/approvals/{}", a["id"]),
            json!({"decision": "deny", "message": "Not in this folder"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(!denied.exists());
    let told = tool_results(api.main_requests().last().unwrap());
    assert_eq!(tool_result_text(&told[0]), "Not in this folder");

    // A question answered from the phone reaches the model as that answer.
    api.push_tool_use("AskUserQuestion", color_question());
    api.set_reply("Blue it is.");
    let third = app.chat("Pick a color with me", Some(&id)).await;
    let msg = third["messageId"].as_i64().unwrap();
    let q = pending_approval(&app, &id).await;
    assert_eq!(q["kind"], "question");
    let res = app
        .post(
            &format!("/api/approvals/{}", q["id"]),
            json!({"answers": {"Which color?": "Blue"}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed", "{done}");
    let told = tool_results(api.main_requests().last().unwrap());
    let text = tool_result_text(&told[0]);
    assert!(text.contains("\"Which color?\"=\"Blue\""), "{text}");
}

#[tokio::test]
async fn a_new_session_runs_on_a_warm_spare_of_the_real_cli() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app =
        start_tether_configured(&cli, &api, dir.clone(), |s| s.sessions.warm_spares = 1).await;

    api.set_reply("First session.");
    let first = app.chat_wait("Hello", None).await;
    assert_eq!(first["status"], "completed", "{first}");
    let spare = wait_for("a warm spare", || async {
        app.spares().await.first()?["pid"].as_u64()
    })
    .await as u32;
    // Taken as it is, started or still starting: the message waits in its stdin.

    api.set_reply("Noted: MANGO.");
    let second = app.chat_wait("Remember the word MANGO", None).await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["reply"]["text"], "Noted: MANGO.");
    let id = second["sessionId"].as_str().unwrap().to_string();
    assert_eq!(app.pid_of(&id), spare, "the new session ran on the spare");
    api.set_reply("You said MANGO.");
    let third = app.chat_wait("Which word?", Some(&id)).await;
    assert_eq!(third["reply"]["text"], "You said MANGO.", "{third}");
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(
        user_texts(&last),
        ["Remember the word MANGO", "Which word?"],
        "the conversation on the spare kept its context"
    );

    // The replacement spare is stopped with tether and leaves no conversation behind.
    let replacement = wait_for("a replacement spare", || async {
        let pid = app.spares().await.first()?["pid"].as_u64()? as u32;
        (pid != spare).then_some(pid)
    })
    .await;
    let projects = dir.path().join("home/.claude/projects");
    drop(app.stop().await);
    wait_gone(replacement).await;
    let folder = projects.read_dir().unwrap().next().unwrap().unwrap().path();
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    let mut expected = vec![
        format!("{}.jsonl", first["sessionId"].as_str().unwrap()),
        format!("{id}.jsonl"),
    ];
    expected.sort();
    assert_eq!(
        names, expected,
        "one transcript per session, none for a spare"
    );
}

/// The official `openai` Python SDK against tether driving the real CLI: completions, the
/// context kept in the session, a streamed reply from the CLI's live text, errors as the SDK's
/// exceptions (see tests/python/openai_sdk_check.py).
#[tokio::test]
async fn the_official_openai_sdk_talks_to_the_real_cli() {
    let Some(cli) = real_cli() else { return };
    let Some(python) = crate::openai::sdk_python() else {
        return;
    };
    let api = StandInApi::start().await;
    // Each reply names the user texts the CLI sent: the SDK sees whether context was kept.
    api.echo_conversation();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start_tether(&cli, &api, dir.clone()).await;
    crate::openai::run_sdk_check(&app, &python, false).await;
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(
        user_texts(&last),
        vec![
            "Remember the word BANANA",
            "Which word did I ask you to remember?",
            "Tell me a short story about a tether"
        ],
        "each completion sent only its own message; the CLI held the rest"
    );
}

/// What the interactive CLI reads to skip its first-run screens, in `CLAUDE_CONFIG_DIR`
/// (else `$HOME`) as `.claude.json`: onboarding done (else it shows a welcome and checks its
/// connection to api.anthropic.com, then exits), the API key approved (else it asks whether
/// to use `ANTHROPIC_API_KEY`; it stores the key's last 20 characters) and the project folder
/// trusted (else it asks "Is this a project you trust?"). Found with CLI 2.1.329.
fn skip_first_run_screens(home: &std::path::Path, project: &std::path::Path, api_key: &str) {
    let tail: String = api_key
        .chars()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let config = json!({
        "hasCompletedOnboarding": true,
        "customApiKeyResponses": {"approved": [tail], "rejected": []},
        "projects": {project.to_string_lossy(): {"hasTrustDialogAccepted": true}},
    });
    std::fs::write(home.join(".claude.json"), config.to_string()).unwrap();
}

#[tokio::test]
async fn the_real_interactive_cli_answers_in_a_terminal_and_chat_goes_on_after() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start_tether(&cli, &api, dir.clone()).await;
    skip_first_run_screens(&dir.path().join("home"), &app.project, "test-key");

    // A chat turn first: the terminal continues its conversation.
    api.set_reply("Noted: BANANA.");
    let first = app.chat_wait("Remember the word BANANA", None).await;
    assert_eq!(first["status"], "completed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();

    let t = crate::terminals::open(
        &app,
        json!({"program": "claude", "sessionId": id, "cols": 120, "rows": 40}),
    )
    .await;
    let terminal = t["id"].as_str().unwrap().to_string();
    let mut screen = crate::terminals::connect(&app.base, &terminal, "", &app.token)
        .await
        .unwrap();
    // Its prompt, below the conversation it resumed.
    screen.expect("\u{276f}").await;
    api.set_reply("PINEAPPLE from the stand-in");
    // Typed as a person types: the text, then Enter on its own (else it is taken as a paste).
    screen.type_text("What was the word?").await;
    screen.expect("word?").await;
    screen.type_text("\r").await;
    let shown = screen
        .expect_on_screen("PINEAPPLE from the stand-in", 120, 40)
        .await;
    assert!(shown.contains("What was the word?"), "{shown}");
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(
        user_texts(&last),
        vec!["Remember the word BANANA", "What was the word?"],
        "the terminal continued the chat's conversation"
    );
    screen.type_text("/exit").await;
    screen.expect("/exit").await;
    screen.type_text("\r").await;
    let end = screen.expect_end().await;
    assert_eq!(end["state"], "exited", "{end}");

    // Chat goes on with --resume, with the terminal's turn in the conversation.
    api.set_reply("Back in chat.");
    let after = app.chat_wait("And now?", Some(&id)).await;
    assert_eq!(after["status"], "completed", "{after}");
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(
        user_texts(&last),
        vec!["Remember the word BANANA", "What was the word?", "And now?"]
    );
}

#[tokio::test]
async fn the_permission_mode_answer_is_what_the_real_cli_did() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start_tether(&cli, &api, dir).await;
    api.set_reply("Hello.");
    let first = app.chat_wait("Hi", None).await;
    assert_eq!(first["status"], "completed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/{id}/permission-mode");
    // Not launched for it: the live CLI refuses bypassPermissions, and the answer says so.
    let refused: serde_json::Value = app
        .client
        .post(app.url(&path))
        .bearer_auth(&app.admin_token)
        .json(&json!({"mode": "bypassPermissions"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["appliedToLiveProcess"], false, "{refused}");
    assert_eq!(refused["takesEffect"], "nextStart", "{refused}");
    assert!(
        refused["liveProcessError"]
            .as_str()
            .unwrap()
            .starts_with("Cannot set permission mode to bypassPermissions"),
        "{refused}"
    );
    let taken: serde_json::Value = app
        .post(&path, json!({"mode": "plan"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&taken["appliedToLiveProcess"], &taken["takesEffect"]),
        (&json!(true), &json!("now")),
        "{taken}"
    );
}

/// After a SIGKILL of tether while the real CLI had written its reply to its transcript but
/// not yet printed its `result` (held there by a Stop hook that sleeps), the next start stores
/// the turn completed with that reply, and the conversation goes on.
#[tokio::test]
async fn a_sigkill_after_the_real_cli_wrote_its_reply_is_recovered_from_its_transcript() {
    let Some(cli) = real_cli() else { return };
    let api = StandInApi::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path());
    settings.agent.command = cli;
    let home = dir.path().join("home");
    let config = home.join(".claude");
    std::fs::create_dir_all(&config).unwrap();
    settings.agent.env.clear();
    for (k, v) in [
        ("ANTHROPIC_BASE_URL", api.base_url()),
        ("ANTHROPIC_API_KEY", "test-key".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        ("DISABLE_TELEMETRY", "1".to_string()),
        ("HOME", home.to_string_lossy().into_owned()),
    ] {
        settings.agent.env.insert(k.to_string(), v);
    }
    // The turn's end waits in this hook, after the transcript has the reply.
    let hook = config.join("settings.json");
    std::fs::write(
        &hook,
        json!({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "sleep 300"}]}]}})
            .to_string(),
    )
    .unwrap();
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    api.set_reply("Recovered: KIWI.");
    let sent = server
        .chat(
            &token,
            json!({"message": "Say KIWI", "projectPath": project}),
        )
        .await;
    let id = sent["sessionId"].as_str().unwrap().to_string();
    let msg = sent["messageId"].as_i64().unwrap();
    wait_for("the reply in the real CLI's transcript", || async {
        let folder = std::fs::read_dir(config.join("projects"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.join(format!("{id}.jsonl")).is_file())?;
        let transcript = std::fs::read_to_string(folder.join(format!("{id}.jsonl"))).ok()?;
        transcript.contains("Recovered: KIWI.").then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let listed: serde_json::Value = client
        .get(format!("{}/api/sessions/{id}/messages", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["messages"][0]["status"], "running", "{listed}");
    server.kill();

    std::fs::remove_file(&hook).unwrap();
    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, msg).await;
    assert_eq!(m["status"], "completed", "{m}");
    assert_eq!(m["delivered"], true);
    let reply = app
        .messages(&id)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == msg)
        .expect("the reply, from the transcript");
    assert_eq!(reply["text"], "Recovered: KIWI.");
    api.set_reply("Still here.");
    let next = app.chat_wait("And now?", Some(&id)).await;
    assert_eq!(next["status"], "completed", "{next}");
    let last = api.main_requests().last().cloned().unwrap();
    assert_eq!(user_texts(&last), vec!["Say KIWI", "And now?"]);
}
