//! The outbox worker: claims due pushes, sends each through the gateway, records every
//! answer in `push_attempts` and acts on it (the answer table of docs/push.md: [`classify`]
//! reads the answer, [`policy`] decides): delivered, token disabled, retried with backoff
//! and jitter, given up, or, on a configuration error, sending stopped until tether
//! restarts, with the reason on `/health`.
//!
//! [`PushService::run`] loops until shutdown, woken by `push_wake` (a push was committed),
//! by the next due retry, or by `push.poll_interval`; [`PushService::tick`] is one
//! step, which tests drive directly.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;

use super::{
    classify,
    gateway::{Action, Answer, PushGateway, PushRequest},
    payload::{self, Content, Headers},
    token_prefix, PushKind,
};
use crate::{
    config::PushSettings,
    store::{
        self, devices,
        pushes::{self, AfterAttempt, DuePush, NewAttempt, PushStatus},
        sessions, terminals, Store,
    },
};

/// Time allowed beyond a2's own request timeout before the worker stops waiting for a send
/// (a2 enforces its timeout; this guards against a gateway that never answers).
const SEND_GUARD_MARGIN: Duration = Duration::from_secs(5);
/// Shortest pause between two steps of the loop, so it never spins.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// The worker's settings, from `[push]`; tests adjust them directly.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Attempts before a push that keeps failing transiently is marked failed.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest sleep between two looks at the outbox.
    pub poll_interval: Duration,
    /// Pushes claimed per step.
    pub batch_size: u32,
    /// Sends in flight at once within a step (after the step's first, sent alone).
    pub concurrency: usize,
    /// Characters of text shown in a push.
    pub preview_chars: usize,
    /// Longest wait for one send's answer; no answer by then counts as a transport error.
    pub send_timeout: Duration,
    /// Topic for devices registered without one (`push.apns.topic`).
    pub default_topic: Option<String>,
}

impl WorkerConfig {
    pub fn from_settings(s: &PushSettings) -> Self {
        Self {
            max_attempts: s.max_attempts.max(1),
            backoff_base: s.backoff_base,
            backoff_max: s.backoff_max,
            poll_interval: s.poll_interval,
            batch_size: s.batch_size.max(1),
            concurrency: s.concurrency.max(1),
            preview_chars: s.preview_chars.max(1),
            send_timeout: s.apns.request_timeout + SEND_GUARD_MARGIN,
            default_topic: Some(s.apns.topic.trim().to_string()).filter(|t| !t.is_empty()),
        }
    }
}

/// What one step did, for the loop and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Pushes taken from the outbox.
    pub claimed: usize,
    /// Sends tried (a renewal retry is a second one).
    pub sent: usize,
    pub delivered: usize,
    pub logged: usize,
    /// Put back to wait for a retry.
    pub retried: usize,
    pub failed: usize,
    /// Devices disabled.
    pub disabled: usize,
    /// Not sent because what they were about is moot (a warning after a keep-alive).
    pub cancelled: usize,
    /// Claimed but not sent (sending stopped or tether is stopping): pending again.
    pub released: usize,
    /// Sending is stopped by a configuration error.
    pub stopped: bool,
}

/// What came of sending one push, before it is recorded.
#[derive(Default)]
struct Attempted {
    /// Each answer with the push's attempt count after it (two when a provider token was
    /// renewed); a push that could not be built has one answer, from tether itself.
    answers: Vec<(Answer, i64)>,
    /// Requests made to the gateway.
    sent: usize,
    /// The JSON sent.
    json: Option<String>,
    /// Not sent: what it was about is moot.
    cancel: Option<&'static str>,
    /// Sending must stop for this reason (the provider token could not be renewed).
    stop: Option<String>,
}

