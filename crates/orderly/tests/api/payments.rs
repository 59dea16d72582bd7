//! Payments and refunds: money moves exactly once, through retries, failures and races; the
//! ledger and `/stats` agree.

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::fake_provider::FakeProvider;
use crate::helpers::{Backend, Credentials, TestApp, assert_problem, eventually, eventually_within, scrape_metrics};

pub(crate) fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn pay(app: &TestApp, who: &Credentials, order_id: &str, method: &str, key: &str) -> Response {
    app.request(Method::POST, &format!("/api/v1/orders/{order_id}/payments"))
        .bearer_auth(&who.access_token)
        .header("Idempotency-Key", key)
        .json(&json!({"payment_method": method}))
        .send()
        .await
        .unwrap()
}

pub(crate) async fn refund(
    app: &TestApp,
    admin: &Credentials,
    payment_id: &str,
    amount: Option<i64>,
    key: &str,
) -> Response {
    let body = match amount {
        Some(amount) => json!({"amount": amount}),
        None => json!({}),
    };
    app.request(Method::POST, &format!("/api/v1/payments/{payment_id}/refunds"))
        .bearer_auth(&admin.access_token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A pending order of `quantity` × a product priced 1,000, with its customer and an admin.
pub(crate) async fn pending_order(app: &TestApp, quantity: i64) -> (Credentials, Credentials, Value) {
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"unit_price": 1000, "stock": 1000})).await;
    let order: Value = app.place_order(&customer, &[(&id(&product), quantity)]).await.json().await.unwrap();
    (admin, customer, order)
}

pub(crate) async fn order_status(app: &TestApp, who: &Credentials, order_id: &str) -> String {
    let order: Value =
        app.get(&format!("/api/v1/orders/{order_id}"), Some(&who.access_token)).await.json().await.unwrap();
    order["status"].as_str().unwrap().to_owned()
}

/// A payment as `who` reads it.
pub(crate) async fn payment(app: &TestApp, who: &Credentials, payment_id: &str) -> Value {
    app.get(&format!("/api/v1/payments/{payment_id}"), Some(&who.access_token)).await.json().await.unwrap()
}

pub(crate) async fn payments_of(app: &TestApp, who: &Credentials, order_id: &str) -> Vec<Value> {
    let page: Value =
        app.get(&format!("/api/v1/payments?order_id={order_id}"), Some(&who.access_token)).await.json().await.unwrap();
    page["data"].as_array().unwrap().clone()
}

pub(crate) async fn ledger(app: &TestApp, admin: &Credentials) -> Vec<Value> {
    let page: Value = app.get("/api/v1/transactions?limit=100", Some(&admin.access_token)).await.json().await.unwrap();
    page["data"].as_array().unwrap().clone()
}

/// Starts the app on the fake provider, with quick retries and the given extra flags.
pub(crate) async fn on_fake_provider(backend: Backend, extra: &[&str]) -> Option<(TestApp, FakeProvider)> {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(backend, &fake_provider_flags(&provider, extra)).await?;
    Some((app, provider))
}

/// As [`on_fake_provider`], with the app in a process of its own: it can be killed, and its
/// metrics are its own (apps in the test process share one recorder).
pub(crate) async fn on_fake_provider_process(backend: Backend, extra: &[&str]) -> Option<(TestApp, FakeProvider)> {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_process(backend, &fake_provider_flags(&provider, extra)).await?;
    Some((app, provider))
}

fn fake_provider_flags<'a>(provider: &'a FakeProvider, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--payment-provider-url", provider.url.as_str(), "--payment-provider-backoff", "10ms"];
    args.extend_from_slice(extra);
    args
}

async fn a_sandbox_payment_pays_the_order_once_and_writes_the_ledger(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 3).await;

    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "pay-1").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let payment: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/payments/{}", id(&payment)));
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["amount"], 3000);
    assert_eq!(payment["order_id"], order["id"]);
    assert_eq!(payment["user_id"], customer.user_id.as_str());
    assert_eq!(payment["refunded_amount"], 0);
    assert_eq!(payment["failure_code"], Value::Null);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    let fetched: Value = app.get(&location, Some(&customer.access_token)).await.json().await.unwrap();
    assert_eq!(fetched, payment);

    // A retry replays; another key finds the order already paid.
    let replay = pay(&app, &customer, &id(&order), "pm_card_visa", "pay-1").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), payment);
    assert_problem(
        pay(&app, &customer, &id(&order), "pm_card_visa", "pay-2").await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;

    let rows = ledger(&app, &admin).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["kind"].as_str(), rows[0]["amount"].as_i64()), (Some("charge"), Some(3000)));
    assert_eq!(rows[0]["payment_id"], payment["id"]);
}

