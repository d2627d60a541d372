//! Faults of the machine tether runs on: its data folder on a disk that fills up, a SIGTERM
//! while a turn's end cannot be stored, an agent binary that disappears, and a project folder
//! swapped for a symlink to outside `projects.roots`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, spawn_app_with, start_server, test_settings, wait_for, TestApp};

/// A tmpfs mounted for a test (as root), unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`) at `path`, made if needed. None, after
    /// saying why, where this cannot be done (not root); in CI (`CI` set, as root) that
    /// fails the test instead.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => {
                return Some(Tmpfs {
                    path: path.to_path_buf(),
                })
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs these tests as root: mounting a tmpfs at {} failed: {why}",
            path.display()
        );
        crate::kit::skipped(&format!(
            "a small disk needs `mount -t tmpfs` (run as root): {why}"
        ));
        None
    }

    /// Fills the disk with one file, written until no byte more fits. Returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // What is left is smaller than a block.
        while file.write_all(&block[..512]).is_ok() {}
        while file.write_all(&block[..1]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still in use (a test failed before its app stopped): detached now, freed after.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// The data folder of a test app in `dir`, on a small tmpfs.
fn small_data_disk(dir: &Path) -> Option<Tmpfs> {
    Tmpfs::mount(&dir.join("data"), "16m")
}

async fn assert_storage_unavailable(res: reqwest::Response) {
    let retry_after = res.headers().get("retry-after").cloned();
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable".to_string()
        )
    );
    let secs: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1);
}

#[tokio::test]
async fn a_full_disk_answers_503_and_health_is_degraded_until_space_returns() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let Some(disk) = small_data_disk(dir.path()) else {
        return;
    };
    let app = TestApp::start(test_settings(dir.path()), dir.clone()).await;
    let first = app.chat_wait("before the disk fills", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();

    let filler = disk.fill();
    let res = app
        .post(
            "/api/chat",
            json!({"message": "while full", "sessionId": id}),
        )
        .await;
    assert_storage_unavailable(res).await;
    let new = json!({"message": "a new session while full", "projectPath": app.project});
    assert_storage_unavailable(app.post("/api/chat", new).await).await;
    // Any route that writes, not only chat.
    let keep_alive = format!("/api/sessions/{id}/keep-alive");
    assert_storage_unavailable(app.post(&keep_alive, json!({})).await).await;
    let health = app.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["database"]["ok"], true, "{health}");
    assert_eq!(health["database"]["writable"], false, "{health}");
    assert!(
        health["database"]["error"]
            .as_str()
            .unwrap()
            .contains("full"),
        "{health}"
    );
    let (code, anonymous) = app.health_anonymous().await;
    assert_eq!(
        (code, &anonymous["status"]),
        (StatusCode::OK, &json!("degraded"))
    );
    // What was acknowledged before is all there; what was refused left nothing.
    let messages = app.messages(&id).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[1]["text"], first["reply"]["text"]);

    // Space returns: health says so at once, and chat works again, without a restart.
    std::fs::remove_file(filler).unwrap();
    let health = app.health().await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"]["writable"], true, "{health}");
    let again = app.chat_wait("after space returned", Some(&id)).await;
    assert_eq!(again["status"], "completed", "{again}");
    let new = app.chat_wait("a new session after", None).await;
    assert_eq!(new["status"], "completed", "{new}");
    app.stop().await;
    drop(disk);
}

