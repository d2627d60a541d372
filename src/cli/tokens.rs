//! `tether token`, `tether tokens [revoke ID]`, `tether secret rotate` and `tether pair`:
//! tokens and pairing codes are written to the database beside the running server. A
//! revocation goes through the running server when there is one, so that it refuses the
//! token at once; a rotation is taken up by it within `auth::WATCH_INTERVAL`.

use hyper::{Method, StatusCode};

use crate::{
    auth::{Auth, Role, ADMIN_OWNER},
    config::Settings,
    datadir, pairing,
    store::{self, tokens},
};

/// Prints a new token, recorded (listed by `tether tokens`, revocable).
pub async fn token(settings: &Settings, admin: bool, user: &str) -> anyhow::Result<()> {
    let auth = Auth::from_settings(settings)?;
    let store = super::client::store(settings).await?;
    let (owner, role) = if admin {
        (ADMIN_OWNER, Role::Admin)
    } else {
        (user, Role::User)
    };
    let issued = auth
        .issue_recorded(store.pool(), owner, role, Some("tether token"), false)
        .await?;
    println!("{}", issued.token);
    Ok(())
}

/// Lists every token (`json`: as JSON).
pub async fn list(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let store = super::client::store(settings).await?;
    let rows = tokens::list(store.pool(), None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let when = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    println!(
        "{:<36}  {:<6}  {:<12}  {:<20}  {:<16}  {:<16}  STATE",
        "ID", "ROLE", "OWNER", "NAME", "CREATED", "LAST USED"
    );
    for t in rows {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at <= store::now_ms() {
            "expired"
        } else {
            "active"
        };
        let name: String = t.name.unwrap_or_default().chars().take(20).collect();
        println!(
            "{:<36}  {:<6}  {:<12}  {:<20}  {:<16}  {:<16}  {state}",
            t.id,
            t.role,
            t.owner,
            name,
            when(Some(t.created_at)),
            when(t.last_used_at)
        );
    }
    Ok(())
}

/// Revokes a token: through the running server when there is one, so that it refuses the
/// token (and ends what it opened) at once; else in the database (the next start refuses
/// it; a server started meanwhile notices within `auth::WATCH_INTERVAL`).
pub async fn revoke(settings: &Settings, id: &str) -> anyhow::Result<()> {
    if let Ok(addr) = datadir::running_server(&settings.data_dir()) {
        let path = format!("/api/tokens/{id}");
        let (status, body) = super::client::call_as_admin(
            settings,
            addr,
            Method::DELETE,
            &path,
            "tether tokens revoke",
        )
        .await?;
        if status != StatusCode::NO_CONTENT {
            return Err(super::client::server_error(status, &body));
        }
    } else {
        let store = super::client::store(settings).await?;
        anyhow::ensure!(
            tokens::get(store.pool(), id).await?.is_some(),
            "no token {id} (`tether tokens` lists them)"
        );
        crate::auth::revoke_recorded(&store, id, store::now_ms()).await?;
        store.close().await;
    }
    println!("revoked {id}");
    Ok(())
}

/// `tether secret rotate`: a new generated secret, every earlier token revoked.
pub async fn rotate_secret(settings: &Settings) -> anyhow::Result<()> {
    let rotated = crate::auth::rotate_secret(settings).await?;
    println!(
        "wrote a new token secret to {}; revoked {} earlier tokens (a running tether refuses \
         them now, and takes up the new secret)",
        rotated.path.display(),
        rotated.revoked
    );
    println!(
        "next: pair each phone again (`tether pair`), and give scripts new tokens (`tether token`)"
    );
    Ok(())
}

/// Makes a one-time pairing code and shows it as a QR code and as text (`json`: only
/// `{code, url, fingerprint, expiresAt}` and the link).
pub async fn pair(
    settings: &Settings,
    name: Option<&str>,
    owner: &str,
    url: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !crate::auth::is_reserved_owner(owner),
        "the owner name {owner:?} is reserved for the admin"
    );
    let store = super::client::store(settings).await?;
    // The running server says how it serves (its settings may not be this command's).
    let served = super::pair::served(settings).await?;
    let fingerprint = served.fingerprint;
    let url = url.unwrap_or(served.url);
    let (code, expires_at) =
        pairing::create(&store, owner, name, settings.auth.pairing_ttl).await?;
    let link = pairing::link(&url, &code, fingerprint.as_deref());
    let shown = pairing::Pairing {
        code,
        url,
        fingerprint,
        expires_at: chrono::DateTime::from_timestamp_millis(expires_at).unwrap_or_default(),
        link,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    println!("{}", pairing::qr_text(&shown.link)?);
    println!("Scan this with the tether app, or enter:");
    println!("  server:      {}", shown.url);
    println!("  code:        {}", shown.code);
    if let Some(fp) = &shown.fingerprint {
        println!("  certificate: SHA-256 {fp}");
    }
    println!(
        "  valid until: {} (once)",
        shown.expires_at.format("%Y-%m-%d %H:%M UTC")
    );
    println!("  link:        {}", shown.link);
    if url_is_loopback(&shown.url) {
        println!(
            "Note: this address is only reachable from this machine; give the phone's view \
             with --url (e.g. --url https://192.168.1.5:8787) and bind server.bind beyond loopback."
        );
    }
    Ok(())
}

fn url_is_loopback(url: &str) -> bool {
    url.contains("://127.") || url.contains("://localhost") || url.contains("://[::1]")
}
