//! Orders: price snapshots, atomic stock reservation, visibility and cancellation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use uuid::Uuid;

use crate::helpers::{Backend, TestApp, assert_problem, error_fields, insert_row, insert_user_row};

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

async fn placing_an_order_snapshots_prices_and_reserves_stock(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let mug = app.create_product(&admin, json!({"name": "Mug", "unit_price": 1250, "stock": 10})).await;
    let pen = app.create_product(&admin, json!({"name": "Pen", "unit_price": 199, "stock": 5})).await;

    let response = app.place_order(&customer, &[(&id(&mug), 3), (&id(&pen), 5)]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/orders/{}", id(&order)));
    assert_eq!(order["status"], "pending");
    assert_eq!(order["user_id"], customer.user_id.as_str());
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["total"], 3 * 1250 + 5 * 199);
    assert_eq!(
        order["items"][0],
        json!({"product_id": mug["id"], "sku": mug["sku"], "name": "Mug", "unit_price": 1250, "quantity": 3, "line_total": 3750})
    );
    assert_eq!(order["items"][1]["line_total"], 995);
    assert_eq!((app.stock_of(&id(&mug)).await, app.stock_of(&id(&pen)).await), (7, 0));

    // A later price change does not touch the order.
    let path = format!("/api/v1/products/{}", id(&mug));
    app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"unit_price": 9999, "name": "Renamed"}))
        .await;
    let fetched: Value = app.get(&location, Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(fetched, order);
}

async fn order_creation_never_oversells_under_concurrency(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    let mut customers = Vec::new();
    for _ in 0..20 {
        customers.push(app.customer().await);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for attempt in 0..200 {
        let token = customers[attempt % customers.len()].access_token.clone();
        let request = app
            .request(Method::POST, "/api/v1/orders")
            .bearer_auth(token)
            .json(&json!({"items": [{"product_id": id(&product), "quantity": 1}]}));
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        });
    }
    let results = tasks.join_all().await;
    let placed: Vec<&Value> = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).map(|(_, b)| b).collect();
    let refused =
        results.iter().filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "insufficient_stock").count();
    assert_eq!(placed.len(), 50, "exactly the stock is sold");
    assert_eq!(
        refused,
        150,
        "every other order is refused for stock: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(app.stock_of(&id(&product)).await, 0);

    for order in placed.iter().take(10) {
        let owner = customers.iter().find(|c| c.user_id == order["user_id"].as_str().unwrap()).unwrap();
        let response = app
            .request(Method::POST, &format!("/api/v1/orders/{}/cancel", id(order)))
            .bearer_auth(&owner.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.stock_of(&id(&product)).await, 10, "cancelling returns exactly what was reserved");
}

async fn bad_orders_are_rejected_naming_the_item_and_change_nothing(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let usd = app.create_product(&admin, json!({"stock": 5})).await;
    let eur = app.create_product(&admin, json!({"stock": 5, "currency": "EUR"})).await;
    let archived = app.create_product(&admin, json!({"stock": 5, "active": false})).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let too_many: Vec<Value> = (0..51).map(|_| json!({"product_id": uuid::Uuid::now_v7(), "quantity": 1})).collect();
    let line = |product: &str, quantity: Value| json!({"product_id": product, "quantity": quantity});

    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["items"]),
        (json!({"items": []}), vec!["items"]),
        (json!({"items": too_many}), vec!["items"]),
        (json!({"items": "all"}), vec!["items"]),
        (json!({"items": [line(&id(&usd), json!(0))]}), vec!["items[0].quantity"]),
        (json!({"items": [line(&id(&usd), json!(1001))]}), vec!["items[0].quantity"]),
        (json!({"items": [line(&id(&usd), json!(1.5))]}), vec!["items[0].quantity"]),
        (json!({"items": [line("not-an-id", json!(1))]}), vec!["items[0].product_id"]),
        (json!({"items": [line(&id(&usd), json!(1)), line(&id(&usd), json!(2))]}), vec!["items[1].product_id"]),
        (json!({"items": [{"product_id": id(&usd), "quantity": 1, "unit_price": 1}]}), vec!["items[0].unit_price"]),
        (json!({"items": [line(&id(&usd), json!(1))], "total": 1}), vec!["total"]),
        (json!({"items": [line(&id(&usd), json!(1)), line(&unknown, json!(1))]}), vec!["items[1].product_id"]),
        (json!({"items": [line(&id(&archived), json!(1))]}), vec!["items[0].product_id"]),
        (json!({"items": [line(&id(&usd), json!(1)), line(&id(&eur), json!(1))]}), vec!["items"]),
    ];
    for (body, fields) in cases {
        let response = app.post_json("/api/v1/orders", Some(&customer.access_token), &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(error_fields(&problem), fields, "body {body}");
    }

    let short = app.place_order(&customer, &[(&id(&usd), 6)]).await;
    let problem = assert_problem(short, StatusCode::CONFLICT, "insufficient_stock").await;
    assert!(problem["detail"].as_str().unwrap().contains(&id(&usd)), "the problem names the product: {problem}");
    assert_eq!(app.place_order(&customer, &[(&id(&usd), 2)]).await.status(), StatusCode::CREATED);
    assert_eq!(app.place_order(&customer, &[(&id(&usd), 3)]).await.status(), StatusCode::CREATED);
    assert_problem(app.place_order(&customer, &[(&id(&usd), 1)]).await, StatusCode::CONFLICT, "insufficient_stock")
        .await;

    assert_eq!(
        (app.stock_of(&id(&usd)).await, app.stock_of(&id(&eur)).await, app.stock_of(&id(&archived)).await),
        (0, 5, 5)
    );
    let orders: Value = app.get("/api/v1/orders", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 2, "only the two valid orders exist");
}

