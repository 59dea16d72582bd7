//! Money is never lost between the provider and the ledger: charges and refunds survive a
//! killed process, a database that goes away mid-call, a cancel racing a payment, and retries
//! that come after someone else recorded the outcome. Faults are real: the `orderly` process is
//! SIGKILLed, PostgreSQL is stopped at once, SQLite is locked by another connection.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_provider::FakeProvider;
use crate::helpers::{
    Backend, Credentials, PrivatePostgres, SqliteWriteLock, TestApp, assert_problem, eventually, eventually_within,
    insert_row, insert_user_row, scrape_metrics,
};
use crate::payments::{
    SETTLE_QUICKLY, first_product, id, ledger, on_fake_provider, on_fake_provider_process, order_status, pay,
    payment as payment_of, payments_of, pending_order, refund, whole_ledger,
};

/// A call that outlives the process: one attempt of up to 3 s (time to kill the process while
/// it hangs), held by its request for 3 s + 5 s, then reconciled.
const CRASH_FLAGS: [&str; 8] = [
    "--payment-provider-timeout",
    "3s",
    "--payment-provider-attempts",
    "1",
    "--payment-provider-deadline",
    "3s",
    "--payment-settle-after",
    "4s",
];

/// Long enough for a held attempt to lapse and be reconciled.
const RECONCILED_WITHIN: Duration = Duration::from_secs(20);

/// The `orderly` binary on the fake provider, as a process that can be killed.
async fn process_on_fake_provider(backend: Backend) -> Option<(TestApp, FakeProvider)> {
    on_fake_provider_process(backend, &CRASH_FLAGS).await
}

/// Sends a POST in the background; its answer may never come (the process dies).
fn post_in_background(
    app: &TestApp,
    who: &Credentials,
    path: &str,
    key: &str,
    body: Value,
) -> tokio::task::JoinHandle<Option<reqwest::Response>> {
    let request =
        app.request(Method::POST, path).bearer_auth(&who.access_token).header("Idempotency-Key", key).json(&body);
    tokio::spawn(async move { request.send().await.ok() })
}

/// The ledger's amounts, smallest first.
async fn ledger_amounts(app: &TestApp, admin: &Credentials) -> Vec<i64> {
    let mut amounts: Vec<i64> =
        whole_ledger(app, admin).await.iter().map(|row| row["amount"].as_i64().unwrap()).collect();
    amounts.sort();
    amounts
}

/// A series' value in one scrape, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    scrape_metrics(app).await.get(series).copied().unwrap_or(0.0)
}

