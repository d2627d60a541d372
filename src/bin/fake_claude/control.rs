//! Answers to the host's control requests: a success, or the real CLI's refusals.

use serde_json::{json, Value};

use crate::protocol::emit;

pub(crate) fn answer_control(request_id: &Value) {
    emit(&json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": {}},
    }));
}

/// A control request refused with the real CLI's `error` and `error_code`.
pub(crate) fn refuse_control_with(request_id: &Value, error: &str, code: &str) {
    emit(&json!({
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": request_id,
            "error": error,
            "error_code": code,
        },
    }));
}

pub(crate) fn refuse_control(request_id: &Value, subtype: &str) {
    emit(&json!({
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": request_id,
            "error": format!("Unsupported control request subtype: {subtype}"),
        },
    }));
}
