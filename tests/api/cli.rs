//! The commands that talk to a running server: `tether sessions` finds it through the data
//! folder of its config file, or says that none runs there.

use std::{
    path::Path,
    process::{Command, Output},
    sync::Arc,
};

use serde_json::{json, Value};

use crate::helpers::{test_settings, write_config, Server};

/// The secret [`crate::helpers::serve`] gives the server.
const SECRET: &str = "test-secret-test-secret-test-secret";

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
    let server = Server::start(&settings, dir.path());
    let done = server
        .post(
            &Server::token(&settings),
            json!({"message": "hello", "projectPath": project, "wait": true}),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["sessionId"].as_str().unwrap();

    let out = sessions(&server.config, SECRET, &[]);
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

    let out = sessions(&server.config, SECRET, &["--json"]);
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["sessions"][0]["id"], id, "{answer}");
    assert_eq!(answer["totals"]["activeSessions"], 1, "{answer}");
}

#[tokio::test]
async fn a_refusal_is_printed_with_the_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_settings(dir.path()), dir.path());
    let out = sessions(&server.config, "another-secret-another-secret-another", &[]);
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
