//! Webhooks: deliveries reach real local receivers signed, are retried on the schedule until
//! they succeed, a 410 disables the endpoint, a slow receiver delays nobody else, and
//! registration refuses every URL that would reach an internal address. Receivers listen on
//! 127.0.0.1 only, let through by the allow-list; nothing here connects anywhere else.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, Credentials, TestApp, assert_problem, eventually_within, scrape_metrics};
use crate::payments::id;

/// What a receiver answers.
#[derive(Clone)]
pub(crate) enum Answer {
    Status(u16),
    /// 307 to this URL.
    Redirect(String),
    /// Waits this long, then 200.
    Hang(Duration),
}

/// A request a receiver got.
#[derive(Clone)]
pub(crate) struct Received {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A webhook receiver on 127.0.0.1: records every request and answers as told.
pub(crate) struct Receiver {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// The requests it answered with a 2xx (a request whose sender hung up first is not).
    acknowledged: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Receiver {
    pub(crate) async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answer)
    }

    /// A receiver at `address`: one that was down and is back.
    async fn start_at(address: SocketAddr, answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        Self::serve(listener, answer)
    }

    fn serve(listener: tokio::net::TcpListener, answer: Answer) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (log, acks, told) = (Arc::clone(&received), Arc::clone(&acknowledged), Arc::clone(&answer));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (log, acks, told) = (Arc::clone(&log), Arc::clone(&acks), Arc::clone(&told));
                async move {
                    let request = Received { headers, body };
                    log.lock().unwrap().push(request.clone());
                    let answer = told.lock().unwrap().clone();
                    let mut location = HeaderMap::new();
                    let (status, text) = match answer {
                        Answer::Status(code) => (StatusCode::from_u16(code).unwrap(), "receiver says hello"),
                        Answer::Redirect(to) => {
                            location.insert(http::header::LOCATION, to.parse().unwrap());
                            (StatusCode::TEMPORARY_REDIRECT, "elsewhere")
                        }
                        Answer::Hang(wait) => {
                            // Dropped, unanswered, if the sender hangs up first.
                            tokio::time::sleep(wait).await;
                            (StatusCode::OK, "late")
                        }
                    };
                    if status.is_success() {
                        acks.lock().unwrap().push(request);
                    }
                    (status, location, text)
                }
            }),
        );
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, received, acknowledged, answer }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The distinct event ids it received, answered or not.
    fn event_ids(&self) -> HashSet<String> {
        self.received()
            .iter()
            .map(|request| serde_json::from_slice::<Value>(&request.body).unwrap()["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub(crate) const ALLOW_LOOPBACK: &str = "--webhook-allowed-targets=127.0.0.0/8,::1";

async fn spawn(backend: Backend, extra: &[&str]) -> Option<TestApp> {
    let mut args = vec![ALLOW_LOOPBACK, "--webhook-poll-interval=100ms"];
    args.extend_from_slice(extra);
    TestApp::spawn_with(backend, &args).await
}

pub(crate) async fn register(app: &TestApp, admin: &Credentials, url: &str, events: Value) -> Value {
    let response =
        app.post_json("/api/v1/webhooks", Some(&admin.access_token), &json!({"url": url, "events": events})).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// Whether `header` (`t=…,v1=…[,v1=…]`) holds a valid signature of `body` by `secret`.
fn verifies(header: &str, body: &[u8], secret: &str) -> bool {
    let mut parts = header.split(',');
    let timestamp = parts.next().unwrap().strip_prefix("t=").unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = orderly_kit::hex::lower(ring::hmac::sign(&key, &signed).as_ref());
    parts.any(|part| part.strip_prefix("v1=") == Some(expected.as_str()))
}

async fn deliveries_are_signed_and_verify_with_both_secrets_during_a_rotation(backend: Backend) {
    let Some(app) = spawn(backend, &[]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let endpoint = register(&app, &admin, &receiver.url(), json!(["order.created"])).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() >= 6 + 32, "{secret}");
    // The secret is shown once.
    let shown: Value =
        app.get(&format!("/api/v1/webhooks/{}", id(&endpoint)), Some(&admin.access_token)).await.json().await.unwrap();
    assert!(shown.get("secret").is_none());
    assert_eq!(shown["enabled"], true);

    let product = app.create_product(&admin, json!({"stock": 10})).await;
    let order: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
    let arrived = eventually_within(Duration::from_secs(10), async || !receiver.received().is_empty()).await;
    assert!(arrived, "the delivery arrives");
    let request = receiver.received()[0].clone();
    let event: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["data"]["object"]["id"], id(&order));
    assert_eq!(request.headers["orderly-event-id"], event["id"].as_str().unwrap());
    assert_eq!(request.headers["orderly-event-type"], "order.created");
    assert_eq!(request.headers["content-type"], "application/json");
    assert!(request.headers["user-agent"].to_str().unwrap().starts_with("Orderly"));
    let signature = request.headers["orderly-signature"].to_str().unwrap().to_owned();
    assert!(verifies(&signature, &request.body, &secret), "verifies with the shown secret: {signature}");
    assert!(!verifies(&signature, b"{}", &secret), "and only for the body sent");
    let timestamp: i64 = signature.split(',').next().unwrap()[2..].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);

    let rotated = app
        .post_json(&format!("/api/v1/webhooks/{}/rotate-secret", id(&endpoint)), Some(&admin.access_token), &json!({}))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let arrived = eventually_within(Duration::from_secs(10), async || receiver.received().len() >= 2).await;
    assert!(arrived, "the second delivery arrives");
    let request = receiver.received()[1].clone();
    let signature = request.headers["orderly-signature"].to_str().unwrap().to_owned();
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    assert!(verifies(&signature, &request.body, &new_secret), "verifies with the new secret");
    assert!(verifies(&signature, &request.body, &secret), "and with the old one during the overlap");
    // Only the types it asked for.
    assert!(receiver.received().iter().all(|r| r.headers["orderly-event-type"] == "order.created"));
}

async fn a_failing_receiver_gets_every_event_once_it_is_back(backend: Backend) {
    let Some(app) = spawn(backend, &["--webhook-retry-schedule=1s,1s,1s,1s,1s,1s,1s,1s"]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let receiver = Receiver::start(Answer::Status(503)).await;
    let endpoint = register(&app, &admin, &receiver.url(), json!(["order.created"])).await;
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    let mut orders = HashSet::new();
    for _ in 0..5 {
        let order: Value = app.place_order(&customer, &[(&id(&product), 1)]).await.json().await.unwrap();
        orders.insert(id(&order));
    }
    // Failing: each delivery is tried, then retried about a second later.
    let retried = eventually_within(Duration::from_secs(15), async || receiver.received().len() >= 10).await;
    assert!(retried, "failed deliveries are retried");
    receiver.answer(Answer::Status(204));
    let all = eventually_within(Duration::from_secs(20), async || {
        let page: Value = app
            .get(&format!("/api/v1/webhooks/{}/deliveries?limit=100", id(&endpoint)), Some(&admin.access_token))
            .await
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap();
        data.len() == 5 && data.iter().all(|delivery| delivery["status"] == "succeeded")
    })
    .await;
    assert!(all, "every delivery succeeds once the receiver is back");
    assert_eq!(orders_delivered(&receiver), orders, "every order's event was acknowledged");

    let page: Value = app
        .get(&format!("/api/v1/webhooks/{}/deliveries", id(&endpoint)), Some(&admin.access_token))
        .await
        .json()
        .await
        .unwrap();
    let delivery = &page["data"][0];
    let attempts = delivery["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{delivery}");
    assert_eq!(attempts[0]["status_code"], 503);
    // Retries follow the schedule: a second apart, less 20 % at most.
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        attempts.iter().map(|attempt| attempt["attempted_at"].as_str().unwrap().parse().unwrap()).collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= chrono::TimeDelta::milliseconds(800), "retried after {gap} on a 1 s schedule");
        assert!(gap <= chrono::TimeDelta::milliseconds(3000), "retried after {gap} on a 1 s schedule");
    }
    assert_eq!(attempts[0]["response_body"], "receiver says hello");
    assert!(attempts[0]["error"].as_str().unwrap().contains("503"));
    assert_eq!(attempts.last().unwrap()["status_code"], 204);
    assert_eq!(delivery["attempt_count"], attempts.len() as i64);
    let endpoint_now: Value =
        app.get(&format!("/api/v1/webhooks/{}", id(&endpoint)), Some(&admin.access_token)).await.json().await.unwrap();
    assert!(endpoint_now["failing_since"].is_null() && endpoint_now["last_success_at"].is_string());

    // A manual resend sends it once more.
    let before = receiver.received().len();
    let retry = format!("/api/v1/webhooks/{}/deliveries/{}/retry", id(&endpoint), id(delivery));
    let shouted = format!("/api/v1/webhooks/{}/deliveries/{}/retry", id(&endpoint), id(delivery).to_uppercase());
    let refused = app.post_json(&shouted, Some(&admin.access_token), &json!({})).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND, "an id spelt any other way names nothing");
    let response = app.post_json(&retry, Some(&admin.access_token), &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let resent = eventually_within(Duration::from_secs(10), async || receiver.received().len() > before).await;
    assert!(resent, "a retried delivery is sent again");
    let metrics = scrape_metrics(&app).await;
    assert!(metrics.get("orderly_webhook_deliveries_total{outcome=\"retrying\"}").copied().unwrap_or(0.0) >= 5.0);
    assert!(metrics.get("orderly_webhook_deliveries_total{outcome=\"succeeded\"}").copied().unwrap_or(0.0) >= 5.0);
}

async fn deliveries_out_of_retries_fail_and_recover_resends_them(backend: Backend) {
    let Some(app) = spawn(backend, &["--webhook-retry-schedule=200ms"]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let receiver = Receiver::start(Answer::Status(500)).await;
    let endpoint = register(&app, &admin, &receiver.url(), json!(["order.created"])).await;
    let started = chrono::Utc::now();
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let deliveries = format!("/api/v1/webhooks/{}/deliveries", id(&endpoint));
    let failed = eventually_within(Duration::from_secs(10), async || {
        let page: Value = app.get(&deliveries, Some(&admin.access_token)).await.json().await.unwrap();
        page["data"][0]["status"] == "failed"
    })
    .await;
    assert!(failed, "a delivery out of retries has failed");
    assert_eq!(receiver.received().len(), 2, "one attempt and one retry");
    receiver.answer(Answer::Status(200));
    let since = (started - chrono::TimeDelta::seconds(1)).to_rfc3339();
    let recover = format!("/api/v1/webhooks/{}/recover", id(&endpoint));
    let response = app.post_json(&recover, Some(&admin.access_token), &json!({"since": since})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["recovered"], 1);
    let delivered = eventually_within(Duration::from_secs(10), async || {
        let page: Value = app.get(&deliveries, Some(&admin.access_token)).await.json().await.unwrap();
        page["data"][0]["status"] == "succeeded"
    })
    .await;
    assert!(delivered, "recover resends what failed");
}

async fn a_410_disables_the_endpoint_at_once(backend: Backend) {
    let Some(app) = spawn(backend, &[]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let receiver = Receiver::start(Answer::Status(410)).await;
    let endpoint = register(&app, &admin, &receiver.url(), json!(["*"])).await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let path = format!("/api/v1/webhooks/{}", id(&endpoint));
    let disabled = eventually_within(Duration::from_secs(10), async || {
        let now: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
        now["enabled"] == false
    })
    .await;
    assert!(disabled, "a 410 disables the endpoint");
    let now: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
    assert!(now["disabled_reason"].as_str().unwrap().contains("410"));
    let calls = receiver.received().len();
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), calls, "a disabled endpoint gets nothing more");
    let metrics = scrape_metrics(&app).await;
    assert_eq!(metrics.get("orderly_webhook_endpoints_disabled").copied(), Some(1.0));
    // Enabled again, it receives again.
    receiver.answer(Answer::Status(200));
    let enabled = app
        .send_json(http::Method::PATCH, &path, Some(&admin.access_token), &json!({"enabled": true}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null());
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let again = eventually_within(Duration::from_secs(10), async || receiver.received().len() > calls).await;
    assert!(again, "an endpoint enabled again receives events");
}

async fn a_slow_receiver_does_not_delay_another(backend: Backend) {
    // Three attempts at once in all, two per endpoint: without the per-endpoint bound the slow
    // receiver would hold all three.
    let args = ["--webhook-timeout=8s", "--webhook-concurrency=3", "--webhook-endpoint-concurrency=2"];
    let Some(app) = spawn(backend, &args).await else {
        return;
    };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let slow = Receiver::start(Answer::Hang(Duration::from_secs(6))).await;
    let fast = Receiver::start(Answer::Status(200)).await;
    register(&app, &admin, &slow.url(), json!(["order.created"])).await;
    register(&app, &admin, &fast.url(), json!(["order.created"])).await;
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    for _ in 0..8 {
        app.place_order(&customer, &[(&id(&product), 1)]).await;
    }
    let started = std::time::Instant::now();
    let fast_done = eventually_within(Duration::from_secs(5), async || fast.event_ids().len() == 8).await;
    assert!(fast_done, "the fast receiver got all 8 while the slow one hangs ({:?})", started.elapsed());
    assert!(slow.received().len() <= 2, "the slow one holds at most its own two slots: {}", slow.received().len());
}

async fn a_redirect_is_a_failure_and_is_not_followed(backend: Backend) {
    let Some(app) = spawn(backend, &["--webhook-retry-schedule=1h"]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let elsewhere = Receiver::start(Answer::Status(200)).await;
    let redirecting = Receiver::start(Answer::Redirect(elsewhere.url())).await;
    let endpoint = register(&app, &admin, &redirecting.url(), json!(["order.created"])).await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let path = format!("/api/v1/webhooks/{}/deliveries", id(&endpoint));
    let mut delivery = Value::Null;
    let attempted = eventually_within(Duration::from_secs(10), async || {
        let page: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
        delivery = page["data"][0].clone();
        delivery["attempts"].as_array().is_some_and(|attempts| !attempts.is_empty())
    })
    .await;
    assert!(attempted);
    assert_eq!(delivery["status"], "pending", "a redirect is retried later: {delivery}");
    assert_eq!(delivery["attempts"][0]["status_code"], 307);
    assert!(delivery["attempts"][0]["error"].as_str().unwrap().contains("redirect"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(elsewhere.received().is_empty(), "the redirect was not followed");
}

async fn registration_refuses_every_unsafe_address_form(backend: Backend) {
    // No allow-list: the defaults of a deployment.
    let Some(app) = TestApp::spawn(backend).await else { return };
    let admin = app.admin().await;
    for url in [
        "http://8.8.8.8/hook",
        "ftp://8.8.8.8/hook",
        "https://user:secret@8.8.8.8/hook",
        "https://127.0.0.1/hook",
        "https://127.1.2.3:8443/hook",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://2130706433/hook",
        "https://0x7f.0.0.1/hook",
        "https://0177.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://172.16.5.4/hook",
        "https://192.168.1.1/hook",
        "https://100.64.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        "https://255.255.255.255/hook",
        "https://240.0.0.1/hook",
        "https://[fe80::1]/hook",
        "https://[fc00::1]/hook",
        "https://[ff02::1]/hook",
        "https://[::]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[64:ff9b::a9fe:a9fe]/hook",
        "https://[2002:7f00:1::1]/hook",
    ] {
        let response =
            app.post_json("/api/v1/webhooks", Some(&admin.access_token), &json!({"url": url, "events": ["*"]})).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "unsafe_url").await;
    }
    let bad = app
        .post_json(
            "/api/v1/webhooks",
            Some(&admin.access_token),
            &json!({"url": "https://x/", "events": ["order.shipped"]}),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let list: Value = app.get("/api/v1/webhooks", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing was registered");
    let customer = app.customer().await;
    let response = app
        .post_json(
            "/api/v1/webhooks",
            Some(&customer.access_token),
            &json!({"url": "https://8.8.8.8/", "events": ["*"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

async fn endpoints_are_listed_changed_and_deleted(backend: Backend) {
    let Some(app) = spawn(backend, &[]).await else { return };
    let admin = app.admin().await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let first = register(&app, &admin, &receiver.url(), json!(["order.paid", "order.paid"])).await;
    assert_eq!(first["events"], json!(["order.paid"]));
    let second = register(&app, &admin, &receiver.url(), json!(["*"])).await;
    let list: Value = app.get("/api/v1/webhooks?limit=1", Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], second["id"]);
    assert!(list["data"][0].get("secret").is_none());
    let cursor = list["next_cursor"].as_str().unwrap();
    let next: Value = app
        .get(&format!("/api/v1/webhooks?limit=1&cursor={cursor}"), Some(&admin.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["data"][0]["id"], first["id"]);
    let path = format!("/api/v1/webhooks/{}", id(&first));
    let changed = app
        .send_json(
            http::Method::PATCH,
            &path,
            Some(&admin.access_token),
            &json!({"events": ["payment.refunded"], "description": "refunds"}),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["events"], json!(["payment.refunded"]));
    assert_eq!(changed["description"], "refunds");
    let unsafe_change = app
        .send_json(http::Method::PATCH, &path, Some(&admin.access_token), &json!({"url": "https://10.1.1.1/"}))
        .await;
    assert_problem(unsafe_change, StatusCode::UNPROCESSABLE_ENTITY, "unsafe_url").await;
    let deleted = app.request(http::Method::DELETE, &path).bearer_auth(&admin.access_token).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path, Some(&admin.access_token)).await.status(), StatusCode::NOT_FOUND);
    let again = app.request(http::Method::DELETE, &path).bearer_auth(&admin.access_token).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

/// An `/etc/hosts` line naming a test's host, removed when dropped.
struct HostsEntry {
    name: String,
}

impl HostsEntry {
    const PATH: &str = "/etc/hosts";

    /// `None` (with the reason printed) where `/etc/hosts` cannot be written.
    fn add(name: &str, address: &str) -> Option<Self> {
        let entry = Self { name: name.to_owned() };
        entry.point_at(address).then_some(entry)
    }

    fn point_at(&self, address: &str) -> bool {
        let Ok(hosts) = std::fs::read_to_string(Self::PATH) else { return false };
        let mut lines: Vec<String> =
            hosts.lines().filter(|line| !line.ends_with(&format!(" {}", self.name))).map(str::to_owned).collect();
        lines.push(format!("{address} {}", self.name));
        match std::fs::write(Self::PATH, lines.join("\n") + "\n") {
            Ok(()) => true,
            Err(error) => {
                println!("cannot write {}: {error}", Self::PATH);
                false
            }
        }
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        if let Ok(hosts) = std::fs::read_to_string(Self::PATH) {
            let kept: Vec<&str> = hosts.lines().filter(|line| !line.ends_with(&format!(" {}", self.name))).collect();
            let _ = std::fs::write(Self::PATH, kept.join("\n") + "\n");
        }
    }
}

/// With only 127.0.0.1 allowed, a name that resolves there when registered and to 127.0.0.2
/// when delivered gets no connection: the address is checked as the connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_rebound_to_a_refused_address_gets_no_connection() {
    let name = format!("rebind-{}.orderly.test", uuid::Uuid::new_v4().simple());
    let Some(hosts) = HostsEntry::add(&name, "127.0.0.1") else {
        assert!(!crate::helpers::in_ci(), "CI must be able to write /etc/hosts");
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let args = ["--webhook-allowed-targets=127.0.0.1/32", "--webhook-poll-interval=100ms"];
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, &args).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let endpoint = register(&app, &admin, &format!("http://{name}:{port}/hook"), json!(["order.created"])).await;
    assert!(hosts.point_at("127.0.0.2"), "the name now resolves to 127.0.0.2");
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let deliveries = format!("/api/v1/webhooks/{}/deliveries", id(&endpoint));
    let attempted = eventually_within(Duration::from_secs(10), async || {
        let page: Value = app.get(&deliveries, Some(&admin.access_token)).await.json().await.unwrap();
        page["data"][0]["attempts"].as_array().is_some_and(|attempts| !attempts.is_empty())
    })
    .await;
    assert!(attempted, "the delivery was attempted");
    let page: Value = app.get(&deliveries, Some(&admin.access_token)).await.json().await.unwrap();
    let attempt = &page["data"][0]["attempts"][0];
    assert!(attempt["status_code"].is_null(), "{attempt}");
    assert!(!attempt["error"].as_str().unwrap().is_empty());
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing connected to 127.0.0.2");
    // Registration refuses the name now, too.
    let again = app
        .post_json(
            "/api/v1/webhooks",
            Some(&admin.access_token),
            &json!({"url": format!("http://{name}:{port}/hook"), "events": ["*"]}),
        )
        .await;
    assert_problem(again, StatusCode::UNPROCESSABLE_ENTITY, "unsafe_url").await;

    // Names that resolve to internal addresses of every kind are refused as the addresses are.
    let mut entries = Vec::new();
    for (label, address) in [
        ("private", "10.1.2.3"),
        ("metadata", "169.254.169.254"),
        ("cgnat", "100.64.1.1"),
        ("unique-local", "fd00::1"),
        ("link-local6", "fe80::1"),
        ("mapped", "::ffff:192.168.0.1"),
        ("nat64", "64:ff9b::a9fe:a9fe"),
    ] {
        let name = format!("{label}-{}.orderly.test", uuid::Uuid::new_v4().simple());
        entries.push(HostsEntry::add(&name, address).expect("/etc/hosts was writable a moment ago"));
        let response = app
            .post_json(
                "/api/v1/webhooks",
                Some(&admin.access_token),
                &json!({"url": format!("https://{name}/hook"), "events": ["*"]}),
            )
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "unsafe_url").await;
    }
}

/// The ids of the orders whose `order.created` a receiver acknowledged.
fn orders_delivered(receiver: &Receiver) -> HashSet<String> {
    receiver
        .acknowledged
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["object"]["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn place_orders(app: &TestApp, customer: &Credentials, product: &Value, count: usize) -> HashSet<String> {
    let mut orders = HashSet::new();
    for _ in 0..count {
        let order: Value = app.place_order(customer, &[(&id(product), 1)]).await.json().await.unwrap();
        orders.insert(id(&order));
    }
    orders
}

async fn a_receiver_that_was_down_or_hung_gets_every_event_once_it_is_back(backend: Backend) {
    let args = ["--webhook-retry-schedule=1s,1s,1s,1s,1s,1s,1s,1s,1s,1s", "--webhook-timeout=1s"];
    let Some(app) = spawn(backend, &args).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    // Down: nothing listens on its port.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let down = register(&app, &admin, &format!("http://{address}/hook"), json!(["order.created"])).await;
    // Hung: answers after the timeout.
    let hung = Receiver::start(Answer::Hang(Duration::from_secs(3))).await;
    let hung_endpoint = register(&app, &admin, &hung.url(), json!(["order.created"])).await;
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    let orders = place_orders(&app, &customer, &product, 4).await;

    let first_attempt = async |endpoint: &Value| -> Value {
        let path = format!("/api/v1/webhooks/{}/deliveries", id(endpoint));
        let mut found = Value::Null;
        let seen = eventually_within(Duration::from_secs(10), async || {
            let page: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
            found = page["data"][0]["attempts"][0].clone();
            !found.is_null()
        })
        .await;
        assert!(seen, "an attempt is recorded");
        found
    };
    let refused = first_attempt(&down).await;
    assert!(refused["status_code"].is_null() && !refused["error"].as_str().unwrap().is_empty(), "{refused}");
    let timed_out = first_attempt(&hung_endpoint).await;
    assert!(timed_out["status_code"].is_null(), "{timed_out}");
    assert!(timed_out["error"].as_str().unwrap().contains("no response within"), "{timed_out}");

    let back = Receiver::start_at(address, Answer::Status(200)).await;
    hung.answer(Answer::Status(200));
    let all = eventually_within(Duration::from_secs(30), async || {
        orders_delivered(&back) == orders && orders.is_subset(&orders_delivered(&hung))
    })
    .await;
    assert!(all, "both receivers got every event once back");
}

async fn an_endpoint_failing_too_long_is_disabled(backend: Backend) {
    let Some(app) = spawn(backend, &["--webhook-retry-schedule=200ms", "--webhook-disable-after=1s"]).await else {
        return;
    };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let receiver = Receiver::start(Answer::Status(500)).await;
    let endpoint = register(&app, &admin, &receiver.url(), json!(["order.created"])).await;
    let path = format!("/api/v1/webhooks/{}", id(&endpoint));
    let product = app.create_product(&admin, json!({"stock": 50})).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let failing = eventually_within(Duration::from_secs(10), async || receiver.received().len() >= 2).await;
    assert!(failing, "the first delivery spends its retries");
    let now: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
    assert_eq!(now["enabled"], true, "failing for less than the limit: still enabled");
    assert!(now["failing_since"].is_string());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.place_order(&customer, &[(&id(&product), 1)]).await;
    let disabled = eventually_within(Duration::from_secs(10), async || {
        let now: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
        now["enabled"] == false
    })
    .await;
    assert!(disabled, "failing longer than the limit, out of retries: disabled");
    let now: Value = app.get(&path, Some(&admin.access_token)).await.json().await.unwrap();
    assert!(now["disabled_reason"].as_str().unwrap().contains("too long"), "{now}");
    assert_eq!(scrape_metrics(&app).await.get("orderly_webhook_endpoints_disabled").copied(), Some(1.0));
}

async fn a_worker_killed_mid_delivery_loses_nothing(backend: Backend) {
    let Some(api) = spawn(backend, &["--run-worker=false"]).await else { return };
    let admin = api.admin().await;
    let customer = api.customer().await;
    let receiver = Receiver::start(Answer::Hang(Duration::from_secs(30))).await;
    register(&api, &admin, &receiver.url(), json!(["order.created"])).await;
    let flags = ["--webhook-timeout=2s", "--webhook-poll-interval=100ms", "--relay-interval=100ms"];
    let mut first = api.spawn_worker_process(&flags).await;
    let product = api.create_product(&admin, json!({"stock": 50})).await;
    let orders = place_orders(&api, &customer, &product, 6).await;
    let in_flight = eventually_within(Duration::from_secs(10), async || !receiver.received().is_empty()).await;
    assert!(in_flight, "deliveries are under way");
    first.kill();
    receiver.answer(Answer::Status(200));
    let _second = api.spawn_worker_process(&flags).await;
    let all = eventually_within(Duration::from_secs(40), async || orders_delivered(&receiver) == orders).await;
    assert!(all, "every event arrives after the worker died mid-delivery");
}

crate::on_every_backend_with_backend!(
    a_receiver_that_was_down_or_hung_gets_every_event_once_it_is_back,
    an_endpoint_failing_too_long_is_disabled,
    a_worker_killed_mid_delivery_loses_nothing,
    deliveries_are_signed_and_verify_with_both_secrets_during_a_rotation,
    a_failing_receiver_gets_every_event_once_it_is_back,
    deliveries_out_of_retries_fail_and_recover_resends_them,
    a_410_disables_the_endpoint_at_once,
    a_slow_receiver_does_not_delay_another,
    a_redirect_is_a_failure_and_is_not_followed,
    registration_refuses_every_unsafe_address_form,
    endpoints_are_listed_changed_and_deleted,
);
