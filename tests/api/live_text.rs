//! Live text: the agent's text reaches event-stream listeners as it is written
//! (`tether.text_delta` events, without an id) before its turn ends, and is never stored: the
//! log keeps the complete lines, and a client that reconnects catches up from them.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app_with, SseReader, TestApp};

/// The session's event stream after stored event `after`.
async fn events(app: &TestApp, id: &str, after: i64) -> SseReader {
    let res = app
        .client
        .get(app.url(&format!("/api/sessions/{id}/events")))
        .bearer_auth(&app.token)
        .header("Last-Event-ID", after.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    SseReader::new(res)
}

#[tokio::test]
async fn text_deltas_reach_listeners_before_the_turn_ends_and_are_not_stored() {
    // The fake streams its text 40 ms a piece, as a model writes.
    let app = spawn_app_with(|s| {
        s.agent
            .env
            .insert("FAKE_CLAUDE_DELTA_MS".into(), "40".into());
    })
    .await;
    let id = app.new_session("hello").await;
    let pool = app.state.store.pool();
    let before = tether::store::events::last_seq(pool, &id).await.unwrap();
    let mut live = events(&app, &id, before).await;

    let sent = app.chat("tell me more [bigreply:300]", Some(&id)).await;
    let msg = sent["messageId"].as_i64().unwrap();
    let mut deltas = Vec::new();
    let mut status_at_first_delta = Value::Null;
    let mut whole_line = None;
    loop {
        let ev = live.next().await.expect("the stream goes on");
        match ev.event.as_deref() {
            Some("tether.text_delta") => {
                assert_eq!(ev.id, None, "a delta has no id to resume from");
                if deltas.is_empty() {
                    status_at_first_delta = app.message(&id, msg).await["status"].clone();
                }
                let data = ev.json();
                assert_eq!(data["type"], "tether.text_delta");
                assert!(data["apiMessageId"].is_string(), "{data}");
                deltas.push(data["text"].as_str().unwrap().to_string());
            }
            Some("assistant") => {
                assert!(!deltas.is_empty(), "the text came before its whole line");
                whole_line = Some(ev.json()["message"]["content"][0]["text"].clone());
            }
            Some("tether.turn_completed") => {
                assert!(ev.id.is_some());
                break;
            }
            _ => {}
        }
    }
    assert!(deltas.len() >= 5, "{deltas:?}");
    assert_eq!(
        status_at_first_delta, "running",
        "the first text came while the turn ran"
    );
    let reply = app.messages(&id).await.last().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(reply.len(), 300);
    assert_eq!(deltas.concat(), reply, "the deltas join to the reply");
    assert_eq!(whole_line, Some(Value::from(reply.clone())));

    // The stored log has the whole lines and no delta, nor any line the deltas came from.
    let stored = tether::store::events::list_after(pool, &id, 0, 10_000)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|e| e.kind != "tether.text_delta" && e.kind != "stream_event"),
        "{:?}",
        stored.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    assert!(stored
        .iter()
        .any(|e| e.kind == "assistant" && e.data.contains(&reply)));
    // Stored numbers have no gaps: deltas took none.
    let seqs: Vec<i64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    // A client that comes back later replays whole lines only.
    let mut replay = events(&app, &id, 0).await;
    let mut ended = 0;
    while ended < 2 {
        let ev = replay.next().await.expect("the replay goes on");
        assert_ne!(ev.event.as_deref(), Some("tether.text_delta"));
        assert!(ev.id.is_some());
        if ev.event.as_deref() == Some("tether.turn_completed") {
            ended += 1;
        }
    }
}
