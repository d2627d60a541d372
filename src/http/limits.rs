//! Per-owner limits at the HTTP edge: the count of each owner's open event streams.
//! Session counts live in SQLite (see `store::sessions::owner_load`), checked by the
//! accept path where sessions are created (`sessions::accept`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Open event streams per owner; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct StreamCounts(Arc<Mutex<HashMap<String, usize>>>);

/// One open stream of an owner, counted until dropped (when the stream's body is).
#[derive(Debug)]
pub struct StreamPermit {
    counts: StreamCounts,
    owner: String,
}

impl StreamCounts {
    /// A permit for one more stream of `owner`, or None when it already has `limit` open.
    pub fn try_acquire(&self, owner: &str, limit: usize) -> Option<StreamPermit> {
        let mut counts = self.0.lock().expect("stream counts lock");
        let open = counts.entry(owner.to_string()).or_default();
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(StreamPermit {
            counts: self.clone(),
            owner: owner.to_string(),
        })
    }

    /// Streams `owner` has open now.
    pub fn open(&self, owner: &str) -> usize {
        let counts = self.0.lock().expect("stream counts lock");
        counts.get(owner).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("stream counts lock");
        if let Some(open) = counts.get_mut(&self.owner) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_per_owner_until_dropped() {
        let counts = StreamCounts::default();
        let a1 = counts.try_acquire("a", 2).unwrap();
        let _a2 = counts.try_acquire("a", 2).unwrap();
        assert!(counts.try_acquire("a", 2).is_none());
        let _b = counts.try_acquire("b", 2).unwrap();
        drop(a1);
        assert_eq!(counts.open("a"), 1);
        assert!(counts.try_acquire("a", 2).is_some());
    }
}
