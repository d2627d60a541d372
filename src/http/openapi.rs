//! The API's contract: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` annotations and the route table, served at `GET /openapi.json` (no token).
//!
//! To document a route:
//! 1. put `#[utoipa::path(get, path = "/api/…", operation_id = "…", tag = "…", params(…),
//!    request_body = T, responses(…))]` on its handler, with `ToSchema` on the types it takes
//!    and returns (`IntoParams` on its query); its responses are its successes (and an error
//!    with a body of its own);
//! 2. list the handler in `paths(…)` of [`ApiDoc`] below;
//! 3. give `Routes::add` the codes the handler may answer: the document lists them, each
//!    at its status with its meaning and an example ([`super::codes`]).
//!
//! `every_route_is_documented` (tests/api/openapi.rs) names each (method, path) of the route
//! table that the document lacks, and each documented one that is not routed. In debug
//! builds, [`check_documented`] fails any answer whose code the document does not give its
//! route.
//!
//! What routes share comes from the route table and the edge, not from the annotations: the
//! bearer scheme and 401 on every route that is not `Access::Public`, 403 on `Access::Admin`
//! ones (and 503 `storage_unavailable` on the former), the listener's, the Host check's and
//! the guard's codes on all, 403 `origin_not_allowed` on WebSockets, 400 `invalid_path`
//! where the path has parameters (read them with `ApiPath`), and 400/408/413/415/422
//! wherever a JSON body is read (with `ApiJson`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header::CONTENT_TYPE, Method, StatusCode},
    middleware::Next,
    response::IntoResponse,
    routing::get,
    Extension,
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
    OpenApi,
};

use super::{
    approvals, chat,
    codes::ErrorCode,
    devices,
    error::{ErrorBody, Said},
    events, health, keep_alive, openai, openai_errors, pushes,
    routes::{Access, RouteInfo, Routes},
    sessions, terminals, tokens,
};

/// The document's own route.
pub const ROUTE: &str = "/openapi.json";

/// The name of the bearer scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

pub fn router() -> Routes {
    Routes::default().add(Method::GET, ROUTE, Access::Public, get(serve), SERVE_ERRORS)
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
        events::stream_events,
        sessions::interrupt,
        keep_alive::keep_alive,
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
    components(schemas(ErrorBody, openai_errors::OpenAiErrorBody)),
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

/// [`serve`] answers only the edge's errors (see `openapi`).
const SERVE_ERRORS: &[ErrorCode] = &[];

/// The contract of this server, as JSON.
#[utoipa::path(
    get,
    path = ROUTE,
    operation_id = "openapi",
    tag = "contract",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)),
)]
async fn serve(Extension(contract): Extension<Arc<Contract>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], contract.json.clone())
}

