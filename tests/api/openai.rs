//! The OpenAI-compatible endpoint: completions through the chat's accept path (ordinary
//! messages of their session), streamed chunks from the live text, errors in OpenAI's shape,
//! and the official `openai` Python SDK against a running tether with the fake CLI.

use std::{path::PathBuf, time::Duration};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, wait_for, SseReader, TestApp, DEADLINE};

const COMPLETIONS: &str = "/v1/chat/completions";

impl TestApp {
    /// `POST /v1/chat/completions` with the user token.
    async fn completion(&self, body: Value) -> reqwest::Response {
        self.post(COMPLETIONS, body).await
    }

    /// A request body for `text`: in the test's project, or in conversation `id`.
    fn completion_body(&self, text: &str, conversation: Option<&str>) -> Value {
        let mut body = json!({
            "model": "claude",
            "messages": [{"role": "user", "content": text}],
        });
        match conversation {
            Some(id) => body["conversation_id"] = id.into(),
            None => body["project_path"] = self.project.to_string_lossy().into(),
        }
        body
    }
}

/// The status and OpenAI error of an answer, checking its shape.
async fn openai_error(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let body: Value = res.json().await.expect("a JSON error");
    let error = body["error"].clone();
    let keys: Vec<&str> = error
        .as_object()
        .expect("an error object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["message", "type", "param", "code"], "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, error)
}

#[tokio::test]
async fn a_completion_is_an_ordinary_message_of_its_session() {
    let app = spawn_app().await;
    let res = app.completion(app.completion_body("hi", None)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let header = res.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude", "the model is the agent");
    assert_eq!(body["conversation_id"], header.as_str());
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "echo: hi | history: hi");
    assert_eq!(choice["finish_reason"], "stop");
    // The fake's result line says 10 tokens in, 5 out.
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 15);

    // Only the last message is sent: the session holds the conversation.
    let mut next = app.completion_body("again", Some(&header));
    next["messages"] = json!([
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "not sent"},
        {"role": "assistant", "content": "echo: hi"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]);
    let res = app.completion(next).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: again | history: hi / again"
    );

    // In the session's history like any message.
    let history: Vec<(String, String)> = app
        .messages(&header)
        .await
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("user", "hi"),
            ("assistant", "echo: hi | history: hi"),
            ("user", "again"),
            ("assistant", "echo: again | history: hi / again"),
        ]
        .map(|(r, t)| (r.to_string(), t.to_string()))
    );
    let session = app.get_json(&format!("/api/sessions/{header}")).await;
    assert_eq!(session["owner"], "me");
    assert_eq!(session["agent"], "claude");
}

