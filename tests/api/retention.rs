//! History retention: the messages (and approvals) of sessions that ended or expired more
//! than `events.message_retention` ago are pruned by the retention step, driven here with
//! the clock it is given; active sessions keep theirs, and "off" keeps everything.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::{sessions::retention, store};

use crate::helpers::{spawn_app, wait_for, TestApp};

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn message_count(app: &TestApp, id: &str) -> i64 {
    store::messages::count(app.state.store.pool(), id)
        .await
        .unwrap()
}

/// A session whose turn asked for (and got) an approval, so its messages are referred to.
async fn session_with_an_approval(app: &TestApp) -> String {
    let queued = app.chat("[ask-write:kept.txt] please", None).await;
    let id = queued["sessionId"].as_str().unwrap().to_string();
    let approval: Value = wait_for("a pending approval", || async {
        let v = app
            .get_json(&format!("/api/sessions/{id}/approvals?status=pending"))
            .await;
        v["approvals"].as_array().unwrap().first().cloned()
    })
    .await;
    let res = app
        .post(
            &format!("/api/approvals/{}", approval["id"]),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.wait_terminal(&id, queued["messageId"].as_i64().unwrap())
        .await;
    id
}

#[tokio::test]
async fn messages_of_long_ended_sessions_are_pruned_and_active_ones_kept() {
    let app = spawn_app().await;
    assert_eq!(
        app.settings.events.message_retention,
        Some(Duration::from_secs(90 * 24 * 3600)),
        "the default keeps 90 days"
    );
    let ended = session_with_an_approval(&app).await;
    app.chat_wait("more", Some(&ended)).await;
    assert_eq!(
        app.delete(&format!("/api/sessions/{ended}")).await.status(),
        StatusCode::OK
    );
    let ended_at = store::now_ms();
    // A third session expires a day later (the lifecycle step, at that time).
    let expired = app.chat_wait("short-lived", None).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let expired_at = ended_at + DAY_MS + app.settings.sessions.lifetime.as_millis() as i64;
    app.state.sessions.lifecycle_tick(expired_at).await.unwrap();
    let s = app.get_json(&format!("/api/sessions/{expired}")).await;
    assert_eq!(s["state"], "expired", "{s}");
    // One that stays active (started after that step ran).
    let active = app.chat_wait("still here", None).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(message_count(&app, &ended).await, 4);
    assert_eq!(message_count(&app, &expired).await, 2);

    let settings = app.settings.events.clone();
    let step = |now: i64| retention::tick_at(&app.state.store, &settings, now);
    // Just inside 90 days: everything stays.
    let pruned = step(ended_at + 89 * DAY_MS).await.unwrap();
    assert_eq!(pruned.messages, 0);
    assert_eq!(message_count(&app, &ended).await, 4);

    // Past 90 days after the end, the ended session's messages and approval go; the one that
    // expired a day later keeps its own a day longer.
    let pruned = step(ended_at + 91 * DAY_MS).await.unwrap();
    assert_eq!(pruned.messages, 4);
    assert_eq!(message_count(&app, &ended).await, 0);
    let approvals = app
        .get_json(&format!("/api/sessions/{ended}/approvals"))
        .await;
    assert_eq!(approvals["approvals"], json!([]));
    assert_eq!(message_count(&app, &expired).await, 2);
    let listed = app
        .get_json(&format!("/api/sessions/{ended}/messages"))
        .await;
    assert_eq!(listed["messages"], json!([]), "the session stays, empty");

    let pruned = step(expired_at + 91 * DAY_MS).await.unwrap();
    assert_eq!(pruned.messages, 2);
    assert_eq!(message_count(&app, &expired).await, 0);
    assert_eq!(
        message_count(&app, &active).await,
        2,
        "active sessions keep theirs"
    );

    // The active session goes on as before.
    let next = app.chat_wait("and on", Some(&active)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn message_retention_off_or_zero_keeps_everything() {
    let app = spawn_app().await;
    let id = app.chat_wait("keep me", None).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.delete(&format!("/api/sessions/{id}")).await.status(),
        StatusCode::OK
    );
    let far = store::now_ms() + 10_000 * DAY_MS;
    for keep in [None, Some(Duration::ZERO)] {
        let mut settings = app.settings.events.clone();
        settings.message_retention = keep;
        let pruned = retention::tick_at(&app.state.store, &settings, far)
            .await
            .unwrap();
        assert_eq!(pruned.messages, 0, "{keep:?}");
        assert_eq!(message_count(&app, &id).await, 2, "{keep:?}");
    }
    // A retention of a day, a day and a moment later: gone.
    let mut settings = app.settings.events.clone();
    settings.message_retention = Some(Duration::from_secs(24 * 3600));
    let at = store::now_ms() + DAY_MS + 1_000;
    let pruned = retention::tick_at(&app.state.store, &settings, at)
        .await
        .unwrap();
    assert_eq!(pruned.messages, 2);
}

#[test]
fn message_retention_reads_off_zero_and_durations() {
    for (text, want) in [
        ("\"off\"", None),
        ("0", Some(Duration::ZERO)),
        ("\"90days\"", Some(Duration::from_secs(90 * 24 * 3600))),
    ] {
        let toml = format!(
            "retention = \"30days\"\nmessage_retention = {text}\nmax_per_session = 10\nprune_interval = \"1h\"\n"
        );
        let settings: tether::config::EventSettings = figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(&toml),
        )
        .extract()
        .unwrap();
        assert_eq!(settings.message_retention, want, "{text}");
    }
}
