//! Rate limits: tiers (anonymous per IP, user, API key, credential guard per IP and per
//! account), the IETF headers and 429, trusted proxies, and quotas shared through Redis,
//! including what happens while Redis is down.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem, scrape_metrics};
use crate::on_every_backend_with_backend;

/// `(policy, remaining, t)` items of a `RateLimit` header, in order.
fn rate_limit(response: &reqwest::Response) -> Vec<(String, u32, u64)> {
    let values: Vec<&str> =
        response.headers().get_all("ratelimit").iter().map(|value| value.to_str().unwrap()).collect();
    values
        .join(", ")
        .split(", ")
        .filter(|item| !item.is_empty())
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let param = |key: &str, parts: &[&str]| -> u64 {
                parts.iter().find_map(|p| p.strip_prefix(&format!("{key}="))).unwrap().parse().unwrap()
            };
            let rest: Vec<&str> = parts.collect();
            (name, param("r", &rest) as u32, param("t", &rest))
        })
        .collect()
}

fn policy_header(response: &reqwest::Response) -> Vec<String> {
    response.headers().get_all("ratelimit-policy").iter().map(|value| value.to_str().unwrap().to_owned()).collect()
}

async fn get_as(app: &TestApp, path: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app.request(Method::GET, path);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.unwrap()
}

