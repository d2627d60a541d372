//! Builds the application the binary runs and the tests start: store, auth, agent,
//! sessions, push worker and router, bound to a listener; runs it until a shutdown signal.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::Context;
use futures::FutureExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Notify},
};

use crate::{
    agent::{self, claude::Claude, AgentHealth},
    auth::Auth,
    awake::KeepAwake,
    config::Settings,
    datadir::{self, DataDirLock},
    http::{self, server::Drain, state::AppState},
    pairing::Lockout,
    push::{self, PushGateway, PushService, WorkerConfig},
    sessions::{Deps, Sessions},
    store::Store,
    terminals::{self, Terminals},
    tls::Tls,
};

pub struct Application {
    listener: TcpListener,
    /// The handshake of every connection with `server.tls`; None for plain HTTP.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: AppState,
    /// This server's hold on its data folder: released once it has stopped and closed the
    /// database (or when it is dropped without running), whoever still holds its state.
    data_lock: DataDirLock,
}

impl Application {
    /// Takes the data folder (one server per folder), opens the database, binds the
    /// listener, then stops what an earlier run left behind. Pushes go to APNs when
    /// `push.apns.key_path` is set, else to the log.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let gateway = push::gateway_from_settings(&settings.push);
        Self::build_with_gateway(settings, gateway).await
    }

    /// [`Self::build`] with the given push gateway (tests pass a scripted fake).
    pub async fn build_with_gateway(
        settings: Settings,
        gateway: Arc<dyn PushGateway>,
    ) -> anyhow::Result<Self> {
        check_bind(&settings)?;
        crate::auth::check_configured_secret(&settings)?;
        settings.agent.check_modes()?;
        settings.terminals.programs.check()?;
        // The lock before anything that writes: a second server on the same folder must
        // leave the first one's processes, turns and pushes alone.
        let data_dir = settings.data_dir();
        datadir::create_dir(&data_dir)?;
        let mut data_lock = DataDirLock::acquire(&data_dir)?;
        let auth = Auth::from_settings(&settings)?;
        // Made (self-signed) or read before binding: a server with a bad certificate or key
        // does not listen at all.
        let tls = Tls::from_settings(&settings)?;
        let store = Store::open_configured(&settings.database).await?;
        // The revoked tokens (and a secret rotated since the keys were read) before serving.
        auth.refresh(&store).await?;
        // Bound before recovery: a server that cannot listen stops nothing.
        let listener = TcpListener::bind(settings.server.bind)
            .await
            .with_context(|| format!("binding {}", settings.server.bind))?;
        // Where commands such as `tether sessions` find this server.
        data_lock.record_address(listener.local_addr()?)?;
        let status = agent::probe(&settings.agent.command).await;
        match (&status.version, &status.error) {
            (Some(version), _) => {
                tracing::info!(command = %settings.agent.command, %version, "agent found")
            }
            (None, Some(error)) => {
                tracing::warn!(%error, "agent not usable; chat answers 503 until it is")
            }
            _ => {}
        }
        let program = status
            .path
            .clone()
            .unwrap_or_else(|| settings.agent.command.clone().into());
        let agent = Arc::new(Claude::new(program, &settings.agent));
        let agent_name = crate::agent::Agent::name(agent.as_ref());
        let agent_health = Arc::new(AgentHealth::new(&settings.agent.command, status));
        let push_wake = Arc::new(Notify::new());
        let sessions = Sessions::new(Deps {
            store: store.clone(),
            agent: agent.clone(),
            agent_health: agent_health.clone(),
            agent_settings: settings.agent.clone(),
            session_settings: settings.sessions.clone(),
            projects: settings.projects.clone(),
            limits: settings.limits.clone(),
            approvals: settings.approvals.clone(),
            push_wake: push_wake.clone(),
        });
        let push = PushService::new(
            store.clone(),
            gateway,
            WorkerConfig::from_settings(&settings.push),
            push_wake.clone(),
        );
        let terminals = Terminals::new(terminals::Deps {
            store: store.clone(),
            settings: settings.terminals.clone(),
            session_settings: settings.sessions.clone(),
            agent,
            agent_settings: settings.agent.clone(),
            projects: settings.projects.clone(),
            sessions: sessions.clone(),
            retention: settings.events.retention,
            push_wake: push_wake.clone(),
        });
        push.recover().await.context("recovering the push outbox")?;
        // Terminals first: a PTY child left running may hold a session's conversation.
        terminals.recover().await.context("recovering terminals")?;
        sessions.recover().await.context("recovering sessions")?;
        let state = AppState {
            pairing: Arc::new(Lockout::new(
                settings.auth.pairing_attempts_per_minute,
                settings.auth.pairing_attempts_per_minute_total,
            )),
            settings: Arc::new(settings),
            store,
            sessions,
            terminals,
            auth,
            push,
            metrics: prometheus(),
            tls_fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
            agent: agent_health,
            agent_name,
            token_uses: Arc::default(),
        };
        Ok(Self {
            listener,
            tls: tls.map(|t| t.acceptor),
            state,
            data_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// `https://ADDR` with TLS, else `http://ADDR`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` resolves; then stops taking messages, gives running turns
    /// `server.shutdown_grace`, ends every terminal, and stops and reaps every child before
    /// returning.
    /// HTTP drains meanwhile: event streams end at once, requests that arrive answer 503
    /// `shutting_down`, and connections still open after the grace (plus
    /// [`http::server::DRAIN_MARGIN`]) are closed whatever their clients do.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            state,
            data_lock,
        } = self;
        let shutdown = shutdown.shared();
        // The push worker stops at the same signal; what it has not sent waits for the next start.
        let push_worker = tokio::spawn(state.push.clone().run(shutdown.clone()));
        let retention = tokio::spawn(crate::sessions::retention::run(
            state.store.clone(),
            state.settings.events.clone(),
            state.sessions.stopping(),
        ));
        let lifecycle = tokio::spawn(crate::sessions::lifecycle::run(
            state.sessions.clone(),
            KeepAwake::new(state.settings.sessions.keep_awake),
            vec![Arc::new(state.terminals.clone())],
        ));
        // Revocations and a rotated secret written by other processes (`tether secret rotate`).
        let token_watch = tokio::spawn(crate::auth::watch(
            state.auth.clone(),
            state.store.clone(),
            state.sessions.stopping(),
        ));
        let resource_watch = tokio::spawn(crate::sessions::resources::run(state.sessions.clone()));
        let spare_keeper = tokio::spawn(crate::sessions::spares::run(state.sessions.clone()));
        let grace = state.settings.server.shutdown_grace;
        let (drain_trigger, drain) = Drain::new();
        let (sessions_stopped, sessions_done) = oneshot::channel::<()>();
        // At the signal the HTTP drain begins (streams end, new requests get 503) and the
        // sessions stop: waiting chats get their answers and the server can finish.
        let sessions = state.sessions.clone();
        let terminals = state.terminals.clone();
        let stopping = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            drain_trigger.start();
            tokio::join!(terminals.shutdown(), sessions.shutdown(grace));
            let _ = sessions_stopped.send(());
        });
        let store = state.store.clone();
        let server = http::server::Server::new(listener, &state.settings, tls);
        server
            .serve(http::router(state, drain.clone()), drain, async {
                let _ = sessions_done.await;
            })
            .await;
        stopping.await?;
        push_worker.await?;
        retention.await?;
        lifecycle.await?;
        token_watch.await?;
        resource_watch.await?;
        spare_keeper.await?;
        store.close().await;
        drop(data_lock);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Refuses a non-loopback address without an explicit secret, and, without TLS, warns that
/// tokens cross the network in clear text on one with.
fn check_bind(settings: &Settings) -> anyhow::Result<()> {
    let bind = settings.server.bind;
    if bind.ip().is_loopback() {
        return Ok(());
    }
    if secrecy::ExposeSecret::expose_secret(&settings.auth.secret).is_empty() {
        anyhow::bail!(
            "refusing to bind {bind} (not loopback) without an explicit auth.secret (TETHER__AUTH__SECRET)"
        );
    }
    if !settings.server.tls.is_on() {
        tracing::warn!(
            %bind,
            "listening beyond this machine without TLS: tokens and messages travel in clear \
             text; set server.tls = \"self-signed\", or put tether behind a TLS proxy or a \
             private network (VPN, Tailscale)"
        );
    }
    Ok(())
}

/// The process-wide Prometheus recorder (installed once; tests build many apps).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
