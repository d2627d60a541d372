//! `POST /api/chat`: turns, ordering, idempotency, limits, bad input, auth.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, spawn_app, spawn_app_with, TestApp};

/// Everything stored, as an admin sees it: (sessions, messages).
async fn counts(app: &TestApp) -> (usize, usize) {
    let res = app.get_as(&app.admin_token, "/api/sessions").await;
    let sessions: Value = res.json().await.unwrap();
    let sessions = sessions["sessions"].as_array().unwrap().clone();
    let messages = sessions
        .iter()
        .map(|s| s["messageCount"].as_i64().unwrap() as usize)
        .sum();
    (sessions.len(), messages)
}

#[tokio::test]
async fn two_turns_keep_context_in_one_process() {
    let app = spawn_app().await;
    let first = app.chat_wait("Remember the word BANANA", None).await;
    assert_eq!(first["status"], "completed");
    let session = first["sessionId"].as_str().unwrap().to_string();
    assert_eq!(
        first["reply"]["text"],
        "echo: Remember the word BANANA | history: Remember the word BANANA"
    );

    let second = app.chat_wait("Which word?", Some(&session)).await;
    assert_eq!(second["sessionId"], session.as_str());
    assert_eq!(
        second["reply"]["text"],
        "echo: Which word? | history: Remember the word BANANA / Which word?"
    );
    assert!(second["reply"]["costUsd"].as_f64().unwrap() > 0.0);

    // One process served both turns; it was started for a new conversation.
    let runs = app.invocations();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let argv: Vec<&str> = runs[0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        argv.windows(2)
            .any(|w| w == ["--session-id", session.as_str()]),
        "{argv:?}"
    );
    for flag in ["-p", "--verbose", "stream-json"] {
        assert!(argv.contains(&flag), "{argv:?}");
    }
    assert_eq!(runs[0]["cwd"], app.project.to_string_lossy().as_ref());
}

#[tokio::test]
async fn messages_sent_at_once_are_answered_in_order() {
    let app = spawn_app().await;
    let first = app.chat_wait("zero", None).await;
    let session = first["sessionId"].as_str().unwrap().to_string();
    let send = |text: &'static str| {
        let app = &app;
        let session = session.clone();
        async move {
            app.chat(&format!("{text} [slow:100]"), Some(&session))
                .await
        }
    };
    let (a, b, c) = tokio::join!(send("one"), send("two"), send("three"));
    let mut ids: Vec<i64> = [a, b, c]
        .iter()
        .map(|r| r["messageId"].as_i64().unwrap())
        .collect();
    ids.sort();
    for id in &ids {
        let m = app.wait_terminal(&session, *id).await;
        assert_eq!(m["status"], "completed", "{m}");
    }
    // Each reply saw exactly the messages accepted before it: queue order is id order.
    let messages = app.messages(&session).await;
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    for (i, user) in users.iter().enumerate() {
        let reply = messages
            .iter()
            .find(|m| m["replyTo"] == user["id"])
            .expect("reply");
        let history = reply["text"]
            .as_str()
            .unwrap()
            .split(" | history: ")
            .nth(1)
            .unwrap();
        assert_eq!(history.split(" / ").count(), i + 1, "{history}");
        assert!(
            history.ends_with(user["text"].as_str().unwrap()),
            "{history}"
        );
    }
}

