//! A terminal viewer's WebSocket protocol, typed: the text frames tether sends (`attached`,
//! `reset`, `ended`, `error`; output goes as binary frames), the control frames a viewer
//! sends (a resize or a signal; its input goes as binary frames), and the terminal size
//! both this and the REST routes take.

use axum::extract::ws::Message;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{codes::ErrorCode, error::ApiError, error::ErrorDetail};

/// A text frame to a viewer, as `{"type": …, …}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum Out<'a> {
    /// First: where the bytes that follow start, and whether older ones were dropped.
    Attached { offset: u64, reset: bool },
    /// The viewer fell behind by more than the buffer: the bytes start again here.
    Reset { offset: u64 },
    /// Last, before the close: how the terminal ended, and the offset after its output.
    Ended {
        state: &'a str,
        #[serde(rename = "exitCode")]
        exit_code: Option<i64>,
        reason: &'a str,
        offset: u64,
    },
    /// A control frame was refused (the socket stays open).
    Error { error: ErrorDetail },
}

impl Out<'_> {
    pub(super) fn message(&self) -> Message {
        let text = serde_json::to_string(self).expect("a frame serializes");
        Message::Text(text.into())
    }
}

/// A control frame from a viewer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Control {
    pub(super) resize: Option<Size>,
    pub(super) signal: Option<Signal>,
}

/// What a control frame's `signal` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Signal {
    /// Ctrl-C to the program.
    Interrupt,
    /// End the terminal.
    Terminate,
}

impl Control {
    /// A text frame from a viewer, read; 422 `invalid_control` when it is not one.
    pub(super) fn parse(text: &str) -> Result<Self, ApiError> {
        serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidControl,
                format!(
                    "a control frame is {{\"resize\":{{\"cols\",\"rows\"}}}} or \
                     {{\"signal\":\"interrupt\"|\"terminate\"}}: {e}"
                ),
            )
        })
    }
}

/// A terminal's size in cells.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Size {
    #[schema(minimum = 1, maximum = 1000, example = 120)]
    #[serde(deserialize_with = "whole_u16")]
    pub(super) cols: u16,
    #[schema(minimum = 1, maximum = 1000, example = 40)]
    #[serde(deserialize_with = "whole_u16")]
    pub(super) rows: u16,
}

impl Size {
    pub(super) fn check(self) -> Result<Self, ApiError> {
        let max = crate::terminals::MAX_SIDE;
        if (1..=max).contains(&self.cols) && (1..=max).contains(&self.rows) {
            Ok(self)
        } else {
            Err(ApiError::new(
                ErrorCode::InvalidSize,
                format!("cols and rows must be 1 to {max}"),
            ))
        }
    }
}

/// A side of a terminal: a whole number, which JSON may also write as `80.0`.
pub(super) fn whole_u16<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = f64::deserialize(d)?;
    if n.fract() == 0.0 && (0.0..=f64::from(u16::MAX)).contains(&n) {
        Ok(n as u16)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is not a whole number from 0 to {}",
            u16::MAX
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_out_are_typed_json() {
        let text = |out: Out| match out.message() {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            text(Out::Attached {
                offset: 3,
                reset: true
            }),
            serde_json::json!({"type": "attached", "offset": 3, "reset": true})
        );
        assert_eq!(
            text(Out::Ended {
                state: "exited",
                exit_code: Some(0),
                reason: "done",
                offset: 9
            }),
            serde_json::json!({"type": "ended", "state": "exited", "exitCode": 0, "reason": "done", "offset": 9})
        );
        let error = ErrorDetail {
            code: ErrorCode::InvalidControl,
            message: "no".into(),
        };
        assert_eq!(
            text(Out::Error { error }),
            serde_json::json!({"type": "error", "error": {"code": "invalid_control", "message": "no"}})
        );
    }

    #[test]
    fn control_frames_are_read_or_refused() {
        let c = Control::parse(r#"{"resize": {"cols": 80.0, "rows": 24}}"#).unwrap();
        let size = c.resize.unwrap();
        assert_eq!((size.cols, size.rows), (80, 24));
        let c = Control::parse(r#"{"signal": "interrupt"}"#).unwrap();
        assert_eq!(c.signal, Some(Signal::Interrupt));
        for bad in [r#"{"signal": "hup"}"#, r#"{"other": 1}"#, "not json"] {
            let e = Control::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidControl, "{bad}");
        }
    }
}
