//! What every request passes through, in one layer ([`envelope`]), outermost first:
//!
//! 1. its context: request id and trace id (in a task-local that log lines read), the
//!    `X-Request-ID` response header, exactly one access-log line per request, the HTTP
//!    metrics of [`crate::metrics`], and its server span while spans are exported
//!    ([`crate::trace`]);
//! 2. finishing: bodiless error responses produced by the router (404, 405 with `Allow`, 413,
//!    …) become problems, and anything without a cache policy is marked `no-store`;
//! 3. shedding: past a cap on requests in flight, 503 `overloaded` at once;
//! 4. a panic becomes an opaque 500 problem, never a dropped connection;
//! 5. the deadline: 503 `deadline_exceeded` when a request runs past its budget.
//!
//! One layer rather than five: each layer wraps every route and moves the request and its
//! future once more, which was a tenth of the instructions of the cheapest requests.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::{HeaderValue, StatusCode, header};
use tokio::sync::Semaphore;
use tracing::{Instrument, Span};

use crate::context::{REQUEST_ID_HEADER, RequestContext};
use crate::problem::{Code, Problem};

/// The settings of [`envelope`].
pub struct Envelope {
    /// Requests allowed in flight at once; past it, requests are shed.
    pub in_flight: Semaphore,
    /// Paths never shed (probes, metrics), so an overloaded instance is neither restarted by
    /// its liveness probe nor hidden from its scraper.
    pub never_shed: &'static [&'static str],
    /// How long a request may run; past it the client gets 503 and the work is dropped
    /// (cancelled at its next await point; database transactions roll back on drop).
    pub deadline: Duration,
}

/// The layer; see the module documentation. For `axum::middleware::from_fn_with_state`.
pub async fn envelope(State(envelope): State<Arc<Envelope>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut context = RequestContext::from_headers(request.headers(), request.uri().path());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let span = request_span(&request, route.as_ref(), &mut context);
    let context = Arc::new(context);
    let in_flight = crate::metrics::InFlight::start();
    // Built in each branch: a future first held in a variable is moved once more to be awaited,
    // and this one holds the whole request's.
    let mut response = if span.is_none() {
        Arc::clone(&context).scope(async { finish(shed(&envelope, request, next).await) }).await
    } else {
        let serving = Arc::clone(&context).scope(async { finish(shed(&envelope, request, next).await) });
        serving.instrument(span.clone()).await
    };
    drop(in_flight);

    let request_id = HeaderValue::from_str(&context.request_id).expect("request ids are validated header values");
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    let elapsed = started.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::metrics::record_request(&method, route, response.status(), elapsed);
    let status = response.status().as_u16();
    if !span.is_none() {
        span.record("http.response.status_code", status);
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let user_id = context.user_id.get().map(String::as_str).unwrap_or("");
    tracing::info!(
        target: "orderly::access",
        request_id = %context.request_id,
        trace_id = %context.trace_id,
        method = %method,
        route,
        status,
        latency_ms,
        user_id,
        "request handled"
    );
    response
}

/// The request's server span (HTTP semantic conventions), continuing the caller's trace; its
/// trace id becomes the request's. `Span::none()` when spans are not exported.
fn request_span(request: &Request, route: Option<&MatchedPath>, context: &mut RequestContext) -> Span {
    if !crate::trace::enabled() {
        return Span::none();
    }
    let route = route.map_or("unmatched", MatchedPath::as_str);
    let method = request.method().as_str();
    let span = crate::span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        http.request.id = %context.request_id,
    );
    crate::trace::continue_from(&span, request.headers().get("traceparent").and_then(|value| value.to_str().ok()));
    if let Some(this) = crate::trace::traceparent_of(&span) {
        context.trace_id = this.trace_id_hex();
    }
    span
}

/// Problems for bodiless errors; `no-store` unless the response set its own policy.
fn finish(mut response: Response) -> Response {
    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let mut problem = bare_status_problem(status);
        if let Some(allow) = response.headers().get(header::ALLOW) {
            problem = problem.with_header(header::ALLOW, allow.clone());
        }
        response = problem.into_response();
    }
    response.headers_mut().entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Past the in-flight cap, 503 `overloaded` with `Retry-After` at once rather than a queue, so
/// latency stays bounded and a load balancer can send the request elsewhere.
async fn shed(envelope: &Envelope, request: Request, next: Next) -> Response {
    if envelope.never_shed.contains(&request.uri().path()) {
        return guard(envelope.deadline, request, next).await;
    }
    let Ok(_permit) = envelope.in_flight.try_acquire() else {
        metrics::counter!("http_requests_shed_total").increment(1);
        return Problem::unavailable(Code::Overloaded, "The server is at capacity; retry shortly.", 1).into_response();
    };
    guard(envelope.deadline, request, next).await
}

/// Runs the request within its deadline, and turns a panic into an opaque 500.
async fn guard(budget: Duration, request: Request, next: Next) -> Response {
    match AssertUnwindSafe(tokio::time::timeout(budget, next.run(request))).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => {
            metrics::counter!("http_requests_deadline_exceeded_total").increment(1);
            tracing::warn!(budget_ms = budget.as_millis() as u64, "request exceeded its deadline");
            Problem::unavailable(Code::DeadlineExceeded, "The request did not complete within its deadline.", 1)
                .into_response()
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %message, "request handler panicked");
            Problem::internal().into_response()
        }
    }
}

fn bare_status_problem(status: StatusCode) -> Problem {
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => (Code::NotFound, "No resource exists at this path."),
        StatusCode::METHOD_NOT_ALLOWED => {
            (Code::MethodNotAllowed, "This method is not allowed here; see the `Allow` header.")
        }
        StatusCode::PAYLOAD_TOO_LARGE => (Code::PayloadTooLarge, "The request body is larger than the server accepts."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (Code::UnsupportedMediaType, "The request body's media type is not supported.")
        }
        StatusCode::REQUEST_TIMEOUT => (Code::RequestTimeout, "The request took too long to arrive."),
        status if status.is_server_error() => (Code::InternalError, "An unexpected error occurred."),
        _ => (Code::BadRequest, "The request could not be processed."),
    };
    Problem::new(status, code, detail)
}
