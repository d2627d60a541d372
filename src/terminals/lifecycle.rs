//! A terminal's day, on the sessions' scheduler (`sessions::lifecycle`, as a [`Timed`]): the
//! "ends soon" push `sessions.warn_before` ahead of its end, the end itself (stopped, an
//! "expired" push), the end of a terminal with no viewer and no output for
//! `terminals.idle_timeout`, the "terminal waiting" push when unseen output went quiet for
//! `terminals.quiet_push_after`, and dropping the saved output of terminals that ended more
//! than `events.retention` ago. [`Terminals::lifecycle_tick`] is one step at a given time.

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, FutureExt};
use serde::Serialize;

use super::{Live, Terminals, Why};
use crate::{
    push::{self, PushEvent, PushKind},
    sessions::lifecycle::{human_duration, warn_once, Expiring, Timed},
    store::terminals,
};

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TerminalReport {
    pub warned: usize,
    pub expired: usize,
    pub idle_ended: usize,
    pub waiting_pushed: usize,
    pub tails_dropped: u64,
}

impl Terminals {
    /// One step of the terminals' lifecycle at `now` (ms since the epoch). Ends are asked
    /// for, not waited for: each terminal's task stops its program and records the end.
    pub async fn lifecycle_tick(&self, now: i64) -> sqlx::Result<TerminalReport> {
        let deps = self.deps();
        let mut report = TerminalReport::default();
        let live: Vec<Arc<Live>> = self.map().values().map(|e| e.live.clone()).collect();
        // The deadlines in SQLite must include the latest input and attaches.
        for t in &live {
            t.flush_activity(&deps.store).await;
        }
        let pool = deps.store.pool();
        for id in terminals::due_expiries(pool, now).await? {
            match self.live(&id) {
                Some(t) => {
                    t.request_end(Why::Expired);
                    report.expired += 1;
                }
                // Not running here (it could not be stopped before): recovery's case.
                None => {
                    terminals::mark_killed(pool, &id, "expired", now).await?;
                }
            }
        }
        let warn_before = deps.session_settings.warn_before.as_millis() as i64;
        for row in terminals::due_warnings(pool, now, warn_before).await? {
            if warn_once(&deps.store, &deps.push_wake, Expiring::Terminal(&row), now).await? {
                report.warned += 1;
            }
        }
        let idle_timeout = deps.settings.idle_timeout;
        for t in &live {
            if t.idle_since()
                .is_some_and(|since| now - since >= idle_timeout.as_millis() as i64)
            {
                t.request_end(Why::Idle(idle_timeout));
                report.idle_ended += 1;
            }
        }
        if let Some(after) = deps.settings.quiet_push_after {
            for t in &live {
                let quiet = t
                    .quiet_since()
                    .is_some_and(|at| now - at >= after.as_millis() as i64);
                if quiet && self.push_waiting(t, after).await? {
                    report.waiting_pushed += 1;
                }
            }
        }
        report.tails_dropped =
            terminals::drop_tails(pool, now - deps.retention.as_millis() as i64).await?;
        Ok(report)
    }

    /// Tells the owner that a terminal nobody watches went quiet after output.
    async fn push_waiting(&self, t: &Live, after: Duration) -> sqlx::Result<bool> {
        let deps = self.deps();
        let text = format!(
            "No output for {} and nobody is watching: it may be waiting for you.",
            human_duration(after)
        );
        let mut tx = deps.store.begin_write().await?;
        push::enqueue(
            &mut tx,
            &PushEvent::new(PushKind::TerminalWaiting, &t.audience, None, &text),
        )
        .await?;
        tx.commit().await?;
        t.told_quiet();
        deps.push_wake.notify_one();
        tracing::info!(terminal_id = %t.id, "terminal waiting push queued");
        Ok(true)
    }

    /// The next moment the lifecycle has something to do for terminals.
    pub async fn next_deadline(&self) -> sqlx::Result<Option<i64>> {
        let deps = self.deps();
        let warn_before = deps.session_settings.warn_before.as_millis() as i64;
        let mut next = terminals::next_deadline(deps.store.pool(), warn_before).await?;
        let mut earliest = |at: i64| next = Some(next.map_or(at, |n| n.min(at)));
        let idle = deps.settings.idle_timeout.as_millis() as i64;
        let quiet = deps.settings.quiet_push_after.map(|d| d.as_millis() as i64);
        let live: Vec<Arc<Live>> = self.map().values().map(|e| e.live.clone()).collect();
        for t in live {
            if let Some(since) = t.idle_since() {
                earliest(since + idle);
            }
            if let (Some(at), Some(quiet)) = (t.quiet_since(), quiet) {
                earliest(at + quiet);
            }
        }
        Ok(next)
    }
}

impl Timed for Terminals {
    fn step(&self, now: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            let report = self.lifecycle_tick(now).await?;
            if report != TerminalReport::default() {
                tracing::debug!(?report, "terminal lifecycle step");
            }
            Ok(())
        }
        .boxed()
    }

    fn next_deadline(&self) -> BoxFuture<'_, anyhow::Result<Option<i64>>> {
        async move { Ok(Terminals::next_deadline(self).await?) }.boxed()
    }
}
