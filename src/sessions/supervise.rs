//! Running the actors: one is started for a session on first need (under the lock of the
//! map, so that there is never two), supervised (a panic fails its turn and a new actor
//! takes the queue), and forgotten when it retires or ends.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};

use super::{
    actor::Actor,
    control::ProcessInfo,
    handle::{tell_owner, ActorHandle, Entry, Sessions, CONTROL_CHANNEL},
    log::LiveRing,
};
use crate::{
    push::PushKind,
    store::{self, messages, sessions},
};

impl Sessions {
    /// Runs `f` on the actor of a session, started if it is not running, under the lock
    /// that an actor retiring takes too. None while shutting down.
    pub(super) fn with_actor<T>(
        &self,
        session_id: &str,
        f: impl FnOnce(&ActorHandle) -> T,
    ) -> Option<T> {
        if self.is_closing() {
            return None;
        }
        let mut actors = self.actors();
        if let Some(e) = actors.get(session_id) {
            if !e.handle.ctl.is_closed() {
                return Some(f(&e.handle));
            }
        }
        let settings = &self.deps().session_settings;
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_CHANNEL);
        let (process_tx, process_rx) = watch::channel(ProcessInfo::none());
        let handle = ActorHandle {
            ctl: ctl_tx,
            wake: Arc::new(Notify::new()),
            wakes: Arc::new(AtomicU64::new(0)),
            live: LiveRing::new(settings.event_buffer, settings.event_buffer_bytes),
            process: process_rx,
            generation: self.inner.generations.fetch_add(1, Ordering::SeqCst),
        };
        let actor = Actor::new(
            session_id.to_string(),
            self.clone(),
            ctl_rx,
            &handle,
            process_tx,
        );
        let join = tokio::spawn(self.clone().supervise(
            session_id.to_string(),
            handle.generation,
            actor,
        ));
        let answer = f(&handle);
        actors.insert(session_id.to_string(), Entry { handle, join });
        Some(answer)
    }

    /// Runs an actor. If it panics, its running message fails ("internal error", the owner
    /// is told), it is forgotten, and a new actor takes any queued work: the session stays
    /// usable. (Its process was killed when the actor was dropped.)
    async fn supervise(self, session_id: String, generation: u64, actor: Actor) {
        let live = actor.live_ring();
        let outcome = AssertUnwindSafe(actor.run()).catch_unwind().await;
        live.close();
        {
            // Forgotten however it ended (an actor that found its session ended, too).
            let mut actors = self.actors();
            if actors
                .get(&session_id)
                .is_some_and(|e| e.handle.generation == generation)
            {
                actors.remove(&session_id);
            }
        }
        if outcome.is_ok() {
            return;
        }
        metrics::counter!("tether_actor_panics_total").increment(1);
        tracing::error!(%session_id, "session actor panicked");
        if let Err(e) = self.fail_after_panic(&session_id).await {
            tracing::error!(%session_id, error = %e, "could not end the turn of a panicked actor");
        }
        if matches!(messages::count_queued(self.deps().store.pool(), &session_id).await, Ok(n) if n > 0)
        {
            self.wake(&session_id);
        }
    }

    async fn fail_after_panic(&self, session_id: &str) -> sqlx::Result<()> {
        const REASON: &str = "internal error: tether's session task failed; send the message again";
        let mut tx = self.deps().store.begin_write().await?;
        if let Some(m) =
            messages::fail_running(&mut *tx, session_id, REASON, store::now_ms()).await?
        {
            sessions::set_process(&mut *tx, session_id, None).await?;
            tell_owner(
                &mut tx,
                session_id,
                PushKind::TurnFailed,
                Some(m.id),
                REASON,
            )
            .await?;
        }
        tx.commit().await?;
        self.deps().push_wake.notify_one();
        Ok(())
    }

    /// Called by an idle actor with no process: it is forgotten (and may exit) unless a
    /// wake came since it counted `seen` or someone listens to it.
    pub(super) fn retire(&self, session_id: &str, generation: u64, seen: u64) -> bool {
        let mut actors = self.actors();
        let Some(e) = actors.get(session_id) else {
            return true;
        };
        if e.handle.generation != generation {
            return true;
        }
        if e.handle.wakes.load(Ordering::SeqCst) != seen || e.handle.live.listeners() > 0 {
            return false;
        }
        actors.remove(session_id);
        true
    }
}
