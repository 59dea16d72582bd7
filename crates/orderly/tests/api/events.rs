//! Events: every change an event type names has exactly one event, written with it; a change
//! that rolls back has none; `GET /events` serves them to admins; the relay publishes them all.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Credentials, TestApp, assert_problem, eventually, scrape_metrics};
use crate::payments::{id, pay, refund};

/// Every event of the app, oldest first, walking every page.
pub(crate) async fn all_events(app: &TestApp, admin: &Credentials, filters: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = format!("/api/v1/events?sort=created_at&limit=100{filters}");
    loop {
        let response = app.get(&path, Some(&admin.access_token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        events.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/events?sort=created_at&limit=100{filters}&cursor={cursor}");
            }
            None => return events,
        }
    }
}

/// The events about `object_id` (the `data.object.id`), oldest first.
fn about<'a>(events: &'a [Value], object_id: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["data"]["object"]["id"] == object_id).collect()
}

fn types(events: &[&Value]) -> Vec<String> {
    events.iter().map(|event| event["type"].as_str().unwrap().to_owned()).collect()
}

async fn every_change_records_one_event_with_the_resource_as_served(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10, "unit_price": 700})).await;

    let placed: Value = app.place_order(&customer, &[(&id(&product), 2)]).await.json().await.unwrap();
    let declined = pay(&app, &customer, &id(&placed), "pm_card_declined", "declined-1").await;
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    let paid = pay(&app, &customer, &id(&placed), "pm_card_visa", "paid-1").await;
    assert_eq!(paid.status(), StatusCode::CREATED);
    let payment: Value = paid.json().await.unwrap();
    let refunded = refund(&app, &admin, &id(&payment), Some(300), "refund-1").await;
    assert_eq!(refunded.status(), StatusCode::CREATED);
    let other: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    let cancel_path = format!("/api/v1/orders/{}/cancel", id(&other));
    let cancelled = app.post_json(&cancel_path, Some(&customer.access_token), &json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    // Cancelling again changes nothing, so it has no event.
    assert_eq!(app.post_json(&cancel_path, Some(&customer.access_token), &json!({})).await.status(), StatusCode::OK);

    let events = all_events(&app, &admin, "").await;
    assert_eq!(types(&about(&events, &customer.user_id)), ["user.created"]);
    assert_eq!(types(&about(&events, &id(&placed))), ["order.created", "order.paid"]);
    assert_eq!(types(&about(&events, &id(&other))), ["order.created", "order.cancelled"]);
    assert_eq!(types(&about(&events, &id(&payment))), ["payment.succeeded", "payment.refunded"]);
    let failed: Vec<&Value> = events.iter().filter(|event| event["type"] == "payment.failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["data"]["object"]["order_id"], id(&placed));
    assert_eq!(failed[0]["data"]["object"]["failure_code"], "card_declined");

    // Each object is the resource as its endpoint served it at that moment.
    let created = about(&events, &id(&placed))[0];
    assert_eq!(created["data"]["object"], placed);
    let paid_order: Value =
        app.get(&format!("/api/v1/orders/{}", id(&placed)), Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(about(&events, &id(&placed))[1]["data"]["object"], paid_order);
    assert_eq!(about(&events, &id(&payment))[0]["data"]["object"], payment);
    let after_refund: Value =
        app.get(&format!("/api/v1/payments/{}", id(&payment)), Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(about(&events, &id(&payment))[1]["data"]["object"], after_refund);
    assert_eq!(about(&events, &id(&payment))[1]["data"]["object"]["refunded_amount"], 300);
    let cancelled_order: Value = cancelled.json().await.unwrap();
    assert_eq!(about(&events, &id(&other))[1]["data"]["object"], cancelled_order);

    // The envelope: {id, type, created_at, data: {object}}, and GET /events/{id} serves the same.
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "type", "created_at", "data"]);
    let single = app.get(&format!("/api/v1/events/{}", id(created)), Some(&admin.access_token)).await;
    assert_eq!(single.status(), StatusCode::OK);
    assert!(single.headers().contains_key("etag"));
    assert_eq!(&single.json::<Value>().await.unwrap(), created);
}

async fn a_change_that_rolls_back_leaves_no_event(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let scarce = app.create_product(&admin, json!({"stock": 1})).await;
    let archived = app.create_product(&admin, json!({"stock": 5})).await;
    let archive = app.request(reqwest::Method::DELETE, &format!("/api/v1/products/{}", id(&archived)));
    assert!(archive.bearer_auth(&admin.access_token).send().await.unwrap().status().is_success());
    let before = all_events(&app, &admin, "").await.len();

    // Refused after stock was taken for the first line: the transaction rolls back whole.
    let refused = app.place_order(&customer, &[(&id(&archived), 1), (&id(&scarce), 1)]).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let refused = app.place_order(&customer, &[(&id(&scarce), 2)]).await;
    assert_problem(refused, StatusCode::CONFLICT, "insufficient_stock").await;
    // A registration that loses to an existing address.
    let again = json!({"email": customer.email, "password": "another-secret-1", "name": "Again"});
    assert_eq!(app.post_json("/api/v1/auth/register", None, &again).await.status(), StatusCode::CONFLICT);
    // A replayed order (same idempotency key) is one change, so one event.
    let keyed = |key: &'static str| {
        app.request(reqwest::Method::POST, "/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"product_id": id(&scarce), "quantity": 1}]}))
            .send()
    };
    let first = keyed("one-order").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let replay = keyed("one-order").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    let events = all_events(&app, &admin, "").await;
    assert_eq!(events.len(), before + 1, "only the keyed order happened: {events:#?}");
    assert_eq!(events.last().unwrap()["type"], "order.created");
}

async fn every_committed_change_of_a_concurrent_mix_has_exactly_one_event(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({"stock": 30, "unit_price": 100})).await;
    let customers: Vec<Credentials> = futures_util::future::join_all((0..4).map(|_| app.customer())).await;
    // Each customer places 15 orders of one unit against 30 in stock, paying one in three and
    // cancelling one in three as it goes: some are refused for stock, and roll back.
    let runs = customers.iter().enumerate().map(|(c, customer)| {
        let (app, product) = (&app, id(&product));
        async move {
            for n in 0..15 {
                let response = app.place_order(customer, &[(&product, 1)]).await;
                if response.status() != StatusCode::CREATED {
                    assert_eq!(response.status(), StatusCode::CONFLICT);
                    continue;
                }
                let order: Value = response.json().await.unwrap();
                match n % 3 {
                    0 => {
                        let key = format!("pay-{c}-{n}");
                        assert_eq!(pay(app, customer, &id(&order), "pm_card_visa", &key).await.status(), 201);
                    }
                    1 => {
                        let path = format!("/api/v1/orders/{}/cancel", id(&order));
                        assert_eq!(
                            app.post_json(&path, Some(&customer.access_token), &json!({})).await.status(),
                            StatusCode::OK
                        );
                    }
                    _ => {}
                }
            }
        }
    });
    futures_util::future::join_all(runs).await;

    let mut orders: Vec<Value> = Vec::new();
    let mut path = "/api/v1/orders?limit=100".to_owned();
    loop {
        let page: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
        orders.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/orders?limit=100&cursor={cursor}"),
            None => break,
        }
    }
    let holding = orders.iter().filter(|order| order["status"] != "cancelled").count();
    assert!(holding <= 30 && !orders.is_empty(), "{holding} orders hold stock");
    let events = all_events(&app, &admin, "").await;
    let mut by_order: HashMap<String, Vec<String>> = HashMap::new();
    for event in &events {
        let object = &event["data"]["object"];
        let order_id = match event["type"].as_str().unwrap() {
            "order.created" | "order.paid" | "order.cancelled" => object["id"].as_str().unwrap(),
            "payment.succeeded" | "payment.failed" | "payment.refunded" => object["order_id"].as_str().unwrap(),
            _ => continue,
        };
        by_order.entry(order_id.to_owned()).or_default().push(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_order.len(), orders.len(), "no event without its order");
    for order in &orders {
        let expected: &[&str] = match order["status"].as_str().unwrap() {
            "pending" => &["order.created"],
            "paid" => &["order.created", "payment.succeeded", "order.paid"],
            "cancelled" => &["order.created", "order.cancelled"],
            other => panic!("unexpected status {other}"),
        };
        assert_eq!(by_order[&id(order)], expected, "events of order {order}");
    }
}