#[tokio::test]
async fn the_same_client_message_id_is_accepted_once() {
    let app = spawn_app().await;
    let project = app.project.to_string_lossy().to_string();
    let body = json!({"message": "hello", "projectPath": project, "clientMessageId": "phone-1"});
    let first: Value = app
        .post("/api/chat", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let again = app.post("/api/chat", body).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["sessionId"], again["sessionId"]);
    assert_eq!(first["messageId"], again["messageId"]);

    // Also with a sessionId, and after the turn ended (then with its reply when waiting).
    let session = first["sessionId"].as_str().unwrap();
    app.wait_terminal(session, first["messageId"].as_i64().unwrap())
        .await;
    let body = json!({"message": "hello", "sessionId": session, "clientMessageId": "phone-1", "wait": true});
    let third: Value = app.post("/api/chat", body).await.json().await.unwrap();
    assert_eq!(third["messageId"], first["messageId"]);
    assert_eq!(third["reply"]["text"], "echo: hello | history: hello");
    assert_eq!(counts(&app).await, (1, 2));
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|s| {
        s.sessions.max_message_bytes = 1000;
        s.server.max_body_bytes = 4000;
    })
    .await;
    let project = app.project.to_string_lossy().to_string();
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/api/chat"))
            .bearer_auth(&app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        error_code(raw("{not json").await.unwrap()).await,
        (StatusCode::BAD_REQUEST, "malformed_json".into())
    );
    assert_eq!(
        error_code(raw(r#"{"projectPath":"/tmp"}"#).await.unwrap()).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".into())
    );
    let cases = [
        (
            json!({"message": "  ", "projectPath": project}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_message",
        ),
        (
            json!({"message": "x".repeat(1001), "projectPath": project}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
        ),
        (
            json!({"message": "x".repeat(5000), "projectPath": project}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            json!({"message": "hi"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "project_path_required",
        ),
        (
            json!({"message": "hi", "projectPath": format!("{project}/missing")}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "project_not_found",
        ),
        (
            json!({"message": "hi", "projectPath": "relative/path"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_project_path",
        ),
        (
            json!({"message": "hi", "projectPath": "/"}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            json!({"message": "hi", "projectPath": format!("{project}/../../..")}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // Outside the roots, a path that does not exist answers as one that does.
        (
            json!({"message": "hi", "projectPath": "/no/such/folder/anywhere"}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            json!({"message": "hi", "projectPath": format!("{project}/../../../missing")}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            json!({"message": "hi", "sessionId": "not-a-uuid"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_session_id",
        ),
        (
            json!({"message": "hi", "sessionId": uuid::Uuid::new_v4()}),
            StatusCode::NOT_FOUND,
            "session_not_found",
        ),
        (
            json!({"message": "hi", "projectPath": project, "clientMessageId": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_client_message_id",
        ),
    ];
    for (body, status, code) in cases {
        let res = app.post("/api/chat", body.clone()).await;
        assert_eq!(error_code(res).await, (status, code.to_string()), "{body}");
    }
    let file = app.project.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let res = app
        .post("/api/chat", json!({"message": "hi", "projectPath": file}))
        .await;
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "project_not_a_directory".into()
        )
    );
    assert_eq!(counts(&app).await, (0, 0));

    // The edge itself is accepted.
    let ok = app
        .post(
            "/api/chat",
            json!({"message": "x".repeat(1000), "projectPath": project}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    assert_eq!(counts(&app).await, (1, 1));
}

#[tokio::test]
async fn a_full_queue_answers_429_and_accepts_again_when_it_drains() {
    let app = spawn_app_with(|s| s.sessions.max_queued_per_session = 2).await;
    let first = app.chat("busy [slow:1500]", None).await;
    let session = first["sessionId"].as_str().unwrap().to_string();
    app.wait_terminal_or_running(&session, first["messageId"].as_i64().unwrap())
        .await;
    app.chat("two", Some(&session)).await;
    let third = app.chat("three", Some(&session)).await;
    let res = app
        .post(
            "/api/chat",
            json!({"message": "four", "sessionId": session}),
        )
        .await;
    let (status, code) = error_code(res).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "queue_full")
    );
    app.wait_terminal(&session, third["messageId"].as_i64().unwrap())
        .await;
    app.chat("five", Some(&session)).await;
}

#[tokio::test]
async fn a_missing_agent_keeps_the_server_up_and_chat_says_what_to_do() {
    let app = spawn_app_with(|s| s.agent.command = "/nonexistent/claude".into()).await;
    let health: Value = app.health().await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["agent"]["found"], false);
    assert!(
        health["agent"]["error"]
            .as_str()
            .unwrap()
            .contains("npm install"),
        "{health}"
    );
    let res = app
        .post(
            "/api/chat",
            json!({"message": "hi", "projectPath": app.project}),
        )
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "agent_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent.command"),
        "{body}"
    );
    assert_eq!(counts(&app).await, (0, 0));
}

#[tokio::test]
async fn health_reports_the_agent_version() {
    let app = spawn_app().await;
    let health: Value = app.health().await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"]["ok"], true);
    assert!(
        health["agent"]["version"]
            .as_str()
            .unwrap()
            .contains("2.1.329"),
        "{health}"
    );
}

#[tokio::test]
async fn not_logged_in_fails_the_message_with_that_reason() {
    let app = spawn_app().await;
    let res = app.chat_wait("hi [notloggedin]", None).await;
    assert_eq!(res["status"], "failed");
    assert_eq!(res["error"], "Not logged in · Please run /login");
    assert!(res["reply"].is_null());
    // The session stays usable once the CLI can answer.
    let session = res["sessionId"].as_str().unwrap();
    let next = app.chat_wait("again", Some(session)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn an_api_error_fails_the_turn_and_the_session_goes_on() {
    let app = spawn_app().await;
    let res = app.chat_wait("hi [error]", None).await;
    assert_eq!(res["status"], "failed");
    assert_eq!(res["error"], "API Error: 529 overloaded");
    let next = app.chat_wait("again", res["sessionId"].as_str()).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn routes_need_a_valid_token_except_health() {
    let app = spawn_app().await;
    let no_token = app
        .client
        .post(app.url("/api/chat"))
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(no_token).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let forged = app
        .client
        .get(app.url("/api/sessions"))
        .bearer_auth("e30.e30.sig")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let metrics = app.get_as(&app.token, "/metrics").await;
    assert_eq!(metrics.status(), StatusCode::FORBIDDEN);
    let metrics = app.get_as(&app.admin_token, "/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let unknown = app.get("/api/nope").await;
    assert_eq!(
        error_code(unknown).await,
        (StatusCode::NOT_FOUND, "route_not_found".into())
    );
}

#[tokio::test]
async fn wait_returns_202_when_the_turn_outlasts_the_wait() {
    let app = spawn_app_with(|s| s.server.wait_timeout = std::time::Duration::from_secs(1)).await;
    let body = json!({"message": "slow [slow:3000]", "projectPath": app.project, "wait": true});
    let res = app.post("/api/chat", body).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "running");
    let done = app
        .wait_terminal(
            body["sessionId"].as_str().unwrap(),
            body["messageId"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(done["status"], "completed");
}

#[tokio::test]
async fn a_chat_body_with_an_unknown_field_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    for body in [
        json!({"message": "hi", "projectPath": app.project.to_str().unwrap(), "wiat": true}),
        json!({"message": "hi", "projectPath": app.project.to_str().unwrap(), "session_id": "x"}),
    ] {
        let res = app.post("/api/chat", body.clone()).await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".to_string()),
            "{body}"
        );
    }
    assert_eq!(counts(&app).await, (0, 0));
    // Every field a client sends is still taken.
    let res = app
        .post(
            "/api/chat",
            json!({"message": "hi", "projectPath": app.project.to_str().unwrap(),
                "clientMessageId": "c-1", "wait": true}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let first: Value = res.json().await.unwrap();
    let res = app
        .post(
            "/api/chat",
            json!({"message": "again", "sessionId": first["sessionId"], "wait": true}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_message_says_whether_it_reached_the_agent() {
    let app = spawn_app().await;
    let done = app.chat_wait("hello", None).await;
    let id = done["sessionId"].as_str().unwrap().to_string();
    let first = app.message(&id, done["messageId"].as_i64().unwrap()).await;
    assert_eq!(first["delivered"], true, "{first}");
    assert_eq!(
        done["reply"]["delivered"], true,
        "a reply came from the agent"
    );

    // A message behind a running turn has not reached the agent; the running one has.
    let busy = app.chat("busy [slow:60000]", Some(&id)).await;
    let waiting = app.chat("behind it", Some(&id)).await;
    let busy_id = busy["messageId"].as_i64().unwrap();
    let running = crate::helpers::wait_for("the busy turn with the agent", || async {
        let m = app.message(&id, busy_id).await;
        (m["status"] == "running" && m["delivered"] == true).then_some(m)
    })
    .await;
    assert_eq!(running["delivered"], true);
    let queued = app
        .message(&id, waiting["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["delivered"], false, "{queued}");
    // Ending the session cancels the queued one, never delivered; the busy one was.
    assert_eq!(
        app.delete(&format!("/api/sessions/{id}")).await.status(),
        StatusCode::OK
    );
    let cancelled = app
        .message(&id, waiting["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["delivered"], false);
    let cut = app.message(&id, busy_id).await;
    assert_eq!(cut["status"], "interrupted", "{cut}");
    assert_eq!(cut["delivered"], true, "{cut}");
}