impl Attempted {
    /// A push that cannot be sent as it is (no request made): it fails with the reason.
    fn local_failure(due: &DuePush, error: &str) -> Self {
        let answer = Answer {
            action: Action::GiveUp,
            status_code: None,
            reason: None,
            apns_id: None,
            timestamp: None,
            error: Some(error.to_string()),
        };
        Attempted {
            answers: vec![(answer, due.push.attempts)],
            ..Attempted::default()
        }
    }
}

/// The push part of `/health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatewayStatus {
    /// `apns`, `log` (or `fake` in tests).
    pub gateway: &'static str,
    pub ok: bool,
    /// Why nothing is sent, when `ok` is false.
    pub error: Option<String>,
}

/// The outbox worker's handle; cheap to clone.
#[derive(Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    gateway: Arc<dyn PushGateway>,
    config: WorkerConfig,
    /// Notified after a push row was committed.
    wake: Arc<Notify>,
    /// Set by a configuration error (or credentials that did not load): nothing is sent
    /// until tether restarts with a fixed configuration.
    stopped: Mutex<Option<String>>,
    /// tether is shutting down: the step in progress sends nothing more.
    closing: AtomicBool,
    /// One step at a time (the loop and a test may both call `tick`).
    step: tokio::sync::Mutex<()>,
}

