//! API tokens: HS256 JWTs signed with the configured secret (or one generated in the data
//! folder), each recorded in the store and usable only while its row says so; who a token
//! speaks for; revocation (ending what a token opened) and rotation of the secret. Tokens
//! only: the HTTP extractors that read them from requests live in `http::extract`.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use anyhow::Context;
use jsonwebtoken::{errors::ErrorKind, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::sync::watch;

use crate::{
    config::Settings,
    datadir,
    store::{self, devices, pushes, tokens, Store},
};

/// File (in the data folder) that holds the generated secret when none is configured.
const SECRET_FILE: &str = "auth.secret";

/// Shortest secret accepted, in bytes: HS256 tokens are only as strong as their secret, and
/// a short one can be guessed offline from any token (RFC 7518 asks for at least 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// How far a token's times may be off this clock, in seconds: `exp` passed by less, or an
/// `nbf`/`iat` ahead by less, is still accepted (clocks of one machine or a phone's agree
/// within this; jsonwebtoken's default of 60 s is a minute more for a stolen token).
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// How often a running server looks at what other processes changed: tokens revoked by
/// `tether tokens revoke` or `tether secret rotate`, and a rotated secret file. Well under
/// the second within which a revocation ends the token's connections.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Lifetime of the admin token a command (`tether sessions`) records for its one call to
/// the running server; it revokes it when done, this bounds one left by a killed command.
pub const COMMAND_TOKEN_TTL: Duration = Duration::from_secs(60);

/// The owner admin tokens speak for. No user token may carry this name (in any case): it
/// would see the sessions and devices the admin owns.
pub const ADMIN_OWNER: &str = "admin";

/// Whether `owner` is a name no user token may have: the admin's, in any case, or blank.
pub fn is_reserved_owner(owner: &str) -> bool {
    let owner = owner.trim();
    owner.is_empty() || owner.eq_ignore_ascii_case(ADMIN_OWNER)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and manages every session.
    Admin,
    /// A phone or person: sees its own sessions.
    User,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who is calling: sessions and devices belong to this owner.
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    /// The token's id: listed and revoked by it (`GET /api/tokens`).
    pub jti: String,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }
}

/// The authenticated caller of a request (read from its bearer token by `http::extract`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub owner: String,
    pub role: Role,
    /// The id of the token it called with.
    pub token_id: Option<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The owner whose rows this caller may see; `None` for an admin (everyone's).
    pub fn scope(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.owner.as_str())
    }

    pub fn can_see(&self, owner: &str) -> bool {
        self.is_admin() || self.owner == owner
    }
}

/// A caller with an admin token: the extractor for admin-only routes (`http::extract`).
pub struct Admin(pub Caller);

#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// The keys of the secret in use: replaced when a rotation writes a new secret file.
    keys: RwLock<Arc<Keys>>,
    /// The generated secret's file, looked at for a rotation; None with `auth.secret` set.
    secret_file: Option<PathBuf>,
    ttl_secs: u64,
    /// Lifetime of a paired token (a phone's): long, as phones are revoked, not expired.
    paired_ttl_secs: u64,
    /// What this process knows of the recorded tokens it has been shown (filled from the
    /// store on a token's first use; revocations overwrite). A token not here is looked up.
    known: RwLock<HashMap<String, Known>>,
    /// Bumped at each revocation this process learns of: every long-lived connection waits
    /// on it and ends when its own token is the revoked one.
    revocations: watch::Sender<u64>,
    /// The store's count of revoked tokens at the last look ([`Auth::refresh`]).
    revoked_seen: Mutex<Option<i64>>,
    /// Whether the last look at the secret file failed: warned once, not at every look.
    secret_unreadable: AtomicBool,
}

/// One secret's keys.
struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// SHA-256 of the secret: tells a rotated file from the secret in use.
    digest: ring::digest::Digest,
}

impl Keys {
    fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            digest: ring::digest::digest(&ring::digest::SHA256, secret),
        }
    }
}

