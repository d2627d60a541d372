//! Failures that tests switch on, to prove how tether behaves when a write fails or an
//! actor panics. With the `test-support` feature only; in a release build every check is
//! a constant `false`.

#[cfg(any(test, feature = "test-support"))]
mod armed {
    use std::sync::Mutex;

    /// (where, key, times left)
    static ARMED: Mutex<Vec<(&'static str, String, u32)>> = Mutex::new(Vec::new());

    /// Makes the next `times` checks of `point` fail for work whose text contains `key`
    /// (a marker unique to the test, so tests running side by side do not meet).
    pub fn arm(point: &'static str, key: &str, times: u32) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        armed.push((point, key.to_string(), times));
    }

    /// Whether `point` must fail now for work described by `text`.
    pub fn hit(point: &str, text: &str) -> bool {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        for (p, key, left) in armed.iter_mut() {
            if *p == point && *left > 0 && text.contains(key.as_str()) {
                *left -= 1;
                return true;
            }
        }
        false
    }
}

#[cfg(any(test, feature = "test-support"))]
pub use armed::{arm, hit};

#[cfg(not(any(test, feature = "test-support")))]
#[inline(always)]
pub fn hit(_point: &str, _text: &str) -> bool {
    false
}

/// The end of a turn cannot be stored.
pub const TURN_END_WRITE: &str = "turn_end_write";
/// The actor panics in the middle of a turn.
pub const ACTOR_PANIC: &str = "actor_panic";
/// The actor cannot load its session (the key is the session id).
pub const SESSION_LOAD: &str = "session_load";
