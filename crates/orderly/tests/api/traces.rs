//! Traces: with `ORDERLY_OTLP_ENDPOINT` set, one paid order is one trace, from the request
//! that paid it (continuing the caller's `traceparent`) through the payment provider call,
//! the event's publication (in RabbitMQ's message headers too) to its webhook delivery; the
//! receiver here is an OTLP/HTTP endpoint decoding the protobuf the processes send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

use crate::broker::{EventConsumer, amqp_url};
use crate::fake_provider::FakeProvider;
use crate::helpers::{Backend, TestApp, eventually_within, redis_flags, redis_url, unique_redis_prefix};
use crate::payments::{id, pending_order};
use crate::webhooks::{ALLOW_LOOPBACK, Answer, Receiver, register};

/// A span as received, with the process that sent it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: SpanKind,
    attributes: HashMap<String, String>,
    error: bool,
    process: String,
}

/// An OTLP/HTTP receiver on 127.0.0.1: decodes every `POST /v1/traces` and keeps its spans.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    assert_eq!(headers[http::header::CONTENT_TYPE], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut kept = kept.lock().unwrap();
                    for resource_spans in request.resource_spans {
                        let resource = resource_spans.resource.map(|resource| attributes(&resource.attributes));
                        let resource = resource.unwrap_or_default();
                        assert_eq!(resource.get("service.name").map(String::as_str), Some("orderly"));
                        let process = resource.get("orderly.process").cloned().unwrap_or_default();
                        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                            kept.push(Span {
                                trace_id: orderly_kit::hex::lower(&span.trace_id),
                                span_id: orderly_kit::hex::lower(&span.span_id),
                                parent_span_id: orderly_kit::hex::lower(&span.parent_span_id),
                                kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                                attributes: attributes(&span.attributes),
                                error: span.status.is_some_and(|status| status.code == 2),
                                name: span.name,
                                process: process.clone(),
                            });
                        }
                    }
                    (
                        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::default()
                            .encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|value: &Any| value.value.as_ref()) {
                Some(AnyValue::StringValue(text)) => text.clone(),
                Some(AnyValue::IntValue(number)) => number.to_string(),
                Some(AnyValue::BoolValue(flag)) => flag.to_string(),
                Some(AnyValue::DoubleValue(number)) => number.to_string(),
                _ => String::new(),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

/// `(trace id, parent id)` of a `traceparent`.
fn ids_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The chain of spans from `span` up to the trace's root, as received.
fn ancestors<'a>(spans: &'a [Span], span: &'a Span) -> Vec<&'a Span> {
    let mut chain = vec![span];
    while let Some(parent) = spans.iter().find(|candidate| candidate.span_id == chain.last().unwrap().parent_span_id) {
        chain.push(parent);
    }
    chain
}

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

async fn a_paid_order_is_one_trace_from_the_request_to_its_webhook_delivery(backend: Backend) {
    // RabbitMQ carries the trace, and Redis holds the shared state, on PostgreSQL; the
    // in-process bus and per-instance state on SQLite.
    let amqp = if backend == Backend::Postgres { amqp_url() } else { None };
    let redis = if backend == Backend::Postgres { redis_url() } else { None };
    let consumer = match &amqp {
        Some(url) => Some(EventConsumer::start(url).await),
        None => None,
    };
    let collector = Collector::start().await;
    let provider = FakeProvider::start().await;
    let otlp = format!("--otlp-endpoint={}", collector.url);
    let provider_url = format!("--payment-provider-url={}", provider.url);
    let mut api_flags = vec![otlp.clone(), provider_url, ALLOW_LOOPBACK.to_owned(), "--run-worker=false".to_owned()];
    if let Some(url) = &redis {
        api_flags.extend(redis_flags(url, &unique_redis_prefix()));
    }
    let api_flags: Vec<&str> = api_flags.iter().map(String::as_str).collect();
    let Some(mut api) = TestApp::spawn_process(backend, &api_flags).await else { return };
    let (admin, customer, order) = pending_order(&api, 1).await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    register(&api, &admin, &receiver.url(), json!(["order.paid"])).await;
    let mut worker_flags = vec![otlp.clone(), ALLOW_LOOPBACK.to_owned(), "--relay-interval=50ms".to_owned()];
    worker_flags.push("--webhook-poll-interval=100ms".to_owned());
    if let Some(url) = &amqp {
        worker_flags.push(format!("--amqp-url={url}"));
    }
    let worker_flags: Vec<&str> = worker_flags.iter().map(String::as_str).collect();
    let mut worker = api.spawn_worker_process(&worker_flags).await;

    let order_id = id(&order);
    let response = api
        .request(reqwest::Method::POST, &format!("/api/v1/orders/{order_id}/payments"))
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", "trace-pay-1")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{:?}", response.text().await);
    let delivered = eventually_within(Duration::from_secs(20), async || !receiver.received().is_empty()).await;
    assert!(delivered, "the order.paid event reaches the webhook receiver");
    // A job, run by the worker.
    let report = api.post_json("/api/v1/reports", Some(&admin.access_token), &json!({"kind": "orders_csv"})).await;
    assert_eq!(report.status(), reqwest::StatusCode::ACCEPTED);
    let report_path = report.headers()["location"].to_str().unwrap().to_owned();
    let exported = eventually_within(Duration::from_secs(20), async || {
        let report: serde_json::Value = api.get(&report_path, Some(&admin.access_token)).await.json().await.unwrap();
        report["status"] == "succeeded"
    })
    .await;
    assert!(exported, "the report job ran");
    // Spans are sent in batches; what is left goes out when the processes stop.
    assert!(api.terminate(Duration::from_secs(15)).await, "the API stops cleanly");
    assert!(worker.terminate(Duration::from_secs(15)).await, "the worker stops cleanly");

    let spans = collector.spans();
    let in_trace: Vec<Span> = spans.iter().filter(|span| span.trace_id == CALLER_TRACE).cloned().collect();
    let one = |what: &str, found: Vec<&Span>| -> Span {
        assert_eq!(found.len(), 1, "one {what} span in the caller's trace: {in_trace:#?}");
        found[0].clone()
    };

    // The request continues the caller's trace, as a server span named by its route.
    let request = one("request", in_trace.iter().filter(|span| span.kind == SpanKind::Server).collect());
    assert_eq!(request.parent_span_id, CALLER_SPAN, "the caller's span is the request's parent");
    assert_eq!(request.name, "POST /api/v1/orders/{id}/payments");
    assert_eq!(request.attributes["http.route"], "/api/v1/orders/{id}/payments");
    assert_eq!(request.attributes["http.request.method"], "POST");
    assert_eq!(request.attributes["http.response.status_code"], "201");
    assert_eq!(request.process, "api");
    assert!(!request.error);

    // The provider got the traceparent of the span that called it, a child of the request.
    let charge_traceparents = provider.charge_traceparents();
    assert_eq!(charge_traceparents.len(), 1, "one charge call");
    let (provider_trace, provider_parent) = ids_of(&charge_traceparents[0]);
    assert_eq!(provider_trace, CALLER_TRACE);
    let call = one("provider call", in_trace.iter().filter(|span| span.span_id == provider_parent).collect());
    assert_eq!((call.kind, call.name.as_str()), (SpanKind::Client, "POST /charges"));
    assert_eq!(call.attributes["http.response.status_code"], "201");
    assert!(ancestors(&in_trace, &call).iter().any(|span| span.span_id == request.span_id));

    // Units of work have spans of their own under the request.
    let system = if backend == Backend::Postgres { "postgresql" } else { "sqlite" };
    let units: Vec<&Span> = in_trace
        .iter()
        .filter(|span| span.attributes.get("db.system.name").map(String::as_str) == Some(system))
        .filter(|span| span.process == "api")
        .collect();
    assert!(!units.is_empty(), "database units of work are traced");
    assert!(units.iter().all(|unit| unit.kind == SpanKind::Client && unit.parent_span_id == request.span_id));
    if redis.is_some() {
        let calls: Vec<&Span> = in_trace
            .iter()
            .filter(|span| span.attributes.get("db.system.name").map(String::as_str) == Some("redis"))
            .collect();
        assert!(!calls.is_empty(), "Redis calls are traced: {in_trace:#?}");
        assert!(calls.iter().all(|call| call.kind == SpanKind::Client && call.parent_span_id == request.span_id));
    }

    // The event's publication, in the worker, is a child of the request that wrote it.
    let publish = one("publish", in_trace.iter().filter(|span| span.name == "publish order.paid").collect());
    assert_eq!((publish.kind, publish.process.as_str()), (SpanKind::Producer, "worker"));
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.attributes["messaging.destination.name"], "orderly.events");
    if let Some(consumer) = &consumer {
        let message = consumer
            .received()
            .into_iter()
            .find(|message| message.message_id == publish.attributes["messaging.message.id"])
            .expect("the event reached RabbitMQ");
        assert_eq!(message.traceparent, Some(format!("00-{CALLER_TRACE}-{}-01", publish.span_id)));
    }

    // Its delivery is a child of the publication, and the receiver got the delivery's span.
    let delivery = one("delivery", in_trace.iter().filter(|span| span.name == "deliver order.paid").collect());
    assert_eq!((delivery.kind, delivery.process.as_str()), (SpanKind::Client, "worker"));
    assert_eq!(delivery.parent_span_id, publish.span_id);
    assert_eq!(delivery.attributes["http.response.status_code"], "200");
    let received = receiver.received();
    let traceparent = received[0].headers["traceparent"].to_str().unwrap();
    assert_eq!(traceparent, format!("00-{CALLER_TRACE}-{}-01", delivery.span_id));
    let chain: Vec<&str> = ancestors(&in_trace, &delivery).iter().map(|span| span.name.as_str()).collect();
    assert_eq!(chain, ["deliver order.paid", "publish order.paid", "POST /api/v1/orders/{id}/payments"]);

    // The job's run is a span of the worker's, with its units of work inside it.
    let job = spans.iter().find(|span| span.name == "job report").expect("the job's span");
    assert_eq!((job.kind, job.process.as_str()), (SpanKind::Consumer, "worker"));
    let job_units = spans.iter().filter(|span| span.parent_span_id == job.span_id);
    assert!(job_units.filter(|span| span.attributes.contains_key("db.system.name")).count() > 0);
}