/// A recorded token as this process last saw its row.
#[derive(Debug, Clone)]
enum Known {
    Usable {
        owner: String,
        role: Role,
        /// ms, as in the row.
        expires_at: i64,
    },
    Revoked,
}

impl Known {
    fn of(row: &tokens::TokenRow) -> Self {
        if row.revoked_at.is_some() {
            return Self::Revoked;
        }
        Self::Usable {
            owner: row.owner.clone(),
            // The column allows only these two (a CHECK constraint).
            role: if row.role == Role::Admin.as_str() {
                Role::Admin
            } else {
                Role::User
            },
            expires_at: row.expires_at,
        }
    }

    /// Whether a token whose signature and times are good may be used, by what its row says:
    /// not revoked, not expired, and for the owner and role it names.
    fn admits(&self, claims: &Claims, now_ms: i64) -> Result<(), Refusal> {
        match self {
            Self::Revoked => Err(Refusal::Revoked),
            Self::Usable {
                owner,
                role,
                expires_at,
            } if *owner == claims.sub
                && *role == claims.role
                && *expires_at + (CLOCK_LEEWAY_SECS * 1000) as i64 > now_ms =>
            {
                Ok(())
            }
            Self::Usable { .. } => Err(Refusal::NotIssued),
        }
    }
}

/// Why a token is refused.
#[derive(Debug)]
pub enum Refusal {
    /// Malformed, not signed with the secret in use, expired, or dated in the future.
    Invalid(jsonwebtoken::errors::Error),
    /// A user token for the admin's owner name.
    AdminName,
    /// Signed with the secret but never issued: no row has its id (or the row names
    /// another owner or role, or has expired).
    NotIssued,
    /// Revoked (`DELETE /api/tokens/{id}`, `tether tokens revoke`, `tether secret rotate`).
    Revoked,
    /// The store could not be read.
    Store(sqlx::Error),
}

/// A paired token with `auth.paired_token_ttl = "off"` lives this long: in effect, until it
/// is revoked.
const NEVER_SECS: u64 = 100 * 365 * 24 * 3600;

/// A token just made, and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