async fn a_charge_made_before_the_process_is_killed_is_recorded_after_restart(backend: Backend) {
    let Some((mut app, provider)) = process_on_fake_provider(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 2).await;
    provider.set_hang(true);

    let path = format!("/api/v1/orders/{}/payments", id(&order));
    let paying = post_in_background(&app, &customer, &path, "killed", json!({"payment_method": "pm_card_visa"}));
    assert!(eventually(async || provider.charges().len() == 1).await, "the provider charges");
    // The call hangs: the attempt is unsettled and shows, and it is no outage.
    let seen = eventually(async || {
        metric(&app, r#"orderly_payment_attempts_unsettled{kind="charge"}"#).await == 1.0
            && metric(&app, "orderly_payment_attempt_oldest_unsettled_seconds").await > 0.0
    })
    .await;
    assert!(seen, "the unsettled charge shows in the metrics");
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK, "an unsettled charge is no outage");
    app.kill();
    assert!(paying.await.unwrap().is_none(), "the killed process never answered");
    provider.set_hang(false);
    app.restart().await;

    let recorded = eventually_within(RECONCILED_WITHIN, async || {
        payments_of(&app, &customer, &id(&order)).await.iter().any(|payment| payment["status"] == "succeeded")
    })
    .await;
    assert!(recorded, "the charge the provider made is recorded without any retry");
    assert_eq!(provider.charges(), [2000], "one charge at the provider");
    assert_eq!(provider.refunded(), 0);
    assert_eq!(payments_of(&app, &customer, &id(&order)).await.len(), 1);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [2000], "the ledger matches the provider");
    let stats: Value = app.get("/api/v1/stats", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(stats["revenue"]["USD"], 2000);

    let reconciled = r#"orderly_payment_attempts_reconciled_total{kind="charge",outcome="succeeded"}"#;
    assert_eq!(metric(&app, reconciled).await, 1.0);
    let reconciled_lines = || -> Vec<String> {
        app.process_log()
            .iter()
            .map(Value::to_string)
            .filter(|line| line.contains("a payment attempt was reconciled"))
            .collect()
    };
    // Log lines reach the file a few milliseconds after the metric moves.
    eventually(async || !reconciled_lines().is_empty()).await;
    let logged = reconciled_lines();
    assert_eq!(logged.len(), 1, "one log line per reconciled attempt: {logged:?}");
    for detail in [id(&order), format!("orderly-charge-{}-0", id(&order)), "succeeded".to_owned()] {
        assert!(logged[0].contains(&detail), "the line names {detail}: {}", logged[0]);
    }
    let settled = eventually(async || {
        metric(&app, r#"orderly_payment_attempts_unsettled{kind="charge"}"#).await == 0.0
            && metric(&app, "orderly_payment_attempt_oldest_unsettled_seconds").await == 0.0
    })
    .await;
    assert!(settled, "nothing is left unsettled");
}

async fn a_retry_after_the_process_died_mid_charge_gets_the_charge_within_a_lease(backend: Backend) {
    let Some((mut app, provider)) = process_on_fake_provider(backend).await else { return };
    let (_admin, customer, order) = pending_order(&app, 2).await;
    provider.set_hang(true);
    let path = format!("/api/v1/orders/{}/payments", id(&order));
    let paying = post_in_background(&app, &customer, &path, "retried", json!({"payment_method": "pm_card_visa"}));
    assert!(eventually(async || provider.charges().len() == 1).await, "the provider charges");
    app.kill();
    let killed = std::time::Instant::now();
    assert!(paying.await.unwrap().is_none());
    provider.set_hang(false);
    app.restart().await;

    // The client retries under its key. The dead request's idempotency lock and its attempt's
    // hold were renewed while it lived, so they lapse a lease (6 s) after the crash, not after
    // the request's whole deadline; the retry then finds the charge instead of making another.
    let mut answer = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let retry = pay(&app, &customer, &id(&order), "pm_card_visa", "retried").await;
        if retry.status() == StatusCode::CREATED {
            answer = Some((killed.elapsed(), retry.json::<Value>().await.unwrap()));
            break;
        }
        assert_eq!(retry.status(), StatusCode::CONFLICT, "in progress until the lease lapses");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (waited, payment) = answer.expect("the retry gets the payment");
    assert!(waited < Duration::from_secs(12), "the dead request held the order for {waited:?}");
    assert_eq!(payments_of(&app, &customer, &id(&order)).await, [payment]);
    assert_eq!(provider.charges(), [2000], "one charge");
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
}

async fn a_charge_longer_than_a_lease_keeps_its_key_and_its_order_held(backend: Backend) {
    let flags =
        ["--payment-provider-timeout", "9s", "--payment-provider-attempts", "1", "--payment-provider-deadline", "9s"];
    let Some((app, provider)) = on_fake_provider(backend, &flags).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    provider.set_delay(Duration::from_secs(8));
    let path = format!("/api/v1/orders/{}/payments", id(&order));
    let paying = post_in_background(&app, &customer, &path, "long", json!({"payment_method": "pm_card_visa"}));

    // Past the 6 s lease: the living request renewed both its key's lock and its attempt's hold.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let same_key = pay(&app, &customer, &id(&order), "pm_card_visa", "long").await;
    assert_problem(same_key, StatusCode::CONFLICT, "idempotency_request_in_progress").await;
    let other_key = pay(&app, &customer, &id(&order), "pm_card_visa", "another").await;
    assert_problem(other_key, StatusCode::CONFLICT, "payment_in_progress").await;

    assert_eq!(paying.await.unwrap().unwrap().status(), StatusCode::CREATED);
    assert_eq!(provider.calls(), 1, "nothing else reached the provider");
    assert_eq!(provider.charges(), [1000]);
}

async fn a_refund_made_before_the_process_is_killed_is_recorded_after_restart(backend: Backend) {
    let Some((mut app, provider)) = process_on_fake_provider(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 2).await;
    let payment: Value = pay(&app, &customer, &id(&order), "pm_card_visa", "pay").await.json().await.unwrap();
    provider.set_hang(true);

    let path = format!("/api/v1/payments/{}/refunds", id(&payment));
    let refunding = post_in_background(&app, &admin, &path, "refund-killed", json!({}));
    assert!(eventually(async || provider.refunded() == 2000).await, "the provider refunds");
    app.kill();
    assert!(refunding.await.unwrap().is_none(), "the killed process never answered");
    provider.set_hang(false);
    app.restart().await;

    let recorded = eventually_within(RECONCILED_WITHIN, async || {
        payment_of(&app, &admin, &id(&payment)).await["refunded_amount"] == 2000
    })
    .await;
    assert!(recorded, "the refund the provider made is recorded without any retry");
    assert_eq!(provider.refunded(), 2000, "looking the refund up did not refund again");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [-2000, 2000]);
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "refunded");
    let reconciled = r#"orderly_payment_attempts_reconciled_total{kind="refund",outcome="succeeded"}"#;
    assert_eq!(metric(&app, reconciled).await, 1.0);
}

