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

/// Every operation the document lists is checked against it: a query parameter it does not
/// list is refused on each operation that takes parameters, and a body field it does not list
/// on each operation that takes a JSON body, before anything else happens.
async fn every_documented_operation_refuses_what_its_schema_does_not_list(app: TestApp) {
    let admin = app.admin().await;
    let document: serde_json::Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let mut checked = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        let path = template.replace("{id}", &uuid::Uuid::now_v7().to_string());
        for (method, operation) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            let takes_query = parameters.iter().any(|p| p["in"] == "query");
            let content = operation["requestBody"]["content"].as_object().cloned().unwrap_or_default();
            let takes_json = content.len() == 1 && content.contains_key("application/json");
            if !takes_query && !takes_json {
                continue;
            }
            let mut request = app
                .request(method.clone(), &format!("{path}?zz_unlisted=1"))
                .bearer_auth(&admin.access_token)
                .header("idempotency-key", uuid::Uuid::now_v7().to_string());
            if takes_json {
                request = request.json(&json!({"zz_unlisted": 1}));
            }
            let response = request.send().await.unwrap();
            let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
            let fields = error_fields(&problem);
            assert!(fields.contains(&"zz_unlisted".to_owned()), "{method} {template}: {problem}");
            let codes: Vec<&str> =
                problem["errors"].as_array().unwrap().iter().filter_map(|e| e["code"].as_str()).collect();
            if takes_query {
                assert!(codes.contains(&"unknown_parameter"), "{method} {template}: {problem}");
            }
            if takes_json {
                assert!(codes.contains(&"unknown_field"), "{method} {template}: {problem}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations take input");
}

/// JSON Schema counts `34.0` as an integer; so does the server (and stores `34`), while `34.5`
/// and an empty `cursor` (the schema requires at least one character) are refused.
async fn input_the_schema_allows_is_accepted_as_it_allows_it(app: TestApp) {
    let admin = app.admin().await;
    let body = json!({"sku": "INT-1", "name": "Whole", "unit_price": 34.0, "currency": "USD", "stock": 1e3});
    let response = app.post_json("/api/v1/products", Some(&admin.access_token), &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let product: serde_json::Value = response.json().await.unwrap();
    assert_eq!((&product["unit_price"], &product["stock"]), (&json!(34), &json!(1000)));
    let customer = app.customer().await;
    let lines = json!({"items": [{"product_id": product["id"], "quantity": 2.0}]});
    let order: serde_json::Value =
        app.post_json("/api/v1/orders", Some(&customer.access_token), &lines).await.json().await.unwrap();
    assert_eq!(order["items"][0]["quantity"], 2);

    let fraction = json!({"sku": "INT-2", "name": "Half", "unit_price": 34.5, "currency": "USD", "stock": 1});
    let problem = assert_problem(
        app.post_json("/api/v1/products", Some(&admin.access_token), &fraction).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error_fields(&problem), ["unit_price"]);
    let problem = assert_problem(
        app.get("/api/v1/products?cursor=", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error_fields(&problem), ["cursor"]);
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
    every_documented_operation_refuses_what_its_schema_does_not_list,
    input_the_schema_allows_is_accepted_as_it_allows_it,
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
