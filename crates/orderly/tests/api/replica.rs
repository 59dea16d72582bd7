//! `ORDERLY_DATABASE_READ_URL` on a real streaming replica: a private primary and replica
//! started by `deploy/pg_replica.sh`, held back by pausing the replica's replay. While it lags,
//! lists may miss the newest writes, but every write, every read of a single resource and
//! every credential check goes to the primary, so a client always sees what it just wrote.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ReplicaPair, TestApp, eventually};

async fn json_of(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.get(path, Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_replica_lags_lists_may_miss_new_writes_but_their_own_urls_show_them() {
    let Some(pair) = ReplicaPair::start() else { return };
    let app = TestApp::spawn_on_replica_pair(&pair).await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let product_id = product["id"].as_str().unwrap().to_owned();
    pair.wait_caught_up().await;
    let products = json_of(&app, "/api/v1/products", &customer.access_token).await;
    assert_eq!(products["data"][0]["stock"], 10);

    pair.pause_replay().await;
    let placed = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", "lagging-order")
        .json(&json!({"items": [{"product_id": product_id, "quantity": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);
    let location = placed.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = placed.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();

    // The order's own URL and the product read from the primary at once ...
    let read_back = json_of(&app, &location, &customer.access_token).await;
    assert_eq!(read_back["id"], order_id.as_str());
    assert_eq!(app.stock_of(&product_id).await, 7);
    // ... while the lists, read from the replica, are as of the pause.
    let orders = json_of(&app, "/api/v1/orders", &customer.access_token).await;
    assert!(ids(&orders).is_empty(), "the list is served by the paused replica: {orders}");
    let products = json_of(&app, "/api/v1/products", &customer.access_token).await;
    assert_eq!(products["data"][0]["stock"], 10, "the list shows stock as of the pause");

    // A retry replays the same order, and writes that read first (cancelling checks the
    // status, returns the stock) see the latest state, not the replica's.
    let retried = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", "lagging-order")
        .json(&json!({"items": [{"product_id": product_id, "quantity": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], order_id.as_str());
    let cancelled = app.post_json(&format!("{location}/cancel"), Some(&customer.access_token), &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(app.stock_of(&product_id).await, 10);
    assert_eq!(json_of(&app, &location, &customer.access_token).await["status"], "cancelled");

    // Once the replica replays again the lists catch up.
    pair.resume_replay().await;
    let caught_up = eventually(async || {
        let orders = json_of(&app, "/api/v1/orders", &customer.access_token).await;
        orders["data"][0]["id"] == order_id.as_str() && orders["data"][0]["status"] == "cancelled"
    })
    .await;
    assert!(caught_up, "the order list shows the cancelled order once the replica catches up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_created_while_the_replica_lags_work_at_once() {
    let Some(pair) = ReplicaPair::start() else { return };
    let app = TestApp::spawn_on_replica_pair(&pair).await;
    pair.wait_caught_up().await;

    pair.pause_replay().await;
    // Registration, login, refresh: each reads what the previous step wrote.
    let customer = app.customer().await;
    let me = json_of(&app, "/api/v1/users/me", &customer.access_token).await;
    assert_eq!(me["id"], customer.user_id.as_str());
    let refreshed = app
        .request(Method::POST, "/api/v1/auth/token")
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &customer.refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK, "a refresh token works at once");

    let created = app.post_json("/api/v1/api-keys", Some(&customer.access_token), &json!({"name": "ci"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let key: Value = created.json().await.unwrap();
    let key_id = key["id"].as_str().unwrap().to_owned();
    let secret = key["secret"].as_str().unwrap();
    assert_eq!(json_of(&app, "/api/v1/users/me", secret).await["id"], customer.user_id.as_str(), "the key works");
    json_of(&app, &format!("/api/v1/api-keys/{key_id}"), &customer.access_token).await;
    let keys = json_of(&app, "/api/v1/api-keys", &customer.access_token).await;
    assert!(ids(&keys).is_empty(), "the key list is served by the paused replica: {keys}");

    pair.resume_replay().await;
    let listed = eventually(async || ids(&json_of(&app, "/api/v1/api-keys", &customer.access_token).await) == [key_id.as_str()])
        .await;
    assert!(listed, "the key list shows the key once the replica catches up");
}