impl PushService {
    pub fn new(
        store: Store,
        gateway: Arc<dyn PushGateway>,
        config: WorkerConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let stopped = gateway.check().err();
        Self {
            inner: Arc::new(Inner {
                store,
                gateway,
                config,
                wake,
                stopped: Mutex::new(stopped),
                closing: AtomicBool::new(false),
                step: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Tells the worker that push rows were committed (its loop sends them at once).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn gateway(&self) -> &Arc<dyn PushGateway> {
        &self.inner.gateway
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.inner.config
    }

    pub fn status(&self) -> GatewayStatus {
        let error = self.inner.stopped.lock().expect("stopped lock").clone();
        GatewayStatus {
            gateway: self.inner.gateway.name(),
            ok: error.is_none(),
            error,
        }
    }

    /// At start: pushes a stopped run left `sending` are pending again (sent once more; the
    /// collapse id makes the phone show one), and pending pushes of devices that are gone
    /// are cancelled.
    pub async fn recover(&self) -> sqlx::Result<()> {
        let pool = self.inner.store.pool();
        let now = store::now_ms();
        let reset = pushes::reset_sending(pool, now).await?;
        if reset > 0 {
            tracing::warn!(
                count = reset,
                "pushes the last run was sending are pending again"
            );
        }
        let cancelled = pushes::cancel_orphans(pool, now).await?;
        if cancelled > 0 {
            tracing::info!(count = cancelled, "pushes to removed devices cancelled");
        }
        Ok(())
    }

    /// One step: sends the due pushes (up to `batch_size`).
    pub async fn tick(&self) -> sqlx::Result<TickReport> {
        self.tick_at(store::now_ms()).await
    }

    /// [`Self::tick`] as if the time were `now` (ms): tests make retries due without waiting.
    pub async fn tick_at(&self, now: i64) -> sqlx::Result<TickReport> {
        let _step = self.inner.step.lock().await;
        let mut report = TickReport::default();
        if self.is_stopped() {
            report.stopped = true;
            return Ok(report);
        }
        let pool = self.inner.store.pool();
        let limit = i64::from(self.inner.config.batch_size);
        let ids = pushes::claim_due(pool, now, limit).await?;
        if ids.is_empty() {
            return Ok(report);
        }
        report.claimed = ids.len();
        let sent = self.send_claimed(&ids, now, &mut report).await;
        // Claimed pushes not settled (sending stopped, tether stopping, a database error)
        // are pending again; `release` leaves settled ones alone.
        report.released += pushes::release(pool, &ids, now).await? as usize;
        sent?;
        report.stopped = self.is_stopped();
        Ok(report)
    }

    /// Sends claimed pushes until they are done, sending stops, or tether stops: the first
    /// alone (so a configuration error costs one request), then `push.concurrency` at a
    /// time, each group's answers recorded in one transaction.
    async fn send_claimed(
        &self,
        ids: &[i64],
        now: i64,
        report: &mut TickReport,
    ) -> sqlx::Result<()> {
        let pool = self.inner.store.pool();
        let due = pushes::sending_with_devices(pool, ids).await?;
        let mut rest = &due[..];
        let mut group_size = 1;
        while !rest.is_empty() {
            if self.is_stopped() || self.inner.closing.load(Ordering::SeqCst) {
                break;
            }
            let (group, tail) = rest.split_at(group_size.min(rest.len()));
            rest = tail;
            group_size = self.inner.config.concurrency;
            // A device may have been disabled (by an answer in this step) or removed.
            let group_ids: Vec<i64> = group.iter().map(|d| d.push.id).collect();
            let live = pushes::still_sending(pool, &group_ids).await?;
            let group: Vec<&DuePush> = group.iter().filter(|d| live.contains(&d.push.id)).collect();
            let attempts =
                futures::future::join_all(group.iter().map(|d| self.attempt(d, now))).await;
            self.record(&group, attempts, now, report).await?;
        }
        Ok(())
    }

    /// Runs steps until `shutdown` resolves. A step in progress finishes the send it is in;
    /// the pushes it had not sent yet are pending again for the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let status = self.status();
        tracing::info!(
            gateway = status.gateway,
            ok = status.ok,
            "push worker started"
        );
        loop {
            let step = self.tick();
            tokio::pin!(step);
            let result = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.inner.closing.store(true, Ordering::SeqCst);
                    let _ = step.await;
                    break;
                }
                r = &mut step => r,
            };
            let full = match result {
                Ok(r) => r.claimed >= self.inner.config.batch_size as usize && !r.stopped,
                Err(e) => {
                    tracing::error!(error = %e, "push worker step failed");
                    false
                }
            };
            if full {
                continue;
            }
            let wait = self.next_wait().await;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.inner.closing.store(true, Ordering::SeqCst);
        tracing::info!("push worker stopped");
    }

    fn is_stopped(&self) -> bool {
        self.inner.stopped.lock().expect("stopped lock").is_some()
    }

    /// Until the next retry is due, at most the poll interval.
    async fn next_wait(&self) -> Duration {
        let poll = self.inner.config.poll_interval.max(MIN_WAIT);
        if self.is_stopped() {
            return poll;
        }
        match pushes::next_due(self.inner.store.pool()).await {
            Ok(Some(at)) => {
                let ms = (at - store::now_ms()).max(0) as u64;
                Duration::from_millis(ms).clamp(MIN_WAIT, poll)
            }
            _ => poll,
        }
    }

    /// Sends one claimed push (again after renewing an expired provider token), or finds
    /// it cannot or need not be sent. Nothing is recorded here: see [`Self::record`].
    async fn attempt(&self, due: &DuePush, now: i64) -> Attempted {
        let p = &due.push;
        let config = &self.inner.config;
        let topic = due.topic.as_deref().or(config.default_topic.as_deref());
        if topic.is_none() && self.inner.gateway.needs_topic() {
            return Attempted::local_failure(
                due,
                "no APNs topic: set push.apns.topic or register the device with a topic",
            );
        }
        if p.expires_at.is_some_and(|at| at <= now) {
            return Attempted::local_failure(
                due,
                "its moment passed before it could be sent (APNs expiration)",
            );
        }
        let kind = PushKind::parse(&p.kind);
        let warning = matches!(
            kind,
            Some(PushKind::SessionExpiring | PushKind::TerminalExpiring)
        );
        if warning {
            match self.still_warned(p).await {
                Ok(true) => {}
                Ok(false) => {
                    return Attempted {
                        cancel: Some("it was kept alive or ended before its warning went out"),
                        ..Attempted::default()
                    }
                }
                Err(e) => return Attempted::local_failure(due, &format!("database error: {e}")),
            }
        }
        let whole = Content {
            kind: &p.kind,
            title: &p.title,
            subtitle: p.subtitle.as_deref(),
            body: &p.text,
            session_id: p.session_id.as_deref(),
            terminal_id: p.terminal_id.as_deref(),
            message_id: p.message_id,
            category: kind.and_then(PushKind::category),
            interruption_level: kind.and_then(PushKind::interruption_level),
            approval_id: p.approval_id,
        };
        let fitted = match payload::fit(&whole, config.preview_chars) {
            Ok(f) => f,
            Err(e) => {
                return Attempted::local_failure(
                    due,
                    &format!("the payload could not be built: {e}"),
                )
            }
        };
        let content = Content {
            title: &fitted.title,
            subtitle: fitted.subtitle.as_deref(),
            body: &fitted.body,
            ..whole
        };
        let subject = p.session_id.as_deref().or(p.terminal_id.as_deref());
        let collapse_id = match kind {
            Some(kind) => kind.collapse_id(p.id, subject.unwrap_or_default()),
            None => format!("tether-{}", p.id),
        };
        let headers = Headers {
            topic,
            collapse_id: Some(&collapse_id),
            expiration: p.expires_at.map(|ms| (ms / 1000).max(0) as u64),
        };
        // fit() measured this JSON; the token, topic and collapse id are headers, not in it.
        let notification = match payload::notification(&content, &due.token, headers) {
            Ok(n) => n,
            Err(e) => {
                return Attempted::local_failure(
                    due,
                    &format!("the payload could not be built: {e}"),
                )
            }
        };
        let mut done = Attempted {
            json: Some(fitted.json),
            ..Attempted::default()
        };
        let mut attempts = p.attempts;
        loop {
            let request = PushRequest {
                environment: due.environment,
                notification: notification.clone(),
            };
            let outcome =
                match tokio::time::timeout(config.send_timeout, self.inner.gateway.send(request))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(a2::Error::RequestTimeout(config.send_timeout.as_secs())),
                };
            done.sent += 1;
            attempts += 1;
            let mut answer = classify(&outcome);
            let renew = answer.action == Action::RenewTokenAndRetry;
            if renew && done.sent > 1 {
                // A fresh token is refused as expired too: the clock or the key is wrong.
                answer.action = Action::ConfigError;
            }
            done.answers.push((answer, attempts));
            if !renew || done.sent > 1 {
                return done;
            }
            if let Err(e) = self.inner.gateway.renew_token(due.environment) {
                done.stop = Some(format!("the APNs provider token could not be renewed: {e}"));
                return done;
            }
        }
    }

    /// Whether the warning of this push still stands: its session (or terminal) is active,
    /// with the same end, and was not kept alive since (which clears the warning).
    async fn still_warned(&self, p: &pushes::PushRow) -> sqlx::Result<bool> {
        let pool = self.inner.store.pool();
        if let Some(id) = &p.terminal_id {
            let terminal = terminals::get(pool, id).await?;
            return Ok(terminal.is_some_and(|t| {
                t.is_live() && t.warned_at.is_some() && Some(t.expires_at) == p.expires_at
            }));
        }
        let Some(id) = &p.session_id else {
            return Ok(false);
        };
        let session = sessions::get(pool, id).await?;
        Ok(session.is_some_and(|s| {
            s.is_active() && s.warned_at.is_some() && Some(s.expires_at) == p.expires_at
        }))
    }

    /// Records what came of a group of sends in one transaction (each answer as an
    /// attempt, and each push's new state; a device APNs said is no good is disabled), then
    /// logs and counts them.
    async fn record(
        &self,
        group: &[&DuePush],
        attempted: Vec<Attempted>,
        now: i64,
        report: &mut TickReport,
    ) -> sqlx::Result<()> {
        let mut tx = self.inner.store.begin_write().await?;
        let mut settled = Vec::new();
        for (due, done) in group.iter().zip(&attempted) {
            report.sent += done.sent;
            if let Some(why) = done.cancel {
                pushes::cancel(&mut *tx, due.push.id, why, now).await?;
                report.cancelled += 1;
            }
            for (answer, attempts) in &done.answers {
                let (status, disabled) = self
                    .record_answer(&mut tx, due, answer, *attempts, now, done.json.as_deref())
                    .await?;
                settled.push((*due, answer, *attempts, status, disabled));
            }
        }
        tx.commit().await?;
        for (due, answer, attempts, status, disabled) in settled {
            self.settle(due, answer, attempts, status, disabled, report);
        }
        for done in &attempted {
            if let Some(reason) = &done.stop {
                // Left `sending`: the step releases it for when sending resumes.
                self.stop(reason);
            }
        }
        Ok(())
    }

    /// Records one answer in `tx`: the attempt, the push's new state, and the device
    /// disabled when APNs said its token is no good. Returns the state and whether the
    /// device was disabled.
    async fn record_answer(
        &self,
        tx: &mut store::WriteTx,
        due: &DuePush,
        answer: &Answer,
        attempts: i64,
        now: i64,
        json: Option<&str>,
    ) -> sqlx::Result<(PushStatus, bool)> {
        let p = &due.push;
        let described = answer.describe();
        let step = policy(answer, attempts, &self.inner.config, now);
        let status = step.status;
        let next_attempt_at = step.retry_at.unwrap_or(p.next_attempt_at);
        let mut error = step.error;
        let mut disabled = false;
        let disable = step
            .disable
            .and_then(|unless| p.device_id.map(|device_id| (device_id, unless)));
        if let Some((device_id, unless_registered_after)) = disable {
            let reason = format!("APNs: {described}");
            disabled =
                devices::disable(&mut **tx, device_id, &reason, unless_registered_after, now)
                    .await?;
            error = Some(if disabled {
                format!("{described}; the device token is disabled")
            } else {
                format!("{described}, but the device registered again after that; it stays enabled")
            });
        }
        pushes::insert_attempt(
            &mut **tx,
            &NewAttempt {
                push_id: p.id,
                status_code: answer.status_code,
                reason: answer.reason.as_deref(),
                apns_id: answer.apns_id.as_deref(),
                timestamp: answer.timestamp,
                error: answer.error.as_deref(),
                action: answer.action.as_str(),
                at: now,
            },
        )
        .await?;
        pushes::after_attempt(
            &mut **tx,
            &AfterAttempt {
                id: p.id,
                status,
                next_attempt_at,
                status_code: answer.status_code,
                reason: answer.reason.as_deref(),
                apns_id: answer.apns_id.as_deref(),
                error: error.as_deref(),
                payload: json,
                now,
            },
        )
        .await?;
        if let (true, Some((device_id, _))) = (disabled, disable) {
            // The device's other unsent pushes, this one being settled above.
            pushes::cancel_pending_for_device(
                &mut **tx,
                device_id,
                &format!("the device was disabled (APNs: {described})"),
                now,
            )
            .await?;
        }
        Ok((status, disabled))
    }

    /// Logs and counts one recorded answer, and stops sending on a configuration error.
    fn settle(
        &self,
        due: &DuePush,
        answer: &Answer,
        attempts: i64,
        status: PushStatus,
        disabled: bool,
        report: &mut TickReport,
    ) {
        let p = &due.push;
        let described = answer.describe();
        metrics::counter!("tether_push_attempts_total", "action" => answer.action.as_str())
            .increment(1);
        let device = token_prefix(&due.token);
        match &answer.action {
            Action::Delivered => {
                report.delivered += 1;
                tracing::info!(push_id = p.id, %device, kind = %p.kind, apns_id = ?answer.apns_id, "push delivered");
            }
            Action::Logged => report.logged += 1,
            Action::RenewTokenAndRetry => {
                tracing::warn!(push_id = p.id, answer = %described, "provider token expired; renewing")
            }
            Action::DisableToken { .. } => {
                report.failed += 1;
                if disabled {
                    report.disabled += 1;
                    tracing::warn!(push_id = p.id, %device, answer = %described, "device token disabled");
                } else {
                    tracing::info!(push_id = p.id, %device, answer = %described, "token refused before the device registered again; kept");
                }
            }
            Action::Retry if status == PushStatus::Failed => {
                report.failed += 1;
                tracing::warn!(push_id = p.id, %device, attempts, answer = %described, "push failed: attempts used up");
            }
            Action::Retry => {
                report.retried += 1;
                tracing::info!(push_id = p.id, %device, attempts, answer = %described, "push will be retried");
            }
            Action::GiveUp => {
                report.failed += 1;
                metrics::counter!("tether_push_rejected_total").increment(1);
                tracing::error!(push_id = p.id, %device, answer = %described, error = ?answer.error, "APNs refused a push: a bug in tether; not retried");
            }
            Action::ConfigError => {
                report.retried += 1;
                self.stop(&config_hint(answer, &described));
            }
        }
    }

    /// Stops sending until restart, with the reason shown on `/health`.
    fn stop(&self, reason: &str) {
        let mut stopped = self.inner.stopped.lock().expect("stopped lock");
        if stopped.is_none() {
            tracing::error!(
                gateway = self.inner.gateway.name(),
                reason,
                "push sending stopped: fix the configuration and restart tether; pushes wait in the outbox"
            );
            *stopped = Some(reason.to_string());
        }
    }
}

/// What the worker does with one answer: the push's next state, when it is tried again,
/// the ledger's words, and whether the device's token is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub status: PushStatus,
    /// When it is tried again (ms); None: as it was.
    pub retry_at: Option<i64>,
    pub error: Option<String>,
    /// Disable the device's token, unless it registered again after this time (ms).
    pub disable: Option<Option<i64>>,
}

