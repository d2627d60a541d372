//! Where `tether pair` tells the phone to go: the running server's own scheme and
//! certificate fingerprint, asked of that server (its settings may differ from this
//! command's, e.g. TLS set only in its environment), or, with no server running, this
//! command's settings, saying so.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::{config::Settings, datadir, tls};

/// How long asking the running server may take: it answers `/health` from what it holds.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The server as the phone's link names it.
pub(super) struct Served {
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    /// The SHA-256 fingerprint of the certificate it serves; None over plain HTTP.
    pub fingerprint: Option<String>,
}

/// The part of `/health` read here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    tls: bool,
    tls_fingerprint: Option<String>,
}

/// The running server on the settings' data folder, as it serves; with none there (or one
/// not listening yet), what the settings say, with a note on stderr.
pub(super) async fn served(settings: &Settings) -> anyhow::Result<Served> {
    let addr = match datadir::running_server(&settings.data_dir()) {
        Ok(addr) => addr,
        Err(why) => {
            let fingerprint = tls::configured_fingerprint(settings)?;
            let scheme = if fingerprint.is_some() {
                "https"
            } else {
                "http"
            };
            eprintln!(
                "{why:#}\nThe link is built from this command's settings (server.bind, \
                 server.tls), not asked of a running server: check them against the server's."
            );
            return Ok(Served {
                url: format!("{scheme}://{}", settings.server.bind),
                fingerprint,
            });
        }
    };
    tokio::time::timeout(TIMEOUT, ask(settings, addr))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the tether at {addr} did not answer within {} s",
                TIMEOUT.as_secs()
            )
        })?
}

/// Asks the server at `addr` how it serves: over plain HTTP (`/health` without a token
/// says `tls: false`), else over TLS, pinning the certificate it presents and asking
/// `/health` with an admin token for the fingerprint the server reports, which must be that
/// certificate's.
async fn ask(settings: &Settings, addr: SocketAddr) -> anyhow::Result<Served> {
    let plain = super::client::call(addr, Method::GET, "/health", "", None).await;
    if let Ok((StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE, body)) = &plain {
        let health: Health = serde_json::from_slice(body)
            .with_context(|| format!("reading the health of the tether at {addr}"))?;
        anyhow::ensure!(
            !health.tls,
            "the tether at {addr} answered plain HTTP yet says it serves TLS"
        );
        return Ok(Served {
            url: format!("http://{addr}"),
            fingerprint: None,
        });
    }
    let presented = tls::presented_fingerprint(addr).await.with_context(|| {
        let plain = match plain {
            Ok((status, _)) => format!("plain HTTP answered {status}"),
            Err(e) => format!("plain HTTP failed: {e:#}"),
        };
        format!("asking the tether at {addr} how it serves ({plain})")
    })?;
    let reported = reported_fingerprint(settings, addr, &presented).await?;
    anyhow::ensure!(
        reported.as_deref() == Some(presented.as_str()),
        "the tether at {addr} presents the certificate {presented} but reports {}",
        reported.as_deref().unwrap_or("none")
    );
    Ok(Served {
        url: format!("https://{addr}"),
        fingerprint: Some(presented),
    })
}

/// `tlsFingerprint` of `/health`, asked with an admin token made for this question alone
/// (recorded, as every token is, and revoked once answered).
async fn reported_fingerprint(
    settings: &Settings,
    addr: SocketAddr,
    presented: &str,
) -> anyhow::Result<Option<String>> {
    let asked = super::client::call_as_admin_pinned(
        settings,
        addr,
        Method::GET,
        "/health",
        "tether pair",
        Some(presented),
    )
    .await;
    let (status, body) = asked?;
    if status != StatusCode::OK && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(super::client::server_error(status, &body));
    }
    let health: Health = serde_json::from_slice(&body)
        .with_context(|| format!("reading the health of the tether at {addr}"))?;
    Ok(health.tls_fingerprint)
}
