//! The relay on RabbitMQ: every committed event reaches `orderly.events` (routing key = type,
//! `message_id` = id, persistent), in order per order, through relays running side by side,
//! relays killed mid-batch and a broker killed mid-stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::broker::{EventConsumer, PrivateRabbitMq, Received, amqp_url};
use crate::events::all_events;
use crate::helpers::{Backend, Credentials, TestApp, eventually_within};
use crate::payments::{id, pay};

/// The ids of every event the app has recorded.
async fn event_ids(app: &TestApp, admin: &Credentials) -> HashSet<String> {
    all_events(app, admin, "").await.iter().map(|event| event["id"].as_str().unwrap().to_owned()).collect()
}

/// Waits (up to `timeout`) until `consumer` has received every event of `app`; returns them.
async fn wait_for_all(
    app: &TestApp,
    admin: &Credentials,
    consumer: &EventConsumer,
    timeout: Duration,
) -> Vec<Received> {
    let ids = event_ids(app, admin).await;
    let all_there = eventually_within(timeout, async || {
        let received: HashSet<String> = consumer.received_of(&ids).into_iter().map(|m| m.message_id).collect();
        received.len() == ids.len()
    })
    .await;
    let received = consumer.received_of(&ids);
    let missing = ids.len() - received.iter().map(|m| &m.message_id).collect::<HashSet<_>>().len();
    assert!(all_there, "{missing} of {} events never arrived", ids.len());
    received
}

/// Places `count` orders of one unit each, paying every third.
async fn place_orders(app: &TestApp, customer: &Credentials, product: &str, count: usize, label: &str) {
    for n in 0..count {
        let response = app.place_order(customer, &[(product, 1)]).await;
        assert_eq!(response.status(), StatusCode::CREATED, "order {n}: {}", response.text().await.unwrap());
        if n % 3 == 0 {
            let order: Value = response.json().await.unwrap();
            let paid = pay(app, customer, &id(&order), "pm_card_visa", &format!("{label}-{n}")).await;
            assert_eq!(paid.status(), StatusCode::CREATED);
        }
    }
}

/// For each order, the types of its events in the order they arrived (first arrivals only).
fn arrival_order(received: &[Received]) -> HashMap<String, Vec<String>> {
    let mut seen = HashSet::new();
    let mut by_order: HashMap<String, Vec<String>> = HashMap::new();
    for message in received {
        if !seen.insert(message.message_id.clone()) {
            continue;
        }
        let object = &message.body["data"]["object"];
        let order = match message.routing_key.as_str() {
            "order.created" | "order.paid" | "order.cancelled" => &object["id"],
            "payment.succeeded" | "payment.failed" | "payment.refunded" => &object["order_id"],
            _ => continue,
        };
        by_order.entry(order.as_str().unwrap().to_owned()).or_default().push(message.routing_key.clone());
    }
    by_order
}

fn assert_in_order(received: &[Received]) {
    for (order, types) in arrival_order(received) {
        let expected: &[&str] =
            if types.len() == 1 { &["order.created"] } else { &["order.created", "payment.succeeded", "order.paid"] };
        assert_eq!(types, expected, "events of order {order} arrived out of order");
    }
}

async fn events_are_published_to_the_exchange_as_served(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let consumer = EventConsumer::start(&url).await;
    let amqp = format!("--amqp-url={url}");
    let Some(app) = TestApp::spawn_with(backend, &[&amqp, "--relay-interval=50ms"]).await else { return };
    let admin = app.admin().await;
    let customer = app.customer().await;
    let product = app.create_product(&admin, json!({"stock": 10})).await;
    place_orders(&app, &customer, &id(&product), 3, "pay").await;

    let received = wait_for_all(&app, &admin, &consumer, Duration::from_secs(20)).await;
    let events = all_events(&app, &admin, "").await;
    assert_eq!(received.len(), events.len(), "each event published once");
    for event in &events {
        let message = received.iter().find(|m| m.message_id == event["id"]).unwrap();
        assert_eq!(message.routing_key, event["type"].as_str().unwrap());
        assert!(message.persistent, "published persistent");
        assert_eq!(message.content_type, "application/json");
        assert_eq!(&message.body, event, "the body is the event as GET /events serves it");
    }
    assert_in_order(&received);

    let ready: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["rabbitmq"], "ok");
}

