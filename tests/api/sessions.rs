//! Sessions: details, messages, the SSE event log, interrupt, delete, odd agent output,
//! and who may see what.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{pid_alive, spawn_app, spawn_app_with, wait_for, TestApp};

/// Reads SSE events `(id, event, data)` until `until` matches one (inclusive).
pub(crate) async fn read_sse(
    app: &TestApp,
    session: &str,
    last_event_id: Option<i64>,
    until: impl Fn(&(i64, String, Value)) -> bool,
) -> Vec<(i64, String, Value)> {
    read_open_sse(open_sse(app, session, last_event_id).await, until).await
}

/// Opens the session's event stream: once it answers, the server has subscribed it to what
/// happens next (it subscribes before it answers).
pub(crate) async fn open_sse(
    app: &TestApp,
    session: &str,
    last_event_id: Option<i64>,
) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url(&format!("/api/sessions/{session}/events")))
        .bearer_auth(&app.token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res
}

/// The events of an open stream ([`open_sse`]) until `until` says stop (that one included).
pub(crate) async fn read_open_sse(
    res: reqwest::Response,
    until: impl Fn(&(i64, String, Value)) -> bool,
) -> Vec<(i64, String, Value)> {
    let mut stream = res.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                        id = v.trim().parse().ok();
                    } else if let Some(v) =
                        line.strip_prefix("event: ").or(line.strip_prefix("event:"))
                    {
                        event = v.trim().to_string();
                    } else if let Some(v) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        data.push_str(v);
                    }
                }
                let Some(id) = id else { continue }; // keep-alive comment
                let ev = (id, event, serde_json::from_str(&data).unwrap());
                let stop = until(&ev);
                events.push(ev);
                if stop {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("SSE events in time");
    events
}

pub(crate) fn turn_ended(ev: &(i64, String, Value)) -> bool {
    ev.1 == "tether.turn_completed" || ev.1 == "tether.turn_failed"
}

#[tokio::test]
async fn a_session_shows_its_process_counts_and_cost() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap();
    app.chat_wait("two", Some(id)).await;
    let s = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(s["id"], id);
    assert_eq!(s["state"], "active");
    assert_eq!(s["projectPath"], app.project.to_string_lossy().as_ref());
    assert_eq!(s["title"], "demo");
    assert_eq!(s["messageCount"], 4);
    assert_eq!(s["process"]["state"], "idle");
    let pid = s["process"]["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));
    // The fake CLI reports 0.001 per turn summed over its life; the session adds per-turn cost.
    assert!(
        (s["totalCostUsd"].as_f64().unwrap() - 0.002).abs() < 1e-9,
        "{s}"
    );
    assert!(s["createdAt"].as_str().unwrap().ends_with('Z'));

    let list = app.get_json("/api/sessions").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);

    let messages = app.get_json(&format!("/api/sessions/{id}/messages")).await["messages"].clone();
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["replyTo"], messages[0]["id"]);
    assert!(messages[1]["durationMs"].as_i64().is_some());
    assert_eq!(messages[0]["status"], "completed");
    let after = messages[1]["id"].as_i64().unwrap();
    let rest = app
        .get_json(&format!("/api/sessions/{id}/messages?after={after}"))
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    assert_eq!(rest["messages"][0]["text"], "two");
}

