//! Pairing a phone in one scan: `tether pair` stores a one-time code (hashed) and shows a
//! `tether://pair?…` link as a QR code; the phone trades the code for a token of its own at
//! `POST /api/pair`. Wrong, used and expired codes count toward a lockout that answers 429
//! for the rest of the minute: per address, so that one address guessing does not keep a
//! phone on another from pairing, under a ceiling for everyone together.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::Rng;

use crate::{
    auth::{Auth, Issued, Role},
    store::{self, tokens, Store},
};

/// Letters and digits that cannot be misread for one another (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters of a code: 31^10, about 2^49, against at most a few guesses a minute.
const CODE_LEN: usize = 10;
/// The window of `auth.pairing_attempts_per_minute` and `auth.pairing_attempts_per_minute_total`.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures of the last minute are remembered. Past it (a guess from each of
/// this many addresses in one minute), while the ceiling for everyone holds, an address not
/// remembered is answered as one that has failed: the table stays bounded.
const MAX_ADDRESSES: usize = 65_536;

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
    hex(ring::digest::digest(&ring::digest::SHA256, plain.as_bytes()).as_ref())
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

/// Bad attempts in the last minute: per address (see [`address_key`]), and from everyone
/// together. An address is locked out once it has made `per_address` of them; once everyone
/// together has made `total`, so is every address that made one, while an address that has
/// made none is still heard (a phone pairing while others guess). Each guess from a new
/// address is then still one more, but a code of 31^10 outlives any number of them.
pub struct Lockout {
    per_address: usize,
    total: usize,
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    /// Each address's failures of the window, oldest first (at most `per_address`).
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    /// Everyone's latest failures, oldest first (at most `total`).
    all: VecDeque<Instant>,
}

/// Drops the failures older than the window from the front of `times`.
fn forget_old(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        times.pop_front();
    }
}

/// What is left of the window that began at `since`.
fn left(since: Instant, now: Instant) -> Duration {
    WINDOW.saturating_sub(now.duration_since(since))
}

/// The address failures are counted under: an IPv4 address as it is (also when mapped into
/// IPv6), an IPv6 address by its /64 (one host or one network usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Lockout {
    /// `per_address` (`auth.pairing_attempts_per_minute`) and `total`
    /// (`auth.pairing_attempts_per_minute_total`), each at least 1.
    pub fn new(per_address: u32, total: u32) -> Self {
        Self {
            per_address: per_address.max(1) as usize,
            total: total.max(1) as usize,
            failures: Mutex::new(Failures::default()),
        }
    }

    /// Err with the time left while `peer` is locked out.
    fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Failures { by_address, all } = &mut *failures;
        forget_old(all, now);
        let ceiling = (all.len() >= self.total)
            .then(|| all.front().copied())
            .flatten();
        let key = address_key(peer);
        let own = by_address.get_mut(&key).map(|mine| {
            forget_old(mine, now);
            (mine.len(), mine.front().copied())
        });
        match (own, ceiling) {
            (Some((n, Some(oldest))), _) if n >= self.per_address => Err(left(oldest, now)),
            (Some((n, _)), Some(since)) if n > 0 => Err(left(since, now)),
            // Not remembered because the table is full: as one that has failed.
            (None, Some(since)) if by_address.len() >= MAX_ADDRESSES => Err(left(since, now)),
            _ => Ok(()),
        }
    }

    fn failed(&self, peer: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Failures { by_address, all } = &mut *failures;
        all.push_back(now);
        if all.len() > self.total {
            all.pop_front();
        }
        let key = address_key(peer);
        if !by_address.contains_key(&key) && by_address.len() >= MAX_ADDRESSES {
            by_address.retain(|_, mine| {
                forget_old(mine, now);
                !mine.is_empty()
            });
            if by_address.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let mine = by_address.entry(key).or_default();
        mine.push_back(now);
        if mine.len() > self.per_address {
            mine.pop_front();
        }
    }
}

/// Trades a code for a new paired token (once), named `device_name` (else the name given
/// to `tether pair`).
pub async fn redeem(
    store: &Store,
    auth: &Auth,
    lockout: &Lockout,
    peer: IpAddr,
    code: &str,
    device_name: Option<&str>,
) -> Result<Issued, RedeemError> {
    let started = Instant::now();
    lockout
        .check(peer, started)
        .map_err(|d| RedeemError::Refused(Refused::LockedOut(d)))?;
    let wanted = hash(code);
    let now = store::now_ms();
    let mut tx = store.begin_write().await?;
    let found = tokens::usable_pairing_code(&mut *tx, &wanted, now).await?;
    let Some(pairing) = found else {
        lockout.failed(peer, started);
        return Err(RedeemError::Refused(Refused::BadCode));
    };
    let name = device_name.or(pairing.name.as_deref());
    let issued = auth
        .issue_recorded(&mut *tx, &pairing.owner, Role::User, name, true)
        .await
        .map_err(RedeemError::Other)?;
    if !tokens::use_pairing_code(&mut *tx, pairing.id, &issued.claims.jti, now).await? {
        lockout.failed(peer, started);
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_lockout_opens_again_after_its_minute() {
        let lockout = Lockout::new(2, 100);
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        assert!(lockout.check(a, t0).is_ok());
        lockout.failed(a, t0);
        assert!(lockout.check(a, t0).is_ok(), "one below the limit");
        lockout.failed(a, t0 + Duration::from_secs(10));
        let wait = lockout.check(a, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(
            lockout.check(ip("192.0.2.2"), t0).is_ok(),
            "another address"
        );
        assert!(lockout.check(a, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn the_ceiling_locks_out_only_addresses_that_have_failed() {
        let lockout = Lockout::new(5, 3);
        let t0 = Instant::now();
        for (n, a) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            lockout.failed(ip(a), t0 + Duration::from_secs(n as u64));
        }
        let at = t0 + Duration::from_secs(30);
        let wait = lockout.check(ip("192.0.2.2"), at).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(30),
            "until the oldest of the three is a minute old"
        );
        assert!(
            lockout.check(ip("192.0.2.9"), at).is_ok(),
            "no failure: heard"
        );
        assert!(lockout
            .check(ip("192.0.2.1"), t0 + Duration::from_secs(61))
            .is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let lockout = Lockout::new(1, 100);
        let t0 = Instant::now();
        lockout.failed(ip("2001:db8:1:2::1"), t0);
        assert!(lockout.check(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert!(lockout.check(ip("2001:db8:1:3::1"), t0).is_ok());
        lockout.failed(ip("::ffff:192.0.2.7"), t0);
        assert!(lockout.check(ip("192.0.2.7"), t0).is_err());
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
