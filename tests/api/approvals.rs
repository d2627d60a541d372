//! Approvals end to end with the fake CLI asking as the real one does: allow, deny with and
//! without a message, a question answered, deciding twice, deciding after the process died,
//! interrupt and restart while pending, the push of each kind, `remember: "session"`, the
//! permission mode surviving a resume, no stall while a person decides, and the auto-deny.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    helpers::{error_code, spawn_app_with, start_server, wait_for, TestApp},
    push::{sent, spawn_with_phone},
};

/// Starts a session whose first turn asks; returns (session, message, the pending approval).
async fn ask(app: &TestApp, text: &str, session: Option<&str>) -> (String, i64, Value) {
    let queued = app.chat(text, session).await;
    let id = queued["sessionId"].as_str().unwrap().to_string();
    let approval = pending(app, &id).await;
    (id, queued["messageId"].as_i64().unwrap(), approval)
}

/// Waits for the session's one pending approval.
async fn pending(app: &TestApp, id: &str) -> Value {
    wait_for("a pending approval", || async {
        let v = app
            .get_json(&format!("/api/sessions/{id}/approvals?status=pending"))
            .await;
        v["approvals"].as_array().unwrap().first().cloned()
    })
    .await
}

async fn decide(app: &TestApp, approval: &Value, body: Value) -> reqwest::Response {
    app.post(&format!("/api/approvals/{}", approval["id"]), body)
        .await
}

async fn approval(app: &TestApp, approval: &Value) -> Value {
    app.get_json(&format!("/api/approvals/{}", approval["id"]))
        .await
}

/// The reply of a finished turn.
async fn reply(app: &TestApp, session: &str, message: i64) -> (Value, String) {
    let m = app.wait_terminal(session, message).await;
    let text = app
        .messages(session)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == message)
        .map(|r| r["text"].as_str().unwrap().to_string())
        .unwrap_or_default();
    (m, text)
}

