//! Product and stats caches shared through Redis by several instances of one deployment: a
//! product update returned by one instance is never served stale by another, and the service
//! stays correct while Redis is flushed, killed and restarted.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Credentials, PrivateRedis, TestApp, redis_flags, redis_url, unique_redis_prefix};
use crate::on_every_backend_with_backend;

async fn product(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn set_price(app: &TestApp, admin: &Credentials, id: &str, price: i64) {
    let response = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&admin.access_token),
            &json!({"unit_price": price}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn an_update_on_one_instance_is_never_served_stale_by_another(backend: Backend) {
    let Some(redis_url) = redis_url() else { return };
    let prefix = unique_redis_prefix();
    let Some((a, b)) = TestApp::spawn_pair(backend, &redis_flags(&redis_url, &prefix)).await else { return };
    let admin = a.admin().await;
    let id = a.create_product(&admin, json!({"unit_price": 100})).await["id"].as_str().unwrap().to_owned();
    let mut redis = redis_connection(&redis_url).await;
    let entry = format!("{prefix}product:{id}");

    assert_eq!(product(&b, &id).await["unit_price"], 100);
    let cached: bool = redis::cmd("EXISTS").arg(&entry).query_async(&mut redis).await.unwrap();
    assert!(cached, "a read fills the shared cache");
    for price in 101..=120 {
        // Writes alternate between instances; each is read back through the other at once,
        // while a third reader keeps the cache warm.
        let (writer, reader) = if price % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let warm = async {
            for _ in 0..5 {
                product(reader, &id).await;
            }
        };
        tokio::join!(warm, set_price(writer, &admin, &id, price));
        assert_eq!(product(reader, &id).await["unit_price"], price, "read after the update returned");
        assert_eq!(product(writer, &id).await["unit_price"], price);
    }

    // Stock taken by an order shows at once on the other instance too.
    let customer = b.customer().await;
    assert_eq!(product(&a, &id).await["stock"], 10);
    assert_eq!(b.place_order(&customer, &[(&id, 3)]).await.status(), StatusCode::CREATED);
    assert_eq!(product(&a, &id).await["stock"], 7);

    // Both instances serve the same stats figures while they are fresh.
    let stats_a: Value = a.get("/api/v1/stats", Some(&admin.access_token)).await.json().await.unwrap();
    let stats_b: Value = b.get("/api/v1/stats", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(stats_a["generated_at"], stats_b["generated_at"], "one shared computation");
}

async fn with_redis_flushed_killed_and_restarted_reads_stay_fresh_and_nothing_fails(backend: Backend) {
    let Some(mut redis) = PrivateRedis::start() else { return };
    let prefix = unique_redis_prefix();
    let Some((a, b)) = TestApp::spawn_pair(backend, &redis_flags(&redis.url(), &prefix)).await else { return };
    let admin = a.admin().await;
    let id = a.create_product(&admin, json!({"unit_price": 100})).await["id"].as_str().unwrap().to_owned();
    assert_eq!(product(&b, &id).await["unit_price"], 100);

    let mut connection = redis_connection(&redis.url()).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut connection).await.unwrap();
    set_price(&a, &admin, &id, 200).await;
    assert_eq!(product(&b, &id).await["unit_price"], 200, "flushed: served from the database and refilled");

    redis.kill();
    for price in [300, 301] {
        set_price(&a, &admin, &id, price).await;
        assert_eq!(product(&b, &id).await["unit_price"], price, "down: every read goes to the database");
    }
    let customer = a.customer().await;
    assert_eq!(a.place_order(&customer, &[(&id, 1)]).await.status(), StatusCode::CREATED);
    assert_eq!(product(&b, &id).await["stock"], 9);
    assert_eq!(a.get("/api/v1/stats", Some(&admin.access_token)).await.status(), StatusCode::OK);

    redis.restart();
    let refilled = crate::helpers::eventually(async || {
        product(&b, &id).await;
        let mut connection = redis_connection(&redis.url()).await;
        redis::cmd("EXISTS").arg(format!("{prefix}product:{id}")).query_async::<bool>(&mut connection).await.unwrap()
    })
    .await;
    assert!(refilled, "the shared cache is used again once Redis is back");
    set_price(&b, &admin, &id, 400).await;
    assert_eq!(product(&a, &id).await["unit_price"], 400);
}

on_every_backend_with_backend!(
    an_update_on_one_instance_is_never_served_stale_by_another,
    with_redis_flushed_killed_and_restarted_reads_stay_fresh_and_nothing_fails,
);