impl Auth {
    /// Keys from `auth.secret`, or from the secret file in the data folder (created once,
    /// private). A short secret, or a secret file others can read, is refused.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        check_configured_secret(settings)?;
        let configured = settings.auth.secret.expose_secret();
        let (secret, secret_file) = if configured.is_empty() {
            let dir = settings.data_dir();
            (load_or_create_secret(&dir)?, Some(dir.join(SECRET_FILE)))
        } else {
            (configured.as_bytes().to_vec(), None)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(Arc::new(Keys::new(&secret))),
                secret_file,
                ttl_secs: settings.auth.token_ttl.as_secs(),
                paired_ttl_secs: settings
                    .auth
                    .paired_token_ttl
                    .map_or(NEVER_SECS, |d| d.as_secs()),
                known: RwLock::new(HashMap::new()),
                revocations: watch::Sender::new(0),
                revoked_seen: Mutex::new(None),
                secret_unreadable: AtomicBool::new(false),
            }),
        })
    }

    /// A token for `owner` recorded in the store (listed, revocable): a paired one lives
    /// `auth.paired_token_ttl`, others `auth.token_ttl`. Only recorded tokens are accepted.
    pub async fn issue_recorded(
        &self,
        ex: impl sqlx::SqliteExecutor<'_>,
        owner: &str,
        role: Role,
        name: Option<&str>,
        paired: bool,
    ) -> anyhow::Result<Issued> {
        let ttl = if paired {
            self.inner.paired_ttl_secs
        } else {
            self.inner.ttl_secs
        };
        self.record(ex, owner, role, name, paired, ttl).await
    }

    /// An admin token for one command's call to the running server (`tether sessions`),
    /// recorded as `name` and living [`COMMAND_TOKEN_TTL`]; the command revokes it when done.
    pub async fn issue_for_command(
        &self,
        ex: impl sqlx::SqliteExecutor<'_>,
        name: &str,
    ) -> anyhow::Result<Issued> {
        let ttl = COMMAND_TOKEN_TTL.as_secs();
        self.record(ex, ADMIN_OWNER, Role::Admin, Some(name), false, ttl)
            .await
    }

    async fn record(
        &self,
        ex: impl sqlx::SqliteExecutor<'_>,
        owner: &str,
        role: Role,
        name: Option<&str>,
        paired: bool,
        ttl_secs: u64,
    ) -> anyhow::Result<Issued> {
        let issued = self.sign(owner, role, ttl_secs)?;
        let c = &issued.claims;
        tokens::insert(
            ex,
            &tokens::NewToken {
                id: &c.jti,
                name,
                owner,
                role: role.as_str(),
                paired,
                now: c.iat as i64 * 1000,
                expires_at: (c.exp as i64).saturating_mul(1000),
            },
        )
        .await?;
        Ok(issued)
    }

    /// A signed token, recorded nowhere (so refused by [`Self::verify`]): only the recorded
    /// ways above hand tokens out.
    fn sign(&self, owner: &str, role: Role, ttl_secs: u64) -> anyhow::Result<Issued> {
        if role == Role::User && is_reserved_owner(owner) {
            anyhow::bail!(
                "the owner name {owner:?} is reserved for the admin; choose another name \
                 (`tether token --admin` prints an admin token)"
            );
        }
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: owner.to_string(),
            role,
            iat: now,
            exp: now + ttl_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.keys().encoding)?;
        Ok(Issued { token, claims })
    }

    fn keys(&self) -> Arc<Keys> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Known>> {
        self.inner.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn known_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Known>> {
        self.inner.known.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses the token `id` from now on and ends the connections it opened (its row is
    /// marked by the caller, see [`revoke_recorded`]).
    pub fn forget(&self, id: &str) {
        self.mark_revoked([id.to_string()]);
    }

    /// Marks `ids` revoked; wakes the long-lived connections when one of them was not yet.
    /// Returns how many were new.
    fn mark_revoked(&self, ids: impl IntoIterator<Item = String>) -> usize {
        let mut newly = 0;
        {
            let mut known = self.known_mut();
            for id in ids {
                if !matches!(known.insert(id, Known::Revoked), Some(Known::Revoked)) {
                    newly += 1;
                }
            }
        }
        if newly > 0 {
            self.inner.revocations.send_modify(|n| *n += 1);
        }
        newly
    }

    /// Whether this process knows the token `id` to be revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        matches!(self.known().get(id), Some(Known::Revoked))
    }

    /// Resolves once the token `id` is revoked (at once if it is already): what each
    /// long-lived connection (event stream, `/v1` stream, terminal WebSocket) ends on.
    /// Never, for a caller without a token id.
    pub fn until_revoked(&self, id: Option<String>) -> impl Future<Output = ()> + Send + 'static {
        // Subscribed before the first check: a revocation in between still wakes it.
        let mut wake = self.inner.revocations.subscribe();
        let auth = self.clone();
        async move {
            let Some(id) = id else {
                return std::future::pending().await;
            };
            while !auth.is_revoked(&id) {
                if wake.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// The claims of a token signed with the secret in use, within its times (with
    /// [`CLOCK_LEEWAY_SECS`]: not expired, no `nbf` or `iat` ahead), and not a user token for
    /// the admin's name. Says nothing of whether it was issued: see [`Self::verify`].
    fn decode(&self, token: &str) -> Result<Claims, Refusal> {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.keys().decoding, &validation)
            .map_err(Refusal::Invalid)?
            .claims;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if claims.iat > now + CLOCK_LEEWAY_SECS {
            return Err(Refusal::Invalid(ErrorKind::ImmatureSignature.into()));
        }
        if claims.role == Role::User && is_reserved_owner(&claims.sub) {
            return Err(Refusal::AdminName);
        }
        Ok(claims)
    }

    /// The claims of a token this server issued: well signed and in its times
    /// ([`Self::decode`]), and recorded in the store, not revoked, not expired, for the owner
    /// and role it names. Rows are read once per token and kept; revocations overwrite.
    pub async fn verify(&self, pool: &SqlitePool, token: &str) -> Result<Claims, Refusal> {
        let claims = self.decode(token)?;
        let cached = self.known().get(&claims.jti).cloned();
        let known = match cached {
            Some(known) => known,
            None => {
                let row = tokens::get(pool, &claims.jti)
                    .await
                    .map_err(Refusal::Store)?
                    .ok_or(Refusal::NotIssued)?;
                // A revocation that came meanwhile wins over the row read before it.
                self.known_mut()
                    .entry(claims.jti.clone())
                    .or_insert_with(|| Known::of(&row))
                    .clone()
            }
        };
        known.admits(&claims, store::now_ms())?;
        Ok(claims)
    }

    /// One look at what other processes changed: a rotated secret file is taken up (tokens
    /// of the earlier secret are refused from then on), and tokens revoked in the store
    /// since the last look are refused and their connections ended. Run at start and every
    /// [`WATCH_INTERVAL`] by [`watch`].
    pub async fn refresh(&self, store: &Store) -> sqlx::Result<()> {
        self.reload_secret().await;
        let count = tokens::revoked_count(store.pool()).await?;
        if *self.revoked_seen() == Some(count) {
            return Ok(());
        }
        let ids = tokens::revoked_ids(store.pool(), store::now_ms()).await?;
        let first = self.revoked_seen().is_none();
        let newly = self.mark_revoked(ids);
        *self.revoked_seen() = Some(count);
        if newly > 0 && !first {
            tracing::info!(
                tokens = newly,
                "tokens revoked by another process are refused"
            );
        }
        Ok(())
    }

    fn revoked_seen(&self) -> std::sync::MutexGuard<'_, Option<i64>> {
        self.inner
            .revoked_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up the secret file when `tether secret rotate` replaced it.
    async fn reload_secret(&self) {
        let Some(path) = self.inner.secret_file.clone() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || read_secret(&path)).await;
        let unreadable = &self.inner.secret_unreadable;
        match read {
            Ok(Ok(secret)) => {
                unreadable.store(false, Ordering::Relaxed);
                let keys = Keys::new(&secret);
                if keys.digest.as_ref() != self.keys().digest.as_ref() {
                    *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                    tracing::warn!(
                        "the token secret was replaced (`tether secret rotate`): tokens signed \
                         with the earlier one are refused"
                    );
                }
            }
            Ok(Err(e)) => {
                if !unreadable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "cannot use the token secret file; the secret in use stays"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the token secret file failed"),
        }
    }
}

/// Runs [`Auth::refresh`] every [`WATCH_INTERVAL`] until `stop` turns true: how a running
/// server learns of revocations and rotations made by other processes (the CLI).
pub async fn watch(auth: Auth, store: Store, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        match auth.refresh(&store).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "could not look for revoked tokens");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Revokes the token `id` in the store, in one transaction: marked revoked, the devices
/// registered with it disabled and their unsent pushes cancelled. Returns those devices.
/// (A running server must also [`Auth::forget`] it; one in another process notices within
/// [`WATCH_INTERVAL`].)
pub async fn revoke_recorded(store: &Store, id: &str, now: i64) -> sqlx::Result<Vec<i64>> {
    let mut tx = store.begin_write().await?;
    tokens::revoke(&mut *tx, id, now).await?;
    let disabled = disable_devices_of(&mut tx, id, now).await?;
    tx.commit().await?;
    Ok(disabled)
}

/// Revokes every token recorded until now, as [`revoke_recorded`] does each, in one
/// transaction. Returns how many.
pub async fn revoke_all_recorded(store: &Store, now: i64) -> sqlx::Result<usize> {
    let mut tx = store.begin_write().await?;
    let ids = tokens::revoke_all(&mut *tx, now, now).await?;
    for id in &ids {
        disable_devices_of(&mut tx, id, now).await?;
    }
    tx.commit().await?;
    Ok(ids.len())
}

/// Disables the devices registered with the token `id` and cancels their unsent pushes.
async fn disable_devices_of(tx: &mut store::WriteTx, id: &str, now: i64) -> sqlx::Result<Vec<i64>> {
    let disabled = devices::disable_for_api_token(&mut **tx, id, now).await?;
    for device in &disabled {
        pushes::cancel_pending_for_device(&mut **tx, *device, "its API token was revoked", now)
            .await?;
    }
    Ok(disabled)
}

/// What `tether secret rotate` did.
#[derive(Debug)]
pub struct Rotated {
    /// The secret file written.
    pub path: PathBuf,
    /// The tokens it revoked.
    pub revoked: usize,
}

/// Replaces the generated secret (data/auth.secret) with a new random one and revokes every
/// token recorded until now, for the day the secret leaked. A running server takes up both
/// within [`WATCH_INTERVAL`]. Refused, changing nothing, when `auth.secret` is configured:
/// that secret lives in the configuration, which must be changed instead.
pub async fn rotate_secret(settings: &Settings) -> anyhow::Result<Rotated> {
    anyhow::ensure!(
        settings.auth.secret.expose_secret().is_empty(),
        "auth.secret is set in the configuration (a config file or TETHER__AUTH__SECRET), so \
         tether does not use a generated secret: put a new one there (`openssl rand -hex 32`) \
         and restart tether, then revoke the old tokens (`tether tokens revoke ID`). Nothing \
         was changed."
    );
    let dir = settings.data_dir();
    datadir::create_dir(&dir)?;
    let store = Store::open_configured(&settings.database).await?;
    let now = store::now_ms();
    let path = dir.join(SECRET_FILE);
    write_secret(&path, &new_secret())?;
    let revoked = revoke_all_recorded(&store, now).await;
    store.close().await;
    Ok(Rotated {
        path,
        revoked: revoked.context("revoking the earlier tokens (the new secret is written)")?,
    })
}

/// Refuses a configured `auth.secret` shorter than [`MIN_SECRET_BYTES`]. Empty means "use
/// the generated one" and passes.
pub fn check_configured_secret(settings: &Settings) -> anyhow::Result<()> {
    let len = settings.auth.secret.expose_secret().len();
    if len > 0 && len < MIN_SECRET_BYTES {
        anyhow::bail!(
            "auth.secret is {len} bytes; it must be at least {MIN_SECRET_BYTES} \
             (e.g. `openssl rand -hex 32`), or empty to use a generated one"
        );
    }
    Ok(())
}

/// The secret in `dir`'s secret file, created (private) on first use. An existing file that
/// others can read is refused with the command that fixes it.
fn load_or_create_secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(existing) => {
            datadir::check_private(&path)?;
            if existing.len() >= MIN_SECRET_BYTES {
                return Ok(existing);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => datadir::create_dir(dir)?,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = new_secret();
    write_secret(&path, &secret)?;
    tracing::info!(path = %path.display(), "generated a new token secret");
    Ok(secret)
}

/// The secret file as a running server takes it up: private, and long enough.
fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let secret = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    datadir::check_private(path)?;
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "{} holds fewer than {MIN_SECRET_BYTES} bytes",
        path.display()
    );
    Ok(secret)
}

fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}

