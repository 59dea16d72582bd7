//! Races: the database, not the application, decides who wins.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, scrape_metrics};

async fn concurrent_registrations_of_one_email_create_exactly_one_account(app: TestApp) {
    let email = app.unique_email("race");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (client, url, email) = (app.client.clone(), app.url("/api/v1/auth/register"), email.clone());
        tasks.spawn(async move {
            client
                .post(url)
                .json(&json!({"email": email, "password": "long enough", "name": "Racer"}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let statuses: Vec<StatusCode> = tasks.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
}

async fn concurrent_writes_with_the_same_if_match_let_exactly_one_through(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({"stock": 1})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let etag = app.get(&path, None).await.headers()["etag"].to_str().unwrap().to_owned();

    let mut tasks = tokio::task::JoinSet::new();
    for stock in 100..110 {
        let request = app
            .request(Method::PATCH, &path)
            .bearer_auth(&admin.access_token)
            .header("if-match", &etag)
            .json(&json!({"stock": stock}));
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses: Vec<StatusCode> = tasks.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::PRECONDITION_FAILED), "{statuses:?}");
    let current: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(current["version"], 2, "exactly one write happened");
}

async fn concurrent_writes_without_preconditions_all_apply(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for stock in 1..=8 {
        let request = app.request(Method::PATCH, &path).bearer_auth(&admin.access_token).json(&json!({"stock": stock}));
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses: Vec<StatusCode> = tasks.join_all().await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let current: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(current["version"], 9, "every write applied on top of the previous one");
}

/// Many orders at once, half of which take stock and then fail on a second line: every
/// success stands and every failure leaves nothing behind. On SQLite the writer commits such
/// transactions in groups (each in a savepoint), so this also shows a failing member undoing
/// only its own work.
async fn concurrent_orders_sharing_commits_each_stand_or_fall_alone(app: TestApp) {
    let admin = app.admin().await;
    // Created first, so its id sorts first and a failing order takes its stock before failing.
    let plenty = app.create_product(&admin, json!({"stock": 1000})).await;
    let sold_out = app.create_product(&admin, json!({"stock": 0})).await;
    let (plenty, sold_out) = (plenty["id"].as_str().unwrap().to_owned(), sold_out["id"].as_str().unwrap().to_owned());
    let customer = app.customer().await;
    let before = scrape_metrics(&app).await;

    let mut tasks = tokio::task::JoinSet::new();
    for attempt in 0..120 {
        let mut items = vec![json!({"product_id": plenty, "quantity": 1})];
        if attempt % 2 == 1 {
            items.push(json!({"product_id": sold_out, "quantity": 1}));
        }
        let request = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .json(&json!({"items": items}));
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    let placed: Vec<&Value> = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).map(|(_, b)| b).collect();
    let refused =
        results.iter().filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "insufficient_stock").count();
    assert_eq!((placed.len(), refused), (60, 60), "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(app.stock_of(&plenty).await, 940, "only the placed orders hold stock");
    for order in placed {
        let path = format!("/api/v1/orders/{}", order["id"].as_str().unwrap());
        assert_eq!(app.get(&path, Some(&customer.access_token)).await.status(), StatusCode::OK);
    }
    let listed: Value = app.get("/api/v1/orders?limit=100", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 60, "no refused order was kept");

    if app.database_url().starts_with("sqlite") {
        // Metrics are per process: where tests share one (`cargo test`), other apps' commits
        // count too, so the figures are bounds.
        let after = scrape_metrics(&app).await;
        let delta =
            |series: &str| after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
        let (commits, transactions) =
            (delta("orderly_db_sqlite_commits_total"), delta("orderly_db_sqlite_committed_transactions_total"));
        assert!(transactions >= 60.0, "every placed order was committed ({transactions})");
        assert!(commits < transactions, "some orders shared a commit ({commits} commits)");
    }
}

crate::on_every_backend!(
    concurrent_orders_sharing_commits_each_stand_or_fall_alone,
    concurrent_registrations_of_one_email_create_exactly_one_account,
    concurrent_writes_with_the_same_if_match_let_exactly_one_through,
    concurrent_writes_without_preconditions_all_apply,
);