async fn a_decline_is_402_kept_and_leaves_the_order_pending(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;

    let declined = pay(&app, &customer, &id(&order), "pm_card_declined", "decline-1").await;
    let problem = assert_problem(declined, StatusCode::PAYMENT_REQUIRED, "card_declined").await;
    let replay = pay(&app, &customer, &id(&order), "pm_card_declined", "decline-1").await;
    assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), problem);

    assert_eq!(order_status(&app, &customer, &id(&order)).await, "pending");
    let payments = payments_of(&app, &customer, &id(&order)).await;
    assert_eq!(payments.len(), 1, "the declined charge is on record");
    assert_eq!(
        (payments[0]["status"].as_str(), payments[0]["failure_code"].as_str()),
        (Some("failed"), Some("card_declined"))
    );
    assert!(ledger(&app, &admin).await.is_empty(), "no money moved");

    // Another card, another key: paid.
    assert_eq!(pay(&app, &customer, &id(&order), "pm_card_visa", "decline-2").await.status(), StatusCode::CREATED);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
}

async fn payments_need_a_key_valid_input_and_their_own_order(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    let path = format!("/api/v1/orders/{}/payments", id(&order));

    let keyless = app.post_json(&path, Some(&customer.access_token), &json!({"payment_method": "pm_card_visa"})).await;
    assert_problem(keyless, StatusCode::BAD_REQUEST, "idempotency_key_required").await;
    for body in [
        json!({}),
        json!({"payment_method": ""}),
        json!({"payment_method": 7}),
        json!({"payment_method": "pm_card_visa", "amount": 1}),
    ] {
        let response = app
            .request(Method::POST, &path)
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", format!("bad-{body}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let stranger = app.customer().await;
    assert_problem(
        pay(&app, &stranger, &id(&order), "pm_card_visa", "stranger").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "pending");

    let payment: Value = pay(&app, &customer, &id(&order), "pm_card_visa", "mine").await.json().await.unwrap();
    let theirs = app.get(&format!("/api/v1/payments/{}", id(&payment)), Some(&stranger.access_token)).await;
    assert_problem(theirs, StatusCode::NOT_FOUND, "not_found").await;
    assert!(payments_of(&app, &stranger, &id(&order)).await.is_empty());

    let cancelled = app
        .send_json(
            Method::POST,
            &format!("/api/v1/orders/{}/cancel", id(&order)),
            Some(&customer.access_token),
            &json!({}),
        )
        .await;
    assert_problem(cancelled, StatusCode::CONFLICT, "invalid_state").await;
}

async fn thirty_identical_requests_charge_once(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &[]).await else { return };
    let (_admin, customer, order) = pending_order(&app, 2).await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let request = app
            .request(Method::POST, &format!("/api/v1/orders/{}/payments", id(&order)))
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", "same-key")
            .json(&json!({"payment_method": "pm_card_visa"}));
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = tasks.join_next().await {
        let status = status.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT, "{status}");
    }
    assert_eq!(provider.charges(), [2000], "one charge at the provider");
    assert_eq!(payments_of(&app, &customer, &id(&order)).await.len(), 1, "one payment row");
    let replay = pay(&app, &customer, &id(&order), "pm_card_visa", "same-key").await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
}

async fn a_provider_failing_twice_then_succeeding_charges_once(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &[]).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    provider.fail_next(2);

    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "flaky").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(provider.calls(), 3, "two failures retried, then success");
    assert_eq!(provider.charges(), [1000]);
    assert_eq!(payments_of(&app, &customer, &id(&order)).await.len(), 1);
}