/// The app's database, which a scenario takes away and gives back: a PostgreSQL server of the
/// test's own, stopped at once and started again; or SQLite, locked by another connection and
/// released.
struct Outage {
    server: Option<PrivatePostgres>,
    lock: Option<SqliteWriteLock>,
}

impl Outage {
    /// The app on the fake provider, on a database that can be taken away. Provider calls
    /// get 3 s, so one can be in flight while the database goes (the scenarios make the
    /// provider take 2 s: time for the outage to begin on a loaded machine).
    async fn start(backend: Backend) -> Option<(Self, TestApp, FakeProvider)> {
        let provider = FakeProvider::start().await;
        let flags = [
            "--payment-provider-url",
            provider.url.as_str(),
            "--payment-provider-timeout",
            "3s",
            "--payment-provider-attempts",
            "1",
            "--payment-provider-deadline",
            "3s",
            "--payment-settle-after",
            "4s",
            // While SQLite is locked, each queued write (the recording, lease renewals, the
            // key's release) may wait out its 5 s busy timeout before the 503.
            "--request-timeout",
            "30s",
        ];
        let server = match backend {
            Backend::Postgres => Some(PrivatePostgres::start()?),
            Backend::Sqlite => None,
        };
        let app = match &server {
            Some(server) => TestApp::spawn_on_server(&server.url, &flags).await,
            None => TestApp::spawn_with(backend, &flags).await?,
        };
        Some((Self { server, lock: None }, app, provider))
    }

    async fn begin(&mut self, app: &TestApp) {
        match &self.server {
            Some(server) => server.crash(),
            None => self.lock = Some(app.hold_sqlite_write_lock().await),
        }
    }

    fn end(&mut self) {
        match &self.server {
            Some(server) => server.start_again(),
            None => self.lock = None,
        }
    }
}

/// The database goes away while the provider charges, so the charge cannot be recorded.
async fn a_charge_made_while_the_database_is_down_is_recorded_once_it_is_back(backend: Backend) {
    let Some((mut outage, app, provider)) = Outage::start(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 3).await;
    provider.set_delay(Duration::from_secs(2));

    let path = format!("/api/v1/orders/{}/payments", id(&order));
    let paying = post_in_background(&app, &customer, &path, "outage", json!({"payment_method": "pm_card_visa"}));
    assert!(eventually(async || provider.calls() == 1).await, "the charge goes out");
    outage.begin(&app).await;
    let answer = paying.await.unwrap().expect("the app answers");
    assert_problem(answer, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
    assert_eq!(provider.charges(), [3000], "the provider charged all the same");
    outage.end();

    let recorded = eventually_within(RECONCILED_WITHIN, async || {
        let response =
            app.get(&format!("/api/v1/payments?order_id={}", id(&order)), Some(&customer.access_token)).await;
        response.status() == StatusCode::OK
            && response.json::<Value>().await.unwrap()["data"].as_array().is_some_and(|data| data.len() == 1)
    })
    .await;
    assert!(recorded, "the charge is recorded once the database is back");
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [3000]);
    assert_eq!(provider.charges(), [3000]);
}

