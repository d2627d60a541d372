//! The second pass on the core: no session broken for good, no orphans, nothing left
//! non-terminal, an actor that never blocks, bounded memory, and event types SSE can carry.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::{faults, sessions::retention};

use crate::helpers::{argv, pid_alive, spawn_app, spawn_app_with, wait_for, TestApp};

/// A marker unique to one test, for faults.
fn marker() -> String {
    format!("fault-{}", uuid::Uuid::new_v4().simple())
}

/// The pid a `[spawn-tool]` turn named.
fn tool_pid(text: &str) -> u32 {
    let rest = &text[text.find("tool pid ").expect("a tool pid") + 9..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_first_process_that_dies_before_its_transcript_does_not_break_the_session() {
    let app = spawn_app().await;
    let first = app.chat_wait("die at once [early-exit]", None).await;
    assert_eq!(first["status"], "failed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    for text in ["two", "three"] {
        let next = app.chat_wait(text, Some(&id)).await;
        assert_eq!(next["status"], "completed", "{next}");
    }
    let runs = app.invocations();
    assert!(argv(&runs[1]).contains(&"--session-id".to_string()));
    let last = app.chat_wait("four", Some(&id)).await;
    assert_eq!(
        last["reply"]["text"], "echo: four | history: two / three / four",
        "the conversation goes on from the first message the CLI kept"
    );
}

/// How the last two processes were started: `--resume` or `--session-id` each.
fn last_two_starts(app: &TestApp) -> Vec<&'static str> {
    let runs = app.invocations();
    runs[runs.len() - 2..]
        .iter()
        .map(|run| {
            let args = argv(run);
            if args.iter().any(|a| a == "--resume") {
                "--resume"
            } else {
                "--session-id"
            }
        })
        .collect()
}

/// An app whose fake CLI keeps its transcripts in `data/cli-config`, not where tether looks
/// (`CLAUDE_CONFIG_DIR`), so tether's view of them can be wrong.
async fn cli_keeps_transcripts_apart() -> TestApp {
    spawn_app_with(|s| {
        let cli_dir = s.database.path.parent().unwrap().join("cli-config");
        s.agent.env.insert(
            "FAKE_CLAUDE_CONFIG_DIR".into(),
            cli_dir.to_string_lossy().into_owned(),
        );
    })
    .await
}

#[tokio::test]
async fn a_resume_the_cli_refuses_starts_the_conversation_anew() {
    // tether sees a transcript where the CLI keeps none: it resumes, the CLI answers
    // "No conversation found", tether starts it with --session-id instead.
    let app = cli_keeps_transcripts_apart().await;
    let first = app.chat_wait("one", None).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    // Make tether's view (CLAUDE_CONFIG_DIR) hold a transcript the CLI does not have.
    let mangled: String = app
        .project
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let seen = app.dir.path().join("claude-config/projects").join(mangled);
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::write(seen.join(format!("{sid}.jsonl")), "{}\n").unwrap();
    // Drop the process, so the next message starts one.
    let crashed = app.chat_wait("crash [crash]", Some(&sid)).await;
    assert_eq!(crashed["status"], "failed");
    let cli = app.dir.path().join("data/cli-config");
    std::fs::remove_dir_all(&cli).unwrap();

    let next = app.chat_wait("after", Some(&sid)).await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(last_two_starts(&app), ["--resume", "--session-id"]);
}

#[tokio::test]
async fn a_new_start_the_cli_refuses_resumes_instead() {
    // tether sees no transcript where the CLI keeps one: it starts with --session-id,
    // the CLI answers "already in use", tether resumes instead, with the context.
    let app = cli_keeps_transcripts_apart().await;
    let first = app.chat_wait("one", None).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let crashed = app.chat_wait("crash [crash]", Some(&sid)).await;
    assert_eq!(crashed["status"], "failed");
    let next = app.chat_wait("after", Some(&sid)).await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(
        next["reply"]["text"],
        "echo: after | history: one / crash [crash] / after"
    );
    assert_eq!(last_two_starts(&app), ["--session-id", "--resume"]);
}

#[tokio::test]
async fn tools_of_a_cli_that_exits_while_idle_are_stopped_with_it() {
    let app = spawn_app().await;
    let res = app
        .chat_wait("start a tool then exit [spawn-tool] [exit-after]", None)
        .await;
    assert_eq!(res["status"], "completed");
    let tool = tool_pid(res["reply"]["text"].as_str().unwrap());
    let id = res["sessionId"].as_str().unwrap();
    wait_for("the tool to be stopped", || async {
        (!pid_alive(tool)).then_some(())
    })
    .await;
    // The record goes once the group is gone.
    let store = app.state.store.pool();
    wait_for("the process record to go", || async {
        let row = tether::store::sessions::get(store, id).await.unwrap()?;
        row.process_pid.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn tools_of_a_cli_that_crashes_mid_turn_are_stopped_with_it() {
    let app = spawn_app().await;
    let res = app
        .chat_wait("tool then crash [spawn-tool] [crash]", None)
        .await;
    assert_eq!(res["status"], "failed");
    let tool = tool_pid(res["error"].as_str().unwrap());
    wait_for("the tool to be stopped", || async {
        (!pid_alive(tool)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_turn_end_that_cannot_be_stored_is_tried_again() {
    let app = spawn_app().await;
    let key = marker();
    faults::arm(faults::TURN_END_WRITE, &key, 2);
    let res = app.chat_wait(&format!("hello {key}"), None).await;
    assert_eq!(res["status"], "completed", "{res}");
    assert!(res["reply"]["text"]
        .as_str()
        .unwrap()
        .starts_with("echo: hello"));
}

#[tokio::test]
async fn a_turn_end_that_never_stores_fails_the_message_with_the_reason() {
    let app = spawn_app().await;
    let key = marker();
    faults::arm(faults::TURN_END_WRITE, &key, 100);
    let asked = std::time::Instant::now();
    let res = app.chat_wait(&format!("hello {key}"), None).await;
    assert_eq!(res["status"], "failed", "{res}");
    // The waiting request hears of the failure when it is stored, not at its deadline
    // (server.wait_timeout, 30 s in the tests): the failure is sent live.
    assert!(
        asked.elapsed() < app.settings.server.wait_timeout,
        "answered at the deadline, after {:?}",
        asked.elapsed()
    );
    assert!(
        res["error"].as_str().unwrap().contains("could not store"),
        "{res}"
    );
    // The session goes on.
    let id = res["sessionId"].as_str().unwrap();
    let next = app.chat_wait("next", Some(id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn a_panic_in_an_actor_fails_its_turn_and_the_session_stays_usable() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let key = marker();
    faults::arm(faults::ACTOR_PANIC, &key, 1);
    let boom = app.chat(&format!("boom {key}"), Some(&id)).await;
    let after = app.chat("after the panic", Some(&id)).await;
    let m = app
        .wait_terminal(&id, boom["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "failed");
    assert!(
        m["error"].as_str().unwrap().contains("internal error"),
        "{m}"
    );
    let m = app
        .wait_terminal(&id, after["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(
        m["status"], "completed",
        "the queued message is answered: {m}"
    );
    let next = app.chat_wait("and again", Some(&id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn an_actor_that_cannot_load_its_session_tries_again() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let (settings, dir) = app.stop().await;
    // A message waits in the queue; at the next start its actor fails to load at first.
    {
        let store = tether::store::Store::open(&settings.database.path, 1)
            .await
            .unwrap();
        tether::store::messages::insert_user(
            store.pool(),
            &tether::store::messages::NewUserMessage {
                session_id: &id,
                owner: "me",
                text: "queued while down",
                client_message_id: None,
                now: tether::store::now_ms(),
            },
        )
        .await
        .unwrap();
        store.close().await;
    }
    faults::arm(faults::SESSION_LOAD, &id, 3);
    let app = TestApp::start(settings, dir).await;
    let m = wait_for("the queued message to be answered", || async {
        let msgs = app.messages(&id).await;
        msgs.into_iter()
            .find(|m| m["text"] == "queued while down" && m["status"] == "completed")
    })
    .await;
    assert_eq!(m["status"], "completed");
}

#[tokio::test]
async fn a_turn_cut_off_by_shutdown_is_pushed_to_the_owner() {
    let app = spawn_app().await;
    let device = "ab".repeat(32);
    let res = app
        .post(
            "/api/devices",
            json!({"token": device, "environment": "sandbox", "topic": "com.example.app"}),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let res = app.chat("long [slow:60000]", None).await;
    let (id, msg) = (
        res["sessionId"].as_str().unwrap().to_string(),
        res["messageId"].as_i64().unwrap(),
    );
    wait_for("the turn to run", || async {
        (app.message(&id, msg).await["status"] == "running").then_some(())
    })
    .await;
    let app = app.restart().await;
    let m = app.message(&id, msg).await;
    assert_eq!(m["status"], "interrupted");
    let pushes = app
        .get_as(&app.admin_token, &format!("/api/pushes?sessionId={id}"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let kinds: Vec<&str> = pushes["pushes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["turn_interrupted"], "{pushes}");
}

#[tokio::test]
async fn a_cli_that_never_reads_a_large_message_does_not_block_interrupt_or_delete() {
    // The CLI sleeps before reading stdin; a 100 KB line is bigger than a pipe buffer. An
    // interrupt it cannot read ends in a kill after agent.interrupt_grace: short here.
    let app = spawn_app_with(|s| {
        s.agent
            .env
            .insert("FAKE_CLAUDE_START_DELAY_MS".into(), "600000".into());
        s.agent.interrupt_grace = Duration::from_secs(1);
        s.agent.stop_grace = Duration::from_millis(500);
    })
    .await;
    let big = "x".repeat(99_000);
    let res = app.chat(&big, None).await;
    let (id, msg) = (
        res["sessionId"].as_str().unwrap().to_string(),
        res["messageId"].as_i64().unwrap(),
    );
    app.wait_terminal_or_running(&id, msg).await;
    let started = Instant::now();
    let res = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = app.wait_terminal(&id, msg).await;
    assert_eq!(m["status"], "interrupted", "{m}");

    let second = app.chat(&big, Some(&id)).await;
    app.wait_terminal_or_running(&id, second["messageId"].as_i64().unwrap())
        .await;
    let started = Instant::now();
    let res = app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = app
        .wait_terminal(&id, second["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "interrupted", "{m}");
}

#[tokio::test]
async fn a_turn_waiting_for_a_slot_hears_interrupt_and_shutdown() {
    let app = spawn_app_with(|s| s.sessions.max_processes = 1).await;
    let a = app.chat("A busy [slow:60000]", None).await;
    let a_id = a["sessionId"].as_str().unwrap().to_string();
    wait_for("A to run", || async {
        (app.message(&a_id, a["messageId"].as_i64().unwrap()).await["status"] == "running")
            .then_some(())
    })
    .await;
    // B waits for the slot A holds.
    let b = app.chat("B", None).await;
    let b_id = b["sessionId"].as_str().unwrap().to_string();
    let res = app
        .post(&format!("/api/sessions/{b_id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m = app
        .wait_terminal(&b_id, b["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "interrupted", "{m}");

    // C waits too; a shutdown leaves it queued (it never reached the agent) and starts
    // no process for it.
    let c = app.chat("C", None).await;
    let c_id = c["sessionId"].as_str().unwrap().to_string();
    let (settings, dir) = app.stop().await;
    let log = std::fs::read_to_string(dir.path().join("fake-claude.log")).unwrap();
    assert_eq!(
        log.lines().count(),
        1,
        "only A's process ever started before the restart"
    );
    let app = TestApp::start(settings, dir).await;
    let m = app
        .wait_terminal(&c_id, c["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "completed", "{m}");
}

#[tokio::test]
async fn idle_actors_retire_and_come_back_on_demand() {
    let app = spawn_app().await;
    let res = app.chat_wait("one then exit [exit-after]", None).await;
    let id = res["sessionId"].as_str().unwrap().to_string();
    // No process, no work, no listener: the actor goes.
    wait_for("the actor to retire", || async {
        (app.state.sessions.live_actors() == 0).then_some(())
    })
    .await;
    // A listener that comes and goes does not keep one either.
    let res = app.get(&format!("/api/sessions/{id}/events")).await;
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    wait_for("the listener's actor to retire", || async {
        (app.state.sessions.live_actors() == 0).then_some(())
    })
    .await;
    let next = app.chat_wait("two", Some(&id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn live_events_are_bounded_in_bytes_and_listeners_still_get_everything() {
    let app = spawn_app_with(|s| s.sessions.event_buffer_bytes = 20_000).await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let res = app
        .client
        .get(app.url(&format!("/api/sessions/{id}/events")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        let r = app.chat_wait("big [bigreply:50000]", Some(&id)).await;
        assert_eq!(r["status"], "completed");
        assert!(app.state.sessions.live_bytes() <= 20_000);
    }
    // The listener reads every event, in order, the big ones from SQLite.
    let body = read_until(res, "tether.turn_completed", 4).await;
    let ids: Vec<i64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    assert!(body.contains(&"lorem ipsum dolor sit amet ".repeat(100)));
}

/// Reads an SSE body until `kind` was seen `times` times.
async fn read_until(mut res: reqwest::Response, kind: &str, times: usize) -> String {
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + crate::helpers::DEADLINE;
    while body.matches(&format!("event: {kind}\n")).count() < times {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("events in time")
            .unwrap()
            .expect("the stream goes on");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    body
}

#[tokio::test]
async fn old_events_are_pruned_and_each_session_keeps_at_most_its_cap() {
    let app = spawn_app().await;
    let a = app.chat_wait("one", None).await;
    let a_id = a["sessionId"].as_str().unwrap().to_string();
    for i in 0..3 {
        app.chat_wait(&format!("more {i}"), Some(&a_id)).await;
    }
    let b = app.chat_wait("other", None).await;
    let b_id = b["sessionId"].as_str().unwrap().to_string();
    assert_eq!(
        app.delete(&format!("/api/sessions/{b_id}")).await.status(),
        StatusCode::OK
    );
    let pool = app.state.store.pool();
    let before = tether::store::events::count(pool, &a_id).await.unwrap();
    assert!(before > 10);

    let mut settings = app.settings.events.clone();
    settings.retention = Duration::from_secs(30 * 24 * 3600);
    settings.max_per_session = 10;
    retention::tick(&app.state.store, &settings).await.unwrap();
    assert_eq!(tether::store::events::count(pool, &a_id).await.unwrap(), 10);
    assert!(tether::store::events::count(pool, &b_id).await.unwrap() > 0);

    settings.retention = Duration::ZERO; // b ended before now
    retention::tick(&app.state.store, &settings).await.unwrap();
    assert_eq!(tether::store::events::count(pool, &b_id).await.unwrap(), 0);
    assert_eq!(
        tether::store::events::count(pool, &a_id).await.unwrap(),
        10,
        "an active session keeps its latest events"
    );
    // Replaying a pruned log gives what is left, and the session goes on.
    let next = app.chat_wait("after pruning", Some(&a_id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn an_event_type_sse_cannot_carry_is_made_safe() {
    let app = spawn_app().await;
    let res = app.chat_wait("odd [badtype]", None).await;
    assert_eq!(res["status"], "completed");
    let id = res["sessionId"].as_str().unwrap();
    for _ in 0..2 {
        // Live and replayed: the stream carries every event.
        let res = app
            .client
            .get(app.url(&format!("/api/sessions/{id}/events")))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        let body = read_until(res, "tether.turn_completed", 1).await;
        assert!(body.contains("event: bad_type_here\n"), "{body}");
    }
}
