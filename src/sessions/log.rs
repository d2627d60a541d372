//! A session's event log as its actor writes it: numbering, a turn's lines held and stored
//! in the transactions a turn already makes (or every `FLUSH_EVERY` in a long turn), and
//! the live ring that listeners read from, bounded in count and in bytes.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{broadcast::error::RecvError, watch},
    time::Instant,
};

use crate::store::{self, events, events::EventRow, messages::MessageRow, WriteTx};

/// How long a line may wait in memory before it is stored (and handed to listeners) in a
/// long turn; a short turn stores its lines with its end.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One entry of a session's event log, as live listeners get it, or a transient event
/// that only live listeners get (the agent's text as it is written).
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The event's number; for a transient event, the number of the last stored event
    /// published before it (it is never stored, so it has none of its own).
    pub seq: i64,
    pub kind: String,
    pub data: Arc<str>,
    /// Not in the stored log: sent live only, without an SSE id, and never replayed.
    pub transient: bool,
    /// On the event that ends a turn: its message and reply as committed, so that whoever
    /// waits for the turn need not read them back.
    pub ended: Option<Arc<Ended>>,
}

/// A user message in its terminal state, and its reply when it completed.
pub type Ended = (MessageRow, Option<MessageRow>);

impl From<EventRow> for LiveEvent {
    fn from(e: EventRow) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            data: e.data.into(),
            transient: false,
            ended: None,
        }
    }
}

impl LiveEvent {
    fn bytes(&self) -> usize {
        self.data.len() + self.kind.len()
    }
}

/// The kind of the transient event that carries text the agent just wrote.
pub const TEXT_DELTA: &str = "tether.text_delta";

/// The latest events of a session, for listeners that keep up: stored events, and the
/// transient ones between them. Oldest events go when it holds more than `max_events` or
/// `max_bytes`; a listener that fell behind them is told it lagged and reads the rest
/// from SQLite.
pub struct LiveRing {
    ring: Mutex<Ring>,
    /// How many events were ever published; listeners wait on its changes.
    published: watch::Sender<u64>,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Ring {
    /// The held events; the first one is number `first` of all published.
    events: VecDeque<LiveEvent>,
    first: u64,
    bytes: usize,
    /// The number of the last stored event published (where a transient one stands).
    last_seq: i64,
    closed: bool,
}

impl LiveRing {
    pub(super) fn new(max_events: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            ring: Mutex::new(Ring::default()),
            published: watch::Sender::new(0),
            max_events: max_events.max(1),
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds stored events (in sequence order) and wakes listeners.
    pub(super) fn publish(&self, events: impl IntoIterator<Item = LiveEvent>) {
        let mut ring = self.lock();
        for ev in events {
            ring.last_seq = ring.last_seq.max(ev.seq);
            ring.push(ev);
        }
        self.settle(ring);
    }

    /// Adds a transient event after the stored ones published so far, and wakes listeners.
    pub(super) fn publish_transient(&self, kind: &str, data: String) {
        self.publish_transient_end(kind, data, None);
    }

    /// [`LiveRing::publish_transient`], carrying the end of a turn (`ended`) when it is one.
    fn publish_transient_end(&self, kind: &str, data: String, ended: Option<Arc<Ended>>) {
        let mut ring = self.lock();
        let ev = LiveEvent {
            seq: ring.last_seq,
            kind: kind.to_string(),
            data: data.into(),
            transient: true,
            ended,
        };
        ring.push(ev);
        self.settle(ring);
    }

    /// Drops the oldest events over the bounds, then tells listeners how many were published.
    fn settle(&self, mut ring: std::sync::MutexGuard<'_, Ring>) {
        while ring.events.len() > self.max_events || ring.bytes > self.max_bytes {
            match ring.events.pop_front() {
                Some(old) => {
                    ring.bytes -= old.bytes();
                    ring.first += 1;
                }
                None => break,
            }
        }
        let published = ring.first + ring.events.len() as u64;
        drop(ring);
        self.published
            .send_if_modified(|n| std::mem::replace(n, published) != published);
    }

    /// Where a transient event stands before any stored event was published: after the
    /// last one already in the log.
    pub(super) fn continue_after(&self, last_seq: i64) {
        let mut ring = self.lock();
        ring.last_seq = ring.last_seq.max(last_seq);
    }

    /// No more events will come (the actor stopped); listeners drain and are told.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.published.send_modify(|_| {});
    }