async fn a_failed_line_rolls_back_the_whole_order(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let plenty = app.create_product(&admin, json!({"stock": 100})).await;
    let scarce = app.create_product(&admin, json!({"stock": 1})).await;
    let response = app.place_order(&customer, &[(&id(&plenty), 10), (&id(&scarce), 2)]).await;
    assert_problem(response, StatusCode::CONFLICT, "insufficient_stock").await;
    assert_eq!((app.stock_of(&id(&plenty)).await, app.stock_of(&id(&scarce)).await), (100, 1));
}

async fn a_customer_cannot_see_list_or_cancel_another_customers_order(app: TestApp) {
    let admin = app.admin().await;
    let (alice, bob) = (app.customer().await, app.customer().await);
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let order: Value = app.place_order(&alice, &[(&id(&product), 1)]).await.json().await.unwrap();
    let path = format!("/api/v1/orders/{}", id(&order));

    assert_problem(app.get(&path, Some(&bob.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
    let cancel =
        app.request(Method::POST, &format!("{path}/cancel")).bearer_auth(&bob.access_token).send().await.unwrap();
    assert_problem(cancel, StatusCode::NOT_FOUND, "not_found").await;
    for query in ["", &format!("?user_id={}", alice.user_id)] {
        let listed: Value =
            app.get(&format!("/api/v1/orders{query}"), Some(&bob.access_token)).await.json().await.unwrap();
        assert!(listed["data"].as_array().unwrap().is_empty(), "bob sees none of alice's orders ({query})");
    }
    assert_eq!(app.stock_of(&id(&product)).await, 9, "bob's cancel did nothing");

    let as_admin: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(as_admin["id"], order["id"]);
    let filtered: Value = app
        .get(&format!("/api/v1/orders?user_id={}", alice.user_id), Some(&admin.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert_problem(app.get("/api/v1/orders", None).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn cancelling_returns_stock_once_and_only_from_pending(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let order: Value = app.place_order(&customer, &[(&id(&product), 4)]).await.json().await.unwrap();
    let cancel_path = format!("/api/v1/orders/{}/cancel", id(&order));
    let cancel = || app.request(Method::POST, &cancel_path).bearer_auth(&customer.access_token).send();

    let first: Value = cancel().await.unwrap().json().await.unwrap();
    assert_eq!((first["status"].as_str(), first["version"].as_i64()), (Some("cancelled"), Some(2)));
    assert_eq!(app.stock_of(&id(&product)).await, 10);

    let again = cancel().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), first, "cancelling a cancelled order returns it unchanged");
    assert_eq!(app.stock_of(&id(&product)).await, 10, "stock is returned once");

    let paid: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    app.force_order_status(&id(&paid), "paid").await;
    let response = app
        .request(Method::POST, &format!("/api/v1/orders/{}/cancel", id(&paid)))
        .bearer_auth(&customer.access_token)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::CONFLICT, "invalid_state").await;
    assert_eq!(app.stock_of(&id(&product)).await, 9);
}

async fn the_order_list_filters_by_status_and_time_and_pages(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 100})).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(app.place_order(&customer, &[(&id(&product), 1)]).await.json::<Value>().await.unwrap());
    }
    app.request(Method::POST, &format!("/api/v1/orders/{}/cancel", id(&placed[1])))
        .bearer_auth(&customer.access_token)
        .send()
        .await
        .unwrap();
    let token = Some(customer.access_token.as_str());
    let ids = |list: &Value| -> Vec<String> { list["data"].as_array().unwrap().iter().map(id).collect() };

    let cancelled: Value = app.get("/api/v1/orders?status=cancelled", token).await.json().await.unwrap();
    assert_eq!(ids(&cancelled), [id(&placed[1])]);
    let between = format!(
        "/api/v1/orders?sort=created_at&created_after={}&created_before={}",
        placed[0]["created_at"].as_str().unwrap().replace('+', "%2B"),
        placed[4]["created_at"].as_str().unwrap().replace('+', "%2B")
    );
    let window: Value = app.get(&between, token).await.json().await.unwrap();
    assert_eq!(ids(&window), [id(&placed[1]), id(&placed[2]), id(&placed[3])]);

    let first: Value = app.get("/api/v1/orders?limit=2", token).await.json().await.unwrap();
    assert_eq!(ids(&first), [id(&placed[4]), id(&placed[3])]);
    let next = format!("/api/v1/orders?limit=2&cursor={}", first["next_cursor"].as_str().unwrap());
    let second: Value = app.get(&next, token).await.json().await.unwrap();
    assert_eq!(ids(&second), [id(&placed[2]), id(&placed[1])]);
    assert_eq!(second["data"][1]["items"][0]["quantity"], 1, "listed orders carry their items");

    for bad in ["?status=shipped", "?created_after=yesterday", "?user_id=me", "?sort=total"] {
        assert_problem(
            app.get(&format!("/api/v1/orders{bad}"), token).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let empty_range = "/api/v1/orders?created_after=2030-01-01T00:00:00Z&created_before=2020-01-01T00:00:00Z";
    let nothing: Value = app.get(empty_range, token).await.json().await.unwrap();
    assert_eq!(ids(&nothing), Vec::<String>::new(), "a range that ends before it starts matches nothing");
    let selected: Value =
        app.get(&format!("/api/v1/orders/{}?fields=id,status", id(&placed[0])), token).await.json().await.unwrap();
    assert_eq!(selected, json!({"id": placed[0]["id"], "status": "pending"}));
}

/// A status the code does not know is a broken row, answered as an opaque 500, never read as
/// some default status (a cancel must not act on it).
async fn an_unknown_stored_status_is_an_internal_error_not_a_default(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 5})).await;
    let order: Value = app.place_order(&customer, &[(&id(&product), 2)]).await.json().await.unwrap();
    app.force_order_status(&id(&order), "shipped").await;

    let path = format!("/api/v1/orders/{}", id(&order));
    assert_problem(
        app.get(&path, Some(&customer.access_token)).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    let cancel = app.post_json(&format!("{path}/cancel"), Some(&customer.access_token), &json!({})).await;
    assert_problem(cancel, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    assert_eq!(app.stock_of(&id(&product)).await, 3, "nothing was given back");
}

/// A write answers with exactly the bytes a GET of the order sends, and the same `ETag`:
/// placing and cancelling render the order as reading it does, escapes and all.
async fn placing_and_cancelling_answer_the_bytes_a_read_sends(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let name = "Mug \"Deluxe\" ☕ \\ </script>";
    let mug = app.create_product(&admin, json!({"name": name, "unit_price": 1250, "stock": 10})).await;
    let token = Some(customer.access_token.as_str());

    let placed = app.place_order(&customer, &[(&id(&mug), 2)]).await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let location = placed.headers()["location"].to_str().unwrap().to_owned();
    let placed_etag = placed.headers()["etag"].clone();
    let placed = placed.bytes().await.unwrap();
    let read = app.get(&location, token).await;
    assert_eq!(read.headers()["etag"], placed_etag);
    assert_eq!(read.bytes().await.unwrap(), placed, "the placed order's bytes");

    let cancelled = app.send_json(Method::POST, &format!("{location}/cancel"), token, &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled_etag = cancelled.headers()["etag"].clone();
    let cancelled = cancelled.bytes().await.unwrap();
    let read = app.get(&location, token).await;
    assert_eq!(read.headers()["etag"], cancelled_etag);
    assert_eq!(read.bytes().await.unwrap(), cancelled, "the cancelled order's bytes");
}

/// Every order in a list carries its own items, on the first read of the page and on the
/// reads after it (which take checked items from memory).
async fn a_listed_order_always_carries_its_own_items(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let token = Some(customer.access_token.as_str());
    let mut placed = Vec::new();
    for (name, quantity) in [("Mug", 1), ("Pen", 2), ("Cup", 3)] {
        let product = app.create_product(&admin, json!({"name": name, "stock": 10})).await;
        let order: Value = app.place_order(&customer, &[(&id(&product), quantity)]).await.json().await.unwrap();
        placed.push(order);
    }
    for _ in 0..3 {
        let page: Value = app.get("/api/v1/orders?limit=10", token).await.json().await.unwrap();
        let listed = page["data"].as_array().unwrap();
        assert_eq!(listed.len(), placed.len());
        for order in &placed {
            let found = listed.iter().find(|listed| listed["id"] == order["id"]).unwrap();
            assert_eq!(found["items"], order["items"], "order {}", order["id"]);
        }
    }
}

/// A page read again serves each order as it is now: an order that changed since the page was
/// last read is listed at its new version, as a read of it answers, and the others as before.
async fn a_page_read_again_lists_each_order_as_it_is_now(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let token = Some(customer.access_token.as_str());
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let kept: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    let changed: Value = app.place_order(&customer, &[(&id(&product), 2)]).await.json().await.unwrap();
    let listed = async || -> Vec<Value> {
        let page: Value = app.get("/api/v1/orders?limit=10", token).await.json().await.unwrap();
        page["data"].as_array().unwrap().clone()
    };
    let before = listed().await;
    assert_eq!(listed().await, before, "a page read twice");

    let path = format!("/api/v1/orders/{}", id(&changed));
    let cancelled = app.post_json(&format!("{path}/cancel"), token, &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let now: Value = app.get(&path, token).await.json().await.unwrap();
    assert_eq!((now["status"].as_str(), now["version"].as_i64()), (Some("cancelled"), Some(2)));

    let after = listed().await;
    assert_eq!(after.len(), 2);
    assert_eq!(after.iter().find(|order| order["id"] == changed["id"]), Some(&now), "the changed order, as read");
    let unchanged = |page: &[Value]| page.iter().find(|order| order["id"] == kept["id"]).cloned();
    assert_eq!(unchanged(&after), unchanged(&before), "the other order, as before");
    assert_eq!(unchanged(&after).as_ref(), Some(&kept), "as placed");
}

crate::on_every_backend!(
    an_unknown_stored_status_is_an_internal_error_not_a_default,
    a_listed_order_always_carries_its_own_items,
    a_page_read_again_lists_each_order_as_it_is_now,
    placing_and_cancelling_answer_the_bytes_a_read_sends,
    placing_an_order_snapshots_prices_and_reserves_stock,
    order_creation_never_oversells_under_concurrency,
    bad_orders_are_rejected_naming_the_item_and_change_nothing,
    a_failed_line_rolls_back_the_whole_order,
    a_customer_cannot_see_list_or_cancel_another_customers_order,
    cancelling_returns_stock_once_and_only_from_pending,
    the_order_list_filters_by_status_and_time_and_pages,
);

/// Orders written before items moved into `orders.items` (migration 5) read, list and cancel
/// as before: the upgrade copies every item, in its position.
async fn orders_placed_before_the_items_moved_keep_them(backend: Backend) {
    use orderly::db::Database;

    let (user_id, product_id, order_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // The second item names a product that no longer exists.
    let gone_id = Uuid::now_v7();
    let at = chrono::Utc::now();
    let prepare = async |db: &Database| {
        let insert = |table: &str, columns: &[&str], values| insert_row(db, table, columns, values);
        insert_user_row(db, user_id, at).await;
        let product_columns = [
            "id",
            "sku",
            "name",
            "description",
            "unit_price",
            "currency",
            "stock",
            "active",
            "version",
            "created_at",
            "updated_at",
        ];
        let product = vec![
            product_id.into(),
            "EARLY-1".into(),
            "Lamp".into(),
            "".into(),
            500i64.into(),
            "EUR".into(),
            7i64.into(),
            true.into(),
            1i64.into(),
            at.into(),
            at.into(),
        ];
        insert("products", &product_columns, product).await.unwrap();
        let order_columns = ["id", "user_id", "status", "currency", "total", "version", "created_at", "updated_at"];
        let order = vec![
            order_id.into(),
            user_id.into(),
            "pending".into(),
            "EUR".into(),
            1700i64.into(),
            1i64.into(),
            at.into(),
            at.into(),
        ];
        insert("orders", &order_columns, order).await.unwrap();
        let item_columns =
            ["order_id", "position", "product_id", "sku", "name", "unit_price", "quantity", "line_total"];
        // Written out of position order: the copy must follow `position`, not insertion.
        for (position, product, sku, quantity, line_total) in
            [(1i32, gone_id, "GONE-1", 1i64, 200i64), (0, product_id, "EARLY-1", 3, 1500)]
        {
            let item = vec![
                order_id.into(),
                position.into(),
                product.into(),
                sku.into(),
                "Item".into(),
                (line_total / quantity).into(),
                quantity.into(),
                line_total.into(),
            ];
            insert("order_items", &item_columns, item).await.unwrap();
        }
    };
    let Some(app) = TestApp::spawn_after_migration(backend, 4, prepare, &[]).await else { return };
    let admin = app.admin().await;
    let token = Some(admin.access_token.as_str());

    let expected_items = json!([
        {"product_id": product_id, "sku": "EARLY-1", "name": "Item", "unit_price": 500, "quantity": 3, "line_total": 1500},
        {"product_id": gone_id, "sku": "GONE-1", "name": "Item", "unit_price": 200, "quantity": 1, "line_total": 200},
    ]);
    let order: Value = app.get(&format!("/api/v1/orders/{order_id}"), token).await.json().await.unwrap();
    assert_eq!(order["items"], expected_items);
    assert_eq!(order["total"], 1700);
    let listed: Value = app.get(&format!("/api/v1/orders?user_id={user_id}"), token).await.json().await.unwrap();
    assert_eq!(listed["data"][0]["items"], expected_items);

    let cancelled = app.send_json(Method::POST, &format!("/api/v1/orders/{order_id}/cancel"), token, &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(app.stock_of(&product_id.to_string()).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_orders_placed_before_the_items_moved_keep_them() {
    orders_placed_before_the_items_moved_keep_them(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_orders_placed_before_the_items_moved_keep_them() {
    orders_placed_before_the_items_moved_keep_them(Backend::Postgres).await;
}