/// A counter of `/metrics` (0 before it was first counted).
async fn counter(app: &TestApp, name: &str) -> u64 {
    let text = app
        .get_as(&app.admin_token, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_turn_that_ends_while_the_disk_is_full_keeps_its_reply_once_space_returns() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let Some(disk) = small_data_disk(dir.path()) else {
        return;
    };
    let app = TestApp::start(test_settings(dir.path()), dir.clone()).await;
    let id = app.new_session("one").await;
    let sent = app.chat("MARK-kept [slow:1000]", Some(&id)).await;
    let message_id = sent["messageId"].as_i64().unwrap();
    app.wait_terminal_or_running(&id, message_id).await;
    const FAILURES: &str = "tether_turn_end_write_failures_total";
    let before = counter(&app, FAILURES).await;
    let filler = disk.fill();
    // The reply cannot be stored: tried again and again (more often than the few tries
    // an error that is not the disk's gets), the message still running.
    wait_for("the end to be tried again", || async {
        (counter(&app, FAILURES).await >= before + 6).then_some(())
    })
    .await;
    assert_eq!(app.message(&id, message_id).await["status"], "running");
    std::fs::remove_file(filler).unwrap();
    let m = app.wait_terminal(&id, message_id).await;
    assert_eq!(m["status"], "completed", "{m}");
    let messages = app.messages(&id).await;
    let reply = messages.iter().find(|r| r["replyTo"] == message_id);
    assert!(
        reply.is_some_and(|r| r["text"].as_str().unwrap().contains("MARK-kept")),
        "{messages:?}"
    );
    app.stop().await;
    drop(disk);
}

/// The transcript the fake CLI keeps for a conversation (see `fake_claude`).
fn transcript(dir: &Path, cwd: &Path, session_id: &str) -> PathBuf {
    let mangled: String = cwd
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    dir.join("claude-config/projects")
        .join(mangled)
        .join(format!("{session_id}.jsonl"))
}

#[tokio::test]
async fn sigterm_while_a_turn_end_cannot_be_stored_stops_within_the_grace() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let Some(disk) = small_data_disk(dir.path()) else {
        return;
    };
    let settings = test_settings(dir.path());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let project = std::fs::canonicalize(project).unwrap();
    let mut server = start_server(&settings, dir.path());
    let token = server.token("me");
    let first = server
        .chat(
            &token,
            json!({"message": "one", "projectPath": project, "wait": true}),
        )
        .await;
    assert_eq!(first["status"], "completed", "{first}");
    let id = first["sessionId"].as_str().unwrap().to_string();
    let slow = server
        .chat(
            &token,
            json!({"message": "MARK-slow [slow:1500]", "sessionId": id}),
        )
        .await;
    let message_id = slow["messageId"].as_i64().unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/api/sessions/{id}/messages", server.base);
    wait_for("the turn to run", || async {
        let page: Value = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let running = page["messages"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == message_id && m["status"] == "running");
        running.then_some(())
    })
    .await;
    let filler = disk.fill();
    // The CLI answers (its reply is in its transcript), and tether cannot store the end.
    let transcript = transcript(dir.path(), &project, &id);
    wait_for("the CLI's reply", || async {
        let text = std::fs::read_to_string(&transcript).ok()?;
        let replied = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["type"] == "assistant" && e.to_string().contains("MARK-slow"));
        replied.then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // server.shutdown_grace (2 s here) and the drain margin (2 s), with room for a slow
    // machine; before, it went on retrying the end for as long as the disk was full.
    let limit = settings.server.shutdown_grace + Duration::from_secs(6);
    let exited = server.wait_exit(limit).await;
    assert!(
        exited.is_some(),
        "still running {:?} after SIGTERM",
        started.elapsed()
    );
    drop(server);

    // Space returns; the next start ends the message it could not, once: the CLI had
    // finished it, so it is completed with the reply its transcript holds.
    std::fs::remove_file(filler).unwrap();
    let app = TestApp::start(settings, dir.clone()).await;
    let m = app.message(&id, message_id).await;
    assert_eq!(m["status"], "completed", "{m}");
    let reply = app
        .messages(&id)
        .await
        .into_iter()
        .find(|r| r["replyTo"] == message_id)
        .expect("the reply, from the transcript");
    assert!(
        reply["text"].as_str().unwrap().contains("MARK-slow"),
        "{reply}"
    );
    let ends: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE session_id = ? \
         AND type IN ('tether.turn_completed', 'tether.turn_failed') \
         AND json_extract(data, '$.messageId') = ?",
    )
    .bind(&id)
    .bind(message_id)
    .fetch_one(app.state.store.pool())
    .await
    .unwrap();
    assert_eq!(ends, 1, "one end was stored for it, at the recovery");
    let next = app.chat_wait("after the restart", Some(&id)).await;
    assert_eq!(next["status"], "completed", "{next}");
    app.stop().await;
    drop(disk);
}

