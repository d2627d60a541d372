//! The commands that talk to a running server: `tether sessions` finds it through the data
//! folder of its config file, or says that none runs there; `tether pair` asks it how it
//! serves (scheme, certificate) for the phone's link, or falls back to its own settings.

use std::{
    path::Path,
    process::{Command, Output},
    sync::Arc,
};

use serde_json::{json, Value};

use crate::helpers::{start_server, test_settings, write_config};

/// The secret [`crate::helpers::launch`] gives the server.
const SECRET: &str = crate::helpers::TEST_SECRET;

/// `tether sessions --config FILE [args]` with `secret` in the environment, as a user runs it.
fn sessions(config: &Path, secret: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["sessions", "--config"])
        .arg(config)
        .args(args)
        .env("TETHER__AUTH__SECRET", secret)
        .env_remove("RUST_LOG")
        // An error is one line, as the user reads it.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn tether_sessions_shows_the_running_servers_sessions() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    let project = dir.path().join("projects/demo");
    std::fs::create_dir_all(&project).unwrap();
    let server = start_server(&settings, dir.path());
    let done = server
        .chat(
            &server.token("me"),
            json!({"message": "hello", "projectPath": project, "wait": true}),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["sessionId"].as_str().unwrap();

    let out = sessions(server.config(), SECRET, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("SESSION "), "{stdout}");
    assert!(lines[0].contains("EXPIRES IN"), "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with(&id[..8])),
        "a row for {id}: {stdout}"
    );
    let totals = lines.last().unwrap();
    assert!(
        totals.starts_with("1 active session · ") && totals.contains(" processes · "),
        "{stdout}"
    );

    let out = sessions(server.config(), SECRET, &["--json"]);
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["sessions"][0]["id"], id, "{answer}");
    assert_eq!(answer["totals"]["activeSessions"], 1, "{answer}");
}

#[tokio::test]
async fn a_refusal_is_printed_with_the_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&test_settings(dir.path()), dir.path());
    let out = sessions(
        server.config(),
        "another-secret-another-secret-another",
        &[],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server answered 401 Unauthorized: "),
        "{stderr}"
    );
    assert!(stderr.contains("TETHER__AUTH__SECRET"), "{stderr}");
}

#[test]
fn with_no_server_it_names_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    // A folder a server used and left.
    let data = settings.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let config = write_config(&settings, dir.path());
    let out = sessions(&config, SECRET, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let folder = std::fs::canonicalize(&data).unwrap();
    assert!(
        stderr.contains(&format!(
            "no tether is running on the data folder {}; start it with `tether serve`",
            folder.display()
        )),
        "{stderr}"
    );
}

/// `tether pair --json --config FILE [env]`, as a user runs it beside the server.
fn pair(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = crate::helpers::tether_command(config, &["pair", "--json"]);
    cmd.env_remove("RUST_LOG").env_remove("RUST_LIB_BACKTRACE");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn tether_pair_asks_the_running_server_how_it_serves() {
    // TLS set only in the server's environment: the config file (and so `tether pair`'s
    // own settings) says nothing of it.
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let config = write_config(&settings, dir.path());
    let server = crate::helpers::launch(&config)
        .setting("SERVER__TLS", "self-signed")
        .start();
    let fingerprint = server.fingerprint.clone().expect("its fingerprint");
    assert!(server.base.starts_with("https://"), "{}", server.base);

    let out = pair(server.config(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["url"], server.base, "{shown}");
    assert_eq!(shown["fingerprint"], fingerprint, "{shown}");
    let link = shown["link"].as_str().unwrap();
    assert!(
        link.starts_with("tether://pair?url=https%3A%2F%2F"),
        "{link}"
    );
    assert!(link.contains("&fp="), "{link}");
    assert!(stderr.is_empty(), "{stderr}");
    // The code pairs with that server, over the pinned certificate.
    let paired = crate::helpers::pinned_client(&fingerprint)
        .post(format!("{}/api/pair", server.base))
        .json(&json!({"code": shown["code"], "deviceName": "phone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paired.status(), reqwest::StatusCode::OK);
    // The admin token it asked with was recorded and is revoked: it shows so, unusable.
    let tokens = crate::helpers::tether_command(server.config(), &["tokens", "--json"])
        .output()
        .unwrap();
    let tokens: Value = serde_json::from_slice(&tokens.stdout).unwrap();
    let asked: Vec<&Value> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "tether pair")
        .collect();
    assert_eq!(asked.len(), 1, "{tokens}");
    assert_eq!(asked[0]["role"], "admin", "{tokens}");
    assert!(!asked[0]["revoked_at"].is_null(), "{tokens}");
}

#[tokio::test]
async fn tether_pair_over_plain_http_and_with_no_server_from_its_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let server = start_server(&settings, dir.path());
    let out = pair(server.config(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["url"], server.base, "{shown}");
    assert_eq!(shown["fingerprint"], Value::Null, "{shown}");
    let config = server.config().to_path_buf();
    drop(server);

    // No server: the link comes from this command's settings, and it says so.
    let out = pair(&config, &[("TETHER__SERVER__BIND", "127.0.0.1:8787")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["url"], "http://127.0.0.1:8787", "{shown}");
    assert_eq!(shown["fingerprint"], Value::Null, "{shown}");
    assert!(
        stderr.contains("no tether is running on the data folder"),
        "{stderr}"
    );
    assert!(
        stderr.contains("built from this command's settings"),
        "{stderr}"
    );
}
