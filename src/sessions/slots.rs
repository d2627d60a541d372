//! Waiting for a process slot (`sessions.max_processes`): free, or freed by stopping a warm
//! spare or else the least recently used idle process; when every process is busy, asking
//! again as they finish. A future the actor waits for among its other events.

use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::handle::Sessions;

/// How often a turn waiting for a slot asks again for an idle process to be evicted.
const RETRY: Duration = Duration::from_millis(250);

/// A slot for `session_id`'s process; Err once tether is shutting down (the semaphore is
/// closed).
pub(super) async fn take(
    sessions: Sessions,
    session_id: String,
) -> Result<OwnedSemaphorePermit, ()> {
    let slots = sessions.inner.slots.clone();
    loop {
        match slots.clone().try_acquire_owned() {
            Ok(slot) => return Ok(slot),
            Err(TryAcquireError::Closed) => return Err(()),
            Err(TryAcquireError::NoPermits) => {}
        }
        // A spare is the first to go, then the least recently used idle process.
        if !sessions.drop_one_spare("stopped to free a process slot") {
            sessions.evict_one_idle(&session_id);
        }
        match tokio::time::timeout(RETRY, slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => return Ok(slot),
            Ok(Err(_closed)) => return Err(()),
            Err(_elapsed) => {}
        }
    }
}