async fn sampling_keeps_the_configured_share_and_follows_the_callers_decision(backend: Backend) {
    let collector = Collector::start().await;
    let otlp = format!("--otlp-endpoint={}", collector.url);
    let flags = [otlp.as_str(), "--otlp-sample-ratio=0", "--run-worker=false"];
    let Some(mut api) = TestApp::spawn_process(backend, &flags).await else { return };
    for _ in 0..5 {
        assert!(api.get("/api/v1/products", None).await.status().is_success());
    }
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let unsampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    for traceparent in [sampled.as_str(), unsampled] {
        let response = api.request(reqwest::Method::GET, "/api/v1/products").header("traceparent", traceparent);
        assert!(response.send().await.unwrap().status().is_success());
    }
    assert!(api.terminate(Duration::from_secs(15)).await, "the API stops cleanly");
    let log = api.process_log();
    let spans = collector.spans();
    let traces: std::collections::HashSet<&str> = spans.iter().map(|span| span.trace_id.as_str()).collect();
    assert_eq!(traces, [CALLER_TRACE].into(), "only the trace its caller sampled is kept at ratio 0: {spans:#?}");
    let requests: Vec<&Span> = spans.iter().filter(|span| span.kind == SpanKind::Server).collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].name, "GET /api/v1/products");
    // Every request's log line carries its trace id, sampled or not.
    let logged: Vec<&str> = log
        .iter()
        .filter(|line| line["route"] == "/api/v1/products")
        .filter_map(|line| line["trace_id"].as_str())
        .collect();
    assert_eq!(logged.len(), 7);
    assert!(logged.contains(&CALLER_TRACE) && logged.contains(&"1af7651916cd43dd8448eb211c80319c"));
}

async fn an_unreachable_receiver_fails_no_request_and_delays_no_shutdown(backend: Backend) {
    // Port 9 (discard) on 127.0.0.1: nothing listens, so every export fails at once.
    let flags = ["--otlp-endpoint=http://127.0.0.1:9", "--run-worker=false"];
    let Some(mut api) = TestApp::spawn_process(backend, &flags).await else { return };
    for _ in 0..20 {
        assert!(api.get("/api/v1/products", None).await.status().is_success());
    }
    assert!(api.terminate(Duration::from_secs(20)).await, "the API stops cleanly with spans it cannot send");
}

crate::on_every_backend_with_backend!(
    a_paid_order_is_one_trace_from_the_request_to_its_webhook_delivery,
    sampling_keeps_the_configured_share_and_follows_the_callers_decision,
    an_unreachable_receiver_fails_no_request_and_delays_no_shutdown,
);