/// Writes the secret file whole or not at all (a private file beside it, renamed over it):
/// a running server that looks meanwhile reads the old secret or the new one.
fn write_secret(path: &Path, secret: &[u8]) -> anyhow::Result<()> {
    let fresh = path.with_extension("secret.new");
    datadir::write_private(&fresh, secret)
        .and_then(|()| std::fs::rename(&fresh, path))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret: &str, dir: &Path) -> Settings {
        use figment::providers::Format;
        // The embedded defaults alone: other tests set `TETHER__*` variables meanwhile.
        let mut s: Settings =
            figment::Figment::from(figment::providers::Toml::string(crate::config::DEFAULTS))
                .extract()
                .unwrap();
        s.auth.secret = secret.to_string().into();
        s.database.path = dir.join("data/tether.db");
        s
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_configured_secret_shorter_than_32_bytes_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for short in ["k", &SECRET[..31]] {
            let err = Auth::from_settings(&settings(short, tmp.path()))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("at least 32"), "{err}");
            assert!(!err.contains(short), "the secret is not echoed: {err}");
        }
        Auth::from_settings(&settings(SECRET, tmp.path())).expect("32 bytes is enough");
    }

    #[test]
    fn no_user_token_is_issued_for_the_admin_name() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = Auth::from_settings(&settings(SECRET, tmp.path())).unwrap();
        for name in ["admin", "Admin", "ADMIN", " admin ", ""] {
            assert!(auth.sign(name, Role::User, 60).is_err(), "{name:?}");
        }
        assert!(auth.sign("admin", Role::Admin, 60).is_ok());
        assert!(auth.sign("administrator", Role::User, 60).is_ok());
    }

    /// A token with these claims, signed with [`SECRET`].
    fn forge(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_user_token_for_the_admin_name_does_not_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = Auth::from_settings(&settings(SECRET, tmp.path())).unwrap();
        let token = |sub: &str, role: &str| {
            forge(serde_json::json!({
                "sub": sub, "role": role, "iat": now(), "exp": now() + 60, "jti": "forged",
            }))
        };
        for sub in ["admin", "Admin"] {
            let err = auth.decode(&token(sub, "user")).unwrap_err();
            assert!(matches!(err, Refusal::AdminName), "{err:?}");
        }
        assert_eq!(auth.decode(&token("admin", "admin")).unwrap().sub, "admin");
        assert_eq!(auth.decode(&token("me", "user")).unwrap().sub, "me");
    }

    #[test]
    fn times_may_be_off_by_the_leeway_and_no_more() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = Auth::from_settings(&settings(SECRET, tmp.path())).unwrap();
        let leeway = CLOCK_LEEWAY_SECS as i64;
        let token = |iat: i64, exp: i64, nbf: Option<i64>| {
            let mut claims = serde_json::json!({
                "sub": "me", "role": "user", "iat": iat, "exp": exp, "jti": "t",
            });
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf.into();
            }
            forge(claims)
        };
        let refused = |token: String, what: &str| {
            let err = auth.decode(&token).expect_err(what);
            assert!(matches!(err, Refusal::Invalid(_)), "{what}: {err:?}");
        };
        let t = now();
        // Expired within the leeway passes; beyond it (well within jsonwebtoken's 60 s) not.
        auth.decode(&token(t - 100, t - leeway + 2, None))
            .expect("expired within the leeway");
        refused(token(t - 100, t - leeway - 5, None), "expired 10 s ago");
        refused(token(t - 100, t - 30, None), "expired 30 s ago");
        // A future `nbf` or `iat` beyond the leeway is refused.
        auth.decode(&token(t, t + 60, Some(t + leeway - 2)))
            .expect("nbf within the leeway");
        refused(token(t, t + 600, Some(t + leeway + 5)), "nbf ahead");
        auth.decode(&token(t + leeway - 2, t + 60, None))
            .expect("iat within the leeway");
        refused(token(t + leeway + 5, t + 600, None), "iat ahead");
        refused(token(t + 3600, t + 7200, None), "iat an hour ahead");
    }

    #[cfg(unix)]
    #[test]
    fn the_generated_secret_is_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let s = settings("", tmp.path());
        let first = Auth::from_settings(&s)
            .unwrap()
            .sign("me", Role::User, 60)
            .unwrap()
            .token;
        let dir = tmp.path().join("data");
        let file = dir.join(SECRET_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        let again = Auth::from_settings(&s).unwrap();
        assert_eq!(
            again.decode(&first).unwrap().sub,
            "me",
            "the secret is reused"
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Auth::from_settings(&s).err().expect("refused").to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", file.display())),
            "{err}"
        );
    }
}
