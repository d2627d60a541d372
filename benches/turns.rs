//! What tether adds to a turn. One run measures, side by side on the same machine:
//! - direct: a turn written straight to a persistent CLI process over pipes (the floor);
//! - warm: the same turn through tether (HTTP, SQLite writes, actor, event log), one session;
//! - cold: a turn in a new session (a process starts for it);
//! - parallel: warm turns in several sessions at once (throughput).
//!
//! The CLI is the project's fake (it answers at once), so the figures are tether's own cost.
//! `cargo bench --bench turns` runs it; under `cargo test` it does one turn of each as a smoke test.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tether::{auth::Role, config::Settings, Application};

struct Figures {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Figures {
    fn mean(&self) -> f64 {
        self.samples.iter().map(Duration::as_secs_f64).sum::<f64>() / self.samples.len() as f64
            * 1e3
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn print(&self) {
        println!(
            "{:<9} n={:<4} mean {:>8.3} ms   p50 {:>8.3} ms   p99 {:>8.3} ms",
            self.name,
            self.samples.len(),
            self.mean(),
            self.pct(0.5),
            self.pct(0.99)
        );
    }
}

/// Turns written straight to one fake CLI process.
fn direct(turns: usize, dir: &std::path::Path) -> Figures {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-claude"))
        .args(tether::agent::claude::STREAM_ARGS)
        .args(["--session-id", &uuid::Uuid::new_v4().to_string()])
        .env("CLAUDE_CONFIG_DIR", dir.join("direct-config"))
        // The fake streams its text at once: the figures are tether's cost, not a model's pace.
        .env("FAKE_CLAUDE_DELTA_MS", "0")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake CLI starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut samples = Vec::with_capacity(turns);
    let mut line = String::new();
    for i in 0..turns {
        let msg = json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": format!("turn {i}")}]}});
        let start = Instant::now();
        writeln!(stdin, "{msg}").unwrap();
        loop {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            if line.starts_with(r#"{"type":"result""#) {
                break;
            }
        }
        samples.push(start.elapsed());
    }
    drop(stdin);
    child.wait().unwrap();
    Figures {
        name: "direct",
        samples,
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (turns, cold, sessions) = if full { (200, 20, 4) } else { (1, 1, 2) };
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("projects/bench");
    std::fs::create_dir_all(&project).unwrap();

    let direct = direct(turns, dir.path());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (warm, cold, parallel, wall, http, accept) = rt.block_on(async {
        let mut s = Settings::load(None).unwrap();
        s.server.bind = "127.0.0.1:0".parse().unwrap();
        // The benchmark drives one token far past any per-token request rate.
        s.server.requests_per_minute = 0;
        s.database.path = dir.path().join("data/tether.db");
        s.agent.command = env!("CARGO_BIN_EXE_fake-claude").into();
        s.agent.env.insert(
            "CLAUDE_CONFIG_DIR".into(),
            dir.path().join("config").to_string_lossy().into(),
        );
        s.agent
            .env
            .insert("FAKE_CLAUDE_DELTA_MS".into(), "0".into());
        s.projects.roots = vec![dir.path().join("projects")];
        s.sessions.max_processes = sessions + 2;
        // Every cold sample is a new session.
        s.limits.new_sessions_per_minute = 1000;
        s.sessions.max_active_per_owner = 1000;
        s.log.filter = "error".into();
        let app = Application::build(s).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let token = app.state().auth.issue("bench", Role::User).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let project = project.to_string_lossy().to_string();

        let (_, first) = chat(
            &client,
            &base,
            &token,
            json!({"message": "warm up", "projectPath": project, "wait": true}),
        )
        .await;
        let id = first["sessionId"].as_str().unwrap().to_string();
        // Where a warm turn's time goes: an HTTP round trip with no work, and accepting a
        // message without waiting for its turn.
        let mut http = Vec::with_capacity(turns);
        for _ in 0..turns {
            let start = Instant::now();
            let res = client.get(format!("{base}/health")).send().await.unwrap();
            res.bytes().await.unwrap();
            http.push(start.elapsed());
        }
        let mut accept = Vec::with_capacity(turns);
        for i in 0..turns {
            let start = Instant::now();
            let res = client
                .post(format!("{base}/api/chat"))
                .bearer_auth(&token)
                .json(&json!({"message": format!("queued {i}"), "sessionId": id}))
                .send()
                .await
                .unwrap();
            let v: Value = res.json().await.unwrap();
            accept.push(start.elapsed());
            // Let the turn end before the next accept, so only accepting is measured.
            let m = v["messageId"].as_i64().unwrap();
            loop {
                let msgs: Value = client
                    .get(format!("{base}/api/sessions/{id}/messages?after={m}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if !msgs["messages"].as_array().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut warm = Vec::with_capacity(turns);
        for i in 0..turns {
            warm.push(
                chat(
                    &client,
                    &base,
                    &token,
                    json!({"message": format!("turn {i}"), "sessionId": id, "wait": true}),
                )
                .await
                .0,
            );
        }
        let mut cold_samples = Vec::with_capacity(cold);
        for i in 0..cold {
            cold_samples.push(
                chat(
                    &client,
                    &base,
                    &token,
                    json!({"message": format!("new {i}"), "projectPath": project, "wait": true}),
                )
                .await
                .0,
            );
        }
        // Several sessions at once, each warm.
        let mut ids = Vec::new();
        for i in 0..sessions {
            let (_, v) = chat(
                &client,
                &base,
                &token,
                json!({"message": format!("p{i}"), "projectPath": project, "wait": true}),
            )
            .await;
            ids.push(v["sessionId"].as_str().unwrap().to_string());
        }
        let client = Arc::new(client);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for id in ids {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                for i in 0..turns {
                    samples.push(
                        chat(
                            &client,
                            &base,
                            &token,
                            json!({"message": format!("t{i}"), "sessionId": id, "wait": true}),
                        )
                        .await
                        .0,
                    );
                }
                samples
            }));
        }
        let mut parallel = Vec::new();
        for t in tasks {
            parallel.extend(t.await.unwrap());
        }
        let wall = start.elapsed();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        (warm, cold_samples, parallel, wall, http, accept)
    });

    let warm = Figures {
        name: "warm",
        samples: warm,
    };
    let cold = Figures {
        name: "cold",
        samples: cold,
    };
    let parallel_figs = Figures {
        name: "parallel",
        samples: parallel,
    };
    let http = Figures {
        name: "http",
        samples: http,
    };
    let accept = Figures {
        name: "accept",
        samples: accept,
    };
    println!("turns through tether vs straight to the CLI (fake CLI answers at once)");
    println!("(http: GET /health round trip; accept: POST /api/chat answered 202)");
    for f in [&direct, &http, &accept, &warm, &cold, &parallel_figs] {
        f.print();
    }
    println!(
        "tether adds {:.3} ms at p50 and {:.3} ms at p99 to a warm turn (warm/direct {:.1}x at p50); cold/warm {:.1}x",
        warm.pct(0.5) - direct.pct(0.5),
        warm.pct(0.99) - direct.pct(0.99),
        warm.pct(0.5) / direct.pct(0.5),
        cold.mean() / warm.mean()
    );
    let one = 1e3 / warm.mean();
    let many = parallel_figs.samples.len() as f64 / wall.as_secs_f64();
    println!(
        "parallel: {sessions} sessions x {turns} turns in {:.3} s = {many:.0} turns/s; one session in sequence: {one:.0} turns/s; scaling {:.2}x",
        wall.as_secs_f64(),
        many / one
    );
}
