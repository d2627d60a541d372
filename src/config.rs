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
    pub approvals: ApprovalSettings,
    pub openai: OpenAiSettings,
    pub terminals: TerminalSettings,
}

/// The OpenAI-compatible endpoint (`/v1`).
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAiSettings {
    /// The project folder of a conversation started without `project_path`; empty: such a
    /// request is refused (400). Must lie inside `projects.roots`, as any project.
    pub default_project: String,
}

/// Terminals: programs in a pseudo-terminal that a person watches and types into. Their
/// end and its warning follow `sessions.lifetime` and `sessions.warn_before`.
#[derive(Debug, Clone, Deserialize)]
pub struct TerminalSettings {
    /// Live terminals on the server (429 `too_many_terminals`).
    pub max: usize,
    /// Live terminals of one owner (429 `too_many_terminals`).
    pub max_per_owner: usize,
    /// Output kept in memory per terminal; a viewer further behind gets the whole buffer.
    pub buffer_bytes: ByteSize,
    /// The end of the output kept in SQLite when a terminal ends (its last screen).
    pub saved_tail_bytes: ByteSize,
    /// A terminal with no viewer attached and no output for this long is ended.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Push "terminal waiting" when output went quiet this long after activity while no
    /// viewer is attached; None ("off"): never.
    #[serde(deserialize_with = "optional_duration")]
    pub quiet_push_after: Option<Duration>,
    /// Longest input in one request or WebSocket frame (413 / the frame is refused).
    pub max_input_bytes: ByteSize,
    /// Viewers attached to one terminal at once (429 `too_many_viewers`).
    pub max_viewers: usize,
    /// The program of `shell` terminals; empty: the user's login shell ($SHELL, else the
    /// password database's), run as a login shell.
    pub shell: String,
    /// Between SIGHUP, SIGTERM and SIGKILL to a terminal's processes when it is ended.
    #[serde(deserialize_with = "duration")]
    pub stop_grace: Duration,
    /// Which programs each role may open (403 `terminal_program_not_allowed`).
    pub programs: TerminalPrograms,
}

/// `terminals.programs`: the programs (`claude`, `shell`) a role may open in a terminal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalPrograms {
    pub user: Vec<String>,
    pub admin: Vec<String>,
}

/// The programs a terminal runs.
pub const TERMINAL_PROGRAMS: [&str; 2] = ["claude", "shell"];

impl TerminalPrograms {
    /// The list of the role (`admin` or not).
    pub fn of(&self, admin: bool) -> &[String] {
        if admin {
            &self.admin
        } else {
            &self.user
        }
    }

    /// Refuses a program tether cannot run, naming it and the key.
    pub fn check(&self) -> anyhow::Result<()> {
        for (role, list) in [("user", &self.user), ("admin", &self.admin)] {
            if let Some(bad) = list
                .iter()
                .find(|p| !TERMINAL_PROGRAMS.contains(&p.as_str()))
            {
                anyhow::bail!(
                    "terminals.programs.{role} holds {bad:?}; a terminal runs {}",
                    TERMINAL_PROGRAMS.join(" or ")
                );
            }
        }
        Ok(())
    }
}

/// Tools the agent asks to use, and questions it asks, answered from the phone.
#[derive(Debug, Clone, Deserialize)]
pub struct ApprovalSettings {
    /// Deny a request nobody answered after this long ("off": wait as long as it takes).
    #[serde(deserialize_with = "optional_duration")]
    pub auto_deny_after: Option<Duration>,
    /// Bytes of a tool's input kept with its approval (the agent gets the whole input).
    pub max_input_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub wait_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Open connections at once; when full, the oldest connection without a request in
    /// flight is closed for a new one. Lowered at start to what the open-file limit allows.
    pub max_connections: usize,
    /// A client must send a request's whole header within this time (also the longest an
    /// idle keep-alive connection stays open).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Requests per minute per token (or per address without one); 0: no limit.
    pub requests_per_minute: u32,
    /// Longest time to answer a request (event streams exempt; chat adds `wait_timeout`).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Whether the listener speaks HTTPS, and with which certificate (see `crate::tls`).
    pub tls: TlsMode,
    /// Time for a request's whole body once its handler waits on it, with a valid token.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// The same for requests without a valid token (shorter: anyone may send them).
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout_anonymous: Duration,
    /// Host names accepted in `Host` besides IP literals, `localhost` and the machine's names.
    pub allowed_hosts: Vec<String>,
    /// Longest request target (414 `uri_too_long`).
    pub max_uri_bytes: usize,
    /// Largest header section, in bytes of names and values (431 `headers_too_large`).
    pub max_header_bytes: usize,
    /// Most headers in one request (431 `headers_too_large`).
    pub max_headers: usize,
}

