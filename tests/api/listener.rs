//! The listener under abuse and at shutdown: slowloris and slow-body floods (against the real
//! binary with a low open-file limit), the header and body read timeouts, the connection cap,
//! the request timeout, the per-owner caps, event streams and requests during shutdown, and
//! the second signal.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether::auth::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

use crate::helpers::{
    demo_project, env_launch, error_code, spawn_app_with, wait_for, TestApp, DEADLINE,
};

/// One flood at a time: two at once on a small machine measure each other.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a flood is kept on while others call the server: long enough for the server to
/// have taken (or refused) every connection of it.
const FLOOD_WINDOW: Duration = Duration::from_secs(3);

/// A client that makes a fresh connection for every request (no pooled connection made
/// before a flood can help it), each request bounded in time.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// What each connection of a [`Slowloris`] flood sends.
#[derive(Clone, Copy)]
enum Slow {
    /// A request header a byte at a time, one byte per `every`, never finishing it.
    Header,
    /// The whole header of `POST /api/pair` for a 1,000-byte body, and one byte of it; then
    /// it waits for the answer (or the close), and `every` later opens the connection again.
    Body,
}

/// `n` connections that each send a request slowly (see [`Slow`]). A connection the server
/// closes (or answers) is opened again, so the pressure stays.
struct Slowloris {
    /// The connections' tasks, aborted when the flood is dropped.
    _tasks: JoinSet<()>,
    /// Connections open now (as the client sees them).
    held: Arc<AtomicUsize>,
    /// Connections that have been opened at least once.
    started: Arc<AtomicUsize>,
    /// Connections the server closed (each was opened again).
    closed: Arc<AtomicUsize>,
}

