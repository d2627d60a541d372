//! The data folder: created private (0700), its database file created private (0600) before
//! SQLite opens it (SQLite gives the WAL and shared-memory files the database's mode), secret
//! files checked to be private, and an exclusive lock so that one server runs per folder,
//! in which the server writes where it listens for the commands that talk to it.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Context;

/// The lock file in the data folder. While a server runs it holds an exclusive lock on it
/// (released by the OS when the process ends, however it ends) and writes in it its pid
/// on the first line, then, once it listens, its address on the second.
pub const LOCK_FILE: &str = "tether.lock";

/// A server's hold on its data folder; dropping it releases the folder.
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked file: the lock lives as long as this handle is open.
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the data folder `dir` (which must exist) for this process, or fails at once,
    /// naming the folder and the pid that holds it, when another process has it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_private(&path, false)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let folder = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                let by = match holder.lines().next().unwrap_or("").trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                anyhow::bail!(
                    "another tether is already running on the data folder {}{by}; stop it \
                     first, or give this one its own folder (database.path)",
                    folder.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        // Ours now: say who holds it, for the next one that tries.
        let mut lock = Self { file, path };
        lock.write_holder(None)?;
        tracing::debug!(path = %lock.path.display(), "data folder locked");
        Ok(lock)
    }

    /// Adds the address the server listens on under its pid, for the commands that talk to
    /// the running server (see [`running_server`]).
    pub fn record_address(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.write_holder(Some(addr))
            .with_context(|| format!("writing the address in {}", self.path.display()))
    }

    /// Replaces the lock file's content with this process's pid and, if given, its address.
    fn write_holder(&mut self, addr: Option<SocketAddr>) -> std::io::Result<()> {
        let mut text = format!("{}\n", std::process::id());
        if let Some(addr) = addr {
            text.push_str(&format!("{addr}\n"));
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; the pid goes first so it is never stale.
        let _ = self.file.set_len(0);
        tracing::debug!(path = %self.path.display(), "data folder released");
    }
}

/// Where to reach the server that holds the data folder `dir`: the address it recorded
/// (see [`DataDirLock::record_address`]), with an unspecified one (`0.0.0.0`, `[::]`) made
/// loopback. Fails, naming the folder, when no server holds it or the one that does does
/// not listen yet.
pub fn running_server(dir: &Path) -> anyhow::Result<SocketAddr> {
    let folder = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let not_running = || {
        anyhow::anyhow!(
            "no tether is running on the data folder {}; start it with `tether serve`",
            folder.display()
        )
    };
    let path = dir.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_running()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    // A shared lock is refused only while a server holds its exclusive one; taken, it is
    // let go at once (another command asking the same question takes it too).
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            return Err(not_running());
        }
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("checking the lock on {}", path.display()));
        }
    }
    let mut holder = String::new();
    file.read_to_string(&mut holder)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut lines = holder.lines();
    let pid = lines.next().unwrap_or("").trim();
    match lines.next().map(|l| l.trim().parse::<SocketAddr>()) {
        Some(Ok(addr)) => Ok(reachable(addr)),
        _ => anyhow::bail!(
            "the tether on the data folder {} (pid {pid}) is not listening yet; try again \
             in a moment",
            folder.display()
        ),
    }
}

/// `addr` as a client on this machine reaches it: a server listening on every address
/// (`0.0.0.0`, `[::]`) is reached on loopback.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Creates the data folder (and any missing parents) readable by its owner only. A folder
/// that exists already is left as it is: it may be one the user chose, such as `.`.
pub fn create_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating the data folder {}", dir.display()))
}

/// Creates the database file empty and private (0600) if it does not exist, so that SQLite,
/// which opens it next, and its `-wal` and `-shm` files (created with the database's mode)
/// are never readable by others. An existing database readable by others (an earlier
/// version made it so) is made private, with its `-wal` and `-shm`.
pub fn create_database_file(path: &Path) -> anyhow::Result<()> {
    open_private(path, false)
        .with_context(|| format!("creating the database file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                let file = PathBuf::from(file);
                if file.exists() {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("making {} private", file.display()))?;
                }
            }
            tracing::warn!(path = %path.display(), old_mode = format!("{:o}", mode & 0o777), "the database was readable by other users: made it private (0600)");
        }
    }
    Ok(())
}

/// Refuses a secret file that users other than its owner can read or write.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} can be read by other users (mode {:o}); make it private with \
                 `chmod 600 {}` and start again",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a new file only its owner can read (0600), replacing any earlier content.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = open_private(path, true)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Opens `path` for reading and writing, creating it with mode 0600 if it does not exist.
fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_folder_and_database_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/data");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("tether.db");
        create_database_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn a_database_readable_by_others_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("tether.db");
        for f in ["tether.db", "tether.db-wal"] {
            std::fs::write(tmp.path().join(f), b"").unwrap();
            std::fs::set_permissions(tmp.path().join(f), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        create_database_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&tmp.path().join("tether.db-wal")), 0o600);
    }

    #[test]
    fn a_secret_readable_by_others_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("auth.secret");
        write_private(&secret, b"x").unwrap();
        assert_eq!(mode(&secret), 0o600);
        check_private(&secret).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_private(&secret).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", secret.display())),
            "{err}"
        );
    }

    #[test]
    fn one_lock_per_folder_naming_the_holder_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(tmp.path()).unwrap();
        assert_eq!(mode(first.path()), 0o600);
        let err = DataDirLock::acquire(tmp.path()).unwrap_err().to_string();
        let folder = std::fs::canonicalize(tmp.path()).unwrap();
        assert!(err.contains(&folder.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(tmp.path()).expect("free again");
    }

    #[test]
    fn the_recorded_address_is_found_while_the_lock_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lock = DataDirLock::acquire(tmp.path()).unwrap();
        let err = running_server(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not listening yet"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );

        lock.record_address("127.0.0.1:4242".parse().unwrap())
            .unwrap();
        assert_eq!(
            running_server(tmp.path()).unwrap(),
            "127.0.0.1:4242".parse().unwrap()
        );
        // Every address: reached on loopback.
        lock.record_address("0.0.0.0:4243".parse().unwrap())
            .unwrap();
        assert_eq!(
            running_server(tmp.path()).unwrap(),
            "127.0.0.1:4243".parse().unwrap()
        );
        lock.record_address("[::]:4244".parse().unwrap()).unwrap();
        assert_eq!(
            running_server(tmp.path()).unwrap(),
            "[::1]:4244".parse().unwrap()
        );
        // The pid still comes first, for a second server's refusal.
        let err = DataDirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_folder_no_server_holds_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = std::fs::canonicalize(tmp.path()).unwrap();
        let expected = format!(
            "no tether is running on the data folder {}; start it with `tether serve`",
            folder.display()
        );
        // Never used; then left by a server that was killed, its address still written.
        assert_eq!(
            running_server(tmp.path()).unwrap_err().to_string(),
            expected
        );
        std::fs::write(tmp.path().join(LOCK_FILE), "4321\n127.0.0.1:4242\n").unwrap();
        assert_eq!(
            running_server(tmp.path()).unwrap_err().to_string(),
            expected
        );
        // The check let the lock go: a server can take the folder.
        DataDirLock::acquire(tmp.path()).expect("free");
    }
}