#[tokio::test]
async fn another_owner_sees_nothing_and_an_admin_sees_all() {
    let app = spawn_app().await;
    let first = app.chat_wait("mine", None).await;
    let id = first["sessionId"].as_str().unwrap();
    let stranger = app.stranger_token();
    for path in [
        format!("/api/sessions/{id}"),
        format!("/api/sessions/{id}/messages"),
    ] {
        let res = app.get_as(&stranger, &path).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let res = app
        .client
        .post(app.url("/api/chat"))
        .bearer_auth(&stranger)
        .json(&json!({"message": "hi", "sessionId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let list: Value = app
        .get_as(&stranger, "/api/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0);
    let all: Value = app
        .get_as(&app.admin_token, "/api/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn events_stream_live_and_resume_from_last_event_id() {
    let app = spawn_app().await;
    let first = app.chat_wait("hello [tool]", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();

    // The whole first turn, from the log.
    let all = read_sse(&app, &id, None, turn_ended).await;
    let kinds: Vec<&str> = all.iter().map(|e| e.1.as_str()).collect();
    // The process starts, then the message is handed to it and becomes running.
    assert_eq!(
        kinds[..2],
        ["tether.process_started", "tether.turn_started"]
    );
    for k in [
        "tether.process_started",
        "system",
        "assistant",
        "user",
        "result",
        "tether.turn_completed",
    ] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let seqs: Vec<i64> = all.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "ids are 1, 2, 3…"
    );
    let last = *seqs.last().unwrap();

    // Live: a listener connected before the second turn sees it as it happens.
    let listener = open_sse(&app, &id, Some(last)).await;
    app.chat("second", Some(&id)).await;
    let live = read_open_sse(listener, turn_ended).await;
    assert_eq!(live.first().unwrap().0, last + 1);
    assert_eq!(live.last().unwrap().1, "tether.turn_completed");
    let live_last = live.last().unwrap().0;

    // Reconnect from the middle of the first turn: the missed events come first, in order.
    let resumed = read_sse(&app, &id, Some(2), |e| e.0 == live_last).await;
    assert_eq!(resumed.first().unwrap().0, 3);
    assert_eq!(resumed.len() as i64, live_last - 2);
    let result = resumed.iter().find(|e| e.1 == "result").unwrap();
    assert_eq!(
        result.2["session_id"],
        id.as_str(),
        "agent lines are sent whole"
    );
    // ...but the reply's text is stored once, in its message: the result points to it.
    assert!(result.2.get("result").is_none(), "{:?}", result.2);
    assert!(result.2["replyId"].as_i64().is_some(), "{:?}", result.2);
}

#[tokio::test]
async fn interrupt_ends_the_turn_and_the_session_stays_usable() {
    let app = spawn_app().await;
    let res = app.chat("take your time [slow:20000]", None).await;
    let (id, msg) = (
        res["sessionId"].as_str().unwrap().to_string(),
        res["messageId"].as_i64().unwrap(),
    );
    // The turn is with the CLI once the session's process is busy.
    let pid = wait_for("process busy", || async {
        let s = app.get_json(&format!("/api/sessions/{id}")).await;
        (s["process"]["state"] == "busy").then(|| s["process"]["pid"].as_u64().unwrap())
    })
    .await;
    assert_eq!(app.message(&id, msg).await["status"], "running");
    let started = std::time::Instant::now();
    let res = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ended = app.wait_terminal(&id, msg).await;
    assert_eq!(ended["status"], "interrupted");
    assert_eq!(ended["error"], "interrupted");
    assert!(started.elapsed() < Duration::from_secs(10));

    let next = app.chat_wait("still there?", Some(&id)).await;
    assert_eq!(next["status"], "completed");
    let s = app.get_json(&format!("/api/sessions/{id}")).await;
    assert_eq!(
        s["process"]["pid"].as_u64().unwrap(),
        pid,
        "the same process goes on"
    );

    let idle = app
        .post(&format!("/api/sessions/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(idle.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn delete_stops_the_process_ends_the_session_and_keeps_history() {
    let app = spawn_app().await;
    let first = app.chat_wait("keep me", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let queued_behind = app.chat("long [slow:20000]", Some(&id)).await;
    let waiting = app.chat("never runs", Some(&id)).await;
    app.wait_terminal_or_running(&id, queued_behind["messageId"].as_i64().unwrap())
        .await;
    let pid = app.get_json(&format!("/api/sessions/{id}")).await["process"]["pid"]
        .as_u64()
        .unwrap() as u32;

    let res = app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let s: Value = res.json().await.unwrap();
    assert_eq!(s["state"], "ended");
    assert_eq!(s["process"]["state"], "none");
    assert!(!pid_alive(pid), "process {pid} was stopped");

    let running = app
        .message(&id, queued_behind["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(running["status"], "interrupted");
    let queued = app
        .message(&id, waiting["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(queued["status"], "cancelled");
    assert_eq!(
        app.messages(&id).await[1]["text"],
        "echo: keep me | history: keep me"
    );

    let res = app
        .post("/api/chat", json!({"message": "hi", "sessionId": id}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // Deleting again is harmless.
    assert_eq!(
        app.delete(&format!("/api/sessions/{id}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn odd_output_is_logged_and_the_session_goes_on() {
    let app = spawn_app_with(|s| s.agent.max_line_bytes = 10_000).await;
    let res = app
        .chat_wait("odd [garbage][unknown][huge:50000]", None)
        .await;
    assert_eq!(res["status"], "completed", "{res}");
    assert_eq!(res["reply"]["text"], "huge done");
    let id = res["sessionId"].as_str().unwrap();
    let events = read_sse(&app, id, None, turn_ended).await;
    let find = |kind: &str| {
        events
            .iter()
            .find(|e| e.1 == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .2
            .clone()
    };
    assert_eq!(
        find("tether.invalid_line")["preview"],
        "this is not json {{{"
    );
    assert_eq!(
        find("mystery_event")["foo"]["bar"],
        1,
        "unknown types are kept whole"
    );
    let cut = find("tether.line_truncated");
    assert_eq!(cut["limit"], 10_000);
    assert!(cut["length"].as_u64().unwrap() > 50_000);
    let next = app.chat_wait("and then", Some(id)).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn a_result_line_over_the_bound_fails_the_turn_cleanly() {
    let app = spawn_app_with(|s| s.agent.max_line_bytes = 10_000).await;
    let res = app.chat_wait("big [bigreply:20000]", None).await;
    assert_eq!(res["status"], "failed");
    assert!(
        res["error"]
            .as_str()
            .unwrap()
            .contains("agent.max_line_bytes"),
        "{res}"
    );
    let next = app.chat_wait("small", res["sessionId"].as_str()).await;
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn bad_paging_answers_a_json_error() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap();
    for (query, code) in [
        ("after=abc", "invalid_query"),
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
    ] {
        let res = app
            .get(&format!("/api/sessions/{id}/messages?{query}"))
            .await;
        assert_eq!(
            crate::helpers::error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, code.to_string()),
            "{query}"
        );
    }
    let edge = app
        .get_json(&format!("/api/sessions/{id}/messages?limit=1000"))
        .await;
    assert_eq!(edge["messages"].as_array().unwrap().len(), 2);
    let res = app.get_as(&app.admin_token, "/api/pushes?before=x").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn cursors_are_plain_non_negative_numbers() {
    let app = spawn_app().await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap();
    // `+` in a query is a space; `%2B` is the sign itself.
    for query in [
        "after=-1",
        "after=%2B1",
        "after=+1",
        "after=1.0",
        "after=",
        "after=%201",
    ] {
        let res = app
            .get(&format!("/api/sessions/{id}/messages?{query}"))
            .await;
        assert_eq!(
            crate::helpers::error_code(res).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query".to_string()
            ),
            "{query}"
        );
        let res = app.get(&format!("/api/sessions/{id}/events?{query}")).await;
        assert_eq!(
            res.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events?{query}"
        );
    }
    for query in ["before=-1", "before=%2B1"] {
        let res = app
            .get_as(&app.admin_token, &format!("/api/pushes?{query}"))
            .await;
        assert_eq!(
            crate::helpers::error_code(res).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query".to_string()
            ),
            "{query}"
        );
    }
    for header in ["-1", "+1", "1e3", "0x1"] {
        let res = app
            .client
            .get(app.url(&format!("/api/sessions/{id}/events")))
            .bearer_auth(&app.token)
            .header("Last-Event-ID", header)
            .send()
            .await
            .unwrap();
        assert_eq!(
            crate::helpers::error_code(res).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_last_event_id".to_string()
            ),
            "Last-Event-ID: {header}"
        );
    }
    // The edges still work: 0, and a plain id.
    let all = app
        .get_json(&format!("/api/sessions/{id}/messages?after=0"))
        .await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 2);
    let first_id = first["messageId"].as_i64().unwrap();
    let rest = app
        .get_json(&format!("/api/sessions/{id}/messages?after={first_id}"))
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 1);
    let res = app.get_as(&app.admin_token, "/api/pushes?before=0").await;
    assert_eq!(res.status(), StatusCode::OK);
    let events = read_sse(&app, id, Some(0), |(_, kind, _)| {
        kind == "tether.turn_completed"
    })
    .await;
    assert_eq!(
        events.first().map(|e| e.0),
        Some(1),
        "Last-Event-ID: 0 replays from the start"
    );
}