    /// Listeners from the next event on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let rx = self.published.subscribe();
        let next = *rx.borrow();
        Subscription {
            ring: self.clone(),
            rx,
            next,
        }
    }

    /// How many listeners are attached.
    pub(super) fn listeners(&self) -> usize {
        self.published.receiver_count()
    }

    /// Bytes held (for tests and metrics).
    pub fn held_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Ring {
    fn push(&mut self, ev: LiveEvent) {
        self.bytes += ev.bytes();
        self.events.push_back(ev);
    }
}

/// One listener's place in a session's live events.
pub struct Subscription {
    ring: Arc<LiveRing>,
    rx: watch::Receiver<u64>,
    /// The number (of all published) of the next event to read.
    next: u64,
}

impl Subscription {
    /// The next event. `Lagged` when events this listener had not read were dropped from
    /// memory (read them from SQLite), `Closed` once the actor stopped and all was read.
    pub async fn recv(&mut self) -> Result<LiveEvent, RecvError> {
        loop {
            {
                let ring = self.ring.lock();
                self.rx.borrow_and_update();
                if self.next < ring.first {
                    let missed = ring.first - self.next;
                    self.next = ring.first;
                    return Err(RecvError::Lagged(missed));
                }
                if let Some(ev) = ring.events.get((self.next - ring.first) as usize) {
                    self.next += 1;
                    return Ok(ev.clone());
                }
                if ring.closed {
                    return Err(RecvError::Closed);
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(RecvError::Closed);
            }
        }
    }
}

/// Numbers a session's events: 1, 2, 3…
#[derive(Debug, Clone)]
pub(super) struct Numbering {
    session_id: String,
    next_seq: i64,
}

impl Numbering {
    /// Numbers a session's events after `last_seq`, its log's last stored number (for a
    /// writer that is not its actor: none runs yet, as at a start).
    pub(super) fn after(session_id: String, last_seq: i64) -> Self {
        Self {
            session_id,
            next_seq: last_seq,
        }
    }

    /// The next event, numbered.
    pub(super) fn stage(&mut self, kind: &str, data: String) -> EventRow {
        self.next_seq += 1;
        EventRow {
            session_id: self.session_id.clone(),
            seq: self.next_seq,
            kind: events::sanitize_kind(kind).into_owned(),
            data,
            created_at: store::now_ms(),
        }
    }

    /// One of tether's own events (`tether.<name>`), numbered.
    pub(super) fn stage_tether(&mut self, name: &str, mut data: serde_json::Value) -> EventRow {
        let kind = format!("tether.{name}");
        data["type"] = kind.clone().into();
        self.stage(&kind, data.to_string())
    }
}

/// The actor's side of the log: numbers events, holds those not yet stored, and hands
/// stored ones to the live ring.
pub(super) struct EventLog {
    numbering: Numbering,
    pending: Vec<EventRow>,
    /// When the oldest pending event was staged.
    pending_since: Option<Instant>,
    live: Arc<LiveRing>,
}

impl EventLog {
    pub(super) fn new(session_id: String, live: Arc<LiveRing>) -> Self {
        Self {
            numbering: Numbering {
                session_id,
                next_seq: 0,
            },
            pending: Vec::new(),
            pending_since: None,
            live,
        }
    }

