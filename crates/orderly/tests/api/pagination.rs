//! Keyset pagination: completeness under concurrent inserts, tamper-evident cursors bound to
//! their query, and the `Link` header.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

async fn walking_all_pages_during_inserts_returns_every_existing_row_exactly_once(app: TestApp) {
    let admin = app.admin().await;
    let mut existing = HashSet::new();
    for i in 0..45 {
        // Several products share a price so the id tie-breaker is exercised.
        let product = app.create_product(&admin, json!({"unit_price": (i % 5) * 100})).await;
        existing.insert(product["id"].as_str().unwrap().to_owned());
    }

    for sort in ["-created_at", "created_at", "unit_price", "-unit_price"] {
        let stop = new_stop_flag();
        let inserter = {
            let (client, base, token, stop) =
                (app.client.clone(), app.address.clone(), admin.access_token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut inserted = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"sku": format!("NEW-{}", uuid::Uuid::now_v7().simple()), "name": "New", "unit_price": 200, "currency": "USD", "stock": 1});
                    let response = client
                        .post(format!("{base}/api/v1/products"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                    inserted += 1;
                }
                inserted
            })
        };

        let mut seen: Vec<String> = Vec::new();
        let mut path = format!("/api/v1/products?limit=7&sort={sort}");
        loop {
            let response = app.get(&path, None).await;
            assert_eq!(response.status(), StatusCode::OK);
            let link = response.headers().get("link").map(|l| l.to_str().unwrap().to_owned());
            let page: Value = response.json().await.unwrap();
            seen.extend(page["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(_) => {
                    assert_eq!(page["has_more"], true);
                    let link = link.expect("a next page has a Link header");
                    let target = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
                    assert!(link.ends_with("rel=\"next\""));
                    path = target;
                }
                None => {
                    assert_eq!(page["has_more"], false);
                    assert!(link.is_none());
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let inserted = inserter.await.unwrap();
        assert!(inserted > 0, "rows were inserted while paging ({sort})");

        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no row appears twice ({sort})");
        for id in &existing {
            assert!(unique.contains(id), "row {id} that existed at the start was missed ({sort})");
        }
    }
}

fn new_stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

async fn a_cursor_is_tamper_evident_and_bound_to_its_filters_and_sort(app: TestApp) {
    let admin = app.admin().await;
    for _ in 0..3 {
        app.create_product(&admin, json!({})).await;
    }
    let page: Value = app.get("/api/v1/products?limit=1&active=true", None).await.json().await.unwrap();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();

    let next = app.get(&format!("/api/v1/products?limit=1&active=true&cursor={cursor}"), None).await;
    assert_eq!(next.status(), StatusCode::OK);
    let limit_may_change = app.get(&format!("/api/v1/products?limit=2&active=true&cursor={cursor}"), None).await;
    assert_eq!(limit_may_change.status(), StatusCode::OK);

    let mut tampered = cursor.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for path in [
        format!("/api/v1/products?limit=1&active=true&cursor={tampered}"),
        "/api/v1/products?cursor=garbage".to_owned(),
        format!("/api/v1/products?limit=1&active=false&cursor={cursor}"),
        format!("/api/v1/products?limit=1&active=true&sort=unit_price&cursor={cursor}"),
        format!("/api/v1/users?cursor={cursor}"),
    ] {
        let token = if path.contains("/users") { Some(admin.access_token.as_str()) } else { None };
        assert_problem(app.get(&path, token).await, StatusCode::BAD_REQUEST, "invalid_cursor").await;
    }
}

async fn the_page_size_defaults_to_20_and_caps_at_100(app: TestApp) {
    let admin = app.admin().await;
    for _ in 0..25 {
        app.create_product(&admin, json!({})).await;
    }
    let page: Value = app.get("/api/v1/products", None).await.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 20);
    let page: Value = app.get("/api/v1/products?limit=100", None).await.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 25);
    assert_eq!(page["next_cursor"], Value::Null);
}

crate::on_every_backend!(
    walking_all_pages_during_inserts_returns_every_existing_row_exactly_once,
    a_cursor_is_tamper_evident_and_bound_to_its_filters_and_sort,
    the_page_size_defaults_to_20_and_caps_at_100,
);
