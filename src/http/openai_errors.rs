//! OpenAI's error shape, in which `/v1` answers every error (the edge's own ones too): the
//! same code as the rest of the API, with OpenAI's `type` and `param`, and 400 where tether
//! says 422.

use axum::{
    body::Body,
    extract::Request,
    http::{
        header::{CONTENT_LENGTH, CONTENT_TYPE},
        HeaderValue, StatusCode,
    },
    middleware::Next,
    response::Response,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{codes::ErrorCode, error::Said};

/// The prefix of every route answered in OpenAI's shapes.
pub(super) const PREFIX: &str = "/v1/";

/// OpenAI's error shape, as `/v1` answers every error.
#[derive(Serialize, ToSchema)]
pub(super) struct OpenAiErrorBody {
    error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct OpenAiErrorDetail {
    message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, …
    r#type: String,
    /// The request field it is about, if any.
    param: Option<String>,
    /// tether's code for it (as on the rest of the API).
    code: String,
}

/// `{"error": {"message", "type", "param", "code"}}`, OpenAI's error shape.
/// `code` None: not one of tether's errors, OpenAI's generic `invalid_request`.
pub(super) fn error_body(status: StatusCode, code: Option<ErrorCode>, message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": error_type(status),
        "param": code.and_then(param),
        "code": code.map_or("invalid_request", ErrorCode::as_str),
    }})
}

/// OpenAI's error `type`, from the status.
pub(super) fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::CONFLICT => "conflict_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    }
}

/// The request field an error is about, when it is about one.
pub(super) fn param(code: ErrorCode) -> Option<&'static str> {
    use ErrorCode as C;
    Some(match code {
        C::ModelNotFound => "model",
        C::InvalidMessages | C::UnsupportedContent | C::EmptyMessage | C::MessageTooLarge => {
            "messages"
        }
        C::InvalidSessionId | C::SessionNotFound | C::SessionEnded | C::SessionExpired => {
            "conversation_id"
        }
        C::ProjectPathRequired
        | C::InvalidProjectPath
        | C::ProjectNotFound
        | C::ProjectNotADirectory => "project_path",
        _ => return None,
    })
}

/// Renders the errors of `/v1` routes (the edge's own ones too: 401, 429, 404, timeouts) in
/// OpenAI's shape, with 400 where tether says 422. Other routes pass untouched.
pub(super) async fn render_errors(req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(PREFIX) {
        return next.run(req).await;
    }
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // Not one of tether's errors (e.g. a WebSocket route's upgrade refused by axum): OpenAI's
    // generic code and the status's reason.
    let (code, message) = match res.extensions().get::<Said>() {
        Some(said) => (Some(said.code), said.message.clone()),
        None => (
            None,
            status
                .canonical_reason()
                .unwrap_or("the request failed")
                .to_string(),
        ),
    };
    let status = match status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    let (mut parts, _) = res.into_parts();
    parts.status = status;
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = error_body(status, code, &message).to_string();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_openai_types_and_name_their_field() {
        let e = error_body(StatusCode::NOT_FOUND, Some(ErrorCode::ModelNotFound), "no");
        assert_eq!(
            e,
            json!({"error": {"message": "no", "type": "not_found_error", "param": "model", "code": "model_not_found"}})
        );
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "invalid_request_error");
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(error_type(StatusCode::BAD_GATEWAY), "server_error");
        assert_eq!(param(ErrorCode::SessionNotFound), Some("conversation_id"));
        assert_eq!(param(ErrorCode::TooManyRequests), None);
    }
}
