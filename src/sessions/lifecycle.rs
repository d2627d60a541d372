//! A session's day, scheduled from SQLite: the "expires soon" push `sessions.warn_before`
//! ahead of its end, the end itself (process stopped, session `expired`, a push), and the
//! hibernation of processes idle for `sessions.idle_stop`. [`Sessions::lifecycle_tick`] is
//! one step at a given time (tests drive it with their own clock); [`run`] calls it with
//! the wall clock whenever the next deadline comes, at most [`MAX_SLEEP`] apart. Deadlines
//! that fell due while tether was down are handled by the first step after start.
//! Other parts with deadlines of their own (terminals) ride the same clock as [`Timed`].

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;

use serde::Serialize;

use tokio::sync::Notify;

pub use super::duration::human_duration;
use super::handle::Sessions;
use crate::{
    awake::KeepAwake,
    push::{self, Audience, PushEvent, PushKind},
    store::{self, sessions, terminals, Store},
};

/// Longest sleep between two steps (idle processes are looked at this often).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// After a failed step, the next one comes this much later.
const RETRY: Duration = Duration::from_secs(5);

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LifecycleReport {
    pub warned: usize,
    pub expired: usize,
    pub hibernated: usize,
}

impl Sessions {
    /// One step of the scheduler at `now` (ms since the epoch).
    pub async fn lifecycle_tick(&self, now: i64) -> sqlx::Result<LifecycleReport> {
        let settings = &self.deps().session_settings;
        let warn_before = settings.warn_before.as_millis() as i64;
        let mut report = LifecycleReport::default();
        // Ends first: a warning whose end has also passed is not sent (the query skips it).
        for id in sessions::due_expiries(self.deps().store.pool(), now).await? {
            if self.expire(&id, now).await? {
                report.expired += 1;
            }
        }
        let pool = self.deps().store.pool();
        for session in sessions::due_warnings(pool, now, warn_before).await? {
            let (deps, what) = (self.deps(), Expiring::Session(&session));
            if warn_once(&deps.store, &deps.push_wake, what, now).await? {
                report.warned += 1;
            }
        }
        report.hibernated = self.hibernate_idle(now, settings.idle_stop);
        Ok(report)
    }

    /// Ends a session whose end came (unless a keep-alive moved it meanwhile).
    async fn expire(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        self.end_session_as(id, sessions::STATE_EXPIRED, "expired", now)
            .await
    }

    /// Asks every process idle since before `now - idle_stop` to stop. Returns how many.
    fn hibernate_idle(&self, now: i64, idle_stop: Duration) -> usize {
        let cutoff = now - idle_stop.as_millis() as i64;
        self.processes()
            .iter()
            .filter(|p| p.is_idle() && p.last_used_ms <= cutoff)
            .filter(|p| p.stop("hibernated after idle"))
            .count()
    }
}

/// What ends at a set time and is warned of once, `sessions.warn_before` ahead.
pub(crate) enum Expiring<'a> {
    Session(&'a sessions::SessionRow),
    Terminal(&'a terminals::TerminalRow),
}

/// Sends this period's "ends soon" warning of a session or a terminal, once: marked in the
/// transaction that queues the push. False when it was sent already, or its end moved.
pub(crate) async fn warn_once(
    store: &Store,
    push_wake: &Notify,
    what: Expiring<'_>,
    now: i64,
) -> sqlx::Result<bool> {
    let mut tx = store.begin_write().await?;
    let (marked, expires_at) = match what {
        Expiring::Session(s) => (
            sessions::mark_warned(&mut *tx, &s.id, s.expires_at, now).await?,
            s.expires_at,
        ),
        Expiring::Terminal(t) => (
            terminals::mark_warned(&mut *tx, &t.id, t.expires_at, now).await?,
            t.expires_at,
        ),
    };
    if !marked {
        return Ok(false);
    }
    let left = human_duration(Duration::from_millis((expires_at - now).max(0) as u64));
    let (kind, audience, text) = match what {
        Expiring::Session(s) => (
            PushKind::SessionExpiring,
            Audience::of(s),
            format!("This session ends in {left} unless you keep it alive."),
        ),
        Expiring::Terminal(t) => (
            PushKind::TerminalExpiring,
            Audience::of_terminal(&t.id, &t.owner, &t.project_path),
            format!("This terminal ends in {left} unless you open it or type in it."),
        ),
    };
    let event = PushEvent {
        expires_at: Some(expires_at),
        ..PushEvent::new(kind, &audience, None, &text)
    };
    push::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    push_wake.notify_one();
    match what {
        Expiring::Session(s) => {
            tracing::info!(session_id = %s.id, expires_at, "expiry warning queued");
        }
        Expiring::Terminal(t) => {
            tracing::info!(terminal_id = %t.id, expires_at, "terminal expiry warning queued");
        }
    }
    Ok(true)
}

/// Another part with deadlines (terminals), stepped by the same scheduler: its step at a
/// given time, and when it next has something to do (None: nothing, which also means it
/// needs the machine awake no longer).
pub trait Timed: Send + Sync + 'static {
    fn step(&self, now: i64) -> BoxFuture<'_, anyhow::Result<()>>;
    fn next_deadline(&self) -> BoxFuture<'_, anyhow::Result<Option<i64>>>;
}

/// Runs the scheduler until tether stops, keeping the machine awake (`awake`) while any
/// session is active (or any of `others` has a deadline), and stepping `others` with it.
pub async fn run(sessions: Sessions, awake: KeepAwake, others: Vec<Arc<dyn Timed>>) {
    let mut stop = sessions.stopping();
    let warn_before = sessions.deps().session_settings.warn_before.as_millis() as i64;
    loop {
        let now = store::now_ms();
        let mut others_next = None;
        for other in &others {
            if let Err(e) = other.step(now).await {
                tracing::error!(error = %e, "lifecycle step failed; trying again");
            }
            if let Ok(Some(at)) = other.next_deadline().await {
                others_next = Some(others_next.map_or(at, |n: i64| n.min(at)));
            }
        }
        let sleep = match sessions.lifecycle_tick(now).await {
            Ok(report) => {
                if report != LifecycleReport::default() {
                    tracing::debug!(?report, "lifecycle step");
                }
                let next = sessions::next_deadline(sessions.deps().store.pool(), warn_before)
                    .await
                    .map(|next| match (next, others_next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    });
                // No deadline: no active session, nothing to stay awake for.
                awake.set(!matches!(next, Ok(None))).await;
                match next {
                    Ok(Some(at)) => Duration::from_millis((at - now).max(0) as u64),
                    _ => MAX_SLEEP,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "lifecycle step failed; trying again");
                RETRY
            }
        };
        // A little after the deadline, so that it has passed by the clock of the next step.
        let sleep = (sleep + Duration::from_millis(10)).min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    awake.release().await;
}
