//! The state every handler shares (cheap to clone): settings, the store, sessions,
//! terminals, auth, pushes, and what the edge keeps of the agent and of token uses.
//! `app` builds it; the HTTP edge reads it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::PrometheusHandle;

use super::{codes::ErrorCode, error::ApiError};
use crate::{
    agent::{AgentHealth, AgentStatus},
    auth::Auth,
    config::Settings,
    pairing::Lockout,
    push::PushService,
    sessions::Sessions,
    store::{tokens, Store},
    terminals::Terminals,
};

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub sessions: Sessions,
    /// Programs in pseudo-terminals, attached over WebSockets.
    pub terminals: Terminals,
    pub auth: Auth,
    /// The push outbox: its worker's step (`tick`) and the gateway's status.
    pub push: PushService,
    pub metrics: PrometheusHandle,
    /// Bad pairing codes of the last minute (`POST /api/pair`).
    pub pairing: Arc<Lockout>,
    /// The SHA-256 fingerprint of the certificate served (`server.tls`), which the app pins;
    /// None over plain HTTP.
    pub tls_fingerprint: Option<String>,
    pub(crate) agent: Arc<AgentHealth>,
    pub(crate) agent_name: &'static str,
    /// When each token's last use was written (at most once a minute each).
    pub(crate) token_uses: Arc<Mutex<HashMap<String, Instant>>>,
}

impl AppState {
    /// The agent's status, looked up again while it is missing (it may have been installed)
    /// or once its file is gone.
    pub async fn agent_status(&self) -> AgentStatus {
        self.agent.status().await
    }

    /// 503 with what to do when the agent command cannot be found. A command whose file is
    /// still there is taken as it is: chat never waits on a `--version` run (`/health` does).
    pub async fn agent_ready(&self) -> Result<(), ApiError> {
        self.agent
            .ready()
            .await
            .map_err(|why| ApiError::new(ErrorCode::AgentUnavailable, why))
    }

    pub fn agent_name(&self) -> &'static str {
        self.agent_name
    }

    /// Records that a token was used (`last_used_at`), at most once a minute per token,
    /// off the request's path.
    pub fn note_token_use(&self, token_id: &str) {
        const EVERY: Duration = Duration::from_secs(60);
        let now = Instant::now();
        {
            let mut uses = self.token_uses.lock().unwrap_or_else(|e| e.into_inner());
            if uses
                .get(token_id)
                .is_some_and(|t| now.duration_since(*t) < EVERY)
            {
                return;
            }
            uses.insert(token_id.to_string(), now);
        }
        let (store, id) = (self.store.clone(), token_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = tokens::touch(store.pool(), &id, crate::store::now_ms()).await {
                tracing::warn!(error = %e, "could not record a token's use");
            }
        });
    }
}
