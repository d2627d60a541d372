//! `GET /health`: without a token only whether the server is healthy (`status` and the
//! status code, for monitors) and whether it speaks TLS; with a valid token (any role) also
//! what is wrong: database, agent, push gateway, version, counts; with an admin token also the
//! TLS certificate's fingerprint. And `GET /metrics` (Prometheus text, admin token).

use super::codes::ErrorCode;
use super::state::AppState;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::routes::{Access, Routes};
use crate::{
    agent::AgentStatus,
    auth::{Admin, Caller},
};
use axum::http::Method;

pub fn router() -> Routes {
    Routes::default()
        .add(
            Method::GET,
            "/health",
            Access::Public,
            get(health),
            HEALTH_ERRORS,
        )
        .add(
            Method::GET,
            "/metrics",
            Access::Admin,
            get(metrics),
            METRICS_ERRORS,
        )
}

/// Whether the server is healthy. Without a token only `status` and `tls`; with one (any role)
/// also what is wrong; with an admin token also the certificate's fingerprint.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "ok", "tls": false}))]
pub(super) struct Health {
    status: HealthStatus,
    /// Whether the server speaks HTTPS (`server.tls`).
    tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.1.0")]
    version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<DatabaseHealth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PushHealth>,
    /// CLI processes running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    live_processes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutting_down: Option<bool>,
    /// The SHA-256 fingerprint of the certificate the app pins (admin token, with TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_fingerprint: Option<String>,
}

/// `ok`; `degraded` when the agent command or the push gateway is not usable, or the
/// database can be read but not written (disk full, read-only, I/O error); `down` when the
/// database is not reachable (503).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum HealthStatus {
    Ok,
    Degraded,
    Down,
}

#[derive(Serialize, ToSchema)]
struct DatabaseHealth {
    /// Reachable (it answers a query).
    ok: bool,
    /// Writes are stored: false once one failed for want of storage, until one succeeds
    /// (writes answer 503 `storage_unavailable` meanwhile).
    writable: bool,
    /// Why it cannot be written, when `writable` is false.
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct PushHealth {
    /// `apns` or `log` (no APNs key configured: pushes are stored, not sent).
    gateway: &'static str,
    ok: bool,
    /// Why nothing is sent, when `ok` is false.
    error: Option<String>,
    /// Pushes not yet answered by the gateway (null when the database cannot say).
    unsent: Option<i64>,
}

/// What [`health`] may answer besides the edge's errors (see `openapi`).
const HEALTH_ERRORS: &[ErrorCode] = &[ErrorCode::Unauthorized];

/// Whether the server is up
///
/// No token needed. A monitor reads the status code (503 when the database is down); a
/// caller with a token also sees what is wrong: database, agent, push gateway, version.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "health",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Up (`ok` or `degraded`)", body = Health),
        (status = 503, description = "The database cannot be reached (`status` is `down`)", body = Health),
    ),
)]
pub(super) async fn health(
    State(state): State<AppState>,
    caller: Option<Caller>,
) -> impl IntoResponse {
    let database = state.store.ping().await;
    let storage = storage_fault(&state).await;
    let agent = state.agent_status().await;
    let push = state.push.status();
    let usable = agent.found && agent.error.is_none() && push.ok && storage.is_none();
    let status = match (&database, usable) {
        (Err(_), _) => HealthStatus::Down,
        (Ok(()), false) => HealthStatus::Degraded,
        (Ok(()), true) => HealthStatus::Ok,
    };
    let code = if database.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    tracing::debug!(status = ?status, "health");
    let mut body = Health {
        status,
        // Whether it speaks TLS, anyone connected can see.
        tls: state.tls_fingerprint.is_some(),
        version: None,
        database: None,
        agent: None,
        push: None,
        live_processes: None,
        shutting_down: None,
        tls_fingerprint: None,
    };
    let Some(caller) = caller else {
        // Paths, versions and errors tell an attacker what runs here: only for token holders.
        return (code, Json(body));
    };
    let unsent = crate::store::pushes::count_unsent(state.store.pool())
        .await
        .ok();
    body.version = Some(env!("CARGO_PKG_VERSION"));
    body.database = Some(DatabaseHealth {
        ok: database.is_ok(),
        writable: storage.is_none(),
        error: storage.map(|f| f.describe().to_string()),
    });
    body.agent = Some(agent);
    body.push = Some(PushHealth {
        gateway: push.gateway,
        ok: push.ok,
        error: push.error,
        unsent,
    });
    body.live_processes = Some(state.sessions.live_processes());
    body.shutting_down = Some(state.sessions.is_closing());
    if caller.is_admin() {
        // What the app pins: shown to the machine's owner, who pairs the phone.
        body.tls_fingerprint = state.tls_fingerprint.clone();
    }
    (code, Json(body))
}

/// Why the database cannot be written, if the last write failed so: a write that must
/// reach the disk is tried first, so that space freed since clears it without waiting for
/// the next write of a turn.
async fn storage_fault(state: &AppState) -> Option<crate::store::StorageFault> {
    state.store.storage_fault()?;
    if let Err(e) = state.store.probe_write().await {
        tracing::debug!(error = %e, "the database still cannot be written");
    }
    state.store.storage_fault()
}

/// [`metrics`] answers only the edge's errors (see `openapi`).
const METRICS_ERRORS: &[ErrorCode] = &[];

/// Prometheus metrics
///
/// The text exposition format: turns, processes, pushes, requests.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((
        status = 200,
        description = "Prometheus text (version 0.0.4)",
        body = String,
        content_type = "text/plain",
        example = "# TYPE tether_live_processes gauge\ntether_live_processes 1\n",
    )),
)]
pub(super) async fn metrics(State(state): State<AppState>, _admin: Admin) -> impl IntoResponse {
    metrics::gauge!("tether_live_processes").set(state.sessions.live_processes() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
