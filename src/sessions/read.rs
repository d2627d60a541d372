//! Reading one stdout line of a session's process: an event held for the next
//! transaction, text that goes to live listeners at once, a permission request, or the
//! end of the turn; a cut or invalid line is told of in an event of tether's own.

use serde_json::json;

use super::{log::EventLog, process::LiveProcess};
use crate::{
    agent::{process::Line, Agent, Parsed, PermissionRequest, Signal, TurnResult},
    store::events::EventRow,
};

/// Characters of an invalid or cut line quoted in its event and log line.
const PREVIEW_CHARS: usize = 200;

/// What a stdout line means for the turn.
pub(super) enum Read {
    Nothing,
    /// The agent asks before using a tool (its line, numbered).
    Asks(PermissionRequest, EventRow),
    /// The turn ended (its `result` line, numbered, when it could be read).
    Done(TurnResult, Option<EventRow>),
}

/// Reads one stdout line: an event to hold, a permission request, or the turn's end (an
/// answer to a mode change goes to `live`).
/// The line that asks or ends is returned, numbered, to be stored with what it causes.
pub(super) fn read_line(
    line: Line,
    agent: &dyn Agent,
    max: usize,
    log: &mut EventLog,
    live: Option<&mut LiveProcess>,
) -> Read {
    if line.truncated {
        metrics::counter!("tether_agent_lines_truncated_total").increment(1);
        let preview = preview(&line.text);
        tracing::warn!(
            len = line.len,
            limit = max,
            "agent line over agent.max_line_bytes was cut"
        );
        let row = log.stage_tether(
            "line_truncated",
            json!({"length": line.len, "limit": max, "preview": preview}),
        );
        log.hold(row);
        // A cut `result` still ends the turn: its text is lost, so the turn fails.
        if preview.contains(r#""type":"result""#) {
            let result = TurnResult {
                is_error: true,
                subtype: "line_too_long".into(),
                text: format!(
                    "the agent's final answer was {} bytes, over agent.max_line_bytes ({max})",
                    line.len
                ),
                conversation_id: None,
                cumulative_cost_usd: None,
                duration_ms: None,
                usage: None,
            };
            return Read::Done(result, None);
        }
        return Read::Nothing;
    }
    match agent.parse_line(&line.text) {
        // A message still being written: its text goes to live listeners now; the
        // complete line that follows is what is stored.
        Parsed::Partial(delta) => {
            if let Some(delta) = delta {
                log.publish_delta(&delta);
            }
            Read::Nothing
        }
        Parsed::Invalid => {
            metrics::counter!("tether_agent_lines_invalid_total").increment(1);
            let preview = preview(&line.text);
            tracing::warn!(%preview, "agent printed a line that is not JSON");
            let row = log.stage_tether("invalid_line", json!({"preview": preview}));
            log.hold(row);
            Read::Nothing
        }
        Parsed::Event { kind, signal } => {
            let row = log.stage(&kind, line.text);
            match signal {
                Signal::TurnDone(result) => Read::Done(*result, Some(row)),
                Signal::Permission(request) => Read::Asks(*request, row),
                Signal::ControlAnswer { request_id, error } => {
                    log.hold(row);
                    if let Some(live) = live {
                        live.mode_answered(&request_id, error);
                    }
                    Read::Nothing
                }
                Signal::None => {
                    log.hold(row);
                    Read::Nothing
                }
            }
        }
    }
}

fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}