/// The control responses the fake CLI received (FAKE_CLAUDE_CONTROL_LOG).
fn control_log(app: &TestApp) -> Vec<Value> {
    std::fs::read_to_string(app.dir.path().join("control.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Makes the fake CLI log the control responses it gets, beside the data folder.
fn with_control_log(s: &mut tether::config::Settings) {
    let dir = s
        .database
        .path
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    s.agent.env.insert(
        "FAKE_CLAUDE_CONTROL_LOG".into(),
        dir.join("control.log").to_string_lossy().into_owned(),
    );
}

#[tokio::test]
async fn an_allowed_write_runs_and_the_phone_was_asked_first() {
    let (app, fake) = spawn_with_phone(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-write:hello.txt]", None).await;
    assert_eq!(a["kind"], "tool");
    assert_eq!(a["toolName"], "Write");
    assert_eq!(a["status"], "pending");
    assert_eq!(a["messageId"], msg);
    let path = app.project.join("hello.txt");
    assert_eq!(a["input"]["file_path"], path.to_string_lossy().as_ref());
    assert!(!path.exists(), "nothing written before the owner allows it");
    assert_eq!(app.message(&id, msg).await["status"], "running");

    let push = sent(&fake, 1).await.remove(0);
    let p = push.payload();
    assert_eq!(p["kind"], "approval_requested");
    assert_eq!(p["aps"]["category"], "APPROVAL");
    assert_eq!(p["aps"]["interruption-level"], "time-sensitive");
    assert_eq!(p["aps"]["thread-id"], id.as_str());
    assert_eq!(p["approvalId"], a["id"]);
    assert_eq!(p["sessionId"], id.as_str());
    let body = p["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.starts_with("Claude wants to use Write: "), "{body}");
    assert!(body.contains("hello.txt"), "{body}");

    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let decided: Value = res.json().await.unwrap();
    assert_eq!(decided["status"], "allowed");
    assert_eq!(decided["decidedBy"], "me");
    let (m, text) = reply(&app, &id, msg).await;
    assert_eq!(m["status"], "completed");
    assert_eq!(text, "wrote hello.txt");
    assert!(path.exists());

    // Deciding twice: 409 with the first decision; nothing more reaches the agent.
    let res = decide(&app, &a, json!({"decision": "deny"})).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "already_decided");
    assert_eq!(body["approval"]["status"], "allowed");

    // The event stream had both, in order.
    let events = tether::store::events::list_after(app.state.store.pool(), &id, 0, 1000)
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let asked = kinds.iter().position(|k| *k == "tether.approval_requested");
    let decided = kinds.iter().position(|k| *k == "tether.approval_decided");
    assert!(asked.is_some() && decided > asked, "{kinds:?}");
}

#[tokio::test]
async fn a_denied_write_leaves_no_file_and_the_agent_hears_why() {
    let app = spawn_app_with(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-write:no.txt]", None).await;
    let res = decide(
        &app,
        &a,
        json!({"decision": "deny", "message": "not in this folder"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (m, text) = reply(&app, &id, msg).await;
    assert_eq!(m["status"], "completed");
    assert_eq!(text, "denied: not in this folder");
    assert!(!app.project.join("no.txt").exists());
    assert_eq!(approval(&app, &a).await["status"], "denied");

    // Without a message, the agent still gets one.
    let (_, msg, a) = ask(&app, "[ask-write:no.txt]", Some(&id)).await;
    decide(&app, &a, json!({"decision": "deny"})).await;
    let (_, text) = reply(&app, &id, msg).await;
    assert_eq!(text, "denied: The user denied this from their phone.");
    // Bad decisions change nothing.
    let (_, _, a) = ask(&app, "[ask-write:no.txt]", Some(&id)).await;
    let res = decide(&app, &a, json!({"decision": "maybe"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_decision".into())
    );
    let res = decide(
        &app,
        &a,
        json!({"decision": "allow", "remember": "forever"}),
    )
    .await;
    assert_eq!(error_code(res).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(approval(&app, &a).await["status"], "pending");
    let res = app
        .get(&format!(
            "/api/approvals/{}",
            a["id"].as_i64().unwrap() + 1000
        ))
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "approval_not_found".into())
    );
    let other = app.stranger_token();
    let res = app
        .get_as(&other, &format!("/api/approvals/{}", a["id"]))
        .await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "another owner's approval is not shown"
    );
}

#[tokio::test]
async fn a_question_is_pushed_and_answered_with_a_label() {
    let (app, fake) = spawn_with_phone(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-question]", None).await;
    assert_eq!(a["kind"], "question");
    assert_eq!(a["toolName"], "AskUserQuestion");
    assert_eq!(a["input"]["questions"][0]["question"], "Which color?");
    let p = sent(&fake, 1).await.remove(0).payload();
    assert_eq!(p["kind"], "question_asked");
    assert_eq!(p["aps"]["category"], "QUESTION");
    assert_eq!(p["aps"]["alert"]["body"], "Which color?");
    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "answers_required".into())
    );
    let res = decide(&app, &a, json!({"answers": {"Which color?": "Blue"}})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (_, text) = reply(&app, &id, msg).await;
    assert_eq!(text, "answered: Which color?=Blue");
}

#[tokio::test]
async fn when_its_process_dies_a_pending_approval_expires_and_cannot_be_decided() {
    let app = spawn_app_with(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-write:x.txt]", None).await;
    let pid = app.pid_of(&id);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let m = app.wait_terminal(&id, msg).await;
    assert_eq!(m["status"], "failed");
    let gone = approval(&app, &a).await;
    assert_eq!(gone["status"], "expired");
    assert!(gone["reason"].is_string());
    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "approval_expired".into())
    );
    assert!(!app.project.join("x.txt").exists());
}

#[tokio::test]
async fn an_interrupt_while_pending_cancels_the_approval() {
    let app = spawn_app_with(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-write:x.txt]", None).await;
    let res = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m = app.wait_terminal(&id, msg).await;
    assert_eq!(m["status"], "interrupted");
    assert_eq!(approval(&app, &a).await["status"], "cancelled");
    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "approval_expired".into())
    );
    // A value no approval takes is refused as such, whatever became of this one.
    for (body, code) in [
        (json!({"decision": "maybe"}), "invalid_decision"),
        (
            json!({"decision": "allow", "remember": "forever"}),
            "invalid_remember",
        ),
    ] {
        let res = decide(&app, &a, body).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, code.into())
        );
    }
    // The session goes on.
    let next = app.chat_wait("after", Some(&id)).await;
    assert_eq!(next["status"], "completed");

    // Ending the session while a request waits cancels it too; the phone can see why.
    let (_, msg, b) = ask(&app, "[ask-write:y.txt]", Some(&id)).await;
    let res = app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.message(&id, msg).await["status"], "interrupted");
    let ended = approval(&app, &b).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(ended["reason"], "the session was ended");
}

