//! Pushes end to end: device registration, what a turn, a failure or an idle exit pushes
//! (through the scripted fake gateway, as the app would get it), the ledger, `/health`, a
//! disabled token, and pending pushes sent after a restart.

use std::{path::Path, sync::Arc};

use a2::ErrorReason;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tether::{
    auth::Role,
    config::Settings,
    push::{fake::FakeGateway, PushGateway},
};

use crate::helpers::{error_code, spawn_app, test_settings, wait_for, TestApp};

pub(crate) const T1: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const T2: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0af9e8d7c6b5a4938271605f4e3d2c1b0a";
const TOPIC: &str = "com.example.tether";

/// The app with `gateway` as its push gateway, in a fresh data folder.
pub(crate) async fn spawn_with_gateway(gateway: Arc<dyn PushGateway>) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let settings = test_settings(dir.path());
    start_with_gateway(settings, dir, gateway).await
}

/// The app on an existing data folder (a restart) with `gateway`.
pub(crate) async fn start_with_gateway(
    mut settings: Settings,
    dir: Arc<TempDir>,
    gateway: Arc<dyn PushGateway>,
) -> TestApp {
    settings.push.apns.topic = TOPIC.into();
    TestApp::start_with(settings, dir, Some(gateway)).await
}

/// The app with a scripted push gateway and one registered phone (`T1`), in a fresh data
/// folder with `configure`d settings.
pub(crate) async fn spawn_with_phone(
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, Arc<FakeGateway>) {
    let fake = Arc::new(FakeGateway::new());
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = test_settings(dir.path());
    configure(&mut settings);
    let app = start_with_gateway(settings, dir, fake.clone()).await;
    register(&app, T1, "sandbox").await;
    (app, fake)
}

pub(crate) async fn register(app: &TestApp, token: &str, environment: &str) -> Value {
    let res = app
        .post(
            "/api/devices",
            json!({"token": token, "environment": environment, "name": "phone"}),
        )
        .await;
    assert!(res.status().is_success(), "register: {}", res.status());
    res.json().await.unwrap()
}

async fn devices(app: &TestApp) -> Vec<Value> {
    app.get_json("/api/devices").await["devices"]
        .as_array()
        .unwrap()
        .clone()
}

/// `GET /api/pushes?query` as the admin.
async fn ledger(app: &TestApp, query: &str) -> Vec<Value> {
    let res = app
        .get_as(&app.admin_token, &format!("/api/pushes?{query}"))
        .await;
    assert_eq!(res.status(), StatusCode::OK, "GET /api/pushes?{query}");
    let body: Value = res.json().await.unwrap();
    body["pushes"].as_array().unwrap().clone()
}

async fn health(app: &TestApp) -> Value {
    app.health().await
}

/// Waits until the fake has been asked to send `n` pushes, and returns them.
pub(crate) async fn sent(fake: &FakeGateway, n: usize) -> Vec<tether::push::fake::SentPush> {
    wait_for(&format!("{n} pushes sent"), || async {
        let sent = fake.sent();
        (sent.len() >= n).then_some(sent)
    })
    .await
}

