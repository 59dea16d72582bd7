//! Idempotency-Key on every POST: one execution, byte-identical replays, scoped keys.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem};

async fn the_same_key_sent_concurrently_creates_exactly_one_order(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 100})).await;
    let body = json!({"items": [{"product_id": product["id"], "quantity": 1}]});

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "order-once")
            .json(&body);
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let status = response.status();
            if status == StatusCode::CONFLICT {
                assert_eq!(response.headers()["retry-after"], "1", "an in-progress conflict says when to retry");
            }
            (status, replayed, response.json::<Value>().await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    let created: Vec<&Value> =
        results.iter().filter(|(s, _, _)| *s == StatusCode::CREATED).map(|(_, _, b)| b).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|b| b["id"] == created[0]["id"]), "every 201 is the same order");
    assert_eq!(
        results.iter().filter(|(s, replayed, _)| *s == StatusCode::CREATED && !replayed).count(),
        1,
        "one original response"
    );
    for (status, _, body) in &results {
        assert!(
            *status == StatusCode::CREATED
                || (*status == StatusCode::CONFLICT && body["code"] == "idempotency_request_in_progress"),
            "{status}: {body}"
        );
    }
    let orders: Value = app.get("/api/v1/orders", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 1, "exactly one order exists");
    assert_eq!(app.stock_of(product["id"].as_str().unwrap()).await, 99);
}

async fn a_replay_is_byte_identical_and_marked(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let send = || {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "replay-me")
            .json(&json!({"items": [{"product_id": product["id"], "quantity": 2}]}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let original = first.bytes().await.unwrap();

    let second = send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["location"], location);
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(second.bytes().await.unwrap(), original, "the replay is byte for byte the original");
    assert_eq!(app.stock_of(product["id"].as_str().unwrap()).await, 8, "the order ran once");
}

async fn a_key_reused_with_another_body_is_422(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let send = |quantity: i64| {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "one-use")
            .json(&json!({"items": [{"product_id": product["id"], "quantity": quantity}]}))
            .send()
    };
    assert_eq!(send(1).await.unwrap().status(), StatusCode::CREATED);
    assert_problem(send(2).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    assert_eq!(app.stock_of(product["id"].as_str().unwrap()).await, 9);
}

async fn a_request_rejected_before_running_can_be_retried_with_the_same_key(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let send = |body: Value| {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "fix-and-retry")
            .json(&body)
            .send()
    };
    let invalid = send(json!({"items": [{"product_id": product["id"], "quantity": 0}]})).await.unwrap();
    assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fixed = send(json!({"items": [{"product_id": product["id"], "quantity": 1}]})).await.unwrap();
    assert_eq!(fixed.status(), StatusCode::CREATED);
    assert!(fixed.headers().get("idempotent-replayed").is_none());
}

async fn outcomes_of_running_are_kept_even_when_they_are_errors(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 1})).await;
    let send = || {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "too-many")
            .json(&json!({"items": [{"product_id": product["id"], "quantity": 2}]}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CONFLICT);
    let original = first.bytes().await.unwrap();
    // More stock arrives, but the key already has its outcome.
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"stock": 10})).await;
    let replay = send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::CONFLICT);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), original);
}

async fn keys_are_scoped_to_the_caller_and_the_path(app: TestApp) {
    let admin = app.admin().await;
    let (alice, bob) = (app.customer().await, app.customer().await);
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let body = json!({"items": [{"product_id": product["id"], "quantity": 1}]});
    let mut ids = Vec::new();
    for customer in [&alice, &bob] {
        let response = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "shared")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.headers().get("idempotent-replayed").is_none(), "another caller's key is not ours");
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
    let cancel = app
        .request(Method::POST, &format!("/api/v1/orders/{}/cancel", ids[0].as_str().unwrap()))
        .bearer_auth(&alice.access_token)
        .header("idempotency-key", "shared")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK, "the same key on another path is another key");
    assert!(cancel.headers().get("idempotent-replayed").is_none());
}

