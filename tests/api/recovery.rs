//! The process is a cache: crashes, idle deaths, timeouts, restarts of tether (graceful and
//! SIGKILL), orphans left by an earlier run, eviction, and shutdown that reaps every child.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use serde_json::{json, Value};
use tether::config::Settings;

use crate::helpers::{
    argv, pid_alive, spawn_app, spawn_app_with, start_server, test_settings, wait_for, TestApp,
};

fn resumed(run: &Value, session: &str) -> bool {
    argv(run)
        .windows(2)
        .any(|w| w[0] == "--resume" && w[1] == session)
}

#[tokio::test]
async fn a_crash_mid_turn_fails_that_message_and_the_next_one_resumes() {
    let app = spawn_app().await;
    let first = app.chat_wait("Remember BANANA", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let crashed = app.chat_wait("now crash [crash]", Some(&id)).await;
    assert_eq!(crashed["status"], "failed");
    let reason = crashed["error"].as_str().unwrap();
    assert!(
        reason.contains("exit status: 3") && reason.contains("fake crash"),
        "{reason}"
    );

    let s = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(s["process"]["state"], "none");

    let next = app.chat_wait("what word?", Some(&id)).await;
    assert_eq!(next["status"], "completed");
    let text = next["reply"]["text"].as_str().unwrap();
    assert!(
        text.ends_with("history: Remember BANANA / now crash [crash] / what word?"),
        "{text}"
    );
    let runs = app.invocations();
    assert_eq!(runs.len(), 2);
    assert!(resumed(&runs[1], &id), "{:?}", argv(&runs[1]));
}

#[tokio::test]
async fn a_process_that_dies_while_idle_is_replaced_on_the_next_message() {
    let app = spawn_app().await;
    let first = app.chat_wait("answer then exit [exit-after]", None).await;
    assert_eq!(first["status"], "completed");
    let id = first["sessionId"].as_str().unwrap().to_string();
    wait_for("process gone", || async {
        let s = app.get_json(&format!("/api/sessions/{id}")).await;
        (s["process"]["state"] == "none").then_some(())
    })
    .await;
    let next = app.chat_wait("still here?", Some(&id)).await;
    assert_eq!(next["status"], "completed");
    assert!(resumed(&app.invocations()[1], &id));
}

#[tokio::test]
async fn a_hung_turn_times_out_and_the_session_recovers() {
    let app = spawn_app_with(|s| s.agent.turn_timeout = Duration::from_secs(1)).await;
    let res = app.chat_wait("hang [hang]", None).await;
    assert_eq!(res["status"], "failed");
    assert!(
        res["error"].as_str().unwrap().contains("longer than 1s"),
        "{res}"
    );
    let id = res["sessionId"].as_str().unwrap();
    let pid = app.invocations()[0]["pid"].as_u64().unwrap() as u32;
    assert!(!pid_alive(pid), "the hung process was killed");
    let next = app.chat_wait("better now", Some(id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn a_graceful_restart_continues_the_conversation() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    app.chat_wait("two", Some(&id)).await;
    let pid = app.invocations()[0]["pid"].as_u64().unwrap() as u32;

    let app = app.restart().await;
    assert!(!pid_alive(pid), "shutdown reaped the child");
    let third = app.chat_wait("three", Some(&id)).await;
    assert_eq!(
        third["reply"]["text"],
        "echo: three | history: one / two / three"
    );
    let runs = app.invocations();
    assert_eq!(runs.len(), 2);
    assert!(resumed(&runs[1], &id));
}

#[tokio::test]
async fn shutdown_gives_running_turns_a_grace_then_stops_and_reaps_them() {
    let app = spawn_app().await; // server.shutdown_grace = 2
    let res = app.chat("long [slow:60000]", None).await;
    let (id, msg) = (
        res["sessionId"].as_str().unwrap().to_string(),
        res["messageId"].as_i64().unwrap(),
    );
    app.wait_terminal_or_running(&id, msg).await;
    let pid = wait_for("pid", || async {
        app.invocations()
            .first()
            .map(|r| r["pid"].as_u64().unwrap() as u32)
    })
    .await;
    let started = std::time::Instant::now();
    let (settings, dir) = app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!pid_alive(pid));

    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, msg).await;
    assert_eq!(m["status"], "interrupted");
    assert!(m["error"].as_str().unwrap().contains("shut down"), "{m}");
}

#[tokio::test]
async fn a_full_pool_evicts_the_least_recently_used_idle_process() {
    let app = spawn_app_with(|s| s.sessions.max_processes = 1).await;
    let a = app.chat_wait("A1", None).await;
    let a_id = a["sessionId"].as_str().unwrap().to_string();
    let b = app.chat_wait("B1", None).await;
    let b_id = b["sessionId"].as_str().unwrap().to_string();
    let sa = app.get_json(&format!("/api/sessions/{a_id}")).await;
    assert_eq!(sa["process"]["state"], "none", "A was evicted for B");
    let health: Value = app.health().await;
    assert_eq!(health["liveProcesses"], 1);
    let a2 = app.chat_wait("A2", Some(&a_id)).await;
    assert_eq!(a2["reply"]["text"], "echo: A2 | history: A1 / A2");
    let sb = app.get_json(&format!("/api/sessions/{b_id}")).await;
    assert_eq!(sb["process"]["state"], "none");
}

#[tokio::test]
async fn an_orphan_of_an_earlier_run_is_stopped_before_the_session_resumes() {
    let (id, settings, dir) = one_turn_then_stop().await;

    // A survivor of a crashed run: a process in its own group, recorded on the session.
    let mut orphan = Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
    let mut orphan = orphan.arg("300").spawn().unwrap();
    let pid = orphan.id();
    let start_time = tether::agent::process::process_start_time(pid).unwrap();
    record_process(&settings, &id, pid, start_time).await;

    let app = TestApp::start(settings, dir).await;
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was killed: {status:?}");
    let s = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(s["process"]["state"], "none");
    let next = app.chat_wait("two", Some(&id)).await;
    assert_eq!(next["reply"]["text"], "echo: two | history: one / two");
}

#[tokio::test]
async fn a_recorded_pid_reused_by_another_process_is_left_alone() {
    let (id, settings, dir) = one_turn_then_stop().await;
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    record_process(&settings, &id, bystander.id(), 1).await;
    let app = TestApp::start(settings, dir).await;
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander lives"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    drop(app);
}

#[tokio::test]
async fn sigkill_mid_turn_loses_nothing_and_the_conversation_continues() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let app_token = server.token("me");
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(format!("{}/api/chat", server.base))
            .bearer_auth(&app_token)
            .json(&body)
            .send()
    };
    let first: Value = post(json!({"message": "one", "projectPath": project, "wait": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "completed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    let running: Value = post(json!({"message": "two [slow:60000]", "sessionId": id}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queued: Value = post(json!({"message": "three", "sessionId": id}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queued["status"], "queued");

    // Wait until the second turn is with the CLI, then kill tether outright.
    let log = dir.path().join("fake-claude.log");
    let pid = wait_for("the CLI process", || async {
        std::fs::read_to_string(&log).ok()?.lines().next().map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["pid"]
                .as_u64()
                .unwrap() as u32
        })
    })
    .await;
    // The CLI has the second message once its transcript holds it.
    let transcripts = dir.path().join("claude-config/projects");
    wait_for("the CLI to have message two", || async {
        let folder = std::fs::read_dir(&transcripts).ok()?.next()?.ok()?.path();
        let transcript = std::fs::read_to_string(folder.join(format!("{id}.jsonl"))).ok()?;
        transcript.contains("two [slow:60000]").then_some(())
    })
    .await;
    server.kill();
    // The CLI dies with tether (parent-death signal on Linux; a process-group kill at the
    // next start elsewhere), so no orphan keeps working on the conversation.
    #[cfg(target_os = "linux")]
    wait_for("child to die with tether", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;

    let app = TestApp::start(settings, dir).await;
    assert!(!pid_alive(pid));
    let m = app
        .message(&id, running["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "interrupted", "{m}");
    let reason = m["error"].as_str().unwrap();
    assert!(
        reason.contains("tether stopped") && reason.contains("the agent had received it"),
        "the CLI's transcript shows it had the message: {reason}"
    );
    assert_eq!(m["delivered"], true);
    // The queued message was kept and is answered after the restart, with context.
    let done = app
        .wait_terminal(&id, queued["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(done["status"], "completed");
    let reply = app
        .messages(&id)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == queued["messageId"])
        .unwrap();
    assert_eq!(
        reply["text"],
        "echo: three | history: one / two [slow:60000] / three"
    );
    let four = app.chat_wait("four", Some(&id)).await;
    assert_eq!(four["status"], "completed");
}

#[tokio::test]
async fn a_turn_waiting_for_a_slot_gets_one_when_a_busy_process_goes_idle() {
    let app = spawn_app_with(|s| s.sessions.max_processes = 1).await;
    let a = app.chat("A busy [slow:700]", None).await;
    let a_id = a["sessionId"].as_str().unwrap().to_string();
    app.wait_terminal_or_running(&a_id, a["messageId"].as_i64().unwrap())
        .await;
    // B must wait: A's process is busy, not idle, so nothing can be evicted yet.
    let b = app.chat_wait("B", None).await;
    assert_eq!(b["status"], "completed", "{b}");
    let sa = app.get_json(&format!("/api/sessions/{a_id}")).await;
    assert_eq!(
        sa["process"]["state"], "none",
        "A's idle process made room for B"
    );
    assert_eq!(
        app.message(&a_id, a["messageId"].as_i64().unwrap()).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn sigterm_stops_the_binary_gracefully_and_reaps_its_children() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let mut server = start_server(&settings, dir.path());
    let token = server.token("me");
    let res = server
        .chat(
            &token,
            json!({"message": "long [slow:60000]", "projectPath": project}),
        )
        .await;
    let log = dir.path().join("fake-claude.log");
    let pid = wait_for("the CLI process", || async {
        let line = std::fs::read_to_string(&log)
            .ok()?
            .lines()
            .next()?
            .to_string();
        Some(
            serde_json::from_str::<Value>(&line).unwrap()["pid"]
                .as_u64()
                .unwrap() as u32,
        )
    })
    .await;

    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = server.child.wait().unwrap();
    // The grace (server.shutdown_grace = 2 here), then the stop.
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!pid_alive(pid), "the child was reaped");

    let app = TestApp::start(settings, dir).await;
    let id = res["sessionId"].as_str().unwrap();
    let m = app.message(id, res["messageId"].as_i64().unwrap()).await;
    assert_eq!(m["status"], "interrupted");
    assert!(m["error"].as_str().unwrap().contains("shut down"), "{m}");
}

#[tokio::test]
async fn tools_left_running_by_a_dead_cli_are_stopped_at_the_next_start() {
    let (id, settings, dir) = one_turn_then_stop().await;

    // A CLI that started a tool and then died with tether: the leader is gone, the tool
    // (a child in the leader's process group) lives on.
    let mut leader = Command::new("sh");
    std::os::unix::process::CommandExt::process_group(&mut leader, 0);
    let mut leader = leader
        .args(["-c", "sleep 300 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(leader.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tool: u32 = line.trim().parse().unwrap();
    let pid = leader.id();
    let start_time = tether::agent::process::process_start_time(pid).unwrap();
    leader.kill().unwrap();
    leader.wait().unwrap();
    assert!(pid_alive(tool), "the tool outlived its CLI");

    record_process(&settings, &id, pid, start_time).await;
    let app = TestApp::start(settings, dir).await;
    wait_for("the tool to be stopped", || async {
        (!pid_alive(tool)).then_some(())
    })
    .await;
    let next = app.chat_wait("two", Some(&id)).await;
    assert_eq!(next["status"], "completed");
}

/// A session with one finished turn, and the app stopped: (session id, settings, folder).
async fn one_turn_then_stop() -> (String, Settings, Arc<tempfile::TempDir>) {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let (settings, dir) = app.stop().await;
    (id, settings, dir)
}

/// Records a process on a session, as a run of tether that died would have left it.
async fn record_process(settings: &Settings, session_id: &str, pid: u32, start_time: u64) {
    let store = tether::store::Store::open(&settings.database.path, 1)
        .await
        .unwrap();
    tether::store::sessions::set_process(store.pool(), session_id, Some((pid, start_time)))
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_sigkill_while_the_first_process_starts_does_not_break_the_session() {
    // The real CLI takes 0.3 to 0.5 s to start and writes its transcript only once it has
    // read the first message: tether dies inside that window.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path());
    settings
        .agent
        .env
        .insert("FAKE_CLAUDE_START_DELAY_MS".into(), "1500".into());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let first = server
        .chat(&token, json!({"message": "one", "projectPath": project}))
        .await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    wait_for("the CLI process to start", || async {
        std::fs::read_to_string(dir.path().join("fake-claude.log"))
            .ok()
            .filter(|l| !l.is_empty())
    })
    .await;
    server.kill();

    settings.agent.env.remove("FAKE_CLAUDE_START_DELAY_MS");
    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, first["messageId"].as_i64().unwrap()).await;
    assert_eq!(m["status"], "interrupted", "{m}");
    for text in ["two", "three"] {
        let next = app.chat_wait(text, Some(&id)).await;
        assert_eq!(next["status"], "completed", "{next}");
    }
    let runs = app.invocations();
    assert!(
        argv(&runs[1]).contains(&"--session-id".to_string()),
        "the CLI never saved the conversation, so it is started anew: {:?}",
        argv(&runs[1])
    );
}

#[tokio::test]
async fn a_message_waiting_for_a_slot_when_tether_dies_is_answered_after_the_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path());
    settings.sessions.max_processes = 1;
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let busy = server
        .chat(
            &token,
            json!({"message": "busy [slow:60000]", "projectPath": project}),
        )
        .await;
    let waiting = server
        .chat(
            &token,
            json!({"message": "waiting", "projectPath": project}),
        )
        .await;
    // The busy turn is with its CLI; the other waits for the one slot.
    let a = busy["sessionId"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    wait_for("the busy turn to run", || async {
        let msgs: Value = client
            .get(format!("{}/api/sessions/{a}/messages", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (msgs["messages"][0]["status"] == "running").then_some(())
    })
    .await;
    server.kill();

    let app = TestApp::start(settings, dir).await;
    let b = waiting["sessionId"].as_str().unwrap();
    let m = app
        .wait_terminal(b, waiting["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "completed", "it never reached the agent: {m}");
    let m = app.message(&a, busy["messageId"].as_i64().unwrap()).await;
    assert_eq!(m["status"], "interrupted", "{m}");
}

/// The fake CLI's transcript of conversation `id` (under the test's `claude-config`).
fn transcript_of(dir: &std::path::Path, id: &str) -> Option<String> {
    let folder = std::fs::read_dir(dir.join("claude-config/projects"))
        .ok()?
        .next()?
        .ok()?
        .path();
    std::fs::read_to_string(folder.join(format!("{id}.jsonl"))).ok()
}

#[tokio::test]
async fn a_sigkill_after_the_cli_wrote_its_reply_is_recovered_from_the_transcript() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let device = reqwest::Client::new()
        .post(format!("{}/api/devices", server.base))
        .bearer_auth(&token)
        .json(&json!({"token": crate::push::T1, "environment": "sandbox", "topic": "com.example.tether"}))
        .send()
        .await
        .unwrap();
    assert!(device.status().is_success());
    let first = server
        .chat(
            &token,
            json!({"message": "one", "projectPath": project, "wait": true}),
        )
        .await;
    assert_eq!(first["status"], "completed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    let stalled = server
        .chat(
            &token,
            json!({"message": "two [stall-result]", "sessionId": id}),
        )
        .await;
    let two = stalled["messageId"].as_i64().unwrap();
    let queued = server
        .chat(&token, json!({"message": "three", "sessionId": id}))
        .await;
    assert_eq!(queued["status"], "queued");
    // The CLI wrote its reply to its transcript and stalls before its `result`: tether has
    // not stored the turn's end, and the message says the agent has it.
    let reply = "echo: two [stall-result] | history: one / two [stall-result]";
    wait_for("the reply in the CLI's transcript", || async {
        transcript_of(dir.path(), &id)?
            .contains(&format!(r#""text":"{reply}""#))
            .then_some(())
    })
    .await;
    let m = server
        .get(&token, &format!("/api/sessions/{id}/messages"))
        .await;
    let running = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == two)
        .unwrap()
        .clone();
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["delivered"], true, "{running}");
    server.kill();

    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, two).await;
    assert_eq!(m["status"], "completed", "{m}");
    assert_eq!(m["delivered"], true);
    assert_eq!(m["error"], Value::Null);
    let replied = app
        .messages(&id)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == two)
        .expect("the reply from the transcript");
    assert_eq!(replied["text"], reply);
    // The owner's phone is told as for any reply, and the log says how the turn ended.
    let pushes = app.get_as(&app.admin_token, "/api/pushes").await;
    let pushes: Value = pushes.json().await.unwrap();
    let kinds: Vec<(&str, i64)> = pushes["pushes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap(),
                p["messageId"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("turn_completed", replied["id"].as_i64().unwrap())),
        "{kinds:?}"
    );
    assert!(
        !kinds.iter().any(|(k, _)| *k == "turn_interrupted"),
        "{kinds:?}"
    );
    let events = crate::sessions::read_sse(&app, &id, Some(0), |(_, _, data)| {
        data["messageId"] == two && data["recovered"] == true
    })
    .await;
    let end = events.last().unwrap();
    assert_eq!(end.1, "tether.turn_completed", "{end:?}");
    assert_eq!(end.2["replyId"], replied["id"]);
    // The queued message runs after it, with the whole conversation.
    let done = app
        .wait_terminal(&id, queued["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let next = app
        .messages(&id)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == queued["messageId"])
        .unwrap();
    assert_eq!(
        next["text"],
        "echo: three | history: one / two [stall-result] / three"
    );
}

#[tokio::test]
async fn a_sigkill_before_the_cli_read_the_message_says_it_never_received_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path());
    // The CLI starts slowly: the message sits in its stdin, unread, when tether dies.
    settings
        .agent
        .env
        .insert("FAKE_CLAUDE_START_DELAY_MS".into(), "60000".into());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let sent = server
        .chat(&token, json!({"message": "unread", "projectPath": project}))
        .await;
    let id = sent["sessionId"].as_str().unwrap().to_string();
    let msg = sent["messageId"].as_i64().unwrap();
    wait_for("the message written to the CLI's stdin", || async {
        let m = server
            .get(&token, &format!("/api/sessions/{id}/messages"))
            .await;
        (m["messages"][0]["delivered"] == true).then_some(())
    })
    .await;
    server.kill();

    settings.agent.env.remove("FAKE_CLAUDE_START_DELAY_MS");
    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, msg).await;
    assert_eq!(m["status"], "interrupted", "{m}");
    let reason = m["error"].as_str().unwrap();
    assert!(
        reason.contains("before the agent received this message"),
        "{reason}"
    );
    assert_eq!(m["delivered"], true, "it was written to the CLI's stdin");
    let again = app.chat_wait("unread", Some(&id)).await;
    assert_eq!(again["status"], "completed", "{again}");
}
