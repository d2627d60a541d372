//! The HTTP edge: one router per area, merged here, with the body limit, request
//! tracing and the JSON 404.

mod chat;
mod devices;
mod error;
mod extract;
mod health;
mod pushes;
mod sessions;
mod views;

use axum::{extract::DefaultBodyLimit, extract::MatchedPath, http::Request, Router};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ApiJson, ApiQuery};

use crate::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    Router::new()
        .merge(health::router())
        .merge(chat::router())
        .merge(sessions::router())
        .merge(devices::router())
        .merge(pushes::router())
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                // Spans named by the route pattern, not the path: low cardinality, no ids.
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                tracing::info_span!("http", method = %req.method(), route)
            }),
        )
        .with_state(state)
}