/// The database goes away while the provider refunds, so the refund cannot be recorded.
async fn a_refund_made_while_the_database_is_down_is_recorded_once_it_is_back(backend: Backend) {
    let Some((mut outage, app, provider)) = Outage::start(backend).await else { return };
    let (admin, customer, order) = pending_order(&app, 3).await;
    let payment: Value = pay(&app, &customer, &id(&order), "pm_card_visa", "pay").await.json().await.unwrap();
    provider.set_delay(Duration::from_secs(2));

    let path = format!("/api/v1/payments/{}/refunds", id(&payment));
    let refunding = post_in_background(&app, &admin, &path, "refund-outage", json!({"amount": 1000}));
    assert!(eventually(async || provider.calls() == 2).await, "the refund goes out");
    outage.begin(&app).await;
    let answer = refunding.await.unwrap().expect("the app answers");
    assert_problem(answer, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
    assert_eq!(provider.refunded(), 1000, "the provider refunded all the same");
    outage.end();

    let recorded = eventually_within(RECONCILED_WITHIN, async || {
        let response = app.get(&format!("/api/v1/payments/{}", id(&payment)), Some(&admin.access_token)).await;
        response.status() == StatusCode::OK && response.json::<Value>().await.unwrap()["refunded_amount"] == 1000
    })
    .await;
    assert!(recorded, "the refund is recorded once the database is back");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [-1000, 3000]);
    assert_eq!(provider.refunded(), 1000, "refunded once");
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid", "part of the money stays");
}

/// An order of 4 × a product priced 1,000 (stock 10), being paid in the background through a
/// provider that takes 1 s to charge.
struct SlowPayment {
    app: TestApp,
    provider: FakeProvider,
    admin: Credentials,
    customer: Credentials,
    product: Value,
    order: Value,
    paying: tokio::task::JoinHandle<Option<reqwest::Response>>,
}

async fn slow_payment(backend: Backend) -> Option<SlowPayment> {
    let (app, provider) = on_fake_provider(backend, &[]).await?;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"unit_price": 1000, "stock": 10})).await;
    let order: Value = app.place_order(&customer, &[(&id(&product), 4)]).await.json().await.unwrap();
    provider.set_delay(Duration::from_secs(1));
    let path = format!("/api/v1/orders/{}/payments", id(&order));
    let paying = post_in_background(&app, &customer, &path, "slow", json!({"payment_method": "pm_card_visa"}));
    Some(SlowPayment { app, provider, admin, customer, product, order, paying })
}

/// Cancel 0.2 s into a charge: the cancel is refused and the order keeps its money and stock,
/// or (had the cancel come first) the payment is refused, nothing is charged and the stock is
/// back. Never both, never neither.
async fn a_cancel_racing_a_charge_never_lets_both_win(backend: Backend) {
    let Some(SlowPayment { app, provider, admin, customer, product, order, paying }) = slow_payment(backend).await
    else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancel_path = format!("/api/v1/orders/{}/cancel", id(&order));
    let cancel = app.send_json(Method::POST, &cancel_path, Some(&customer.access_token), &json!({})).await;
    let cancel_status = cancel.status();
    let payment_status = paying.await.unwrap().unwrap().status();

    let amounts = ledger_amounts(&app, &admin).await;
    match (cancel_status, payment_status) {
        (StatusCode::CONFLICT, StatusCode::CREATED) => {
            assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
            assert_eq!(app.stock_of(&id(&product)).await, 6, "the stock stays with the paid order");
            assert_eq!(provider.charges(), [4000]);
            assert_eq!(amounts, [4000], "the ledger matches the provider");
        }
        (StatusCode::OK, StatusCode::CONFLICT) => {
            assert_eq!(order_status(&app, &customer, &id(&order)).await, "cancelled");
            assert_eq!(app.stock_of(&id(&product)).await, 10, "the stock is back");
            assert!(provider.charges().is_empty());
            assert!(amounts.is_empty());
        }
        other => panic!("cancel and payment answered {other:?}"),
    }
    assert_eq!(provider.refunded(), 0);
}