/// `server.tls`: plain HTTP, HTTPS with a certificate tether makes itself (the phone pins
/// its fingerprint), or HTTPS with the given PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// `"off"`: plain HTTP.
    #[default]
    Off,
    /// `"self-signed"`: a certificate and key made once in the data folder, then reused.
    SelfSigned,
    /// `{ cert = "PATH", key = "PATH" }`: a certificate (chain, leaf first) and its key.
    Files { cert: PathBuf, key: PathBuf },
}

impl TlsMode {
    pub fn is_on(&self) -> bool {
        *self != Self::Off
    }
}

impl<'de> Deserialize<'de> for TlsMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TlsModeVisitor)
    }
}

/// The three forms of [`TlsMode`]: a word, or a table of two paths.
struct TlsModeVisitor;

impl<'de> serde::de::Visitor<'de> for TlsModeVisitor {
    type Value = TlsMode;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#""off", "self-signed" or { cert = "PATH", key = "PATH" }"#)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsMode, E> {
        match v.trim() {
            "off" => Ok(TlsMode::Off),
            "self-signed" => Ok(TlsMode::SelfSigned),
            _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<TlsMode, A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Files {
            cert: PathBuf,
            key: PathBuf,
        }
        let files = Files::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(TlsMode::Files {
            cert: expand_home(&files.cert),
            key: expand_home(&files.key),
        })
    }
}

/// What one owner (the `sub` of a token) may hold at once, so that one phone or script
/// cannot starve the others. Admins are counted like everyone else, under their own owner.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// New sessions (`POST /api/chat` without `sessionId`) per owner in any 60 seconds.
    pub new_sessions_per_minute: u32,
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
    /// `--permission-mode` of a session that has not chosen one.
    pub permission_mode: String,
    /// The modes a user token may choose (an admin may choose any of [`PERMISSION_MODES`]).
    pub permission_modes: Vec<String>,
    pub args: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(deserialize_with = "duration")]
    pub turn_timeout: Duration,
    pub max_line_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub stop_grace: Duration,
    #[serde(deserialize_with = "duration")]
    pub interrupt_grace: Duration,
    /// How long a live process may take to answer a control request (a mode change).
    #[serde(deserialize_with = "duration")]
    pub control_timeout: Duration,
    pub stderr_tail_lines: usize,
}

impl AgentSettings {
    /// Whether a caller (an admin or not) may choose `mode` for a session.
    pub fn may_choose(&self, admin: bool, mode: &str) -> bool {
        PERMISSION_MODES.contains(&mode)
            && (admin || self.permission_modes.iter().any(|m| m == mode))
    }

