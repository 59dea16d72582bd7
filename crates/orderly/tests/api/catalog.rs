//! Products: admin writes, public reads, filters, sorts, ETags and preconditions.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, error_fields};

async fn an_admin_creates_a_product_that_anyone_can_read(app: TestApp) {
    let admin = app.admin().await;
    let response = app
        .post_json(
            "/api/v1/products",
            Some(&admin.access_token),
            &json!({"sku": "MUG-1", "name": "Mug", "unit_price": 1250, "currency": "EUR", "stock": 7}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let product: Value = response.json().await.unwrap();
    assert_eq!(product["currency"], "EUR");
    assert_eq!(product["active"], true);
    assert_eq!(product["description"], "");
    assert_eq!(product["version"], 1);

    let read = app.get(&location, None).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["cache-control"], "public, max-age=60");
    assert!(read.headers()["vary"].to_str().unwrap().contains("Accept-Encoding"));
    assert_eq!(read.json::<Value>().await.unwrap(), product);
}

async fn only_admins_write_the_catalog(app: TestApp) {
    let customer = app.customer().await;
    let body = json!({"sku": "X-1", "name": "X", "unit_price": 1, "currency": "USD", "stock": 1});
    assert_problem(app.post_json("/api/v1/products", None, &body).await, StatusCode::UNAUTHORIZED, "unauthorized")
        .await;
    assert_problem(
        app.post_json("/api/v1/products", Some(&customer.access_token), &body).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let listed: Value = app.get("/api/v1/products", None).await.json().await.unwrap();
    assert!(listed["data"].as_array().unwrap().is_empty(), "nothing was created");
}

async fn a_duplicate_sku_is_a_conflict(app: TestApp) {
    let admin = app.admin().await;
    app.create_product(&admin, json!({"sku": "DUP-1"})).await;
    let response = app
        .post_json(
            "/api/v1/products",
            Some(&admin.access_token),
            &json!({"sku": "DUP-1", "name": "Again", "unit_price": 1, "currency": "USD", "stock": 1}),
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT, "sku_taken").await;

    let other = app.create_product(&admin, json!({"sku": "DUP-2"})).await;
    let path = format!("/api/v1/products/{}", other["id"].as_str().unwrap());
    let rename = app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"sku": "DUP-1"})).await;
    assert_problem(rename, StatusCode::CONFLICT, "sku_taken").await;
}

