//! The one way a user message enters tether, whatever the route (chat, a keep-alive's
//! recap, the OpenAI-compatible endpoint): validated, its session found or created in an allowed project
//! folder under the owner's caps, the session's end moved to now + `sessions.lifetime`, the
//! message stored `queued` in the same transaction, and the session's actor woken. Also the
//! keep-alive, which moves the end without a message.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use super::{follow::TurnWatch, handle::Sessions};
use crate::{
    config::{expand_home, ProjectSettings},
    refusal::{callers_active, refused, AcceptError, Asker, Refusal},
    store::{self, messages, sessions},
};
use sqlx::SqliteConnection;

/// Longest `clientMessageId` accepted.
pub const MAX_CLIENT_MESSAGE_ID: usize = 128;
/// The window of `limits.new_sessions_per_minute`.
const NEW_SESSION_WINDOW: Duration = Duration::from_secs(60);
/// `Retry-After` for `too_many_sessions`: no time frees a slot (ending a session does), so a
/// client is told to come back no sooner than this.
const ACTIVE_SESSIONS_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where a message goes: a session by its id as sent, or a new one in this folder.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Session(&'a str),
    NewIn(&'a str),
}

/// A user message as a client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The caller: the owner of a new session, and who may use an existing one.
    pub owner: &'a str,
    /// An admin may write to any owner's session.
    pub sees_all: bool,
    pub text: &'a str,
    pub target: Target<'a>,
    /// The client's id for the message: a repeat is answered with the first one.
    pub client_message_id: Option<&'a str>,
    /// The caller follows the turn until then: the answer carries a [`TurnWatch`] that
    /// listens from before the session's actor hears of the message, so it misses none of
    /// the turn's text.
    pub watch_until: Option<Instant>,
}

#[derive(Debug)]
pub enum Accepted {
    /// Stored `queued`; the session's actor was woken.
    Queued {
        session_id: String,
        message_id: i64,
        /// The session's new end (ms).
        expires_at: i64,
        /// The turn, followed (when the message asked for it with `watch_until`).
        watch: Option<TurnWatch>,
    },
    /// The same `clientMessageId` was accepted before: that message, as it is now.
    Repeat(Box<messages::MessageRow>),
}

