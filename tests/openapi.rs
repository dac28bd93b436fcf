//! `GET /openapi.json` against the real binary: every admin and customer
//! route the app registers is documented (a new route without an
//! `#[utoipa::path]` fails here), with the right security scheme and the
//! JSON error body; and actix-web's own refusals answer in that format.

mod common;

use std::{collections::BTreeSet, path::Path};

use common::{client, Server, ADMIN_TOKEN};
use serde_json::Value;

/// `(METHOD, path)` of every route in `src/http`: the actix-web route
/// attributes (`#[get("/admin/orgs")]`) and `web::resource("…")`
/// registrations with their `web::post()`-style method.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source file");
        for line in text.lines().map(str::trim) {
            for method in ["get", "post", "put", "patch", "delete"] {
                if let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) {
                    let route = rest.split('"').next().unwrap_or_default();
                    routes.insert((method.to_uppercase(), route.to_owned()));
                }
            }
        }
        // `web::resource("/x")` … `.route(web::post().to(…))`
        let mut rest = text.as_str();
        while let Some(at) = rest.find("web::resource(\"") {
            rest = &rest[at + "web::resource(\"".len()..];
            let route = rest.split('"').next().unwrap_or_default().to_owned();
            let until = rest.find(';').unwrap_or(rest.len());
            for method in ["get", "post", "put", "patch", "delete"] {
                if rest[..until].contains(&format!("web::{method}()")) {
                    routes.insert((method.to_uppercase(), route.clone()));
                }
            }
        }
    }
    routes
}

async fn document(server: &Server) -> Value {
    let response = client()
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "served without authentication");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.expect("the document is JSON")
}

#[tokio::test]
async fn every_admin_and_customer_route_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let doc = document(&server).await;
    assert!(doc["openapi"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3."));

    let routes = registered_routes();
    // The scan itself must see the routes (a changed attribute syntax would
    // otherwise make this test pass on nothing).
    let api: Vec<_> = routes
        .iter()
        .filter(|(_, p)| p.starts_with("/admin") || p.starts_with("/v1"))
        .collect();
    assert!(api.len() >= 30, "found only {api:?}");

    let mut missing = Vec::new();
    for (method, path) in routes.iter().filter(|(_, p)| {
        p.starts_with("/admin") || p.starts_with("/v1") || p == "/health" || p == "/ready"
    }) {
        let operation = &doc["paths"][path.as_str()][method.to_lowercase()];
        if !operation.is_object() {
            missing.push(format!("{method} {path}"));
            continue;
        }
        let scheme = if path.starts_with("/admin") {
            Some("admin_token")
        } else if path.starts_with("/v1") {
            Some("org_token")
        } else {
            None
        };
        if let Some(scheme) = scheme {
            assert!(
                operation["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get(scheme).is_some())),
                "{method} {path} must require {scheme}: {operation}"
            );
            let unauthorized = &operation["responses"]["401"]["content"]["application/json"];
            assert_eq!(
                unauthorized["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path}: 401 with the JSON error body"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "routes not in /openapi.json: {missing:?}"
    );

    // Tools address operations by id: no two may share one.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId `{id}` twice"
            );
        }
    }

    let schemes = &doc["components"]["securitySchemes"];
    for name in ["admin_token", "org_token"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    let error = &doc["components"]["schemas"]["ErrorDetail"];
    assert!(error["properties"]["code"].is_object(), "{error}");
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/json", "status {status}");
    (status, response.json().await.expect("JSON error body"))
}

#[tokio::test]
async fn actix_refusals_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();

    // A query string the extractor cannot read: 400, not actix's text.
    let (status, body) = status_and_body(
        http.post(server.url("/admin/billing/run?period=2026-01&now=soon"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed_query");

    // No such route: a JSON 404.
    let (status, body) = status_and_body(
        http.get(server.url("/admin/nothing-here"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    // A documented path with a method it does not serve: 405 and Allow.
    let response = http
        .delete(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(allow.as_deref(), Some("GET, POST"));

    // Bodies past the payload limits (64 KiB; 1 MiB on the webhook route),
    // refused by actix-web before any handler: a JSON 413, and nothing stored.
    let big = format!(
        r#"{{"id":"big","name":"{}","tier":"free","upstream":"127.0.0.1:5432"}}"#,
        "x".repeat(100_000)
    );
    let (status, body) = status_and_body(
        http.post(server.url("/admin/orgs"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    let response = http
        .get(server.url("/admin/orgs/big"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let (status, body) = status_and_body(
        http.post(server.url("/webhooks/stripe"))
            .header("stripe-signature", "t=1,v1=00")
            .body(vec![b'a'; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

/// Found by schemathesis: `{"amount":"25.00","action":{}}` set a cap with
/// the default action, and `{"amount":null,"action":"stop"}` removed the cap
/// without a word about the action. Both are 422 now.
#[tokio::test]
async fn spend_cap_bodies_with_a_bad_action_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let created = http
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"id":"acme","name":"Acme","tier":"pro","upstream":"127.0.0.1:5432"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for body in [
        r#"{"amount":"25.00","action":{}}"#,
        r#"{"amount":null,"action":"stop"}"#,
        r#"{"amount":null,"colour":"red"}"#,
    ] {
        let (status, answer) = status_and_body(
            http.put(server.url("/admin/orgs/acme/spend-cap"))
                .bearer_auth(ADMIN_TOKEN)
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_fields", "{body}");
    }
    let (_, org) = common::admin_get(&server, "/admin/orgs/acme").await;
    assert_eq!(
        org["lifecycle"]["spend_cap"],
        Value::Null,
        "nothing was set"
    );
}

/// Found by schemathesis: the ticks' optional body refused `null`.
#[tokio::test]
async fn tick_bodies_may_be_null() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for path in ["/admin/lifecycle/tick", "/admin/scale-to-zero/tick"] {
        let response = client()
            .post(server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body("null")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
