//! Keeps the event log and the history on disk bounded: the events of sessions that ended
//! more than `events.retention` ago go, no session keeps more than `events.max_per_session`,
//! and the messages of sessions that ended more than `events.message_retention` ago go.
//! `tick_at` is one pass at a given time (tests drive it); `run` repeats it until tether stops.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    config::EventSettings,
    store::{self, events, messages, Store},
};

/// Rows deleted per statement, so that a large prune never holds the write lock long.
const BATCH: i64 = 5_000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub messages: u64,
}

/// One pass now: see [`tick_at`]. Returns the events deleted.
pub async fn tick(store: &Store, settings: &EventSettings) -> sqlx::Result<u64> {
    Ok(tick_at(store, settings, store::now_ms()).await?.events)
}

/// One pass as of `now` (ms): prunes until nothing is left to prune.
pub async fn tick_at(store: &Store, settings: &EventSettings, now: i64) -> sqlx::Result<Pruned> {
    let cutoff = now - settings.retention.as_millis() as i64;
    let keep = settings.max_per_session.max(1) as i64;
    // Zero, like "off", keeps every message.
    let message_cutoff = settings
        .message_retention
        .filter(|d| !d.is_zero())
        .map(|d| now - d.as_millis() as i64);
    let mut total = Pruned::default();
    loop {
        let mut tx = store.begin_write().await?;
        let ended = events::prune_ended(&mut *tx, cutoff, BATCH).await?;
        let over = events::prune_over_cap(&mut *tx, keep, BATCH).await?;
        let old = match message_cutoff {
            Some(cutoff) => messages::prune_ended(&mut tx, cutoff, BATCH).await?,
            None => 0,
        };
        tx.commit().await?;
        total.events += ended + over;
        total.messages += old;
        if ended + over + old == 0 {
            break;
        }
    }
    if total != Pruned::default() {
        tracing::info!(
            events = total.events,
            messages = total.messages,
            "pruned the event log and old history"
        );
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
