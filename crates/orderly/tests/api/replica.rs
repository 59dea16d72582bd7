//! `ORDERLY_DATABASE_READ_URL` on a real streaming replica: a private primary and replica
//! started by `deploy/pg_replica.sh`, held back by pausing the replica's replay, or killed.
//! While it lags within the bound, lists may miss the newest writes, but every write, every
//! read of a single resource and every credential check goes to the primary, so a client
//! always sees what it just wrote. Beyond the bound, or while it is down, lists read the
//! primary; once it is back they use it again, without a failed request.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Credentials, ReplicaPair, TestApp, eventually, scrape_metrics};

/// A bound the paused replica stays within for the length of a scenario.
const GENEROUS_LAG: &str = "--database-read-max-lag=60s";

/// An app reading lists from a replica pair, with a customer and a product (10 in stock),
/// once the replica has caught up and is in use.
struct Shop {
    // Before the pair: the app stops before its databases do.
    app: TestApp,
    customer: Credentials,
    product_id: String,
    pair: ReplicaPair,
}

async fn shop(max_lag: &str) -> Option<Shop> {
    let pair = ReplicaPair::start()?;
    let app = TestApp::spawn_on_replica_pair(&pair, &[max_lag]).await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let product_id = product["id"].as_str().unwrap().to_owned();
    pair.wait_caught_up().await;
    assert!(eventually(async || replica_readiness(&app).await == "ok").await, "the replica is in use");
    Some(Shop { app, customer, product_id, pair })
}

impl Shop {
    /// The ids on the customer's first page of orders.
    async fn listed_orders(&self) -> Vec<String> {
        ids(&json_of(&self.app, "/api/v1/orders", &self.customer.access_token).await)
    }

    /// Lists the customer's orders `count` times at once; every one must succeed.
    async fn assert_concurrent_lists_succeed(&self, count: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let request = self.app.client.get(self.app.url("/api/v1/orders")).bearer_auth(&self.customer.access_token);
            tasks.spawn(async move { request.send().await.unwrap().status() });
        }
        let statuses = tasks.join_all().await;
        assert!(statuses.iter().all(|status| *status == StatusCode::OK), "{statuses:?}");
    }
}