#[tokio::test]
async fn an_agent_binary_that_disappears_is_noticed_and_its_return_too() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("claude");
    std::fs::copy(crate::helpers::fake_claude(), &bin).unwrap();
    let command = bin.to_string_lossy().into_owned();
    let app = spawn_app_with(|s| s.agent.command = command).await;
    let first = app.chat_wait("hello", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();

    std::fs::remove_file(&bin).unwrap();
    let res = app
        .post(
            "/api/chat",
            json!({"message": "are you there", "sessionId": id}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable".to_string()
        )
    );
    let health = app.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["agent"]["found"], false, "{health}");
    assert!(health["agent"]["error"].as_str().is_some(), "{health}");
    assert_eq!(app.messages(&id).await.len(), 2, "nothing was accepted");

    std::fs::copy(crate::helpers::fake_claude(), &bin).unwrap();
    let health = app.health().await;
    assert_eq!(health["agent"]["found"], true, "{health}");
    let back = app.chat_wait("back again", Some(&id)).await;
    assert_eq!(back["status"], "completed", "{back}");
}

#[tokio::test]
async fn a_start_whose_command_is_gone_fails_its_message_and_is_noticed() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("claude");
    std::fs::copy(crate::helpers::fake_claude(), &bin).unwrap();
    let command = bin.to_string_lossy().into_owned();
    // One process slot, held by a long turn: the next session's message waits for it.
    let app = spawn_app_with(|s| {
        s.agent.command = command;
        s.sessions.max_processes = 1;
    })
    .await;
    let busy = app.chat("long [slow:1500]", None).await;
    let busy_session = busy["sessionId"].as_str().unwrap().to_string();
    app.wait_terminal_or_running(&busy_session, busy["messageId"].as_i64().unwrap())
        .await;
    let waiting = app.chat("waits for a slot", None).await;
    std::fs::remove_file(&bin).unwrap();
    let m = app
        .wait_terminal(
            waiting["sessionId"].as_str().unwrap(),
            waiting["messageId"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .contains("not found or not executable"),
        "{m}"
    );
    let health = app.health().await;
    assert_eq!(health["agent"]["found"], false, "{health}");
}

/// Swaps the folder `project` for a symlink to a folder outside the roots.
fn swap_for_symlink_outside(project: &Path, outside: &Path) {
    std::fs::create_dir_all(outside).unwrap();
    let moved = project.with_file_name("moved-away");
    std::fs::rename(project, &moved).unwrap();
    std::os::unix::fs::symlink(outside, project).unwrap();
}

#[tokio::test]
async fn a_folder_swapped_for_a_symlink_outside_the_roots_is_refused_at_the_next_start() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let outside = app.dir.path().join("outside");
    // The process stops (a restart); the folder is swapped while none runs.
    let app = app.restart().await;
    swap_for_symlink_outside(&app.project, &outside);
    let starts = app.invocations().len();
    let sent = app.chat("two", Some(&id)).await;
    let m = app
        .wait_terminal(&id, sent["messageId"].as_i64().unwrap())
        .await;
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error"].as_str().unwrap().contains("projects.roots"),
        "{m}"
    );
    assert_eq!(app.invocations().len(), starts, "no CLI was started");
}

#[tokio::test]
async fn a_terminal_in_a_folder_swapped_for_a_symlink_outside_the_roots_is_refused() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    let app = app.restart().await;
    swap_for_symlink_outside(&app.project, &app.dir.path().join("outside"));
    // Refused as a folder outside the roots is at create.
    let res = app
        .post(
            "/api/terminals",
            json!({"program": "claude", "sessionId": id, "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "forbidden".to_string())
    );
    let listed = app.get_json("/api/terminals").await;
    assert!(
        listed["terminals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] != "running"),
        "{listed}"
    );
}
