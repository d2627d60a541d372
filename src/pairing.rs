//! Pairing a phone in one scan: `tether pair` stores a one-time code (hashed) and shows a
//! `tether://pair?…` link as a QR code; the phone trades the code for a token of its own at
//! `POST /api/pair`. Wrong, used and expired codes count toward a lockout that answers 429
//! for the rest of the minute.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    auth::{Auth, Issued, Role},
    store::{self, tokens, Store},
};

/// Letters and digits that cannot be misread for one another (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters of a code: 31^10, about 2^49, against at most a few guesses a minute.
const CODE_LEN: usize = 10;
/// The window of `auth.pairing_attempts_per_minute`.
const WINDOW: Duration = Duration::from_secs(60);

/// A new code, e.g. `K7MQ-2XRT-9P`: grouped for reading aloud; the dashes are optional.
pub fn new_code() -> String {
    let mut rng = rand::thread_rng();
    let chars: Vec<char> = (0..CODE_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The stored form of a code: SHA-256 (hex) of its letters, upper-cased, without dashes or
/// spaces.
pub fn hash(code: &str) -> String {
    let plain: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex(&Sha256::digest(plain.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `tether pair` prints.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pairing {
    pub code: String,
    pub url: String,
    pub fingerprint: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The `tether://pair?…` link the QR code holds.
    pub link: String,
}

/// Stores a new code for `owner` (the paired token speaks for it), valid for `ttl`.
pub async fn create(
    store: &Store,
    owner: &str,
    name: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<(String, i64)> {
    let code = new_code();
    let now = store::now_ms();
    let expires_at = now + ttl.as_millis() as i64;
    tokens::insert_pairing_code(
        store.pool(),
        &tokens::NewPairingCode {
            code_hash: &hash(&code),
            owner,
            name,
            now,
            expires_at,
        },
    )
    .await?;
    Ok((code, expires_at))
}

/// The link a phone scans: the server's URL, the code and, with TLS, the certificate's
/// SHA-256 fingerprint to pin.
pub fn link(url: &str, code: &str, fingerprint: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("url", url).append_pair("code", code);
    if let Some(fp) = fingerprint {
        query.append_pair("fp", fp);
    }
    format!("tether://pair?{}", query.finish())
}

/// The link as a QR code drawn with text (two modules a character), for a terminal.
pub fn qr_text(link: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::new(link.as_bytes())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}

/// Why a code was not accepted; every one answers the same 401 to the phone.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Unknown, used or expired: one answer for all, to reveal nothing.
    BadCode,
    /// Too many bad codes this minute: try again after this.
    LockedOut(Duration),
}

/// Bad attempts in the last minute, for everyone together (a code is guessed by trying
/// many, from anywhere).
pub struct Lockout {
    limit: usize,
    failures: Mutex<VecDeque<Instant>>,
}

impl Lockout {
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute.max(1) as usize,
            failures: Mutex::new(VecDeque::new()),
        }
    }

    /// Err with the time left while locked out.
    fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            failures.pop_front();
        }
        match failures.front() {
            Some(oldest) if failures.len() >= self.limit => {
                Err(WINDOW.saturating_sub(now.duration_since(*oldest)))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.push_back(now);
    }
}

/// Trades a code for a new paired token (once), named `device_name` (else the name given
/// to `tether pair`).
pub async fn redeem(
    store: &Store,
    auth: &Auth,
    lockout: &Lockout,
    code: &str,
    device_name: Option<&str>,
) -> Result<Issued, RedeemError> {
    let started = Instant::now();
    lockout
        .check(started)
        .map_err(|d| RedeemError::Refused(Refused::LockedOut(d)))?;
    let wanted = hash(code);
    let now = store::now_ms();
    let mut tx = store.begin_write().await?;
    let found = tokens::usable_pairing_code(&mut *tx, &wanted, now)
        .await?
        .filter(|p| bool::from(p.code_hash.as_bytes().ct_eq(wanted.as_bytes())));
    let Some(pairing) = found else {
        lockout.failed(started);
        return Err(RedeemError::Refused(Refused::BadCode));
    };
    let name = device_name.or(pairing.name.as_deref());
    let issued = auth
        .issue_recorded(&mut *tx, &pairing.owner, Role::User, name, true)
        .await
        .map_err(RedeemError::Other)?;
    if !tokens::use_pairing_code(&mut *tx, pairing.id, &issued.claims.jti, now).await? {
        lockout.failed(started);
        return Err(RedeemError::Refused(Refused::BadCode));
    }
    tx.commit().await?;
    tracing::info!(owner = %pairing.owner, token_id = %issued.claims.jti, "a phone was paired");
    Ok(issued)
}

#[derive(Debug)]
pub enum RedeemError {
    Refused(Refused),
    Db(sqlx::Error),
    Other(anyhow::Error),
}

impl From<sqlx::Error> for RedeemError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_hash_the_same_however_typed() {
        let code = new_code();
        assert_eq!(code.len(), CODE_LEN + 2);
        assert!(code
            .chars()
            .all(|c| c == '-' || ALPHABET.contains(&(c as u8))));
        let typed = code.replace('-', " ").to_lowercase();
        assert_eq!(hash(&code), hash(&typed));
        assert_ne!(hash(&code), hash(&new_code()));
    }

    #[test]
    fn the_lockout_opens_again_after_its_minute() {
        let lockout = Lockout::new(2);
        let t0 = Instant::now();
        assert!(lockout.check(t0).is_ok());
        lockout.failed(t0);
        lockout.failed(t0 + Duration::from_secs(10));
        let wait = lockout.check(t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(lockout.check(t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn the_link_carries_url_code_and_fingerprint() {
        let l = link("https://192.168.1.5:8787", "K7MQ-2XRT-9P", Some("AB:CD"));
        assert_eq!(
            l,
            "tether://pair?url=https%3A%2F%2F192.168.1.5%3A8787&code=K7MQ-2XRT-9P&fp=AB%3ACD"
        );
    }
}
