//! API tokens: HS256 JWTs signed with the configured secret (or one generated in the data
//! folder), and the extractor that turns a bearer token into the caller.

use std::{path::Path, sync::Arc};

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{config::Settings, http::ApiError, AppState};

/// File (in the data folder) that holds the generated secret when none is configured.
const SECRET_FILE: &str = "auth.secret";

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
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub owner: String,
    pub role: Role,
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

#[derive(Clone)]
pub struct Auth {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

impl Auth {
    /// Keys from `auth.secret`, or from the secret file in the data folder (created once).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let configured = settings.auth.secret.expose_secret();
        let secret = if configured.is_empty() {
            load_or_create_secret(&settings.data_dir().join(SECRET_FILE))?
        } else {
            configured.as_bytes().to_vec()
        };
        Ok(Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                ttl_secs: settings.auth.token_ttl_days * 24 * 3600,
            }),
        })
    }

    /// A signed token for `owner`.
    pub fn issue(&self, owner: &str, role: Role) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: owner.to_string(),
            role,
            iat: now,
            exp: now + self.inner.ttl_secs,
        };
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &self.inner.encoding,
        )?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &validation).map(|d| d.claims)
    }
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(existing) = std::fs::read(path) {
        if existing.len() >= 32 {
            return Ok(existing);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut secret = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut secret);
    write_private(path, &secret)?;
    tracing::info!(path = %path.display(), "generated a new token secret");
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "send `Authorization: Bearer <token>`; `tether token` prints one",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
        let claims = state
            .auth
            .verify(token.trim())
            .map_err(|_| ApiError::unauthorized("the token is invalid or expired"))?;
        Ok(Caller {
            owner: claims.sub,
            role: claims.role,
        })
    }
}

/// The extractor for admin-only routes.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.is_admin() {
            return Err(ApiError::forbidden(
                "this route needs an admin token (`tether token --admin`)",
            ));
        }
        Ok(Admin(caller))
    }
}
