//! The request head's limits tether checks itself, below hyper's own, so that a request
//! past them is answered with the JSON error (hyper's own answers have no body).

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{codes::ErrorCode, error::ApiError};

/// Hyper's own longest request target: past it, hyper answers 414 with no body.
const HYPER_MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// Hyper's default read buffer (8 KiB + 100 × 4 KiB); [`HeadLimits`] may ask for more.
const HYPER_MIN_BUFFER: usize = 8192 + 4096 * 100;

/// The request head's limits that tether checks itself (`server.max_uri_bytes`,
/// `server.max_header_bytes`, `server.max_headers`), below hyper's own, so that the answer
/// is the JSON error: hyper answers past its limits by itself, with no body.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    uri_bytes: usize,
    header_bytes: usize,
    headers: usize,
}

impl HeadLimits {
    pub fn new(settings: &crate::config::ServerSettings) -> Self {
        Self {
            uri_bytes: settings.max_uri_bytes.min(HYPER_MAX_URI_BYTES),
            header_bytes: settings.max_header_bytes,
            headers: settings.max_headers,
        }
    }

    /// Hyper's read buffer, which holds a whole request head: room for the largest head
    /// tether accepts and more (the request line and each header's `: ` and CRLF), so that
    /// a larger one reaches [`check_head`] rather than hyper's bodiless 431.
    pub(super) fn hyper_buffer(settings: &crate::config::ServerSettings) -> usize {
        let head = settings
            .max_uri_bytes
            .saturating_add(settings.max_header_bytes);
        head.saturating_mul(2).max(HYPER_MIN_BUFFER)
    }
}

/// 414 `uri_too_long` and 431 `headers_too_large` past [`HeadLimits`]. A layer of the router.
pub async fn check_head(State(limits): State<HeadLimits>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    let uri_bytes = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_bytes > limits.uri_bytes {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is {uri_bytes} bytes; at most {} (server.max_uri_bytes)",
                limits.uri_bytes
            ),
        )
        .into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > limits.headers || header_bytes > limits.header_bytes {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{} headers of {header_bytes} bytes; at most {} headers (server.max_headers) \
                 of {} bytes (server.max_header_bytes)",
                headers.len(),
                limits.headers,
                limits.header_bytes
            ),
        )
        .into_response();
    }
    next.run(req).await
}