#[tokio::test]
async fn a_restart_while_pending_ends_it_and_the_conversation_goes_on() {
    // A graceful stop ends the turn (interrupted): what it waited for is cancelled.
    let app = spawn_app_with(|_| {}).await;
    let (id, msg, a) = ask(&app, "[ask-write:x.txt]", None).await;
    let app = app.restart().await;
    assert_eq!(app.message(&id, msg).await["status"], "interrupted");
    assert_eq!(approval(&app, &a).await["status"], "cancelled");
    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "approval_expired".into())
    );
    // A value no approval takes is refused as such, whatever became of this one.
    for (body, code) in [
        (json!({"decision": "maybe"}), "invalid_decision"),
        (
            json!({"decision": "allow", "remember": "forever"}),
            "invalid_remember",
        ),
    ] {
        let res = decide(&app, &a, body).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, code.into())
        );
    }
    let (settings, dir) = app.stop().await;

    // A SIGKILL leaves it pending in the database: the next start expires it.
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let asked = server
        .chat(
            &token,
            json!({"message": "[ask-write:y.txt]", "sessionId": id}),
        )
        .await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/sessions/{id}/approvals?status=pending", server.base);
    let b: Value = wait_for("a pending approval", || async {
        let v: Value = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["approvals"].as_array()?.first().cloned()
    })
    .await;
    server.kill();
    let app = TestApp::start(settings, dir).await;
    let m = app.message(&id, asked["messageId"].as_i64().unwrap()).await;
    assert_eq!(m["status"], "interrupted");
    let gone = approval(&app, &b).await;
    assert_eq!(gone["status"], "expired");
    assert!(
        gone["reason"].as_str().unwrap().contains("restarted"),
        "{gone}"
    );
    let res = decide(&app, &b, json!({"decision": "allow"})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "approval_expired".into())
    );

    let next = app.chat_wait("still here?", Some(&id)).await;
    assert_eq!(next["status"], "completed");
    let text = next["reply"]["text"].as_str().unwrap();
    assert!(
        text.contains("[ask-write:y.txt]"),
        "the conversation resumed: {text}"
    );
    assert!(!app.project.join("x.txt").exists(), "nothing answered");
    assert!(!app.project.join("y.txt").exists(), "nothing answered");
}

#[tokio::test]
async fn remember_session_keeps_the_mode_across_a_resume() {
    let app = spawn_app_with(with_control_log).await;
    let (id, msg, a) = ask(&app, "[ask-write:a.txt]", None).await;
    assert_eq!(a["suggestions"][0]["mode"], "acceptEdits");
    decide(
        &app,
        &a,
        json!({"decision": "allow", "remember": "session"}),
    )
    .await;
    let (m, _) = reply(&app, &id, msg).await;
    assert_eq!(m["status"], "completed");
    let session = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(session["permissionMode"], "acceptEdits");
    let answered = control_log(&app);
    let last = &answered.last().unwrap()["control_response"]["response"];
    assert_eq!(
        last["response"]["updatedPermissions"][0]["mode"],
        "acceptEdits"
    );

    // The same process no longer asks; nor does a resumed one.
    let b = app.chat_wait("[ask-write:b.txt]", Some(&id)).await;
    assert_eq!(b["reply"]["text"], "wrote b.txt");
    app.state
        .sessions
        .lifecycle_tick(tether::store::now_ms() + 3_600_000)
        .await
        .unwrap();
    wait_for("hibernation", || async {
        app.state
            .sessions
            .process_info(&id)
            .pid
            .is_none()
            .then_some(())
    })
    .await;
    let c = app.chat_wait("[ask-write:c.txt]", Some(&id)).await;
    assert_eq!(c["reply"]["text"], "wrote c.txt");
    let argv = app.invocations().pop().unwrap()["argv"].clone();
    let argv: Vec<&str> = argv
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = argv.iter().position(|a| *a == "--permission-mode").unwrap();
    assert_eq!(argv[at + 1], "acceptEdits");
    assert!(argv.contains(&"--resume"));
}

