//! Terminals with a real PTY: a login shell typed into over a WebSocket (tokio-tungstenite),
//! resize, Ctrl-C, reconnecting with an offset, two viewers, the REST routes beside it,
//! DELETE and shutdown reaping what the shell started, a chat session held while its
//! conversation is in the interactive CLI and going on after it, the limits at their edges,
//! the lifecycle (warning, end, idle end, the "waiting" push), and a start after a SIGKILL
//! of tether stopping what the old PTY child left.

use std::{sync::Arc, time::Duration};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{self, client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    helpers::{
        error_code, pid_alive, spawn_app, spawn_app_with, start_server, test_settings, wait_for,
        wait_gone, TestApp, DEADLINE,
    },
    push::{sent, spawn_with_phone},
};

const HOUR: i64 = 3600 * 1000;

/// Starts a terminal; answers its view (201).
pub(crate) async fn open(app: &TestApp, body: Value) -> Value {
    let res = app.post("/api/terminals", body).await;
    assert_eq!(res.status(), StatusCode::CREATED, "POST /api/terminals");
    res.json().await.unwrap()
}

/// A login shell in the test's project folder.
pub(crate) async fn open_shell(app: &TestApp) -> String {
    let t = open(
        app,
        json!({"program": "shell", "projectPath": app.project, "cols": 80, "rows": 24}),
    )
    .await;
    assert_eq!(t["state"], "running", "{t}");
    t["id"].as_str().unwrap().to_string()
}

/// A WebSocket viewer of a terminal and what it has read.
pub(crate) struct Screen {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The offset of `bytes[0]` in the terminal's output.
    pub start: u64,
    pub bytes: Vec<u8>,
    /// The text frames, in order.
    pub texts: Vec<Value>,
    /// Where the next [`Screen::expect`] looks from.
    mark: usize,
}

/// The WebSocket URL of a terminal, with `query`.
fn ws_url(base: &str, id: &str, query: &str) -> String {
    format!(
        "{}/api/terminals/{id}/ws{query}",
        base.replacen("http", "ws", 1)
    )
}

/// Connects with `Authorization: Bearer <token>`.
pub(crate) async fn connect(
    base: &str,
    id: &str,
    query: &str,
    token: &str,
) -> Result<Screen, tungstenite::Error> {
    let mut req = ws_url(base, id, query).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    Screen::from_request(req).await
}

impl Screen {
    async fn from_request(
        req: tungstenite::handshake::client::Request,
    ) -> Result<Screen, tungstenite::Error> {
        let (ws, _) = connect_async(req).await?;
        let mut screen = Screen {
            ws,
            start: 0,
            bytes: Vec::new(),
            texts: Vec::new(),
            mark: 0,
        };
        let hello = screen.next_text().await;
        assert_eq!(hello["type"], "attached", "{hello}");
        screen.start = hello["offset"].as_u64().unwrap();
        Ok(screen)
    }

