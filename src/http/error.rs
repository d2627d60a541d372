//! The one error type of the HTTP edge: a status, a stable code and a message, sent as
//! `{"error": {"code", "message"}}` (the `/v1` routes render the same error in OpenAI's
//! shape, see `openai`). Internal details are logged, never sent.

use std::time::Duration;

use axum::{
    extract::{
        rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Path, Request,
    },
    http::{header::RETRY_AFTER, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{de::DeserializeOwned, Serialize};
use utoipa::ToSchema;

use super::codes::ErrorCode;
use crate::store::{self, StorageFault};

/// `Retry-After` of `storage_unavailable`: a full disk or a read-only mount waits for a
/// person, so clients are told not to come back sooner than this.
pub const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "session_not_found", "message": "no session 0b6c…"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` to act on, and a `message` for a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case; each route's responses list the codes it may send.
    #[schema(value_type = String)]
    pub code: ErrorCode,
    pub message: String,
}

/// An error answer: its code (which fixes its status), a message for a person, and when
/// to try again.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up, at least 1) with a 429 or a 503.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// A limit was reached (a 429 code): with `Retry-After`.
    pub fn too_many(code: ErrorCode, message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(code, message).retry_after(retry_after)
    }
    /// Says when to try again (`Retry-After`).
    pub fn retry_after(self, after: Duration) -> Self {
        Self {
            retry_after: Some(after),
            ..self
        }
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    /// The database cannot be written (disk full, read-only, I/O error): 503
    /// `storage_unavailable` with `Retry-After`; nothing was changed.
    pub fn storage(fault: StorageFault, detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, ?fault, "the database cannot be written");
        Self::new(
            ErrorCode::StorageUnavailable,
            format!(
                "tether cannot store anything now: {}; nothing was changed, try again once \
                 the server's owner has freed it",
                fault.describe()
            ),
        )
        .retry_after(STORAGE_RETRY_AFTER)
    }
    pub(super) fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::InternalError,
            "an internal error occurred; see the server log",
        )
    }
}

/// What an error answer said, kept with the response so that a route family with another
/// error shape (the OpenAI-compatible `/v1`) can render the same error its own way.
#[derive(Debug, Clone)]
pub struct Said {
    pub code: ErrorCode,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let said = Said {
            code: self.code,
            message: self.message.clone(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        response.extensions_mut().insert(said);
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, whole_seconds(after).into());
        }
        response
    }
}

/// A `Retry-After` in whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match store::storage_fault(&e) {
            Some(fault) => Self::storage(fault, &e),
            None => Self::internal(&e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let fault = e
            .chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .and_then(store::storage_fault);
        match fault {
            Some(fault) => Self::storage(fault, &e),
            None => Self::internal(&e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::InvalidBody,
            _ => ErrorCode::MalformedJson,
        };
        Self::new(code, rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
            _ => ErrorCode::UnreadableBody,
        };
        Self::new(code, rejection.body_text())
    }
}

/// `axum::Json`, with its rejections in the shape of [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Query`, with its rejections (422 `invalid_query`) as [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_error(rejection)),
        }
    }
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, rejection.body_text())
}

/// `axum::extract::Path`, with its rejections (400 `invalid_path`: a parameter that is not
/// UTF-8 once percent-decoded) as [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_error(rejection)),
        }
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    if rejection.status().is_server_error() {
        // The route and its handler disagree: a bug, not the caller's doing.
        return ApiError::internal(&rejection.body_text());
    }
    ApiError::new(ErrorCode::InvalidPath, rejection.body_text())
}

/// Answers routes that do not exist.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, "no such route")
}

/// Answers a method a route does not take (axum adds the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; the Allow header lists those it takes",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |ms| whole_seconds(Duration::from_millis(ms));
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(59_001), 60);
    }
}
