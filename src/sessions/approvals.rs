//! The permission requests of the running turn that wait for the owner, oldest first: the
//! oldest is the one denied when `approvals.auto_deny_after` runs out.

use std::time::Duration;

use tokio::time::Instant;

/// A pending request of the running turn, as its actor holds it.
pub(super) struct Pending {
    pub(super) approval_id: i64,
    /// The agent's id of the request, which its answer names.
    pub(super) request_id: String,
    asked: Instant,
}

/// The requests of the running turn that wait for an answer.
#[derive(Default)]
pub(super) struct PendingApprovals {
    pending: Vec<Pending>,
}

impl PendingApprovals {
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A request stored just now, that waits from now on.
    pub(super) fn push(&mut self, approval_id: i64, request_id: String) {
        self.pending.push(Pending {
            approval_id,
            request_id,
            asked: Instant::now(),
        });
    }

    /// Takes out the request `approval_id` while its decision is stored, with its place
    /// (to [`Self::put_back`] if the decision could not be stored).
    pub(super) fn take(&mut self, approval_id: i64) -> Option<(usize, Pending)> {
        let at = self
            .pending
            .iter()
            .position(|p| p.approval_id == approval_id)?;
        Some((at, self.pending.remove(at)))
    }

    pub(super) fn put_back(&mut self, at: usize, pending: Pending) {
        self.pending.insert(at, pending);
    }

    /// Whether `approval_id` is one of them.
    pub(super) fn holds(&self, approval_id: i64) -> bool {
        self.pending.iter().any(|p| p.approval_id == approval_id)
    }

    /// The oldest request's id, for an automatic deny.
    pub(super) fn oldest(&self) -> Option<i64> {
        self.pending.first().map(|p| p.approval_id)
    }

    /// When the oldest request is denied automatically, `after` it was asked.
    pub(super) fn auto_deny_at(&self, after: Option<Duration>) -> Option<Instant> {
        Some(self.pending.first()?.asked + after?)
    }

    /// The turn ended: what was pending ends with it (closed in the turn's end).
    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }
}
