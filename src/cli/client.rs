//! Asking the tether running on the configured data folder: one HTTP/1.1 call (over TLS,
//! trusting one certificate fingerprint), with an admin token recorded for that call and
//! revoked after it, and the server's refusal as the user reads it.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{auth::Auth, config::Settings, datadir, store::now_ms, store::Store, tls};

/// How long the whole exchange may take: the server answers from what it holds, so a longer
/// wait means it is stuck, which the user is better told than left waiting on.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The data folder's database, opened beside the running server.
pub(super) async fn store(settings: &Settings) -> anyhow::Result<Store> {
    datadir::create_dir(&settings.data_dir())?;
    Store::open_configured(&settings.database).await
}

/// `method path` to the running server at `addr` with an admin token recorded for this one
/// call (as `name`) and revoked after it: the server accepts only recorded tokens. Over TLS,
/// the server is trusted as the phone trusts it: by its certificate's fingerprint.
pub(super) async fn call_as_admin(
    settings: &Settings,
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    name: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let fingerprint = tls::configured_fingerprint(settings)?;
    call_as_admin_pinned(settings, addr, method, path, name, fingerprint.as_deref()).await
}

/// [`call_as_admin`], trusting the certificate with `fingerprint` (None: plain HTTP).
pub(super) async fn call_as_admin_pinned(
    settings: &Settings,
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    name: &str,
    fingerprint: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let auth = Auth::from_settings(settings)?;
    let store = store(settings).await?;
    let token = auth.issue_for_command(store.pool(), name).await?;
    let asked = call(addr, method, path, &token.token, fingerprint);
    let answer = tokio::time::timeout(TIMEOUT, asked).await;
    let revoked = crate::auth::revoke_recorded(&store, &token.claims.jti, now_ms()).await;
    store.close().await;
    let answer = answer.map_err(|_| {
        anyhow::anyhow!(
            "the tether at {addr} did not answer within {} s",
            TIMEOUT.as_secs()
        )
    })??;
    revoked.context("revoking the command's token")?;
    Ok(answer)
}

/// `method path` on one HTTP/1.1 connection to `addr` with `token` (none if empty), over TLS
/// trusting only the certificate with `fingerprint` if one is given: the status and the
/// whole body.
pub(super) async fn call(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    token: &str,
    fingerprint: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the tether at {addr}"))?;
    let Some(fingerprint) = fingerprint else {
        return exchange(stream, addr, method, path, token).await;
    };
    let stream = tls::pinned_connector(fingerprint)
        .connect(addr.ip().into(), stream)
        .await
        .with_context(|| {
            format!(
                "TLS with the tether at {addr}, expecting the certificate with fingerprint \
                 {fingerprint}"
            )
        })?;
    exchange(stream, addr, method, path, token).await
}

async fn exchange<S>(
    stream: S,
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    token: &str,
) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    if !token.is_empty() {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("asking the tether at {addr}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The error body of the server (`http::error`).
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// The server's refusal as the user reads it: status, message and code.
pub(super) fn server_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let what = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => format!("{} ({})", error.message, error.code),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    // The usual cause: the server has its secret from the environment and this command not.
    let hint = if status == StatusCode::UNAUTHORIZED {
        "; does this command see the server's auth.secret (TETHER__AUTH__SECRET)?"
    } else {
        ""
    };
    anyhow::anyhow!("the server answered {status}: {what}{hint}")
}
