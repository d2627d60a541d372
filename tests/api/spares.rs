//! Warm spares: a process started ahead in the most recently used folder is what the next
//! new session there runs on; it is replaced after use, is the first to go when a slot is
//! needed, and one that dies is replaced after a growing pause.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{
    helpers::{argv, pid_alive, spawn_app_with, wait_for, wait_gone, TestApp},
    sessions::{read_sse, turn_ended},
};

/// The spares the admin sees, once there are `n`.
async fn spares(app: &TestApp, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} warm spare(s)"), || async {
        let list = app.spares().await;
        (list.len() == n).then_some(list)
    })
    .await
}

fn pid(spare: &Value) -> u32 {
    spare["pid"].as_u64().unwrap() as u32
}

/// The session id the CLI with `pid` was started for (`--session-id <id>`).
async fn started_for(app: &TestApp, pid: u32) -> String {
    let run = wait_for("the process to be logged", || async {
        app.invocations().into_iter().find(|r| r["pid"] == pid)
    })
    .await;
    let args = argv(&run);
    let at = args.iter().position(|a| a == "--session-id").unwrap();
    args[at + 1].clone()
}

#[tokio::test]
async fn the_next_new_session_in_a_folder_runs_on_the_spare_and_it_is_replaced() {
    let app = spawn_app_with(|s| s.sessions.warm_spares = 1).await;
    // No folder was used yet: no spare. The first session shows where to keep one.
    let first = app.new_session("A1").await;
    let spare = pid(&spares(&app, 1).await[0]);
    assert_ne!(spare, app.pid_of(&first));
    let active: Value = app
        .get_as(&app.admin_token, "/api/sessions/active")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active["totals"]["spares"], 1);
    assert_eq!(
        active["totals"]["processes"], 2,
        "the spare counts as a process"
    );
    let conversation = started_for(&app, spare).await;

    let started = app.invocations().len();
    let b = app.chat_wait("B1", None).await;
    let b_id = b["sessionId"].as_str().unwrap();
    assert_eq!(b["reply"]["text"], "echo: B1 | history: B1");
    assert_eq!(
        b_id, conversation,
        "the session took the spare's conversation"
    );
    assert_eq!(app.pid_of(b_id), spare, "its first turn ran on the spare");
    let events = read_sse(&app, b_id, None, turn_ended).await;
    let started_event = events
        .iter()
        .find(|e| e.1 == "tether.process_started")
        .cloned()
        .expect("process_started logged");
    assert_eq!(started_event.2["spare"], true, "{:?}", started_event.2);

    // A new spare takes its place, and the session goes on as any other.
    let next = pid(&spares(&app, 1).await[0]);
    assert_ne!(next, spare);
    // The replacement is listed once it is spawned, and logs its start a moment later.
    wait_for("the replacement to log its start", || async {
        (app.invocations().len() > started).then_some(())
    })
    .await;
    assert_eq!(
        app.invocations().len(),
        started + 1,
        "only the replacement started"
    );
    let b2 = app.chat_wait("B2", Some(b_id)).await;
    assert_eq!(b2["reply"]["text"], "echo: B2 | history: B1 / B2");
    assert_eq!(app.pid_of(b_id), spare);
}

#[tokio::test]
async fn a_spare_is_the_first_to_go_when_a_slot_is_needed() {
    let app = spawn_app_with(|s| {
        s.sessions.warm_spares = 1;
        s.sessions.max_processes = 2;
    })
    .await;
    let a = app.new_session("A1").await;
    let a_pid = app.pid_of(&a);
    let spare = pid(&spares(&app, 1).await[0]);

    // Another folder: the spare does not fit it, and both slots are taken.
    let other = app.project.parent().unwrap().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let res = app
        .post(
            "/api/chat",
            serde_json::json!({"message": "C1", "projectPath": other, "wait": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["reply"]["text"], "echo: C1 | history: C1");
    wait_gone(spare).await;
    assert!(pid_alive(a_pid), "the idle session's process stayed");
    assert_eq!(app.pid_of(&a), a_pid);
    let health = app.health().await;
    assert_eq!(health["liveProcesses"], 2, "A and C; no slot for a spare");
}

#[tokio::test]
async fn a_spare_that_dies_is_replaced_after_a_pause_that_grows() {
    if !crate::kit::full_tier("the spare that dies (pauses that grow, about 12 s)") {
        return;
    }
    let app = spawn_app_with(|s| s.sessions.warm_spares = 1).await;
    app.new_session("A1").await;
    let mut spare = pid(&spares(&app, 1).await[0]);
    let mut gaps = Vec::new();
    for _ in 0..3 {
        kill(Pid::from_raw(spare as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        let next = wait_for("a replacement spare", || async {
            let list = spares(&app, 1).await;
            let p = pid(&list[0]);
            (p != spare).then_some(p)
        })
        .await;
        gaps.push(killed.elapsed());
        spare = next;
    }
    // 1 s, then 2 s, then 4 s of pause (plus up to a second to notice the death).
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1900), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(3900), "{gaps:?}");
    // A spare that is used resets the pause: the next replacement comes at once.
    let b = app.new_session("B1").await;
    assert_eq!(app.pid_of(&b), spare);
    let replaced = Instant::now();
    let after = pid(&spares(&app, 1).await[0]);
    assert_ne!(after, spare);
    assert!(
        replaced.elapsed() < Duration::from_secs(3),
        "no pause after a use"
    );
}

#[tokio::test]
async fn spares_stop_with_tether_and_leave_no_conversation() {
    let app = spawn_app_with(|s| s.sessions.warm_spares = 2).await;
    app.new_session("A1").await;
    let list = spares(&app, 2).await;
    let mut ids = Vec::new();
    for s in &list {
        ids.push(started_for(&app, pid(s)).await);
    }
    let config = app.dir.path().join("claude-config");
    let (_settings, _dir) = app.stop().await;
    for s in &list {
        assert!(!pid_alive(pid(s)), "spare {} outlived tether", pid(s));
    }
    let transcripts: Vec<_> = walk(&config)
        .into_iter()
        .filter(|p| ids.iter().any(|id| p.contains(id.as_str())))
        .collect();
    assert!(transcripts.is_empty(), "spares wrote {transcripts:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}
