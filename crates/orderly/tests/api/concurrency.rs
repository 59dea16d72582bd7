//! Races: the database, not the application, decides who wins.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

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

crate::on_every_backend!(
    concurrent_registrations_of_one_email_create_exactly_one_account,
    concurrent_writes_with_the_same_if_match_let_exactly_one_through,
    concurrent_writes_without_preconditions_all_apply,
);