    /// The output's offset after what this viewer has.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Reads one frame (failing after the deadline); false once the socket closed.
    async fn read(&mut self) -> bool {
        let frame = tokio::time::timeout(DEADLINE, self.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame in time; screen so far: {:?}", self.text()));
        match frame {
            Some(Ok(Message::Binary(b))) => self.bytes.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) => self.texts.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
        true
    }

    async fn next_text(&mut self) -> Value {
        let seen = self.texts.len();
        while self.texts.len() == seen {
            assert!(self.read().await, "closed before a text frame");
        }
        self.texts[seen].clone()
    }

    /// Reads until `needle` appears after the last match; returns the screen up to it.
    pub async fn expect(&mut self, needle: &str) -> String {
        loop {
            let text = self.text();
            if let Some(at) = text.get(self.mark..).and_then(|rest| rest.find(needle)) {
                self.mark += at + needle.len();
                return text[..self.mark].to_string();
            }
            assert!(
                self.read().await,
                "closed before {needle:?}; screen: {text:?}"
            );
        }
    }

    /// Reads until `needle` is on the screen as a `cols`×`rows` terminal shows the output
    /// (programs that draw with cursor moves print no spaces between words); returns the
    /// screen's text.
    pub async fn expect_on_screen(&mut self, needle: &str, cols: u16, rows: u16) -> String {
        loop {
            let size = |n: u16| std::num::NonZeroU16::new(n).expect("a terminal side");
            let mut parser = vt100::Parser::new(size(rows), size(cols), 0);
            parser.process(&self.bytes);
            let contents = parser.screen().contents();
            if contents.contains(needle) {
                return contents;
            }
            assert!(
                self.read().await,
                "closed before {needle:?} was on the screen:\n{contents}"
            );
        }
    }

    /// Reads until the terminal says it ended; returns that frame.
    pub async fn expect_end(&mut self) -> Value {
        loop {
            if let Some(end) = self.texts.iter().find(|t| t["type"] == "ended") {
                return end.clone();
            }
            assert!(self.read().await, "closed without an `ended` frame");
        }
    }

    pub async fn type_text(&mut self, text: &str) {
        self.ws
            .send(Message::Binary(text.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }

    pub async fn control(&mut self, control: Value) {
        self.ws
            .send(Message::Text(control.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The status a refused WebSocket handshake was answered with.
fn refused_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(res) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// Some when a child of `parent` runs the program `name` (as `ps` lists them, on Linux and
/// macOS alike).
fn child_named(parent: i64, name: &str) -> Option<()> {
    let out = std::process::Command::new("ps")
        .args(["-A", "-o", "ppid=,comm="])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .any(|(ppid, comm)| ppid.trim() == parent.to_string() && comm.trim() == name)
        .then_some(())
}

/// The output after `offset` as the REST route gives it: (offset, bytes, reset).
async fn output(app: &TestApp, id: &str, offset: u64) -> (u64, Vec<u8>, bool, Value) {
    let v = app
        .get_json(&format!("/api/terminals/{id}/output?offset={offset}"))
        .await;
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().unwrap())
        .unwrap();
    (v["offset"].as_u64().unwrap(), data, v["reset"] == true, v)
}

#[tokio::test]
async fn a_shell_answers_over_a_websocket_resizes_and_stops_a_command_on_ctrl_c() {
    let app = spawn_app().await;
    let id = open_shell(&app).await;
    let mut screen = connect(&app.base, &id, "", &app.token).await.unwrap();
    screen.type_text("echo $((6*7))\r").await;
    screen.expect("42\r\n").await;

    screen
        .control(json!({"resize": {"cols": 100, "rows": 30}}))
        .await;
    screen.type_text("stty size\r").await;
    screen.expect("30 100\r\n").await;
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(
        (shown["cols"].as_i64(), shown["rows"].as_i64()),
        (Some(100), Some(30))
    );
    assert_eq!(shown["viewers"], 1);
    assert!(shown["lastInputAt"].is_string(), "{shown}");

    // Ctrl-C stops `sleep 100`: the next command runs at once.
    screen.type_text("sleep 100\r").await;
    screen.expect("sleep 100").await;
    // The echo comes from the terminal before the shell has read the line: interrupt only
    // once `sleep` runs (under load, an earlier Ctrl-C reached the shell and `sleep` went on).
    let shell = shown["pid"].as_i64().expect("the shell's pid");
    wait_for("sleep to run in the shell", || async {
        child_named(shell, "sleep")
    })
    .await;
    screen.control(json!({"signal": "interrupt"})).await;
    screen.type_text("echo after-$((1+1))\r").await;
    screen.expect("after-2\r\n").await;

    // A bad control frame is answered, and the connection stays.
    screen.control(json!({"signal": "explode"})).await;
    let error = screen.next_text().await;
    assert_eq!(error["error"]["code"], "invalid_control", "{error}");
    screen.type_text("echo still-$((2+2))\r").await;
    screen.expect("still-4").await;

    // `exit`: the terminal ends by itself, with its code, and says so.
    screen.type_text("exit 7\r").await;
    let end = screen.expect_end().await;
    assert_eq!(
        (end["state"].as_str(), end["exitCode"].as_i64()),
        (Some("exited"), Some(7))
    );
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(shown["state"], "exited");
    assert_eq!(shown["exitCode"], 7);
    assert_eq!(shown["pid"], Value::Null);
    // Its last screen stays readable.
    let (_, tail, _, v) = output(&app, &id, 0).await;
    assert_eq!(v["state"], "exited");
    assert!(String::from_utf8_lossy(&tail).contains("still-4"));
    // The offset is a cursor like any other: digits only.
    for offset in ["-1", "%2B1", "1.0", "%201"] {
        let res = app
            .get(&format!("/api/terminals/{id}/output?offset={offset}"))
            .await;
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_query".into()),
            "{offset}"
        );
    }
    let res = app
        .post(&format!("/api/terminals/{id}/input"), json!({"text": "x"}))
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::CONFLICT, "terminal_ended".into())
    );
}

#[tokio::test]
async fn two_viewers_see_the_same_output_and_a_reconnect_gets_only_what_it_missed() {
    let app = spawn_app().await;
    let id = open_shell(&app).await;
    let mut a = connect(&app.base, &id, "", &app.token).await.unwrap();
    let mut b = connect(&app.base, &id, "", &app.token).await.unwrap();
    a.type_text("echo one-$((1))\r").await;
    a.expect("one-1\r\n").await;
    b.expect("one-1\r\n").await;
    // Input from both is taken in order.
    b.type_text("echo two-$((2))\r").await;
    a.expect("two-2\r\n").await;
    b.expect("two-2\r\n").await;
    let left_at = b.end();
    b.close().await;

    // Typed over REST while B is away.
    let res = app
        .post(
            &format!("/api/terminals/{id}/input"),
            json!({"text": "echo three-$((3))\r"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let upto = a.expect("three-3\r\n").await.len() as u64 + a.start;
    let mut b = connect(&app.base, &id, &format!("?offset={left_at}"), &app.token)
        .await
        .unwrap();
    assert_eq!(b.start, left_at, "it starts where it left");
    b.expect("three-3\r\n").await;
    let from = (left_at - a.start) as usize;
    let missed = &a.bytes[from..(upto - a.start) as usize];
    assert_eq!(
        &b.bytes[..missed.len()],
        missed,
        "exactly the bytes it missed"
    );
    assert!(!String::from_utf8_lossy(&b.bytes).contains("two-2"));
    // The same, for clients without a WebSocket.
    let (offset, bytes, reset, _) = output(&app, &id, left_at).await;
    assert_eq!((offset, reset), (left_at, false));
    assert_eq!(&bytes[..missed.len()], missed);
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(shown["viewers"], 2);
}

#[tokio::test]
async fn a_viewer_further_behind_than_the_buffer_gets_the_whole_buffer() {
    let app = spawn_app_with(|s| s.terminals.buffer_bytes = tether::config::ByteSize(4096)).await;
    let id = open_shell(&app).await;
    let mut screen = connect(&app.base, &id, "", &app.token).await.unwrap();
    screen
        .type_text("head -c 6000 /dev/zero | tr '\\0' x; echo; echo done-$((5*5))\r")
        .await;
    screen.expect("done-25\r\n").await;
    // (This viewer may itself have fallen behind: the terminal's own count is the end.)
    let end = app.get_json(&format!("/api/terminals/{id}")).await["outputBytes"]
        .as_u64()
        .unwrap();
    assert!(end > 6000, "{end}");
    let late = connect(&app.base, &id, "?offset=10", &app.token)
        .await
        .unwrap();
    let hello = &late.texts[0];
    assert_eq!(hello["reset"], true, "{hello}");
    assert!(
        late.start > 10 && late.start <= end - 4096 + 512,
        "{}",
        late.start
    );
    // The shell may still be printing its prompt: the slice ends at the output's end as it
    // stood between the two counts around it.
    let count = || async {
        app.get_json(&format!("/api/terminals/{id}")).await["outputBytes"]
            .as_u64()
            .unwrap()
    };
    let before = count().await;
    let (offset, bytes, reset, v) = output(&app, &id, 10).await;
    let after = count().await;
    assert!(reset);
    assert!(bytes.len() <= 4096);
    let upto = offset + bytes.len() as u64;
    assert_eq!(v["nextOffset"].as_u64(), Some(upto), "{v}");
    assert!(
        before <= upto && upto <= after,
        "{before} <= {upto} <= {after}"
    );
}

/// Starts, in the shell, a job that ignores the hang-up (in a process group of its own);
/// returns its pid.
async fn start_job(screen: &mut Screen) -> u32 {
    screen
        .type_text("(trap '' HUP; echo trapped$((1+2)); exec sleep 300) & echo bg=$!x$((1+1))\r")
        .await;
    let text = screen.expect("x2\r\n").await;
    let job = text
        .rsplit("bg=")
        .next()
        .and_then(|s| s.split('x').next())
        .unwrap()
        .parse()
        .unwrap();
    // The job ignores the hang-up only once its trap ran, which may be after the line above
    // (the echo of the typed line shows `$((1+2))`, not its value).
    while !screen.text().contains("trapped3") {
        assert!(screen.read().await, "closed before the job's trap ran");
    }
    job
}

#[tokio::test]
async fn delete_ends_the_shell_and_everything_it_started() {
    let app = spawn_app().await;
    let id = open_shell(&app).await;
    let shell_pid = app.get_json(&format!("/api/terminals/{id}")).await["pid"]
        .as_u64()
        .unwrap() as u32;
    let mut screen = connect(&app.base, &id, "", &app.token).await.unwrap();
    // A job that ignores the hang-up, in a process group of its own.
    let job = start_job(&mut screen).await;
    assert!(pid_alive(job));
    let res = app.delete(&format!("/api/terminals/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let ended: Value = res.json().await.unwrap();
    assert_eq!(ended["state"], "killed", "{ended}");
    assert_eq!(ended["endReason"], "ended by its owner");
    assert!(!pid_alive(shell_pid), "the shell was reaped");
    assert!(!pid_alive(job), "its job went with it");
    let end = screen.expect_end().await;
    assert_eq!(end["state"], "killed");
    // Again: answered as it is.
    let res = app.delete(&format!("/api/terminals/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = connect(&app.base, &id, "", &app.token).await.err().unwrap();
    assert_eq!(refused_status(res), 409);
}

#[tokio::test]
async fn the_token_comes_as_a_header_or_a_subprotocol_never_in_the_url() {
    let app = spawn_app().await;
    let id = open_shell(&app).await;
    // Browsers: `Sec-WebSocket-Protocol: tether, bearer.<token>`; the answer names only `tether`.
    let mut req = ws_url(&app.base, &id, "").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("tether, bearer.{}", app.token).parse().unwrap(),
    );
    let (ws, res) = connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "tether");
    drop(ws);
    // A token in the URL is no token.
    let req = ws_url(&app.base, &id, &format!("?token={}", app.token))
        .into_client_request()
        .unwrap();
    let err = connect_async(req).await.err().unwrap();
    assert_eq!(refused_status(err), 401);
    // Another owner: 404 on every route of the terminal, whichever way the token comes.
    let other = app.stranger_token();
    let err = connect(&app.base, &id, "", &other).await.err().unwrap();
    assert_eq!(refused_status(err), 404);
    let mut req = ws_url(&app.base, &id, "").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("tether, bearer.{other}").parse().unwrap(),
    );
    assert_eq!(refused_status(connect_async(req).await.err().unwrap()), 404);
    for (method, path, body) in [
        ("GET", format!("/api/terminals/{id}"), Value::Null),
        ("GET", format!("/api/terminals/{id}/output"), Value::Null),
        (
            "POST",
            format!("/api/terminals/{id}/input"),
            json!({"text": "exit\r"}),
        ),
        (
            "POST",
            format!("/api/terminals/{id}/resize"),
            json!({"cols": 10, "rows": 10}),
        ),
        ("DELETE", format!("/api/terminals/{id}"), Value::Null),
    ] {
        let mut req = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&other);
        if !body.is_null() {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        assert_eq!(
            error_code(res).await,
            (StatusCode::NOT_FOUND, "terminal_not_found".into()),
            "{method} {path}"
        );
    }
    let listed = app
        .get_as(&other, "/api/terminals")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(listed["terminals"], json!([]));
    let all = app
        .get_as(&app.admin_token, "/api/terminals")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(all["terminals"][0]["id"], id.as_str(), "the admin sees all");
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(shown["state"], "running", "nothing changed");
}

#[tokio::test]
async fn a_chat_session_waits_while_its_conversation_is_in_a_terminal_and_goes_on_after() {
    let app = spawn_app().await;
    let sid = app.new_session("one").await;
    let chat_pid = app.pid_of(&sid);
    // While a turn runs, the conversation is the agent's.
    let busy = app.chat("[slow:20000] busy", Some(&sid)).await;
    let busy_id = busy["messageId"].as_i64().unwrap();
    app.wait_terminal_or_running(&sid, busy_id).await;
    let body = json!({"program": "claude", "sessionId": sid, "cols": 100, "rows": 30});
    let res = app.post("/api/terminals", body.clone()).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::CONFLICT, "turn_running".into())
    );
    let res = app
        .post(&format!("/api/sessions/{sid}/interrupt"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.wait_terminal(&sid, busy_id).await;

    let t = open(&app, body.clone()).await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["sessionId"], sid.as_str());
    wait_gone(chat_pid).await;
    let res = app.post("/api/terminals", body).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::CONFLICT, "conversation_in_terminal".into())
    );
    let session = app.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(session["terminalId"], id.as_str());

    // A message sent meanwhile waits, saying why.
    let waiting = app.chat("two", Some(&sid)).await;
    let msg = waiting["messageId"].as_i64().unwrap();
    let mut screen = connect(&app.base, &id, "", &app.token).await.unwrap();
    screen.expect("\u{276f} ").await;
    let m = app.message(&sid, msg).await;
    assert_eq!(
        (m["status"].as_str(), m["waitingFor"].as_str()),
        (Some("queued"), Some("terminal"))
    );
    let run = app.invocations().last().cloned().unwrap();
    let argv = crate::helpers::argv(&run);
    assert!(!argv.contains(&"-p".to_string()), "interactive: {argv:?}");
    assert!(
        argv.windows(2).any(|w| w == ["--resume", sid.as_str()]),
        "{argv:?}"
    );

    screen.type_text("from the terminal\r").await;
    screen
        .expect("history: one / [slow:20000] busy / from the terminal")
        .await;
    screen.type_text("/exit\r").await;
    let end = screen.expect_end().await;
    assert_eq!(
        (end["state"].as_str(), end["exitCode"].as_i64()),
        (Some("exited"), Some(0))
    );

    // Chat goes on with --resume, and the conversation includes the terminal's turn.
    let done = app.wait_terminal(&sid, msg).await;
    assert_eq!(done["status"], "completed", "{done}");
    let replies = app.messages(&sid).await;
    let reply = replies.iter().find(|r| r["replyTo"] == msg).unwrap();
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.contains("history: one / [slow:20000] busy / from the terminal / two"),
        "{text}"
    );
    let session = app.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(session["terminalId"], Value::Null);
    // A shell runs no conversation.
    let res = app
        .post(
            "/api/terminals",
            json!({"program": "shell", "sessionId": sid, "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_program".into())
    );
}

#[tokio::test]
async fn each_role_opens_only_the_programs_terminals_programs_lists() {
    let app = spawn_app_with(|s| s.terminals.programs.user = vec!["claude".into()]).await;
    let shell = json!({"program": "shell", "projectPath": app.project, "cols": 80, "rows": 24});
    let res = app.post("/api/terminals", shell.clone()).await;
    let (status, body) = (res.status(), res.json::<Value>().await.unwrap());
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "terminal_program_not_allowed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("terminals.programs.user: claude"),
        "{message}"
    );
    // Nothing was started.
    let list = app.get_json("/api/terminals").await;
    assert_eq!(list["terminals"], json!([]), "{list}");
    // What the list holds opens; a program tether does not know is still 422.
    let claude = open(
        &app,
        json!({"program": "claude", "projectPath": app.project, "cols": 80, "rows": 24}),
    )
    .await;
    assert_eq!(claude["program"], "claude");
    let res = app
        .post(
            "/api/terminals",
            json!({"program": "vim", "projectPath": app.project, "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_program".into())
    );
    // The admin's list is its own.
    let res = app
        .client
        .post(app.url("/api/terminals"))
        .bearer_auth(&app.admin_token)
        .json(&shell)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    // A program tether cannot run in the list stops the start, naming it.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.terminals.programs.admin = vec!["shell".into(), "bash".into()];
    let err = tether::Application::build(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("terminals.programs.admin holds \"bash\""),
        "{err}"
    );
}

#[tokio::test]
async fn the_limits_answer_at_their_edges() {
    let app = spawn_app_with(|s| {
        s.terminals.max_per_owner = 1;
        s.terminals.max_viewers = 1;
        s.terminals.max_input_bytes = tether::config::ByteSize(16);
    })
    .await;
    let id = open_shell(&app).await;
    let res = app
        .post(
            "/api/terminals",
            json!({"program": "shell", "projectPath": app.project, "cols": 80, "rows": 24}),
        )
        .await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(res).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_terminals".into())
    );
    let path = format!("/api/terminals/{id}/input");
    let input = |text: &str| app.post(&path, json!({"text": text}));
    assert_eq!(input(&"x".repeat(16)).await.status(), StatusCode::OK);
    assert_eq!(
        error_code(input(&"x".repeat(17)).await).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "input_too_large".into())
    );
    let first = connect(&app.base, &id, "", &app.token).await.unwrap();
    let second = connect(&app.base, &id, "", &app.token).await.err().unwrap();
    assert_eq!(refused_status(second), 429);
    drop(first);
    for bad in [
        json!({"program": "vim", "projectPath": app.project, "cols": 80, "rows": 24}),
        json!({"program": "shell", "projectPath": app.project, "cols": 0, "rows": 24}),
        json!({"program": "shell", "projectPath": app.project, "cols": 80, "rows": 1001}),
        json!({"program": "shell", "cols": 80, "rows": 24}),
    ] {
        let res = app.post("/api/terminals", bad.clone()).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let res = app
        .post(
            "/api/terminals",
            json!({"program": "shell", "projectPath": "/etc", "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app
        .post(
            &format!("/api/terminals/{id}/resize"),
            json!({"cols": 0, "rows": 5}),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_size".into())
    );
}

#[tokio::test]
async fn a_terminal_is_warned_ends_at_its_end_and_ends_when_idle() {
    let (app, fake) = spawn_with_phone(|s| {
        s.terminals.quiet_push_after = Some(Duration::from_secs(60));
    })
    .await;
    let id = open_shell(&app).await;
    let terminals = &app.state.terminals;
    // The shell's prompt is output nobody saw: once it has been quiet a minute, one push.
    let prompt_at = wait_for("the prompt", || async {
        app.get_json(&format!("/api/terminals/{id}")).await["lastOutputAt"]
            .as_str()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .unwrap()
                    .timestamp_millis()
            })
    })
    .await;
    let now = tether::store::now_ms();
    assert_eq!(
        terminals.lifecycle_tick(now).await.unwrap().waiting_pushed,
        0
    );
    let report = terminals.lifecycle_tick(prompt_at + 61_000).await.unwrap();
    assert_eq!(report.waiting_pushed, 1, "{report:?}");
    assert_eq!(
        terminals
            .lifecycle_tick(prompt_at + 122_000)
            .await
            .unwrap()
            .waiting_pushed,
        0,
        "once"
    );
    let pushes = sent(&fake, 1).await;
    let payload = pushes[0].payload();
    assert_eq!(payload["kind"], "terminal_waiting");
    assert_eq!(payload["terminalId"], id.as_str());
    assert!(payload.get("sessionId").is_none(), "{payload}");

    // A viewer keeps it from idling (and moves its end); the warning comes once, at
    // end - 4h; then the end.
    let mut keep = connect(&app.base, &id, "", &app.token).await.unwrap();
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(shown["viewers"], 1);
    let end = chrono::DateTime::parse_from_rfc3339(shown["expiresAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let warn_at = end - 4 * HOUR;
    assert_eq!(
        terminals
            .lifecycle_tick(warn_at - 1000)
            .await
            .unwrap()
            .warned,
        0
    );
    assert_eq!(terminals.lifecycle_tick(warn_at).await.unwrap().warned, 1);
    assert_eq!(
        terminals
            .lifecycle_tick(warn_at + 1000)
            .await
            .unwrap()
            .warned,
        0
    );
    let pushes = sent(&fake, 2).await;
    assert_eq!(pushes[1].payload()["kind"], "terminal_expiring");
    assert_eq!(
        pushes[1].collapse_id.as_deref(),
        Some(format!("expiring-{id}").as_str())
    );
    let report = terminals.lifecycle_tick(end).await.unwrap();
    assert_eq!(report.expired, 1);
    let shown = wait_for("the terminal to end", || async {
        let t = app.get_json(&format!("/api/terminals/{id}")).await;
        (t["state"] == "killed").then_some(t)
    })
    .await;
    assert_eq!(shown["endReason"], "expired");
    assert_eq!(keep.expect_end().await["reason"], "expired");
    let pushes = sent(&fake, 3).await;
    assert_eq!(pushes[2].payload()["kind"], "terminal_expired");

    // Idle: no viewer and no output for terminals.idle_timeout (1h).
    let idle = open_shell(&app).await;
    let viewer = connect(&app.base, &idle, "", &app.token).await.unwrap();
    let later = tether::store::now_ms() + HOUR + 60_000;
    assert_eq!(
        terminals.lifecycle_tick(later).await.unwrap().idle_ended,
        0,
        "a viewer is attached"
    );
    viewer.close().await;
    wait_for("the viewer to leave", || async {
        (app.get_json(&format!("/api/terminals/{idle}")).await["viewers"] == 0).then_some(())
    })
    .await;
    assert_eq!(terminals.lifecycle_tick(later).await.unwrap().idle_ended, 1);
    let shown = wait_for("the idle terminal to end", || async {
        let t = app.get_json(&format!("/api/terminals/{idle}")).await;
        (t["state"] == "killed").then_some(t)
    })
    .await;
    assert!(
        shown["endReason"].as_str().unwrap().starts_with("idle"),
        "{shown}"
    );
}

#[tokio::test]
async fn shutdown_ends_every_terminal_and_a_start_after_sigkill_stops_what_was_left() {
    // Graceful: the shell and its job are gone when the app has stopped.
    let app = spawn_app().await;
    let id = open_shell(&app).await;
    let pid = app.get_json(&format!("/api/terminals/{id}")).await["pid"]
        .as_u64()
        .unwrap() as u32;
    let app = app.restart().await;
    assert!(!pid_alive(pid));
    let shown = app.get_json(&format!("/api/terminals/{id}")).await;
    assert_eq!(
        (shown["state"].as_str(), shown["endReason"].as_str()),
        (Some("killed"), Some("tether shut down"))
    );
    drop(app);

    // SIGKILL: the kernel hangs the terminal up, but a job that ignores SIGHUP survives
    // until tether starts again.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path());
    std::fs::create_dir_all(dir.path().join("projects/demo")).unwrap();
    let server = start_server(&settings, dir.path());
    let token = server.token("me");
    let client = reqwest::Client::new();
    let t: Value = client
        .post(format!("{}/api/terminals", server.base))
        .bearer_auth(&token)
        .json(&json!({"program": "shell", "projectPath": dir.path().join("projects/demo"), "cols": 80, "rows": 24}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    let mut screen = connect(&server.base, &id, "", &token).await.unwrap();
    let job = start_job(&mut screen).await;
    let shell = t["pid"].as_u64().unwrap() as u32;
    server.kill();
    wait_gone(shell).await; // the kernel hung the terminal up: the shell went
    assert!(pid_alive(job), "the job survived the hang-up");
    let server = start_server(&settings, dir.path());
    wait_gone(job).await;
    let shown: Value = client
        .get(format!("{}/api/terminals/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["state"], "killed", "{shown}");
    assert!(
        shown["endReason"].as_str().unwrap().contains("earlier")
            || shown["endReason"].as_str().unwrap().contains("next start"),
        "{shown}"
    );
    drop(server);
}
