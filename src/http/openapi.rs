//! The API's contract: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` annotations and the route table, served at `GET /openapi.json` (no token).
//!
//! To document a route:
//! 1. put `#[utoipa::path(get, path = "/api/…", operation_id = "…", tag = "…", params(…),
//!    request_body = T, responses(…))]` on its handler, with `ToSchema` on the types it takes
//!    and returns (`IntoParams` on its query);
//! 2. list the handler in `paths(…)` of [`ApiDoc`] below.
//!
//! `every_route_is_documented` (tests/api/openapi.rs) names each (method, path) of the route
//! table that the document lacks, and each documented one that is not routed.
//!
//! What routes share comes from the route table and the edge, not from the annotations: the
//! bearer scheme and 401 on every route that is not `Access::Public`, 403 on `Access::Admin`
//! ones (and 503 `storage_unavailable` on the former), 400 `missing_host`, 414 `uri_too_long`,
//! 421 `host_not_allowed`, 431 `headers_too_large`, 429 `too_many_requests` and 503
//! (`shutting_down`, `request_timeout`) on all, 403 `origin_not_allowed` on WebSockets, 400
//! `invalid_path` where the path has parameters (read them with `ApiPath`), and
//! 400/408/413/415/422 wherever a JSON body is read (with `ApiJson`).
//!
//! An error response is written as a status and a description that lists its codes, each as
//! "`code`: when it is sent", separated by "; ". The document gives it the error body
//! (`{"error": {"code", "message"}}`) and one example per code.

use std::sync::LazyLock;

use axum::{
    http::{header::CONTENT_TYPE, Method},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;
use utoipa::{
    openapi::{
        example::Example,
        header::Header,
        path::{Operation, PathItem},
        response::Response,
        schema::{OneOf, Schema},
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        Content, Object, OpenApi as Document, Ref, RefOr, Type,
    },
    IntoParams, OpenApi,
};

use super::{
    approvals, chat, devices,
    error::ErrorBody,
    health, openai, pushes,
    routes::{Access, RouteInfo, Routes},
    sessions, terminals, tokens,
};

/// The document's own route.
pub const ROUTE: &str = "/openapi.json";

/// The name of the bearer scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

pub fn router() -> Routes {
    Routes::default().add(Method::GET, ROUTE, Access::Public, get(serve))
}

/// The API's routes. Each `paths(…)` entry is a handler with a `#[utoipa::path]`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tether",
        description = "Keeps AI coding CLI sessions (Claude Code) alive for a phone: chat with \
            a persistent session, follow its events, answer its approvals, get pushes.\n\n\
            Every route except `GET /health`, `GET /openapi.json` and `POST /api/pair` needs \
            `Authorization: Bearer <token>` (`tether token`, or a phone's token from pairing). \
            A user sees only what it owns (others' answer 404); admin routes answer 403 to \
            users. JSON is camelCase; times are RFC 3339 in UTC. Every error is \
            `{\"error\": {\"code\", \"message\"}}` with the status that fits.",
        license(name = "MIT"),
    ),
    paths(
        health::health,
        health::metrics,
        serve,
        tokens::pair,
        tokens::list,
        tokens::revoke,
        chat::chat,
        sessions::list,
        sessions::active,
        sessions::show,
        sessions::end,
        sessions::list_messages,
        sessions::stream_events,
        sessions::interrupt,
        sessions::keep_alive,
        approvals::list,
        approvals::show,
        approvals::decide,
        approvals::set_mode,
        devices::list,
        devices::register,
        devices::remove,
        pushes::list,
        pushes::show,
        terminals::start,
        terminals::list,
        terminals::show,
        terminals::end,
        terminals::input,
        terminals::resize,
        terminals::output,
        terminals::attach,
        openai::completions,
        openai::models,
    ),
    components(schemas(ErrorBody, openai::OpenAiErrorBody)),
    tags(
        (name = "health", description = "Whether the server is up, and its metrics"),
        (name = "pairing", description = "A phone trades a one-time code for a token; tokens and their revocation"),
        (name = "chat", description = "Send a message to a session (new or existing)"),
        (name = "sessions", description = "Sessions, their messages and live events"),
        (name = "approvals", description = "Tools and questions the agent asks a person about"),
        (name = "devices", description = "The phones that get pushes"),
        (name = "pushes", description = "The push ledger (admin)"),
        (name = "terminals", description = "The interactive CLI or a shell in a PTY, attached over WebSocket"),
        (name = "openai", description = "OpenAI-compatible chat completions on a session (errors in OpenAI's shape)"),
        (name = "contract", description = "This document"),
    ),
)]
pub struct ApiDoc;

/// A session's id in a path.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct SessionId(
    /// The session's id (a UUID).
    #[param(example = "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11")]
    String,
);

