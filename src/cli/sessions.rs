//! `tether sessions`: the admin's view of the live sessions, asked of the server running on
//! the configured data folder and printed as a table (or as the server's JSON).

use std::{fmt::Write as _, time::Duration};

use anyhow::Context;
use hyper::StatusCode;
use serde::Deserialize;

use super::client::{call_as_admin, server_error};
use crate::{config::Settings, datadir, sessions::lifecycle::human_duration};

/// The server's list of live sessions (admin token).
const ROUTE: &str = "/api/sessions/active";

/// Longest title shown in the table, in characters.
const TITLE_WIDTH: usize = 24;

const HEADER: [&str; 13] = [
    "SESSION",
    "OWNER",
    "TITLE",
    "STATE",
    "PID",
    "MEM",
    "CPU",
    "AGE",
    "IDLE",
    "EXPIRES IN",
    "QUEUE",
    "MSGS",
    "COST",
];

/// Prints the running server's live sessions: its JSON as it came (`json`), or a table.
/// An answer other than 200 is an error carrying the server's message.
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    // The server first: with no secret configured, `Auth` would create one in a folder
    // that no server uses.
    let addr = datadir::running_server(&settings.data_dir())?;
    let (status, body) =
        call_as_admin(settings, addr, hyper::Method::GET, ROUTE, "tether sessions").await?;
    if status != StatusCode::OK {
        return Err(server_error(status, &body));
    }
    let unreadable = || format!("reading the answer of the tether at {addr}");
    let out = if json {
        let value: serde_json::Value = serde_json::from_slice(&body).with_context(unreadable)?;
        serde_json::to_string_pretty(&value)? + "\n"
    } else {
        render(&serde_json::from_slice(&body).with_context(unreadable)?)
    };
    print!("{out}");
    Ok(())
}

/// The answer of [`ROUTE`]; fields the table does not show are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Active {
    sessions: Vec<ActiveSession>,
    totals: Totals,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActiveSession {
    id: String,
    owner: String,
    title: Option<String>,
    state: String,
    /// Null while the session has no process.
    pid: Option<u32>,
    memory_bytes: Option<u64>,
    cpu_percent: Option<f64>,
    age_secs: u64,
    idle_secs: u64,
    /// Zero or less once the session has expired.
    expires_in_secs: i64,
    queued: u64,
    message_count: u64,
    total_cost_usd: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    active_sessions: u64,
    processes: u64,
    /// Of the processes, how many are warm spares.
    #[serde(default)]
    spares: u64,
    max_processes: u64,
    memory_bytes: u64,
    max_memory_bytes: u64,
}

