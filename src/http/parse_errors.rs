//! Hyper's own answers to a request head it could not read (bare: no body) replaced by the
//! JSON error, as the connection writes them.

use axum::http::StatusCode;

use super::{
    codes::ErrorCode,
    error::{ErrorBody, ErrorDetail},
};

/// The status of `data` when it is hyper's own answer to a request head it could not read:
/// exactly a response head (nothing after it) of 400, 414 or 431 with `content-length: 0`,
/// written while no request is in flight. tether's own error answers always have a body.
pub(super) fn bare_parse_error(data: &[u8]) -> Option<StatusCode> {
    let head = std::str::from_utf8(data).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.strip_prefix("HTTP/1.")?.get(2..5)?;
    let status = match status {
        "400" => StatusCode::BAD_REQUEST,
        "414" => StatusCode::URI_TOO_LONG,
        "431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    lines
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"))
        .then_some(status)
}

/// The JSON answer (head and body, closing the connection) for hyper's bare `status`.
pub(super) fn json_parse_error(status: StatusCode) -> Vec<u8> {
    let (code, message) = match status {
        StatusCode::URI_TOO_LONG => (
            ErrorCode::UriTooLong,
            "the request target is longer than this server reads",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            ErrorCode::HeadersTooLarge,
            "the request's headers are larger, or more, than this server reads",
        ),
        _ => (
            ErrorCode::MalformedRequest,
            "the request is not valid HTTP/1.1 (its request line or a header)",
        ),
    };
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code,
            message: message.to_string(),
        },
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answers_to_unreadable_heads_are_replaced() {
        let bare = |status: &str| {
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 04:00:00 GMT\r\n\r\n")
        };
        assert_eq!(
            bare_parse_error(bare("400 Bad Request").as_bytes()),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            bare_parse_error(bare("414 URI Too Long").as_bytes()),
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            bare_parse_error(bare("431 Request Header Fields Too Large").as_bytes()),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(bare_parse_error(bare("404 Not Found").as_bytes()), None);
        let with_body = "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(bare_parse_error(with_body.as_bytes()), None);
        let answer = String::from_utf8(json_parse_error(StatusCode::BAD_REQUEST)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "malformed_request");
    }
}