    /// Refuses, at start, a mode the CLI does not know in `permission_mode` or
    /// `permission_modes`, naming it and the modes it knows.
    pub fn check_modes(&self) -> anyhow::Result<()> {
        let known = || PERMISSION_MODES.join(", ");
        if !PERMISSION_MODES.contains(&self.permission_mode.as_str()) {
            anyhow::bail!(
                "agent.permission_mode is {:?}; the CLI knows {}",
                self.permission_mode,
                known()
            );
        }
        if let Some(bad) = self
            .permission_modes
            .iter()
            .find(|m| !PERMISSION_MODES.contains(&m.as_str()))
        {
            anyhow::bail!(
                "agent.permission_modes holds {bad:?}; the CLI knows {}",
                known()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    /// How long a session lives after its last message or keep-alive.
    #[serde(deserialize_with = "duration")]
    pub lifetime: Duration,
    /// How long before its end the owner is warned (`lifetime - warn_before` into an idle day).
    #[serde(deserialize_with = "duration")]
    pub warn_before: Duration,
    /// A process idle this long is stopped (the session hibernates; its next message resumes).
    #[serde(deserialize_with = "duration")]
    pub idle_stop: Duration,
    /// A turn with no line from its process for this long is interrupted, then killed.
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
    pub max_processes: usize,
    /// CLI processes started ahead for new sessions in recently used folders (see
    /// `sessions::spares`); they count toward `max_processes`.
    pub warm_spares: usize,
    /// Sessions in state `active` per owner; more answer 429 `too_many_sessions`.
    pub max_active_per_owner: u32,
    /// An idle process above this resident memory (its whole process group) is recycled.
    pub max_process_memory: ByteSize,
    /// Above this sum over all processes, idle ones are hibernated, oldest first.
    pub max_total_memory: ByteSize,
    /// How often processes' memory and CPU are read.
    #[serde(deserialize_with = "duration")]
    pub resource_interval: Duration,
    /// Keep the machine from sleeping while a session is active.
    pub keep_awake: bool,
    /// The prompt of a keep-alive with `recap: true`.
    pub recap_prompt: String,
    pub max_queued_per_session: u32,
    pub max_message_bytes: usize,
    pub event_buffer: usize,
    pub event_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventSettings {
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// How long the messages of a session that ended (or expired) are kept after its end;
    /// None ("off" or 0): for ever.
    #[serde(deserialize_with = "optional_duration")]
    pub message_retention: Option<Duration>,
    pub max_per_session: u64,
    #[serde(deserialize_with = "duration")]
    pub prune_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProjectSettings {
    pub roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub secret: SecretString,
    /// Lifetime of a paired phone's token; None ("off"): until revoked.
    #[serde(deserialize_with = "optional_duration")]
    pub paired_token_ttl: Option<Duration>,
    /// How long a pairing code from `tether pair` can be used.
    #[serde(deserialize_with = "duration")]
    pub pairing_ttl: Duration,
    /// Failed pairing attempts from one address in any minute before `POST /api/pair`
    /// answers it 429.
    pub pairing_attempts_per_minute: u32,
    /// Failed pairing attempts from everyone in any minute before every address that has
    /// failed in it is answered 429 (one that has not is still heard).
    pub pairing_attempts_per_minute_total: u32,
    #[serde(deserialize_with = "duration")]
    pub token_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PushSettings {
    pub max_attempts: u32,
    #[serde(deserialize_with = "duration")]
    pub backoff_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    pub batch_size: u32,
    /// Sends in flight at once within a step.
    pub concurrency: usize,
    pub preview_chars: usize,
    pub apns: ApnsSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApnsSettings {
    pub key_path: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
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
        self.header_read_timeout.max(Duration::from_secs(1))
    }
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.max(Duration::from_secs(1))
    }
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout.max(Duration::from_secs(1))
    }
    pub fn body_read_timeout_anonymous(&self) -> Duration {
        self.body_read_timeout_anonymous.max(Duration::from_secs(1))
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

/// A duration written as a human form ("24h", "30m", "90s", "1h 30m") or a whole number
/// of seconds.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    optional_duration(d)?
        .ok_or_else(|| serde::de::Error::custom("a duration is needed here, not \"off\""))
}

/// A duration, or "off" (none).
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Human(String),
    }
    match Raw::deserialize(d)? {
        Raw::Human(h) if matches!(h.trim(), "off" | "") => Ok(None),
        Raw::Secs(s) => Ok(Some(Duration::from_secs(s))),
        Raw::Human(h) => humantime::parse_duration(h.trim()).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{h:?} is not \"off\" or a duration like \"10m\": {e}"
            ))
        }),
    }
}

/// The permission modes Claude Code knows.
pub const PERMISSION_MODES: [&str; 6] = [
    "default",
    "acceptEdits",
    "plan",
    "auto",
    "dontAsk",
    "bypassPermissions",
];

