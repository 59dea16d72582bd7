//! Conventions that hold on every endpoint: problem bodies, request ids, media types, body
//! and query strictness, size limits, deadlines, compression, 404/405.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_problem, error_fields};

async fn a_valid_request_id_is_echoed_and_an_invalid_one_replaced(app: TestApp) {
    let response =
        app.request(Method::GET, "/api/v1/products/nope").header("x-request-id", "trace-me_1.2").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me_1.2");
    let problem = assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(problem["request_id"], "trace-me_1.2");
    assert_eq!(problem["instance"], "/api/v1/products/nope");

    for invalid in ["has space", "semi;colon", &"a".repeat(129)] {
        let response = app.request(Method::GET, "/healthz").header("x-request-id", invalid).send().await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, invalid);
        assert!(!echoed.is_empty() && echoed.len() <= 128);
    }
    let generated = app.get("/healthz", None).await.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!generated.is_empty());
}

async fn unknown_paths_are_404_and_wrong_methods_405_with_allow(app: TestApp) {
    assert_problem(app.get("/api/v1/nothing-here", None).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_problem(app.get("/api/v2/products", None).await, StatusCode::NOT_FOUND, "not_found").await;

    let response = app.request(Method::PUT, "/api/v1/products").send().await.unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let response = app.request(Method::DELETE, "/api/v1/auth/register").send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

async fn json_endpoints_reject_other_media_types_and_malformed_json(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let product_path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let user_path = format!("/api/v1/users/{}", admin.user_id);
    let token = Some(admin.access_token.as_str());
    let endpoints = [
        (Method::POST, "/api/v1/auth/register", None),
        (Method::POST, "/api/v1/auth/logout", None),
        (Method::PATCH, "/api/v1/users/me", token),
        (Method::PATCH, user_path.as_str(), token),
        (Method::POST, "/api/v1/api-keys", token),
        (Method::POST, "/api/v1/products", token),
        (Method::PATCH, product_path.as_str(), token),
    ];
    for (method, path, token) in endpoints {
        let with_auth = |request: reqwest::RequestBuilder| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let no_type = with_auth(app.request(method.clone(), path)).body("{}").send().await.unwrap();
        assert_problem(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
        let form = with_auth(app.request(method.clone(), path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=b")
            .send()
            .await
            .unwrap();
        assert_problem(form, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
        for malformed in ["{", "{\"a\":}", "", "\u{0}", "{\"a\": 1} trailing"] {
            let response = with_auth(app.request(method.clone(), path))
                .header("content-type", "application/json")
                .body(malformed)
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::BAD_REQUEST, "invalid_json").await;
        }
        let charset = with_auth(app.request(method.clone(), path))
            .header("content-type", "application/json; charset=utf-8")
            .body("{\"unexpected\": 1}")
            .send()
            .await
            .unwrap();
        let problem = assert_problem(charset, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(error_fields(&problem).contains(&"unexpected".to_owned()));
    }
    let unchanged: serde_json::Value = app.get(&product_path, None).await.json().await.unwrap();
    assert_eq!(unchanged, product, "no rejected request changed anything");
}

async fn unknown_query_parameters_are_rejected_on_every_get(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let paths = [
        "/api/v1/products".to_owned(),
        format!("/api/v1/products/{}", product["id"].as_str().unwrap()),
        "/api/v1/users/me".to_owned(),
        "/api/v1/users".to_owned(),
        format!("/api/v1/users/{}", admin.user_id),
        "/api/v1/api-keys".to_owned(),
    ];
    for path in paths {
        let response = app.get(&format!("{path}?unexpected=1"), Some(&admin.access_token)).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(error_fields(&problem), ["unexpected"], "{path}");
    }
}

async fn bodies_over_the_limit_are_413(app: TestApp) {
    let oversized = format!("{{\"name\": \"{}\"}}", "x".repeat(1024 * 1024));
    let response = app
        .request(Method::POST, "/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let form = format!("grant_type=password&username={}", "x".repeat(1024 * 1024));
    let response = app
        .request(Method::POST, "/api/v1/auth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

async fn large_responses_are_compressed_as_the_client_accepts(app: TestApp) {
    let admin = app.admin().await;
    for _ in 0..10 {
        app.create_product(
            &admin,
            json!({"description": "A long description that makes the list larger than one kibibyte."}),
        )
        .await;
    }
    for encoding in ["gzip", "br", "zstd"] {
        let response =
            app.request(Method::GET, "/api/v1/products").header("accept-encoding", encoding).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-encoding"], encoding);
        assert!(response.headers()["vary"].to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"));
    }
    let identity = app.get("/api/v1/products", None).await;
    assert!(identity.headers().get("content-encoding").is_none());
    let small = app.request(Method::GET, "/healthz").header("accept-encoding", "gzip").send().await.unwrap();
    assert!(small.headers().get("content-encoding").is_none(), "bodies under 1 KiB are sent as they are");
}

async fn writes_and_errors_are_never_stored_by_caches(app: TestApp) {
    let email = app.unique_email("nostore");
    let created = app
        .post_json("/api/v1/auth/register", None, &json!({"email": email, "password": "long enough", "name": "N"}))
        .await;
    assert_eq!(created.headers()["cache-control"], "no-store");
    let error = app.get("/api/v1/products/nope", None).await;
    assert_eq!(error.headers()["cache-control"], "no-store");
}

crate::on_every_backend!(
    a_valid_request_id_is_echoed_and_an_invalid_one_replaced,
    unknown_paths_are_404_and_wrong_methods_405_with_allow,
    json_endpoints_reject_other_media_types_and_malformed_json,
    unknown_query_parameters_are_rejected_on_every_get,
    bodies_over_the_limit_are_413,
    large_responses_are_compressed_as_the_client_accepts,
    writes_and_errors_are_never_stored_by_caches,
);

#[tokio::test]
async fn a_request_past_its_deadline_gets_503_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--request-timeout", "2ms", "--payment-provider-deadline", "1ms"])
        .await
        .unwrap();
    let response = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "slow@example.com", "password": "long enough", "name": "S"}),
        )
        .await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded").await;
}

#[tokio::test]
async fn a_smaller_configured_body_limit_is_enforced() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--max-body-bytes", "2048"]).await.unwrap();
    let body = json!({"email": "big@example.com", "password": "long enough", "name": "x".repeat(3000)});
    assert_problem(
        app.post_json("/api/v1/auth/register", None, &body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}
