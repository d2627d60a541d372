//! Pairing and tokens: a code traded once for a token of the phone's own, used, expired and
//! wrong codes, the lockout (per address, under a ceiling for everyone), the QR code printed by `tether pair` decoding to the printed
//! link, and revocation (by the API and by `tether tokens revoke`) taking effect at once and
//! silencing the phone's pushes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::pairing;

use crate::{
    helpers::{
        error_code, spawn_app_with, start_server, test_settings, tether_command, wait_for, TestApp,
    },
    push::T1,
};

async fn code(app: &TestApp, ttl: Duration) -> String {
    pairing::create(&app.state.store, "me", Some("Ana's iPhone"), ttl)
        .await
        .unwrap()
        .0
}

async fn pair(app: &TestApp, code: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/pair"))
        .json(&json!({"code": code, "deviceName": "iPhone 17"}))
        .send()
        .await
        .unwrap()
}

async fn get_with(app: &TestApp, token: &str, path: &str) -> StatusCode {
    app.get_as(token, path).await.status()
}

#[tokio::test]
async fn a_code_is_traded_once_for_a_token_that_works_until_revoked() {
    let app = spawn_app_with(|_| {}).await;
    let code = code(&app, Duration::from_secs(600)).await;
    // Typed by hand: case and dashes do not matter.
    let res = pair(&app, &code.replace('-', "").to_lowercase()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let paired: Value = res.json().await.unwrap();
    let token = paired["token"].as_str().unwrap().to_string();
    let id = paired["tokenId"].as_str().unwrap().to_string();
    assert_eq!(paired["owner"], "me");
    assert_eq!(
        get_with(&app, &token, "/api/sessions").await,
        StatusCode::OK
    );
    // Once only.
    let res = pair(&app, &code).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    // Listed for the admin, with the phone's name; not for a user.
    let listed: Value = app
        .get_as(&app.admin_token, "/api/tokens")
        .await
        .json()
        .await
        .unwrap();
    let row = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(row["name"], "iPhone 17");
    assert_eq!(row["paired"], true);
    assert_eq!(row["role"], "user");
    // Its use is recorded off the request's path, soon after.
    wait_for("the token's use to be recorded", || async {
        let t = tether::store::tokens::get(app.state.store.pool(), &id)
            .await
            .unwrap()?;
        t.last_used_at
    })
    .await;
    assert_eq!(
        get_with(&app, &token, "/api/tokens").await,
        StatusCode::FORBIDDEN
    );

    // The phone registers for pushes with its token; revoking the token silences it.
    let res = app
        .client
        .post(app.url("/api/devices"))
        .bearer_auth(&token)
        .json(&json!({"token": T1, "environment": "sandbox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let other = app.stranger_token();
    let res = app
        .client
        .delete(app.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "not someone else's to revoke"
    );
    // The owner may revoke its own (here, with the token itself).
    let res = app
        .client
        .delete(app.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get_with(&app, &token, "/api/sessions").await,
        StatusCode::UNAUTHORIZED
    );
    let devices = app.get_json("/api/devices").await;
    assert_eq!(devices["devices"][0]["active"], false, "{devices}");

    // A restart remembers the revocation.
    let app = app.restart().await;
    assert_eq!(
        get_with(&app, &token, "/api/sessions").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn expired_and_wrong_codes_are_refused_and_too_many_lock_pairing_out() {
    let app = spawn_app_with(|s| s.auth.pairing_attempts_per_minute = 3).await;
    let expired = code(&app, Duration::ZERO).await;
    let res = pair(&app, &expired).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let res = pair(&app, "AAAA-BBBB-CC").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Three failures this minute: even a good code waits.
    let good = code(&app, Duration::from_secs(600)).await;
    let res = pair(&app, &good).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        error_code(res).await.1,
        "too_many_pairing_attempts".to_string()
    );
    // Bad bodies are 422 and count nothing.
    let res = app
        .client
        .post(app.url("/api/pair"))
        .json(&json!({"code": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// A client whose connections come from `local`: on Linux every address of 127.0.0.0/8 is
/// this machine, so tests can be several addresses at once.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn pair_from(app: &TestApp, client: &reqwest::Client, code: &str) -> StatusCode {
    client
        .post(app.url("/api/pair"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn wrong_codes_from_one_address_do_not_keep_a_phone_on_another_from_pairing() {
    let app = spawn_app_with(|_| {}).await; // 5 a minute per address, 100 in all
    let limit = app.settings.auth.pairing_attempts_per_minute as usize;
    let (guesser, phone) = (client_from("127.0.0.2"), client_from("127.0.0.1"));
    let mut guesses = Vec::new();
    for _ in 0..15 {
        guesses.push(pair_from(&app, &guesser, "AAAA-BBBB-CC").await);
    }
    // A wrong code from the phone's address is heard (401, not 429), and its good one pairs.
    assert_eq!(
        pair_from(&app, &phone, "CCCC-DDDD-EE").await,
        StatusCode::UNAUTHORIZED
    );
    let good = code(&app, Duration::from_secs(600)).await;
    assert_eq!(pair_from(&app, &phone, &good).await, StatusCode::OK);
    for _ in 0..15 {
        guesses.push(pair_from(&app, &guesser, "AAAA-BBBB-CC").await);
    }
    // The guesser got `limit` answers, then only 429s.
    assert!(
        guesses[..limit]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{guesses:?}"
    );
    assert!(
        guesses[limit..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{guesses:?}"
    );
    let good = code(&app, Duration::from_secs(600)).await;
    assert_eq!(
        pair_from(&app, &guesser, &good).await,
        StatusCode::TOO_MANY_REQUESTS,
        "even a good code waits there"
    );
    assert_eq!(pair_from(&app, &phone, &good).await, StatusCode::OK);
}

#[tokio::test]
async fn the_ceiling_for_everyone_locks_out_only_addresses_that_have_failed() {
    let app = spawn_app_with(|s| {
        s.auth.pairing_attempts_per_minute = 3;
        s.auth.pairing_attempts_per_minute_total = 4;
    })
    .await;
    let (two, three, four) = (
        client_from("127.0.0.2"),
        client_from("127.0.0.3"),
        client_from("127.0.0.4"),
    );
    for client in [&two, &two, &three, &three] {
        assert_eq!(
            pair_from(&app, client, "AAAA-BBBB-CC").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // Four in all: an address that has failed waits, though it is below its own limit.
    assert_eq!(
        pair_from(&app, &two, "AAAA-BBBB-CC").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // One that has not is heard once, then waits too.
    assert_eq!(
        pair_from(&app, &four, "AAAA-BBBB-CC").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        pair_from(&app, &four, "AAAA-BBBB-CC").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A phone that has not failed pairs.
    let good = code(&app, Duration::from_secs(600)).await;
    assert_eq!(
        pair_from(&app, &client_from("127.0.0.1"), &good).await,
        StatusCode::OK
    );
}

/// The text a QR code drawn by `qrcode`'s Dense1x2 renderer (two module rows a character,
/// ink for dark modules), read back with a QR decoder.
fn decode_qr(text: &str) -> String {
    const SCALE: usize = 4;
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let width = lines.iter().map(Vec::len).max().unwrap();
    let height = lines.len() * 2;
    let dark = |x: usize, y: usize| -> bool {
        let c = lines[y / 2].get(x).copied().unwrap_or(' ');
        match c {
            '█' => true,
            '▀' => y.is_multiple_of(2),
            '▄' => !y.is_multiple_of(2),
            _ => false,
        }
    };
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(width * SCALE, height * SCALE, |x, y| {
            if dark(x / SCALE, y / SCALE) {
                0
            } else {
                255
            }
        });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in:\n{text}");
    grids[0].decode().expect("QR decodes").1
}

#[tokio::test]
async fn tether_pair_prints_a_qr_code_of_the_link_and_its_code_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let server = start_server(&settings, dir.path());
    let out = tether_command(server.config(), &["pair", "--name", "desk phone"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let qr: String = text
        .lines()
        .take_while(|l| !l.starts_with("Scan"))
        .collect::<Vec<_>>()
        .join("\n");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let link = field("link:");
    assert_eq!(decode_qr(&qr), link);
    let code = field("code:");
    assert_eq!(link, pairing::link(&server.base, &code, None));

    let res = reqwest::Client::new()
        .post(format!("{}/api/pair", server.base))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let paired: Value = res.json().await.unwrap();
    let token = paired["token"].as_str().unwrap();
    let id = paired["tokenId"].as_str().unwrap();
    let sessions = format!("{}/api/sessions", server.base);
    let status = |token: String| {
        let url = sessions.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(token.to_string()).await, StatusCode::OK);

    // `tether tokens` lists it with its name; `tether tokens revoke` stops it at once.
    let listed = tether_command(server.config(), &["tokens"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(id) && l.contains("desk phone")),
        "{listed}"
    );
    let revoked = tether_command(server.config(), &["tokens", "revoke", id])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(status(token.to_string()).await, StatusCode::UNAUTHORIZED);
    server.kill();
}
