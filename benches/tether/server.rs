//! `tether serve` as its own process (so its memory is its own), and the requests the
//! benchmark sends it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{agent::Agent, kit};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// A running `tether serve`, with a user's and an admin's token.
pub struct Server {
    process: kit::Server,
    pub base: String,
    pub token: String,
    admin: String,
    pub client: reqwest::Client,
}

impl Server {
    /// The tether built with the benchmark, in `dir`, driving `agent`.
    pub fn start(agent: &Agent, dir: &Path, warm_spares: usize) -> Server {
        Server::start_binary(env!("CARGO_BIN_EXE_tether"), agent, dir, warm_spares)
    }

    /// `binary` (a tether built elsewhere, to compare) serving from `dir`.
    pub fn start_binary(binary: &str, agent: &Agent, dir: &Path, warm_spares: usize) -> Server {
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
        let process = kit::Launch::with_config(&config).binary(binary).start();
        Server {
            base: process.base.clone(),
            token: process.token("bench"),
            admin: process.token("admin"),
            client: reqwest::Client::new(),
            process,
        }
    }

    /// Sends a message and waits for its reply: (time, answer).
    pub async fn chat(&self, body: Value) -> (Duration, Value) {
        chat(&self.client, &self.base, &self.token, body).await
    }

    /// New sessions in `project`, each with its first message answered; returns their ids.
    pub async fn new_sessions(&self, project: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let (_, v) = self
                .chat(
                    json!({"message": format!("hello {i}"), "projectPath": project, "wait": true}),
                )
                .await;
            ids.push(v["sessionId"].as_str().unwrap().to_string());
        }
        ids
    }

    /// A client of this server that does nothing else: one kept-alive connection, written
    /// and read on the caller's thread, as the pipes are (see [`Client::turn`]).
    pub fn blocking_client(&self) -> Client {
        let addr = self.base.trim_start_matches("http://");
        let stream = TcpStream::connect(addr).expect("connect to tether");
        stream.set_nodelay(true).unwrap();
        Client {
            host: addr.to_string(),
            token: self.token.clone(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Ends a session (its process goes).
    pub async fn delete(&self, id: &str) {
        self.client
            .delete(format!("{}/api/sessions/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
    }

    /// The server's own resident memory (its children are processes of their own).
    pub fn memory_mb(&self) -> f64 {
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

    /// The CPU time the server has used and the context switches of its threads, where
    /// the system tells them (Linux's `/proc`).
    pub fn usage(&self) -> Option<Usage> {
        let proc = format!("/proc/{}", self.process.pid());
        let stat = std::fs::read_to_string(format!("{proc}/stat")).ok()?;
        // After the command's name (in parentheses): utime and stime are fields 12 and 13.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let mut switches = 0;
        for task in std::fs::read_dir(format!("{proc}/task")).ok()?.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        // The kernel counts CPU time in ticks of 1/100 s.
        Some(Usage {
            cpu_ms: ticks * 10.0,
            switches,
        })
    }

    /// Waits until a spare in `project` has waited `age` (it has finished starting).
    pub async fn spare_ready(&self, project: &str, age: u64) {
        kit::wait_for("a spare that finished starting", || async {
            let v = self.process.get(&self.admin, "/api/sessions/active").await;
            let ready = v["spares"].as_array()?.iter().any(|s| {
                s["claimed"] == false
                    && s["projectPath"] == project
                    && s["ageSeconds"].as_u64().unwrap_or(0) >= age
            });
            ready.then_some(())
        })
        .await
    }

    pub fn stop(self) {
        self.process.stop();
    }
}

/// One HTTP/1.1 connection to tether, used from one thread with blocking reads and
/// writes: what a turn through tether costs with no client runtime between them.
pub struct Client {
    host: String,
    token: String,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// One turn of session `id` (`POST /api/chat` with `wait`), answered `completed`: how
    /// long from writing the request to reading the whole answer.
    pub fn turn(&mut self, id: &str, text: &str) -> Duration {
        let body = json!({"message": text, "sessionId": id, "wait": true}).to_string();
        let request = format!(
            "POST /api/chat HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        );
        let start = Instant::now();
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "tether hung up"
            );
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut answer = vec![0; length.expect("a content-length")];
        self.reader.read_exact(&mut answer).unwrap();
        let took = start.elapsed();
        let v: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["status"], "completed", "{v}");
        took
    }
}

/// What a server used so far: CPU time (ms) and context switches (all its threads).
#[derive(Clone, Copy)]
pub struct Usage {
    pub cpu_ms: f64,
    pub switches: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, before: Usage) -> Usage {
        Usage {
            cpu_ms: self.cpu_ms - before.cpu_ms,
            switches: self.switches - before.switches,
        }
    }
}

/// `POST /api/chat` with `wait`, answered `completed`: (time, answer).
pub async fn chat(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: Value,
) -> (Duration, Value) {
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

/// A project folder `name` under `dir`'s projects root, created; its canonical path.
pub fn folder(dir: &Path, name: &str) -> String {
    let path = dir.join("projects").join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::canonicalize(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
