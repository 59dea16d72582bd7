//! Operations endpoints: health, readiness (including during shutdown), metrics, OpenAPI and
//! docs.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, eventually, scrape_metrics};

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
        ("/api/v1/reports", "post"),
        ("/api/v1/reports/{id}", "get"),
        ("/api/v1/reports/{id}/download", "get"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/{id}", "get"),
        ("/api/v1/webhooks", "get"),
        ("/api/v1/webhooks", "post"),
        ("/api/v1/webhooks/{id}", "get"),
        ("/api/v1/webhooks/{id}", "patch"),
        ("/api/v1/webhooks/{id}", "delete"),
        ("/api/v1/webhooks/{id}/rotate-secret", "post"),
        ("/api/v1/webhooks/{id}/deliveries", "get"),
        ("/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", "post"),
        ("/api/v1/webhooks/{id}/recover", "post"),
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
    let mut product = Value::Null;
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
        product = response.json().await.unwrap();
    }
    // A product read after its creation loads it (a miss), the next one is served cached (a hit).
    for _ in 0..2 {
        let read = app.get(&format!("/api/v1/products/{}", product["id"].as_str().unwrap()), None).await;
        assert_eq!(read.status(), StatusCode::OK);
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
    for result in ["hit", "miss"] {
        let series = format!(r#"orderly_cache_requests_total{{cache="products",result="{result}"}}"#);
        assert!(count(&after, &series) - count(&before, &series) >= 1.0, "product cache {result}s are counted");
    }
    let replays = "idempotency_replays_total";
    assert!(count(&after, replays) - count(&before, replays) >= 1.0, "the repeated key was a replay");
    assert!(count(&after, "http_requests_in_flight") >= 1.0, "the scrape itself is in flight");
    assert!(count(&after, r#"orderly_db_pool_max_connections{pool="primary"}"#) >= 1.0);
    assert!(after.contains_key(r#"orderly_db_pool_connections{pool="primary",state="in_use"}"#));
    assert_eq!(count(&after, r#"orderly_payment_circuit_state{state="closed"}"#), 1.0);
}

/// Overload protection: the in-flight cap, request deadlines and database pool exhaustion.
mod bounds {
    use super::*;

    /// Sends a request's head but never its body, so the request stays in flight until the
    /// connection is dropped.
    async fn hold_a_request(app: &TestApp) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
        let head = "POST /api/v1/auth/register HTTP/1.1\r\nHost: orderly\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }

    async fn past_the_in_flight_cap_requests_are_shed_at_once_but_probes_are_not(backend: Backend) {
        let Some(app) = TestApp::spawn_with(backend, &["--max-in-flight", "2"]).await else { return };
        let shed_before = scrape_metrics(&app).await.get("http_requests_shed_total").copied().unwrap_or(0.0);
        let held = [hold_a_request(&app).await, hold_a_request(&app).await];
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let started = std::time::Instant::now();
        let shed = app.get("/api/v1/products", None).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "shed at once, not queued");
        assert_eq!(shed.headers()["retry-after"], "1");
        crate::helpers::assert_problem(shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
        for probe in ["/healthz", "/readyz"] {
            assert_eq!(app.get(probe, None).await.status(), StatusCode::OK, "{probe} is never shed");
        }
        let shed_after = scrape_metrics(&app).await.get("http_requests_shed_total").copied().unwrap_or(0.0);
        assert!(shed_after - shed_before >= 1.0, "shedding is counted");

        drop(held);
        let recovered = eventually(async || app.get("/api/v1/products", None).await.status() == StatusCode::OK).await;
        assert!(recovered, "capacity returns when the held requests end");
    }

    async fn a_stuck_database_is_503_at_the_deadline_and_an_exhausted_pool_is_503_at_once(backend: Backend) {
        let flags = [
            "--database-max-connections",
            "1",
            "--database-acquire-timeout",
            "200ms",
            "--request-timeout",
            "1500ms",
            "--payment-provider-deadline",
            "500ms",
        ];
        let Some(app) = TestApp::spawn_with(backend, &flags).await else { return };
        let admin = app.admin().await;
        let before = scrape_metrics(&app).await;
        let create = |sku: &'static str| {
            app.request(reqwest::Method::POST, "/api/v1/products")
                .bearer_auth(&admin.access_token)
                .json(
                    &serde_json::json!({"sku": sku, "name": "Stuck", "unit_price": 100, "currency": "EUR", "stock": 1}),
                )
                .send()
        };

        // Another client holds the lock every product write needs.
        let mut transaction = crate::helpers::OutsideTransaction::begin(app.database_url()).await;
        let hold = match backend {
            Backend::Postgres => "LOCK TABLE products IN ACCESS EXCLUSIVE MODE",
            Backend::Sqlite => "CREATE TABLE hold_the_write_lock (x INTEGER)",
        };
        transaction.execute(hold).await;

        let stuck = tokio::spawn(create("STUCK-1"));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let exhausted = create("STUCK-2").await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "no connection is 503 at once, not a hang");
        crate::helpers::assert_problem(exhausted, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
        let stuck = stuck.await.unwrap().unwrap();
        crate::helpers::assert_problem(stuck, StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded").await;

        transaction.rollback().await;
        let recovered = eventually(async || create("AFTER").await.unwrap().status() == StatusCode::CREATED).await;
        assert!(recovered, "writes succeed again once the lock is gone");

        // The request that gave up while its work waited for a connection left no trace: its
        // work never ran, so the client's retry cannot make it twice.
        let listed: Value =
            app.get("/api/v1/products?limit=100", None).await.json().await.expect("the product list is JSON");
        let skus: Vec<&str> = listed["data"].as_array().unwrap().iter().filter_map(|p| p["sku"].as_str()).collect();
        assert!(!skus.contains(&"STUCK-2"), "work given up while queued never runs: {skus:?}");

        let after = scrape_metrics(&app).await;
        let delta =
            |series: &str| after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
        assert!(delta("http_requests_deadline_exceeded_total") >= 1.0, "deadlines are counted");
        assert!(delta(r#"orderly_db_unavailable_total{cause="pool_timeout"}"#) >= 1.0, "pool timeouts are counted");
    }

    /// A transaction cut off by the request deadline while PostgreSQL still runs one of its
    /// statements takes its connection with it: the connection is closed, never pooled inside
    /// an open transaction, where the next request's statements would join (and commit) it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_transaction_cut_off_by_the_deadline_leaves_no_connection_inside_it() {
        let flags = ["--request-timeout", "1000ms", "--payment-provider-deadline", "500ms"];
        let Some(app) = TestApp::spawn_with(Backend::Postgres, &flags).await else { return };
        let admin = app.admin().await;
        let product = app.create_product(&admin, serde_json::json!({"stock": 1})).await;
        let id = product["id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/products/{id}");
        let patch = || {
            app.request(reqwest::Method::PATCH, &path)
                .bearer_auth(&admin.access_token)
                .json(&serde_json::json!({"stock": 5}))
                .send()
        };

        // Another client holds the product's row, so the change waits inside its transaction.
        let mut transaction = crate::helpers::OutsideTransaction::begin(app.database_url()).await;
        transaction.execute(&format!("UPDATE products SET stock = stock WHERE id = '{id}'")).await;
        let cut_off = patch().await.unwrap();
        crate::helpers::assert_problem(cut_off, StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded").await;
        transaction.rollback().await;

        let client = crate::helpers::connect_postgres(app.database_url()).await.unwrap();
        let inside_a_transaction = async || -> i64 {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                     AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        };
        // Give the cut-off statement time to finish once the row is free.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(inside_a_transaction().await, 0, "no connection is left inside a transaction");
        assert_eq!(patch().await.unwrap().status(), StatusCode::OK, "the retry applies");
        assert_eq!(app.stock_of(&id).await, 5);
    }

    crate::on_every_backend_with_backend!(
        past_the_in_flight_cap_requests_are_shed_at_once_but_probes_are_not,
        a_stuck_database_is_503_at_the_deadline_and_an_exhausted_pool_is_503_at_once,
    );
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
