//! Prometheus metrics: the process-wide recorder, its text exposition, and the HTTP metrics
//! every request records.
//!
//! Anything may record through the `metrics` macros; [`install`] makes those records land in
//! one Prometheus registry and [`exposition`] renders it. Gauges that describe a state rather
//! than count events (a circuit, a pool) are best set right before rendering, by whoever owns
//! the state, so a scrape always sees the present.
//!
//! HTTP metrics, recorded by [`crate::middleware::envelope`]:
//! - `http_requests_total{method, route, status}`: requests answered;
//! - `http_request_duration_seconds{method, route, status}`: a latency histogram;
//! - `http_requests_in_flight`: requests being served now, the autoscaling signal.
//!
//! `http_requests_shed_total` and `http_requests_deadline_exceeded_total` count the requests
//! [`crate::middleware::envelope`] shed and cut off at their deadline,
//! and `idempotency_replays_total` the replays of [`crate::idempotency`].
//!
//! `ratelimit_rejections_total{policy}` counts 429s of [`crate::ratelimit`], and
//! `ratelimit_local_fallbacks_total` the decisions it made in memory because Redis could not
//! answer. [`crate::redis`] counts failed calls in `redis_errors_total{operation}` and, at
//! scrape time, sets `redis_available` (1 when calls go to Redis, 0 while it is bypassed).
//!
//! `route` is the matched route template (`/api/v1/orders/{id}`), or `unmatched`, so the
//! number of series stays bounded whatever paths clients send.

use std::sync::OnceLock;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: fine below 10 ms where most requests land, coarse up to the
/// longest request deadline.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often recorded latencies are folded into their buckets between scrapes, so memory stays
/// flat when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first call and returns its handle; later calls (more
/// servers in one process, as in tests) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder was installed first; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!("http_requests_total", "HTTP requests answered, by method, route template and status.");
    metrics::describe_counter!(
        "http_deprecated_requests_total",
        "Calls of deprecated operations, by route template (including those refused past their sunset)."
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from receiving a request to its response head, by method, route template and status."
    );
    metrics::describe_gauge!("http_requests_in_flight", "HTTP requests being served now.");
    metrics::describe_counter!(
        "idempotency_replays_total",
        "Stored responses replayed for a repeated Idempotency-Key."
    );
    metrics::describe_counter!("ratelimit_rejections_total", "Requests refused 429 rate_limited, by policy.");
    metrics::describe_counter!(
        "ratelimit_local_fallbacks_total",
        "Rate-limit decisions made per instance because Redis could not answer: quotas are not global meanwhile."
    );
    metrics::describe_counter!("redis_errors_total", "Redis calls that failed or timed out, by operation.");
    metrics::describe_gauge!(
        "redis_available",
        "1 while shared state is used through Redis, 0 while Redis is bypassed after failures."
    );
}

/// The Prometheus text exposition of everything recorded so far.
pub fn exposition(handle: &PrometheusHandle) -> Response {
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// Counts a request as in flight until dropped.
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn start() -> Self {
        metrics::gauge!("http_requests_in_flight").increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("http_requests_in_flight").decrement(1.0);
    }
}

pub(crate) fn record_request(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let labels = [
        ("method", metrics::SharedString::from(method_label(method))),
        ("route", metrics::SharedString::from(route.to_owned())),
        ("status", metrics::SharedString::from(status_label(status))),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

/// Standard methods as static labels; anything else is `other`, so a client cannot mint series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_label(status: StatusCode) -> std::borrow::Cow<'static, str> {
    match status.as_u16() {
        200 => "200".into(),
        201 => "201".into(),
        202 => "202".into(),
        204 => "204".into(),
        304 => "304".into(),
        400 => "400".into(),
        401 => "401".into(),
        404 => "404".into(),
        409 => "409".into(),
        422 => "422".into(),
        429 => "429".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_exact() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        for code in [200, 201, 304, 418, 429, 500, 503] {
            assert_eq!(status_label(StatusCode::from_u16(code).unwrap()), code.to_string());
        }
    }
}
