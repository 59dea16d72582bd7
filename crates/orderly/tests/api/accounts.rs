//! Registration, tokens, refresh rotation, users and API keys.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, error_fields};

async fn registration_creates_a_customer_with_a_normalised_email(app: TestApp) {
    let email = app.unique_email("Mixed.Case");
    let response = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": email.to_uppercase(), "password": "long enough", "name": "  Ada  "}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(user["email"], email.to_lowercase());
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["role"], "customer");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
}

async fn registering_a_taken_email_in_any_case_is_a_conflict(app: TestApp) {
    let email = app.unique_email("taken");
    app.register(&email, "long enough").await;

    let response = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": email.to_uppercase(), "password": "long enough", "name": "Twin"}),
        )
        .await;

    assert_problem(response, StatusCode::CONFLICT, "email_taken").await;
}

async fn registration_rejects_every_bad_input_and_names_each_field(app: TestApp) {
    let long = "x".repeat(129);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["email", "name", "password"]),
        (json!({"email": "not-an-email", "password": "long enough", "name": "A"}), vec!["email"]),
        (json!({"email": "a@example.com", "password": "short", "name": "A"}), vec!["password"]),
        (json!({"email": "a@example.com", "password": long, "name": "A"}), vec!["password"]),
        (json!({"email": "a@example.com", "password": "long enough", "name": ""}), vec!["name"]),
        (json!({"email": "a@example.com", "password": "long enough", "name": "n".repeat(101)}), vec!["name"]),
        (json!({"email": 5, "password": true, "name": null}), vec!["email", "name", "password"]),
        (json!({"email": "a@example.com", "password": "long enough", "name": "A", "role": "admin"}), vec!["role"]),
        (
            json!({"email": "a@example.com", "password": "long enough", "name": "A", "id": "x", "version": 9}),
            vec!["id", "version"],
        ),
    ];
    for (body, fields) in cases {
        let response = app.post_json("/api/v1/auth/register", None, &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(error_fields(&problem), fields, "body {body}");
    }
    for body in ["[]", "\"text\"", "42"] {
        let response = app
            .request(Method::POST, "/api/v1/auth/register")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    // Nothing was created by any of the rejected requests.
    let admin = app.admin().await;
    let users: Value = app.get("/api/v1/users?limit=100", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(users["data"].as_array().unwrap().len(), 1, "only the admin exists");
}

async fn the_token_endpoint_accepts_form_and_json_and_speaks_oauth_errors(app: TestApp) {
    let customer = app.customer().await;

    let json_login = app.post_json("/api/v1/auth/token", None, &json!({"grant_type": "password", "username": customer.email.to_uppercase(), "password": customer.password})).await;
    assert_eq!(json_login.status(), StatusCode::OK);
    assert_eq!(json_login.headers()["cache-control"], "no-store");
    let grant: Value = json_login.json().await.unwrap();
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 900);
    assert!(grant["refresh_token"].as_str().unwrap().starts_with("rt_"));

    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("grant_type", "password"), ("username", &customer.email), ("password", "wrong password")],
            "invalid_grant",
        ),
        (
            vec![("grant_type", "password"), ("username", "nobody@example.com"), ("password", "whatever1")],
            "invalid_grant",
        ),
        (vec![("grant_type", "password"), ("username", &customer.email)], "invalid_request"),
        (vec![("grant_type", "client_credentials")], "unsupported_grant_type"),
        (vec![], "invalid_request"),
        (vec![("grant_type", "refresh_token"), ("refresh_token", "rt_forged")], "invalid_grant"),
        (vec![("grant_type", "password"), ("grant_type", "password")], "invalid_request"),
    ];
    for (form, error) in cases {
        let response = app.request(Method::POST, "/api/v1/auth/token").form(&form).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{form:?}");
        assert!(body["error_description"].is_string());
    }
    let response = app
        .request(Method::POST, "/api/v1/auth/token")
        .header("content-type", "text/plain")
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

