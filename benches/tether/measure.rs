//! One function per measurement of the table; each starts what it measures and stops it.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use serde_json::json;
use tether::{
    auth::Role,
    config::Settings,
    push::{self, fake::FakeGateway, Audience, PushEvent, PushKind},
    store::sessions,
    Application,
};

use crate::{
    agent::{Agent, Pipes},
    report::Samples,
    server::{chat, folder, Server, Usage},
};

/// Warm turns through tether and straight over the pipes of the same agent.
pub struct Warm {
    pub pipes: Samples,
    pub tether: Samples,
    /// Each round's tether turn less its pipes turn.
    pub added: Samples,
    /// Through the tether given with `--baseline`, in the same rounds.
    pub baseline: Option<(Samples, Samples)>,
    /// Each server's CPU time and context switches over the rounds (tether, the baseline).
    pub usage: Vec<Option<Usage>>,
}

/// `turns` rounds of one warm turn each over the pipes, through tether (and through the
/// baseline tether), in an order that turns round by round, so that what the machine does
/// meanwhile weighs on all alike; each design's first turn after its start is left out.
/// Both are driven alike from this thread with blocking reads and writes: the pipes, and
/// one kept-alive HTTP connection per server.
pub async fn warm(agent: &Agent, dir: &Path, turns: usize, baseline: Option<&str>) -> Warm {
    let start = |binary: &str, name: &str| {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let server = Server::start_binary(binary, agent, &dir, 0);
        (server, folder(&dir, "bench"))
    };
    let mut servers = vec![start(env!("CARGO_BIN_EXE_tether"), "tether")];
    servers.extend(baseline.map(|b| start(b, "baseline")));
    let mut sessions = Vec::new();
    for (server, project) in &servers {
        let id = server.new_sessions(project, 1).await.remove(0);
        let mut client = server.blocking_client();
        client.turn(&id, "warm up");
        sessions.push((client, id));
    }
    let mut pipes = Pipes::start(agent, Path::new(&folder(dir, "pipes")));
    pipes.turn();
    let designs = 1 + servers.len();
    let before: Vec<_> = servers.iter().map(|(s, _)| s.usage()).collect();
    let mut times = vec![Vec::with_capacity(turns); designs];
    for round in 0..turns {
        for k in 0..designs {
            let design = (round + k) % designs;
            let took = match design {
                0 => pipes.turn(),
                n => {
                    let (client, id) = &mut sessions[n - 1];
                    client.turn(id, &format!("turn {round}"))
                }
            };
            times[design].push(took);
        }
    }
    pipes.stop();
    let mut usage = Vec::new();
    for ((server, _), before) in servers.into_iter().zip(before) {
        usage.push(
            server
                .usage()
                .zip(before)
                .map(|(after, before)| after - before),
        );
        server.stop();
    }
    let added = |design: usize| {
        let d = times[design].iter().zip(&times[0]);
        Samples::of_ms(
            d.map(|(t, p)| (t.as_secs_f64() - p.as_secs_f64()) * 1e3)
                .collect(),
        )
    };
    Warm {
        added: added(1),
        baseline: (designs > 2).then(|| (Samples::from(&times[2]), added(2))),
        pipes: Samples::from(&times[0]),
        tether: Samples::from(&times[1]),
        usage,
    }
}

/// First messages of new sessions, each in a folder of its own, on a server that keeps no
/// spare: each waits for its CLI to start.
pub async fn cold_firsts(agent: &Agent, dir: &Path, n: usize) -> Samples {
    let server = Server::start(agent, dir, 0);
    let mut cold = Vec::new();
    for i in 0..n {
        let project = folder(dir, &format!("cold-{i}"));
        let body = json!({"message": "first", "projectPath": project, "wait": true});
        cold.push(server.chat(body).await.0);
    }
    server.stop();
    Samples::from(&cold)
}

/// First messages of new sessions in `project`, each once a warm spare is ready there.
pub async fn spare_firsts(server: &Server, project: &str, n: usize) -> Samples {
    let mut spare = Vec::new();
    for _ in 0..n {
        server.spare_ready(project, 1).await;
        let body = json!({"message": "first", "projectPath": project, "wait": true});
        spare.push(server.chat(body).await.0);
    }
    Samples::from(&spare)
}

/// Sessions at once: for each count, (sessions, turns/s, turn p50, server memory MB).
pub async fn at_once(
    server: &Server,
    project: &str,
    counts: [usize; 3],
    turns: usize,
) -> Vec<(usize, f64, f64, f64)> {
    let mut rows = Vec::new();
    for n in counts {
        let ids = server.new_sessions(project, n).await;
        let (samples, wall) = parallel(server, &ids, turns).await;
        let turns_per_s = samples.len() as f64 / wall.as_secs_f64();
        rows.push((
            n,
            turns_per_s,
            Samples::from(&samples).p50(),
            server.memory_mb(),
        ));
        // Those sessions go, so the next step starts from the same place.
        for id in ids {
            server.delete(&id).await;
        }
    }
    rows
}

/// The server's memory (MB) before and after `turns` turns over `sessions` sessions, after
/// a warm-up of `warm_up` turns that fills what is bounded by design (each session's
/// live-event ring, SQLite's page cache), so that what grows after it would grow for ever.
pub async fn growth(
    server: &Server,
    project: &str,
    sessions: usize,
    warm_up: usize,
    turns: usize,
) -> (f64, f64) {
    let ids = server.new_sessions(project, sessions).await;
    parallel(server, &ids, warm_up).await;
    let before = server.memory_mb();
    parallel(server, &ids, turns).await;
    (before, server.memory_mb())
}

/// `turns` turns spread over `ids`, all sessions at once: (turn times, wall time).
async fn parallel(server: &Server, ids: &[String], turns: usize) -> (Vec<Duration>, Duration) {
    let each = turns.div_ceil(ids.len());
    let start = std::time::Instant::now();
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
pub async fn outbox(agent: &Agent, dir: &Path, pushes: usize, replies: usize) -> (f64, Samples) {
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
    let start = std::time::Instant::now();
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
    (rate, Samples::of_ms(delays))
}