    /// Numbers the next event after `last_seq`, the log's last stored number.
    pub(super) fn continue_after(&mut self, last_seq: i64) {
        self.numbering.next_seq = last_seq;
        self.live.continue_after(last_seq);
    }

    /// Hands text the agent just wrote to live listeners; it is never stored (the agent's
    /// complete line, stored, holds it).
    pub(super) fn publish_delta(&self, delta: &crate::agent::TextDelta) {
        let mut data = serde_json::to_value(delta).unwrap_or_default();
        data["type"] = TEXT_DELTA.into();
        self.live.publish_transient(TEXT_DELTA, data.to_string());
    }

    /// A turn's end that could be stored only as its message's failure (no events): sent
    /// live as a transient `tether.turn_failed`, so that whoever waits for the message (chat's
    /// `wait`, a stream) hears of it now rather than at their deadline.
    pub(super) fn publish_unstored_end(&self, failed: MessageRow) {
        let data = serde_json::json!({
            "type": "tether.turn_failed",
            "messageId": failed.id,
            "status": failed.status,
            "error": failed.error,
        });
        let ended = Some(Arc::new((failed, None)));
        self.live
            .publish_transient_end("tether.turn_failed", data.to_string(), ended);
    }

    /// The next event, numbered, not yet stored. A number whose row is never stored (a
    /// failed transaction) leaves a gap that listeners step over.
    pub(super) fn stage(&mut self, kind: &str, data: String) -> EventRow {
        self.numbering.stage(kind, data)
    }

    /// One of tether's own events (`tether.<name>`), numbered.
    pub(super) fn stage_tether(&mut self, name: &str, data: serde_json::Value) -> EventRow {
        self.numbering.stage_tether(name, data)
    }

    /// The numbering as it stands, for a write transaction that stages
    /// events of its own; hand it back with [`Self::stored_numbered`] once committed.
    pub(super) fn numbering(&self) -> Numbering {
        self.numbering.clone()
    }

    /// The events held for the next transaction.
    pub(super) fn held(&self) -> Vec<EventRow> {
        self.pending.clone()
    }

    /// [`Self::stored`], after a transaction that numbered events with `numbering`;
    /// `ended` goes with the last of `extra` (the event that ended a turn).
    pub(super) fn stored_numbered(
        &mut self,
        numbering: Numbering,
        extra: Vec<EventRow>,
        ended: Option<Ended>,
    ) {
        debug_assert!(numbering.next_seq >= self.numbering.next_seq);
        self.numbering = numbering;
        self.publish_stored(extra, ended);
    }

    fn publish_stored(&mut self, extra: Vec<EventRow>, ended: Option<Ended>) {
        let end_seq = extra.last().map(|r| r.seq);
        self.pending_since = None;
        let mut rows = std::mem::take(&mut self.pending);
        rows.extend(extra);
        rows.sort_by_key(|r| r.seq);
        let mut ended = ended.map(Arc::new);
        self.live.publish(rows.into_iter().map(|row| {
            let at_end = Some(row.seq) == end_seq;
            let mut ev = LiveEvent::from(row);
            if at_end {
                ev.ended = ended.take();
            }
            ev
        }));
    }

    /// Holds an event until the next transaction (or flush).
    pub(super) fn hold(&mut self, row: EventRow) {
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending.push(row);
    }

    /// When held events must be stored at the latest.
    pub(super) fn flush_due(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + FLUSH_EVERY)
    }

    /// Writes the held events and `extra` (numbered after them) in `tx`, in one statement.
    /// The held ones stay held until [`Self::stored`] is called after the commit, so a
    /// failed transaction loses none.
    pub(super) async fn write_with(
        &self,
        tx: &mut WriteTx,
        extra: &[EventRow],
    ) -> sqlx::Result<()> {
        events::append_all(tx, self.pending.iter().chain(extra)).await
    }

    /// The held events were committed (with `extra`, written by the caller after them):
    /// hand them all to listeners.
    pub(super) fn stored(&mut self, extra: Vec<EventRow>) {
        self.publish_stored(extra, None);
    }

