//! What the edge shares with every request (an `Extension`): the shutdown drain, the
//! per-owner stream counts, and the request time budgets.

use std::time::Duration;

use super::{limits::StreamCounts, server::Drain};

#[derive(Clone, Debug)]
pub struct Edge {
    pub drain: Drain,
    pub streams: StreamCounts,
    /// `server.request_timeout`.
    pub request_timeout: Duration,
    /// `server.wait_timeout`: the extra time `POST /api/chat {"wait": true}` may take.
    pub wait_timeout: Duration,
}