async fn a_hanging_provider_is_503_in_time_and_a_later_retry_charges_once(backend: Backend) {
    let flags = [
        "--payment-provider-timeout",
        "300ms",
        "--payment-provider-attempts",
        "2",
        "--payment-provider-deadline",
        "1s",
    ];
    let Some((app, provider)) = on_fake_provider(backend, &flags).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    provider.set_hang(true);

    let started = Instant::now();
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "hang").await;
    let waited = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert!(waited < Duration::from_secs(3), "answered within the deadline, not the provider's hang ({waited:?})");
    assert!(payments_of(&app, &customer, &id(&order)).await.is_empty(), "nothing recorded");
    assert!(ledger(&app, &admin).await.is_empty());
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "pending");
    assert_eq!(provider.charges().len(), 1, "the provider did charge before hanging");

    provider.set_hang(false);
    // A client may retry under a new key after a 503; the provider's key is the order's, so
    // the retry still finds the charge made before the hang instead of making another.
    let retried = pay(&app, &customer, &id(&order), "pm_card_visa", "hang-retried-under-a-new-key").await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(provider.charges(), [1000], "the retry found the same charge");
    assert_eq!(payments_of(&app, &customer, &id(&order)).await.len(), 1);
    assert_eq!(ledger(&app, &admin).await.len(), 1);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
}

/// Flags for the settling scenarios: one quick attempt, and unknown outcomes settled after
/// half a second.
pub(crate) const SETTLE_QUICKLY: [&str; 8] = [
    "--payment-provider-timeout",
    "300ms",
    "--payment-provider-attempts",
    "1",
    "--payment-provider-deadline",
    "400ms",
    "--payment-settle-after",
    "500ms",
];

async fn a_charge_left_unknown_is_recorded_from_the_provider_when_nobody_retries(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &SETTLE_QUICKLY).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    provider.set_hang(true);
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "hang-and-leave").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert!(payments_of(&app, &customer, &id(&order)).await.is_empty(), "nothing recorded yet");
    assert_eq!(provider.charges(), [1000], "but the provider charged");

    let settled = eventually(async || payments_of(&app, &customer, &id(&order)).await.len() == 1).await;
    assert!(settled, "the charge the provider made is recorded without any retry");
    let payment = &payments_of(&app, &customer, &id(&order)).await[0];
    assert_eq!((payment["status"].as_str(), payment["amount"].as_i64()), (Some("succeeded"), Some(1000)));
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    let rows = ledger(&app, &admin).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["amount"], 1000);

    provider.set_hang(false);
    let late = pay(&app, &customer, &id(&order), "pm_card_visa", "late-retry").await;
    assert_problem(late, StatusCode::CONFLICT, "invalid_state").await;
    assert_eq!(provider.charges(), [1000], "still one charge");
    assert_eq!(payments_of(&app, &customer, &id(&order)).await.len(), 1);
}

async fn a_charge_that_never_happened_is_settled_as_nothing(backend: Backend) {
    let Some((app, provider)) = on_fake_provider_process(backend, &SETTLE_QUICKLY).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    provider.set_down(true);
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "down").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    provider.set_down(false);

    assert!(eventually(async || provider.lookups() >= 1).await, "the unknown outcome is looked up");
    let not_made = r#"orderly_payment_attempts_reconciled_total{kind="charge",outcome="not_made"}"#;
    assert_eq!(scrape_metrics(&app).await.get(not_made), None, "nothing found is not believed at once");
    // It is once the call has had its deadline and the provider's margin (0.4 s + 5 s).
    let settled =
        eventually_within(Duration::from_secs(15), async || scrape_metrics(&app).await.get(not_made) == Some(&1.0))
            .await;
    assert!(settled, "settled as never made");
    let lookups = provider.lookups();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(provider.lookups(), lookups, "once settled, it is not looked up again");
    assert!(payments_of(&app, &customer, &id(&order)).await.is_empty());
    assert!(ledger(&app, &admin).await.is_empty());
    assert!(provider.charges().is_empty(), "looking up never charges");
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "pending");

    assert_eq!(pay(&app, &customer, &id(&order), "pm_card_visa", "again").await.status(), StatusCode::CREATED);
    assert_eq!(provider.charges(), [1000]);
}