/// The answer policy (the answer table of docs/push.md), for the push's `attempts` so far:
/// pure, so that it is tested without a database; the worker applies it.
pub fn policy(answer: &Answer, attempts: i64, config: &WorkerConfig, now: i64) -> Step {
    let described = answer.describe();
    let step = |status, error: Option<String>| Step {
        status,
        retry_at: None,
        error,
        disable: None,
    };
    match &answer.action {
        Action::Delivered => step(PushStatus::Delivered, None),
        Action::Logged => step(PushStatus::Logged, None),
        Action::RenewTokenAndRetry => step(
            PushStatus::Sending,
            Some(format!("{described}: renewing the provider token")),
        ),
        Action::DisableToken {
            unless_registered_after,
        } => Step {
            disable: Some(*unless_registered_after),
            ..step(PushStatus::Failed, None)
        },
        Action::Retry if attempts >= i64::from(config.max_attempts) => step(
            PushStatus::Failed,
            Some(format!(
                "gave up after {attempts} attempts; the last answer was {described}"
            )),
        ),
        Action::Retry => {
            let delay = backoff(attempts as u32, config.backoff_base, config.backoff_max);
            Step {
                retry_at: Some(now + delay.as_millis() as i64),
                ..step(PushStatus::Pending, Some(format!("{described}; retrying")))
            }
        }
        Action::GiveUp => step(
            PushStatus::Failed,
            Some(match answer.status_code {
                Some(_) => format!("APNs refused the push ({described}); not retried"),
                None => format!("{described}; not sent"),
            }),
        ),
        Action::ConfigError => step(
            PushStatus::Pending,
            Some(format!("{described}; sending is stopped")),
        ),
    }
}