async fn product_writes_reject_every_bad_input_and_name_each_field(app: TestApp) {
    let admin = app.admin().await;
    let valid = json!({"sku": "OK-1", "name": "Fine", "unit_price": 100, "currency": "USD", "stock": 1});
    let with = |changes: Value| {
        let mut body = valid.clone();
        for (key, value) in changes.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["currency", "name", "sku", "stock", "unit_price"]),
        (with(json!({"sku": "has space"})), vec!["sku"]),
        (with(json!({"sku": ""})), vec!["sku"]),
        (with(json!({"name": ""})), vec!["name"]),
        (with(json!({"name": "n".repeat(201)})), vec!["name"]),
        (with(json!({"description": "d".repeat(2001)})), vec!["description"]),
        (with(json!({"unit_price": -1})), vec!["unit_price"]),
        (with(json!({"unit_price": 10.5})), vec!["unit_price"]),
        (with(json!({"unit_price": "100"})), vec!["unit_price"]),
        (with(json!({"unit_price": 1_000_000_000_001_i64})), vec!["unit_price"]),
        (with(json!({"currency": "XXX"})), vec!["currency"]),
        (with(json!({"currency": "US"})), vec!["currency"]),
        (with(json!({"currency": "usd"})), vec!["currency"]),
        (with(json!({"stock": -5})), vec!["stock"]),
        (with(json!({"stock": 1e20})), vec!["stock"]),
        (with(json!({"active": "yes"})), vec!["active"]),
        (with(json!({"id": "mine", "version": 7, "created_at": "now"})), vec!["created_at", "id", "version"]),
        (with(json!({"sku": null})), vec!["sku"]),
    ];
    for (body, fields) in &cases {
        let response = app.post_json("/api/v1/products", Some(&admin.access_token), body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(&error_fields(&problem), fields, "body {body}");
    }
    let product = app.create_product(&admin, json!({})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    for (body, fields) in [
        (json!({"stock": -1, "price": 5}), vec!["price", "stock"]),
        (json!({"name": null}), vec!["name"]),
        (json!({"version": 3}), vec!["version"]),
    ] {
        let response = app.send_json(Method::PATCH, &path, Some(&admin.access_token), &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(error_fields(&problem), fields, "patch {body}");
    }
    let unchanged: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(unchanged, product, "rejected patches change nothing");
}

async fn the_product_list_filters_and_sorts(app: TestApp) {
    let admin = app.admin().await;
    let cheap = app.create_product(&admin, json!({"name": "Cheap Blue Mug", "unit_price": 500})).await;
    let mid = app.create_product(&admin, json!({"name": "Red mug", "unit_price": 1500, "currency": "EUR"})).await;
    let dear = app.create_product(&admin, json!({"name": "Gold watch", "unit_price": 90000})).await;
    let archived = app.create_product(&admin, json!({"name": "Old mug", "unit_price": 1500, "active": false})).await;
    let ids = |list: &Value| -> Vec<String> {
        list["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
    };
    let id = |p: &Value| p["id"].as_str().unwrap().to_owned();
    let list = |query: &str| {
        let app = &app;
        let path = format!("/api/v1/products{query}");
        async move {
            let response = app.get(&path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };

    assert_eq!(ids(&list("").await), [id(&archived), id(&dear), id(&mid), id(&cheap)], "newest first by default");
    assert_eq!(ids(&list("?sort=created_at").await), [id(&cheap), id(&mid), id(&dear), id(&archived)]);
    // Equal prices are ordered by id, the tie-breaker.
    assert_eq!(ids(&list("?sort=unit_price").await), [id(&cheap), id(&mid), id(&archived), id(&dear)]);
    assert_eq!(ids(&list("?sort=-unit_price").await), [id(&dear), id(&archived), id(&mid), id(&cheap)]);
    assert_eq!(ids(&list("?active=false").await), [id(&archived)]);
    assert_eq!(ids(&list("?currency=EUR").await), [id(&mid)]);
    assert_eq!(ids(&list("?min_price=1000&max_price=2000&sort=created_at").await), [id(&mid), id(&archived)]);
    assert_eq!(ids(&list("?q=MUG&active=true&sort=created_at").await), [id(&cheap), id(&mid)]);
    assert_eq!(ids(&list("?q=%25").await), Vec::<String>::new(), "LIKE wildcards are literal");
    assert_eq!(ids(&list("?min_price=10&max_price=5").await), Vec::<String>::new(), "an empty range matches nothing");

    for bad in [
        "?active=yes",
        "?currency=ABC",
        "?min_price=-1",
        "?sort=name",
        "?limit=101",
        "?limit=abc",
        "?page=2",
        "?offset=10",
        "?q=",
    ] {
        let response = app.get(&format!("/api/v1/products{bad}"), None).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
}

async fn the_etag_changes_when_and_only_when_the_representation_changes(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({"name": "Lamp"})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let etag_of = |path: String| {
        let app = &app;
        async move { app.get(&path, None).await.headers()["etag"].to_str().unwrap().to_owned() }
    };

    let original = etag_of(path.clone()).await;
    assert!(original.starts_with('"') && original.ends_with('"'), "a strong ETag: {original}");
    assert_eq!(etag_of(path.clone()).await, original, "stable across reads");

    let noop = app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"name": "Lamp"})).await;
    assert_eq!(noop.status(), StatusCode::OK);
    assert_eq!(etag_of(path.clone()).await, original, "a no-op write changes nothing");

    let changed = app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"name": "Desk lamp"})).await;
    let written_etag = changed.headers()["etag"].to_str().unwrap().to_owned();
    let after = etag_of(path.clone()).await;
    assert_ne!(after, original, "a real change changes the ETag");
    assert_eq!(after, written_etag, "the write returns the new ETag");

    let selected = etag_of(format!("{path}?fields=id,name")).await;
    assert_ne!(selected, after, "a different representation has a different ETag");
    assert_eq!(
        etag_of(format!("{path}?fields=name,id")).await,
        selected,
        "the same selection is the same representation"
    );
}