async fn the_circuit_opens_after_repeated_failures_and_closes_after_recovery(backend: Backend) {
    let flags = ["--payment-provider-attempts", "1", "--payment-circuit-failures", "3", "--payment-circuit-open", "1s"];
    let Some((app, provider)) = on_fake_provider(backend, &flags).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    provider.set_down(true);

    for attempt in 0..3 {
        let response = pay(&app, &customer, &id(&order), "pm_card_visa", &format!("down-{attempt}")).await;
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    }
    assert_eq!(provider.calls(), 3);
    // Open: refused without calling the provider.
    let refused = pay(&app, &customer, &id(&order), "pm_card_visa", "while-open").await;
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert_eq!(provider.calls(), 3, "an open circuit does not call the provider");
    assert_eq!(circuit_state(&app).await, "open", "the open circuit shows in the metrics");
    let refusals = r#"orderly_payment_provider_calls_total{operation="charge",outcome="circuit_open"}"#;
    assert!(scrape_metrics(&app).await.get(refusals).is_some_and(|n| *n >= 1.0), "refusals are counted");

    provider.set_down(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(circuit_state(&app).await, "half_open", "after the open period, one probe may go");
    let probe = pay(&app, &customer, &id(&order), "pm_card_visa", "after-recovery").await;
    assert_eq!(probe.status(), StatusCode::CREATED, "the half-open probe succeeds and closes the circuit");
    assert_eq!(provider.calls(), 4);
    assert_eq!(provider.charges(), [1000]);
    assert_eq!(circuit_state(&app).await, "closed");
}

/// The state whose `orderly_payment_circuit_state` gauge is 1; exactly one is.
async fn circuit_state(app: &TestApp) -> &'static str {
    let metrics = scrape_metrics(app).await;
    let on: Vec<_> = ["closed", "open", "half_open"]
        .into_iter()
        .filter(|state| metrics.get(&format!(r#"orderly_payment_circuit_state{{state="{state}"}}"#)) == Some(&1.0))
        .collect();
    assert_eq!(on.len(), 1, "exactly one circuit state is on: {on:?}");
    on[0]
}

async fn an_attempt_in_flight_refuses_a_second_one_and_the_bulkhead_caps_provider_calls(backend: Backend) {
    // The first call hangs for 3 s: the checks below run while it holds the only slot.
    let flags = [
        "--payment-provider-attempts",
        "1",
        "--payment-provider-timeout",
        "3s",
        "--payment-provider-deadline",
        "3s",
        "--payment-max-concurrent",
        "1",
    ];
    let Some((app, provider)) = on_fake_provider(backend, &flags).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    let other: Value =
        app.place_order(&customer, &[(first_product(&app).await.as_str(), 1)]).await.json().await.unwrap();
    provider.set_hang(true);

    let first = app
        .request(Method::POST, &format!("/api/v1/orders/{}/payments", id(&order)))
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", "first")
        .json(&json!({"payment_method": "pm_card_visa"}));
    let first = tokio::spawn(async move { first.send().await.unwrap().status() });
    while provider.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let same_order = pay(&app, &customer, &id(&order), "pm_card_visa", "second").await;
    assert!(same_order.headers().contains_key("retry-after"));
    assert_problem(same_order, StatusCode::CONFLICT, "payment_in_progress").await;
    let other_order = pay(&app, &customer, &id(&other), "pm_card_visa", "third").await;
    assert_problem(other_order, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert_eq!(provider.calls(), 1, "the full bulkhead refused without calling the provider");

    assert_eq!(first.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(payments_of(&app, &customer, &id(&order)).await.is_empty());
}

async fn a_failing_or_slow_sandbox_is_503_and_records_nothing(backend: Backend) {
    for flags in [
        ["--sandbox-failure-rate", "1.0", "--payment-provider-attempts", "2"],
        ["--sandbox-latency", "2s", "--payment-provider-timeout", "100ms"],
    ] {
        let Some(app) = TestApp::spawn_with(backend, &flags).await else { return };
        let (admin, customer, order) = pending_order(&app, 1).await;
        let response = pay(&app, &customer, &id(&order), "pm_card_visa", "sandbox").await;
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
        assert!(payments_of(&app, &customer, &id(&order)).await.is_empty(), "{flags:?}");
        assert!(ledger(&app, &admin).await.is_empty());
        assert_eq!(order_status(&app, &customer, &id(&order)).await, "pending");
    }
}

async fn concurrent_refunds_never_exceed_the_payment(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &[]).await else { return };
    let (admin, customer, order) = pending_order(&app, 10).await;
    let second_admin = app.admin().await;
    let payment: Value = pay(&app, &customer, &id(&order), "pm_card_visa", "to-refund").await.json().await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for attempt in 0..12 {
        let who = if attempt % 2 == 0 { &admin } else { &second_admin };
        let request = app
            .request(Method::POST, &format!("/api/v1/payments/{}/refunds", id(&payment)))
            .bearer_auth(&who.access_token)
            .header("Idempotency-Key", format!("refund-{attempt}"))
            .json(&json!({"amount": 3000}));
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let mut refunded = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            StatusCode::CREATED => refunded += body["amount"].as_i64().unwrap(),
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!((3000..=9000).contains(&refunded), "refunded {refunded} of 10000 in refunds of 3000");
    let after: Value =
        app.get(&format!("/api/v1/payments/{}", id(&payment)), Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(after["refunded_amount"], refunded);
    assert_eq!(provider.refunded(), refunded, "the provider refunded what was recorded");
    let ledger_sum: i64 = ledger(&app, &admin).await.iter().map(|row| row["amount"].as_i64().unwrap()).sum();
    assert_eq!(ledger_sum, 10_000 - refunded);
}

async fn refunds_are_partial_until_the_full_amount_and_then_the_order_is_refunded(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 5).await;
    let payment: Value = pay(&app, &customer, &id(&order), "pm_card_visa", "p").await.json().await.unwrap();

    let forbidden = refund(&app, &customer, &id(&payment), Some(100), "c").await;
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
    let keyless = app
        .post_json(&format!("/api/v1/payments/{}/refunds", id(&payment)), Some(&admin.access_token), &json!({}))
        .await;
    assert_problem(keyless, StatusCode::BAD_REQUEST, "idempotency_key_required").await;

    let first = refund(&app, &admin, &id(&payment), Some(1500), "r1").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!((first["amount"].as_i64(), first["payment_id"].as_str()), (Some(1500), payment["id"].as_str()));
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    assert_eq!(location, format!("/api/v1/refunds/{}", id(&first)));
    for who in [&admin, &customer] {
        let fetched = app.get(&location, Some(&who.access_token)).await;
        assert_eq!(fetched.status(), StatusCode::OK, "the refund is readable by an admin and the payer");
        assert_eq!(fetched.json::<Value>().await.unwrap(), first);
    }
    let stranger = app.customer().await;
    let hidden = app.get(&location, Some(&stranger.access_token)).await;
    assert_problem(hidden, StatusCode::NOT_FOUND, "not_found").await;

    let over = refund(&app, &admin, &id(&payment), Some(3501), "r2").await;
    let problem = assert_problem(over, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "amount");
    for amount in [0, -5] {
        let bad = refund(&app, &admin, &id(&payment), Some(amount), &format!("bad-{amount}")).await;
        assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }

    let rest: Value = refund(&app, &admin, &id(&payment), None, "r3").await.json().await.unwrap();
    assert_eq!(rest["amount"], 3500);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "refunded");
    let done = refund(&app, &admin, &id(&payment), Some(1), "r4").await;
    assert_problem(done, StatusCode::CONFLICT, "invalid_state").await;

    let rows = ledger(&app, &admin).await;
    let kinds: Vec<(&str, i64)> =
        rows.iter().map(|r| (r["kind"].as_str().unwrap(), r["amount"].as_i64().unwrap())).collect();
    assert_eq!(kinds, [("refund", -3500), ("refund", -1500), ("charge", 5000)]);
    let customer_view = app.get("/api/v1/transactions", Some(&customer.access_token)).await;
    assert_problem(customer_view, StatusCode::FORBIDDEN, "forbidden").await;
}

crate::on_every_backend_with_backend!(
    a_sandbox_payment_pays_the_order_once_and_writes_the_ledger,
    a_decline_is_402_kept_and_leaves_the_order_pending,
    payments_need_a_key_valid_input_and_their_own_order,
    thirty_identical_requests_charge_once,
    a_provider_failing_twice_then_succeeding_charges_once,
    a_hanging_provider_is_503_in_time_and_a_later_retry_charges_once,
    a_charge_left_unknown_is_recorded_from_the_provider_when_nobody_retries,
    a_charge_that_never_happened_is_settled_as_nothing,
    the_circuit_opens_after_repeated_failures_and_closes_after_recovery,
    an_attempt_in_flight_refuses_a_second_one_and_the_bulkhead_caps_provider_calls,
    a_failing_or_slow_sandbox_is_503_and_records_nothing,
    concurrent_refunds_never_exceed_the_payment,
    refunds_are_partial_until_the_full_amount_and_then_the_order_is_refunded,
    the_ledger_sums_to_stats_revenue_after_a_random_mix,
    stats_are_for_admins_and_kept_for_their_ttl,
);

/// Every ledger row, walking all pages.
pub(crate) async fn whole_ledger(app: &TestApp, admin: &Credentials) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut path = "/api/v1/transactions?limit=7".to_owned();
    loop {
        let page: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
        rows.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/transactions?limit=7&cursor={cursor}"),
            None => return rows,
        }
    }
}

async fn the_ledger_sums_to_stats_revenue_after_a_random_mix(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--stats-cache-ttl", "0s"]).await else { return };
    let admin = app.admin().await;
    let customers = [app.customer().await, app.customer().await];
    let product = app.create_product(&admin, json!({"unit_price": 700, "stock": 10_000})).await;
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut roll = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut expected_revenue, mut statuses) = (0i64, std::collections::BTreeMap::<&str, i64>::new());
    for round in 0..24 {
        let customer = &customers[usize::try_from(roll(2)).unwrap()];
        let quantity = i64::try_from(roll(5) + 1).unwrap();
        let order: Value = app.place_order(customer, &[(&id(&product), quantity)]).await.json().await.unwrap();
        let status = match roll(4) {
            0 => "pending",
            1 => {
                app.send_json(
                    Method::POST,
                    &format!("/api/v1/orders/{}/cancel", id(&order)),
                    Some(&customer.access_token),
                    &json!({}),
                )
                .await;
                "cancelled"
            }
            _ => {
                let method = if roll(5) == 0 { "pm_card_declined" } else { "pm_card_visa" };
                let response = pay(&app, customer, &id(&order), method, &format!("mix-{round}")).await;
                if response.status() != StatusCode::CREATED {
                    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
                    "pending"
                } else {
                    let payment: Value = response.json().await.unwrap();
                    let amount = quantity * 700;
                    let mut refunded = 0;
                    for refund_round in 0..roll(3) {
                        let part =
                            i64::try_from(roll(u64::try_from(amount).unwrap()) + 1).unwrap().min(amount - refunded);
                        if part == 0 {
                            break;
                        }
                        let key = format!("mix-{round}-{refund_round}");
                        assert_eq!(
                            refund(&app, &admin, &id(&payment), Some(part), &key).await.status(),
                            StatusCode::CREATED
                        );
                        refunded += part;
                    }
                    expected_revenue += amount - refunded;
                    if refunded == amount { "refunded" } else { "paid" }
                }
            }
        };
        *statuses.entry(status).or_default() += 1;
    }

    let stats_response = app.get("/api/v1/stats", Some(&admin.access_token)).await;
    assert_eq!(stats_response.status(), StatusCode::OK);
    let stats: Value = stats_response.json().await.unwrap();
    let ledger_sum: i64 = whole_ledger(&app, &admin).await.iter().map(|row| row["amount"].as_i64().unwrap()).sum();
    assert_eq!(stats["revenue"]["USD"].as_i64().unwrap_or(0), ledger_sum, "ledger sum = revenue in /stats");
    assert_eq!(ledger_sum, expected_revenue);
    assert_eq!(stats["orders"], 24);
    for status in ["pending", "paid", "refunded", "cancelled"] {
        assert_eq!(stats["orders_by_status"][status], statuses.get(status).copied().unwrap_or(0), "{status}");
    }
    assert_eq!(stats["users"], 3);
}

async fn stats_are_for_admins_and_kept_for_their_ttl(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--stats-cache-ttl", "60s"]).await else { return };
    let (admin, customer, _order) = pending_order(&app, 1).await;
    let forbidden = app.get("/api/v1/stats", Some(&customer.access_token)).await;
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;

    let first = app.get("/api/v1/stats", Some(&admin.access_token)).await;
    assert_eq!(first.headers()["cache-control"], "private, max-age=60");
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["orders"], 1);
    app.place_order(&customer, &[(first_product(&app).await.as_str(), 1)]).await;
    let second: Value = app.get("/api/v1/stats", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(second, first, "within the TTL the same figures are served");

    // Concurrent callers share one computation: all see the same generation.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request = app.request(Method::GET, "/api/v1/stats").bearer_auth(&admin.access_token);
        tasks
            .spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap()["generated_at"].clone() });
    }
    while let Some(generated_at) = tasks.join_next().await {
        assert_eq!(generated_at.unwrap(), first["generated_at"]);
    }
}

pub(crate) async fn first_product(app: &TestApp) -> String {
    let page: Value = app.get("/api/v1/products?limit=1", None).await.json().await.unwrap();
    id(&page["data"][0])
}