async fn json_of(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.get(path, Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

/// The `read_replica` line of a readiness answer, which must be 200 whatever the replica does.
async fn replica_readiness(app: &TestApp) -> String {
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK, "the replica never decides readiness");
    let body: Value = ready.json().await.unwrap();
    body["checks"]["read_replica"].as_str().unwrap().to_owned()
}

async fn replica_gauges(app: &TestApp) -> (f64, f64) {
    let metrics = scrape_metrics(app).await;
    (metrics["orderly_db_replica_in_use"], metrics["orderly_db_replica_lag_seconds"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_replica_lags_lists_may_miss_new_writes_but_their_own_urls_show_them() {
    let Some(shop) = shop(GENEROUS_LAG).await else { return };
    let Shop { app, customer, product_id, pair } = &shop;
    let place = async || {
        app.request(Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", "lagging-order")
            .json(&json!({"items": [{"product_id": product_id, "quantity": 3}]}))
            .send()
            .await
            .unwrap()
    };
    let products = json_of(app, "/api/v1/products", &customer.access_token).await;
    assert_eq!(products["data"][0]["stock"], 10);

    pair.pause_replay().await;
    let placed = place().await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let location = placed.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = placed.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();

    // The order's own URL and the product read from the primary at once ...
    let read_back = json_of(app, &location, &customer.access_token).await;
    assert_eq!(read_back["id"], order_id.as_str());
    assert_eq!(app.stock_of(product_id).await, 7);
    // ... while the lists, read from the replica, are as of the pause.
    let orders = shop.listed_orders().await;
    assert!(orders.is_empty(), "the list is served by the paused replica: {orders:?}");
    let products = json_of(app, "/api/v1/products", &customer.access_token).await;
    assert_eq!(products["data"][0]["stock"], 10, "the list shows stock as of the pause");

    // A retry replays the same order, and writes that read first (cancelling checks the
    // status, returns the stock) see the latest state, not the replica's.
    let retried = place().await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], order_id.as_str());
    let cancelled = app.post_json(&format!("{location}/cancel"), Some(&customer.access_token), &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(app.stock_of(product_id).await, 10);
    assert_eq!(json_of(app, &location, &customer.access_token).await["status"], "cancelled");

    // Once the replica replays again the lists catch up.
    pair.resume_replay().await;
    let caught_up = eventually(async || {
        let orders = json_of(app, "/api/v1/orders", &customer.access_token).await;
        orders["data"][0]["id"] == order_id.as_str() && orders["data"][0]["status"] == "cancelled"
    })
    .await;
    assert!(caught_up, "the order list shows the cancelled order once the replica catches up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_created_while_the_replica_lags_work_at_once() {
    let Some(pair) = ReplicaPair::start() else { return };
    let app = TestApp::spawn_on_replica_pair(&pair, &[GENEROUS_LAG]).await;
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
    let listed =
        eventually(async || ids(&json_of(&app, "/api/v1/api-keys", &customer.access_token).await) == [key_id.as_str()])
            .await;
    assert!(listed, "the key list shows the key once the replica catches up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_read_the_primary_while_the_replica_is_further_behind_than_the_bound() {
    let Some(shop) = shop("--database-read-max-lag=1s").await else { return };
    let Shop { app, customer, product_id, pair } = &shop;
    assert_eq!(replica_gauges(app).await.0, 1.0);

    pair.pause_replay().await;
    let order: Value = app.place_order(customer, &[(product_id, 1)]).await.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap();
    // Replay stays paused: the order shows in the list only because the list now reads the
    // primary, once the replica is more than a second behind.
    let fresh = eventually(async || shop.listed_orders().await == [order_id]).await;
    assert!(fresh, "a list never lags by more than the bound (plus a check)");
    let readiness = replica_readiness(app).await;
    assert!(readiness.starts_with("degraded: ") && readiness.contains("behind"), "{readiness}");
    let (in_use, lag) = replica_gauges(app).await;
    assert_eq!(in_use, 0.0);
    assert!(lag > 1.0, "the lag is reported: {lag}");

    pair.resume_replay().await;
    assert!(eventually(async || replica_readiness(app).await == "ok").await, "the replica is used again");
    let (in_use, lag) = replica_gauges(app).await;
    assert_eq!(in_use, 1.0);
    assert!(lag <= 1.0, "{lag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_primary_is_not_read_once_it_is_further_behind_than_the_bound() {
    let Some(shop) = shop("--database-read-max-lag=1s").await else { return };
    let Shop { app, customer, product_id, pair } = &shop;

    // Cut off, the replica has replayed all it received: only the primary knows it is behind.
    let source = pair.disconnect_replica().await;
    let order: Value = app.place_order(customer, &[(product_id, 1)]).await.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap();
    let fresh = eventually(async || shop.listed_orders().await == [order_id]).await;
    assert!(fresh, "a list never lags by more than the bound, however the replica falls behind");
    let readiness = replica_readiness(app).await;
    assert!(readiness.contains("behind"), "{readiness}");

    pair.reconnect_replica(&source).await;
    assert!(eventually(async || replica_readiness(app).await == "ok").await, "the replica is used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_read_the_primary_while_the_replica_is_down_and_the_replica_again_once_it_is_back() {
    let Some(shop) = shop(GENEROUS_LAG).await else { return };
    let Shop { app, customer, product_id, pair } = &shop;
    // Several pooled replica connections, which the crash below leaves dead.
    shop.assert_concurrent_lists_succeed(8).await;

    pair.kill_replica();
    let noticed = eventually(async || replica_readiness(app).await.starts_with("degraded: ")).await;
    assert!(noticed, "the watch notices the replica is down");
    assert_eq!(replica_gauges(app).await.0, 0.0);
    let first: Value = app.place_order(customer, &[(product_id, 1)]).await.json().await.unwrap();
    let first_id = first["id"].as_str().unwrap();
    assert_eq!(shop.listed_orders().await, [first_id], "lists are served by the primary while the replica is down");
    shop.assert_concurrent_lists_succeed(16).await;

    pair.restart_replica();
    assert!(eventually(async || replica_readiness(app).await == "ok").await, "the replica is used again");
    // Connections opened before the crash are not handed out again.
    for _ in 0..3 {
        shop.assert_concurrent_lists_succeed(8).await;
    }
    // And it is the replica that serves them: held back, it misses a new order.
    pair.wait_caught_up().await;
    pair.pause_replay().await;
    assert_eq!(app.place_order(customer, &[(product_id, 1)]).await.status(), StatusCode::CREATED);
    assert_eq!(shop.listed_orders().await, [first_id], "the list is served by the replica again");
    pair.resume_replay().await;
}
