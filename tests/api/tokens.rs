//! What a token is and what revoking it ends: only tokens tether recorded count (one signed
//! with the secret but never issued is refused everywhere), their time claims, `tether
//! secret rotate`, the connections a revocation closes (from the API and from the CLI), and
//! the request rate counted per token id, not per header spelling.

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::auth::Role;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{self, client::IntoClientRequest, Message},
};

use crate::helpers::{
    error_code, spawn_app, spawn_app_with, wait_for, write_config, SseReader, TestApp,
};

/// The secret of the test settings (`helpers::test_settings`).
const SECRET: &str = "test-secret-test-secret-test-secret";

/// How long a revoked token's connection may take to end in these tests (the server ends
/// it within a second; the margin is for a loaded machine).
const END_DEADLINE: Duration = Duration::from_secs(3);

/// A token with `claims`, signed with the test secret as tether signs its own.
fn forge(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A recorded token for "me" and its id.
async fn recorded(app: &TestApp) -> (String, String) {
    let issued = app
        .state
        .auth
        .issue_recorded(app.state.store.pool(), "me", Role::User, Some("t"), true)
        .await
        .unwrap();
    (issued.token, issued.claims.jti)
}

/// Connects to a terminal's WebSocket with `token`.
async fn attach(
    app: &TestApp,
    terminal: &str,
    token: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let url = format!(
        "{}/api/terminals/{terminal}/ws",
        app.base.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    connect_async(req).await.map(|(ws, _)| ws)
}

async fn completion(app: &TestApp, token: &str, text: &str, stream: bool) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({
            "model": "claude",
            "messages": [{"role": "user", "content": text}],
            "project_path": app.project,
            "stream": stream,
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_token_signed_with_the_secret_but_never_issued_is_refused() {
    let app = spawn_app().await;
    let terminal = crate::terminals::open_shell(&app).await;
    let (_, real_id) = recorded(&app).await;
    let t = now();
    let never_issued = forge(json!({
        "sub": "me", "role": "user", "iat": t, "exp": t + 600, "jti": uuid::Uuid::new_v4(),
    }));
    // A recorded id does not make a forged token good: its row says user, not admin.
    let promoted = forge(json!({
        "sub": "admin", "role": "admin", "iat": t, "exp": t + 600, "jti": real_id,
    }));
    for (what, token) in [("never issued", &never_issued), ("promoted", &promoted)] {
        let res = app.get_as(token, "/api/sessions").await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{what}: a normal route"
        );
        match attach(&app, &terminal, token).await {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status().as_u16(), 401, "{what}: the WebSocket")
            }
            Err(other) => panic!("{what}: expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{what}: the WebSocket was opened"),
        }
        let res = completion(&app, token, "hi", false).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}: /v1");
    }
    // The recorded ones still pass everywhere.
    assert_eq!(app.get("/api/sessions").await.status(), StatusCode::OK);
    attach(&app, &terminal, &app.token)
        .await
        .expect("a recorded token attaches");
    let res = completion(&app, &app.token, "hi", false).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn time_claims_may_be_off_by_a_few_seconds_only() {
    let app = spawn_app().await;
    let (_, id) = recorded(&app).await;
    let t = now();
    let with = |iat: i64, exp: i64, nbf: Option<i64>| {
        let mut claims = json!({"sub": "me", "role": "user", "iat": iat, "exp": exp, "jti": id});
        if let Some(nbf) = nbf {
            claims["nbf"] = nbf.into();
        }
        forge(claims)
    };
    let status = |token: String| {
        let request = app.client.get(app.url("/api/sessions")).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    // The recorded id with good times passes: what is refused below is refused for its times.
    assert_eq!(status(with(t, t + 600, None)).await, StatusCode::OK);
    for (what, token) in [
        ("expired 20 s ago", with(t - 600, t - 20, None)),
        ("nbf in a minute", with(t, t + 600, Some(t + 60))),
        ("iat in a minute", with(t + 60, t + 600, None)),
        ("iat in a day", with(t + 86_400, t + 90_000, None)),
    ] {
        assert_eq!(status(token).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    // A second or two off is a clock's drift, and passes.
    assert_eq!(
        status(with(t + 2, t + 600, Some(t + 2))).await,
        StatusCode::OK
    );
}

/// `tether ARGS… --config FILE` for the app's settings, the secret in the environment only
/// when `secret` is given (else the generated one in the data folder is used). Awaited, so
/// that the app, on this test's runtime, can answer meanwhile.
async fn tether(config: &Path, secret: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TETHER__AUTH__SECRET")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    if let Some(secret) = secret {
        cmd.env("TETHER__AUTH__SECRET", secret);
    }
    cmd.output().await.unwrap()
}

/// Waits until `token` answers 401 on a normal route.
async fn until_refused(app: &TestApp, token: &str, what: &str) {
    wait_for(what, || async {
        (app.get_as(token, "/api/sessions").await.status() == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn rotating_the_secret_refuses_every_earlier_token_running_or_not() {
    // The generated secret (data/auth.secret), as a default install has it.
    let app = spawn_app_with(|s| s.auth.secret = String::new().into()).await;
    let config = write_config(&app.settings, app.dir.path());
    let secret_file = app.settings.data_dir().join("auth.secret");
    let before = std::fs::read(&secret_file).unwrap();
    assert_eq!(app.get("/api/sessions").await.status(), StatusCode::OK);

    let out = tether(&config, None, &["secret", "rotate"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pair each phone again"), "{stdout}");
    assert_ne!(std::fs::read(&secret_file).unwrap(), before, "a new secret");
    // The running server refuses the earlier tokens, the admin's too.
    until_refused(&app, &app.token, "the user token refused").await;
    until_refused(&app, &app.admin_token, "the admin token refused").await;
    // Every one is listed revoked.
    let out = tether(&config, None, &["tokens", "--json"]).await;
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.len() >= 3, "{listed:?}");
    assert!(
        listed.iter().all(|t| t["revoked_at"].is_i64()),
        "{listed:?}"
    );
    // A token of the new secret works on the running server at once.
    let out = tether(&config, None, &["token"]).await;
    let fresh = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        app.get_as(&fresh, "/api/sessions").await.status(),
        StatusCode::OK
    );

    // With no server running, the next start refuses what came before the rotation.
    let app = app.restart().await;
    assert_eq!(
        app.get_as(&fresh, "/api/sessions").await.status(),
        StatusCode::OK
    );
    let (settings, dir) = app.stop().await;
    let out = tether(&config, None, &["secret", "rotate"]).await;
    assert!(out.status.success());
    let app = TestApp::start(settings, dir).await;
    assert_eq!(
        app.get_as(&fresh, "/api/sessions").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get("/api/sessions").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn rotating_a_configured_secret_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let config = write_config(&app.settings, app.dir.path());
    let out = tether(&config, Some(SECRET), &["secret", "rotate"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.secret is set in the configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    assert!(!stderr.contains(SECRET), "the secret is not echoed");
    assert!(!app.settings.data_dir().join("auth.secret").exists());
    let out = tether(&config, Some(SECRET), &["tokens", "--json"]).await;
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.iter().all(|t| t["revoked_at"].is_null()));
    assert_eq!(app.get("/api/sessions").await.status(), StatusCode::OK);
}

/// The long-lived connections one token opened: a session's event stream, a streamed
/// completion of a turn still running, and a terminal WebSocket.
struct Opened {
    events: SseReader,
    completion: SseReader,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

async fn open_all(app: &TestApp, token: &str) -> Opened {
    let session = app.new_session("hello").await;
    let res = app
        .get_as(token, &format!("/api/sessions/{session}/events"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut events = SseReader::new(res);
    events.next().await.expect("the backlog's first event");
    let res = completion(app, token, "long [slow:60000]", true).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut completion = SseReader::new(res);
    completion.next().await.expect("the first chunk");
    let terminal = crate::terminals::open_shell(app).await;
    let mut ws = attach(app, &terminal, token).await.expect("attached");
    let hello = ws.next().await.unwrap().unwrap();
    assert!(matches!(hello, Message::Text(_)), "{hello:?}");
    Opened {
        events,
        completion,
        ws,
    }
}

/// Asserts that each connection ends within [`END_DEADLINE`] of `since`; prints how long
/// each took.
async fn assert_all_end(mut opened: Opened, since: Instant) {
    let ended = tokio::time::timeout(END_DEADLINE, async {
        while opened.events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream goes on");
    println!("event stream ended after {:?}", since.elapsed());
    let ended = tokio::time::timeout(END_DEADLINE, async {
        while opened.completion.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the /v1 stream goes on");
    println!("/v1 stream ended after {:?}", since.elapsed());
    let close = tokio::time::timeout(END_DEADLINE, async {
        loop {
            match opened.ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the WebSocket goes on");
    println!("WebSocket closed after {:?}", since.elapsed());
    assert_eq!(close, Some(1008), "closed as a policy violation");
}

#[tokio::test]
async fn revoking_a_token_ends_its_streams_and_websockets() {
    let app = spawn_app().await;
    let (token, id) = recorded(&app).await;
    let opened = open_all(&app, &token).await;
    // Another token's connections are not touched.
    let mine = app.new_session("mine").await;
    let mut others = SseReader::new(app.get(&format!("/api/sessions/{mine}/events")).await);
    others.next().await.expect("its first event");

    let revoked_at = Instant::now();
    let res = app.delete(&format!("/api/tokens/{id}")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_all_end(opened, revoked_at).await;
    assert_eq!(
        app.get_as(&token, "/api/sessions").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The other token's stream still carries what comes next.
    let sent = app.chat("more", Some(&mine)).await["messageId"].clone();
    loop {
        let ev = others.next().await.expect("the other stream stays open");
        if ev.event.as_deref() == Some("tether.turn_completed") && ev.json()["messageId"] == sent {
            break;
        }
    }
}

#[tokio::test]
async fn a_revocation_by_the_cli_ends_them_too() {
    let app = spawn_app().await;
    let (token, id) = recorded(&app).await;
    let opened = open_all(&app, &token).await;
    let config = write_config(&app.settings, app.dir.path());
    let out = tether(&config, Some(SECRET), &["tokens", "revoke", &id]).await;
    let revoked_at = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Through the running server: refused as soon as the command returns.
    assert_eq!(
        app.get_as(&token, "/api/sessions").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_all_end(opened, revoked_at).await;
}

#[tokio::test]
async fn a_revocation_written_to_the_store_by_another_process_ends_them_too() {
    let app = spawn_app().await;
    let (token, id) = recorded(&app).await;
    let opened = open_all(&app, &token).await;
    // What `tether tokens revoke` does with no server to call, or any other process: the
    // row only; this server learns of it by looking at the store.
    tether::auth::revoke_recorded(&app.state.store, &id, tether::store::now_ms())
        .await
        .unwrap();
    let revoked_at = Instant::now();
    assert_all_end(opened, revoked_at).await;
    assert_eq!(
        app.get_as(&token, "/api/sessions").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_request_rate_counts_the_token_not_the_headers_spelling() {
    let app = spawn_app_with(|s| s.server.requests_per_minute = 5).await;
    let send = |authorization: Option<String>, path: &'static str| {
        let mut request = app.client.get(app.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move { request.send().await.unwrap().status() }
    };
    // One token, spelled five ways: one budget.
    let token = &app.token;
    for spelling in [
        format!("Bearer {token}"),
        format!("Bearer   {token}"),
        format!("Bearer {token}   "),
        format!("Bearer \t {token}"),
        format!("Bearer {token}"),
    ] {
        assert_eq!(send(Some(spelling), "/api/sessions").await, StatusCode::OK);
    }
    let respaced = format!("Bearer      {token}");
    assert_eq!(
        send(Some(respaced), "/api/sessions").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a re-spaced header is the same token"
    );
    // Junk headers on a public route count against the address, as no header does.
    for i in 0..5 {
        let junk = Some(format!("Bearer junk-{i}"));
        assert_eq!(send(junk, "/health").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        send(Some("Bearer junk-5".into()), "/health").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new junk header gets no fresh budget"
    );
    assert_eq!(
        send(None, "/health").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the address's budget is spent"
    );
    // Another valid token has its own.
    assert_eq!(
        app.get_as(&app.admin_token, "/api/sessions").await.status(),
        StatusCode::OK
    );
}