#[tokio::test]
async fn a_completion_queues_behind_the_sessions_turn_and_pushes_like_a_chat() {
    const DEVICE: &str = "abababababababababababababababababababababababababababababababab";
    let app = spawn_app().await;
    let res = app
        .post(
            "/api/devices",
            json!({"token": DEVICE, "environment": "sandbox"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = app.new_session("first").await;
    let slow = app.chat("slow one [slow:1500]", Some(&id)).await;
    let res = app
        .completion(app.completion_body("after it", Some(&id)))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: after it | history: first / slow one [slow:1500] / after it",
        "it waited for the turn before it"
    );
    let earlier = app.message(&id, slow["messageId"].as_i64().unwrap()).await;
    assert_eq!(earlier["status"], "completed");
    // Its reply was pushed to the owner's phone, as any reply.
    let reply_id = app.messages(&id).await.last().unwrap()["id"]
        .as_i64()
        .unwrap();
    wait_for("the completion's push", || async {
        let ledger = app
            .get_as(&app.admin_token, "/api/pushes")
            .await
            .json::<Value>()
            .await
            .ok()?;
        ledger["pushes"]
            .as_array()?
            .iter()
            .any(|p| p["messageId"] == reply_id && p["kind"] == "turn_completed")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_new_conversation_runs_in_the_default_project_or_needs_one() {
    let app = spawn_app().await;
    let mut body = app.completion_body("hi", None);
    body.as_object_mut().unwrap().remove("project_path");
    let (status, error) = openai_error(app.completion(body.clone()).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "project_path_required");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "project_path");
    drop(app);

    let app = spawn_app_with(|s| {
        let demo = s.projects.roots[0].join("demo");
        s.openai.default_project = demo.to_string_lossy().into_owned();
    })
    .await;
    let res = app.completion(body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = res.json::<Value>().await.unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let session = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(
        session["projectPath"],
        app.project.to_string_lossy().as_ref()
    );
    // A project outside the roots is refused as chat refuses it.
    let mut outside = app.completion_body("hi", None);
    outside["project_path"] = "/".into();
    let (status, error) = openai_error(app.completion(outside).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["type"], "permission_error");
}

#[tokio::test]
async fn errors_on_v1_are_in_openais_shape_and_the_rest_keeps_tethers() {
    let app = spawn_app().await;
    // Auth as everywhere: the same bearer token.
    let res = app.client.get(app.url("/v1/models")).send().await.unwrap();
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["type"], "authentication_error");
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["param"], Value::Null);
    let models = app.get_json("/v1/models").await;
    assert_eq!(
        models,
        json!({"object": "list", "data": [{"id": "claude", "object": "model", "created": 0, "owned_by": "tether"}]})
    );

    let mut cases: Vec<(Value, StatusCode, &str, &str, Value)> = vec![
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            StatusCode::NOT_FOUND,
            "model_not_found",
            "not_found_error",
            "model".into(),
        ),
        (
            json!({"model": "claude", "messages": []}),
            StatusCode::BAD_REQUEST,
            "invalid_messages",
            "invalid_request_error",
            "messages".into(),
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_messages",
            "invalid_request_error",
            "messages".into(),
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]}),
            StatusCode::BAD_REQUEST,
            "unsupported_content",
            "invalid_request_error",
            "messages".into(),
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "project_path": "/x"}),
            StatusCode::FORBIDDEN,
            "forbidden",
            "permission_error",
            Value::Null,
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": "  "}], "conversation_id": "00000000-0000-4000-8000-000000000000"}),
            StatusCode::BAD_REQUEST,
            "empty_message",
            "invalid_request_error",
            "messages".into(),
        ),
        (
            // Missing `messages`: tether's 422 is OpenAI's 400.
            json!({"model": "claude"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "invalid_request_error",
            Value::Null,
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "conversation_id": "not-a-uuid"}),
            StatusCode::BAD_REQUEST,
            "invalid_session_id",
            "invalid_request_error",
            "conversation_id".into(),
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "conversation_id": "00000000-0000-4000-8000-000000000000"}),
            StatusCode::NOT_FOUND,
            "session_not_found",
            "not_found_error",
            "conversation_id".into(),
        ),
    ];
    let long = "x".repeat(app.settings.sessions.max_message_bytes + 1);
    cases.push((
        json!({"model": "claude", "messages": [{"role": "user", "content": long}], "conversation_id": "00000000-0000-4000-8000-000000000000"}),
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_large",
        "invalid_request_error",
        "messages".into(),
    ));
    for (body, status, code, kind, param) in cases {
        let (got, error) = openai_error(app.completion(body.clone()).await).await;
        assert_eq!((got, &error["code"]), (status, &code.into()), "{body}");
        assert_eq!(error["type"], kind, "{body}");
        assert_eq!(error["param"], param, "{body}");
    }
    let res = app
        .client
        .post(app.url(COMPLETIONS))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "malformed_json");
    // No route, or not this method: the same shape.
    let (status, error) = openai_error(app.get("/v1/nothing").await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("route_not_found"))
    );
    let (status, _) = openai_error(app.get(COMPLETIONS).await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Another owner's conversation does not exist for them.
    let id = app.new_session("mine").await;
    let res = app
        .client
        .post(app.url(COMPLETIONS))
        .bearer_auth(app.stranger_token())
        .json(&app.completion_body("yours?", Some(&id)))
        .send()
        .await
        .unwrap();
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "session_not_found");
    // An ended one is a conflict.
    app.delete(&format!("/api/sessions/{id}")).await;
    let (status, error) =
        openai_error(app.completion(app.completion_body("hi", Some(&id))).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "session_ended");

    // The rest of the API keeps tether's own shape.
    let res = app
        .post("/api/chat", json!({"message": "hi", "sessionId": "nope"}))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["code", "message"]
    );
}

