//! The warm spares held at one time (see `spares`, their keeper): each process started
//! ahead, whether a new session claimed it, and the keeper's back-off after deaths.

use std::path::PathBuf;

use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use crate::agent::process::AgentProcess;

/// A process started ahead for a session that does not exist yet.
pub(super) struct Spare {
    /// The conversation id it was started with; the session that takes it gets this id.
    pub(super) id: String,
    pub(super) cwd: PathBuf,
    pub(super) permission_mode: String,
    pub(super) process: AgentProcess,
    pub(super) slot: OwnedSemaphorePermit,
    pub(super) started: Instant,
    /// Set when a new session took its id; its actor adopts it at the first turn.
    pub(super) claimed_at: Option<Instant>,
}

/// The spares and the keeper's backoff.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) spares: Vec<Spare>,
    /// Spares (or starts) that failed in a row since one was last used.
    pub(super) failures: u32,
    /// No new spare before this (after a death).
    pub(super) not_before: Option<Instant>,
    /// Set by the memory watch while a spare would push processes past
    /// `sessions.max_total_memory`.
    pub(super) memory_full: bool,
    /// The wanted folders as last read, and when; read again once they are stale (see
    /// `spares`) or once a session was created.
    pub(super) folders: Option<(Instant, Vec<PathBuf>)>,
}
