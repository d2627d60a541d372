//! The pool of live sessions: one actor task per session that has work, a process or a
//! listener; the process-count bound with least-recently-used eviction of idle processes;
//! recovery after a restart; ending a session; and shutdown that stops and reaps every child.
//! This file is the module's map: each file below holds one thing, and the others name it
//! by its own path (no file imports one that imports it back).

// The handle and what the pool and its actors share.
mod control;
mod duration;
mod handle;
mod supervise;

// One session's actor and the types it composes.
mod actor;
mod approvals;
mod approve;
mod finish;
mod log;
mod process;
mod read;
mod spawn;
mod turn;

// What the handle does for the HTTP layer and the background loops, by area.
mod accept;
mod follow;
mod hold;
pub mod lifecycle;
mod recover;
pub mod resources;
pub mod retention;
mod slots;
mod spare_pool;
pub mod spares;
pub mod usage;

pub use crate::refusal::{AcceptError, Refusal};
pub(crate) use accept::{checked_folder, resolve_project};
pub use accept::{Accepted, Message, Target};
pub use control::{Gone, ModeApplied, ProcessInfo, ProcessState};
pub use follow::{TurnWatch, Watched};
pub use handle::{Deps, Sessions};
pub use hold::HoldRefused;
pub use log::{LiveEvent, LiveRing, Subscription, TEXT_DELTA};
pub use usage::Usage;