async fn a_cancel_while_a_charge_is_in_flight_is_refused_until_it_is_settled(backend: Backend) {
    let Some(SlowPayment { app, provider, admin, customer, product, order, paying }) = slow_payment(backend).await
    else {
        return;
    };
    assert!(eventually(async || provider.calls() == 1).await, "the charge is in flight");
    let cancel_path = format!("/api/v1/orders/{}/cancel", id(&order));
    let cancel = || {
        app.request(Method::POST, &cancel_path)
            .bearer_auth(&customer.access_token)
            .header("Idempotency-Key", "cancel-once")
            .json(&json!({}))
            .send()
    };
    let refused = cancel().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::CONFLICT, "payment_in_progress").await;

    assert_eq!(paying.await.unwrap().unwrap().status(), StatusCode::CREATED, "the payment goes through");
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "paid");
    assert_eq!(app.stock_of(&id(&product)).await, 6, "the stock stays with the paid order");
    assert_eq!(provider.charges(), [4000]);
    assert_eq!(provider.refunded(), 0);
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [4000], "the ledger matches the provider");
    // An answer that asks to retry later is not kept under the key: the retry runs again.
    let again = cancel().await.unwrap();
    assert!(!again.headers().contains_key("idempotent-replayed"));
    assert_problem(again, StatusCode::CONFLICT, "invalid_state").await;
}

async fn a_charge_landing_on_an_order_no_longer_payable_is_recorded_and_given_back(backend: Backend) {
    // Reconciled 2 s after the charge: well after the cancel below.
    let mut flags = SETTLE_QUICKLY.to_vec();
    flags.extend(["--payment-settle-after", "2s"]);
    let Some((app, provider)) = on_fake_provider_process(backend, &flags).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    provider.set_hang(true);
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "hang-then-cancel").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    provider.set_hang(false);
    // A cancel that got past the guard, as one from an earlier release could have.
    app.force_order_status(&id(&order), "cancelled").await;

    // Orderly records the refund after the provider made it; the window is that of any
    // provider call, so the ledger is awaited, not the provider.
    let given_back = eventually(async || whole_ledger(&app, &admin).await.len() == 2).await;
    assert!(given_back, "the charge and its refund are in the ledger");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts.iter().sum::<i64>(), 0, "charged and given back: {amounts:?}");
    assert_eq!(provider.charges(), [1000]);
    assert_eq!(provider.refunded(), 1000);
    let payments = payments_of(&app, &customer, &id(&order)).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(
        (payments[0]["status"].as_str(), payments[0]["refunded_amount"].as_i64()),
        (Some("succeeded"), Some(1000))
    );
    assert_eq!(order_status(&app, &customer, &id(&order)).await, "cancelled");
    let stats: Value = app.get("/api/v1/stats", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(stats["revenue"]["USD"].as_i64().unwrap_or(0), 0);
    let reconciled = r#"orderly_payment_attempts_reconciled_total{kind="charge",outcome="reversed"}"#;
    assert_eq!(metric(&app, reconciled).await, 1.0);

    let retry = pay(&app, &customer, &id(&order), "pm_card_visa", "hang-then-cancel").await;
    assert_problem(retry, StatusCode::CONFLICT, "invalid_state").await;
    assert_eq!(provider.charges(), [1000], "still one charge");
}

async fn a_retry_after_the_reconciler_recorded_the_outcome_gets_it(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &SETTLE_QUICKLY).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    provider.set_hang(true);
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "pay-once").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    provider.set_hang(false);
    assert!(eventually(async || payments_of(&app, &customer, &id(&order)).await.len() == 1).await);
    let recorded = payments_of(&app, &customer, &id(&order)).await.remove(0);

    let retry = pay(&app, &customer, &id(&order), "pm_card_visa", "pay-once").await;
    assert_eq!(retry.status(), StatusCode::CREATED, "the retry gets the payment its key paid for");
    assert_eq!(retry.headers()["location"], format!("/api/v1/payments/{}", id(&recorded)).as_str());
    assert_eq!(retry.json::<Value>().await.unwrap(), recorded);
    assert_eq!(provider.charges(), [1000]);

    provider.set_hang(true);
    let response = refund(&app, &admin, &id(&recorded), Some(400), "refund-once").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    provider.set_hang(false);
    let refunded = eventually(async || payment_of(&app, &admin, &id(&recorded)).await["refunded_amount"] == 400).await;
    assert!(refunded, "the refund is recorded without any retry");
    let retry = refund(&app, &admin, &id(&recorded), Some(400), "refund-once").await;
    assert_eq!(retry.status(), StatusCode::CREATED, "the retry gets the refund its key made");
    let body: Value = retry.json().await.unwrap();
    let rows = ledger(&app, &admin).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["refund_id"], body["id"], "the same refund, not another");
    assert_eq!(provider.refunded(), 400);
}

