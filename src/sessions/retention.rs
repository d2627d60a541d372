//! Keeps the event log on disk bounded: the events of sessions that ended more than
//! `events.retention` ago go, and no session keeps more than `events.max_per_session`.
//! `tick` is one pass (tests drive it); `run` repeats it until tether stops.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    config::EventSettings,
    store::{self, events, Store},
};

/// Rows deleted per statement, so that a large prune never holds the write lock long.
const BATCH: i64 = 5_000;

/// One pass: prunes until nothing is left to prune. Returns the events deleted.
pub async fn tick(store: &Store, settings: &EventSettings) -> sqlx::Result<u64> {
    let cutoff = store::now_ms() - settings.retention.as_millis() as i64;
    let keep = settings.max_per_session.max(1) as i64;
    let mut total = 0;
    loop {
        let mut tx = store.begin_write().await?;
        let ended = events::prune_ended(&mut *tx, cutoff, BATCH).await?;
        let over = events::prune_over_cap(&mut *tx, keep, BATCH).await?;
        tx.commit().await?;
        total += ended + over;
        if ended + over == 0 {
            break;
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, "pruned the event log");
    }
    Ok(total)
}

/// Runs [`tick`] every `events.prune_interval` until `stop` turns true.
pub async fn run(store: Store, settings: EventSettings, mut stop: watch::Receiver<bool>) {
    let every = settings.prune_interval.max(Duration::from_secs(1));
    loop {
        if let Err(e) = tick(&store, &settings).await {
            tracing::error!(error = %e, "could not prune the event log");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
