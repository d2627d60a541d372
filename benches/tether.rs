//! The proof in numbers: one run measures, side by side on the same machine, what tether
//! costs and what it saves, and prints one table (Markdown) with the targets beside it.
//!
//! - a warm turn through tether (HTTP in, reply out) against the same agent over its pipes;
//! - a new session's first message, cold and on a warm spare, against a warm turn;
//! - a new process per message (`--resume` each time, the design tether replaces) against
//!   one persistent process;
//! - turns per second with 1, 10 and 50 sessions at once, and the server's own memory;
//! - the push outbox: pushes per second to the gateway, and the delay from a stored reply
//!   to its push reaching the gateway;
//! - the server's memory before and after 10,000 turns (after 2,000 that fill the caches
//!   bounded by design).
//!
//! `cargo bench --bench tether` runs it with the fake CLI (which takes the real CLI's
//! 0.4 s to start); `cargo bench --bench tether -- --claude PATH` with the real Claude Code
//! CLI against a stand-in API; `--svg FILE` also draws turn time per design. Under
//! `cargo test` it runs each part once, small, as a smoke test.

#[path = "../tests/kit/mod.rs"]
mod kit;
#[path = "../tests/api/stand_in_api.rs"]
mod stand_in_api;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use serde_json::{json, Value};
use tether::{
    auth::Role,
    config::Settings,
    push::{self, fake::FakeGateway, Audience, PushEvent, PushKind},
    store::sessions,
    Application,
};

/// The fake CLI's start-up, as the real CLI's (0.3 to 0.5 s before it reads stdin).
const FAKE_START_MS: &str = "400";
const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// How much of each part to run.
struct Sizes {
    turns: usize,
    firsts: usize,
    per_message: usize,
    parallel: [usize; 3],
    parallel_turns: usize,
    growth_turns: usize,
    pushes: usize,
}

const FULL: Sizes = Sizes {
    turns: 300,
    firsts: 10,
    per_message: 10,
    parallel: [1, 10, 50],
    parallel_turns: 1000,
    growth_turns: 10_000,
    pushes: 20_000,
};
const SMOKE: Sizes = Sizes {
    turns: 3,
    firsts: 1,
    per_message: 1,
    parallel: [1, 2, 3],
    parallel_turns: 6,
    growth_turns: 6,
    pushes: 50,
};

/// Durations in ms, with percentiles.
struct Samples(Vec<f64>);

impl Samples {
    fn from(d: &[Duration]) -> Self {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        Samples(v)
    }
    fn pct(&self, p: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }
    fn p50(&self) -> f64 {
        self.pct(0.5)
    }
    fn p99(&self) -> f64 {
        self.pct(0.99)
    }
}

/// The agent to drive: the fake CLI, or the real one against a stand-in API.
struct Agent {
    program: String,
    env: Vec<(String, String)>,
    name: String,
    _api: Option<stand_in_api::StandInApi>,
}

impl Agent {
    async fn new(real: Option<String>, dir: &Path) -> Agent {
        let config = dir.join("claude-config").to_string_lossy().into_owned();
        match real {
            None => Agent {
                program: env!("CARGO_BIN_EXE_fake-claude").into(),
                env: vec![
                    ("CLAUDE_CONFIG_DIR".into(), config),
                    ("FAKE_CLAUDE_START_DELAY_MS".into(), FAKE_START_MS.into()),
                    // Its text streams at once: the figures are tether's cost, not a model's pace.
                    ("FAKE_CLAUDE_DELTA_MS".into(), "0".into()),
                ],
                name: format!("fake CLI ({FAKE_START_MS} ms start)"),
                _api: None,
            },
            Some(program) => {
                let api = stand_in_api::StandInApi::start().await;
                api.set_reply("OK.");
                let home = dir.join("home");
                std::fs::create_dir_all(&home).unwrap();
                let version = Command::new(&program)
                    .arg("--version")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                Agent {
                    env: vec![
                        ("ANTHROPIC_BASE_URL".into(), api.base_url()),
                        ("ANTHROPIC_API_KEY".into(), "bench-key".into()),
                        (
                            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                            "1".into(),
                        ),
                        ("DISABLE_AUTOUPDATER".into(), "1".into()),
                        ("DISABLE_TELEMETRY".into(), "1".into()),
                        ("HOME".into(), home.to_string_lossy().into_owned()),
                    ],
                    program,
                    name: format!("Claude Code {version}, stand-in API"),
                    _api: Some(api),
                }
            }
        }
    }

