//! The admin HTTP API over real HTTP against the real binary (embedded store).

mod common;

use common::{admin_get, client, Server, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ACME: &str = r#"{"id":"acme","name":"Acme","tier":"free","upstream":"127.0.0.1:5432"}"#;

async fn post_org(server: &Server, body: &str) -> reqwest::Response {
    client()
        .post(server.url("/admin/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();

    let none = http.get(server.url("/admin/orgs")).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let wrong = http
        .post(server.url("/admin/orgs"))
        .bearer_auth("not-the-token")
        .body(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // Nothing was created by the refused request.
    let (_, list) = admin_get(&server, "/admin/orgs").await;
    assert_eq!(list, json!([]));

    // Health, readiness and metrics stay open for probes and scrapers.
    for path in ["/health", "/ready", "/metrics"] {
        let r = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn organizations_are_created_read_listed_and_updated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();

    let created = post_org(&server, ACME).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let org: Value = created.json().await.unwrap();
    assert_eq!(org["tier"], "free");
    assert_eq!(org["upstream"], "127.0.0.1:5432");

    let duplicate = post_org(&server, ACME).await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let body: Value = duplicate.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");

    let patched = http
        .patch(server.url("/admin/orgs/acme"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"tier":"pro","reason":"sales deal"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    let (_, shown) = admin_get(&server, "/admin/orgs/acme").await;
    assert_eq!(shown["tier"], "pro");
    assert_eq!(shown["name"], "Acme");

    let (_, list) = admin_get(&server, "/admin/orgs").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn bad_bodies_get_field_level_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let r = post_org(
        &server,
        r#"{"id":"acme","name":"Acme","tier":"gold","upstream":"nowhere"}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    let fields = body["error"]["fields"].as_array().expect("fields");
    let named: Vec<&str> = fields.iter().filter_map(|f| f["field"].as_str()).collect();
    assert_eq!(named, ["tier", "upstream"]);
    assert!(fields[0]["message"]
        .as_str()
        .unwrap()
        .contains("expected one of free, starter, pro, enterprise"));

    let missing = post_org(&server, r#"{"id":"acme"}"#).await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let malformed = post_org(&server, r#"{"id": "#).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_body");

    // Nothing was stored by any of them.
    let unknown = client()
        .get(server.url("/admin/orgs/acme"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_organizations_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    for path in ["/admin/orgs/nobody", "/admin/orgs/Not%20Valid"] {
        let r = http
            .get(server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    let r = http
        .patch(server.url("/admin/orgs/nobody"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"tier":"pro"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