async fn assert_rate_limited(response: reqwest::Response, policy: &str) {
    assert_refusal_headers(&response, policy);
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

fn assert_refusal_headers(response: &reqwest::Response, policy: &str) {
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let state = rate_limit(response);
    let refusing = state.iter().find(|(name, ..)| name == policy).unwrap_or_else(|| panic!("{policy} in {state:?}"));
    assert_eq!(refusing.1, 0, "nothing remains: {state:?}");
    assert!(retry_after >= 1 && retry_after >= refusing.2, "Retry-After {retry_after} is never earlier than t");
}

/// A refused token request answers as the token endpoint answers every error (RFC 6749 §5.2:
/// an `error` member), so that an OAuth 2.0 client reads it as a refusal, not as a token.
async fn assert_token_refused(response: reqwest::Response, policy: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_refusal_headers(&response, policy);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(body["error_description"].as_str().is_some_and(|text| text.contains("retry in")), "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
}

async fn anonymous_callers_get_their_quota_per_ip_then_429(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--rate-limit-anonymous=3/60s"]).await else { return };
    for remaining in [2, 1, 0] {
        let response = app.get("/api/v1/products", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(policy_header(&response), [r#""anonymous";q=3;w=60"#]);
        let state = rate_limit(&response);
        assert_eq!(state.len(), 1);
        let (name, left, reset) = &state[0];
        assert_eq!((name.as_str(), *left), ("anonymous", remaining));
        // One request comes back every 20 s; t is until the bucket is full again.
        assert!(*reset <= 20 * u64::from(3 - remaining) && *reset > 20 * u64::from(2 - remaining), "t = {reset}");
    }
    assert_rate_limited(app.get("/api/v1/products", None).await, "anonymous").await;
    // Without trusted proxies a client cannot claim another address.
    assert_rate_limited(get_as(&app, "/api/v1/products", Some("198.51.100.1")).await, "anonymous").await;
    // Operations endpoints are never limited and carry no rate-limit headers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers().get("ratelimit").is_none(), "{path}");
    }
    let metrics = scrape_metrics(&app).await;
    assert!(metrics.get(r#"ratelimit_rejections_total{policy="anonymous"}"#).is_some_and(|n| *n >= 2.0), "{metrics:?}");
}

async fn trusted_proxies_name_the_client_and_nobody_else_does(backend: Backend) {
    let Some(app) =
        TestApp::spawn_with(backend, &["--rate-limit-anonymous=2/60s", "--trusted-proxies=127.0.0.1, 10.0.0.0/8"])
            .await
    else {
        return;
    };
    for _ in 0..2 {
        assert_eq!(get_as(&app, "/api/v1/products", Some("198.51.100.1")).await.status(), StatusCode::OK);
    }
    assert_rate_limited(get_as(&app, "/api/v1/products", Some("198.51.100.1")).await, "anonymous").await;
    // Another client behind the same proxy has its own quota.
    assert_eq!(get_as(&app, "/api/v1/products", Some("198.51.100.2")).await.status(), StatusCode::OK);
    // A client that forges an entry left of what the proxies appended is still itself,
    // however many trusted hops follow.
    let forged = get_as(&app, "/api/v1/products", Some("198.51.100.99, 198.51.100.1, 10.1.1.1")).await;
    assert_rate_limited(forged, "anonymous").await;
}

async fn authenticated_callers_are_limited_per_user_and_per_key(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--rate-limit-user=3/60s", "--rate-limit-api-key=2/60s"]).await
    else {
        return;
    };
    let alice = app.customer().await;
    let bob = app.customer().await;
    let created = app.post_json("/api/v1/api-keys", Some(&alice.access_token), &json!({"name": "ci"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(rate_limit(&created)[0].0, "user");
    let key: Value = created.json().await.unwrap();
    let key = key["secret"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let response = app.get("/api/v1/users/me", Some(&alice.access_token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(policy_header(&response), [r#""user";q=3;w=60"#]);
    }
    assert_rate_limited(app.get("/api/v1/users/me", Some(&alice.access_token)).await, "user").await;
    // Another user, and the same user's API key, have quotas of their own.
    assert_eq!(app.get("/api/v1/users/me", Some(&bob.access_token)).await.status(), StatusCode::OK);
    for _ in 0..2 {
        let response = app.get("/api/v1/users/me", Some(&key)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(policy_header(&response), [r#""api_key";q=2;w=60"#]);
    }
    assert_rate_limited(app.get("/api/v1/users/me", Some(&key)).await, "api_key").await;
    // A bad credential spends the anonymous per-IP quota, not anyone's user quota.
    let forged = app.get("/api/v1/users/me", Some("not-a-token")).await;
    assert_eq!(rate_limit(&forged)[0].0, "anonymous");
    assert_problem(forged, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn password_attempts_are_guarded_per_account_and_credential_calls_per_ip(backend: Backend) {
    let Some(app) =
        TestApp::spawn_with(backend, &["--rate-limit-credentials=7/60s", "--rate-limit-account-login=3/60s"]).await
    else {
        return;
    };
    let login = async |email: &str, password: &str| {
        app.request(Method::POST, "/api/v1/auth/token")
            .form(&[("grant_type", "password"), ("username", email), ("password", password)])
            .send()
            .await
            .unwrap()
    };
    let victim = app.unique_email("victim");
    app.register(&victim, "right-password-1").await;
    for remaining in [2, 1, 0] {
        let guessed = login(&victim, "wrong-password").await;
        assert_eq!(guessed.status(), StatusCode::BAD_REQUEST);
        let state = rate_limit(&guessed);
        let names: Vec<&str> = state.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, ["account_login", "credentials"], "both guards are reported");
        assert_eq!(state[0].1, remaining);
        assert_eq!(policy_header(&guessed), [r#""account_login";q=3;w=60"#, r#""credentials";q=7;w=60"#]);
    }
    // Past the per-account guard even the right password waits, and the address is not
    // matched case-sensitively.
    assert_token_refused(login(&victim.to_uppercase(), "right-password-1").await, "account_login").await;
    // Other accounts are not locked by it.
    let other = app.unique_email("other");
    app.register(&other, "other-password-1").await;
    assert_eq!(login(&other, "other-password-1").await.status(), StatusCode::OK);
    // Seven credential calls from this address so far: the per-IP guard now refuses all.
    assert_token_refused(login(&other, "other-password-1").await, "credentials").await;
    let registering = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": app.unique_email("x"), "password": "p4ssword-ok", "name": "X"}),
        )
        .await;
    assert_rate_limited(registering, "credentials").await;
}

on_every_backend_with_backend!(
    anonymous_callers_get_their_quota_per_ip_then_429,
    trusted_proxies_name_the_client_and_nobody_else_does,
    authenticated_callers_are_limited_per_user_and_per_key,
    password_attempts_are_guarded_per_account_and_credential_calls_per_ip,
);

/// Quotas shared through Redis by several instances.
mod shared {
    use reqwest::StatusCode;

    use super::{assert_rate_limited, get_as, rate_limit};
    use crate::helpers::{Backend, PrivateRedis, TestApp, eventually, redis_flags, redis_url, unique_redis_prefix};
    use crate::on_every_backend_with_backend;

    /// Two instances of one deployment sharing Redis under a prefix of their own.
    async fn two_instances(backend: Backend, redis_url: &str, extra: &[&str]) -> Option<(TestApp, TestApp)> {
        let mut flags = redis_flags(redis_url, &unique_redis_prefix());
        flags.extend(extra.iter().map(|flag| flag.to_string()));
        TestApp::spawn_pair(backend, &flags).await
    }

    async fn with_redis_a_quota_is_global_across_instances(backend: Backend) {
        let Some(redis) = redis_url() else { return };
        let Some((a, b)) = two_instances(backend, &redis, &["--rate-limit-anonymous=4/60s"]).await else { return };
        for (remaining, app) in [(3, &a), (2, &b), (1, &a), (0, &b)] {
            let response = app.get("/api/v1/products", None).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(rate_limit(&response)[0].1, remaining, "one bucket for both instances");
        }
        assert_rate_limited(a.get("/api/v1/products", None).await, "anonymous").await;
        assert_rate_limited(b.get("/api/v1/products", None).await, "anonymous").await;
    }

    /// Redis is killed and restarted under two instances: while it is down each instance
    /// limits on its own (never a 500, and readiness holds); once it is back the quota is
    /// global again without a restart.
    async fn while_redis_is_down_limits_hold_per_instance_and_come_back_global(backend: Backend) {
        let Some(mut redis) = PrivateRedis::start() else { return };
        let flags = ["--rate-limit-anonymous=3/60s", "--trusted-proxies=127.0.0.1", "--redis-timeout=200ms"];
        let Some((a, b)) = two_instances(backend, &redis.url(), &flags).await else { return };
        // Each phase is a client of its own, so buckets from earlier phases do not interfere.
        let shared_quota = async |client: &str| {
            for app in [&a, &b, &a] {
                assert_eq!(get_as(app, "/api/v1/products", Some(client)).await.status(), StatusCode::OK);
            }
            assert_rate_limited(get_as(&b, "/api/v1/products", Some(client)).await, "anonymous").await;
        };
        shared_quota("198.51.100.1").await;

        redis.kill();
        for app in [&a, &b] {
            for _ in 0..3 {
                let response = get_as(app, "/api/v1/products", Some("198.51.100.2")).await;
                assert_eq!(response.status(), StatusCode::OK, "per-instance quota while Redis is down");
            }
            assert_rate_limited(get_as(app, "/api/v1/products", Some("198.51.100.2")).await, "anonymous").await;
            let ready = app.get("/readyz", None).await;
            assert_eq!(ready.status(), StatusCode::OK, "Redis does not decide readiness");
            let ready: serde_json::Value = ready.json().await.unwrap();
            assert!(ready["checks"]["redis"].as_str().unwrap().starts_with("degraded"), "{ready}");
        }
        let metrics = crate::helpers::scrape_metrics(&a).await;
        assert_eq!(metrics.get("redis_available"), Some(&0.0), "{metrics:?}");
        assert!(metrics.get("ratelimit_local_fallbacks_total").is_some_and(|n| *n >= 4.0));

        redis.restart();
        // Recovered once a fresh client's bucket is kept in Redis again, by both instances.
        let mut probe = 0;
        let recovered = eventually(async || {
            probe += 1;
            let client = format!("198.51.101.{probe}");
            get_as(&a, "/api/v1/products", Some(&client)).await;
            get_as(&b, "/api/v1/products", Some(&client)).await;
            let response = get_as(&a, "/api/v1/products", Some(&client)).await;
            rate_limit(&response)[0].1 == 0
        })
        .await;
        assert!(recovered, "instances share quotas again after Redis restarts");
        shared_quota("198.51.100.3").await;
        let metrics = crate::helpers::scrape_metrics(&b).await;
        assert_eq!(metrics.get("redis_available"), Some(&1.0));
    }

    /// Rate-limit scripts Redis has run so far.
    async fn script_calls(redis_url: &str) -> u64 {
        let client = redis::Client::open(redis_url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.unwrap();
        info.lines()
            .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
            .filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// A busy client is decided from leases of its quota: Redis is asked now and then, not
    /// for every request, and two instances together still admit no more than the quota, and
    /// not less by more than what two leases can hold (1/64 of it each).
    async fn with_redis_a_busy_client_spends_leases_and_never_gets_more_than_its_quota(backend: Backend) {
        let Some(redis) = PrivateRedis::start() else { return };
        // A day's window: no quota comes back while the test runs.
        let flags = ["--rate-limit-anonymous=1280/86400s", "--trusted-proxies=127.0.0.1"];
        let Some((a, b)) = two_instances(backend, &redis.url(), &flags).await else { return };
        let before = script_calls(&redis.url()).await;
        let (mut admitted, mut refused) = (0, 0);
        for request in 0..1400 {
            let app = if request % 2 == 0 { &a } else { &b };
            let response = get_as(app, "/api/v1/products", Some("198.51.100.9")).await;
            match response.status() {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    refused += 1;
                    assert_rate_limited(response, "anonymous").await;
                }
                other => panic!("unexpected {other}"),
            }
        }
        let calls = script_calls(&redis.url()).await - before;
        assert!(admitted <= 1280, "{admitted} admitted: more than the quota");
        assert!(admitted >= 1280 - 2 * 20, "{admitted} admitted: leases held back more than they may");
        assert_eq!(admitted + refused, 1400);
        assert!(calls < 1400 / 4, "{calls} Redis decisions for 1,400 requests: not spent from leases");
    }

    on_every_backend_with_backend!(
        with_redis_a_quota_is_global_across_instances,
        with_redis_a_busy_client_spends_leases_and_never_gets_more_than_its_quota,
        while_redis_is_down_limits_hold_per_instance_and_come_back_global,
    );
}