    /// The CLI for `conversation` (resumed or new) in `cwd`, speaking stream-json on pipes.
    fn spawn(&self, cwd: &Path, conversation: &str, resume: bool) -> Child {
        Command::new(&self.program)
            .args(tether::agent::claude::STREAM_ARGS)
            .args([
                if resume { "--resume" } else { "--session-id" },
                conversation,
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the agent starts")
    }
}

/// Writes one user line and reads until its `result`.
fn one_turn(stdin: &mut impl Write, stdout: &mut impl BufRead, text: &str) {
    let msg = json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": text}]}});
    writeln!(stdin, "{msg}").unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the agent ended");
        // The real CLI does not put `type` first in its `result` line.
        if line.contains(r#""type":"result""#)
            && serde_json::from_str::<Value>(&line).is_ok_and(|v| v["type"] == "result")
        {
            return;
        }
    }
}

/// Turns written straight to one persistent process (the floor).
fn direct(agent: &Agent, cwd: &Path, turns: usize) -> Vec<Duration> {
    let mut child = agent.spawn(cwd, &uuid::Uuid::new_v4().to_string(), false);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    one_turn(&mut stdin, &mut stdout, "warm up");
    let samples = (0..turns)
        .map(|i| {
            let start = Instant::now();
            one_turn(&mut stdin, &mut stdout, &format!("turn {i}"));
            start.elapsed()
        })
        .collect();
    drop(stdin);
    child.wait().unwrap();
    samples
}

/// A new process per message: each turn starts the CLI with `--resume`, sends one line,
/// reads its result and lets it exit.
fn per_message(agent: &Agent, cwd: &Path, turns: usize) -> Vec<Duration> {
    let id = uuid::Uuid::new_v4().to_string();
    let mut resume = false;
    let mut samples = Vec::new();
    for i in 0..=turns {
        let start = Instant::now();
        let mut child = agent.spawn(cwd, &id, resume);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        one_turn(&mut stdin, &mut stdout, &format!("message {i}"));
        if resume {
            samples.push(start.elapsed());
        }
        drop(stdin);
        child.wait().unwrap();
        resume = true;
    }
    samples
}

/// `tether serve` as its own process, so its memory is its own.
struct Server {
    process: kit::Server,
    base: String,
    token: String,
    admin: String,
    client: reqwest::Client,
}

impl Server {
    fn start(agent: &Agent, dir: &Path, warm_spares: usize) -> Server {
        let env: Vec<String> = agent
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        let config = dir.join("tether.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\nrequests_per_minute = 0\n\
                 [database]\npath = {:?}\n\
                 [agent]\ncommand = {:?}\nenv = {{ {} }}\n\
                 [sessions]\nmax_processes = 64\nwarm_spares = {warm_spares}\n\
                 max_active_per_owner = 1000\nkeep_awake = false\n\
                 [limits]\nnew_sessions_per_minute = 100000\n\
                 [projects]\nroots = [{:?}]\n[auth]\nsecret = {SECRET:?}\n\
                 [log]\nfilter = \"error\"\n",
                dir.join("data/tether.db"),
                agent.program,
                env.join(", "),
                dir.join("projects"),
            ),
        )
        .unwrap();
        // The server accepts only recorded tokens: `tether token` records them beside it.
        let process = kit::Launch::with_config(&config).start();
        Server {
            base: process.base.clone(),
            token: process.token("bench"),
            admin: process.token("admin"),
            client: reqwest::Client::new(),
            process,
        }
    }

    /// Sends a message and waits for its reply: (time, answer).
    async fn chat(&self, body: Value) -> (Duration, Value) {
        chat(&self.client, &self.base, &self.token, body).await
    }

    /// The server's own resident memory (its children are processes of their own).
    fn memory_mb(&self) -> f64 {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
        let mut sys = System::new();
        let pid = Pid::from_u32(self.process.pid());
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        sys.process(pid).map_or(0, |p| p.memory()) as f64 / (1024.0 * 1024.0)
    }

    /// Waits until a spare has waited `age` (it has finished starting).
    async fn spare_ready(&self, age: u64) {
        loop {
            let v: Value = self
                .client
                .get(format!("{}/api/sessions/active", self.base))
                .bearer_auth(&self.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ready = v["spares"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["claimed"] == false && s["ageSeconds"].as_u64().unwrap_or(0) >= age);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(self) {
        self.process.stop();
    }
}

async fn chat(client: &reqwest::Client, base: &str, token: &str, body: Value) -> (Duration, Value) {
    let start = Instant::now();
    let res = client
        .post(format!("{base}/api/chat"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    (start.elapsed(), v)
}

fn folder(dir: &Path, name: &str) -> String {
    let path = dir.join("projects").join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::canonicalize(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `turns` warm turns of one new session in `project`, one after the other.
async fn warm_turns(server: &Server, project: &str, turns: usize) -> Vec<Duration> {
    let ids = new_sessions(server, project, 1).await;
    let mut warm = Vec::with_capacity(turns);
    for i in 0..turns {
        let body = json!({"message": format!("turn {i}"), "sessionId": ids[0], "wait": true});
        warm.push(server.chat(body).await.0);
    }
    warm
}

/// New sessions in `project`, each with its first message answered; returns their ids.
async fn new_sessions(server: &Server, project: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (_, v) = server
            .chat(json!({"message": format!("hello {i}"), "projectPath": project, "wait": true}))
            .await;
        ids.push(v["sessionId"].as_str().unwrap().to_string());
    }
    ids
}

/// `turns` turns spread over `ids`, all sessions at once: (turn times, wall time).
async fn parallel(server: &Server, ids: &[String], turns: usize) -> (Vec<Duration>, Duration) {
    let each = turns.div_ceil(ids.len());
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, base, token, id) = (
                server.client.clone(),
                server.base.clone(),
                server.token.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(each);
                for i in 0..each {
                    let body = json!({"message": format!("t{i}"), "sessionId": id, "wait": true});
                    samples.push(chat(&client, &base, &token, body).await.0);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    (samples, start.elapsed())
}

/// The outbox in-process with the scripted gateway: pushes per second from enqueue to the
/// gateway's answer, and the delays (ms) from a stored reply to its push at the gateway.
async fn outbox(agent: &Agent, dir: &Path, pushes: usize, replies: usize) -> (f64, Vec<f64>) {
    let mut s = Settings::load(None).unwrap();
    s.server.bind = "127.0.0.1:0".parse().unwrap();
    s.server.requests_per_minute = 0;
    s.database.path = dir.join("outbox/tether.db");
    s.agent.command = agent.program.clone();
    s.agent.env = agent.env.iter().cloned().collect();
    s.projects.roots = vec![dir.join("projects")];
    s.sessions.keep_awake = false;
    s.sessions.warm_spares = 0;
    s.log.filter = "error".into();
    let gateway = Arc::new(FakeGateway::new());
    let app = Application::build_with_gateway(s, gateway.clone())
        .await
        .unwrap();
    let state = app.state().clone();
    let base = format!("http://{}", app.local_addr());
    let token = state
        .auth
        .issue_recorded(
            state.store.pool(),
            "bench",
            Role::User,
            Some("bench"),
            false,
        )
        .await
        .unwrap()
        .token;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let device = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let res = client
        .post(format!("{base}/api/devices"))
        .bearer_auth(&token)
        .json(&json!({"token": device, "environment": "sandbox", "name": "phone"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let project = folder(dir, "outbox");
    let (_, first) = chat(
        &client,
        &base,
        &token,
        json!({"message": "hello", "projectPath": project, "wait": true}),
    )
    .await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    while gateway.sent_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Throughput: rows committed in batches (as turns would), the worker woken after each.
    let session = sessions::get(state.store.pool(), &id)
        .await
        .unwrap()
        .unwrap();
    let audience = Audience::of(&session);
    let already = gateway.sent_count();
    let start = Instant::now();
    for batch in (0..pushes).collect::<Vec<_>>().chunks(500) {
        let mut tx = state.store.begin_write().await.unwrap();
        for i in batch {
            let n = 1_000_000 + *i as i64;
            let event = PushEvent::new(PushKind::TurnCompleted, &audience, Some(n), "Done.");
            push::enqueue(&mut tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
        state.push.wake();
    }
    while gateway.sent_count() < already + pushes {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = pushes as f64 / start.elapsed().as_secs_f64();

    // Delay: each reply's stored time against the moment its push reached the gateway.
    let mut stored = Vec::new();
    for i in 0..replies {
        let (_, v) = chat(
            &client,
            &base,
            &token,
            json!({"message": format!("r{i}"), "sessionId": id, "wait": true}),
        )
        .await;
        let reply = &v["reply"];
        let at = chrono::DateTime::parse_from_rfc3339(reply["createdAt"].as_str().unwrap())
            .unwrap()
            .timestamp_micros() as f64
            / 1e3;
        stored.push((reply["id"].as_i64().unwrap(), at));
    }
    let mut delays = Vec::new();
    for (reply, at) in stored {
        let sent = loop {
            let found = gateway
                .sent()
                .into_iter()
                .find(|p| p.payload()["messageId"] == reply);
            if let Some(p) = found {
                break p.at;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let sent_ms = sent.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3;
        delays.push((sent_ms - at).max(0.0));
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    (rate, delays)
}

/// One line of the table.
struct Row {
    what: String,
    measured: String,
    against: String,
    ratio: String,
    target: String,
}

fn row(
    what: impl Into<String>,
    measured: String,
    against: String,
    ratio: String,
    target: String,
) -> Row {
    Row {
        what: what.into(),
        measured,
        against,
        ratio,
        target,
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn machine() -> String {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_all();
    sys.refresh_memory();
    let cpu = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    format!(
        "{} {} · {} · {} logical cores · {:.0} GiB",
        sysinfo::System::name().unwrap_or_default(),
        sysinfo::System::os_version().unwrap_or_default(),
        cpu,
        sys.cpus().len(),
        sys.total_memory() as f64 / (1u64 << 30) as f64
    )
}

/// Bars of turn time (p50, with p99 above it) per design.
fn draw(path: &Path, agent: &str, bars: &[(&str, &Samples)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    // A log scale: the designs differ by orders of magnitude.
    let top = bars.iter().map(|(_, s)| s.p99()).fold(1.0, f64::max) * 3.0;
    let bottom = bars.iter().map(|(_, s)| s.p50()).fold(top, f64::min) / 3.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Turn time per design ({agent})"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0..bars.len()).into_segmented(), (bottom..top).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ms per turn, log scale (bar: p50, line: p99)")
        .y_label_formatter(&|v| format!("{v}"))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map_or("", |b| b.0).to_string(),
            _ => String::new(),
        })
        .draw()
        .unwrap();
    let colours = [
        RGBColor(200, 80, 60),
        RGBColor(90, 140, 200),
        RGBColor(60, 160, 90),
    ];
    for (i, (_, s)) in bars.iter().enumerate() {
        let style = colours[i % colours.len()].filled();
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), bottom),
                    (SegmentValue::Exact(i + 1), s.p50()),
                ],
                style,
            )))
            .unwrap();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), s.p50()),
                    (SegmentValue::CenterOf(i), s.p99()),
                ],
                BLACK.stroke_width(2),
            )))
            .unwrap();
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.2} ms", s.p50()),
                (SegmentValue::CenterOf(i), s.p99() * 1.4),
                ("sans-serif", 14),
            )))
            .unwrap();
    }
    root.present().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let full = args.iter().any(|a| a == "--bench");
    let sizes = if full { FULL } else { SMOKE };
    let real = value("--claude");
    let svg = value("--svg").map(PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent = rt.block_on(Agent::new(real.clone(), dir.path()));
    // The real CLI holds 160 MB or more per process: fewer sessions at once.
    let parallel_sizes = if real.is_some() && full {
        [1, 5, 10]
    } else {
        sizes.parallel
    };
    let growth_turns = if real.is_some() && full {
        1000
    } else {
        sizes.growth_turns
    };
    let began = Instant::now();
    eprintln!("agent: {}", agent.name);

    let pipes_cwd = PathBuf::from(folder(dir.path(), "pipes"));
    eprintln!("straight over the pipes…");
    let direct = Samples::from(&direct(&agent, &pipes_cwd, sizes.turns));
    if value("--only").as_deref() == Some("warm") {
        // The first figure alone, for working on tether's cost per turn.
        let warm = rt.block_on(async {
            let server = Server::start(&agent, dir.path(), 0);
            let warm = warm_turns(&server, &folder(dir.path(), "bench"), sizes.turns).await;
            server.stop();
            Samples::from(&warm)
        });
        println!(
            "warm turn p50 / p99: through tether {:.2} / {:.2} ms, over the pipes {:.2} / {:.2} ms, \
             tether adds {:+.2} ms at p50",
            warm.p50(),
            warm.p99(),
            direct.p50(),
            direct.p99(),
            warm.p50() - direct.p50()
        );
        return;
    }
    eprintln!("a new process per message…");
    let per_message = Samples::from(&per_message(&agent, &pipes_cwd, sizes.per_message));

    let mut rows = Vec::new();
    let mut memory_rows = Vec::new();
    let (warm, cold, spare, rate, delays) = rt.block_on(async {
        // Cold first messages, on a server that keeps no spare.
        eprintln!("first messages, cold…");
        let server = Server::start(&agent, dir.path(), 0);
        let mut cold = Vec::new();
        for i in 0..sizes.firsts {
            let project = folder(dir.path(), &format!("cold-{i}"));
            let body = json!({"message": "first", "projectPath": project, "wait": true});
            cold.push(server.chat(body).await.0);
        }
        server.stop();

        eprintln!("warm turns and first messages on a spare…");
        let server = Server::start(&agent, dir.path(), 1);
        let project = folder(dir.path(), "bench");
        let warm = warm_turns(&server, &project, sizes.turns).await;
        let mut spare = Vec::new();
        for _ in 0..sizes.firsts {
            server.spare_ready(1).await;
            let body = json!({"message": "first", "projectPath": project, "wait": true});
            spare.push(server.chat(body).await.0);
        }

        eprintln!("sessions in parallel…");
        let idle_mb = server.memory_mb();
        for n in parallel_sizes {
            let ids = new_sessions(&server, &project, n).await;
            let (samples, wall) = parallel(&server, &ids, sizes.parallel_turns).await;
            let turns_per_s = samples.len() as f64 / wall.as_secs_f64();
            let mb = server.memory_mb();
            let s = Samples::from(&samples);
            memory_rows.push((n, turns_per_s, s.p50(), mb));
            // Those sessions go, so the next step starts from the same place.
            for id in ids {
                server
                    .client
                    .delete(format!("{}/api/sessions/{id}", server.base))
                    .bearer_auth(&server.token)
                    .send()
                    .await
                    .unwrap();
            }
        }

        eprintln!("{growth_turns} turns for memory growth…");
        let growth_sessions = 10.min(growth_turns);
        let ids = new_sessions(&server, &project, growth_sessions).await;
        // A warm-up first fills what is bounded by design (each session's live-event ring,
        // SQLite's page cache), so that what grows after it is what would grow for ever.
        let warm_up = growth_turns / 5;
        parallel(&server, &ids, warm_up).await;
        let before = server.memory_mb();
        parallel(&server, &ids, growth_turns).await;
        let after = server.memory_mb();
        server.stop();
        rows.push(row(
            format!(
                "server memory over {growth_turns} turns ({growth_sessions} sessions, after {warm_up} to warm up)"
            ),
            format!("{after:.1} MB after"),
            format!("{before:.1} MB before ({idle_mb:.1} MB idle)"),
            format!("{:+.1}%", (after - before) / before * 100.0),
            format!("growth < 5%: {}", verdict((after - before) / before < 0.05)),
        ));

        eprintln!("the push outbox…");
        let (rate, delays) = outbox(&agent, dir.path(), sizes.pushes, sizes.turns.min(200)).await;
        (
            Samples::from(&warm),
            Samples::from(&cold),
            Samples::from(&spare),
            rate,
            delays,
        )
    });

    let adds = warm.p50() - direct.p50();
    let mut table = vec![
        row(
            "warm turn, p50 / p99: through tether vs over the pipes",
            format!("{:.2} / {:.2} ms", warm.p50(), warm.p99()),
            format!("{:.2} / {:.2} ms", direct.p50(), direct.p99()),
            format!("{:.2}x (+{adds:.2} ms)", warm.p50() / direct.p50()),
            format!("adds ≤ 1 ms at p50: {}", verdict(adds <= 1.0)),
        ),
        row(
            "first message of a new session, cold (p50)",
            format!("{:.1} ms", cold.p50()),
            format!("{:.2} ms warm turn", warm.p50()),
            format!("{:.1}x", cold.p50() / warm.p50()),
            String::new(),
        ),
        row(
            "first message of a new session, warm spare (p50)",
            format!("{:.1} ms", spare.p50()),
            format!("{:.2} ms warm turn", warm.p50()),
            format!("{:.2}x", spare.p50() / warm.p50()),
            format!(
                "≤ 1.5x a warm turn: {}",
                verdict(spare.p50() <= 1.5 * warm.p50())
            ),
        ),
        row(
            "a new process per message (--resume) vs one persistent process (p50)",
            format!("{:.1} ms", per_message.p50()),
            format!("{:.2} ms", direct.p50()),
            format!("{:.0}x", per_message.p50() / direct.p50()),
            String::new(),
        ),
    ];
    let one = memory_rows.first().map_or(1.0, |r| r.1);
    for (n, turns_per_s, p50, mb) in &memory_rows {
        let last = *n == *parallel_sizes.last().unwrap();
        table.push(row(
            format!("{n} session(s) at once: turns/s, server memory"),
            format!("{turns_per_s:.0} turns/s (p50 {p50:.2} ms), {mb:.1} MB"),
            format!("{one:.0} turns/s with 1"),
            format!("{:.2}x", turns_per_s / one),
            if last && *n == 50 {
                format!("memory < 30 MB: {}", verdict(*mb < 30.0))
            } else {
                String::new()
            },
        ));
    }
    table.append(&mut rows);
    let delays = Samples(delays).sorted();
    table.push(row(
        "push outbox: pushes/s to the scripted gateway",
        format!("{rate:.0}/s"),
        String::new(),
        String::new(),
        format!("≥ 10,000/s: {}", verdict(rate >= 10_000.0)),
    ));
    table.push(row(
        "stored reply → its push at the gateway, p50 / p99",
        format!("{:.1} / {:.1} ms", delays.p50(), delays.p99()),
        String::new(),
        String::new(),
        format!("≤ 5 ms: {}", verdict(delays.p50() <= 5.0)),
    ));

    println!("\ntether benchmark · {} · {}", agent.name, machine());
    println!(
        "{} turns per series, {} first messages, run in {:.0} s\n",
        sizes.turns,
        sizes.firsts,
        began.elapsed().as_secs_f64()
    );
    println!("| measure | measured | against | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &table {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.measured, r.against, r.ratio, r.target
        );
    }
    if let Some(path) = svg {
        let bars = [
            ("new process per message", &per_message),
            ("persistent, over pipes", &direct),
            ("persistent, through tether", &warm),
        ];
        draw(&path, &agent.name, &bars);
        println!("\nchart: {}", path.display());
    }
}

impl Samples {
    fn sorted(mut self) -> Self {
        self.0.sort_by(f64::total_cmp);
        self
    }
}