async fn three_relays_publish_each_event_once_and_each_order_in_order(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let consumer = EventConsumer::start(&url).await;
    let amqp = format!("--amqp-url={url}");
    // Small batches and short waits, so the three relays contend for the same events.
    let flags = [amqp.as_str(), "--relay-interval=10ms", "--relay-batch=7"];
    let Some(first) = TestApp::spawn_with(backend, &flags).await else { return };
    let second = first.spawn_sibling(&[]).await;
    let third = first.spawn_sibling(&[]).await;
    let admin = first.admin().await;
    let product = first.create_product(&admin, json!({"stock": 1000})).await;
    let customers = futures_util::future::join_all([&first, &second, &third].map(|app| app.customer())).await;
    let placing = [&first, &second, &third].into_iter().zip(&customers).enumerate().map(|(n, (app, customer))| {
        let product = id(&product);
        async move { place_orders(app, customer, &product, 40, &format!("relay-{n}")).await }
    });
    futures_util::future::join_all(placing).await;

    let received = wait_for_all(&first, &admin, &consumer, Duration::from_secs(30)).await;
    let ids: HashSet<&String> = received.iter().map(|m| &m.message_id).collect();
    assert_eq!(received.len(), ids.len(), "no event published twice by relays running side by side");
    assert_in_order(&received);
}

async fn a_relay_killed_mid_batch_loses_nothing(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let consumer = EventConsumer::start(&url).await;
    let amqp = format!("--amqp-url={url}");
    // The API publishes nothing itself: a worker process does, and is killed while it does.
    let Some(api) = TestApp::spawn_with(backend, &[&amqp, "--run-worker=false"]).await else { return };
    let worker_flags = ["--relay-interval=10ms", "--relay-batch=3", "--relay-lease=3s"];
    let mut worker = api.spawn_worker_process(&worker_flags).await;
    let admin = api.admin().await;
    let customer = api.customer().await;
    let product = api.create_product(&admin, json!({"stock": 1000})).await;
    let product_id = id(&product);
    let placing = place_orders(&api, &customer, &product_id, 60, "killed");
    let killing = async {
        // Once the worker is publishing, kill it mid-stream, then start another.
        let started = eventually_within(Duration::from_secs(20), async || !consumer.received().is_empty()).await;
        assert!(started, "the worker publishes");
        worker.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.spawn_worker_process(&worker_flags).await
    };
    let ((), replacement) = tokio::join!(placing, killing);

    // The killed worker's claims lapse after their lease: every event arrives.
    let received = wait_for_all(&api, &admin, &consumer, Duration::from_secs(60)).await;
    assert_in_order(&received);
    let ready = replacement.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["rabbitmq"], "ok");
}