/// The `/health` text for a configuration error: what APNs said and what to check.
fn config_hint(answer: &Answer, described: &str) -> String {
    let check = match answer.reason.as_deref() {
        Some("ExpiredProviderToken") => {
            "a new provider token was refused as expired too: check the server's clock"
        }
        Some("MissingTopic" | "TopicDisallowed") => {
            "check push.apns.topic (the app's bundle id) and the topics devices registered with"
        }
        Some("BadCertificate" | "BadCertificateEnvironment") => "check the APNs credentials",
        None if answer.status_code.is_none() => "check push.apns.key_path",
        _ => "check push.apns.key_path, push.apns.key_id and push.apns.team_id",
    };
    format!("APNs refused the credentials ({described}); {check}, then restart tether")
}

/// The delay before retry number `attempt` (1 = the first retry): `base * 2^(attempt-1)`,
/// at most `max`, then a random part of its upper half (jitter), so retries of many pushes
/// do not come back together. A zero `base` retries at once.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doubling = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let full = base.saturating_mul(doubling).min(max);
    let ms = full.as_millis() as u64;
    let jitter = rand::thread_rng().gen_range(0..=ms / 2);
    Duration::from_millis(ms - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(600);
        for _ in 0..200 {
            for (attempt, full) in [(1, 2_000), (2, 4_000), (3, 8_000), (9, 512_000)] {
                let d = backoff(attempt, base, max).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
            }
            let capped = backoff(10, base, max).as_millis() as u64;
            assert!((300_000..=600_000).contains(&capped), "{capped}");
            let huge = backoff(u32::MAX, base, max).as_millis() as u64;
            assert!((300_000..=600_000).contains(&huge), "{huge}");
        }
        assert_eq!(backoff(5, Duration::ZERO, max), Duration::ZERO);
    }

    fn answer(action: Action, status_code: Option<u16>) -> Answer {
        Answer {
            action,
            status_code,
            reason: None,
            apns_id: None,
            timestamp: None,
            error: None,
        }
    }

    fn config() -> WorkerConfig {
        WorkerConfig {
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            poll_interval: Duration::from_secs(30),
            batch_size: 10,
            concurrency: 4,
            preview_chars: 100,
            send_timeout: Duration::from_secs(10),
            default_topic: None,
        }
    }

    #[test]
    fn the_policy_follows_the_answer() {
        let (config, now) = (config(), 1_000_000);
        let max = i64::from(config.max_attempts);
        let step = |action, status_code, attempts| {
            policy(&answer(action, status_code), attempts, &config, now)
        };
        let delivered = step(Action::Delivered, Some(200), 1);
        assert_eq!(
            (delivered.status, delivered.error),
            (PushStatus::Delivered, None)
        );
        assert_eq!(step(Action::Logged, None, 1).status, PushStatus::Logged);

        // A transient failure waits for its backoff, until the attempts are used up.
        let retry = step(Action::Retry, Some(503), 1);
        assert_eq!(retry.status, PushStatus::Pending);
        let full = config.backoff_base.as_millis() as i64;
        let at = retry.retry_at.expect("a retry is due");
        assert!((now + full / 2..=now + full).contains(&at), "{at}");
        let last = step(Action::Retry, Some(503), max);
        assert_eq!((last.status, last.retry_at), (PushStatus::Failed, None));
        assert!(last
            .error
            .unwrap()
            .starts_with(&format!("gave up after {max} attempts")));

        let gone = step(
            Action::DisableToken {
                unless_registered_after: Some(7),
            },
            Some(410),
            1,
        );
        assert_eq!(
            (gone.status, gone.disable),
            (PushStatus::Failed, Some(Some(7)))
        );

        let refused = step(Action::GiveUp, Some(400), 1);
        assert_eq!(refused.status, PushStatus::Failed);
        assert_eq!(
            refused.error.unwrap(),
            "APNs refused the push (400); not retried"
        );
        assert_eq!(
            step(Action::GiveUp, None, 1).error.unwrap(),
            "give_up; not sent"
        );

        // Kept for when sending resumes, or sent again with a new provider token.
        let stopped = step(Action::ConfigError, Some(403), 1);
        assert_eq!(
            (stopped.status, stopped.retry_at),
            (PushStatus::Pending, None)
        );
        assert_eq!(
            step(Action::RenewTokenAndRetry, Some(403), 1).status,
            PushStatus::Sending
        );
    }
}
