//! Limits at the HTTP edge: the request rate of each token (or address) and the count of
//! each owner's open event streams. Session counts live in SQLite (see
//! `store::sessions::owner_load`), checked by the accept path where sessions are created
//! (`sessions::accept`).

use super::codes::ErrorCode;
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};

use super::{error::ApiError, extract, server::Peer, state::AppState};

/// Requests per minute per key (`server.requests_per_minute`): a token, or the caller's
/// address for requests without a valid one.
pub struct RequestRate {
    limiter: DefaultKeyedRateLimiter<RateKey>,
    checks: AtomicU64,
}

/// Whose budget a request spends: its token's (by id, however the header is spelled), else
/// its peer address's (no token, or one that is not valid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Token(String),
    Address(IpAddr),
    /// A request whose peer is not known (not served by `server::Server`).
    Unknown,
}

/// How often (in requests) keys idle long enough to be full again are forgotten, so the
/// table stays as small as the set of recent callers.
const FORGET_EVERY: u64 = 1024;

impl std::fmt::Debug for RequestRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRate")
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl RequestRate {
    /// None when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32) -> Option<Self> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        })
    }

    /// Err with how long to wait when `key` is over its rate.
    pub fn check(&self, key: RateKey) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::DefaultClock::default().now())
        })
    }
}

/// What [`limit_rate`] needs: the app (to check tokens) and the rate, if there is one.
#[derive(Clone)]
pub struct RateLimit {
    pub state: AppState,
    /// `server.requests_per_minute`; None: no limit.
    pub rate: Option<Arc<RequestRate>>,
}

/// 429 `too_many_requests` past `server.requests_per_minute`, counted per token id after
/// checking the token (so the header's spelling does not matter) and per peer address for
/// requests without a valid token (so junk headers share the address's budget).
pub async fn limit_rate(
    State(RateLimit { state, rate }): State<RateLimit>,
    req: Request,
    next: Next,
) -> Response {
    let Some(rate) = rate else {
        return next.run(req).await;
    };
    let key = match extract::token_id(&state, req.headers()).await {
        Some(id) => RateKey::Token(id),
        None => req
            .extensions()
            .get::<Peer>()
            .map_or(RateKey::Unknown, |peer| RateKey::Address(peer.0.ip())),
    };
    if let Err(wait) = rate.check(key) {
        return ApiError::too_many(
            ErrorCode::TooManyRequests,
            "too many requests from this token, or from this address without one \
             (server.requests_per_minute); slow down",
            wait,
        )
        .into_response();
    }
    next.run(req).await
}

/// How often an event stream sends a keep-alive comment; a stream whose client vanished is
/// noticed by its next one at the latest.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

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
    /// A permit for one more stream of `owner`, or 429 `too_many_streams` when it already
    /// has `limit` open (event streams and streamed completions).
    pub fn acquire(&self, owner: &str, limit: usize) -> Result<StreamPermit, ApiError> {
        self.try_acquire(owner, limit).ok_or_else(|| {
            tracing::info!(
                owner,
                limit = "limits.streams_per_owner",
                "per-owner limit reached"
            );
            ApiError::too_many(
                ErrorCode::TooManyStreams,
                format!(
                    "{limit} streams are already open (limits.streams_per_owner); close one first"
                ),
                // A stream whose client vanished is noticed by its next keep-alive at the latest.
                SSE_KEEPALIVE,
            )
        })
    }

    /// A permit for one more stream of `owner`, or None when it already has `limit` open.
    fn try_acquire(&self, owner: &str, limit: usize) -> Option<StreamPermit> {
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
    fn each_key_gets_its_own_rate() {
        let rate = RequestRate::new(2).unwrap();
        let a = || RateKey::Token("a".into());
        assert!(rate.check(a()).is_ok());
        assert!(rate.check(a()).is_ok());
        let wait = rate.check(a()).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let b = RateKey::Address([127, 0, 0, 1].into());
        assert!(rate.check(b).is_ok(), "another key is not slowed");
        assert!(RequestRate::new(0).is_none(), "0 is no limit");
    }

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