/// The table, one line per session under [`HEADER`], then the totals line.
fn render(active: &Active) -> String {
    let header = HEADER.map(String::from);
    let rows: Vec<[String; 13]> = active.sessions.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let t = &active.totals;
    let plural = if t.active_sessions == 1 { "" } else { "s" };
    let _ = writeln!(
        out,
        "{} active session{plural} · {}/{} processes{} · {} / {}",
        t.active_sessions,
        t.processes,
        t.max_processes,
        if t.spares > 0 {
            format!(
                " ({} warm spare{})",
                t.spares,
                if t.spares == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        },
        human_bytes(t.memory_bytes),
        human_bytes(t.max_memory_bytes)
    );
    out
}

fn row(s: &ActiveSession) -> [String; 13] {
    let dash = || "-".to_string();
    [
        s.id.chars().take(8).collect(),
        s.owner.clone(),
        s.title.as_deref().map(short_title).unwrap_or_else(dash),
        s.state.clone(),
        s.pid.map(|pid| pid.to_string()).unwrap_or_else(dash),
        s.memory_bytes.map(human_bytes).unwrap_or_else(dash),
        s.cpu_percent
            .map(|cpu| format!("{cpu:.1}%"))
            .unwrap_or_else(dash),
        human_secs(s.age_secs),
        human_secs(s.idle_secs),
        match u64::try_from(s.expires_in_secs) {
            Ok(secs) if secs > 0 => human_secs(secs),
            _ => "expired".to_string(),
        },
        s.queued.to_string(),
        s.message_count.to_string(),
        format!("${:.2}", s.total_cost_usd),
    ]
}

/// `title` on one line (it may hold line breaks), cut to [`TITLE_WIDTH`] characters.
fn short_title(title: &str) -> String {
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    if title.chars().count() <= TITLE_WIDTH {
        return title;
    }
    let mut cut: String = title.chars().take(TITLE_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// `bytes` in binary units: whole KiB and MiB, GiB to a tenth ("160 MiB", "1.2 GiB").
fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * 1024.0;
    const GIB: f64 = MIB * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else if b >= MIB {
        format!("{:.0} MiB", b / MIB)
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

fn human_secs(secs: u64) -> String {
    human_duration(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        for (bytes, shown) in [
            (512, "512 B"),
            (2048, "2 KiB"),
            (160 << 20, "160 MiB"),
            ((12 << 30) / 10, "1.2 GiB"),
            (8 << 30, "8.0 GiB"),
        ] {
            assert_eq!(human_bytes(bytes), shown, "{bytes}");
        }
    }

    /// Two sessions, the second without a process, with a long two-line title, expired,
    /// and a field the table does not know.
    const ANSWER: &str = r#"{
      "sessions": [
        {"id": "0c5e7a52-1f0b-4e8e-9d3a-6c1f2b3a4d5e", "owner": "me", "title": "demo",
         "projectPath": "/home/u/demo", "state": "running", "pid": 1234,
         "memoryBytes": 167772160, "cpuPercent": 3.5,
         "createdAt": "2026-11-21T10:00:00Z", "lastActivityAt": "2026-11-21T12:00:00Z",
         "expiresAt": "2026-11-22T12:00:00Z", "ageSecs": 7200, "idleSecs": 60,
         "expiresInSecs": 86340, "queued": 0, "messageCount": 12, "totalCostUsd": 0.42},
        {"id": "9f00aa11-2222-4333-8444-555566667777", "owner": "phone",
         "title": "Refactor the push worker\nand its tests", "projectPath": "/p",
         "state": "hibernated", "pid": null, "memoryBytes": null, "cpuPercent": null,
         "createdAt": "2026-11-19T10:00:00Z", "lastActivityAt": "2026-11-19T10:00:00Z",
         "expiresAt": "2026-11-20T10:00:00Z", "ageSecs": 180000, "idleSecs": 45,
         "expiresInSecs": -5, "queued": 2, "messageCount": 3, "totalCostUsd": 1.5,
         "somethingNew": true}
      ],
      "totals": {"activeSessions": 2, "processes": 1, "maxProcesses": 8,
                 "memoryBytes": 167772160, "maxMemoryBytes": 8589934592}
    }"#;

    #[test]
    fn the_table_has_a_header_a_row_per_session_and_the_totals() {
        let out = render(&serde_json::from_str(ANSWER).unwrap());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        let header = lines[0];
        assert!(header.starts_with("SESSION "), "{out}");
        // Every cell starts under its column's name.
        let column = |name: &str| header.find(name).unwrap();
        let cell = |line: &str, at: usize| {
            line[at..]
                .split("  ")
                .next()
                .unwrap()
                .trim_end()
                .to_string()
        };
        let expect = |line: &str, cells: [&str; 13]| {
            for (name, want) in HEADER.iter().zip(cells) {
                let at = line.char_indices().nth(column(name)).unwrap().0;
                assert_eq!(cell(line, at), want, "{name} in {line:?}\n{out}");
            }
        };
        expect(
            lines[1],
            [
                "0c5e7a52", "me", "demo", "running", "1234", "160 MiB", "3.5%", "2h", "1m",
                "23h 59m", "0", "12", "$0.42",
            ],
        );
        expect(
            lines[2],
            [
                "9f00aa11",
                "phone",
                "Refactor the push worke…",
                "hibernated",
                "-",
                "-",
                "-",
                "2d 2h",
                "45s",
                "expired",
                "2",
                "3",
                "$1.50",
            ],
        );
        assert_eq!(
            lines[3],
            "2 active sessions · 1/8 processes · 160 MiB / 8.0 GiB"
        );
    }

    #[test]
    fn a_refusal_reads_as_the_servers_message() {
        let err = server_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"route_not_found","message":"no such route"}}"#,
        );
        assert_eq!(
            err.to_string(),
            "the server answered 404 Not Found: no such route (route_not_found)"
        );
        let err = server_error(StatusCode::BAD_GATEWAY, b"upstream down\n");
        assert_eq!(
            err.to_string(),
            "the server answered 502 Bad Gateway: upstream down"
        );
    }
}