async fn a_key_survives_a_token_refresh(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let body = json!({"items": [{"product_id": product["id"], "quantity": 1}]});
    let first = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(&customer.access_token)
        .header("idempotency-key", "k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let fresh = app.login(&customer.email, &customer.password).await;
    let retry = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(fresh["access_token"].as_str().unwrap())
        .header("idempotency-key", "k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true", "the scope is the user, not the token");
}

async fn malformed_keys_are_400_and_change_nothing(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "tab\tkey"] {
        let response = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", key)
            .json(&json!({"items": [{"product_id": product["id"], "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    }
    let non_ascii = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(&customer.access_token)
        .header("idempotency-key", reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap())
        .json(&json!({"items": [{"product_id": product["id"], "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_problem(non_ascii, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    assert_eq!(app.stock_of(product["id"].as_str().unwrap()).await, 10);
}

async fn every_post_replays_under_its_key(app: TestApp) {
    let admin = app.admin().await;
    let post_twice = |path: &'static str, token: Option<String>, body: Value| {
        let app = &app;
        async move {
            let mut responses = Vec::new();
            for _ in 0..2 {
                let mut request =
                    app.request(Method::POST, path).header("idempotency-key", format!("twice-{path}")).json(&body);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                let replayed = response.headers().get("idempotent-replayed").is_some();
                responses.push((response.status(), replayed, response.text().await.unwrap()));
            }
            assert_eq!(responses[0].0, responses[1].0, "{path}");
            assert_eq!(responses[0].2, responses[1].2, "{path}: the same body twice");
            assert!(!responses[0].1 && responses[1].1, "{path}: the second is a replay");
            responses[0].0
        }
    };
    let email = app.unique_email("idem");
    assert_eq!(
        post_twice("/api/v1/auth/register", None, json!({"email": email, "password": "long enough", "name": "I"}))
            .await,
        StatusCode::CREATED
    );
    assert_eq!(
        post_twice(
            "/api/v1/products",
            Some(admin.access_token.clone()),
            json!({"sku": "IDEM-1", "name": "I", "unit_price": 1, "currency": "USD", "stock": 1})
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        post_twice("/api/v1/api-keys", Some(admin.access_token.clone()), json!({"name": "once"})).await,
        StatusCode::CREATED
    );
    let keys: Value = app.get("/api/v1/api-keys", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(keys["data"].as_array().unwrap().len(), 1, "one key was created");
    assert_eq!(
        post_twice("/api/v1/auth/logout", None, json!({"refresh_token": admin.refresh_token})).await,
        StatusCode::NO_CONTENT
    );
}

crate::on_every_backend!(
    the_same_key_sent_concurrently_creates_exactly_one_order,
    a_replay_is_byte_identical_and_marked,
    a_key_reused_with_another_body_is_422,
    a_request_rejected_before_running_can_be_retried_with_the_same_key,
    outcomes_of_running_are_kept_even_when_they_are_errors,
    keys_are_scoped_to_the_caller_and_the_path,
    a_key_survives_a_token_refresh,
    malformed_keys_are_400_and_change_nothing,
    every_post_replays_under_its_key,
);

/// An order is a write local to the database: its key is claimed and kept in the order's own
/// transaction, so a request with the same key on another instance waits for that transaction
/// and replays it, instead of getting 409 while it runs.
async fn the_same_key_on_two_instances_at_once_waits_and_replays_instead_of_409(backend: Backend) {
    let Some((first, second)) = TestApp::spawn_pair(backend, &[]).await else { return };
    let admin = first.admin().await;
    let customer = first.customer().await;
    let product = first.create_product(&admin, json!({"stock": 100})).await;
    let body = json!({"items": [{"product_id": product["id"], "quantity": 3}]});

    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..16 {
        let app = if round % 2 == 0 { &first } else { &second };
        let request = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "one-order-two-instances")
            .json(&body);
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            (response.status(), replayed, response.json::<Value>().await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    for (status, _, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "every request gets the order, none a 409: {body}");
    }
    assert!(results.iter().all(|(_, _, body)| body["id"] == results[0].2["id"]), "every 201 is the same order");
    assert_eq!(results.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "one original response");
    let orders: Value = second.get("/api/v1/orders", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 1, "exactly one order exists");
    assert_eq!(first.stock_of(product["id"].as_str().unwrap()).await, 97, "stock was taken once");
}

mod across_instances {
    use super::*;
    crate::on_every_backend_with_backend!(the_same_key_on_two_instances_at_once_waits_and_replays_instead_of_409);
}

/// A keyed order commits once: the key's claim, the stock, the order and the kept response
/// are one transaction (PostgreSQL's own count of commits in the order's database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_order_is_one_commit() {
    // One connection, so every statement of the app is on the backend whose counts are read;
    // the reconciler passes every 5 s at most; the relay's passes would be counted too.
    let args = ["--database-max-connections", "1", "--payment-settle-after", "1h", "--run-worker=false"];
    let Some(app) = TestApp::spawn_with(Backend::Postgres, &args).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 1000})).await;
    let product_path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    // PostgreSQL counts a backend's commits when it next goes idle at least 1 s after its last
    // report: a read after a pause makes the count current.
    let commits = async || {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert_eq!(app.get(&product_path, None).await.status(), StatusCode::OK);
        app.database_commits().await
    };
    let before = commits().await;
    let started = std::time::Instant::now();
    const ORDERS: i64 = 20;
    for n in 0..ORDERS {
        let response = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", format!("counted-{n}"))
            .json(&json!({"items": [{"product_id": product["id"], "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let after = commits().await;
    // Besides the orders: the read that makes the count current, the reconciler's two reads
    // per pass (one every 5 s at most), and a few commits whose statistics PostgreSQL
    // reported late. Two commits per order would be over this.
    let passes = started.elapsed().as_secs() as i64 / 5 + 2;
    let allowed = ORDERS + 1 + 2 * passes + ORDERS / 4;
    let counted = after - before;
    assert!(counted <= allowed, "{counted} commits for {ORDERS} keyed orders (at most {allowed})");
    assert!(counted > ORDERS, "each order committed");
}

/// A keyed payment commits twice: the key's claim with the charge written ahead of the
/// provider call, and the outcome (payment, ledger, order status, attempt settled) with the
/// kept response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_payment_is_two_commits() {
    let args = ["--database-max-connections", "1", "--payment-settle-after", "1h", "--run-worker=false"];
    let Some(app) = TestApp::spawn_with(Backend::Postgres, &args).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 1000})).await;
    const PAYMENTS: i64 = 20;
    let mut orders = Vec::new();
    for _ in 0..PAYMENTS {
        let order: Value = app
            .post_json(
                "/api/v1/orders",
                Some(&customer.access_token),
                &json!({"items": [{"product_id": product["id"], "quantity": 1}]}),
            )
            .await
            .json()
            .await
            .unwrap();
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    // As for orders above: a read of the database (an order; products may come from the cache)
    // after a pause makes PostgreSQL's count current.
    let order_path = format!("/api/v1/orders/{}", orders[0]);
    let commits = async || {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert_eq!(app.get(&order_path, Some(&customer.access_token)).await.status(), StatusCode::OK);
        app.database_commits().await
    };
    let before = commits().await;
    let started = std::time::Instant::now();
    for (n, order) in orders.iter().enumerate() {
        let response = crate::payments::pay(&app, &customer, order, "pm_card_visa", &format!("paid-{n}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let after = commits().await;
    // Besides the payments: the read that makes the count current, the reconciler's two reads
    // per pass (one every 5 s at most), which a slow run sees more of, and a few commits whose
    // statistics PostgreSQL reported late. Three commits per payment would be over this.
    let passes = started.elapsed().as_secs() as i64 / 5 + 2;
    let allowed = 2 * PAYMENTS + 1 + 2 * passes + PAYMENTS / 4;
    let counted = after - before;
    assert!(counted <= allowed, "{counted} commits for {PAYMENTS} keyed payments (at most {allowed})");
    assert!(counted > 2 * PAYMENTS, "each payment committed its two phases: {counted}");
    let replay = crate::payments::pay(&app, &customer, &orders[0], "pm_card_visa", "paid-0").await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true", "the response was kept with the outcome");
}

#[tokio::test]
async fn a_key_is_free_again_after_its_ttl() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--idempotency-ttl", "1s"]).await.unwrap();
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let send = |quantity: i64| {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", "short-lived")
            .json(&json!({"items": [{"product_id": product["id"], "quantity": quantity}]}))
            .send()
    };
    assert_eq!(send(1).await.unwrap().status(), StatusCode::CREATED);
    assert_problem(send(2).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let after = send(2).await.unwrap();
    assert_eq!(after.status(), StatusCode::CREATED, "after the TTL the key is free");
    assert!(after.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.stock_of(product["id"].as_str().unwrap()).await, 7);
}

#[tokio::test]
async fn the_sweep_deletes_only_expired_records() {
    use clap::Parser;
    use orderly::config::{Cli, Command};
    use orderly_kit::idempotency::IdempotencyStore;

    let dir = std::env::temp_dir().join(format!("orderly-sweep-{}", uuid::Uuid::now_v7().simple()));
    let url = format!("sqlite://{}/orderly.db", dir.display());
    let Command::Migrate(config) = Cli::parse_from(["orderly", "migrate", "--database-url", &url]).command else {
        unreachable!("the migrate command was given")
    };
    let db = orderly::db::Database::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    let store = orderly::idempotency::DatabaseStore::new(db);
    let now = chrono::Utc::now();
    let (past, future) = (now - chrono::TimeDelta::hours(1), now + chrono::TimeDelta::hours(1));

    assert!(store.claim("expired", "fingerprint-a", past, past).await.unwrap().is_none());
    assert!(store.claim("live", "fingerprint-b", future, future).await.unwrap().is_none());
    assert_eq!(store.sweep().await.unwrap(), 1, "only the expired record is deleted");
    let live = store.claim("live", "fingerprint-c", future, future).await.unwrap();
    assert_eq!(live.map(|record| record.fingerprint).as_deref(), Some("fingerprint-b"), "the live record stands");
    let _ = std::fs::remove_dir_all(dir);
}

/// An instance that dies after its order committed but before it kept the response leaves the
/// key unfinished; once its lock lapses a retry runs again, and must find that order rather
/// than place a second one.
async fn a_retry_after_the_first_run_died_uncompleted_finds_its_order(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let product_id = product["id"].as_str().unwrap();
    let order = json!({"items": [{"product_id": product_id, "quantity": 2}]});
    let place = || {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", "dies-after-commit")
            .json(&order)
    };
    let first = place().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    // What a SIGKILL between the commit and the keeping of the response leaves behind.
    let config = orderly::config::DatabaseConfig {
        database_url: app.database_url().to_owned(),
        database_read_url: None,
        database_read_max_lag: std::time::Duration::from_secs(5),
        database_max_connections: 1,
        database_acquire_timeout: std::time::Duration::from_secs(5),
    };
    let db = orderly::db::Database::connect(&config).await.unwrap();
    let lapsed = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    db.write()
        .run(async move |conn| {
            let no_response: Option<Vec<u8>> = None;
            conn.execute("UPDATE idempotency_keys SET response = $1, locked_until = $2", &[&no_response, &lapsed]).await
        })
        .await
        .unwrap();

    let retried = place().send().await.unwrap();
    assert_eq!(retried.status(), StatusCode::CREATED);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["id"], first["id"], "the retry finds the order its first run placed");
    let orders: Value = app.get("/api/v1/orders", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.stock_of(product_id).await, 8, "stock was taken once");
    // Settled now: later retries replay.
    let replayed = place().send().await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
}

mod after_a_crash {
    use super::*;
    crate::on_every_backend!(a_retry_after_the_first_run_died_uncompleted_finds_its_order);
}
