//! Typed settings: the embedded `config/default.toml`, an optional file, then
//! `TETHER__SECTION__KEY` environment variables, in that order of precedence.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use secrecy::SecretString;
use serde::Deserialize;

/// The defaults compiled into the binary, so `tether serve` runs with no file at all.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub agent: AgentSettings,
    pub sessions: SessionSettings,
    pub events: EventSettings,
    pub projects: ProjectSettings,
    pub auth: AuthSettings,
    pub push: PushSettings,
    pub log: LogSettings,
    pub limits: LimitSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub wait_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Open connections at once; when full, the oldest connection without a request in
    /// flight is closed for a new one. Lowered at start to what the open-file limit allows.
    pub max_connections: usize,
    /// A client must send a request's whole header within this time (also the longest an
    /// idle keep-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// Longest time to answer a request (event streams exempt; chat adds `wait_timeout_secs`).
    pub request_timeout_secs: u64,
}

/// What one owner (the `sub` of a token) may hold at once, so that one phone or script
/// cannot starve the others. Admins are counted like everyone else, under their own owner.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// New sessions (`POST /api/chat` without `sessionId`) per owner in any 60 seconds.
    pub new_sessions_per_minute: u32,
    /// Sessions in state `active` per owner; more answer 429 until one is ended.
    pub active_sessions_per_owner: u32,
    /// Open event streams (`GET /api/sessions/{id}/events`) per owner.
    pub streams_per_owner: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentSettings {
    pub command: String,
    pub args: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub turn_timeout_secs: u64,
    pub max_line_bytes: usize,
    pub stop_grace_secs: u64,
    pub interrupt_grace_secs: u64,
    pub stderr_tail_lines: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    pub max_processes: usize,
    pub max_queued_per_session: u32,
    pub max_message_bytes: usize,
    pub event_buffer: usize,
    pub event_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventSettings {
    pub retention_days: u64,
    pub max_per_session: u64,
    pub prune_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProjectSettings {
    pub roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub secret: SecretString,
    pub token_ttl_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PushSettings {
    pub max_attempts: u32,
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
    pub poll_interval_secs: u64,
    pub batch_size: u32,
    pub preview_chars: usize,
    pub apns: ApnsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApnsSettings {
    pub key_path: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    pub request_timeout_secs: u64,
    pub pool_idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub filter: String,
    pub format: String,
}

impl Settings {
    /// Loads the layered settings; `file` is the optional `--config FILE`.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("TETHER__").split("__"))
            .extract()
            .map_err(Box::new)
    }

    /// The folder that holds the database and other state files.
    pub fn data_dir(&self) -> PathBuf {
        match self.database.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

impl ServerSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.max(1))
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl AgentSettings {
    pub fn turn_timeout(&self) -> Duration {
        Duration::from_secs(self.turn_timeout_secs)
    }
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }
    pub fn interrupt_grace(&self) -> Duration {
        Duration::from_secs(self.interrupt_grace_secs)
    }
}

impl ProjectSettings {
    /// The roots with `~` expanded and made canonical; roots that do not exist are skipped.
    pub fn canonical_roots(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .map(|r| expand_home(r))
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect()
    }
}

/// Expands a leading `~` to the home directory.
pub fn expand_home(path: &std::path::Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path.to_path_buf();
    };
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(rest),
        None => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let s: Settings = Figment::from(Toml::string(DEFAULTS)).extract().unwrap();
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8787");
        assert_eq!(s.agent.command, "claude");
        assert_eq!(s.database.path, PathBuf::from("data/tether.db"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns its own error type
    fn env_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TETHER__SERVER__BIND", "127.0.0.1:0");
            jail.set_env("TETHER__AGENT__COMMAND", "/opt/claude");
            jail.set_env("TETHER__SESSIONS__MAX_PROCESSES", "3");
            jail.set_env("TETHER__LIMITS__STREAMS_PER_OWNER", "2");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!(s.server.bind.port(), 0);
            assert_eq!(s.agent.command, "/opt/claude");
            assert_eq!(s.sessions.max_processes, 3);
            assert_eq!(s.limits.streams_per_owner, 2);
            Ok(())
        });
    }
}