/// The whole document: the annotations, with what the route table and the edge add.
pub fn document(table: &[RouteInfo]) -> Document {
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
    for route in table {
        let Some(op) = doc
            .paths
            .paths
            .get_mut(route.path)
            .and_then(|item| operation_mut(item, &route.method))
        else {
            continue; // undocumented: the route-coverage test names it
        };
        apply_edge(op, route);
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

/// The error answers of the edge (the listener, the guard, the extractors), by what a
/// route is.
const ANY_ROUTE: &[ErrorCode] = &[
    ErrorCode::MissingHost,
    ErrorCode::MalformedRequest,
    ErrorCode::HostNotAllowed,
    ErrorCode::UriTooLong,
    ErrorCode::HeadersTooLarge,
    ErrorCode::TooManyRequests,
    ErrorCode::ShuttingDown,
    ErrorCode::RequestTimeout,
];
const TOKEN_ROUTE: &[ErrorCode] = &[
    ErrorCode::Unauthorized,
    ErrorCode::InternalError,
    ErrorCode::StorageUnavailable,
];
const ADMIN_ROUTE: &[ErrorCode] = &[ErrorCode::Forbidden];
const WEBSOCKET: &[ErrorCode] = &[ErrorCode::OriginNotAllowed];
const PATH_PARAMETERS: &[ErrorCode] = &[ErrorCode::InvalidPath];
const JSON_BODY: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::BodyTimeout,
    ErrorCode::BodyTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InvalidBody,
];

/// Adds to one operation what its place in the route table says: who may call it (the
/// security requirement), and its error answers: the edge's and the route's own codes.
fn apply_edge(op: &mut Operation, route: &RouteInfo) {
    let mut codes: Vec<ErrorCode> = ANY_ROUTE.to_vec();
    match route.access {
        // An annotation may make the token optional (`security((), ("bearer" = []))`): such
        // a route says more to a caller with one. Without, a public route takes none.
        Access::Public => {
            op.security.get_or_insert_with(Vec::new);
        }
        Access::User | Access::Admin => {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            codes.extend(TOKEN_ROUTE);
        }
    }
    let admin = route.access == Access::Admin;
    if admin {
        codes.extend(ADMIN_ROUTE);
        let description = op.description.get_or_insert_with(String::new);
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str("Needs an admin token.");
    }
    if route.path.contains('{') {
        codes.extend(PATH_PARAMETERS);
    }
    if reads_json(op) {
        codes.extend(JSON_BODY);
    }
    if op.responses.responses.contains_key("101") {
        codes.extend(WEBSOCKET);
    }
    codes.extend(route.errors);
    let mut seen = HashSet::new();
    codes.retain(|code| seen.insert(*code));
    let v1 = route.path.starts_with(openai_errors::PREFIX);
    for code in codes {
        let mut when = code.meaning().to_string();
        if admin && code == ErrorCode::Forbidden {
            when.push_str(" (this route needs an admin token: `tether token --admin`)");
        }
        document_code(op, code, &when, v1);
    }
}

/// Adds `code` to the error response of its status: the code and when it is sent in the
/// description, an example in the error body (OpenAI's shape on `/v1`, where 422 is 400). A
/// response with a body of its own (such as `/health`'s 503) may also be the error body.
fn document_code(op: &mut Operation, code: ErrorCode, when: &str, v1: bool) {
    let status = match code.status() {
        StatusCode::UNPROCESSABLE_ENTITY if v1 => StatusCode::BAD_REQUEST,
        s => s,
    };
    let RefOr::T(response) = op
        .responses
        .responses
        .entry(status.as_str().to_string())
        .or_insert_with(|| RefOr::T(Response::new("")))
    else {
        return;
    };
    let line = format!("`{code}`: {when}");
    if response.description.is_empty() {
        response.description = line;
    } else {
        response.description = format!("{}; {line}", response.description);
    }
    let retry_after = match code {
        _ if status == StatusCode::TOO_MANY_REQUESTS => Some("Seconds to wait before trying again"),
        ErrorCode::StorageUnavailable => {
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
    let name = if v1 { "OpenAiErrorBody" } else { "ErrorBody" };
    let error_ref = RefOr::Ref(Ref::from_schema_name(name));
    let content = match response.content.get_mut("application/json") {
        Some(RefOr::T(content)) => {
            // Its own body, or the edge's error body.
            let own = content.schema.take();
            content.schema = Some(match own {
                Some(RefOr::T(Schema::OneOf(either))) => RefOr::T(Schema::OneOf(either)),
                Some(own) if own != error_ref => RefOr::T(Schema::OneOf(
                    OneOf::builder().item(own).item(error_ref).build(),
                )),
                _ => error_ref,
            });
            content
        }
        Some(RefOr::Ref(_)) => return,
        None => {
            response.content.insert(
                "application/json".into(),
                RefOr::T(Content::new(Some(error_ref))),
            );
            match response.content.get_mut("application/json") {
                Some(RefOr::T(content)) => content,
                _ => return,
            }
        }
    };
    let value = if v1 {
        json!({"error": {"message": when, "type": openai_errors::error_type(status),
            "param": openai_errors::param(code), "code": code}})
    } else {
        json!({"error": {"code": code, "message": when}})
    };
    let example = Example::builder().value(Some(value)).build();
    content
        .examples
        .insert(code.as_str().to_string(), RefOr::T(example));
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

/// The document as served, and the codes it gives each operation by (method, path) (those
/// of its error responses' examples), for [`check_documented`].
pub struct Contract {
    json: String,
    codes: HashMap<(Method, String), HashSet<ErrorCode>>,
}

impl Contract {
    pub fn new(table: &[RouteInfo]) -> Self {
        let doc = document(table);
        let by_wire: HashMap<&str, ErrorCode> =
            ErrorCode::ALL.iter().map(|c| (c.as_str(), *c)).collect();
        let mut codes = HashMap::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                let set: HashSet<ErrorCode> = op
                    .responses
                    .responses
                    .values()
                    .filter_map(|r| match r {
                        RefOr::T(r) => match r.content.get("application/json") {
                            Some(RefOr::T(content)) => Some(content),
                            _ => None,
                        },
                        RefOr::Ref(_) => None,
                    })
                    .flat_map(|content| content.examples.keys())
                    .filter_map(|wire| by_wire.get(wire.as_str()).copied())
                    .collect();
                codes.insert((method, path.clone()), set);
            }
        }
        let json = serde_json::to_string(&doc).expect("the OpenAPI document serializes");
        Self { json, codes }
    }

    /// Every code the document gives at least one route.
    pub fn documented_codes(&self) -> HashSet<ErrorCode> {
        self.codes.values().flatten().copied().collect()
    }

    /// Whether the document lists `code` among the errors of `method` on `path` (a route
    /// pattern).
    pub fn documents(&self, method: &Method, path: &str, code: ErrorCode) -> bool {
        self.codes
            .get(&(method.clone(), path.to_string()))
            .is_some_and(|codes| codes.contains(&code))
    }
}

/// A layer of the router in debug builds (and so in every test): an error answer whose code
/// the document does not give its route fails loudly, so that what a handler may answer
/// and what `/openapi.json` says cannot drift apart.
pub async fn check_documented(
    State(contract): State<Arc<Contract>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let res = next.run(req).await;
    if let (Some(route), Some(said)) = (route, res.extensions().get::<Said>()) {
        assert!(
            ErrorCode::UNLISTED.contains(&said.code)
                || contract.documents(&method, route.as_str(), said.code),
            "{method} {} answered `{}`, which /openapi.json does not list for it: add it to \
             the route's errors (`Routes::add`)",
            route.as_str(),
            said.code,
        );
    }
    res
}

/// Every operation of a path item, with its method.
pub(super) fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
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