impl Sessions {
    /// Accepts a user message: see the module's doc.
    pub async fn accept(&self, m: Message<'_>) -> Result<Accepted, AcceptError> {
        if self.is_closing() {
            return Err(refused(
                Refusal::ShuttingDown,
                "tether is shutting down; try again in a moment",
            ));
        }
        self.validate(&m)?;
        let pool = self.deps().store.pool();
        if let Some(cmid) = m.client_message_id {
            if let Some(first) = messages::find_by_client_id(pool, m.owner, cmid).await? {
                return Ok(Accepted::Repeat(Box::new(first)));
            }
        }
        let project = match m.target {
            Target::Session(_) => None,
            // Looked up on the file system before the write lock is taken.
            Target::NewIn(raw) => Some(resolve_project(&self.deps().projects, raw).await?),
        };
        let now = store::now_ms();
        let expires_at = now + self.lifetime_ms();
        let existing = match m.target {
            Target::Session(id) => Some(parse_session_id(id)?),
            Target::NewIn(_) => None,
        };
        // A watch listens to a running actor before the message is committed, as the actor
        // may take it at once. Otherwise (no actor yet, or a new session) it starts after
        // the commit, and before the actor is woken; no actor is started for a message
        // that may yet be refused.
        let early = match (&existing, m.watch_until) {
            (Some(id), Some(_)) => self.subscribe_running(id),
            _ => None,
        };
        let new = NewMessage {
            sessions: self.clone(),
            owner: m.owner.to_string(),
            sees_all: m.sees_all,
            text: m.text.to_string(),
            client_message_id: m.client_message_id.map(str::to_string),
            existing,
            project,
            now,
            expires_at,
        };
        let stored = self
            .deps()
            .store
            .write_unless(move |tx| Box::pin(new.store(tx)))
            .await;
        let (session_id, message_id) = match stored {
            Ok(Ok(ids)) => ids,
            Ok(Err(refusal)) => return Err(refusal),
            Err(e) if store::is_unique_violation(&e) && m.client_message_id.is_some() => {
                // The same clientMessageId raced in: answer with the first one.
                let cmid = m.client_message_id.unwrap_or_default();
                return match messages::find_by_client_id(pool, m.owner, cmid).await? {
                    Some(first) => Ok(Accepted::Repeat(Box::new(first))),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        if matches!(m.target, Target::NewIn(_)) {
            self.folders_changed();
        }
        tracing::info!(%session_id, message_id, "message queued");
        let watch = m.watch_until.map(|deadline| match early {
            Some(events) => self.watch_from_before(events, message_id, deadline),
            None => self.watch(&session_id, message_id, deadline),
        });
        self.wake(&session_id);
        Ok(Accepted::Queued {
            session_id,
            message_id,
            expires_at,
            watch,
        })
    }

    /// Moves an active session's end to now + `sessions.lifetime` and clears this period's
    /// warning. Returns the new end (ms).
    pub async fn keep_alive(
        &self,
        session_id: &str,
        owner: &str,
        sees_all: bool,
    ) -> Result<i64, AcceptError> {
        let expires_at = store::now_ms() + self.lifetime_ms();
        let mut tx = self.deps().store.begin_write().await?;
        let found = sessions::extend(&mut *tx, session_id, expires_at).await?;
        let asker = Asker { owner, sees_all };
        callers_active(session_id, found, asker, |(o, state)| {
            (o.as_str(), state.as_str())
        })?;
        tx.commit().await?;
        tracing::info!(session_id, expires_at, "session kept alive");
        Ok(expires_at)
    }

    fn lifetime_ms(&self) -> i64 {
        self.deps().session_settings.lifetime.as_millis() as i64
    }

    fn validate(&self, m: &Message<'_>) -> Result<(), AcceptError> {
        if m.text.trim().is_empty() {
            return Err(refused(Refusal::EmptyMessage, "message must not be empty"));
        }
        let limit = self.deps().session_settings.max_message_bytes;
        if m.text.len() > limit {
            return Err(refused(
                Refusal::MessageTooLarge,
                format!(
                    "message is {} bytes; the limit (sessions.max_message_bytes) is {limit}",
                    m.text.len()
                ),
            ));
        }
        if let Some(cmid) = m.client_message_id {
            if cmid.is_empty() || cmid.len() > MAX_CLIENT_MESSAGE_ID {
                return Err(refused(
                    Refusal::InvalidClientMessageId,
                    format!("clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// A message to store, owned, for the write transaction.
struct NewMessage {
    sessions: Sessions,
    owner: String,
    sees_all: bool,
    text: String,
    client_message_id: Option<String>,
    /// The session it goes to; None for a new one in `project`.
    existing: Option<String>,
    project: Option<PathBuf>,
    now: i64,
    expires_at: i64,
}

/// Ok(Err(_)) refuses (and rolls back); Err is the database's.
type Checked<T> = sqlx::Result<Result<T, AcceptError>>;

impl NewMessage {
    /// In one transaction: the session found and touched (or created), and the message
    /// stored `queued`. Returns (session id, message id).
    async fn store(self, tx: &mut SqliteConnection) -> Checked<(String, i64)> {
        let found = match (&self.existing, &self.project) {
            (Some(id), _) => self.touch_existing(tx, id).await?,
            (None, Some(project)) => self.create(tx, project).await?,
            (None, None) => unreachable!("a new session's folder is resolved"),
        };
        let session_id = match found {
            Ok(id) => id,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let message_id = messages::insert_user(
            tx,
            &messages::NewUserMessage {
                session_id: &session_id,
                owner: &self.owner,
                text: &self.text,
                client_message_id: self.client_message_id.as_deref(),
                now: self.now,
            },
        )
        .await?;
        Ok(Ok((session_id, message_id)))
    }

    /// The existing session the message goes to, touched (active now, its end moved):
    /// refused when it is not the caller's, not active, or its queue is full.
    async fn touch_existing(&self, tx: &mut SqliteConnection, id: &str) -> Checked<String> {
        let touched = sessions::touch_for_accept(tx, id, self.now, self.expires_at).await?;
        let asker = Asker {
            owner: &self.owner,
            sees_all: self.sees_all,
        };
        let queued = match callers_active(id, touched, asker, |(o, state, _)| {
            (o.as_str(), state.as_str())
        }) {
            Ok((_, _, queued)) => queued,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let limit = self.sessions.deps().session_settings.max_queued_per_session;
        if queued >= i64::from(limit) {
            return Ok(Err(refused(
                Refusal::QueueFull(Duration::from_secs(5)),
                format!(
                    "{queued} messages are already waiting in this session \
                     (sessions.max_queued_per_session = {limit}); wait for a reply"
                ),
            )));
        }
        Ok(Ok(id.to_string()))
    }

    /// A new session of the owner in `project`, within the owner's caps (read in the
    /// write transaction that creates it, so two requests cannot both take the last one).
    async fn create(&self, tx: &mut SqliteConnection, project: &Path) -> Checked<String> {
        let deps = self.sessions.deps();
        let (owner, now) = (self.owner.as_str(), self.now);
        let window = NEW_SESSION_WINDOW.as_millis() as i64;
        let load = sessions::owner_load(&mut *tx, owner, now - window).await?;
        let active_limit = i64::from(deps.session_settings.max_active_per_owner);
        if load.active >= active_limit {
            tracing::info!(
                owner,
                limit = "sessions.max_active_per_owner",
                "per-owner limit reached"
            );
            return Ok(Err(refused(
                Refusal::TooManySessions(ACTIVE_SESSIONS_RETRY_AFTER),
                format!(
                    "{} sessions are active (sessions.max_active_per_owner = {active_limit}); \
                     end one (DELETE /api/sessions/{{id}}) or continue one with sessionId",
                    load.active
                ),
            )));
        }
        let rate = i64::from(deps.limits.new_sessions_per_minute);
        if load.created_since >= rate {
            // A slot frees when the oldest session of the window leaves it.
            let oldest = load.oldest_since.unwrap_or(now);
            let wait = (oldest + window - now).max(0) as u64;
            tracing::info!(
                owner,
                limit = "limits.new_sessions_per_minute",
                "per-owner limit reached"
            );
            return Ok(Err(refused(
                Refusal::TooManyNewSessions(Duration::from_millis(wait)),
                format!(
                    "{} sessions were started in the last minute (limits.new_sessions_per_minute \
                     = {rate}); try again later or continue one with sessionId",
                    load.created_since
                ),
            )));
        }
        // A warm spare waiting in this folder gives the session its id, and so its process.
        let id = self
            .sessions
            .claim_spare(project)
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let project = project.to_string_lossy();
        let title = Path::new(project.as_ref())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        sessions::insert(
            tx,
            &sessions::NewSession {
                id: &id,
                owner,
                agent: deps.agent.name(),
                project_path: &project,
                title: title.as_deref(),
                now,
                expires_at: self.expires_at,
            },
        )
        .await?;
        Ok(Ok(id))
    }
}

/// A session id as sent, checked to be a UUID (in its canonical form).
fn parse_session_id(id: &str) -> Result<String, AcceptError> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| refused(Refusal::InvalidSessionId, "sessionId must be a UUID"))
}

/// An existing directory inside one of `projects.roots`, made canonical. The file-system
/// calls run on a blocking thread.
pub(crate) async fn resolve_project(
    projects: &ProjectSettings,
    raw: &str,
) -> Result<PathBuf, AcceptError> {
    let (projects, raw) = (projects.clone(), raw.to_string());
    tokio::task::spawn_blocking(move || resolve_project_blocking(&projects, &raw))
        .await
        .unwrap_or_else(|e| {
            Err(refused(
                Refusal::FolderUnchecked,
                format!("the project folder could not be checked: {e}"),
            ))
        })
}

fn resolve_project_blocking(projects: &ProjectSettings, raw: &str) -> Result<PathBuf, AcceptError> {
    let path = expand_home(Path::new(raw.trim()));
    if raw.trim().is_empty() || !path.is_absolute() {
        return Err(refused(
            Refusal::InvalidProjectPath,
            "projectPath must be an absolute path",
        ));
    }
    // Outside the roots is one answer, whether or not the path exists: an error must not
    // tell a caller what lies beyond the folders it may use.
    let outside = || {
        refused(
            Refusal::OutsideProjects,
            format!("projectPath {raw} is outside the folders tether may use (projects.roots)"),
        )
    };
    let roots = projects.canonical_roots();
    let Ok(canonical) = std::fs::canonicalize(&path) else {
        // It does not exist: judged by its words alone (no `..`), as a path inside a root.
        let plain = !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        let lexical_roots = projects.roots.iter().map(|r| expand_home(r));
        if plain
            && roots
                .iter()
                .cloned()
                .chain(lexical_roots)
                .any(|r| path.starts_with(r))
        {
            return Err(refused(
                Refusal::ProjectNotFound,
                format!("projectPath {raw} does not exist"),
            ));
        }
        return Err(outside());
    };
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(outside());
    }
    if !canonical.is_dir() {
        return Err(refused(
            Refusal::ProjectNotADirectory,
            format!("projectPath {raw} is not a directory"),
        ));
    }
    Ok(canonical)
}

/// A session's or terminal's folder, checked again right before a process starts in it:
/// made canonical, still a directory, still inside `projects.roots` (a folder swapped for a
/// symlink to elsewhere since the session was created is refused). The process runs in the
/// canonical path returned, so the check and the start agree. Blocking, but brief (a few
/// file-system calls).
pub(crate) fn checked_folder(
    projects: &ProjectSettings,
    path: &Path,
) -> Result<PathBuf, AcceptError> {
    let shown = path.display();
    let canonical = std::fs::canonicalize(path).map_err(|_| {
        refused(
            Refusal::ProjectNotFound,
            format!("the project folder {shown} no longer exists"),
        )
    })?;
    if !projects
        .canonical_roots()
        .iter()
        .any(|root| canonical.starts_with(root))
    {
        tracing::warn!(folder = %shown, resolved = %canonical.display(), "a project folder now leads outside projects.roots; not started");
        return Err(refused(
            Refusal::OutsideProjects,
            format!(
                "the project folder {shown} now leads outside the folders tether may use \
                 (projects.roots); nothing was started in it"
            ),
        ));
    }
    if !canonical.is_dir() {
        return Err(refused(
            Refusal::ProjectNotADirectory,
            format!("the project folder {shown} is not a directory"),
        ));
    }
    Ok(canonical)
}