    /// Stores the held events in a transaction of their own.
    pub(super) async fn flush(&mut self, store: &store::Store) {
        if self.pending.is_empty() {
            return;
        }
        let held = self.held();
        let result = store
            .write(move |tx| Box::pin(async move { events::append_all(tx, &held).await }))
            .await;
        match result {
            Ok(()) => self.stored(Vec::new()),
            Err(e) => {
                // Kept for the next transaction; retried no sooner than FLUSH_EVERY.
                tracing::error!(error = %e, held = self.pending.len(), "could not store events");
                self.pending_since = Some(Instant::now());
            }
        }
    }

    /// Stages, holds and stores one event at once (outside a turn).
    pub(super) async fn log_now(&mut self, store: &store::Store, row: EventRow) {
        self.hold(row);
        self.flush(store).await;
    }

    pub(super) fn live(&self) -> &Arc<LiveRing> {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, bytes: usize) -> LiveEvent {
        LiveEvent {
            seq,
            kind: "k".into(),
            data: "x".repeat(bytes).into(),
            transient: false,
            ended: None,
        }
    }

    #[tokio::test]
    async fn the_ring_is_bounded_in_bytes_and_a_slow_listener_is_told_it_lagged() {
        let ring = LiveRing::new(1000, 1000);
        let mut slow = ring.subscribe();
        ring.publish((1..=10).map(|s| ev(s, 299)));
        assert!(ring.held_bytes() <= 1000, "{}", ring.held_bytes());
        assert_eq!(ring.lock().events.len(), 3);
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(7))));
        assert_eq!(slow.recv().await.unwrap().seq, 8);
        let mut fresh = ring.subscribe();
        ring.publish([ev(11, 1)]);
        assert_eq!(fresh.recv().await.unwrap().seq, 11);
        ring.close();
        assert_eq!(slow.recv().await.unwrap().seq, 9);
        assert_eq!(slow.recv().await.unwrap().seq, 10);
        assert_eq!(slow.recv().await.unwrap().seq, 11);
        assert!(matches!(slow.recv().await, Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn an_event_bigger_than_the_ring_is_not_kept_but_is_announced() {
        let ring = LiveRing::new(10, 100);
        let mut l = ring.subscribe();
        ring.publish([ev(1, 10), ev(2, 500)]);
        assert_eq!(ring.held_bytes(), 0);
        assert!(matches!(l.recv().await, Err(RecvError::Lagged(2))));
        ring.publish([ev(3, 1)]);
        assert_eq!(l.recv().await.unwrap().seq, 3);
    }

    #[tokio::test]
    async fn transient_events_stand_after_the_stored_ones_and_count_against_the_bounds() {
        let ring = LiveRing::new(100, 1000);
        ring.continue_after(41);
        let mut l = ring.subscribe();
        ring.publish_transient(TEXT_DELTA, "a".into());
        ring.publish([ev(42, 1)]);
        ring.publish_transient(TEXT_DELTA, "b".into());
        let got: Vec<(i64, bool)> = [
            l.recv().await.unwrap(),
            l.recv().await.unwrap(),
            l.recv().await.unwrap(),
        ]
        .iter()
        .map(|e| (e.seq, e.transient))
        .collect();
        assert_eq!(got, [(41, true), (42, false), (42, true)]);
        // Many small transient events push the stored one out: the bound holds.
        for _ in 0..200 {
            ring.publish_transient(TEXT_DELTA, "x".repeat(100));
        }
        assert!(ring.held_bytes() <= 1000, "{}", ring.held_bytes());
        let mut slow = ring.subscribe();
        ring.publish([ev(43, 1)]);
        assert_eq!(slow.recv().await.unwrap().seq, 43);
        assert!(matches!(l.recv().await, Err(RecvError::Lagged(_))));
    }
}