/// A size in bytes, written as a number or with a unit ("512MiB", "2GiB", "1.5GB").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Human(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Self(b)),
            Raw::Human(h) => parse_bytes(&h).map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!("{h:?} is not a size like \"512MiB\" or \"2GiB\""))
            }),
        }
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
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
        assert_eq!(s.sessions.lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(s.sessions.warn_before, Duration::from_secs(4 * 3600));
        assert_eq!(s.agent.permission_modes, ["default", "acceptEdits", "plan"]);
        assert!(!s.agent.may_choose(false, "bypassPermissions"));
        assert!(s.agent.may_choose(true, "bypassPermissions"));
        assert!(!s.agent.may_choose(true, "yolo"));
        s.agent.check_modes().unwrap();
        assert_eq!(s.terminals.programs.of(false), ["claude", "shell"]);
        s.terminals.programs.check().unwrap();
    }

    #[test]
    fn bad_durations_and_sizes_are_refused_with_the_value() {
        let bad = Figment::from(Toml::string(DEFAULTS))
            .merge(Toml::string("[sessions]\nlifetime = \"soon\""))
            .extract::<Settings>()
            .unwrap_err();
        assert!(bad.to_string().contains("soon"), "{bad}");
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2 GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("12parsecs"), None);
    }

    /// `server.tls` as `toml` sets it, or the error's text.
    fn tls_from(toml: &str) -> Result<TlsMode, String> {
        Figment::from(Toml::string(DEFAULTS))
            .merge(Toml::string(toml))
            .extract::<Settings>()
            .map(|s| s.server.tls)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_takes_three_forms_and_refuses_others_naming_them() {
        assert_eq!(tls_from("").unwrap(), TlsMode::Off, "off by default");
        assert_eq!(tls_from("[server]\ntls = \"off\"").unwrap(), TlsMode::Off);
        assert_eq!(
            tls_from("[server]\ntls = \"self-signed\"").unwrap(),
            TlsMode::SelfSigned
        );
        assert_eq!(
            tls_from("[server]\ntls = { cert = \"/c.pem\", key = \"/k.pem\" }").unwrap(),
            TlsMode::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            }
        );
        for bad in [
            "tls = \"on\"",
            "tls = true",
            "tls = { cert = \"/c.pem\" }",
            "tls = { cert = \"/c.pem\", key = \"/k.pem\", ca = \"/ca.pem\" }",
        ] {
            let err = tls_from(&format!("[server]\n{bad}")).unwrap_err();
            assert!(
                err.contains("server.tls")
                    && (err.contains("\"self-signed\"") || err.contains("field")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns its own error type
    fn env_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TETHER__SERVER__BIND", "127.0.0.1:0");
            jail.set_env("TETHER__AGENT__COMMAND", "/opt/claude");
            jail.set_env("TETHER__SESSIONS__MAX_PROCESSES", "3");
            jail.set_env("TETHER__LIMITS__STREAMS_PER_OWNER", "2");
            jail.set_env("TETHER__SESSIONS__LIFETIME", "90m");
            jail.set_env("TETHER__SESSIONS__MAX_TOTAL_MEMORY", "1.5GiB");
            jail.set_env("TETHER__AGENT__TURN_TIMEOUT", "45");
            jail.set_env("TETHER__SERVER__TLS", "{cert=\"/c.pem\",key=\"/k.pem\"}");
            jail.set_env("TETHER__TERMINALS__PROGRAMS__USER", "[\"claude\"]");
            jail.set_env("TETHER__AGENT__PERMISSION_MODES", "[\"plan\"]");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!(s.terminals.programs.user, ["claude"]);
            assert_eq!(s.terminals.programs.admin, ["claude", "shell"]);
            assert_eq!(s.agent.permission_modes, ["plan"]);
            assert_eq!(
                s.server.tls,
                TlsMode::Files {
                    cert: "/c.pem".into(),
                    key: "/k.pem".into()
                }
            );
            assert_eq!(s.server.bind.port(), 0);
            assert_eq!(s.agent.command, "/opt/claude");
            assert_eq!(s.sessions.max_processes, 3);
            assert_eq!(s.limits.streams_per_owner, 2);
            assert_eq!(s.sessions.lifetime, Duration::from_secs(90 * 60));
            assert_eq!(s.sessions.max_total_memory, ByteSize(3 << 29));
            assert_eq!(s.agent.turn_timeout, Duration::from_secs(45));
            Ok(())
        });
    }
}
