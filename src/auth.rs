//! API tokens: HS256 JWTs signed with the configured secret (or one generated in the data
//! folder), and who a token speaks for. Tokens only: the HTTP extractors that read them from
//! requests live in `http::extract`.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use jsonwebtoken::{errors::ErrorKind, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{
    config::Settings,
    datadir,
    store::{devices, pushes, tokens, Store},
};

/// File (in the data folder) that holds the generated secret when none is configured.
const SECRET_FILE: &str = "auth.secret";

/// Shortest secret accepted, in bytes: HS256 tokens are only as strong as their secret, and
/// a short one can be guessed offline from any token (RFC 7518 asks for at least 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

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
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
    /// Lifetime of a paired token (a phone's): long, as phones are revoked, not expired.
    paired_ttl_secs: u64,
    /// Ids of revoked tokens (loaded at start, added to by each revocation).
    revoked: RwLock<HashSet<String>>,
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
        let secret = if configured.is_empty() {
            load_or_create_secret(&settings.data_dir())?
        } else {
            configured.as_bytes().to_vec()
        };
        Ok(Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                ttl_secs: settings.auth.token_ttl.as_secs(),
                paired_ttl_secs: settings
                    .auth
                    .paired_token_ttl
                    .map_or(NEVER_SECS, |d| d.as_secs()),
                revoked: RwLock::new(HashSet::new()),
            }),
        })
    }

    /// A signed token for `owner`, with `auth.token_ttl`. A user token for the admin's
    /// name is refused. Recorded nowhere: see [`Self::issue_recorded`].
    pub fn issue(&self, owner: &str, role: Role) -> anyhow::Result<String> {
        Ok(self.sign(owner, role, self.inner.ttl_secs)?.token)
    }

    /// A token for `owner` recorded in the store (listed, revocable): a paired one lives
    /// `auth.paired_token_ttl`, others `auth.token_ttl`.
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
        let issued = self.sign(owner, role, ttl)?;
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
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.inner.encoding)?;
        Ok(Issued { token, claims })
    }

    /// Refuses the token `id` from now on (its row is marked by the caller).
    pub fn forget(&self, id: &str) {
        self.revoked().insert(id.to_string());
    }

    /// Loads the ids of revoked tokens (at start).
    pub fn load_revoked(&self, ids: impl IntoIterator<Item = String>) {
        self.revoked().extend(ids);
    }

    fn revoked(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The claims of a token this server signed and that has not expired. A user token
    /// whose owner is the admin's name is refused (`InvalidSubject`).
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &validation)?.claims;
        if claims.role == Role::User && is_reserved_owner(&claims.sub) {
            return Err(ErrorKind::InvalidSubject.into());
        }
        let revoked = self.inner.revoked.read().unwrap_or_else(|e| e.into_inner());
        if revoked.contains(&claims.jti) {
            return Err(ErrorKind::InvalidToken.into());
        }
        Ok(claims)
    }
}

/// Revokes the token `id` in the store, in one transaction: marked revoked, the devices
/// registered with it disabled and their unsent pushes cancelled. Returns those devices.
/// (A running server must also [`Auth::forget`] it.)
pub async fn revoke_recorded(store: &Store, id: &str, now: i64) -> sqlx::Result<Vec<i64>> {
    let mut tx = store.begin_write().await?;
    tokens::revoke(&mut *tx, id, now).await?;
    let disabled = devices::disable_for_api_token(&mut *tx, id, now).await?;
    for device in &disabled {
        pushes::cancel_pending_for_device(&mut *tx, *device, "its API token was revoked", now)
            .await?;
    }
    tx.commit().await?;
    Ok(disabled)
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
    let mut secret = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut secret);
    datadir::write_private(&path, &secret)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new token secret");
    Ok(secret)
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
            assert!(auth.issue(name, Role::User).is_err(), "{name:?}");
        }
        assert!(auth.issue("admin", Role::Admin).is_ok());
        assert!(auth.issue("administrator", Role::User).is_ok());
    }

    #[test]
    fn a_user_token_for_the_admin_name_does_not_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = Auth::from_settings(&settings(SECRET, tmp.path())).unwrap();
        let now = chrono::Utc::now().timestamp() as u64;
        let forge = |sub: &str, role| {
            let claims = Claims {
                sub: sub.into(),
                role,
                iat: now,
                exp: now + 60,
                jti: "forged".into(),
            };
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        for sub in ["admin", "Admin"] {
            let err = auth.verify(&forge(sub, Role::User)).unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::InvalidSubject);
        }
        assert_eq!(
            auth.verify(&forge("admin", Role::Admin)).unwrap().sub,
            "admin"
        );
        assert_eq!(auth.verify(&forge("me", Role::User)).unwrap().sub, "me");
    }

    #[cfg(unix)]
    #[test]
    fn the_generated_secret_is_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let s = settings("", tmp.path());
        let first = Auth::from_settings(&s)
            .unwrap()
            .issue("me", Role::User)
            .unwrap();
        let dir = tmp.path().join("data");
        let file = dir.join(SECRET_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        let again = Auth::from_settings(&s).unwrap();
        assert_eq!(
            again.verify(&first).unwrap().sub,
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
