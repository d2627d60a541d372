//! The agent the benchmark drives (the fake CLI, or the real one against the stand-in API),
//! and the same agent driven straight over its pipes: the floor tether is measured against.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::stand_in_api::StandInApi;

/// The fake CLI's start-up, as the real CLI's (0.3 to 0.5 s before it reads stdin).
const FAKE_START_MS: &str = "400";

/// The agent to drive: the fake CLI, or the real one against a stand-in API.
pub struct Agent {
    pub program: String,
    pub env: Vec<(String, String)>,
    pub name: String,
    _api: Option<StandInApi>,
}

impl Agent {
    pub async fn new(real: Option<String>, dir: &Path) -> Agent {
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
                let api = StandInApi::start().await;
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

/// One persistent process of the agent, written to and read from directly.
pub struct Pipes {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    turns: usize,
}

impl Pipes {
    /// A new conversation in `cwd`, its first turn (the process's start) done.
    pub fn start(agent: &Agent, cwd: &Path) -> Pipes {
        let mut child = agent.spawn(cwd, &uuid::Uuid::new_v4().to_string(), false);
        let mut pipes = Pipes {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            turns: 0,
        };
        pipes.turn();
        pipes
    }

    /// One turn: how long from writing its line to reading its `result`.
    pub fn turn(&mut self) -> Duration {
        self.turns += 1;
        let start = Instant::now();
        one_turn(
            &mut self.stdin,
            &mut self.stdout,
            &format!("turn {}", self.turns),
        );
        start.elapsed()
    }

    /// Closes stdin and waits for the process to end.
    pub fn stop(self) {
        let Pipes {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        child.wait().unwrap();
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

/// A new process per message: each turn starts the CLI with `--resume`, sends one line,
/// reads its result and lets it exit.
pub fn per_message(agent: &Agent, cwd: &Path, turns: usize) -> Vec<Duration> {
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