async fn a_refresh_token_rotates_and_its_replay_revokes_the_whole_family(app: TestApp) {
    let customer = app.customer().await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.request(Method::POST, "/api/v1/auth/token")
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .unwrap()
        }
    };

    let first = refresh(customer.refresh_token.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    let rotated: Value = first.json().await.unwrap();
    let successor = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(successor, customer.refresh_token);
    assert_eq!(app.get("/api/v1/users/me", rotated["access_token"].as_str()).await.status(), StatusCode::OK);

    // The original token was used once already: presenting it again is a replay.
    let replay = refresh(customer.refresh_token.clone()).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(replay.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // The replay revoked the family, so even the legitimate successor is dead now.
    let after_replay = refresh(successor).await;
    assert_eq!(after_replay.status(), StatusCode::BAD_REQUEST);

    // Another login is a separate family and keeps working.
    let other = app.login(&customer.email, &customer.password).await;
    assert_eq!(refresh(other["refresh_token"].as_str().unwrap().to_owned()).await.status(), StatusCode::OK);
}

async fn logout_revokes_the_refresh_token_family(app: TestApp) {
    let customer = app.customer().await;
    let response = app.post_json("/api/v1/auth/logout", None, &json!({"refresh_token": customer.refresh_token})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let refreshed = app
        .request(Method::POST, "/api/v1/auth/token")
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &customer.refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::BAD_REQUEST);

    let unknown = app.post_json("/api/v1/auth/logout", None, &json!({"refresh_token": "rt_unknown"})).await;
    assert_eq!(unknown.status(), StatusCode::NO_CONTENT);
    let missing = app.post_json("/api/v1/auth/logout", None, &json!({"token": "x"})).await;
    let problem = assert_problem(missing, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["refresh_token", "token"]);
}

async fn access_tokens_are_signed_with_a_key_published_in_the_jwks(app: TestApp) {
    let customer = app.customer().await;
    let header_segment = customer.access_token.split('.').next().unwrap();
    use base64::Engine;
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header_segment).unwrap())
            .unwrap();
    assert_eq!(header["alg"], "EdDSA");

    let jwks: Value = app.get("/.well-known/jwks.json", None).await.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["kid"] == header["kid"] && k["crv"] == "Ed25519" && k["kty"] == "OKP"));
}

