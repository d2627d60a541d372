//! The proof in numbers: one run measures, side by side on the same machine, what tether
//! costs and what it saves, and prints one table (Markdown) with the targets beside it.
//!
//! - a warm turn through tether (HTTP in, reply out) against the same agent over its pipes,
//!   paired and interleaved (one turn of each per round, the order turning each round);
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
//! CLI against a stand-in API; `--svg FILE` also draws turn time per design; `--only warm`
//! measures the warm turn alone; `--baseline BINARY` also runs another build of tether in
//! the warm turn's rounds (e.g. the one before a change). Under `cargo test` it runs each
//! part once, small, as a smoke test.

#[path = "../../tests/kit/mod.rs"]
mod kit;
#[path = "../../tests/api/stand_in_api.rs"]
mod stand_in_api;

mod agent;
mod measure;
mod report;
mod server;

use std::path::{Path, PathBuf};

use agent::{per_message, Agent};
use measure::Warm;
use report::{row, verdict, Row, Samples};
use server::{folder, Server};

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
/// The real CLI holds 160 MB or more per process: fewer sessions at once, fewer turns.
const FULL_REAL: Sizes = Sizes {
    parallel: [1, 5, 10],
    growth_turns: 1000,
    ..FULL
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

/// What the command line asks for.
struct Options {
    sizes: Sizes,
    claude: Option<String>,
    svg: Option<PathBuf>,
    only_warm: bool,
    baseline: Option<String>,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            let at = args.iter().position(|a| a == flag)?;
            args.get(at + 1).cloned()
        };
        // `cargo bench` passes `--bench`; `cargo test` does not.
        let full = args.iter().any(|a| a == "--bench");
        let claude = value("--claude");
        Options {
            sizes: match (full, claude.is_some()) {
                (false, _) => SMOKE,
                (true, false) => FULL,
                (true, true) => FULL_REAL,
            },
            claude,
            svg: value("--svg").map(PathBuf::from),
            only_warm: value("--only").as_deref() == Some("warm"),
            baseline: value("--baseline"),
        }
    }
}

fn main() {
    let opts = Options::parse();
    let sizes = &opts.sizes;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let began = std::time::Instant::now();
    let agent = rt.block_on(Agent::new(opts.claude.clone(), dir));
    eprintln!("agent: {}", agent.name);

    eprintln!("warm turns, over the pipes and through tether in turn…");
    let warm = rt.block_on(measure::warm(
        &agent,
        dir,
        sizes.turns,
        opts.baseline.as_deref(),
    ));
    let mut table = warm_rows(&warm, opts.baseline.as_deref());
    if opts.only_warm {
        report::print_table(
            &agent.name,
            &format!("{} rounds", warm.tether.len()),
            &table,
        );
        return;
    }
    eprintln!("a new process per message…");
    let pipes_cwd = PathBuf::from(folder(dir, "pipes"));
    let per_message = Samples::from(&per_message(&agent, &pipes_cwd, sizes.per_message));
    table.push(row(
        "a new process per message (--resume) vs one persistent process (p50)",
        format!("{:.1} ms", per_message.p50()),
        format!("{:.2} ms", warm.pipes.p50()),
        format!("{:.0}x", per_message.p50() / warm.pipes.p50()),
        String::new(),
    ));
    eprintln!("first messages, cold…");
    let cold = rt.block_on(measure::cold_firsts(&agent, dir, sizes.firsts));
    table.extend(rt.block_on(on_a_server_with_a_spare(&agent, dir, sizes, &warm, &cold)));
    eprintln!("the push outbox…");
    let replies = sizes.turns.min(200);
    let (rate, delays) = rt.block_on(measure::outbox(&agent, dir, sizes.pushes, replies));
    table.extend(outbox_rows(rate, &delays));

    let summary = format!(
        "{} turns per series, {} first messages, run in {:.0} s",
        sizes.turns,
        sizes.firsts,
        began.elapsed().as_secs_f64()
    );
    report::print_table(&agent.name, &summary, &table);
    if let Some(path) = opts.svg {
        draw(&path, &agent.name, &per_message, &warm);
    }
}

