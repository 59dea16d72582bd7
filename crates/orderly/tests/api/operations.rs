//! Operations endpoints: health, readiness (including during shutdown), metrics, OpenAPI and
//! docs.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, scrape_metrics};

async fn liveness_and_readiness_report_ok(app: TestApp) {
    let health = app.get("/healthz", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
}

async fn the_openapi_document_describes_every_endpoint(app: TestApp) {
    let response = app.get("/openapi.json", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected = [
        ("/api/v1/auth/register", "post"),
        ("/api/v1/auth/token", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/users/me", "get"),
        ("/api/v1/users/me", "patch"),
        ("/api/v1/users", "get"),
        ("/api/v1/users/{id}", "get"),
        ("/api/v1/users/{id}", "patch"),
        ("/api/v1/api-keys", "post"),
        ("/api/v1/api-keys", "get"),
        ("/api/v1/api-keys/{id}", "get"),
        ("/api/v1/api-keys/{id}", "delete"),
        ("/api/v1/products", "get"),
        ("/api/v1/products", "post"),
        ("/api/v1/products/{id}", "get"),
        ("/api/v1/products/{id}", "patch"),
        ("/api/v1/products/{id}", "delete"),
        ("/api/v1/orders", "post"),
        ("/api/v1/orders", "get"),
        ("/api/v1/orders/{id}", "get"),
        ("/api/v1/orders/{id}/cancel", "post"),
        ("/api/v1/orders/{id}/payments", "post"),
        ("/api/v1/payments", "get"),
        ("/api/v1/payments/{id}", "get"),
        ("/api/v1/payments/{id}/refunds", "post"),
        ("/api/v1/refunds/{id}", "get"),
        ("/api/v1/transactions", "get"),
        ("/api/v1/stats", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/.well-known/jwks.json", "get"),
    ];
    for (path, method) in expected {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert!(
            operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} documents responses"
        );
    }
    let documented: usize = document["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, expected.len(), "every documented operation is listed here");
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(document["components"]["schemas"]["Problem"].is_object());
    for (path, item) in document["paths"].as_object().unwrap() {
        let Some(post) = item.get("post") else { continue };
        let key = post["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
        assert_eq!(key.is_some(), path != "/api/v1/auth/token", "POST {path} documents Idempotency-Key");
        let moves_money = path.ends_with("/payments") || path.ends_with("/refunds");
        if let Some(key) = key {
            assert_eq!(key["required"], moves_money, "POST {path} documents whether the key is required");
        }
    }
}

async fn the_docs_page_is_served_from_the_binary(app: TestApp) {
    let page = app.get("/docs/", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/swagger-initializer.js"] {
        let response = app.get(asset, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset} is served locally");
    }
}

async fn metrics_count_requests_by_route_template_status_and_replay(app: TestApp) {
    // Tests share one process-wide registry, so each check uses a series no other test touches.
    let rejected = r#"http_requests_total{method="POST",route="/metrics",status="405"}"#;
    let rejected_latency = r#"http_request_duration_seconds_count{method="POST",route="/metrics",status="405"}"#;
    let before = scrape_metrics(&app).await;
    let count =
        |metrics: &std::collections::HashMap<String, f64>, series: &str| metrics.get(series).copied().unwrap_or(0.0);

    let response = app.request(reqwest::Method::POST, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let missing = uuid::Uuid::new_v4();
    let response = app.get(&format!("/api/v1/products/{missing}"), None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let admin = app.admin().await;
    let key = format!("metrics-{missing}");
    for _ in 0..2 {
        let response = app
            .request(reqwest::Method::POST, "/api/v1/products")
            .bearer_auth(&admin.access_token)
            .header("idempotency-key", &key)
            .json(&serde_json::json!({"sku": format!("M-{missing}"), "name": "Metered", "unit_price": 100, "currency": "EUR", "stock": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    let after = scrape_metrics(&app).await;
    assert_eq!(count(&after, rejected) - count(&before, rejected), 1.0, "one request, counted once");
    assert_eq!(count(&after, rejected_latency) - count(&before, rejected_latency), 1.0, "and timed once");
    assert!(
        after.keys().any(|series| series.starts_with("http_requests_total{")
            && series.contains(r#"route="/api/v1/products/{id}""#)
            && series.contains(r#"status="404""#)),
        "requests are labelled with the route template"
    );
    assert!(after.keys().all(|series| !series.contains(&missing.to_string())), "never with the raw path");
    let replays = "idempotency_replays_total";
    assert!(count(&after, replays) - count(&before, replays) >= 1.0, "the repeated key was a replay");
    assert!(count(&after, "http_requests_in_flight") >= 1.0, "the scrape itself is in flight");
    assert!(count(&after, r#"orderly_db_pool_max_connections{pool="primary"}"#) >= 1.0);
    assert!(after.contains_key(r#"orderly_db_pool_connections{pool="primary",state="in_use"}"#));
    assert_eq!(count(&after, r#"orderly_payment_circuit_state{state="closed"}"#), 1.0);
}

crate::on_every_backend!(
    liveness_and_readiness_report_ok,
    metrics_count_requests_by_route_template_status_and_replay,
    the_openapi_document_describes_every_endpoint,
    the_docs_page_is_served_from_the_binary
);

#[tokio::test]
async fn readiness_fails_as_soon_as_shutdown_begins_while_liveness_holds() {
    let mut app = TestApp::spawn_with(Backend::Sqlite, &["--shutdown-drain-delay", "3s"]).await.unwrap();
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);

    app.begin_shutdown();
    let mut ready = app.get("/readyz", None).await;
    for _ in 0..50 {
        if ready.status() != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ready = app.get("/readyz", None).await;
    }
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "shutting_down");
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);

    let stopped = app.wait_stopped(std::time::Duration::from_secs(10)).await;
    assert!(stopped, "the server stops after the drain delay");
    assert!(app.client.get(app.url("/healthz")).send().await.is_err(), "no new connections after shutdown");
}
