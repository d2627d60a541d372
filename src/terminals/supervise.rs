//! A live terminal's task: it waits for the program to end by itself or for a request to end
//! it, writes the terminal's activity meanwhile, and stores how it ended (with the owner's push
//! for an expiry), then lets the conversation it held go.

use std::{sync::Arc, time::Duration};

use super::{
    live::{Ended, Live, Parts, Why},
    pty::{self, ExitStatus},
    Terminals,
};
use crate::{
    push::{self, PushEvent, PushKind},
    store::{self, terminals},
};

/// How often a live terminal's activity (last input and output, its end) is written to
/// SQLite; the lifecycle step also writes it before it reads deadlines.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(5);
/// How long the output may go on after the program was reaped (what it wrote last).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Tries to store a terminal's end before giving up (the next start marks it `killed`).
const END_TRIES: u32 = 4;

impl Terminals {
    /// The terminal's task: waits for its program to end by itself or for a request to end
    /// it (then SIGHUP, SIGTERM, SIGKILL), writes its activity meanwhile, and records the end.
    pub(super) async fn supervise(self, live: Arc<Live>, pid: u32, mut parts: Parts) {
        let grace = self.deps().settings.stop_grace;
        let mut flush = tokio::time::interval(ACTIVITY_FLUSH);
        flush.tick().await;
        let (status, why) = loop {
            tokio::select! {
                status = &mut parts.exit => break (status.ok(), None),
                why = parts.end_requests.recv() => {
                    let why = why.unwrap_or(Why::Shutdown);
                    tracing::info!(terminal_id = %live.id, pid, reason = %why.reason(), "ending a terminal");
                    let status = pty::stop(pid, grace, &mut parts.exit).await;
                    break (status, Some(why));
                }
                _ = flush.tick() => live.flush_activity(&self.deps().store).await,
            }
        };
        if why.is_none() {
            // It ended by itself: what it started goes with it.
            pty::end_session(pid).await;
        }
        let _ = tokio::time::timeout(OUTPUT_DRAIN, parts.output_done).await;
        let ended = match (&why, &status) {
            (Some(why), _) => Ended {
                state: terminals::STATE_KILLED,
                exit_code: None,
                reason: why.reason(),
            },
            (
                None,
                Some(ExitStatus {
                    code: Some(code), ..
                }),
            ) => Ended {
                state: terminals::STATE_EXITED,
                exit_code: Some(*code),
                reason: format!("exited with code {code}"),
            },
            (None, Some(ExitStatus { signal, .. })) => Ended {
                state: terminals::STATE_EXITED,
                exit_code: None,
                reason: format!(
                    "ended by a signal: {}",
                    signal.as_deref().unwrap_or("unknown")
                ),
            },
            (None, None) => Ended {
                state: terminals::STATE_EXITED,
                exit_code: None,
                reason: "its exit could not be read".into(),
            },
        };
        self.record_end(&live, &ended, why.as_ref()).await;
        live.close_input();
        self.forget(&live.id);
        if let Some(session_id) = &live.session_id {
            self.deps().sessions.release(session_id, &live.id);
        }
        tracing::info!(terminal_id = %live.id, state = ended.state, exit_code = ended.exit_code, reason = %ended.reason, "terminal ended");
        live.set_ended(ended);
    }

    /// Stores the end with the tail of the output (and, for an expiry, the owner's push),
    /// trying again a few times; a terminal whose end could not be stored is `killed` at
    /// the next start.
    async fn record_end(&self, live: &Live, ended: &Ended, why: Option<&Why>) {
        let deps = self.deps();
        let (tail_offset, tail) = live.output_tail(deps.settings.saved_tail_bytes.0 as usize);
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=END_TRIES {
            let stored: sqlx::Result<()> = async {
                let mut tx = deps.store.begin_write().await?;
                let end = terminals::End {
                    state: ended.state,
                    exit_code: ended.exit_code,
                    reason: &ended.reason,
                    now: store::now_ms(),
                    tail: &tail,
                    tail_offset,
                    activity: live.activity(),
                };
                terminals::end(&mut *tx, &live.id, &end).await?;
                if matches!(why, Some(Why::Expired)) {
                    let text = "This terminal reached its end and was stopped. Its last screen \
                                stays readable.";
                    let event =
                        PushEvent::new(PushKind::TerminalExpired, &live.audience, None, text);
                    push::enqueue(&mut tx, &event).await?;
                }
                tx.commit().await
            }
            .await;
            match stored {
                Ok(()) => {
                    deps.push_wake.notify_one();
                    return;
                }
                Err(e) if attempt < END_TRIES => {
                    tracing::warn!(terminal_id = %live.id, error = %e, "could not store a terminal's end; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(terminal_id = %live.id, error = %e, "could not store a terminal's end");
                }
            }
        }
    }
}