/// An approval's or a push's numeric id in a path.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct NumericId(#[param(example = 7)] i64);

/// The contract of this server, as JSON.
#[utoipa::path(
    get,
    path = ROUTE,
    operation_id = "openapi",
    tag = "contract",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)),
)]
async fn serve() -> impl IntoResponse {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        serde_json::to_string(&document()).expect("the OpenAPI document serializes")
    });
    ([(CONTENT_TYPE, "application/json")], JSON.as_str())
}

/// The whole document: the annotations, with what the route table and the edge add.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A token from `tether token` (`--admin` for an admin token) or from \
                     pairing (`POST /api/pair`)",
                ))
                .build(),
        ),
    );
    for route in super::route_table() {
        let Some(op) = doc
            .paths
            .paths
            .get_mut(route.path)
            .and_then(|item| operation_mut(item, &route.method))
        else {
            continue; // undocumented: the route-coverage test names it
        };
        apply_edge(op, &route);
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let v1 = path.starts_with(openai::PREFIX);
        for op in operations_mut(item) {
            error_bodies(op, v1);
        }
    }
    doc
}

/// The operation of `method` in a path item.
fn operation_mut<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    let slot = match *method {
        Method::GET => &mut item.get,
        Method::POST => &mut item.post,
        Method::PUT => &mut item.put,
        Method::DELETE => &mut item.delete,
        Method::PATCH => &mut item.patch,
        Method::HEAD => &mut item.head,
        Method::OPTIONS => &mut item.options,
        Method::TRACE => &mut item.trace,
        _ => return None,
    };
    slot.as_mut()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The error answers of the edge (the guard, the extractors), by what a route is.
const ANY_ROUTE: &[(&str, &str)] = &[
    (
        "400",
        "`missing_host`: an HTTP/1.1 request without a `Host` header, or with several; \
         `malformed_request`: the request line or a header is not valid HTTP/1.1",
    ),
    (
        "421",
        "`host_not_allowed`: `Host` names neither an IP address, `localhost`, this machine \
         nor one of `server.allowed_hosts`",
    ),
    (
        "414",
        "`uri_too_long`: the request target is longer than `server.max_uri_bytes`",
    ),
    (
        "431",
        "`headers_too_large`: more headers than `server.max_headers`, or more bytes of them \
         than `server.max_header_bytes`",
    ),
    (
        "429",
        "`too_many_requests`: more than `server.requests_per_minute` requests from this token \
         (from this address, without one) in a minute",
    ),
    (
        "503",
        "`shutting_down`: the server is stopping (try again in a moment); \
         `request_timeout`: the answer took longer than `server.request_timeout`",
    ),
];
const TOKEN_ROUTE: &[(&str, &str)] = &[
    (
        "401",
        "`unauthorized`: no `Authorization: Bearer` token, or one that is invalid, expired or \
         revoked",
    ),
    (
        "500",
        "`internal_error`: the server failed (its log says why)",
    ),
    (
        "503",
        "`storage_unavailable`: the database cannot be written (disk full, read-only, I/O \
         error); nothing was changed; try again after `Retry-After`",
    ),
];
const ADMIN_ROUTE: &[(&str, &str)] = &[(
    "403",
    "`forbidden`: a user's token; this route needs an admin token (`tether token --admin`)",
)];
const WEBSOCKET: &[(&str, &str)] = &[(
    "403",
    "`origin_not_allowed`: the upgrade's `Origin` names a host this server does not answer to",
)];
const PATH_PARAMETERS: &[(&str, &str)] = &[(
    "400",
    "`invalid_path`: a path parameter is not UTF-8 once percent-decoded",
)];
const JSON_BODY: &[(&str, &str)] = &[
    ("400", "`malformed_json`: the body is not JSON"),
    (
        "408",
        "`body_timeout`: the body did not arrive within `server.body_read_timeout` \
         (`server.body_read_timeout_anonymous` without a valid token)",
    ),
    (
        "413",
        "`body_too_large`: the body is larger than `server.max_body_bytes`",
    ),
    (
        "415",
        "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`",
    ),
    (
        "422",
        "`invalid_body`: a field is missing, unknown or of the wrong type",
    ),
];

