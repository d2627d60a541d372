//! The load run (10 sessions x 100 messages in parallel) and the kill run (tether SIGKILLed
//! at random moments under load and started again, 10 times). After each, the database is
//! audited: every accepted message ended in exactly one terminal state (with a reason when
//! it did not complete), every completed turn has one stored reply and its push row, no
//! message was answered twice, and each conversation kept its context. The kill run also
//! checks that no CLI process outlived a killed server once the next one started.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{sqlite::SqliteConnectOptions, Row, SqlitePool};

use crate::{
    helpers::{pid_alive, start_server, test_settings, wait_for, Server},
    push::{spawn_with_phone, T1},
};

/// What the audit found, for the test's own figures.
#[derive(Debug, Default)]
struct Audit {
    messages: usize,
    completed: usize,
    not_completed: usize,
}

async fn open_read_only(db: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    SqlitePool::connect_with(options).await.unwrap()
}

/// User messages not yet in a terminal state.
async fn pending(db: &SqlitePool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE role = 'user' AND status IN ('queued', 'running')",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Checks the invariants (see the module's doc) on the database at `db`; `accepted` are the
/// ids the server answered 202 or 200 for.
async fn audit(db: &Path, accepted: &HashSet<i64>) -> Audit {
    let pool = open_read_only(db).await;
    assert_eq!(pending(&pool).await, 0, "messages left queued or running");
    let rows = sqlx::query(
        "SELECT u.id, u.session_id, u.status, u.text, u.error, \
                (SELECT COUNT(*) FROM messages r WHERE r.reply_to = u.id) AS replies, \
                (SELECT r.text FROM messages r WHERE r.reply_to = u.id) AS reply, \
                (SELECT COUNT(*) FROM pushes p JOIN messages r ON p.message_id = r.id \
                  WHERE r.reply_to = u.id AND p.kind = 'turn_completed') AS pushes \
         FROM messages u WHERE u.role = 'user' ORDER BY u.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut report = Audit::default();
    let mut seen = HashSet::new();
    // Per session: completed texts in order, and the last completed reply.
    let mut completed: HashMap<String, Vec<String>> = HashMap::new();
    let mut last_reply: HashMap<String, (usize, String)> = HashMap::new();
    for r in &rows {
        let id: i64 = r.get("id");
        let session: String = r.get("session_id");
        let status: String = r.get("status");
        let text: String = r.get("text");
        let replies: i64 = r.get("replies");
        let pushes: i64 = r.get("pushes");
        seen.insert(id);
        report.messages += 1;
        assert!(replies <= 1, "message {id} was answered {replies} times");
        if status == "completed" {
            report.completed += 1;
            assert_eq!(replies, 1, "completed message {id} has no stored reply");
            assert_eq!(pushes, 1, "completed message {id} has {pushes} push rows");
            let list = completed.entry(session.clone()).or_default();
            list.push(text);
            last_reply.insert(session, (list.len(), r.get("reply")));
        } else {
            report.not_completed += 1;
            assert!(
                ["failed", "interrupted", "cancelled"].contains(&status.as_str()),
                "message {id} is {status}"
            );
            let error: Option<String> = r.get("error");
            assert!(
                error.is_some_and(|e| !e.is_empty()),
                "message {id} ended {status} without a reason"
            );
        }
    }
    let lost: Vec<_> = accepted.difference(&seen).collect();
    assert!(lost.is_empty(), "accepted messages missing: {lost:?}");
    // The fake CLI answers "echo: <text> | history: <every user line of the conversation>":
    // the last reply of a session must carry every completed message, in order.
    for (session, (count, reply)) in &last_reply {
        let texts = &completed[session][..*count];
        let history: Vec<&str> = reply
            .split_once(" | history: ")
            .map(|(_, h)| h.split(" / ").collect())
            .unwrap_or_default();
        let mut at = history.iter();
        for t in texts {
            assert!(
                at.any(|h| h == t),
                "session {session} lost {t:?} from its context: {reply}"
            );
        }
    }
    pool.close().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_ten_sessions_of_a_hundred_messages_lose_nothing() {
    if !crate::kit::full_tier("load run") {
        return;
    }
    const SESSIONS: usize = 10;
    const MESSAGES: usize = 100;
    const BURST: usize = 11;
    let (app, gateway) = spawn_with_phone(|s| {
        s.sessions.max_processes = SESSIONS + 2;
        s.sessions.warm_spares = 1;
    })
    .await;
    let app = Arc::new(app);
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let (app, accepted) = (app.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let first = app.chat_wait(&format!("s{s} m0"), None).await;
            assert_eq!(first["status"], "completed", "{first}");
            let id = first["sessionId"].as_str().unwrap().to_string();
            accepted
                .lock()
                .unwrap()
                .insert(first["messageId"].as_i64().unwrap());
            let mut n = 1;
            while n < MESSAGES {
                let mut burst = Vec::new();
                for _ in 0..BURST.min(MESSAGES - n) {
                    let m = app.chat(&format!("s{s} m{n}"), Some(&id)).await;
                    burst.push(m["messageId"].as_i64().unwrap());
                    n += 1;
                }
                accepted.lock().unwrap().extend(&burst);
                for m in burst {
                    let done = app.wait_terminal(&id, m).await;
                    assert_eq!(done["status"], "completed", "{done}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), SESSIONS * MESSAGES);
    let db = app.settings.database.path.clone();
    wait_for("every push handed to the gateway", || async {
        (gateway.sent().len() >= SESSIONS * MESSAGES).then_some(())
    })
    .await;
    let report = audit(&db, &accepted).await;
    assert_eq!(report.completed, SESSIONS * MESSAGES, "{report:?}");
    println!("load run: {report:?}");
}

/// Pids of every CLI process the fake logged so far.
fn cli_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("fake-claude.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// A turn waited for: it completed, and its message counts as accepted.
async fn completed(
    server: &Server,
    token: &str,
    accepted: &Mutex<HashSet<i64>>,
    body: Value,
) -> Value {
    let v = server.chat(token, body).await;
    assert_eq!(v["status"], "completed", "{v}");
    accepted
        .lock()
        .unwrap()
        .insert(v["messageId"].as_i64().unwrap());
    v
}

/// Sends messages to `session` until `stop`, recording each accepted id. Some turns are
/// slow so that kills land mid-turn; refusals (queue full, server gone) are waited out.
async fn keep_sending(
    base: Arc<Mutex<String>>,
    token: String,
    session: String,
    accepted: Arc<Mutex<HashSet<i64>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let slow = rand::thread_rng().gen_bool(0.2);
        let text = if slow {
            format!("k{n} [slow:300]")
        } else {
            format!("k{n}")
        };
        let url = format!("{}/api/chat", base.lock().unwrap());
        let sent = client
            .post(url)
            .bearer_auth(&token)
            .json(&json!({"message": text, "sessionId": session}))
            .send()
            .await;
        match sent {
            Ok(res) if res.status() == StatusCode::ACCEPTED => {
                let v: Value = res.json().await.unwrap_or_default();
                if let Some(id) = v["messageId"].as_i64() {
                    accepted.lock().unwrap().insert(id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // pacing
            }
            // A refusal or the server gone (killed): pacing until it takes messages again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_run_ten_sigkills_under_load_lose_nothing_and_leave_no_orphan() {
    if !crate::kit::full_tier("kill run") {
        return;
    }
    const SESSIONS: usize = 4;
    const KILLS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.sessions.warm_spares = 1;
    let project: PathBuf = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let client = reqwest::Client::new();

    let mut server = start_server(&settings, dir.path());
    let token = server.token("me");
    let res = client
        .post(format!("{}/api/devices", server.base))
        .bearer_auth(&token)
        .json(&json!({"token": T1, "environment": "sandbox", "name": "phone"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        let body = json!({"message": format!("start {s}"), "projectPath": project, "wait": true});
        let v = completed(&server, &token, &accepted, body).await;
        sessions.push(v["sessionId"].as_str().unwrap().to_string());
    }

    let base = Arc::new(Mutex::new(server.base.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = sessions
        .iter()
        .map(|s| {
            tokio::spawn(keep_sending(
                base.clone(),
                token.clone(),
                s.clone(),
                accepted.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    for kill in 0..KILLS {
        // Pacing, not waiting: the kill lands at a random moment of the load.
        let wait = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = cli_pids(dir.path());
        server = server.kill().start();
        *base.lock().unwrap() = server.base.clone();
        // Every CLI of the killed server is gone once the new one has started.
        for pid in before {
            wait_for(&format!("CLI {pid} of kill {kill} to be gone"), || async {
                (!pid_alive(pid)).then_some(())
            })
            .await;
        }
    }
    stop_tx.send_replace(true);
    for s in senders {
        s.await.unwrap();
    }

    // The last server answers what is left, then one more message per session shows the
    // conversation kept what was completed.
    let db_path = settings.database.path.clone();
    let db = open_read_only(&db_path).await;
    wait_for("the queue to drain", || async {
        (pending(&db).await == 0).then_some(())
    })
    .await;
    db.close().await;
    for s in &sessions {
        let body = json!({"message": "last", "sessionId": s, "wait": true});
        completed(&server, &token, &accepted, body).await;
    }
    server.kill();
    let accepted = accepted.lock().unwrap().clone();
    let report = audit(&db_path, &accepted).await;
    assert!(report.completed > SESSIONS * 2, "{report:?}");
    println!(
        "kill run: {KILLS} kills, {} accepted, {report:?}",
        accepted.len()
    );
}
