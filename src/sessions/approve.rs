//! Approvals inside a turn: a permission request of the agent is stored (with its line, an
//! event and the owner's push, in one transaction) and waits, without limit unless
//! `approvals.auto_deny_after` is set; a decision from the phone reaches the actor, is
//! stored, then written to the agent as its answer. What is still pending when the turn
//! ends is closed with it (see `finish`); after a restart, by `recover`.

use std::time::Duration;

use serde_json::json;
use tokio::{sync::oneshot, time::Instant};

use super::{
    actor::Actor,
    control::{Decide, Gone, ModeApplied},
    duration::human_duration,
};
use crate::{
    agent::{Decision, PermissionRequest},
    push::{self, PushEvent, PushKind},
    store::{
        self, approvals,
        approvals::{ApprovalStatus, NewApproval},
        events::EventRow,
        messages, sessions,
    },
};

impl Actor {
    /// Stores a permission request of the turn and tells the owner; the agent waits.
    pub(super) async fn ask(
        &mut self,
        msg: &messages::MessageRow,
        request: PermissionRequest,
        line: EventRow,
    ) {
        let max = self.sessions.deps().approvals.max_input_bytes;
        let whole = request.input.to_string();
        let (input, input_cut) = if whole.len() > max {
            (json!({"cut": true, "bytes": whole.len()}).to_string(), true)
        } else {
            (whole, false)
        };
        let kind = if request.question { "question" } else { "tool" };
        let suggestions = request.suggestions.as_ref().map(|s| s.to_string());
        let text = push_text(&request);
        let now = store::now_ms();
        let stored: sqlx::Result<(i64, EventRow)> = async {
            let mut tx = self.store().begin_write().await?;
            let approval_id = approvals::insert(
                &mut *tx,
                &NewApproval {
                    session_id: &self.id,
                    message_id: msg.id,
                    request_id: &request.request_id,
                    kind,
                    tool_name: &request.tool_name,
                    input: &input,
                    input_cut,
                    description: request.description.as_deref(),
                    suggestions: suggestions.as_deref(),
                    now,
                },
            )
            .await?;
            let event = self.log.stage_tether(
                "approval_requested",
                json!({"approvalId": approval_id, "messageId": msg.id, "kind": kind,
                       "toolName": request.tool_name, "description": request.description}),
            );
            self.log
                .write_with(&mut tx, &[line.clone(), event.clone()])
                .await?;
            if let Some(audience) = &self.audience {
                let push_kind = if request.question {
                    PushKind::QuestionAsked
                } else {
                    PushKind::ApprovalRequested
                };
                let push = PushEvent {
                    approval_id: Some(approval_id),
                    ..PushEvent::new(push_kind, audience, None, &text)
                };
                push::enqueue(&mut tx, &push).await?;
            }
            tx.commit().await?;
            Ok((approval_id, event))
        }
        .await;
        match stored {
            Ok((approval_id, event)) => {
                self.log.stored(vec![line, event]);
                self.sessions.deps().push_wake.notify_one();
                tracing::info!(approval_id, tool = %request.tool_name, kind, "approval requested");
                self.approvals.push(approval_id, request.request_id);
            }
            Err(e) => {
                // Not stored, so nobody can answer it: the agent is told no rather than left
                // waiting for ever.
                tracing::error!(error = %e, "could not store a permission request; denying it");
                self.log.hold(line);
                let deny = Decision::Deny {
                    message: "tether could not record this request; it was denied".into(),
                };
                self.write_answer(&request.request_id, &deny);
            }
        }
    }