#[tokio::test]
async fn a_turn_that_fails_or_is_interrupted_answers_an_error_not_to_retry() {
    let app = spawn_app().await;
    let res = app.completion(app.completion_body("hi", None)).await;
    let id = res.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();

    let res = app
        .completion(app.completion_body("break [error]", Some(&id)))
        .await;
    assert_eq!(res.headers()["x-should-retry"], "false");
    assert_eq!(res.headers()["x-conversation-id"], id.as_str());
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error["type"], "server_error");
    assert_eq!(error["code"], "turn_failed");
    assert!(
        error["message"].as_str().unwrap().contains("529"),
        "{error}"
    );

    // Interrupted from the phone while the completion waits.
    let waiting = {
        let (client, url, token) = (app.client.clone(), app.url(COMPLETIONS), app.token.clone());
        let body = app.completion_body("long [slow:20000]", Some(&id));
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    wait_for("the slow turn to run", || async {
        let s = app.get_json(&format!("/api/sessions/{id}")).await;
        (s["process"]["state"] == "busy").then_some(())
    })
    .await;
    let res = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.headers()["x-should-retry"], "false");
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "turn_interrupted");
    assert_eq!(error["type"], "conflict_error");
}

#[tokio::test]
async fn a_completion_waits_at_most_the_wait_timeout_and_its_turn_goes_on() {
    let app = spawn_app_with(|s| s.server.wait_timeout = Duration::from_secs(1)).await;
    // The session's first turn (its process starting) may take longer than the wait itself.
    let first = app.chat("hi", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    app.wait_terminal(&id, first["messageId"].as_i64().unwrap())
        .await;
    let started = std::time::Instant::now();
    let res = app
        .completion(app.completion_body("slow [slow:2500]", Some(&id)))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(2400),
        "{waited:?}"
    );
    assert_eq!(res.headers()["x-should-retry"], "false");
    let (status, error) = openai_error(res).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error["code"], "reply_pending");
    assert!(
        error["message"].as_str().unwrap().contains(&id),
        "it says where the reply will be: {error}"
    );
    // The turn went on and its reply is in the history.
    let msg = app.messages(&id).await[2]["id"].as_i64().unwrap();
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        app.messages(&id).await.last().unwrap()["text"],
        "echo: slow [slow:2500] | history: hi / slow [slow:2500]"
    );
}

/// The `data:` of a stream's events, as JSON (None for `[DONE]`), until it ends.
async fn chunks(res: reqwest::Response) -> Vec<Option<Value>> {
    let mut sse = SseReader::new(res);
    let mut all = Vec::new();
    while let Some(ev) = sse.next().await {
        assert_eq!(ev.event, None, "OpenAI's chunks have no event name");
        all.push((ev.data != "[DONE]").then(|| ev.json()));
    }
    all
}

#[tokio::test]
async fn a_streamed_completion_sends_the_text_as_it_is_written_then_done() {
    let app = spawn_app_with(|s| {
        s.agent
            .env
            .insert("FAKE_CLAUDE_DELTA_MS".into(), "40".into());
    })
    .await;
    let id = app.new_session("hi").await;
    let mut body = app.completion_body("stream this [bigreply:200]", Some(&id));
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let res = app.completion(body).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-conversation-id"], id.as_str());
    let mut sse = SseReader::new(res);
    let first = sse.next().await.unwrap().json();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["conversation_id"], id.as_str());
    // The first text arrives while the turn still runs.
    let second = sse.next().await.unwrap().json();
    let text = second["choices"][0]["delta"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    let msg = app.messages(&id).await[2].clone();
    assert_eq!(msg["status"], "running", "{msg}");
    let mut rest = Vec::new();
    while let Some(ev) = sse.next().await {
        rest.push((ev.data != "[DONE]").then(|| ev.json()));
    }
    assert_eq!(rest.pop(), Some(None), "it ends with [DONE]");
    let usage = rest.pop().unwrap().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 15);
    let finish = rest.pop().unwrap().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let mut joined = text.to_string();
    for chunk in &rest {
        let chunk = chunk.as_ref().unwrap();
        assert_eq!(chunk["id"], first["id"]);
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        joined.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert!(rest.len() >= 3, "{rest:?}");
    let reply = app.messages(&id).await.last().unwrap()["text"].clone();
    assert_eq!(Value::from(joined), reply, "the chunks join to the reply");
}

