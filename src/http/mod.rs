//! The HTTP edge: one router per area, merged here, with the body limit, request tracing,
//! the JSON 404, the request timeout, the 503 while shutting down and the Host check
//! ([`hosts`]). [`server`] is the listener that serves it.

mod approvals;
mod chat;
mod devices;
mod error;
mod extract;
mod health;
pub mod hosts;
pub mod limits;
pub mod openai;
pub mod openapi;
mod pushes;
pub mod routes;
pub mod server;
mod sessions;
mod terminals;
mod tokens;
mod views;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header::CONNECTION, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Extension, Router,
};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, ErrorDetail};

use crate::AppState;

/// What the edge shares with every request (an `Extension`): the shutdown drain, the
/// per-owner stream counts, and the request time budgets.
#[derive(Clone, Debug)]
pub struct Edge {
    pub drain: server::Drain,
    pub streams: limits::StreamCounts,
    /// `server.request_timeout`.
    request_timeout: Duration,
    /// `server.wait_timeout`: the extra time `POST /api/chat {"wait": true}` may take.
    wait_timeout: Duration,
    /// `server.requests_per_minute`; None: no limit.
    rate: Option<Arc<limits::RequestRate>>,
}

/// Every area's routes.
fn all_routes() -> routes::Routes {
    health::router()
        .merge(openapi::router())
        .merge(chat::router())
        .merge(approvals::router())
        .merge(sessions::router())
        .merge(devices::router())
        .merge(pushes::router())
        .merge(tokens::router())
        .merge(openai::router())
        .merge(terminals::router())
}

/// The list of the server's routes, as its router is built from it.
pub fn route_table() -> Vec<routes::RouteInfo> {
    all_routes().into_parts().1
}

/// The whole API. `drain` tells it when shutdown has begun (see [`server::Drain`]).
pub fn router(state: AppState, drain: server::Drain) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let edge = Edge {
        drain,
        streams: limits::StreamCounts::default(),
        request_timeout: state.settings.server.request_timeout(),
        wait_timeout: state.settings.server.wait_timeout,
        rate: limits::RequestRate::new(state.settings.server.requests_per_minute).map(Arc::new),
    };
    let allowed = Arc::new(hosts::AllowedHosts::new(
        &state.settings.server.allowed_hosts,
    ));
    let (routes, _) = all_routes().into_parts();
    routes
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_rate,
        ))
        .layer(middleware::from_fn_with_state(edge.clone(), guard))
        .layer(middleware::from_fn(server::answer_body_timeouts))
        .layer(middleware::from_fn_with_state(allowed, hosts::check))
        .layer(middleware::from_fn_with_state(
            server::HeadLimits::new(&state.settings.server),
            server::check_head,
        ))
        // Outside the guard, so that its answers on `/v1` are in OpenAI's shape too.
        .layer(middleware::from_fn(openai::render_errors))
        .layer(Extension(edge))
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

/// 503 `shutting_down` (and close) once shutdown has begun; otherwise the request (its
/// rate checked by [`limits::limit_rate`], inside) within its
/// time budget, else 503 `request_timeout`. Event streams have no budget (they are meant to
/// last); `POST /api/chat`, a keep-alive (its recap) and `POST /v1/chat/completions` get
/// `server.wait_timeout` on top (a streamed completion's body is not bounded by it: it ends
/// with its turn, or at `server.wait_timeout`).
async fn guard(State(edge): State<Edge>, req: Request, next: Next) -> Response {
    if edge.drain.is_draining() {
        let mut res = ApiError::unavailable(
            "shutting_down",
            "tether is shutting down; try again in a moment",
        )
        .into_response();
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    let route = req.extensions().get::<MatchedPath>().cloned();
    let budget = match route.as_ref().map(MatchedPath::as_str) {
        Some(sessions::EVENTS_ROUTE) => return next.run(req).await,
        Some(chat::ROUTE | sessions::KEEP_ALIVE_ROUTE | openai::COMPLETIONS_ROUTE) => {
            edge.request_timeout + edge.wait_timeout
        }
        _ => edge.request_timeout,
    };
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            tracing::warn!(route, budget_secs = budget.as_secs(), "request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request took longer than {}s (server.request_timeout); try again",
                    budget.as_secs()
                ),
            )
            .into_response()
        }
    }
}
