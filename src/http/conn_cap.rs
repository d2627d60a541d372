//! The connection cap: `server.max_connections`, lowered when the open-file limit cannot
//! hold that many connections beside the descriptors the rest of tether needs.

use crate::config::Settings;

/// File descriptors kept free for what is not a connection: the listener, stdio, logs, the
/// push gateway's connections, a spawn's temporary pipes. Added to the two below.
const RESERVED_FDS: usize = 64;
/// Descriptors one SQLite connection may hold (database, WAL and shared-memory files).
const FDS_PER_DB_CONNECTION: usize = 3;
/// Descriptors one agent process holds in tether (its stdin, stdout and stderr pipes, and one
/// spare for a spawn in progress).
const FDS_PER_PROCESS: usize = 4;
/// Descriptors one terminal holds: its PTY's master side, the reader's and writer's copies
/// of it, and one spare for a spawn in progress.
const FDS_PER_TERMINAL: usize = 4;
/// The cap never goes below this, whatever the open-file limit says.
pub(super) const MIN_CONNECTIONS: usize = 16;

/// The descriptors kept for what is not a connection, by the settings.
pub(super) fn reserved(settings: &Settings) -> usize {
    RESERVED_FDS
        + FDS_PER_DB_CONNECTION * settings.database.max_connections as usize
        + FDS_PER_PROCESS * settings.sessions.max_processes
        + FDS_PER_TERMINAL * settings.terminals.max
}

/// `configured`, or less when the open-file limit cannot hold that many connections beside
/// `reserve` descriptors. The soft limit is raised towards the hard one first, if needed.
pub(super) fn connection_cap(configured: usize, reserve: usize) -> usize {
    let configured = configured.max(1);
    let wanted = configured.saturating_add(reserve);
    match open_file_limit(wanted) {
        Some(limit) if limit < wanted => {
            let cap = limit
                .saturating_sub(reserve)
                .max(MIN_CONNECTIONS)
                .min(configured);
            tracing::warn!(
                configured,
                max_connections = cap,
                open_file_limit = limit,
                reserved = reserve,
                "server.max_connections lowered to fit the open-file limit (raise it with `ulimit -n`)"
            );
            cap
        }
        _ => configured,
    }
}

/// The soft limit on open files, raised to `wanted` (or the hard limit) if it is lower.
#[cfg(unix)]
fn open_file_limit(wanted: usize) -> Option<usize> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let to_usize = |v| usize::try_from(v).unwrap_or(usize::MAX);
    if to_usize(soft) >= wanted {
        return Some(to_usize(soft));
    }
    let target = (wanted as nix::libc::rlim_t).min(hard);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        tracing::info!(
            from = soft,
            to = target,
            "raised the open-file limit for connections"
        );
        return Some(to_usize(target));
    }
    Some(to_usize(soft))
}

#[cfg(not(unix))]
fn open_file_limit(_wanted: usize) -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_kept_when_the_limit_allows_it() {
        assert_eq!(connection_cap(32, 8), 32);
        assert_eq!(connection_cap(0, 8), 1);
    }
}