#[tokio::test]
async fn the_permission_mode_is_set_on_the_live_process_and_kept() {
    let app = spawn_app_with(with_control_log).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/{id}/permission-mode");
    let res = app.post(&path, json!({"mode": "yolo"})).await;
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_permission_mode".into()
        )
    );
    assert_eq!(
        app.get_json(&format!("/api/sessions/{id}")).await["permissionMode"],
        Value::Null
    );
    let res = app.post(&path, json!({"mode": "acceptEdits"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"sessionId": id, "permissionMode": "acceptEdits", "appliedToLiveProcess": true,
               "liveProcessError": null, "takesEffect": "now"})
    );
    // The live process switched: it writes without asking.
    let b = app.chat_wait("[ask-write:b.txt]", Some(&id)).await;
    assert_eq!(b["reply"]["text"], "wrote b.txt");
}

/// POST as the admin.
async fn post_admin(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&app.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Stops the session's idle process (hibernation) and waits until it is gone.
async fn hibernate(app: &TestApp, id: &str) {
    app.state
        .sessions
        .lifecycle_tick(tether::store::now_ms() + 3_600_000)
        .await
        .unwrap();
    wait_for("hibernation", || async {
        app.state
            .sessions
            .process_info(id)
            .pid
            .is_none()
            .then_some(())
    })
    .await;
}

/// The `--permission-mode` of the fake CLI's last start.
fn last_start_mode(app: &TestApp) -> String {
    let argv = crate::helpers::argv(&app.invocations().pop().unwrap());
    let at = argv.iter().position(|a| a == "--permission-mode").unwrap();
    argv[at + 1].clone()
}

#[tokio::test]
async fn a_mode_the_live_cli_refuses_is_answered_with_its_error_and_holds_from_the_next_start() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/{id}/permission-mode");
    // The CLI was not launched for bypassPermissions: it refuses, and says why.
    let res = post_admin(&app, &path, json!({"mode": "bypassPermissions"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"sessionId": id, "permissionMode": "bypassPermissions",
               "appliedToLiveProcess": false,
               "liveProcessError": "Cannot set permission mode to bypassPermissions because the \
                                    session was not launched with --dangerously-skip-permissions",
               "takesEffect": "nextStart"})
    );
    let session = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(session["permissionMode"], "bypassPermissions");
    // The live process goes on in its old mode: a write is still asked for.
    let queued = app.chat("[ask-write:asked.txt]", Some(&id)).await;
    let a = pending(&app, &id).await;
    decide(&app, &a, json!({"decision": "deny", "message": "no"})).await;
    let (m, _) = reply(&app, &id, queued["messageId"].as_i64().unwrap()).await;
    assert_eq!(m["status"], "completed");
    // Its next start is in the stored mode, which writes without asking.
    hibernate(&app, &id).await;
    let c = app.chat_wait("[ask-write:c.txt]", Some(&id)).await;
    assert_eq!(c["reply"]["text"], "wrote c.txt");
    assert_eq!(last_start_mode(&app), "bypassPermissions");
    // With no live process there is nothing to tell and no error: the next start uses it.
    hibernate(&app, &id).await;
    let res = app.post(&path, json!({"mode": "plan"})).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (
            &body["appliedToLiveProcess"],
            &body["liveProcessError"],
            &body["takesEffect"]
        ),
        (&json!(false), &Value::Null, &json!("nextStart")),
        "{body}"
    );
}