impl Slowloris {
    fn start(addr: SocketAddr, n: usize, every: Duration, slow: Slow) -> Slowloris {
        let held = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let (held, started, closed) = (held.clone(), started.clone(), closed.clone());
            tasks.spawn(async move {
                let mut first = true;
                loop {
                    let Ok(mut stream) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(every).await;
                        continue;
                    };
                    held.fetch_add(1, Ordering::SeqCst);
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                    match slow {
                        Slow::Header => {
                            let mut ok = stream
                                .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                                .await
                                .is_ok();
                            while ok {
                                tokio::time::sleep(every).await;
                                ok = stream.write_all(b"a").await.is_ok();
                            }
                        }
                        Slow::Body => {
                            let head = b"POST /api/pair HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
                            if stream.write_all(head).await.is_ok() {
                                // Until answered or closed.
                                let _ = stream.read(&mut [0u8; 1024]).await;
                            }
                            tokio::time::sleep(every).await;
                        }
                    }
                    held.fetch_sub(1, Ordering::SeqCst);
                    closed.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Slowloris {
            _tasks: tasks,
            held,
            started,
            closed,
        }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    async fn all_started(&self, n: usize) {
        wait_for("every slow connection to be opened", || async {
            (self.started.load(Ordering::SeqCst) >= n).then_some(())
        })
        .await;
    }
}

/// How long the server takes to answer others while a flood is on.
struct Served {
    /// The slowest of the `/health` calls made throughout the window.
    slowest_health: Duration,
    health_calls: usize,
    /// A chat round trip (a new session, `wait: true`) at the end of the window.
    chat: Duration,
}

/// Calls `/health` one after another for `window` (a flood takes a moment to fill the
/// server; each call must succeed within the client's timeout), then makes a chat round trip.
async fn served_during(
    window: Duration,
    base: &str,
    token: &str,
    project: &std::path::Path,
) -> Served {
    let client = fresh_client();
    let until = Instant::now() + window;
    let (mut slowest_health, mut health_calls) = (Duration::ZERO, 0);
    while Instant::now() < until {
        let started = Instant::now();
        let res = client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/health call {health_calls} during the flood: {e}"));
        assert_eq!(res.status(), StatusCode::OK);
        slowest_health = slowest_health.max(started.elapsed());
        health_calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not waiting
    }
    let started = Instant::now();
    let res = client
        .post(format!("{base}/api/chat"))
        .timeout(Duration::from_secs(20))
        .bearer_auth(token)
        .json(&json!({"message": "still there?", "projectPath": project, "wait": true}))
        .send()
        .await
        .expect("a chat round trip during the flood");
    assert_eq!(res.status(), StatusCode::OK);
    let reply: Value = res.json().await.unwrap();
    let chat = started.elapsed();
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(
        reply["reply"]["text"],
        "echo: still there? | history: still there?"
    );
    Served {
        slowest_health,
        health_calls,
        chat,
    }
}

/// Descriptors `pid` has open (Linux), to show a flood really filled the server.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// In the full tier, raises this test process's own open-file limit for a flood of `n` connections (with room
/// for the other tests running beside it); false (and a printed reason) when the hard limit
/// does not allow it.
fn room_for(n: u64) -> bool {
    if !crate::kit::full_tier("a flood of connections") {
        return false;
    }
    #[cfg(unix)]
    if crate::helpers::raise_own_open_file_limit(n + 2048) {
        return true;
    }
    crate::kit::skipped(&format!(
        "this test process cannot open {n} connections (open-file limit)"
    ));
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_at_the_open_file_limit_does_not_keep_others_out() {
    let _alone = FLOODS.lock().await;
    const FLOOD: usize = 1_100;
    if !room_for(FLOOD as u64) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An open-file limit of 1,024 cannot hold 1,100 connections: the cap asked for is lowered
    // at start to what it can hold beside the database and the agent's pipes. The header
    // timeout is long, so that only the cap and its evictions keep the door open.
    let tether = env_launch(dir.path())
        .setting("SERVER__MAX_CONNECTIONS", "4096")
        .setting("SERVER__HEADER_READ_TIMEOUT", "300")
        .open_files(1024)
        .start();
    let token = tether.token("me");
    let flood = Slowloris::start(
        tether.addr(),
        FLOOD,
        Duration::from_millis(500),
        Slow::Header,
    );
    flood.all_started(FLOOD).await;

    let served = served_during(
        FLOOD_WINDOW,
        &tether.base,
        &token,
        &demo_project(dir.path()),
    )
    .await;
    let held = flood.held();
    let fds = open_fds(tether.pid());
    println!(
        "slowloris: {FLOOD} slow connections ({held} open at the end, {} closed by the server \
         and reopened; tether holds {fds:?} descriptors of 1024): {} /health calls over \
         {FLOOD_WINDOW:?}, the slowest {:?}; a chat round trip (new session, wait) {:?}",
        flood.closed.load(Ordering::SeqCst),
        served.health_calls,
        served.slowest_health,
        served.chat,
    );
    assert!(
        held >= FLOOD * 9 / 10,
        "the flood was still on: {held} open"
    );
    if let Some(fds) = fds {
        // Evicted clients reconnect at their next byte, so the count moves; half the limit
        // shows the flood reached the server and not only its listen queue.
        assert!(
            fds >= 512,
            "the flood reached the server: {fds} descriptors"
        );
    }
    assert!(
        served.slowest_health < Duration::from_secs(2),
        "{:?}",
        served.slowest_health
    );
    assert!(
        served.chat < Duration::from_secs(10),
        "chat took {:?}",
        served.chat
    );
}

/// 600 connections that each send the header of `POST /api/pair` and one byte of its body,
/// against 512 connections at most under an open-file limit of 1,024: requests whose handler
/// waits on the client for the body are closed to make room, as idle connections are, so a
/// normal client gets every answer. The body timeouts are long here, so that only the cap's
/// evictions keep the door open (before them, about half the calls were refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_at_the_connection_cap_do_not_keep_others_out() {
    let _alone = FLOODS.lock().await;
    const FLOOD: usize = 600;
    const CAP: usize = 512;
    const CALLS: usize = 20;
    if !room_for(FLOOD as u64) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let tether = env_launch(dir.path())
        .setting("SERVER__MAX_CONNECTIONS", &cap)
        .setting("SERVER__BODY_READ_TIMEOUT", "300")
        .setting("SERVER__BODY_READ_TIMEOUT_ANONYMOUS", "300")
        // The flood comes from one address here; from many, each would have its own rate.
        .setting("SERVER__REQUESTS_PER_MINUTE", "0")
        .open_files(1024)
        .start();
    // Descriptors before the flood, to see it fill the cap (Linux).
    let before = open_fds(tether.pid());
    let flood = Slowloris::start(tether.addr(), FLOOD, Duration::from_millis(500), Slow::Body);
    flood.all_started(FLOOD).await;
    wait_for("the flood to fill the connection cap", || async {
        let (Some(before), Some(now)) = (before, open_fds(tether.pid())) else {
            return Some(());
        };
        (now >= before + CAP).then_some(())
    })
    .await;
    let client = fresh_client();
    let mut answered = 0;
    let started = Instant::now();
    for _ in 0..CALLS {
        match client.get(tether.url("/health")).send().await {
            Ok(res) if res.status() == StatusCode::OK => answered += 1,
            Ok(res) => println!("/health answered {}", res.status()),
            Err(e) => println!("/health failed: {e:?}"),
        }
    }
    println!(
        "slow bodies: {FLOOD} connections against a cap of {CAP}: {answered} of {CALLS} \
         /health answers in {:?}; {} connections closed by the server and reopened",
        started.elapsed(),
        flood.closed.load(Ordering::SeqCst)
    );
    assert_eq!(answered, CALLS, "every /health call was answered");
    assert!(
        flood.held() >= CAP,
        "the flood was still on: {}",
        flood.held()
    );
    wait_for("slow bodies to have been closed to make room", || async {
        (flood.closed.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_slow_body_is_answered_408_sooner_without_a_token() {
    let app = spawn_app_with(|s| {
        s.server.body_read_timeout_anonymous = Duration::from_secs(1);
        s.server.body_read_timeout = Duration::from_secs(3);
    })
    .await;
    let slow = |head: String| {
        let addr = addr_of(&app.base);
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            let started = Instant::now();
            let (status, head, body) = tokio::time::timeout(DEADLINE, read_answer(&mut stream))
                .await
                .expect("an answer");
            let took = started.elapsed();
            assert!(head.contains("connection: close"), "{head}");
            // The rest of the body is not waited for: the connection ends.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
                .await
                .expect("the connection closed");
            (status, body, took)
        }
    };
    // Without a token (pairing): the anonymous time.
    let (status, body, took) = slow(
        "POST /api/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{"
            .to_string(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (408, Some("body_timeout")),
        "{body}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // With a valid token: the longer one.
    let (status, body, took) = slow(format!(
        "POST /api/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.token
    ))
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (408, Some("body_timeout")),
        "{body}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    // A body sent in time is read whole, however it is split.
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    let body = br#"{"code": "AAAA-BBBB-CC"}"#;
    let head = format!(
        "POST /api/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(8) {
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not waiting
        stream.write_all(part).await.unwrap();
    }
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert_eq!(app.health().await["status"], "ok");
}

/// accept() failing with EMFILE must neither spin nor end the loop: the server shrinks its
/// cap, closes idle connections, and goes on serving. The limit is lowered after the start
/// (with `prlimit`, Linux), so the cap chosen at start does not already avoid it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_stop_the_accept_loop() {
    let _alone = FLOODS.lock().await;
    const FLOOD: usize = 600;
    if !cfg!(target_os = "linux") || which::which("prlimit").is_err() {
        crate::kit::skipped("needs Linux and prlimit(1) to lower a running process's limit");
        return;
    }
    if !room_for(FLOOD as u64) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tether = env_launch(dir.path())
        .setting("SERVER__MAX_CONNECTIONS", "512")
        .setting("SERVER__HEADER_READ_TIMEOUT", "300")
        .open_files(1024)
        .start();
    let token = tether.token("me");
    let lowered = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", tether.pid()))
        .arg("--nofile=256:1024")
        .status()
        .unwrap();
    if !lowered.success() {
        crate::kit::skipped("prlimit could not lower tether's open-file limit here");
        return;
    }
    let flood = Slowloris::start(
        tether.addr(),
        FLOOD,
        Duration::from_millis(500),
        Slow::Header,
    );
    flood.all_started(FLOOD).await;
    let served = served_during(
        FLOOD_WINDOW,
        &tether.base,
        &token,
        &demo_project(dir.path()),
    )
    .await;
    // The room was made by closing idle connections (their clients notice at their next byte).
    wait_for("the server to have closed idle connections", || async {
        (flood.closed.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    println!(
        "EMFILE: {FLOOD} slow connections against 256 descriptors: {} /health calls over \
         {FLOOD_WINDOW:?}, the slowest {:?}; chat {:?}; {} connections closed by the server",
        served.health_calls,
        served.slowest_health,
        served.chat,
        flood.closed.load(Ordering::SeqCst)
    );
    // Milliseconds on a quiet machine (printed above); the bound leaves room for a CI
    // machine busy with the rest of the suite, under the client's own 5 s timeout.
    assert!(
        served.slowest_health < Duration::from_secs(4),
        "{:?}",
        served.slowest_health
    );
    assert!(
        served.chat < Duration::from_secs(10),
        "chat took {:?}",
        served.chat
    );
}

/// True once the server has closed `stream` (end of file, or reset).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await {
            Err(_) => return false, // nothing to read: still open
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // an error page before the close
        }
    }
}

#[tokio::test]
async fn a_client_that_is_slow_to_send_its_header_is_disconnected() {
    let app = spawn_app_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Still trickling: a byte every look, never the end of the header.
    while stream.write_all(b"a").await.is_ok() && !is_closed(&mut stream).await {
        assert!(
            started.elapsed() < DEADLINE,
            "the slow connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing: the next byte
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.health().await["status"], "ok", "others are served");
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_idle_connection_makes_room() {
    const CAP: usize = 16;
    let app = spawn_app_with(|s| {
        s.server.max_connections = CAP;
        s.server.header_read_timeout = Duration::from_secs(300);
    })
    .await;
    let first = app.chat_wait("one", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    // An open event stream: a request in flight, never closed to make room.
    let mut events = reqwest::Client::new()
        .get(app.url(&format!("/api/sessions/{id}/events")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    // Twice the cap of connections that never finish their header, opened in order.
    let mut slow = Vec::new();
    for _ in 0..2 * CAP {
        let mut s = TcpStream::connect(addr_of(&app.base)).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // The stream and the newest CAP - 1 stay; the oldest idle ones were closed for them.
    let (old, new) = slow.split_at_mut(CAP + 1);
    let deadline = Instant::now() + DEADLINE;
    for s in old.iter_mut() {
        while !is_closed(s).await {
            assert!(
                Instant::now() < deadline,
                "an old slow connection stayed open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for s in new.iter_mut() {
        assert!(!is_closed(s).await, "a newer connection was kept");
    }
    // A newcomer gets in, and the stream still delivers.
    let health = fresh_client().get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let sent = fresh_client()
        .post(app.url("/api/chat"))
        .bearer_auth(&app.token)
        .json(&json!({"message": "two", "sessionId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    let mut got = String::new();
    while !got.contains("two") {
        let chunk = tokio::time::timeout(DEADLINE, events.chunk())
            .await
            .expect("an event on the stream")
            .unwrap()
            .expect("the stream is open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(got.contains("event:"), "{got}");
}

/// Reads one HTTP/1.1 answer (head and a Content-Length body) from a raw connection.
async fn read_answer(stream: &mut TcpStream) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    (status, head, body)
}

#[tokio::test]
async fn a_request_over_its_time_answers_a_json_error_but_a_waiting_chat_may_wait() {
    let app = spawn_app_with(|s| s.server.request_timeout = Duration::from_secs(1)).await;
    // A body that never arrives in full.
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    let head = format!(
        "POST /api/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"token\": ",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (status, _, body) = tokio::time::timeout(DEADLINE, read_answer(&mut stream))
        .await
        .expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("request_timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));

    // `wait: true` may take server.wait_timeout, longer than the request timeout.
    let reply = app.chat_wait("take your time [slow:2500]", None).await;
    assert_eq!(reply["status"], "completed", "{reply}");
}

/// POST /api/chat starting a new session, as `token`.
async fn new_session(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/chat"))
        .bearer_auth(token)
        .json(&json!({"message": "hi", "projectPath": app.project}))
        .send()
        .await
        .unwrap()
}

/// The 429's code and its Retry-After seconds.
async fn too_many(res: reqwest::Response) -> (String, u64) {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, code) = error_code(res).await;
    (code, retry)
}

#[tokio::test]
async fn new_sessions_per_minute_are_capped_per_owner() {
    let app = spawn_app_with(|s| s.limits.new_sessions_per_minute = 2).await;
    let first: Value = new_session(&app, &app.token).await.json().await.unwrap();
    assert_eq!(
        new_session(&app, &app.token).await.status(),
        StatusCode::ACCEPTED
    );
    let (code, retry) = too_many(new_session(&app, &app.token).await).await;
    assert_eq!(code, "too_many_new_sessions");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Existing sessions go on, and other owners have their own count.
    let id = first["sessionId"].as_str().unwrap();
    app.chat("more", Some(id)).await;
    let other = app.token_for("other", Role::User).await;
    assert_eq!(
        new_session(&app, &other).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.get_json("/api/sessions").await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn live_sessions_are_capped_per_owner() {
    let app = spawn_app_with(|s| s.sessions.max_active_per_owner = 2).await;
    let first: Value = new_session(&app, &app.token).await.json().await.unwrap();
    assert_eq!(
        new_session(&app, &app.token).await.status(),
        StatusCode::ACCEPTED
    );
    let (code, retry) = too_many(new_session(&app, &app.token).await).await;
    assert_eq!(code, "too_many_sessions");
    assert!(retry >= 1);
    // Ending one makes room.
    let id = first["sessionId"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/sessions/{id}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        new_session(&app, &app.token).await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn event_streams_are_capped_per_owner() {
    let app = spawn_app_with(|s| s.limits.streams_per_owner = 2).await;
    let id = app.new_session("one").await;
    let path = format!("/api/sessions/{id}/events");
    let first = app.get(&path).await;
    let second = app.get(&path).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let (code, retry) = too_many(app.get(&path).await).await;
    assert_eq!(code, "too_many_streams");
    assert!(retry >= 1);
    let admin = app.get_as(&app.admin_token, &path).await;
    assert_eq!(
        admin.status(),
        StatusCode::OK,
        "another owner has its own count"
    );
    // A closed stream frees its place.
    drop(first);
    wait_for("a stream to be allowed again", || async {
        (app.get(&path).await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_new_sessions_folder_is_checked_before_the_write_lock_is_taken() {
    let app = spawn_app_with(|_| {}).await;
    // Another writer holds SQLite's write lock.
    let other = tether::store::Store::open(&app.settings.database.path, 1)
        .await
        .unwrap();
    let lock = other.begin_write().await.unwrap();
    let started = Instant::now();
    let missing = app.dir.path().join("projects/missing");
    let res = app
        .post(
            "/api/chat",
            json!({"message": "hi", "projectPath": missing}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "project_not_found".into())
    );
    let res = app
        .post("/api/chat", json!({"message": "hi", "projectPath": "/"}))
        .await;
    assert_eq!(error_code(res).await.0, StatusCode::FORBIDDEN);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bad folders were refused without waiting for the lock: {:?}",
        started.elapsed()
    );
    drop(lock);
    other.close().await;
}

#[tokio::test]
async fn requests_during_shutdown_get_a_503_json_answer() {
    let app = spawn_app_with(|_| {}).await; // shutdown_grace = 2 s
                                            // A running turn keeps the shutdown going for its grace.
    let res = app.chat("long [slow:60000]", None).await;
    let id = res["sessionId"].as_str().unwrap().to_string();
    app.wait_terminal_or_running(&id, res["messageId"].as_i64().unwrap())
        .await;
    let (base, token, client) = (app.base.clone(), app.token.clone(), fresh_client());
    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    let body: Value = wait_for("/health to say shutting down", || async {
        let res = client.get(format!("{base}/health")).send().await.ok()?;
        (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())?;
        res.json().await.ok()
    })
    .await;
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    let res = client
        .post(format!("{base}/api/chat"))
        .bearer_auth(&token)
        .json(&json!({"message": "too late", "sessionId": id}))
        .send()
        .await
        .expect("accepted and answered, not refused");
    assert_eq!(
        error_code(res).await,
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down".into())
    );
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_event_stream_that_stopped_reading_does_not_hold_shutdown() {
    let app = spawn_app_with(|_| {}).await; // shutdown_grace = 2 s
                                            // Megabytes of events: more than the sockets between server and client can hold.
    let first = app.chat_wait("big [huge:4000000]", None).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    for _ in 0..2 {
        app.chat_wait("big [huge:4000000]", Some(&id)).await;
    }
    // A client with a small receive window reads the start of the stream, then stops.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr_of(&app.base)).await.unwrap();
    let request = format!(
        "GET /api/sessions/{id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 64 * 1024 {
        let mut buf = [0u8; 8192];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..200])
    );

    let started = Instant::now();
    tokio::time::timeout(DEADLINE, app.stop())
        .await
        .expect("shutdown ended although the client reads nothing");
    // The grace (2 s) plus the drain's margin (2 s), and some slack for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(stream);
}

#[cfg(unix)]
#[tokio::test]
async fn a_second_sigterm_stops_a_shutdown_that_hangs() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    // A turn that would hold the graceful shutdown for a minute.
    let mut tether = env_launch(dir.path())
        .setting("SERVER__SHUTDOWN_GRACE", "60")
        .start();
    let token = tether.token("me");
    let client = fresh_client();
    let res = client
        .post(tether.url("/api/chat"))
        .bearer_auth(&token)
        .json(&json!({"message": "long [slow:60000]", "projectPath": demo_project(dir.path())}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let log = dir.path().join("fake-claude.log");
    wait_for("the CLI to start", || async {
        std::fs::read_to_string(&log).ok().filter(|l| !l.is_empty())
    })
    .await;

    tether.signal(Signal::SIGTERM);
    // The first signal was taken (the drain answers 503) before the second is sent.
    wait_for("the graceful shutdown to begin", || async {
        let res = client.get(tether.url("/health")).send().await.ok()?;
        (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let started = Instant::now();
    tether.signal(Signal::SIGTERM);
    let status = tether
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the second SIGTERM stopped it at once");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// GET `path` (POST with a body when given) as `host` names it, with the user's token.
async fn with_host(
    app: &TestApp,
    host: &str,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let req = match body {
        Some(body) => app.client.post(app.url(path)).json(&body),
        None => app.client.get(app.url(path)),
    };
    req.header(reqwest::header::HOST, host)
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_host_header_that_does_not_name_this_server_is_refused() {
    let app =
        spawn_app_with(|s| s.server.allowed_hosts = vec!["tether.example.ts.net".into()]).await;
    let port = addr_of(&app.base).port();
    let pair = || Some(json!({"code": "AAAA-BBBB-CC"}));
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
    ] {
        for (path, body) in [
            ("/health", None),
            ("/api/pair", pair()),
            ("/api/sessions", None),
        ] {
            let res = with_host(&app, host, path, body).await;
            assert_eq!(
                error_code(res).await,
                (StatusCode::MISDIRECTED_REQUEST, "host_not_allowed".into()),
                "{host} {path}"
            );
        }
    }
    let (_, no_pairing) =
        error_code(with_host(&app, "evil.example", "/api/pair", pair()).await).await;
    assert_eq!(no_pairing, "host_not_allowed", "not a wrong code either");
    // IP literals, localhost, this machine's name and server.allowed_hosts are.
    let machine = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let label = machine.split('.').next().unwrap().to_string();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_string(),
        format!("{machine}:{port}"),
        format!("{label}.local:{port}"),
        format!("TETHER.example.ts.net:{port}"),
    ] {
        let res = with_host(&app, &host, "/health", None).await;
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        let res = with_host(&app, &host, "/api/sessions", None).await;
        assert_eq!(res.status(), StatusCode::OK, "{host}");
    }
    // Without Host: HTTP/1.1 must send it; HTTP/1.0 need not (no browser omits it).
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_host")),
        "{body}"
    );
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    // An absolute request target names its host too.
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    stream
        .write_all(b"GET http://evil.example/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_answer(&mut stream).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (421, Some("host_not_allowed")),
        "{body}"
    );
}

#[tokio::test]
async fn a_websocket_from_a_page_of_another_origin_is_refused() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let app = spawn_app_with(|_| {}).await;
    let id = crate::terminals::open_shell(&app).await;
    let port = addr_of(&app.base).port();
    let attach = |origin: Option<String>| {
        let url = format!("ws://127.0.0.1:{port}/api/terminals/{id}/ws");
        let token = app.token.clone();
        async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            if let Some(origin) = origin {
                req.headers_mut().insert("origin", origin.parse().unwrap());
            }
            tokio_tungstenite::connect_async(req).await
        }
    };
    for origin in [
        "https://evil.example",
        "null",
        &format!("http://evil.example:{port}"),
    ] {
        match attach(Some(origin.to_string())).await {
            Err(Error::Http(res)) => {
                assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin}");
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "origin_not_allowed", "{origin}");
            }
            other => panic!("{origin}: {:?}", other.map(|(_, res)| res.status())),
        }
    }
    // A page of this server, and a native client (no Origin), may attach.
    for origin in [
        Some(format!("http://localhost:{port}")),
        Some(format!("http://127.0.0.1:{port}")),
        None,
    ] {
        let (ws, res) = attach(origin.clone())
            .await
            .unwrap_or_else(|e| panic!("{origin:?}: {e}"));
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        drop(ws);
    }
}

/// Sends `request` as it is on a new connection and reads the answer.
async fn raw(app: &TestApp, request: &str) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr_of(&app.base)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(DEADLINE, read_answer(&mut stream))
        .await
        .expect("an answer")
}

#[tokio::test]
async fn a_method_a_route_does_not_take_answers_405_in_the_error_shape() {
    let app = spawn_app_with(|_| {}).await;
    let res = app.client.put(app.url("/health")).send().await.unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET"), "{allow}");
    assert_eq!(
        error_code(res).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
    // On `/v1`, in OpenAI's shape with the same code.
    let res = app
        .client
        .get(app.url("/v1/chat/completions"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[tokio::test]
async fn a_request_head_over_its_limits_answers_414_or_431_in_the_error_shape() {
    let app = spawn_app_with(|s| {
        s.server.max_uri_bytes = 256;
        s.server.max_header_bytes = 1024;
        s.server.max_headers = 10;
    })
    .await;
    let get = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n")
    };
    // The request target: 256 bytes are taken, 257 are not.
    let target = |len: usize| format!("/health?x={}", "a".repeat(len - "/health?x=".len()));
    assert_eq!(raw(&app, &get(&target(256), "")).await.0, 200);
    let (status, _, body) = raw(&app, &get(&target(257), "")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (414, Some("uri_too_long")),
        "{body}"
    );
    // Header bytes (names and values): `host` and `127.0.0.1` are 13, `x-pad` 5.
    let pad = |len: usize| format!("x-pad: {}\r\n", "b".repeat(len));
    assert_eq!(raw(&app, &get("/health", &pad(1024 - 18))).await.0, 200);
    let (status, _, body) = raw(&app, &get("/health", &pad(1024 - 17))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (431, Some("headers_too_large")),
        "{body}"
    );
    // A large header, far above the limit, is still answered in JSON.
    let (status, _, body) = raw(&app, &get("/health", &pad(200_000))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (431, Some("headers_too_large")),
        "{body}"
    );
    // The count of headers: `host` and 9 more are taken, 10 more are not.
    let many = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    assert_eq!(raw(&app, &get("/health", &many(9))).await.0, 200);
    // Past hyper's own limits (twice server.max_headers; 65,534 bytes of target) and on
    // what it cannot parse, hyper answers by itself: the JSON shape still, closing.
    for n in [10, 15, 30] {
        let (status, _, body) = raw(&app, &get("/health", &many(n))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (431, Some("headers_too_large")),
            "{n}: {body}"
        );
    }
}

#[tokio::test]
async fn a_request_hyper_cannot_read_is_answered_in_the_error_shape() {
    let app = spawn_app_with(|_| {}).await;
    for (request, status, code) in [
        (
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n".to_string(),
            400,
            "malformed_request",
        ),
        (
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
            400,
            "malformed_request",
        ),
        (
            format!(
                "GET /health?x={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "a".repeat(70_000)
            ),
            414,
            "uri_too_long",
        ),
    ] {
        let (got, head, body) = raw(&app, &request).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
    }
    // The connection still serves others.
    assert_eq!(app.health().await["status"], "ok");
}