async fn a_matching_if_none_match_gets_304_with_the_same_headers(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let first = app.get(&path, None).await;
    let etag = first.headers()["etag"].clone();

    let second = app.request(Method::GET, &path).header("if-none-match", etag.clone()).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
    for header in ["etag", "cache-control", "vary", "last-modified"] {
        assert_eq!(first.headers().get(header), second.headers().get(header), "{header}");
    }
    assert!(second.bytes().await.unwrap().is_empty());

    let stale = app.request(Method::GET, &path).header("if-none-match", "\"stale\"").send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    let customer = app.customer().await;
    let me = app.get("/api/v1/users/me", Some(&customer.access_token)).await;
    assert_eq!(me.headers()["cache-control"], "private, no-cache");
    assert!(me.headers()["vary"].to_str().unwrap().contains("Authorization"));
    let me_again = app
        .request(Method::GET, "/api/v1/users/me")
        .bearer_auth(&customer.access_token)
        .header("if-none-match", me.headers()["etag"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(me_again.status(), StatusCode::NOT_MODIFIED);
}

async fn a_stale_if_match_is_412_and_changes_nothing(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({"stock": 5})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let etag = app.get(&path, None).await.headers()["etag"].to_str().unwrap().to_owned();

    let first = app
        .request(Method::PATCH, &path)
        .bearer_auth(&admin.access_token)
        .header("if-match", &etag)
        .json(&json!({"stock": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let stale = app
        .request(Method::PATCH, &path)
        .bearer_auth(&admin.access_token)
        .header("if-match", &etag)
        .json(&json!({"stock": 99}))
        .send()
        .await
        .unwrap();
    assert_problem(stale, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    let stale_delete = app
        .request(Method::DELETE, &path)
        .bearer_auth(&admin.access_token)
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    assert_problem(stale_delete, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;

    let current: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(
        (current["stock"].as_i64(), current["version"].as_i64(), current["active"].as_bool()),
        (Some(6), Some(2), Some(true))
    );

    let customer = app.customer().await;
    let me_etag =
        app.get("/api/v1/users/me", Some(&customer.access_token)).await.headers()["etag"].to_str().unwrap().to_owned();
    let stale_me = app
        .request(Method::PATCH, "/api/v1/users/me")
        .bearer_auth(&customer.access_token)
        .header("if-match", "\"nope\"")
        .json(&json!({"name": "X"}))
        .send()
        .await
        .unwrap();
    assert_problem(stale_me, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    let fresh_me = app
        .request(Method::PATCH, "/api/v1/users/me")
        .bearer_auth(&customer.access_token)
        .header("if-match", &me_etag)
        .json(&json!({"name": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh_me.status(), StatusCode::OK);
}

async fn archiving_deactivates_a_product_and_is_idempotent(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    for _ in 0..2 {
        let response = app.request(Method::DELETE, &path).bearer_auth(&admin.access_token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let archived: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!((archived["active"].as_bool(), archived["version"].as_i64()), (Some(false), Some(2)));
    let missing = format!("/api/v1/products/{}", uuid::Uuid::now_v7());
    let response = app.request(Method::DELETE, &missing).bearer_auth(&admin.access_token).send().await.unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
}

async fn field_selection_keeps_only_the_named_fields(app: TestApp) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, json!({})).await;
    let path = format!("/api/v1/products/{}?fields=name,id", product["id"].as_str().unwrap());
    let selected: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(selected, json!({"id": product["id"], "name": product["name"]}));

    let list: Value = app.get("/api/v1/products?fields=sku", None).await.json().await.unwrap();
    assert_eq!(list["data"][0], json!({"sku": product["sku"]}));
    assert_eq!(list["has_more"], false, "the envelope is kept");

    for bad in ["?fields=id,secret", "?fields=", "?fields=id,,name"] {
        let response = app.get(&format!("/api/v1/products/{}{bad}", product["id"].as_str().unwrap()), None).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
}

async fn ids_that_name_nothing_are_404(app: TestApp) {
    for path in [
        "/api/v1/products/not-a-uuid",
        "/api/v1/products/01234567-89AB-CDEF-0123-456789ABCDEF",
        "/api/v1/products/00000000-0000-0000-0000-000000000000",
    ] {
        assert_problem(app.get(path, None).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

crate::on_every_backend!(
    an_admin_creates_a_product_that_anyone_can_read,
    only_admins_write_the_catalog,
    a_duplicate_sku_is_a_conflict,
    product_writes_reject_every_bad_input_and_name_each_field,
    the_product_list_filters_and_sorts,
    the_etag_changes_when_and_only_when_the_representation_changes,
    a_matching_if_none_match_gets_304_with_the_same_headers,
    a_stale_if_match_is_412_and_changes_nothing,
    archiving_deactivates_a_product_and_is_idempotent,
    field_selection_keeps_only_the_named_fields,
    ids_that_name_nothing_are_404,
);