    /// Applies a decision to a pending request of this turn: stored first, then written to
    /// the agent, so an answer is never given twice or lost in between.
    pub(super) async fn answer(&mut self, d: Decide) {
        if !self.approvals.holds(d.approval_id) || self.live.is_none() {
            let _ = d.reply.send(Err(Gone));
            return;
        }
        let (status, stored_decision) = match &d.decision {
            Decision::Allow {
                updated_input,
                updated_permissions,
            } => (
                ApprovalStatus::Allowed,
                json!({"behavior": "allow", "updatedInput": updated_input,
                       "updatedPermissions": updated_permissions}),
            ),
            Decision::Deny { message } => (
                ApprovalStatus::Denied,
                json!({"behavior": "deny", "message": message}),
            ),
        };
        let now = store::now_ms();
        let stored: sqlx::Result<Option<EventRow>> = async {
            let mut tx = self.store().begin_write().await?;
            let decision = stored_decision.to_string();
            if !approvals::decide(&mut *tx, d.approval_id, status, &decision, &d.by, now).await? {
                return Ok(None);
            }
            if let Some(mode) = &d.keep_mode {
                sessions::set_permission_mode(&mut *tx, &self.id, mode).await?;
            }
            let event = self.log.stage_tether(
                "approval_decided",
                json!({"approvalId": d.approval_id, "status": status, "decidedBy": d.by}),
            );
            self.log
                .write_with(&mut tx, std::slice::from_ref(&event))
                .await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .await;
        let Some((at, pending)) = self.approvals.take(d.approval_id) else {
            let _ = d.reply.send(Err(Gone));
            return;
        };
        match stored {
            Ok(Some(event)) => {
                self.log.stored(vec![event]);
                self.write_answer(&pending.request_id, &d.decision);
                tracing::info!(approval_id = d.approval_id, ?status, by = %d.by, "approval decided");
                let _ = d.reply.send(Ok(()));
            }
            Ok(None) => {
                let _ = d.reply.send(Err(Gone)); // already ended by someone else
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store a decision");
                self.approvals.put_back(at, pending);
                let _ = d.reply.send(Err(Gone));
            }
        }
    }

    /// When the oldest pending request is denied automatically (`approvals.auto_deny_after`).
    pub(super) fn auto_deny_at(&self) -> Option<Instant> {
        let after = self.sessions.deps().approvals.auto_deny_after;
        self.approvals.auto_deny_at(after)
    }

    /// Denies the oldest pending request, nobody having answered in time.
    pub(super) async fn auto_deny(&mut self) {
        let Some(approval_id) = self.approvals.oldest() else {
            return;
        };
        let after = self
            .sessions
            .deps()
            .approvals
            .auto_deny_after
            .unwrap_or(Duration::ZERO);
        let (reply, _) = oneshot::channel();
        let message = format!(
            "Nobody answered within {}; denied automatically (approvals.auto_deny_after).",
            human_duration(after)
        );
        let decide = Decide {
            approval_id,
            decision: Decision::Deny { message },
            by: "tether".into(),
            keep_mode: None,
            reply,
        };
        self.answer(decide).await;
    }

    /// Tells a live process its new permission mode; `reply` gets what it answered (see
    /// `LiveProcess::mode_answered`), or at once that there is no process to tell.
    pub(super) fn send_permission_mode(
        &mut self,
        mode: String,
        reply: oneshot::Sender<ModeApplied>,
    ) {
        let request_id = self.next_request_id("mode");
        let agent = self.sessions.deps().agent.clone();
        let Some(live) = &mut self.live else {
            let _ = reply.send(ModeApplied::NoProcess);
            return;
        };
        let Some(line) = agent.permission_mode_line(&request_id, &mode) else {
            let _ = reply.send(ModeApplied::NotApplied(
                "this agent cannot change the mode of a running process".into(),
            ));
            return;
        };
        tracing::info!(%mode, "changing the permission mode of the live process");
        live.send_mode(request_id, mode, &line, reply);
    }

    fn write_answer(&self, request_id: &str, decision: &Decision) {
        let agent = &self.sessions.deps().agent;
        if let (Some(line), Some(live)) = (agent.permission_line(request_id, decision), &self.live)
        {
            // Not waited for: a process that no longer reads ends the turn by its death.
            drop(live.write_line(&line));
        }
    }
}

/// What the owner's phone shows: "Claude wants to use Write: hello.txt", or the question.
fn push_text(request: &PermissionRequest) -> String {
    if request.question {
        let questions: Vec<&str> = request.input["questions"]
            .as_array()
            .map(|qs| qs.iter().filter_map(|q| q["question"].as_str()).collect())
            .unwrap_or_default();
        if !questions.is_empty() {
            return questions.join(" ");
        }
        return "Claude has a question.".into();
    }
    let what = request.description.clone().or_else(|| {
        ["file_path", "command", "path", "url", "pattern"]
            .iter()
            .find_map(|k| request.input[*k].as_str().map(str::to_string))
    });
    match what {
        Some(what) if !what.trim().is_empty() => {
            format!("Claude wants to use {}: {what}", request.tool_name)
        }
        _ => format!("Claude wants to use {}", request.tool_name),
    }
}