#[tokio::test]
async fn a_live_cli_that_does_not_answer_within_the_control_timeout_did_not_take_the_mode() {
    let app = spawn_app_with(|s| s.agent.control_timeout = Duration::from_secs(1)).await;
    let queued = app.chat("[hang]", None).await;
    let id = queued["sessionId"].as_str().unwrap().to_string();
    let msg = queued["messageId"].as_i64().unwrap();
    wait_for("the hung turn", || async {
        let running = app.message(&id, msg).await["status"] == "running";
        (running && app.state.sessions.process_info(&id).pid.is_some()).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let res = app
        .post(
            &format!("/api/sessions/{id}/permission-mode"),
            json!({"mode": "acceptEdits"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "{body}");
    assert_eq!(body["appliedToLiveProcess"], false, "{body}");
    assert_eq!(
        body["liveProcessError"],
        "the process did not answer within 1s (agent.control_timeout)"
    );
    assert_eq!(body["takesEffect"], "nextStart");
    assert_eq!(
        app.delete(&format!("/api/sessions/{id}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_user_chooses_only_the_modes_agent_permission_modes_lists_an_admin_any() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/{id}/permission-mode");
    let res = app.post(&path, json!({"mode": "bypassPermissions"})).await;
    let (status, body) = (res.status(), res.json::<Value>().await.unwrap());
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_mode_not_allowed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("agent.permission_modes: default, acceptEdits, plan"),
        "{message}"
    );
    // Nothing changed.
    let session = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(session["permissionMode"], Value::Null);
    for mode in ["default", "acceptEdits", "plan"] {
        let res = app.post(&path, json!({"mode": mode})).await;
        assert_eq!(res.status(), StatusCode::OK, "{mode}");
    }
    let res = post_admin(&app, &path, json!({"mode": "dontAsk"})).await;
    assert_eq!(res.status(), StatusCode::OK);

    // A narrower list: `remember` that would switch to a mode not in it is refused too, and
    // the request still waits for an answer.
    let app = spawn_app_with(|s| s.agent.permission_modes = vec!["plan".into()]).await;
    let (id, msg, a) = ask(&app, "[ask-write:r.txt]", None).await;
    let path = format!("/api/sessions/{id}/permission-mode");
    assert_eq!(
        error_code(app.post(&path, json!({"mode": "acceptEdits"})).await).await,
        (StatusCode::FORBIDDEN, "permission_mode_not_allowed".into())
    );
    let res = decide(
        &app,
        &a,
        json!({"decision": "allow", "remember": "session"}),
    )
    .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "permission_mode_not_allowed".into())
    );
    assert_eq!(approval(&app, &a).await["status"], "pending");
    let res = decide(&app, &a, json!({"decision": "allow"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (m, text) = reply(&app, &id, msg).await;
    assert_eq!(
        (m["status"].as_str(), text.as_str()),
        (Some("completed"), "wrote r.txt")
    );
    let session = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(session["permissionMode"], Value::Null);
}

#[tokio::test]
async fn a_mode_the_cli_does_not_know_in_the_settings_stops_the_start() {
    for (configure, named) in [
        (
            (|s: &mut tether::config::Settings| s.agent.permission_mode = "yolo".into())
                as fn(&mut tether::config::Settings),
            "agent.permission_mode is \"yolo\"",
        ),
        (
            |s: &mut tether::config::Settings| {
                s.agent.permission_modes = vec!["plan".into(), "sometimes".into()]
            },
            "agent.permission_modes holds \"sometimes\"",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::helpers::test_settings(dir.path());
        configure(&mut settings);
        let err = tether::Application::build(settings)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(named), "{err}");
        assert!(
            err.contains("bypassPermissions"),
            "lists the known modes: {err}"
        );
    }
}

#[tokio::test]
async fn a_turn_waiting_for_a_person_neither_stalls_nor_times_out_and_auto_deny_is_opt_in() {
    // Opt-in: by default nobody's silence answers for them.
    let defaults = tether::config::Settings::load(None).unwrap();
    assert_eq!(defaults.approvals.auto_deny_after, None);
    let app = spawn_app_with(|s| s.sessions.stall_timeout = Duration::from_secs(1)).await;
    let (id, msg, a) = ask(&app, "[ask-write:slow.txt]", None).await;
    decide(&app, &a, json!({"decision": "allow"})).await;
    let (m, _) = reply(&app, &id, msg).await;
    assert_eq!(m["status"], "completed");

    // The auto-deny is the clock here: it answers a second after the stall timeout would have,
    // and the turn it answers was waiting all along, neither stalled nor timed out.
    let app = spawn_app_with(|s| {
        s.sessions.stall_timeout = Duration::from_secs(1);
        s.approvals.auto_deny_after = Some(Duration::from_secs(2));
    })
    .await;
    let (id, msg, a) = ask(&app, "[ask-write:late.txt]", None).await;
    let (m, text) = reply(&app, &id, msg).await;
    assert_eq!(m["status"], "completed", "not stalled");
    assert!(
        text.starts_with("denied: Nobody answered within 2s"),
        "{text}"
    );
    let denied = approval(&app, &a).await;
    assert_eq!(
        (denied["status"].as_str(), denied["decidedBy"].as_str()),
        (Some("denied"), Some("tether"))
    );
}