/// The warm turn's rows: through tether (and the baseline) against the pipes.
fn warm_rows(warm: &Warm, baseline: Option<&str>) -> Vec<Row> {
    let through = |what: String, t: &Samples, added: &Samples| {
        let adds = t.p50() - warm.pipes.p50();
        row(
            what,
            format!("{:.2} / {:.2} ms", t.p50(), t.p99()),
            format!("{:.2} / {:.2} ms", warm.pipes.p50(), warm.pipes.p99()),
            format!(
                "{:.2}x (+{adds:.2} ms; paired p50 +{:.2} ms)",
                t.p50() / warm.pipes.p50(),
                added.p50()
            ),
            format!("adds ≤ 1 ms at p50: {}", verdict(adds <= 1.0)),
        )
    };
    let mut rows = vec![through(
        "warm turn, p50 / p99: through tether vs over the pipes".into(),
        &warm.tether,
        &warm.added,
    )];
    if let (Some((t, added)), Some(binary)) = (&warm.baseline, baseline) {
        rows.push(through(format!("the same, through {binary}"), t, added));
    }
    let turns = warm.tether.len() as f64;
    let per_turn = |u: &Option<server::Usage>| match u {
        Some(u) => format!(
            "{:.2} ms CPU, {:.1} context switches",
            u.cpu_ms / turns,
            u.switches as f64 / turns
        ),
        None => "not known here".into(),
    };
    if let Some(usage) = warm.usage.first() {
        let against = match warm.usage.get(1) {
            Some(b) => format!("{} through the baseline", per_turn(b)),
            None => String::new(),
        };
        rows.push(row(
            "tether's own work per warm turn (all its threads)",
            per_turn(usage),
            against,
            String::new(),
            String::new(),
        ));
    }
    rows
}

/// First messages (cold and on a spare), sessions at once and memory growth, the last
/// three on one server that keeps a warm spare.
async fn on_a_server_with_a_spare(
    agent: &Agent,
    dir: &Path,
    sizes: &Sizes,
    warm: &Warm,
    cold: &Samples,
) -> Vec<Row> {
    eprintln!("first messages on a spare…");
    let server = Server::start(agent, dir, 1);
    let project = folder(dir, "bench");
    // Spares are kept for the folders sessions were started in: one is, first.
    server.new_sessions(&project, 1).await;
    let spare = measure::spare_firsts(&server, &project, sizes.firsts).await;
    let warm_p50 = warm.tether.p50();
    let mut rows = vec![
        row(
            "first message of a new session, cold (p50)",
            format!("{:.1} ms", cold.p50()),
            format!("{warm_p50:.2} ms warm turn"),
            format!("{:.1}x", cold.p50() / warm_p50),
            String::new(),
        ),
        row(
            "first message of a new session, warm spare (p50)",
            format!("{:.1} ms", spare.p50()),
            format!("{warm_p50:.2} ms warm turn"),
            format!("{:.2}x", spare.p50() / warm_p50),
            format!(
                "≤ 1.5x a warm turn: {}",
                verdict(spare.p50() <= 1.5 * warm_p50)
            ),
        ),
    ];
    eprintln!("sessions in parallel…");
    let idle_mb = server.memory_mb();
    let at_once = measure::at_once(&server, &project, sizes.parallel, sizes.parallel_turns).await;
    let one = at_once.first().map_or(1.0, |r| r.1);
    for &(n, turns_per_s, p50, mb) in &at_once {
        rows.push(row(
            format!("{n} session(s) at once: turns/s, server memory"),
            format!("{turns_per_s:.0} turns/s (p50 {p50:.2} ms), {mb:.1} MB"),
            format!("{one:.0} turns/s with 1"),
            format!("{:.2}x", turns_per_s / one),
            if n == 50 {
                format!("memory < 30 MB: {}", verdict(mb < 30.0))
            } else {
                String::new()
            },
        ));
    }
    let turns = sizes.growth_turns;
    eprintln!("{turns} turns for memory growth…");
    let (sessions, warm_up) = (10.min(turns), turns / 5);
    let (before, after) = measure::growth(&server, &project, sessions, warm_up, turns).await;
    server.stop();
    let grew = (after - before) / before;
    rows.push(row(
        format!(
            "server memory over {turns} turns ({sessions} sessions, after {warm_up} to warm up)"
        ),
        format!("{after:.1} MB after"),
        format!("{before:.1} MB before ({idle_mb:.1} MB idle)"),
        format!("{:+.1}%", grew * 100.0),
        format!("growth < 5%: {}", verdict(grew < 0.05)),
    ));
    rows
}

fn outbox_rows(rate: f64, delays: &Samples) -> Vec<Row> {
    vec![
        row(
            "push outbox: pushes/s to the scripted gateway",
            format!("{rate:.0}/s"),
            String::new(),
            String::new(),
            format!("≥ 10,000/s: {}", verdict(rate >= 10_000.0)),
        ),
        row(
            "stored reply → its push at the gateway, p50 / p99",
            format!("{:.1} / {:.1} ms", delays.p50(), delays.p99()),
            String::new(),
            String::new(),
            format!("≤ 5 ms: {}", verdict(delays.p50() <= 5.0)),
        ),
    ]
}

fn draw(path: &Path, agent: &str, per_message: &Samples, warm: &Warm) {
    let bars = [
        ("new process per message", per_message),
        ("persistent, over pipes", &warm.pipes),
        ("persistent, through tether", &warm.tether),
    ];
    report::draw(path, agent, &bars);
    println!("\nchart: {}", path.display());
}