async fn protected_endpoints_demand_a_valid_bearer_credential(app: TestApp) {
    let customer = app.customer().await;
    let forged = format!("{}x", &customer.access_token[..customer.access_token.len() - 1]);
    let cases = [
        (None, false),
        (Some("Basic dXNlcjpwYXNz".to_owned()), true),
        (Some("Bearer".to_owned()), true),
        (Some(format!("Bearer {forged}")), true),
        (Some("Bearer sk_not_a_real_key".to_owned()), true),
        (Some("Bearer not.a.jwt".to_owned()), true),
    ];
    for (authorization, presented) in cases {
        let mut request = app.request(Method::GET, "/api/v1/users/me");
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer"), "{authorization:?}");
        assert_eq!(challenge.contains("invalid_token"), presented, "{authorization:?}: {challenge}");
        assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

async fn a_customer_can_read_and_rename_only_themselves(app: TestApp) {
    let customer = app.customer().await;
    let other = app.customer().await;

    let me: Value = app.get("/api/v1/users/me", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(me["email"], customer.email.as_str());

    let renamed = app
        .send_json(Method::PATCH, "/api/v1/users/me", Some(&customer.access_token), &json!({"name": "Renamed"}))
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!((renamed["name"].as_str(), renamed["version"].as_i64()), (Some("Renamed"), Some(2)));

    let escalate =
        app.send_json(Method::PATCH, "/api/v1/users/me", Some(&customer.access_token), &json!({"role": "admin"})).await;
    assert_problem(escalate, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let path = format!("/api/v1/users/{}", other.user_id);
    assert_problem(app.get(&path, Some(&customer.access_token)).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(app.get("/api/v1/users", Some(&customer.access_token)).await, StatusCode::FORBIDDEN, "forbidden")
        .await;
    let me_again: Value = app.get("/api/v1/users/me", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(me_again["role"], "customer");
}

async fn an_admin_lists_filters_and_promotes_users(app: TestApp) {
    let admin = app.admin().await;
    let customer = app.customer().await;

    let customers: Value =
        app.get("/api/v1/users?role=customer", Some(&admin.access_token)).await.json().await.unwrap();
    let ids: Vec<&str> = customers["data"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [customer.user_id.as_str()]);

    let by_email = format!("/api/v1/users?email={}", customer.email.to_uppercase());
    let found: Value = app.get(&by_email, Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(found["data"][0]["id"], customer.user_id.as_str());

    let path = format!("/api/v1/users/{}", customer.user_id);
    let promoted = app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"role": "admin"})).await;
    assert_eq!(promoted.status(), StatusCode::OK);
    let relogin = app.login(&customer.email, &customer.password).await;
    assert_eq!(app.get("/api/v1/users", relogin["access_token"].as_str()).await.status(), StatusCode::OK);

    for bad in [
        "/api/v1/users?role=owner",
        "/api/v1/users?email=nope",
        "/api/v1/users?limit=0",
        "/api/v1/users?sort=name",
        "/api/v1/users?colour=red",
    ] {
        assert_problem(
            app.get(bad, Some(&admin.access_token)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let bad_role =
        app.send_json(Method::PATCH, &path, Some(&admin.access_token), &json!({"role": "root", "name": ""})).await;
    let problem = assert_problem(bad_role, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["name", "role"]);
    let missing = format!("/api/v1/users/{}", uuid::Uuid::now_v7());
    assert_problem(app.get(&missing, Some(&admin.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn an_api_key_is_shown_once_works_as_a_bearer_credential_and_can_be_revoked(app: TestApp) {
    let customer = app.customer().await;
    let other = app.customer().await;

    let created = app.post_json("/api/v1/api-keys", Some(&customer.access_token), &json!({"name": "deploys"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let key: Value = created.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_"));
    assert!(secret.starts_with(key["prefix"].as_str().unwrap()));

    let me: Value = app.get("/api/v1/users/me", Some(&secret)).await.json().await.unwrap();
    assert_eq!(me["id"], customer.user_id.as_str());

    let listed: Value = app.get("/api/v1/api-keys", Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0].get("secret").is_none(), "the secret is never shown again");
    let path = format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap());
    let fetched: Value = app.get(&path, Some(&customer.access_token)).await.json().await.unwrap();
    assert!(fetched.get("secret").is_none());

    // Another customer can neither see nor delete it.
    assert_problem(app.get(&path, Some(&other.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
    let foreign_delete = app.request(Method::DELETE, &path).bearer_auth(&other.access_token).send().await.unwrap();
    assert_problem(foreign_delete, StatusCode::NOT_FOUND, "not_found").await;
    let others: Value = app.get("/api/v1/api-keys", Some(&other.access_token)).await.json().await.unwrap();
    assert!(others["data"].as_array().unwrap().is_empty());

    let invalid =
        app.post_json("/api/v1/api-keys", Some(&customer.access_token), &json!({"name": " ", "scopes": []})).await;
    let problem = assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["name", "scopes"]);

    let deleted = app.request(Method::DELETE, &path).bearer_auth(&customer.access_token).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/api/v1/users/me", Some(&secret)).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

crate::on_every_backend!(
    registration_creates_a_customer_with_a_normalised_email,
    registering_a_taken_email_in_any_case_is_a_conflict,
    registration_rejects_every_bad_input_and_names_each_field,
    the_token_endpoint_accepts_form_and_json_and_speaks_oauth_errors,
    a_refresh_token_rotates_and_its_replay_revokes_the_whole_family,
    logout_revokes_the_refresh_token_family,
    access_tokens_are_signed_with_a_key_published_in_the_jwks,
    protected_endpoints_demand_a_valid_bearer_credential,
    a_customer_can_read_and_rename_only_themselves,
    an_admin_lists_filters_and_promotes_users,
    an_api_key_is_shown_once_works_as_a_bearer_credential_and_can_be_revoked,
);