async fn a_retry_refused_before_its_call_went_out_does_not_hide_an_earlier_charge(backend: Backend) {
    let mut flags = SETTLE_QUICKLY.to_vec();
    flags.extend(["--payment-circuit-failures", "1", "--payment-circuit-open", "3s"]);
    let Some((app, provider)) = on_fake_provider(backend, &flags).await else { return };
    let (_admin, customer, order) = pending_order(&app, 1).await;
    provider.set_hang(true);
    let first = pay(&app, &customer, &id(&order), "pm_card_visa", "one-key").await;
    assert_problem(first, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    provider.set_hang(false);
    // The timeout opened the circuit: this retry takes the charge over but never calls.
    let refused = pay(&app, &customer, &id(&order), "pm_card_visa", "one-key").await;
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert_eq!(provider.calls(), 1);

    assert!(eventually(async || order_status(&app, &customer, &id(&order)).await == "paid").await);
    let recorded = payments_of(&app, &customer, &id(&order)).await.remove(0);
    let retry = pay(&app, &customer, &id(&order), "pm_card_visa", "one-key").await;
    assert_eq!(retry.status(), StatusCode::CREATED, "the charge made under the key is found");
    assert_eq!(retry.json::<Value>().await.unwrap(), recorded);
    assert_eq!(provider.charges(), [1000]);
}

async fn a_charge_that_lands_after_its_call_gave_up_is_recorded_not_taken_for_none(backend: Backend) {
    let Some((app, provider)) = on_fake_provider_process(backend, &SETTLE_QUICKLY).await else { return };
    let (admin, customer, order) = pending_order(&app, 1).await;
    // The provider takes 1.5 s to act: our call (0.3 s) gives up long before, and the first
    // lookups (from 0.5 s) find nothing.
    provider.set_delay(Duration::from_millis(1500));
    let response = pay(&app, &customer, &id(&order), "pm_card_visa", "late").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    assert!(provider.charges().is_empty(), "nothing charged yet");

    assert!(eventually(async || order_status(&app, &customer, &id(&order)).await == "paid").await);
    assert!(provider.lookups() >= 2, "looked up before and after the charge landed");
    assert_eq!(provider.charges(), [1000]);
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [1000]);
    let not_made = r#"orderly_payment_attempts_reconciled_total{kind="charge",outcome="not_made"}"#;
    assert_eq!(metric(&app, not_made).await, 0.0);
}

async fn a_charge_that_cannot_be_looked_up_does_not_hold_up_the_others(backend: Backend) {
    let Some((app, provider)) = on_fake_provider(backend, &SETTLE_QUICKLY).await else { return };
    let (_admin, customer, stuck) = pending_order(&app, 1).await;
    let other: Value =
        app.place_order(&customer, &[(first_product(&app).await.as_str(), 1)]).await.json().await.unwrap();
    // The older attempt's lookups fail every time; the newer one's charge is still recorded.
    provider.break_lookups_of(&format!("orderly-charge-{}-0", id(&stuck)));
    provider.set_hang(true);
    for (order, key) in [(&stuck, "stuck"), (&other, "other")] {
        let response = pay(&app, &customer, &id(order), "pm_card_visa", key).await;
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "payment_provider_unavailable").await;
    }
    provider.set_hang(false);

    assert!(eventually(async || order_status(&app, &customer, &id(&other)).await == "paid").await);
    assert_eq!(order_status(&app, &customer, &id(&stuck)).await, "pending");
    let cancel = app
        .send_json(
            Method::POST,
            &format!("/api/v1/orders/{}/cancel", id(&stuck)),
            Some(&customer.access_token),
            &json!({}),
        )
        .await;
    assert_problem(cancel, StatusCode::CONFLICT, "payment_in_progress").await;
}

