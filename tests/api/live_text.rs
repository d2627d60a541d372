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

/// The lines of one turn of `program` (tether's stream flags, a new conversation) for the user
/// text `text`, its `result` last.
async fn one_turn(program: &str, env: &[(&str, String)], dir: &std::path::Path) -> Vec<Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = tokio::process::Command::new(program)
        .args(tether::agent::claude::STREAM_ARGS)
        .arg("--session-id")
        .arg(uuid::Uuid::new_v4().to_string())
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the CLI starts");
    let mut stdin = child.stdin.take().unwrap();
    let line = serde_json::json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}});
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut turn = Vec::new();
    loop {
        let line = tokio::time::timeout(crate::helpers::DEADLINE, stdout.next_line())
            .await
            .expect("the turn's lines in time")
            .unwrap()
            .expect("the CLI prints its result");
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let done = value["type"] == "result";
        turn.push(value);
        if done {
            drop(stdin);
            let _ = child.wait().await;
            return turn;
        }
    }
}

/// A turn's lines reduced to their kinds (`type`, `system/<subtype>`, `stream_event:<event>`,
/// with a delta's type), runs of text deltas as one.
fn shape(turn: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for line in turn {
        let kind = match line["type"].as_str().unwrap_or_default() {
            "system" => format!("system/{}", line["subtype"].as_str().unwrap_or_default()),
            "stream_event" => {
                let event = &line["event"];
                match event["delta"]["type"].as_str() {
                    Some(delta) => format!("stream_event:{}", delta),
                    None => format!("stream_event:{}", event["type"].as_str().unwrap()),
                }
            }
            other => other.to_string(),
        };
        if kinds.last() != Some(&kind) || kind != "stream_event:text_delta" {
            kinds.push(kind);
        }
    }
    kinds
}

/// What Claude Code 2.1.329 prints with `--include-partial-messages` for a turn whose model
/// call streams one text block (seen against the stand-in API, 2026-11-21).
const TEXT_TURN: [&str; 10] = [
    "system/init",
    "system/status",
    "stream_event:message_start",
    "stream_event:content_block_start",
    "stream_event:text_delta",
    "assistant",
    "stream_event:content_block_stop",
    "stream_event:message_delta",
    "stream_event:message_stop",
    "result",
];

/// Checks a text turn: its shape, its deltas' fields, and that they join to the reply.
fn check_text_turn(who: &str, turn: &[Value]) {
    assert_eq!(shape(turn), TEXT_TURN, "{who}: {turn:#?}");
    let deltas: Vec<&Value> = turn
        .iter()
        .filter(|l| l["event"]["delta"]["type"] == "text_delta")
        .collect();
    assert!(deltas.len() >= 2, "{who}: the text comes in pieces");
    for d in &deltas {
        let mut keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "api_message_id",
                "event",
                "parent_tool_use_id",
                "session_id",
                "type",
                "uuid"
            ],
            "{who}: {d}"
        );
        assert_eq!(d["parent_tool_use_id"], Value::Null);
    }
    let joined: String = deltas
        .iter()
        .map(|d| d["event"]["delta"]["text"].as_str().unwrap())
        .collect();
    let assistant = turn.iter().find(|l| l["type"] == "assistant").unwrap();
    assert_eq!(
        assistant["message"]["content"][0]["text"],
        joined.as_str(),
        "{who}"
    );
    assert_eq!(
        deltas[0]["api_message_id"], assistant["message"]["id"],
        "{who}"
    );
    assert_eq!(turn.last().unwrap()["result"], joined.as_str(), "{who}");
}

#[tokio::test]
async fn the_fake_cli_streams_a_turn_as_the_real_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let fake = one_turn(crate::helpers::fake_claude(), &[], dir.path()).await;
    check_text_turn("fake", &fake);

    let Some(cli) = crate::real_claude::real_cli() else {
        return;
    };
    let api = crate::stand_in_api::StandInApi::start().await;
    api.set_reply("Hello there, this reply is streamed a few words at a time.");
    let env = [
        ("ANTHROPIC_BASE_URL", api.base_url()),
        ("ANTHROPIC_API_KEY", "test-key".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        ("DISABLE_TELEMETRY", "1".to_string()),
    ];
    let real = one_turn(&cli, &env, dir.path()).await;
    check_text_turn("real", &real);
}
