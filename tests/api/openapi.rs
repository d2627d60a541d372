//! The OpenAPI document: served without a token, and the same routes as the router, each with
//! the access the route table gives it.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use tether::http::routes::Access;

use crate::helpers::{error_code, spawn_app, spawn_app_with};

/// The HTTP methods a path item of the document may hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_document() -> Value {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "no token needed");
    assert_eq!(res.headers()["content-type"], "application/json");
    res.json().await.unwrap()
}

/// Every (method, path) of the route table is in the document, and the document has none
/// that is not routed.
#[tokio::test]
async fn every_route_is_documented() {
    let doc = served_document().await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let routed: BTreeSet<(String, String)> = tether::http::route_table()
        .into_iter()
        .map(|r| (r.method.as_str().to_lowercase(), r.path.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let list = |set: Vec<&(String, String)>| {
        set.iter()
            .map(|(m, p)| format!("\n  {} {p}", m.to_uppercase()))
            .collect::<String>()
    };
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routed but missing from the OpenAPI document:{}\nput #[utoipa::path(...)] on each \
         one's handler and list the handler in `paths(...)` of `ApiDoc` (src/http/openapi.rs)",
        list(missing)
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "in the OpenAPI document but not routed:{}\nregister each with `Routes::add`, or take \
         its handler out of `ApiDoc`'s `paths(...)` (and check the method and path of its \
         #[utoipa::path])",
        list(unrouted)
    );
}

/// Who may call each route, as the document says it: the bearer scheme on every route that
/// needs a token, none required on public ones; 401 where a token is needed, 403 on admin
/// routes; and every error answer in the error shape (OpenAI's on `/v1`).
#[tokio::test]
async fn access_and_errors_follow_the_route_table() {
    let doc = served_document().await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for route in tether::http::route_table() {
        let method = route.method.as_str().to_lowercase();
        let op = &doc["paths"][route.path][&method];
        let what = format!("{} {}", route.method, route.path);
        let security = op["security"].as_array().expect("security stated");
        let anonymous_ok =
            security.is_empty() || security.iter().any(|s| s == &serde_json::json!({}));
        let responses = &op["responses"];
        match route.access {
            Access::Public => assert!(anonymous_ok, "{what} is public: {security:?}"),
            Access::User | Access::Admin => {
                assert_eq!(security, &[serde_json::json!({"bearer": []})], "{what}");
                assert!(responses.get("401").is_some(), "{what}: 401");
            }
        }
        assert_eq!(
            route.access == Access::Admin,
            responses.get("403").is_some_and(|r| r["description"]
                .as_str()
                .unwrap()
                .contains("needs an admin token")),
            "{what}: 403 for users exactly on admin routes"
        );
        for (status, response) in responses.as_object().unwrap() {
            if !status.starts_with(['4', '5']) {
                continue;
            }
            let json = &response["content"]["application/json"];
            let schema = json["schema"].to_string();
            // `/v1` answers in OpenAI's error shape.
            let shape = if route.path.starts_with("/v1/") {
                "#/components/schemas/OpenAiErrorBody"
            } else {
                "#/components/schemas/ErrorBody"
            };
            assert!(
                schema.contains(shape) || schema.contains("#/components/schemas/AlreadyDecided"),
                "{what} {status}: {schema}"
            );
            for example in json["examples"]
                .as_object()
                .into_iter()
                .flat_map(|e| e.values())
            {
                let code = example["value"]["error"]["code"].as_str().unwrap();
                assert!(!code.is_empty(), "{what} {status}");
            }
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
}

/// What axum answers in plain text by itself comes in the error shape the document gives:
/// a path parameter that is not UTF-8, and a body over the limit where it is read as bytes.
#[tokio::test]
async fn bad_paths_and_large_bodies_answer_in_the_error_shape() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    for path in [
        "/api/sessions/%FF",
        "/api/approvals/%C3%28",
        "/api/devices/%FF",
    ] {
        let res = match path {
            "/api/devices/%FF" => app.delete(path).await,
            _ => app.get(path).await,
        };
        assert_eq!(
            error_code(res).await,
            (StatusCode::BAD_REQUEST, "invalid_path".to_string()),
            "{path}"
        );
    }
    let res = app
        .client
        .post(app.url(&format!(
            "/api/sessions/{}/keep-alive",
            uuid::Uuid::new_v4()
        )))
        .bearer_auth(&app.token)
        .body(vec![b' '; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".to_string())
    );
}
