//! HTTPS with a certificate the app pins (`server.tls`): the self-signed one tether makes and
//! keeps, given files, clients that pin another certificate or speak plain HTTP, and clients
//! that connect and never shake hands.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::{
    config::{Settings, TlsMode},
    tls, Application,
};
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::helpers::{
    build_when_unlocked, launch, pinned_client, pinned_client_builder, sha256_fingerprint,
    spawn_app_with, test_settings, write_config, TestApp, DEADLINE,
};

fn self_signed(s: &mut Settings) {
    s.server.tls = TlsMode::SelfSigned;
}

fn addr_of(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("https://").parse().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The fingerprint of the first certificate of a PEM file, computed by the test.
fn pem_fingerprint(path: &Path) -> String {
    use rustls_023::pki_types::{pem::PemObject, CertificateDer};
    let cert = CertificateDer::from_pem_file(path).unwrap();
    sha256_fingerprint(&cert)
}

/// True once the server has closed `stream` (end of file, or reset).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await {
            Err(_) => return false, // nothing to read: still open
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn https_serves_a_client_that_pins_the_fingerprint() {
    let app = spawn_app_with(self_signed).await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let fingerprint = app.state.tls_fingerprint.clone().expect("a fingerprint");
    let cert = app.settings.data_dir().join(tls::CERT_FILE);
    assert_eq!(
        pem_fingerprint(&cert),
        fingerprint,
        "the data folder's certificate"
    );
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");

    let (status, body) = app.health_anonymous().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "tls": true}));
    let admin = app.health().await;
    assert_eq!(admin["tls"], true, "{admin}");
    assert_eq!(admin["tlsFingerprint"], fingerprint.as_str(), "{admin}");
    let user: serde_json::Value = app.get_json("/health").await;
    assert_eq!(user["tls"], true, "{user}");
    assert!(user.get("tlsFingerprint").is_none(), "admin only: {user}");

    let done = app.chat_wait("hello over TLS", None).await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["sessionId"].as_str().unwrap();
    let again = app.chat_wait("and again", Some(id)).await;
    assert_eq!(again["status"], "completed", "{again}");
}

#[tokio::test]
async fn plain_http_reports_no_tls() {
    let app = spawn_app_with(|_| {}).await;
    assert!(app.base.starts_with("http://"), "{}", app.base);
    assert_eq!(app.state.tls_fingerprint, None);
    let (_, body) = app.health_anonymous().await;
    assert_eq!(body, json!({"status": "ok", "tls": false}));
    let admin = app.health().await;
    assert_eq!(admin["tls"], false, "{admin}");
    assert_eq!(admin["tlsFingerprint"], serde_json::Value::Null, "{admin}");
}

#[tokio::test]
async fn another_certificate_or_plain_http_gets_no_answer() {
    let app = spawn_app_with(self_signed).await;
    let mut other = app.state.tls_fingerprint.clone().unwrap();
    // The same fingerprint but its last hex digit.
    let last = if other.ends_with('0') { "1" } else { "0" };
    other.replace_range(other.len() - 1.., last);
    let refused = pinned_client(&other)
        .get(app.url("/health"))
        .send()
        .await
        .expect_err("a certificate it did not pin");
    assert!(refused.is_connect(), "a handshake error: {refused:?}");

    let plain = app.base.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "plain HTTP got an answer: {:?}",
        answer.map(|r| r.status())
    );

    assert_eq!(app.health().await["status"], "ok", "others are served");
}

#[tokio::test]
async fn the_self_signed_certificate_outlives_a_restart_its_key_private() {
    let app = spawn_app_with(self_signed).await;
    let fingerprint = app.state.tls_fingerprint.clone().unwrap();
    let data = app.settings.data_dir();
    assert_eq!(mode(&data.join(tls::KEY_FILE)), 0o600);
    let first = app.chat_wait("before", None).await;

    let app = app.restart().await;
    assert_eq!(
        app.state.tls_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    assert_eq!(pem_fingerprint(&data.join(tls::CERT_FILE)), fingerprint);
    // A client that pinned it before the restart goes on.
    let id = first["sessionId"].as_str().unwrap();
    let after = app.chat_wait("after", Some(id)).await;
    assert_eq!(after["status"], "completed", "{after}");

    // A key others can read: tether refuses to start, saying how to fix it.
    let (settings, _dir) = app.stop().await;
    std::fs::set_permissions(
        data.join(tls::KEY_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = build_when_unlocked(&settings, None)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("chmod 600"), "{err:#}");
}

#[tokio::test]
async fn given_certificate_and_key_files_are_served() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tether.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let expected = sha256_fingerprint(cert.der());

    let mut settings = test_settings(dir.path());
    settings.server.tls = TlsMode::Files {
        cert: cert_path.clone(),
        key: key_path.clone(),
    };
    let app = TestApp::start(settings.clone(), dir.clone()).await;
    assert_eq!(
        app.state.tls_fingerprint.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(app.health().await["status"], "ok");
    let data = app.settings.data_dir();
    assert!(!data.join(tls::CERT_FILE).exists(), "nothing made");
    app.stop().await;

    // Another certificate's key: refused at start, not at every handshake.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key_path, other.serialize_pem()).unwrap();
    let err = Application::build(settings).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("does not match the certificate"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_client_that_never_shakes_hands_is_closed_and_holds_no_one_up() {
    let app = spawn_app_with(|s| {
        self_signed(s);
        s.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut silent = TcpStream::connect(addr_of(&app)).await.unwrap();
    let started = Instant::now();
    // A fresh connection (none pooled from before) is served meanwhile.
    let fresh = pinned_client_builder(app.state.tls_fingerprint.as_ref().unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = fresh.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        !is_closed(&mut silent).await,
        "served while the silent one still waits ({:?})",
        started.elapsed()
    );
    while !is_closed(&mut silent).await {
        assert!(
            started.elapsed() < DEADLINE,
            "the silent connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn at_the_connection_cap_connections_yet_to_shake_hands_make_room() {
    const CAP: usize = 16;
    let app = spawn_app_with(|s| {
        self_signed(s);
        s.server.max_connections = CAP;
        s.server.header_read_timeout = Duration::from_secs(300);
    })
    .await;
    // Twice the cap of connections that never send a byte, opened in order.
    let mut silent = Vec::new();
    for _ in 0..2 * CAP {
        silent.push(TcpStream::connect(addr_of(&app)).await.unwrap());
    }
    // The oldest were closed for the newer ones, as plain connections that sent nothing.
    let deadline = Instant::now() + DEADLINE;
    for s in silent[..CAP].iter_mut() {
        while !is_closed(s).await {
            assert!(
                Instant::now() < deadline,
                "an old silent connection stayed open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A newcomer over TLS gets in.
    let fresh = pinned_client_builder(app.state.tls_fingerprint.as_ref().unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = fresh.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_binary_prints_its_https_address_then_the_fingerprint_that_tether_sessions_pins() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let config = write_config(&settings, dir.path());
    // The kit reads the address line first, then the fingerprint line, or fails.
    let server = launch(&config)
        .setting("SERVER__TLS", "self-signed")
        .start();
    let base = &server.base;
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let fingerprint = server.fingerprint.as_deref().expect("then the fingerprint");
    let cert = settings.data_dir().join(tls::CERT_FILE);
    assert_eq!(fingerprint, pem_fingerprint(&cert));

    let health: Value = pinned_client(fingerprint)
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "tls": true}));

    // `tether sessions` on the same configuration trusts the certificate of its data folder.
    let out = server.command(&["sessions", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["totals"]["activeSessions"], 0, "{answer}");
}