#[tokio::test]
async fn devices_are_registered_updated_listed_and_removed() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/api/devices",
            json!({"token": T1, "environment": "sandbox", "name": "Ana's iPhone"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["token"], T1);
    assert_eq!(first["owner"], "me");
    assert_eq!(first["environment"], "sandbox");
    assert_eq!(first["topic"], Value::Null);
    assert_eq!(first["active"], true);

    // Re-registering (upper-case hex is the same token) updates the row.
    let res = app
        .post(
            "/api/devices",
            json!({"token": T1.to_uppercase(), "environment": "production", "topic": "com.example.other"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["environment"], "production");
    assert_eq!(again["topic"], "com.example.other");
    assert_eq!(again["name"], "Ana's iPhone", "kept when not sent");
    assert_eq!(again["createdAt"], first["createdAt"]);

    // Anything else is a 422 that changes nothing.
    let bad = [
        (
            json!({"token": &T1[..62], "environment": "sandbox"}),
            "invalid_device_token",
        ),
        (
            json!({"token": format!("{}0", T1), "environment": "sandbox"}),
            "invalid_device_token",
        ),
        (
            json!({"token": T1.replace('a', "g"), "environment": "sandbox"}),
            "invalid_device_token",
        ),
        (
            json!({"token": format!("<{T1}>"), "environment": "sandbox"}),
            "invalid_device_token",
        ),
        (
            json!({"token": T1, "environment": "development"}),
            "invalid_environment",
        ),
        (
            json!({"token": T1, "environment": "Sandbox"}),
            "invalid_environment",
        ),
        (
            json!({"token": T1, "environment": "sandbox", "topic": "com example"}),
            "invalid_topic",
        ),
        (
            json!({"token": T1, "environment": "sandbox", "topic": ""}),
            "invalid_topic",
        ),
        (
            json!({"token": T1, "environment": "sandbox", "name": "x".repeat(101)}),
            "invalid_name",
        ),
        (json!({"token": T1}), "invalid_body"),
        (json!({"environment": "sandbox"}), "invalid_body"),
    ];
    for (body, code) in bad {
        let res = app.post("/api/devices", body.clone()).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, code.to_string()),
            "{body}"
        );
    }
    let listed = devices(&app).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["environment"], "production",
        "unchanged by the 422s"
    );
    assert_eq!(listed[0]["topic"], "com.example.other");

    // Another owner neither sees nor removes it.
    let other = app.token_for("you", Role::User).await;
    let res = app
        .client
        .delete(app.url(&format!("/api/devices/{T1}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let theirs: Value = app
        .get_as(&other, "/api/devices")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["devices"], json!([]));

    let res = app.delete(&format!("/api/devices/{T1}")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(devices(&app).await.is_empty());
    let res = app.delete(&format!("/api/devices/{T1}")).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "device_not_found".into())
    );
}

#[tokio::test]
async fn a_finished_turn_is_pushed_to_each_device_and_listed_in_the_ledger() {
    let fake = Arc::new(FakeGateway::new());
    fake.then(T1, || FakeGateway::accepted("apns-id-1"));
    let app = spawn_with_gateway(fake.clone()).await;
    register(&app, T1, "sandbox").await;
    let res = app
        .post(
            "/api/devices",
            json!({"token": T2, "environment": "production", "topic": "com.example.beta"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let turn = app.chat_wait("hello **world**", None).await;
    let session = turn["sessionId"].as_str().unwrap().to_string();
    let reply_id = turn["reply"]["id"].as_i64().unwrap();
    let reply_text = turn["reply"]["text"].as_str().unwrap().to_string();

    let mut pushes = sent(&fake, 2).await;
    pushes.sort_by(|a, b| a.token.cmp(&b.token));
    let (to_t1, to_t2) = (&pushes[0], &pushes[1]);
    assert_eq!((to_t1.token.as_str(), to_t2.token.as_str()), (T1, T2));
    assert_eq!(to_t1.environment.as_str(), "sandbox");
    assert_eq!(to_t2.environment.as_str(), "production");
    assert_eq!(to_t1.topic.as_deref(), Some(TOPIC), "the default topic");
    assert_eq!(
        to_t2.topic.as_deref(),
        Some("com.example.beta"),
        "its own topic"
    );
    for p in &pushes {
        let v = p.payload();
        assert_eq!(
            v["aps"]["alert"]["title"], "demo",
            "the project folder's name"
        );
        assert_eq!(
            v["aps"]["alert"]["body"],
            reply_text.replace("**", "").as_str()
        );
        assert_eq!(v["aps"]["thread-id"], session.as_str());
        assert_eq!(v["sessionId"], session.as_str());
        assert_eq!(v["messageId"], reply_id);
        assert_eq!(v["kind"], "turn_completed");
        assert!(p.json.len() <= 4096);
    }

    // The app fetches the whole reply by its id.
    let page = app
        .get_json(&format!(
            "/api/sessions/{session}/messages?after={}",
            reply_id - 1
        ))
        .await;
    assert_eq!(page["messages"][0]["id"], reply_id);
    assert_eq!(page["messages"][0]["text"], reply_text.as_str());

    // The ledger, newest first, filtered; admin only.
    let all = wait_for("both delivered", || async {
        let rows = ledger(&app, "status=delivered").await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert!(
        all[0]["id"].as_i64() > all[1]["id"].as_i64(),
        "newest first"
    );
    assert!(all
        .iter()
        .all(|p| p["sentToApple"] == true && p["attempts"] == 1));
    let t1_rows = ledger(&app, &format!("device={T1}")).await;
    assert_eq!(t1_rows.len(), 1);
    assert_eq!(t1_rows[0]["apnsId"], "apns-id-1");
    assert_eq!(t1_rows[0]["lastStatusCode"], 200);
    assert_eq!(t1_rows[0]["payload"], to_t1.payload());
    let by_id = ledger(&app, &format!("device={}", t1_rows[0]["deviceId"])).await;
    assert_eq!(by_id, t1_rows);
    // Neither an id (digits) nor a token (hex of a token's length): 422, as the document says.
    for bad in ["", "-1", "abc", &"z".repeat(64), &"a".repeat(65)] {
        let res = app
            .get_as(&app.admin_token, &format!("/api/pushes?device={bad}"))
            .await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_device".into()),
            "device={bad}"
        );
    }
    // A device nobody registered lists nothing, but the other filters are checked first.
    let unknown = "ab".repeat(32);
    assert!(ledger(&app, &format!("device={unknown}")).await.is_empty());
    for (query, code) in [
        ("status=sent", "invalid_status"),
        ("limit=0", "invalid_limit"),
    ] {
        let res = app
            .get_as(
                &app.admin_token,
                &format!("/api/pushes?device={unknown}&{query}"),
            )
            .await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, code.into()),
            "{query}"
        );
    }
    assert_eq!(ledger(&app, &format!("session={session}")).await.len(), 2);
    assert!(ledger(&app, "session=nope").await.is_empty());
    assert!(ledger(&app, "status=failed").await.is_empty());
    let page = ledger(&app, &format!("limit=1&before={}", all[0]["id"])).await;
    assert_eq!(page, vec![all[1].clone()]);

    let one = app
        .get_as(
            &app.admin_token,
            &format!("/api/pushes/{}", t1_rows[0]["id"]),
        )
        .await;
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["attemptLog"].as_array().unwrap().len(), 1);
    assert_eq!(one["attemptLog"][0]["action"], "delivered");

    let res = app.get("/api/pushes").await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let res = app
        .get_as(&app.admin_token, "/api/pushes?status=lost")
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_status".into())
    );
}

