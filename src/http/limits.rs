//! Per-owner limits at the HTTP edge: the 429 answer (with `Retry-After`) they all give, and
//! the count of each owner's open event streams. Session counts live in SQLite (see
//! `store::sessions::owner_load`), checked where sessions are created.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    http::{header::RETRY_AFTER, StatusCode},
    response::{IntoResponse, Response},
};

use super::ApiError;

/// A per-owner limit was reached: 429 with the code, a message naming the config key, and
/// `Retry-After` in whole seconds (at least 1).
#[derive(Debug)]
pub struct TooMany {
    pub code: &'static str,
    pub message: String,
    pub retry_after: Duration,
}

impl TooMany {
    pub fn new(code: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after,
        }
    }

    /// `Retry-After` in whole seconds, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, self.code, self.message);
        ([(RETRY_AFTER, secs.to_string())], error).into_response()
    }
}

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

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |ms| TooMany::new("x", "", Duration::from_millis(ms)).retry_after_secs();
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(59_001), 60);
    }
}