async fn events_are_for_admins_filtered_and_paginated(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    for _ in 0..3 {
        assert_eq!(app.place_order(&customer, &[(&id(&product), 1)]).await.status(), StatusCode::CREATED);
    }
    assert_problem(app.get("/api/v1/events", Some(&customer.access_token)).await, StatusCode::FORBIDDEN, "forbidden")
        .await;
    assert_eq!(app.get("/api/v1/events", None).await.status(), StatusCode::UNAUTHORIZED);

    let created = all_events(&app, &admin, "&type=order.created").await;
    assert_eq!(created.len(), 3);
    assert!(created.iter().all(|event| event["type"] == "order.created"));
    let newest_first: Value =
        app.get("/api/v1/events?type=order.created&limit=2", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(newest_first["data"][0], created[2]);
    assert_eq!(newest_first["has_more"], true);
    let since = created[0]["created_at"].as_str().unwrap();
    let later = all_events(&app, &admin, &format!("&type=order.created&created_after={since}")).await;
    assert_eq!(later, created[1..]);
    let selected: Value =
        app.get("/api/v1/events?fields=id,type&limit=1", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(selected["data"][0].as_object().unwrap().len(), 2);

    let unknown = app.get("/api/v1/events?type=order.shipped", Some(&admin.access_token)).await;
    assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let missing = app.get(&format!("/api/v1/events/{}", uuid::Uuid::now_v7()), Some(&admin.access_token)).await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
}

async fn the_in_process_relay_publishes_every_event(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    for _ in 0..20 {
        assert_eq!(app.place_order(&customer, &[(&id(&product), 1)]).await.status(), StatusCode::CREATED);
    }
    let published = eventually(async || {
        let metrics = scrape_metrics(&app).await;
        metrics.get("orderly_events_published_total").copied().unwrap_or(0.0) >= 22.0
    })
    .await;
    assert!(published, "the relay publishes the 2 users' and 20 orders' events");
    let drained = eventually(async || {
        let metrics = scrape_metrics(&app).await;
        metrics.get("orderly_outbox_backlog") == Some(&0.0)
    })
    .await;
    assert!(drained, "the backlog gauge comes back to 0");
}

async fn published_events_are_swept_after_the_retention_period(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let old: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    let recent: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    let long_ago =
        (chrono::Utc::now() - chrono::TimeDelta::days(31)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    let old_event = about(&all_events(&app, &admin, "").await, &id(&old))[0]["id"].as_str().unwrap().to_owned();
    let sql = format!("UPDATE events SET created_at = '{long_ago}', published_at = '{long_ago}' WHERE id = ");
    let sql = match app.backend() {
        crate::helpers::Backend::Postgres => format!("{sql}'{old_event}'"),
        crate::helpers::Backend::Sqlite => format!("{sql}X'{}'", old_event.replace('-', "")),
    };
    app.execute_sql(&sql).await;
    // Another instance sweeps as it starts.
    let _sibling = app.spawn_sibling(&[]).await;
    let swept =
        eventually(async || all_events(&app, &admin, "").await.iter().all(|event| event["id"] != old_event.as_str()))
            .await;
    assert!(swept, "an event older than 30 days is swept");
    let events = all_events(&app, &admin, "").await;
    assert_eq!(types(&about(&events, &id(&recent))), ["order.created"], "younger events stay");
}

crate::on_every_backend!(
    published_events_are_swept_after_the_retention_period,
    every_change_records_one_event_with_the_resource_as_served,
    a_change_that_rolls_back_leaves_no_event,
    every_committed_change_of_a_concurrent_mix_has_exactly_one_event,
    events_are_for_admins_filtered_and_paginated,
    the_in_process_relay_publishes_every_event,
);
