//! Security and isolation: one server per data folder (a second one refuses and touches
//! nothing), private files, secrets that are long enough and not readable by others, no
//! settings variables for the CLI, `/health` details only with a token, the admin's name
//! reserved, and device tokens that cannot be taken over.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::{
    auth::{Claims, Role},
    config::Settings,
    push::fake::FakeGateway,
    Application,
};

use crate::helpers::{
    build_when_unlocked, error_code, fake_claude, launch, pid_alive, serve, spawn_app,
    spawn_app_with, test_settings, wait_for, write_config, TestApp,
};

const T1: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// Waits for a child to exit; fails the test after the deadline.
async fn exit_of(child: &mut Child) -> std::process::ExitStatus {
    wait_for("the process to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
}

fn data_folder(settings: &Settings) -> String {
    std::fs::canonicalize(settings.data_dir())
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn a_second_server_on_the_same_folder_refuses_and_touches_nothing() {
    if !crate::kit::full_tier("the second server on a busy folder (a 12 s turn, a 15 s push)") {
        return;
    }
    let fake = Arc::new(FakeGateway::new());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path());
    settings.push.apns.topic = "com.example.tether".into();
    let app = TestApp::start_with(settings, dir, Some(fake.clone())).await;
    // A push half sent: APNs takes its time to answer.
    fake.then_after(T1, Duration::from_secs(15), || {
        FakeGateway::accepted("apns-1")
    });
    let res = app
        .post(
            "/api/devices",
            json!({"token": T1, "environment": "sandbox"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    // The ledger, newest first: the push about turn one is the last.
    let push_state = || async {
        let res = app
            .get_as(&app.admin_token, "/api/pushes")
            .await
            .json::<Value>()
            .await
            .unwrap();
        let pushes = res["pushes"].as_array().unwrap().clone();
        let first = pushes.last().cloned().unwrap_or_default();
        first["status"].as_str().unwrap_or_default().to_string()
    };
    wait_for("the push to be sending", || async {
        (push_state().await == "sending").then_some(())
    })
    .await;
    // A turn running in the first server's CLI process.
    let running = app.chat("two [slow:12000]", Some(&id)).await;
    let msg = running["messageId"].as_i64().unwrap();
    app.wait_terminal_or_running(&id, msg).await;
    let pid = app.invocations()[0]["pid"].as_u64().unwrap() as u32;

    let err = Application::build(app.settings.clone())
        .await
        .err()
        .expect("a second server on the same folder is refused")
        .to_string();
    let folder = data_folder(&app.settings);
    assert!(err.contains(&folder), "names the folder: {err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "names the holder: {err}"
    );

    // The real binary: exits at once, non-zero, saying so.
    let config = write_config(&app.settings, app.dir.path());
    let mut second = serve(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = exit_of(&mut second).await;
    assert!(!status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(&folder), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );

    // Nothing of the first server's was touched.
    assert!(pid_alive(pid), "the first server's CLI lives");
    assert_eq!(app.message(&id, msg).await["status"], "running");
    assert_eq!(
        push_state().await,
        "sending",
        "the half-sent push was left alone"
    );
    let done = app.wait_terminal(&id, msg).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(app.invocations().len(), 1, "one process all along");
    wait_for("the push to be delivered", || async {
        (push_state().await == "delivered").then_some(())
    })
    .await;
    // Turn two's push may still be on its way (it queued behind the slow one).
    wait_for("turn two's push to be sent", || async {
        (fake.sent_to(T1).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        fake.sent_to(T1).len(),
        2,
        "turn one's push once, then turn two's"
    );

    // Stopping releases the folder: the next start on it works.
    let app = app.restart().await;
    assert_eq!(
        app.chat_wait("three", Some(&id)).await["status"],
        "completed"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_server_that_cannot_bind_stops_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    let app = TestApp::start(settings, dir).await;
    let id = app.new_session("one").await;
    let (mut settings, _dir) = app.stop().await;

    // A CLI of a run that died, recorded on the session; and the port taken by someone else.
    let mut orphan = Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
    let mut orphan = orphan.arg("300").spawn().unwrap();
    let start_time = tether::agent::process::process_start_time(orphan.id()).unwrap();
    let store = tether::store::Store::open(&settings.database.path, 1)
        .await
        .unwrap();
    tether::store::sessions::set_process(store.pool(), &id, Some((orphan.id(), start_time)))
        .await
        .unwrap();
    store.close().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.server.bind = taken.local_addr().unwrap();

    let err = Application::build(settings)
        .await
        .err()
        .expect("the port is taken");
    assert!(format!("{err:#}").contains("binding"), "{err:#}");
    assert!(
        orphan.try_wait().unwrap().is_none(),
        "recovery did not run: the recorded process was left alone"
    );
    orphan.kill().unwrap();
    orphan.wait().unwrap();
}

#[tokio::test]
async fn a_short_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.auth.secret = "k".to_string().into();
    let err = Application::build(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("at least 32"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "refused before anything was written"
    );
}

/// Log lines written while the subscriber this returns is the thread's default.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn binding_beyond_loopback_warns_that_tokens_travel_in_clear_text() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    drop(Application::build(settings.clone()).await.unwrap());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("clear text"), "not on loopback: {text}");

    settings.server.bind = "0.0.0.0:0".parse().unwrap();
    drop(Application::build(settings.clone()).await.unwrap());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("clear text"), "{text}");

    // With TLS, nothing travels in clear text: no warning.
    logs.0.lock().unwrap().clear();
    settings.server.tls = tether::config::TlsMode::SelfSigned;
    drop(Application::build(settings.clone()).await.unwrap());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("clear text"), "with TLS: {text}");

    // Without an explicit secret it is still refused.
    settings.auth.secret = String::new().into();
    let err = Application::build(settings).await.err().expect("refused");
    assert!(err.to_string().contains("auth.secret"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_folder_database_and_secret_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let app = crate::helpers::spawn_app_with(|s| s.auth.secret = String::new().into()).await;
    app.chat_wait("hello", None).await;
    let data = app.settings.data_dir();
    assert_eq!(mode(&data), 0o700, "the data folder");
    for file in [
        "tether.db",
        "tether.db-wal",
        "tether.db-shm",
        "auth.secret",
        "tether.lock",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }

    // A secret file others can read is refused, with the command that fixes it.
    let (settings, _dir) = app.stop().await;
    let secret = data.join("auth.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = build_when_unlocked(&settings, None)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!("chmod 600 {}", secret.display())),
        "{err}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn cli_processes_inherit_none_of_tethers_settings_variables() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    std::fs::create_dir_all(dir.path().join("projects/demo")).unwrap();
    // The agent: a script that writes its environment down, then is the fake CLI.
    let dump = dir.path().join("cli-env.txt");
    let script = dir.path().join("claude-env.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {:?}\nexec {:?} \"$@\"\n",
            dump,
            fake_claude()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    settings.agent.command = script.to_string_lossy().into_owned();
    let config = write_config(&settings, dir.path());
    let server = launch(&config).setting("LOG__FORMAT", "text").start();
    let token = server.token("me");
    let project = std::fs::canonicalize(dir.path().join("projects/demo")).unwrap();
    let res = server
        .chat(
            &token,
            json!({"message": "hi", "projectPath": project, "wait": true}),
        )
        .await;
    drop(server);
    assert_eq!(res["status"], "completed", "{res}");

    let env = std::fs::read_to_string(&dump).unwrap();
    assert!(
        env.contains("CLAUDE_CONFIG_DIR="),
        "agent.env is passed: {env}"
    );
    let leaked: Vec<&str> = env
        .lines()
        .filter(|l| l.to_ascii_uppercase().starts_with("TETHER__"))
        .collect();
    assert!(leaked.is_empty(), "leaked to the CLI: {leaked:?}");
    assert!(!env.contains("test-secret"), "the secret reached the CLI");
}

#[tokio::test]
async fn health_without_a_token_says_only_whether_the_server_is_healthy() {
    let app = spawn_app().await;
    let (status, body) = app.health_anonymous().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ok", "tls": false}),
        "nothing more without a token"
    );

    for token in [&app.token, &app.admin_token] {
        let full: Value = app.get_as(token, "/health").await.json().await.unwrap();
        assert_eq!(full["status"], "ok");
        assert_eq!(full["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(full["agent"]["found"], true, "{full}");
        assert_eq!(full["database"]["ok"], true, "{full}");
    }
    let bad = app.get_as("e30.e30.sig", "/health").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);

    // Degraded (no agent) is still a status anyone may see, and nothing more.
    let app =
        crate::helpers::spawn_app_with(|s| s.agent.command = "/nonexistent/claude".into()).await;
    let (status, body) = app.health_anonymous().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "degraded", "tls": false}));
}

#[tokio::test]
async fn no_user_token_may_speak_for_the_admin() {
    let app = spawn_app().await;
    // The admin owns a session.
    let res = app
        .client
        .post(app.url("/api/chat"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"message": "admin's", "projectPath": app.project, "wait": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A user token whose owner is the admin's name (signed with the server's secret, as one
    // forged or issued by an older version would be) is refused.
    let now = chrono::Utc::now().timestamp() as u64;
    for sub in ["admin", "ADMIN"] {
        let claims = Claims {
            sub: sub.into(),
            role: Role::User,
            iat: now,
            exp: now + 600,
            jti: "forged".into(),
        };
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-test-secret-test-secret"),
        )
        .unwrap();
        let res = app.get_as(&forged, "/api/sessions").await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{sub}"
        );
    }

    // And `tether token --user admin` refuses to print one.
    let config = write_config(&app.settings, app.dir.path());
    for name in ["admin", "Admin"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["token", "--user", name, "--config"])
            .arg(&config)
            .env(
                "TETHER__AUTH__SECRET",
                "test-secret-test-secret-test-secret",
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        assert!(out.stdout.is_empty(), "no token printed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("reserved for the admin"), "{stderr}");
    }
}

#[tokio::test]
async fn a_device_token_another_owner_holds_is_not_taken_over() {
    let app = spawn_app().await;
    let register = |token: String| {
        let request = app
            .client
            .post(app.url("/api/devices"))
            .bearer_auth(token)
            .json(&json!({"token": T1, "environment": "sandbox", "topic": "com.example.a"}));
        async move { request.send().await.unwrap() }
    };
    let other = app.token_for("you", Role::User).await;
    assert_eq!(
        register(app.token.clone()).await.status(),
        StatusCode::CREATED
    );

    let res = register(other.clone()).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::CONFLICT, "device_token_taken".into())
    );
    let mine = app.get_json("/api/devices").await;
    assert_eq!(mine["devices"][0]["owner"], "me", "still mine");
    let theirs: Value = app
        .get_as(&other, "/api/devices")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["devices"], json!([]));

    // The owner re-registers it; the admin may move it.
    assert_eq!(register(app.token.clone()).await.status(), StatusCode::OK);
    let res = register(app.admin_token.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let moved: Value = res.json().await.unwrap();
    assert_eq!(moved["owner"], "admin");
}

#[tokio::test]
async fn each_token_and_each_address_has_its_request_rate() {
    let app = spawn_app_with(|s| s.server.requests_per_minute = 5).await;
    for _ in 0..5 {
        assert_eq!(app.get("/api/sessions").await.status(), StatusCode::OK);
    }
    let res = app.get("/api/sessions").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=12).contains(&wait),
        "a token's next request in {wait} s"
    );
    assert_eq!(error_code(res).await.1, "too_many_requests");
    // Another token is not slowed by it; requests without one count per address.
    let res = app.get_as(&app.admin_token, "/api/sessions").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut anonymous = Vec::new();
    for _ in 0..6 {
        anonymous.push(
            app.client
                .get(app.url("/health"))
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(&anonymous[..5], &[StatusCode::OK; 5]);
    assert_eq!(anonymous[5], StatusCode::TOO_MANY_REQUESTS);
}

/// Every route the router has (taken from the server's own route table) refuses whoever may
/// not call it: no token, a bad token and a revoked token (401), a user on admin routes
/// (403), and another owner on what is not theirs (404, changing nothing).
#[tokio::test]
async fn every_route_refuses_who_may_not_call_it() {
    use tether::http::routes::Access;
    const DEVICE: &str = "e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7";
    let app = spawn_app().await;
    let res = app
        .post(
            "/api/devices",
            json!({"token": DEVICE, "environment": "sandbox"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let first = app.chat_wait("hello", None).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    app.chat("[ask-write:a.txt]", Some(&sid)).await;
    let approval = wait_for("a pending approval", || async {
        let v = app
            .get_json(&format!("/api/sessions/{sid}/approvals?status=pending"))
            .await;
        v["approvals"][0]["id"].as_i64()
    })
    .await;
    let push = wait_for("a push in the ledger", || async {
        let v: Value = app
            .get_as(&app.admin_token, "/api/pushes")
            .await
            .json()
            .await
            .ok()?;
        v["pushes"][0]["id"].as_i64()
    })
    .await;
    let recorded = |name: &'static str| {
        let (store, auth) = (app.state.store.clone(), app.state.auth.clone());
        async move {
            auth.issue_recorded(
                store.pool(),
                "me",
                tether::auth::Role::User,
                Some(name),
                true,
            )
            .await
            .unwrap()
        }
    };
    let mine = recorded("phone").await.claims.jti;
    let revoked = recorded("old phone").await;
    let res = app
        .delete(&format!("/api/tokens/{}", revoked.claims.jti))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let other = app.stranger_token();

    let code = tether::pairing::create(&app.state.store, "me", None, Duration::from_secs(60))
        .await
        .unwrap()
        .0;
    let terminal = crate::terminals::open_shell(&app).await;
    let routes = tether::http::route_table();
    assert!(routes.len() >= 31, "{} routes", routes.len());
    for route in routes {
        let path = route
            .path
            .replace("{token}", DEVICE)
            .replace("/api/sessions/{id}", &format!("/api/sessions/{sid}"))
            .replace("/api/approvals/{id}", &format!("/api/approvals/{approval}"))
            .replace("/api/pushes/{id}", &format!("/api/pushes/{push}"))
            .replace("/api/tokens/{id}", &format!("/api/tokens/{mine}"))
            .replace("/api/terminals/{id}", &format!("/api/terminals/{terminal}"));
        assert!(!path.contains('{'), "no id for {}", route.path);
        let body = match route.path {
            "/api/chat" => json!({"message": "hi", "sessionId": sid}),
            "/api/approvals/{id}" => json!({"decision": "deny"}),
            "/api/sessions/{id}/permission-mode" => json!({"mode": "plan"}),
            "/api/devices" => json!({"token": DEVICE, "environment": "production"}),
            "/api/pair" => json!({"code": code}),
            "/api/terminals" => {
                json!({"program": "shell", "projectPath": app.project, "cols": 80, "rows": 24})
            }
            "/api/terminals/{id}/input" => json!({"text": "exit\r"}),
            "/api/terminals/{id}/resize" => json!({"cols": 20, "rows": 10}),
            _ => json!({}),
        };
        let call = |token: Option<&str>| {
            let mut req = app
                .client
                .request(route.method.clone(), app.url(&path))
                .timeout(Duration::from_secs(10));
            if route.method != reqwest::Method::GET && route.method != reqwest::Method::DELETE {
                req = req.json(&body);
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { req.send().await.unwrap().status() }
        };
        let what = format!("{} {}", route.method, route.path);
        if route.access == Access::Public {
            assert_ne!(call(None).await, StatusCode::UNAUTHORIZED, "{what} is open");
            continue;
        }
        assert_eq!(
            call(None).await,
            StatusCode::UNAUTHORIZED,
            "{what} without a token"
        );
        assert_eq!(
            call(Some("not-a-token")).await,
            StatusCode::UNAUTHORIZED,
            "{what} bad token"
        );
        assert_eq!(
            call(Some(&revoked.token)).await,
            StatusCode::UNAUTHORIZED,
            "{what} revoked token"
        );
        if route.access == Access::Admin {
            assert_eq!(
                call(Some(&app.token)).await,
                StatusCode::FORBIDDEN,
                "{what} as a user"
            );
        } else if route.path.contains('{') {
            assert_eq!(
                call(Some(&other)).await,
                StatusCode::NOT_FOUND,
                "{what} as another owner"
            );
        }
    }
    // Nothing of "me" was changed by the others.
    let session = app.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(session["state"], "active");
    assert_eq!(session["permissionMode"], Value::Null);
    let a = app.get_json(&format!("/api/approvals/{approval}")).await;
    assert_eq!(a["status"], "pending");
    let devices = app.get_json("/api/devices").await;
    assert_eq!(devices["devices"][0]["environment"], "sandbox");
    assert_eq!(devices["devices"][0]["active"], true);
    let t = app.get_json(&format!("/api/terminals/{terminal}")).await;
    assert_eq!(
        (t["state"].as_str(), t["cols"].as_i64()),
        (Some("running"), Some(80))
    );
}