/// Adds to one operation what its place in the route table says: who may call it (the
/// security requirement) and the edge's error answers.
fn apply_edge(op: &mut Operation, route: &RouteInfo) {
    let mut common: Vec<&(&str, &str)> = ANY_ROUTE.iter().collect();
    match route.access {
        // An annotation may make the token optional (`security((), ("bearer" = []))`): such
        // a route says more to a caller with one. Without, a public route takes none.
        Access::Public => {
            op.security.get_or_insert_with(Vec::new);
        }
        Access::User | Access::Admin => {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            common.extend(TOKEN_ROUTE);
        }
    }
    if route.access == Access::Admin {
        common.extend(ADMIN_ROUTE);
        let description = op.description.get_or_insert_with(String::new);
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str("Needs an admin token.");
    }
    if route.path.contains('{') {
        common.extend(PATH_PARAMETERS);
    }
    if reads_json(op) {
        common.extend(JSON_BODY);
    }
    if op.responses.responses.contains_key("101") {
        common.extend(WEBSOCKET);
    }
    // `/v1` answers what tether calls 422 as 400, as OpenAI does.
    let v1 = route.path.starts_with(openai::PREFIX);
    for (status, codes) in common {
        let status = if v1 && *status == "422" {
            "400"
        } else {
            *status
        };
        let response = op
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(Response::new("")));
        if let RefOr::T(response) = response {
            if response.description.is_empty() {
                response.description = codes.to_string();
            } else {
                response.description = format!("{}; {codes}", response.description);
            }
            let retry_after = match status {
                "429" => Some("Seconds to wait before trying again"),
                "503" if codes.contains("`storage_unavailable`") => {
                    Some("Seconds to wait before trying again (with `storage_unavailable`)")
                }
                _ => None,
            };
            if let Some(description) = retry_after {
                response.headers.insert(
                    "Retry-After".into(),
                    RefOr::T(
                        Header::builder()
                            .schema(Some(Object::with_type(Type::Integer)))
                            .description(Some(description))
                            .build(),
                    ),
                );
            }
        }
    }
}

/// Whether the operation's body is JSON read by `ApiJson` (its rejections are the edge's).
fn reads_json(op: &Operation) -> bool {
    matches!(
        &op.request_body,
        Some(RefOr::T(body))
            if body.content.contains_key("application/json")
                && body.required == Some(utoipa::openapi::Required::True)
    )
}

/// The codes an error response's description lists ("`code`: when; `other`: when").
fn error_codes(description: &str) -> Vec<(&str, &str)> {
    description
        .split("; ")
        .filter_map(|part| {
            let rest = part.trim().strip_prefix('`')?;
            let (code, when) = rest.split_once("`: ")?;
            let snake = !code.is_empty()
                && code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            snake.then_some((code, when.trim()))
        })
        .collect()
}

/// Gives each error response (4xx, 5xx) the error body and an example per code it lists
/// (OpenAI's shape on `/v1`). A response that has a body of its own (such as `/health`'s
/// 503) may also be the error body, when it lists codes.
fn error_bodies(op: &mut Operation, v1: bool) {
    let name = if v1 { "OpenAiErrorBody" } else { "ErrorBody" };
    let error_ref = || RefOr::Ref(Ref::from_schema_name(name));
    for (status, response) in op.responses.responses.iter_mut() {
        let (RefOr::T(response), true) = (response, status.starts_with(['4', '5'])) else {
            continue;
        };
        let examples: Vec<(String, RefOr<Example>)> = error_codes(&response.description)
            .into_iter()
            .map(|(code, when)| {
                let value = if v1 {
                    let status = status.parse().unwrap_or(400);
                    let status = axum::http::StatusCode::from_u16(status).unwrap_or_default();
                    json!({"error": {"message": when, "type": openai::error_type(status),
                        "param": openai::param(code), "code": code}})
                } else {
                    json!({"error": {"code": code, "message": when}})
                };
                let example = Example::builder().value(Some(value)).build();
                (code.to_string(), RefOr::T(example))
            })
            .collect();
        if examples.is_empty() {
            continue;
        }
        if response.content.is_empty() {
            let mut content = Content::new(Some(error_ref()));
            content.examples.extend(examples);
            response
                .content
                .insert("application/json".into(), RefOr::T(content));
            continue;
        }
        if let Some(RefOr::T(content)) = response.content.get_mut("application/json") {
            // Its own body, or the edge's error body.
            if let Some(own) = content.schema.take() {
                let either = OneOf::builder().item(own).item(error_ref()).build();
                content.schema = Some(RefOr::T(Schema::OneOf(either)));
            }
            content.examples.extend(examples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of a path item, with its method.
    fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
        [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
            (Method::HEAD, &item.head),
            (Method::OPTIONS, &item.options),
            (Method::TRACE, &item.trace),
        ]
        .into_iter()
        .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    }

    #[test]
    fn error_codes_are_read_from_descriptions() {
        assert_eq!(
            error_codes("`a_code`: when it happens; `b2`: another time"),
            vec![("a_code", "when it happens"), ("b2", "another time")]
        );
        assert!(error_codes("the database is down: `status` is `down`").is_empty());
    }

    /// Every error response of the document names its codes, and every operation has an id
    /// of its own, a tag, and a success answer.
    #[test]
    fn every_operation_is_complete() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
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
                            "{what} {status}: no body; list its codes as \"`code`: when\""
                        );
                    }
                }
            }
        }
    }
}