async fn claims_of_a_dead_relay_are_published_once_their_lease_lapses(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let consumer = EventConsumer::start(&url).await;
    let amqp = format!("--amqp-url={url}");
    let Some(api) = TestApp::spawn_with(backend, &[&amqp, "--run-worker=false"]).await else { return };
    let admin = api.admin().await;
    let customer = api.customer().await;
    let product = api.create_product(&admin, json!({"stock": 100})).await;
    place_orders(&api, &customer, &id(&product), 10, "leased").await;
    // As a relay killed between claiming and publishing leaves them: claimed for 3 s more.
    let until =
        (chrono::Utc::now() + chrono::TimeDelta::seconds(3)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    api.execute_sql(&format!("UPDATE events SET claimed_until = '{until}'")).await;
    let ids = event_ids(&api, &admin).await;

    let _worker = api.spawn_worker_process(&["--relay-interval=20ms"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(consumer.received_of(&ids).is_empty(), "a live lease is respected");
    let received = wait_for_all(&api, &admin, &consumer, Duration::from_secs(15)).await;
    assert_eq!(received.len(), ids.len());
    assert_in_order(&received);
}

async fn rabbitmq_killed_and_restarted_mid_stream_loses_nothing(backend: Backend) {
    let Some(mut broker) = PrivateRabbitMq::start() else { return };
    let consumer = EventConsumer::start(&broker.url()).await;
    let amqp = format!("--amqp-url={}", broker.url());
    let Some(api) = TestApp::spawn_with(backend, &[&amqp, "--run-worker=false"]).await else { return };
    let worker = api.spawn_worker_process(&["--relay-interval=20ms", "--relay-batch=5"]).await;
    let admin = api.admin().await;
    let customer = api.customer().await;
    let product = api.create_product(&admin, json!({"stock": 1000})).await;

    place_orders(&api, &customer, &id(&product), 15, "before").await;
    broker.kill();
    // Orders go on while the broker is down: their events wait in the outbox.
    place_orders(&api, &customer, &id(&product), 15, "during").await;
    let worker_ready = worker.get("/readyz", None).await;
    assert_eq!(worker_ready.status(), StatusCode::SERVICE_UNAVAILABLE, "a worker without its broker is not ready");
    let api_ready = api.get("/readyz", None).await;
    assert_eq!(api_ready.status(), StatusCode::OK, "the API serves without the broker");
    let api_ready: Value = api_ready.json().await.unwrap();
    assert!(api_ready["checks"]["rabbitmq"].as_str().unwrap().starts_with("degraded"), "{api_ready}");
    broker.restart();
    place_orders(&api, &customer, &id(&product), 15, "after").await;

    let received = wait_for_all(&api, &admin, &consumer, Duration::from_secs(60)).await;
    assert_in_order(&received);
    let ready = eventually_within(Duration::from_secs(10), async || {
        worker.get("/readyz", None).await.status() == StatusCode::OK
    })
    .await;
    assert!(ready, "the worker is ready again once the broker is back");
}

/// A job announced over RabbitMQ wakes a worker at once (it would otherwise wait for its next
/// look at the database, a minute away here).
async fn an_announced_job_runs_at_once(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let amqp = format!("--amqp-url={url}");
    // A queue of its own: a worker of another deployment would dead-letter this one's jobs.
    let queue = JobsQueue::new(&url);
    let queue_flag = format!("--amqp-jobs-queue={}", queue.name);
    let flags = [amqp.as_str(), &queue_flag, "--job-poll-interval=60s"];
    let Some(app) = TestApp::spawn_with(backend, &flags).await else { return };
    let customer = app.customer().await;
    // The worker's first look at the database is behind it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = app.post_json("/api/v1/reports", Some(&customer.access_token), &json!({"kind": "orders_csv"})).await;
    assert_eq!(report.status(), StatusCode::ACCEPTED);
    let report: Value = report.json().await.unwrap();
    let path = format!("/api/v1/reports/{}", id(&report));
    let done = eventually_within(Duration::from_secs(10), async || {
        let seen: Value = app.get(&path, Some(&customer.access_token)).await.json().await.unwrap();
        seen["status"] == "succeeded"
    })
    .await;
    assert!(done, "the announcement woke the worker");
    queue.delete().await;
}

/// Announcements that name no job (unreadable, or unknown) are rejected into the dead-letter
/// queue, where an operator can look at them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_announcements_reach_the_dead_letter_queue() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
    use lapin::types::FieldTable;

    let Some(url) = amqp_url() else { return };
    let amqp = format!("--amqp-url={url}");
    let queue = JobsQueue::new(&url);
    let queue_flag = format!("--amqp-jobs-queue={}", queue.name);
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, &[&amqp, &queue_flag]).await else { return };
    // Ready means connected, with the queues declared.
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let marker = uuid::Uuid::now_v7().to_string();
    let poison: [(&str, Vec<u8>); 3] = [
        ("unreadable", b"not a job id".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00]),
        ("unknown", uuid::Uuid::now_v7().to_string().into_bytes()),
    ];
    for (label, body) in &poison {
        let properties = lapin::BasicProperties::default().with_message_id(format!("{marker}-{label}").into());
        channel
            .basic_publish("".into(), queue.name.as_str().into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap();
    }
    let mut dead = channel
        .basic_consume(
            format!("{}.dead", queue.name).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut found = HashSet::new();
    let collected = tokio::time::timeout(Duration::from_secs(20), async {
        while found.len() < poison.len() {
            let delivery = dead.next().await.unwrap().unwrap();
            let id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
            if let Some(label) = id.strip_prefix(&format!("{marker}-")) {
                found.insert(label.to_owned());
            }
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    })
    .await;
    assert!(collected.is_ok(), "dead-lettered: {found:?}");
    queue.delete().await;
}

/// A jobs queue of a test's own, deleted (with its dead letters) by [`JobsQueue::delete`].
struct JobsQueue {
    url: String,
    name: String,
}

impl JobsQueue {
    fn new(url: &str) -> Self {
        Self { url: url.to_owned(), name: format!("orderly-test-jobs-{}", uuid::Uuid::now_v7().simple()) }
    }

    async fn delete(self) {
        let connection = lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let dead = format!("{}.dead", self.name);
        for queue in [self.name.as_str(), dead.as_str()] {
            channel.queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default()).await.unwrap();
        }
        channel.exchange_delete(dead.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await.unwrap();
    }
}

crate::on_every_backend_with_backend!(
    an_announced_job_runs_at_once,
    events_are_published_to_the_exchange_as_served,
    three_relays_publish_each_event_once_and_each_order_in_order,
    a_relay_killed_mid_batch_loses_nothing,
    claims_of_a_dead_relay_are_published_once_their_lease_lapses,
    rabbitmq_killed_and_restarted_mid_stream_loses_nothing,
);
