//! `GET /health`: without a token only whether the server is healthy (`status` and the
//! status code, for monitors) and whether it speaks TLS; with a valid token (any role) also
//! what is wrong: database, agent, push gateway, version, counts; with an admin token also the
//! TLS certificate's fingerprint. And `GET /metrics` (Prometheus text, admin token).

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json};
use serde_json::json;

use super::routes::{Access, Routes};
use crate::{
    auth::{Admin, Caller},
    AppState,
};
use axum::http::Method;

pub fn router() -> Routes {
    Routes::default()
        .add(Method::GET, "/health", Access::Public, get(health))
        .add(Method::GET, "/metrics", Access::Admin, get(metrics))
}

async fn health(State(state): State<AppState>, caller: Option<Caller>) -> impl IntoResponse {
    let database = state.store.ping().await;
    let agent = state.agent_status().await;
    let push = state.push.status();
    let status = match (&database, agent.found && agent.error.is_none() && push.ok) {
        (Err(_), _) => "down",
        (Ok(()), false) => "degraded",
        (Ok(()), true) => "ok",
    };
    let code = if database.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    tracing::debug!(status, "health");
    let tls = state.tls_fingerprint.is_some();
    if caller.is_none() {
        // Paths, versions and errors tell an attacker what runs here: only for token holders.
        // Whether it speaks TLS, anyone connected can see.
        return (code, Json(json!({ "status": status, "tls": tls })));
    }
    let unsent = crate::store::pushes::count_unsent(state.store.pool())
        .await
        .ok();
    let mut body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "database": {"ok": database.is_ok()},
        "agent": agent,
        "push": {
            "gateway": push.gateway,
            "ok": push.ok,
            "error": push.error,
            "unsent": unsent,
        },
        "liveProcesses": state.sessions.live_processes(),
        "shuttingDown": state.sessions.is_closing(),
        "tls": tls,
    });
    if caller.as_ref().is_some_and(|c| c.is_admin()) {
        // What the app pins: shown to the machine's owner, who pairs the phone.
        body["tlsFingerprint"] = json!(state.tls_fingerprint);
    }
    (code, Json(body))
}

async fn metrics(State(state): State<AppState>, _admin: Admin) -> impl IntoResponse {
    metrics::gauge!("tether_live_processes").set(state.sessions.live_processes() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
