//! The HTTP edge: one router per area, merged here, with the body limit, request tracing,
//! the JSON 404, the request timeout, the 503 while shutting down and the Host check
//! ([`hosts`]). [`server`] is the listener that serves it.

mod approvals;
mod chat;
pub mod codes;
mod conn_cap;
mod devices;
mod edge;
mod error;
mod events;
mod extract;
mod head_limits;
mod health;
pub mod hosts;
mod keep_alive;
pub mod limits;
pub mod openai;
mod openai_errors;
pub mod openapi;
mod params;
mod parse_errors;
mod pushes;
mod refusals;
pub mod routes;
pub mod server;
mod sessions;
pub mod state;
mod terminal_frames;
mod terminals;
mod tokens;
mod views;

use std::sync::{Arc, LazyLock};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header::CONNECTION, HeaderValue},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Extension, Router,
};
use tower_http::trace::TraceLayer;

pub use codes::ErrorCode;
use edge::Edge;
pub use error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, ErrorDetail};
pub use state::AppState;

/// Every area's routes.
fn all_routes() -> routes::Routes {
    health::router()
        .merge(openapi::router())
        .merge(chat::router())
        .merge(approvals::router())
        .merge(sessions::router())
        .merge(events::router())
        .merge(keep_alive::router())
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

/// The OpenAPI document of the route table, built once.
fn contract() -> Arc<openapi::Contract> {
    static CONTRACT: LazyLock<Arc<openapi::Contract>> =
        LazyLock::new(|| Arc::new(openapi::Contract::new(&route_table())));
    CONTRACT.clone()
}

/// The whole API. `drain` tells it when shutdown has begun (see [`server::Drain`]).
pub fn router(state: AppState, drain: server::Drain) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let edge = Edge {
        drain,
        streams: limits::StreamCounts::default(),
        request_timeout: state.settings.server.request_timeout(),
        wait_timeout: state.settings.server.wait_timeout,
    };
    let rate = limits::RateLimit {
        state: state.clone(),
        rate: limits::RequestRate::new(state.settings.server.requests_per_minute).map(Arc::new),
    };
    let allowed = Arc::new(hosts::AllowedHosts::new(
        &state.settings.server.allowed_hosts,
    ));
    let (routes, _) = all_routes().into_parts();
    let routes = routes
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(rate, limits::limit_rate))
        .layer(middleware::from_fn_with_state(edge.clone(), guard))
        .layer(middleware::from_fn(server::answer_body_timeouts))
        .layer(middleware::from_fn_with_state(allowed, hosts::check))
        .layer(middleware::from_fn_with_state(
            head_limits::HeadLimits::new(&state.settings.server),
            head_limits::check_head,
        ))
        // Outside the guard, so that its answers on `/v1` are in OpenAI's shape too.
        .layer(middleware::from_fn(openai_errors::render_errors))
        .layer(Extension(edge))
        .layer(Extension(contract()));
    // Debug builds (every test) check each error answer against the document.
    #[cfg(debug_assertions)]
    let routes = routes.layer(middleware::from_fn_with_state(
        contract(),
        openapi::check_documented,
    ));
    routes
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
        let mut res = ApiError::new(
            ErrorCode::ShuttingDown,
            "tether is shutting down; try again in a moment",
        )
        .into_response();
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    let route = req.extensions().get::<MatchedPath>().cloned();
    let budget = match route.as_ref().map(MatchedPath::as_str) {
        Some(events::EVENTS_ROUTE) => return next.run(req).await,
        Some(chat::ROUTE | keep_alive::KEEP_ALIVE_ROUTE | openai::COMPLETIONS_ROUTE) => {
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
                ErrorCode::RequestTimeout,
                format!(
                    "the request took longer than {}s (server.request_timeout); try again",
                    budget.as_secs()
                ),
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use utoipa::openapi::RefOr;

    use super::*;

    /// Every code but the unlisted is documented on at least one route, and no unlisted one
    /// is.
    #[test]
    fn every_code_is_documented_on_a_route() {
        let documented = contract().documented_codes();
        for &code in ErrorCode::ALL {
            assert_eq!(
                documented.contains(&code),
                !ErrorCode::UNLISTED.contains(&code),
                "{code}: documented on a route exactly when it is not ErrorCode::UNLISTED"
            );
        }
    }

    /// Every error response of the document names its codes, and every operation has an id
    /// of its own, a tag, and a success answer.
    #[test]
    fn every_operation_is_complete() {
        let doc = openapi::document(&route_table());
        let mut ids = HashSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in openapi::operations(item) {
                let what = format!("{method} {path}");
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(ids.insert(id.clone()), "{what}: operationId {id:?} twice");
                assert!(
                    op.tags.as_ref().is_some_and(|t| !t.is_empty()),
                    "{what}: no tag"
                );
                let responses = &op.responses.responses;
                // A WebSocket's success is 101 Switching Protocols.
                assert!(
                    responses.keys().any(|s| s.starts_with('2') || s == "101"),
                    "{what}: no success response"
                );
                for (status, response) in responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if status.starts_with(['4', '5']) {
                        assert!(
                            response.content.contains_key("application/json"),
                            "{what} {status}: no body; list its codes in the route's errors"
                        );
                    }
                }
            }
        }
    }
}