#[tokio::test]
async fn a_streamed_turn_that_fails_ends_with_an_error_chunk() {
    let app = spawn_app().await;
    let mut body = app.completion_body("break [error]", None);
    body["stream"] = true.into();
    let res = app.completion(body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let all = chunks(res).await;
    let last = all
        .last()
        .unwrap()
        .as_ref()
        .expect("no [DONE] after an error");
    assert_eq!(last["error"]["code"], "turn_failed");
    assert_eq!(last["error"]["type"], "server_error");
    assert!(all.iter().all(Option::is_some));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_does_not_stop_the_turn() {
    let app = spawn_app_with(|s| {
        s.agent
            .env
            .insert("FAKE_CLAUDE_DELTA_MS".into(), "40".into());
        s.limits.streams_per_owner = 1;
    })
    .await;
    let id = app.new_session("hi").await;
    let mut body = app.completion_body("long story [bigreply:400]", Some(&id));
    body["stream"] = true.into();
    let res = app.completion(body.clone()).await;
    // While it streams, it counts as one of its owner's streams.
    let (status, error) = openai_error(app.completion(body).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["code"], "too_many_streams");
    assert_eq!(error["type"], "rate_limit_error");
    let mut sse = SseReader::new(res);
    sse.next().await.unwrap();
    sse.next().await.unwrap();
    drop(sse);
    // The turn goes on to its end, and is stored like any other.
    let msg = app.messages(&id).await[2]["id"].as_i64().unwrap();
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed");
    let reply = app.messages(&id).await.last().unwrap()["text"].clone();
    assert_eq!(reply.as_str().unwrap().len(), 400);
    // Only one message was accepted for the two requests.
    assert_eq!(app.messages(&id).await.len(), 4);
    // The stream's count is given back once its task sees the client gone.
    wait_for("the stream's permit", || async {
        let res = app.get(&format!("/api/sessions/{id}/events")).await;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// In the full tier, the venv's python with the pinned SDK (scripts/install-python-tools.sh),
/// or None: skip with the reason printed, except under CI, where it must be there.
pub(crate) fn sdk_python() -> Option<PathBuf> {
    if !crate::kit::full_tier("the openai SDK check (Python)") {
        return None;
    }
    let python = match std::env::var_os("TETHER_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/python/bin/python"),
    };
    if python.is_file() {
        return Some(python);
    }
    let how = "bash scripts/install-python-tools.sh (scripts/test.sh runs it)";
    if std::env::var_os("CI").is_some() {
        panic!(
            "the openai SDK's venv ({}) is missing under CI: {how}",
            python.display()
        );
    }
    crate::kit::skipped(&format!(
        "openai SDK check: no {}; install it with {how}",
        python.display()
    ));
    None
}

/// Runs tests/python/openai_sdk_check.py against the app; fails the test with its output.
pub(crate) async fn run_sdk_check(app: &TestApp, python: &std::path::Path, agent_fails: bool) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk_check.py");
    let run = tokio::process::Command::new(python)
        .arg(&script)
        .env("TETHER_BASE_URL", &app.base)
        .env("TETHER_TOKEN", &app.token)
        .env("TETHER_PROJECT", &app.project)
        .env("TETHER_AGENT_FAILS", if agent_fails { "1" } else { "0" })
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the SDK check ends in time")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the openai SDK check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("openai SDK: all"), "{stdout}\n{stderr}");
    println!("{stdout}");
}

#[tokio::test]
async fn the_official_openai_sdk_talks_to_tether() {
    let Some(python) = sdk_python() else { return };
    let app = spawn_app().await;
    run_sdk_check(&app, &python, true).await;
}