/// The previous release left a charge unsettled in two ways: a row in `unsettled_charges` (its
/// call failed after reaching the provider), or only the order's in-flight mark (its process
/// died mid-call). Both become attempts on upgrade, and the charges the provider made are
/// recorded.
async fn charges_left_unsettled_by_the_previous_release_are_recorded_after_upgrade(backend: Backend) {
    use orderly::db::Database;

    let provider = FakeProvider::start().await;
    let (user_id, remembered, marked) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    provider.charge_under(&format!("orderly-charge-{remembered}-0"), 1000);
    provider.charge_under(&format!("orderly-charge-{marked}-0"), 2500);
    let at = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    let prepare = async |db: &Database| {
        let insert = |table: &str, columns: &[&str], values| insert_row(db, table, columns, values);
        insert_user_row(db, user_id, at).await;
        let order_columns = [
            "id",
            "user_id",
            "status",
            "currency",
            "total",
            "version",
            "created_at",
            "updated_at",
            "payment_attempt",
            "payment_attempt_until",
        ];
        for (order_id, total, mark) in [(remembered, 1000i64, None), (marked, 2500, Some(uuid::Uuid::now_v7()))] {
            let until = mark.map(|_| at + chrono::TimeDelta::seconds(11));
            let order = vec![
                order_id.into(),
                user_id.into(),
                "pending".into(),
                "USD".into(),
                total.into(),
                1i64.into(),
                at.into(),
                at.into(),
                mark.into(),
                until.into(),
            ];
            insert("orders", &order_columns, order).await.unwrap();
        }
        let unsettled_columns = ["order_id", "user_id", "provider_key", "amount", "currency", "created_at"];
        let unsettled = vec![
            remembered.into(),
            user_id.into(),
            format!("orderly-charge-{remembered}-0").into(),
            1000i64.into(),
            "USD".into(),
            at.into(),
        ];
        insert("unsettled_charges", &unsettled_columns, unsettled).await.unwrap();
    };
    let mut flags = vec!["--payment-provider-url", provider.url.as_str()];
    flags.extend_from_slice(&SETTLE_QUICKLY);
    let Some(app) = TestApp::spawn_after_migration(backend, 8, prepare, &flags).await else { return };
    let admin = app.admin().await;

    let recorded = eventually(async || {
        let mut statuses = Vec::new();
        for order_id in [remembered, marked] {
            statuses.push(order_status(&app, &admin, &order_id.to_string()).await);
        }
        statuses == ["paid", "paid"]
    })
    .await;
    assert!(recorded, "both charges are recorded");
    let amounts = ledger_amounts(&app, &admin).await;
    assert_eq!(amounts, [1000, 2500]);
    assert_eq!(provider.lookups(), 2, "each was looked up once, and nothing was charged again");
    assert_eq!(provider.calls(), 0);
}

crate::on_every_backend_with_backend!(
    charges_left_unsettled_by_the_previous_release_are_recorded_after_upgrade,
    a_charge_made_before_the_process_is_killed_is_recorded_after_restart,
    a_retry_after_the_process_died_mid_charge_gets_the_charge_within_a_lease,
    a_charge_longer_than_a_lease_keeps_its_key_and_its_order_held,
    a_refund_made_before_the_process_is_killed_is_recorded_after_restart,
    a_charge_made_while_the_database_is_down_is_recorded_once_it_is_back,
    a_refund_made_while_the_database_is_down_is_recorded_once_it_is_back,
    a_cancel_racing_a_charge_never_lets_both_win,
    a_cancel_while_a_charge_is_in_flight_is_refused_until_it_is_settled,
    a_charge_landing_on_an_order_no_longer_payable_is_recorded_and_given_back,
    a_retry_after_the_reconciler_recorded_the_outcome_gets_it,
    a_retry_refused_before_its_call_went_out_does_not_hide_an_earlier_charge,
    a_charge_that_lands_after_its_call_gave_up_is_recorded_not_taken_for_none,
    a_charge_that_cannot_be_looked_up_does_not_hold_up_the_others,
);