#[tokio::test]
async fn a_100_kb_reply_is_pushed_in_at_most_4096_bytes() {
    let fake = Arc::new(FakeGateway::new());
    let app = spawn_with_gateway(fake.clone()).await;
    register(&app, T1, "sandbox").await;
    let turn = app.chat_wait("[bigreply:100000]", None).await;
    assert!(turn["reply"]["text"].as_str().unwrap().len() >= 100_000);

    let [push] = &sent(&fake, 1).await[..] else {
        panic!("one push")
    };
    assert!(push.json.len() <= 4096, "{} bytes", push.json.len());
    let v = push.payload();
    let body = v["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.starts_with("lorem ipsum"), "{body}");
    assert!(body.chars().count() <= 150 && body.ends_with('…'), "{body}");
    assert_eq!(v["messageId"], turn["reply"]["id"]);
}

#[tokio::test]
async fn failed_turns_and_idle_exits_are_pushed_with_the_reason() {
    let fake = Arc::new(FakeGateway::new());
    let app = spawn_with_gateway(fake.clone()).await;
    register(&app, T1, "sandbox").await;

    let crashed = app.chat_wait("boom [crash]", None).await;
    assert_eq!(crashed["status"], "failed");
    let session = crashed["sessionId"].as_str().unwrap().to_string();
    let v = sent(&fake, 1).await[0].payload();
    assert_eq!(v["kind"], "turn_failed");
    assert_eq!(v["aps"]["alert"]["subtitle"], "Turn failed");
    assert_eq!(v["messageId"], crashed["messageId"], "the failed message");
    let body = v["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.contains("exit status: 3"), "{body}");

    let refused = app.chat_wait("hi [notloggedin]", Some(&session)).await;
    assert_eq!(refused["status"], "failed");
    let v = sent(&fake, 2).await[1].payload();
    assert_eq!(v["kind"], "turn_failed");
    assert_eq!(
        v["aps"]["alert"]["body"],
        "Not logged in · Please run /login"
    );

    let last = app.chat_wait("bye [exit-after]", Some(&session)).await;
    assert_eq!(last["status"], "completed");
    let pushes = sent(&fake, 4).await;
    let kinds: Vec<Value> = pushes[2..]
        .iter()
        .map(|p| p.payload()["kind"].clone())
        .collect();
    assert!(kinds.contains(&json!("turn_completed")), "{kinds:?}");
    let exit = pushes[2..]
        .iter()
        .map(|p| p.payload())
        .find(|v| v["kind"] == "process_exited")
        .expect("an idle exit is pushed");
    assert_eq!(exit["aps"]["alert"]["subtitle"], "Agent process exited");
    assert!(exit.get("messageId").is_none());
    assert_eq!(exit["aps"]["thread-id"], session.as_str());
    assert_eq!(fake.sent().len(), 4, "one push per event");
}

#[tokio::test]
async fn a_token_apns_unregistered_gets_nothing_until_it_registers_again() {
    let fake = Arc::new(FakeGateway::new());
    fake.then(T1, || {
        Err(FakeGateway::refused(
            410,
            Some(ErrorReason::Unregistered),
            None,
        ))
    });
    let app = spawn_with_gateway(fake.clone()).await;
    register(&app, T1, "sandbox").await;
    register(&app, T2, "sandbox").await;

    let first = app.chat_wait("one", None).await;
    let session = first["sessionId"].as_str().unwrap().to_string();
    sent(&fake, 2).await;
    let disabled = wait_for("T1 disabled", || async {
        let ds = devices(&app).await;
        let d = ds.into_iter().find(|d| d["token"] == T1).unwrap();
        (d["active"] == false).then_some(d)
    })
    .await;
    assert_eq!(disabled["disabledReason"], "APNs: 410 Unregistered");
    assert!(disabled["disabledAt"].is_string());

    app.chat_wait("two", Some(&session)).await;
    sent(&fake, 3).await;
    app.state.push.tick().await.unwrap();
    assert_eq!(
        fake.sent_to(T1).len(),
        1,
        "nothing more to a disabled token"
    );
    assert_eq!(fake.sent_to(T2).len(), 2);

    // The app registers the token again: it is enabled and pushed to.
    let again = register(&app, T1, "sandbox").await;
    assert_eq!(again["active"], true);
    assert_eq!(again["disabledReason"], Value::Null);
    app.chat_wait("three", Some(&session)).await;
    sent(&fake, 5).await;
    assert_eq!(fake.sent_to(T1).len(), 2);
}

#[tokio::test]
async fn the_log_gateway_stores_pushes_as_not_sent_to_apple() {
    let app = spawn_app().await;
    let h = health(&app).await;
    assert_eq!(
        h["push"],
        json!({"gateway": "log", "ok": true, "error": null, "unsent": 0})
    );
    register(&app, T1, "sandbox").await;
    app.chat_wait("hello", None).await;
    let rows = wait_for("push logged", || async {
        let rows = ledger(&app, "status=logged").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sentToApple"], false);
    assert_eq!(rows[0]["kind"], "turn_completed");
    assert_eq!(rows[0]["payload"]["aps"]["alert"]["title"], "demo");
}

#[tokio::test]
async fn a_configuration_error_is_on_health_and_pending_pushes_go_out_after_a_restart() {
    let broken = Arc::new(FakeGateway::new());
    broken.then(T1, || {
        Err(FakeGateway::refused(
            403,
            Some(ErrorReason::InvalidProviderToken),
            None,
        ))
    });
    let app = spawn_with_gateway(broken.clone()).await;
    register(&app, T1, "sandbox").await;
    let turn = app.chat_wait("hello", None).await;
    let session = turn["sessionId"].as_str().unwrap().to_string();

    let h = wait_for("push stopped", || async {
        let h = health(&app).await;
        (h["push"]["ok"] == false).then_some(h)
    })
    .await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["push"]["gateway"], "fake");
    let error = h["push"]["error"].as_str().unwrap();
    assert!(error.contains("InvalidProviderToken"), "{error}");
    // More events queue up but nothing is sent while stopped.
    app.chat_wait("again", Some(&session)).await;
    assert!(app.state.push.tick().await.unwrap().stopped);
    assert_eq!(broken.sent().len(), 1);
    let pending = ledger(&app, "status=pending").await;
    assert_eq!(pending.len(), 2);
    assert_eq!(health(&app).await["push"]["unsent"], 2);

    // Restart with the configuration fixed: each pending push goes out once.
    let (settings, dir) = app.stop().await;
    let fixed = Arc::new(FakeGateway::new());
    let app = start_with_gateway(settings, dir, fixed.clone()).await;
    let pushes = sent(&fixed, 2).await;
    app.state.push.tick().await.unwrap();
    assert_eq!(fixed.sent().len(), 2, "each once");
    let mut ids: Vec<i64> = pushes
        .iter()
        .map(|p| p.payload()["messageId"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two events, not one twice");
    assert_eq!(health(&app).await["push"]["ok"], true);
    wait_for("both delivered", || async {
        (ledger(&app, "status=delivered").await.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn removing_a_device_cancels_its_unsent_pushes() {
    let stopped = Arc::new(FakeGateway::broken("cannot read the APNs key"));
    let app = spawn_with_gateway(stopped.clone()).await;
    assert_eq!(
        health(&app).await["push"]["error"],
        "cannot read the APNs key"
    );
    register(&app, T1, "sandbox").await;
    app.chat_wait("hello", None).await;
    assert_eq!(ledger(&app, "status=pending").await.len(), 1);

    let res = app.delete(&format!("/api/devices/{T1}")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let rows = ledger(&app, "status=cancelled").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["deviceId"], Value::Null);
    assert_eq!(rows[0]["error"], "the device was removed");
    assert!(stopped.sent().is_empty());
}

/// Registration needs a topic when pushes go to APNs and no default is configured.
#[tokio::test]
async fn apns_without_a_default_topic_needs_one_per_device() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let key = dir.path().join("AuthKey_TEST.p8");
    std::fs::write(&key, tether::push::fake::throwaway_p8_key()).unwrap();
    let app = start_apns(dir.clone(), &key).await;
    assert_eq!(health(&app).await["push"]["gateway"], "apns");
    let res = app
        .post(
            "/api/devices",
            json!({"token": T1, "environment": "sandbox"}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "topic_required".into())
    );
    assert!(devices(&app).await.is_empty());
    let res = app
        .post(
            "/api/devices",
            json!({"token": T1, "environment": "sandbox", "topic": TOPIC}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// The app as `tether serve` builds it, with an APNs key configured (nothing is sent:
/// no device is registered until the test says so).
async fn start_apns(dir: Arc<TempDir>, key: &Path) -> TestApp {
    let mut settings = test_settings(dir.path());
    settings.push.apns.key_path = key.to_string_lossy().into_owned();
    settings.push.apns.key_id = "ABC123DEFG".into();
    settings.push.apns.team_id = "TEAM123456".into();
    settings.push.apns.topic = String::new();
    TestApp::start(settings, dir).await
}

#[tokio::test]
async fn device_names_with_control_or_direction_characters_are_refused() {
    let app = spawn_app().await;
    for name in [
        "Ana\u{0}s phone",
        "line\nbreak",
        "bell\u{7}",
        "c1\u{85}",
        "evil\u{202E}enohp",
        "\u{202A}embedded",
        "isolate\u{2066}x\u{2069}",
        "mark\u{200F}",
        "mark\u{200E}",
        "arabic\u{061C}mark",
    ] {
        let body = json!({"token": T1, "environment": "sandbox", "name": name});
        let res = app.post("/api/devices", body).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name".to_string()),
            "{name:?}"
        );
    }
    assert!(devices(&app).await.is_empty(), "nothing was stored");
    // Names in any script, with emoji and joiners, are fine.
    let body = json!({"token": T1, "environment": "sandbox", "name": "Ana’s iPhone 日本 👩‍💻 عربي"});
    assert_eq!(
        app.post("/api/devices", body).await.status(),
        StatusCode::CREATED
    );

    // The device name given when pairing follows the same rule.
    let code = tether::pairing::create(
        &app.state.store,
        "me",
        None,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap()
    .0;
    let pair = |name: &'static str| {
        app.client
            .post(app.url("/api/pair"))
            .json(&json!({"code": code, "deviceName": name}))
            .send()
    };
    let res = pair("x\u{202E}y").await.unwrap();
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_device_name".to_string()
        )
    );
    let res = pair("Ana's iPad").await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the code was not used up by the refusal"
    );
}
