//! A session's day: its end moved by messages and keep-alives, the recap, the warning push
//! at `expiresAt - warn_before` (once, with its APNs headers), the end (process stopped,
//! `expired`, a push, 410), deadlines that fell due while tether was down, hibernation and
//! transparent resume, waiting for a process slot, and the stall watch. The scheduler's
//! step is driven with times the test chooses: no test waits real hours.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::{
    config::ByteSize,
    sessions::{lifecycle::LifecycleReport, usage::Sampler},
    store,
};

use crate::{
    helpers::{error_code, pid_alive, spawn_app_with, wait_for, wait_gone, TestApp},
    push::{sent, spawn_with_phone, start_with_gateway},
};

const HOUR: i64 = 3600 * 1000;

/// The session's row as stored (times in ms).
async fn row(app: &TestApp, id: &str) -> store::sessions::SessionRow {
    store::sessions::get(app.state.store.pool(), id)
        .await
        .unwrap()
        .expect("session exists")
}

async fn tick(app: &TestApp, at: i64) -> LifecycleReport {
    app.state.sessions.lifecycle_tick(at).await.unwrap()
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Waits until the store's clock (ms) has passed `ms`: a time stored after this is later.
async fn clock_past(ms: i64) {
    wait_for("the clock to move on", || async {
        (store::now_ms() > ms).then_some(())
    })
    .await;
}

async fn keep_alive(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/api/sessions/{id}/keep-alive"), body)
        .await
}

#[tokio::test]
async fn a_message_and_a_keep_alive_each_move_the_end_a_lifetime_ahead() {
    let app = spawn_app_with(|_| {}).await;
    let before = store::now_ms();
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let created = row(&app, &id).await;
    assert!(created.expires_at >= before + 24 * HOUR);
    assert!(created.expires_at <= store::now_ms() + 24 * HOUR);
    let shown = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(ms(&shown["expiresAt"]), created.expires_at);

    // The end is a lifetime after the last write: the next write must come at a later ms.
    clock_past(created.expires_at - 24 * HOUR).await;
    app.chat_wait("again", Some(&id)).await;
    let after_message = row(&app, &id).await.expires_at;
    assert!(
        after_message > created.expires_at,
        "a message moves the end"
    );

    clock_past(after_message - 24 * HOUR).await;
    let res = keep_alive(&app, &id, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let kept = row(&app, &id).await.expires_at;
    assert!(kept > after_message, "a keep-alive moves the end");
    assert_eq!(ms(&body["expiresAt"]), kept);
    // No body at all is a keep-alive without recap; a bad one changes nothing.
    let res = app
        .client
        .post(app.url(&format!("/api/sessions/{id}/keep-alive")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Nor does `null`.
    let res = keep_alive(&app, &id, Value::Null).await;
    assert_eq!(res.status(), StatusCode::OK);
    let end = row(&app, &id).await.expires_at;
    for bad in [json!({"recap": "yes please"}), json!([]), json!([true])] {
        let res = keep_alive(&app, &id, bad.clone()).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".into()),
            "{bad}"
        );
    }
    // A form feed is white space to ASCII, not to JSON: no body, but not an empty one.
    let res = app
        .client
        .post(app.url(&format!("/api/sessions/{id}/keep-alive")))
        .bearer_auth(&app.token)
        .body("\x0c")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".into())
    );
    assert_eq!(row(&app, &id).await.expires_at, end);
    // Someone else's session, or none: 404.
    let other = app.stranger_token();
    let res = app
        .client
        .post(app.url(&format!("/api/sessions/{id}/keep-alive")))
        .bearer_auth(other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(row(&app, &id).await.expires_at, end);
}

#[tokio::test]
async fn a_keep_alive_with_recap_runs_a_turn_and_answers_its_text() {
    let app = spawn_app_with(|s| s.sessions.recap_prompt = "[recap] sum it up".into()).await;
    let first = app.chat_wait("we fix the parser", None).await;
    let id = first["sessionId"].as_str().unwrap();
    let res = keep_alive(&app, id, json!({"recap": true})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let text = body["recap"]["text"].as_str().unwrap();
    // The fake echoes the prompt and the whole conversation: it had the context.
    assert!(text.contains("[recap] sum it up"), "{text}");
    assert!(text.contains("we fix the parser"), "{text}");
    assert_eq!(body["recap"]["status"], "completed");
    let messages = app.messages(id).await;
    assert_eq!(messages.len(), 4, "the recap and its reply are stored");
    assert_eq!(messages[3]["text"], text);
    assert_eq!(body["recap"]["replyId"], messages[3]["id"]);
    assert_eq!(ms(&body["expiresAt"]), row(&app, id).await.expires_at);
}

#[tokio::test]
async fn the_warning_goes_out_once_at_its_moment_with_its_headers() {
    let (app, fake) = spawn_with_phone(|_| {}).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let replies = sent(&fake, 1).await.len();
    let end = row(&app, &id).await.expires_at;
    let warn_at = end - 4 * HOUR; // 20 hours into an idle day

    assert_eq!(tick(&app, warn_at - 1000).await.warned, 0, "not before");
    assert_eq!(tick(&app, warn_at).await.warned, 1);
    assert_eq!(tick(&app, warn_at + 60_000).await.warned, 0, "only once");
    assert_eq!(tick(&app, end - 1).await.warned, 0, "only once");
    let pushes = sent(&fake, replies + 1).await;
    let warning = &pushes[replies];
    let payload = warning.payload();
    assert_eq!(payload["kind"], "session_expiring");
    assert_eq!(payload["aps"]["category"], "SESSION_EXPIRING");
    assert_eq!(payload["aps"]["alert"]["title"], "demo");
    assert_eq!(payload["sessionId"], id.as_str());
    let body = payload["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.contains("4h"), "the time left: {body}");
    assert_eq!(
        warning.collapse_id.as_deref(),
        Some(format!("expiring-{id}").as_str())
    );
    assert_eq!(
        warning.expiration,
        Some((end / 1000) as u64),
        "worthless after the end"
    );
    let shown = app.get_json(&format!("/api/sessions/{id}")).await;
    assert!(shown["warnedAt"].is_string());

    // A keep-alive (more than half a second after the end was set) clears it: nothing at
    // the old moment, a new warning in the next period.
    clock_past(end - 24 * HOUR + 500).await;
    let res = keep_alive(&app, &id, json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let new_end = row(&app, &id).await.expires_at;
    assert!(row(&app, &id).await.warned_at.is_none());
    assert_eq!(tick(&app, warn_at + 500).await.warned, 0);
    assert_eq!(tick(&app, new_end - 4 * HOUR).await.warned, 1);
    let pushes = sent(&fake, replies + 2).await;
    assert_eq!(
        pushes[replies + 1].collapse_id,
        warning.collapse_id,
        "it replaces the first"
    );
    assert_eq!(pushes.len(), replies + 2);
}

#[tokio::test]
async fn at_its_end_the_session_expires_its_process_stops_and_messages_get_410() {
    let (app, fake) = spawn_with_phone(|_| {}).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let replies = sent(&fake, 1).await.len();
    let pid = app.pid_of(&id);
    let end = row(&app, &id).await.expires_at;

    let report = tick(&app, end).await;
    assert_eq!(
        (report.expired, report.warned),
        (1, 0),
        "no warning once the end came"
    );
    let shown = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(shown["state"], "expired");
    assert_eq!(shown["endReason"], "expired");
    wait_gone(pid).await;
    let pushes = sent(&fake, replies + 1).await;
    assert_eq!(pushes[replies].payload()["kind"], "session_expired");
    assert_eq!(
        pushes[replies].payload()["aps"]["alert"]["subtitle"],
        "Session expired"
    );

    let res = app
        .post("/api/chat", json!({"message": "more", "sessionId": id}))
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "session_expired".into())
    );
    let res = keep_alive(&app, &id, json!({})).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::GONE, "session_expired".into())
    );
    assert_eq!(
        app.messages(&id).await.len(),
        2,
        "its history stays readable"
    );
    assert_eq!(
        tick(&app, end + HOUR).await,
        LifecycleReport::default(),
        "once"
    );
}

#[tokio::test]
async fn deadlines_that_fell_due_while_down_are_handled_once_after_start() {
    let (app, fake) = spawn_with_phone(|_| {}).await;
    let warn_me = app.new_session("one").await;
    let end_me = app.new_session("two").await;
    let replies = sent(&fake, 2).await.len();
    let (settings, dir) = app.stop().await;

    // Time passes while tether is down: one session is inside its warning period, the
    // other's end (and so its warning too) has passed.
    let now = store::now_ms();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", settings.database.path.display()))
        .await
        .unwrap();
    for (id, end) in [(&warn_me, now + HOUR), (&end_me, now - HOUR)] {
        sqlx::query("UPDATE sessions SET expires_at = ? WHERE id = ?")
            .bind(end)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let app = start_with_gateway(settings, dir, fake.clone()).await;
    let pushes = sent(&fake, replies + 2).await;
    let mut kinds: Vec<(String, String)> = pushes[replies..]
        .iter()
        .map(|p| {
            let v = p.payload();
            (
                v["sessionId"].as_str().unwrap().into(),
                v["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    kinds.sort();
    let mut expected = vec![
        (warn_me.clone(), "session_expiring".to_string()),
        (end_me.clone(), "session_expired".to_string()),
    ];
    expected.sort();
    assert_eq!(
        kinds, expected,
        "the warning of the ended session is skipped"
    );
    assert_eq!(
        app.get_json(&format!("/api/sessions/{end_me}")).await["state"],
        "expired"
    );

    // Another start sends nothing again.
    let (settings, dir) = app.stop().await;
    let app = start_with_gateway(settings, dir, fake.clone()).await;
    assert_eq!(
        tick(&app, store::now_ms()).await,
        LifecycleReport::default()
    );
    // One step of the push worker sends whatever is due (none is): nothing reaches the phone.
    assert_eq!(app.state.push.tick().await.unwrap().claimed, 0);
    assert_eq!(fake.sent().len(), replies + 2);
}

#[tokio::test]
async fn an_idle_process_hibernates_and_the_next_message_resumes_it() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.chat_wait("remember the word lantern", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let pid = app.pid_of(&id);

    let now = store::now_ms();
    assert_eq!(
        tick(&app, now + 29 * 60_000).await.hibernated,
        0,
        "not before idle_stop"
    );
    assert_eq!(tick(&app, now + 31 * 60_000).await.hibernated, 1);
    wait_gone(pid).await;
    let shown = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(shown["state"], "active", "hibernated, not ended");
    assert_eq!(shown["process"]["state"], "none");

    let second = app.chat_wait("what was the word?", Some(&id)).await;
    let text = second["reply"]["text"].as_str().unwrap();
    assert!(
        text.contains("remember the word lantern"),
        "resumed with context: {text}"
    );
    let last = app.invocations().pop().unwrap();
    assert!(
        last["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--resume"),
        "started with --resume: {last}"
    );
}

#[tokio::test]
async fn with_every_slot_busy_a_message_waits_and_says_so() {
    let app = spawn_app_with(|s| s.sessions.max_processes = 1).await;
    let a = app.new_session("a").await;
    let b = app.new_session("b").await;
    // b took a's slot: a's idle process was hibernated (least recently used).
    assert_eq!(app.state.sessions.process_info(&a).pid, None);
    let busy = app.chat("[slow:1500] b works", Some(&b)).await;
    app.wait_terminal_or_running(&b, busy["messageId"].as_i64().unwrap())
        .await;
    let waiting = app.chat("a again", Some(&a)).await;
    let waiting_id = waiting["messageId"].as_i64().unwrap();
    let m = wait_for("the message to say it waits for a slot", || async {
        let m = app.message(&a, waiting_id).await;
        (m["waitingFor"] == "process_slot").then_some(m)
    })
    .await;
    assert_eq!(m["status"], "queued");
    let done = app.wait_terminal(&a, waiting_id).await;
    assert_eq!(
        done["status"], "completed",
        "nothing lost: it ran when b finished"
    );
    assert!(done.get("waitingFor").is_none());
}

#[tokio::test]
async fn a_silent_turn_fails_as_stalled_and_api_retries_keep_one_alive() {
    let (app, fake) = spawn_with_phone(|s| {
        s.sessions.stall_timeout = Duration::from_secs(1);
        s.agent.interrupt_grace = Duration::from_secs(1);
    })
    .await;

    // The CLI retrying the API for 2 s (a line every 400 ms) is alive.
    let alive = app.chat_wait("[api-retry:5] patience", None).await;
    assert_eq!(alive["status"], "completed");
    let id = alive["sessionId"].as_str().unwrap().to_string();
    let replies = sent(&fake, 1).await.len();

    // One that says nothing at all is interrupted, then killed.
    let hung = app.chat_wait("[hang]", Some(&id)).await;
    assert_eq!(hung["status"], "failed");
    let error = hung["error"].as_str().unwrap();
    assert!(error.starts_with("stalled"), "{error}");
    let pushes = sent(&fake, replies + 1).await;
    assert_eq!(pushes[replies].payload()["kind"], "turn_failed");
    // The session goes on.
    let after = app.chat_wait("still there?", Some(&id)).await;
    assert_eq!(after["status"], "completed");
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn an_idle_process_above_its_memory_limit_is_recycled_and_resumed() {
    let app = spawn_app_with(|s| s.sessions.max_process_memory = ByteSize(100 * MIB)).await;
    let first = app
        .chat_wait("[alloc:150] remember the word cedar", None)
        .await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let pid = app.pid_of(&id);
    let (report, _) = app.state.sessions.resource_tick(Sampler::new()).await;
    assert_eq!(report.recycled, 1, "{report:?}");
    assert!(report.total_bytes > 150 * MIB);
    wait_gone(pid).await;
    let next = app.chat_wait("and now?", Some(&id)).await;
    let text = next["reply"]["text"].as_str().unwrap();
    assert!(
        text.contains("remember the word cedar"),
        "resumed with context: {text}"
    );
}

#[tokio::test]
async fn above_the_total_idle_processes_hibernate_oldest_first() {
    let app = spawn_app_with(|s| s.sessions.max_total_memory = ByteSize(200 * MIB)).await;
    let old = app.new_session("[alloc:120] old").await;
    let new = app.new_session("[alloc:120] new").await;
    let old_pid = app.pid_of(&old);
    let new_pid = app.pid_of(&new);
    let (report, _) = app.state.sessions.resource_tick(Sampler::new()).await;
    assert_eq!((report.recycled, report.hibernated), (0, 1), "{report:?}");
    wait_gone(old_pid).await;
    assert!(pid_alive(new_pid), "the newer one stays");
}

#[tokio::test]
async fn the_admin_sees_every_active_session_and_what_it_costs() {
    let app = spawn_app_with(|_| {}).await;
    let a = app.new_session("[alloc:50] a").await;
    let b = app.new_session("b").await;
    app.delete(&format!("/api/sessions/{b}")).await;
    let (_, sampler) = app.state.sessions.resource_tick(Sampler::new()).await;
    app.state.sessions.resource_tick(sampler).await;

    let res = app.get("/api/sessions/active").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "admins only");
    let res = app.get_as(&app.admin_token, "/api/sessions/active").await;
    assert_eq!(res.status(), StatusCode::OK);
    let view: Value = res.json().await.unwrap();
    let sessions = view["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "only active sessions: {view}");
    let s = &sessions[0];
    assert_eq!(s["id"], a.as_str());
    assert_eq!(s["owner"], "me");
    assert_eq!(s["title"], "demo");
    assert_eq!(s["state"], "idle");
    assert_eq!(s["pid"], app.pid_of(&a));
    assert!(s["memoryBytes"].as_u64().unwrap() > 50 * MIB, "{s}");
    assert!(s["cpuPercent"].is_number());
    assert_eq!(s["messageCount"], 2);
    assert_eq!(s["queued"], 0);
    assert!(s["expiresInSecs"].as_i64().unwrap() > 23 * 3600);
    assert!(s["totalCostUsd"].as_f64().unwrap() > 0.0);
    let totals = &view["totals"];
    assert_eq!(totals["activeSessions"], 1);
    assert_eq!(totals["processes"], 1);
    assert_eq!(totals["maxProcesses"], 8);
    assert_eq!(totals["memoryBytes"], s["memoryBytes"]);

    // Hibernated, it is still listed, without a process.
    tick(&app, store::now_ms() + HOUR).await;
    let view = wait_for("the session to show as hibernated", || async {
        let v: Value = app
            .get_as(&app.admin_token, "/api/sessions/active")
            .await
            .json()
            .await
            .unwrap();
        (v["sessions"][0]["state"] == "hibernated").then_some(v)
    })
    .await;
    assert_eq!(view["sessions"][0]["pid"], Value::Null);
    assert_eq!(view["totals"]["processes"], 0);
}
