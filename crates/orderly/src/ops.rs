//! Operations endpoints outside `/api/v1`: liveness, readiness, Prometheus metrics, the JWKS,
//! the OpenAPI document and the interactive docs page (served from the binary; no CDN).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use orderly_kit::FieldError;
use orderly_kit::docs::{
    BadRequest, Conflict, Forbidden, InternalError, NotFound, PayloadTooLarge, PaymentRequired, PreconditionFailed,
    ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use orderly_kit::problem::ProblemBody;
use orderly_kit::redis::SharedRedis;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::accounts::tokens::SigningKeys;
use crate::amqp::Amqp;
use crate::db::Database;
use crate::payments::provider::PaymentGateway;

/// What the operations endpoints look at. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Operations {
    pub db: Database,
    /// Published as the JWKS.
    pub keys: Arc<SigningKeys>,
    /// Its circuit state is published at each scrape.
    pub gateway: Arc<PaymentGateway>,
    /// Reported by `/readyz`, never deciding it; `None` when each instance keeps its own state.
    pub redis: Option<Arc<SharedRedis>>,
    /// RabbitMQ, when configured: reported by `/readyz`, and deciding it in a worker.
    pub amqp: Option<Arc<Amqp>>,
    pub amqp_decides_readiness: bool,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Set when shutdown begins so `/readyz` fails at once while in-flight requests finish.
    pub shutting_down: Arc<AtomicBool>,
}

impl Operations {
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orderly",
        description = "Orders-and-payments HTTP API.\n\nAll API paths are under `/api/v1`. Errors are RFC 9457 \
            `application/problem+json` bodies with a stable `code`. Lists are cursor-paginated (`limit`, `cursor`, \
            `next_cursor`, `Link: rel=\"next\"`). Every GET accepts `fields=` to select top-level fields. Single-resource \
            reads carry strong `ETag`s and honour `If-None-Match`; `PATCH`/`DELETE` honour `If-Match`.\n\n\
            Authenticate with `Authorization: Bearer <token>`: an access token from `POST /api/v1/auth/token`, or an \
            API key from `POST /api/v1/api-keys`."
    ),
    components(
        schemas(ProblemBody, FieldError),
        responses(BadRequest, Unauthorized, PaymentRequired, Forbidden, NotFound, Conflict, PreconditionFailed, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, TooManyRequests, ServiceUnavailable, InternalError)
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Registration, tokens and logout"),
        (name = "users", description = "User accounts"),
        (name = "api-keys", description = "API keys for programmatic access"),
        (name = "catalog", description = "Products"),
        (name = "orders", description = "Orders and stock reservation"),
        (name = "payments", description = "Payments, refunds and the ledger"),
        (name = "reports", description = "Figures over the whole data set"),
        (name = "events", description = "What happened, as published to RabbitMQ and webhooks"),
        (name = "operations", description = "Health, readiness and keys"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .description(Some("An access token from `POST /api/v1/auth/token`, or an API key (`sk_…`)."))
                    .build(),
            ),
        );
    }
}

pub fn api_doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Paths that are served however loaded the instance is: probes and metrics.
pub const NEVER_SHED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The documented operations routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Operations: FromRef<S>,
{
    probes_router().routes(routes!(jwks))
}

/// Liveness, readiness and metrics: all a worker serves.
pub fn probes_router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Operations: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// The OpenAPI document and the interactive docs page.
pub fn docs_router<S: Clone + Send + Sync + 'static>(openapi: utoipa::openapi::OpenApi) -> axum::Router<S> {
    axum::Router::from(SwaggerUi::new("/docs").url("/openapi.json", openapi))
}

#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok`, `ready`, `unavailable` or `shutting_down`.
    status: &'static str,
    /// Per-dependency result, on readiness checks.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    checks: BTreeMap<&'static str, String>,
}

/// Liveness: the process is up. Checks no dependency.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", checks: BTreeMap::new() })
}

/// Readiness: 200 only when the database answers and migrations are applied; 503 with
/// per-check detail otherwise, and at once when shutdown has begun. A read replica and Redis,
/// when configured, are reported in the detail but do not decide readiness: without the
/// replica lists read the primary, without Redis the instance serves with per-instance limits
/// and caches.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health, description = "Ready"), (status = 503, body = Health, description = "Not ready"))
)]
async fn readyz(State(ops): State<Operations>) -> Response {
    if ops.is_shutting_down() {
        return not_ready(Health { status: "shutting_down", checks: BTreeMap::new() });
    }
    let database = ops.db.check().await;
    let mut ready = database.is_ok();
    let mut checks = BTreeMap::from([("database", database.map(|()| "ok".to_owned()).unwrap_or_else(|e| e))]);
    // The replica and Redis are shared by every instance, and each instance can serve
    // without them (lists from the primary; per-instance limits and cached copies): they are
    // reported, but failing readiness on them would take every instance out of rotation at once.
    if let Some(replica) = ops.db.replica_status() {
        checks.insert("read_replica", replica);
    }
    if let Some(redis) = &ops.redis {
        let state = match redis.ping().await {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("degraded: {error}; serving with per-instance limits and caches"),
        };
        checks.insert("redis", state);
    }
    if let Some(amqp) = &ops.amqp {
        let state = match amqp.check().await {
            Ok(()) => "ok".to_owned(),
            Err(error) if ops.amqp_decides_readiness => {
                ready = false;
                error
            }
            Err(error) => format!("degraded: {error}; events wait in the outbox"),
        };
        checks.insert("rabbitmq", state);
    }
    if ready {
        Json(Health { status: "ready", checks }).into_response()
    } else {
        not_ready(Health { status: "unavailable", checks })
    }
}

fn not_ready(health: Health) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Prometheus metrics in the text exposition format: requests by method, route template and
/// status with a latency histogram, requests in flight, database pool use, cache hits and
/// misses, idempotent replays, payment provider calls and circuit state. Meant for a scraper
/// inside the deployment; keep it off the public edge.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
async fn metrics(State(ops): State<Operations>) -> Response {
    // Several servers in one process (as in tests) share one registry: publishing and rendering
    // under one lock keeps each scrape's state gauges its own server's.
    let backlog = crate::events::relay::Backlog::read(&ops.db).await;
    let jobs = crate::jobs::Depth::read(&ops.db).await;
    let webhooks = crate::webhooks::Gauges::read(&ops.db).await;
    static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _scrape = SCRAPE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ops.gateway.publish_metrics();
    ops.db.publish_metrics();
    if let Some(backlog) = backlog {
        backlog.publish();
    }
    if let Some(jobs) = jobs {
        jobs.publish();
    }
    if let Some(webhooks) = webhooks {
        webhooks.publish();
    }
    if let Some(redis) = &ops.redis {
        redis.publish_metrics();
    }
    orderly_kit::metrics::exposition(&ops.metrics)
}

/// Describes the application's own metrics; the HTTP ones are described by the kit.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "orderly_outbox_backlog",
        "Events written and not yet published (confirmed by the broker)."
    );
    metrics::describe_gauge!(
        "orderly_outbox_oldest_age_seconds",
        "Age of the oldest event not yet published; 0 when there is none."
    );
    metrics::describe_counter!("orderly_events_published_total", "Events published by the relay (and confirmed).");
    metrics::describe_gauge!("orderly_jobs", "Jobs by state (queued, running, succeeded, failed).");
    metrics::describe_histogram!(
        "orderly_job_duration_seconds",
        "Time of one run of a job, by kind and outcome (succeeded, retried, failed, lost, unrecorded)."
    );
    metrics::describe_counter!("orderly_job_runs_total", "Runs of jobs, by kind and outcome.");
    metrics::describe_counter!("orderly_report_rows_total", "Rows written by report exports.");
    metrics::describe_counter!(
        "orderly_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (succeeded, retrying, failed, gone)."
    );
    metrics::describe_histogram!("orderly_webhook_attempt_seconds", "Duration of webhook delivery attempts.");
    metrics::describe_gauge!("orderly_webhook_backlog", "Webhook deliveries pending (due or waiting for a retry).");
    metrics::describe_gauge!(
        "orderly_webhook_endpoints_disabled",
        "Webhook endpoints disabled (gone, or failing too long)."
    );
    metrics::describe_histogram!(
        "orderly_relay_batch_seconds",
        "Time to publish one batch of events and have it confirmed."
    );
    metrics::describe_gauge!(
        "orderly_db_pool_connections",
        "Database connections open, by pool (primary, read) and state (in_use, idle)."
    );
    metrics::describe_gauge!("orderly_db_pool_max_connections", "The most connections a database pool may open.");
    metrics::describe_counter!(
        "orderly_db_sqlite_commits_total",
        "Commits of the SQLite writer; each carries one or more transactions (group commit).",
    );
    metrics::describe_counter!(
        "orderly_db_sqlite_committed_transactions_total",
        "Transactions committed by the SQLite writer; divided by the commits, the mean group size.",
    );
    metrics::describe_counter!(
        "orderly_db_unavailable_total",
        "Requests answered 503 database_unavailable, by cause (pool_timeout, unreachable)."
    );
    metrics::describe_gauge!(
        "orderly_db_replica_in_use",
        "1 while lists read the replica; 0 while they read the primary (replica unreachable or too far behind)."
    );
    metrics::describe_gauge!(
        "orderly_db_replica_lag_seconds",
        "How far the replica's replay is behind the primary, as of its last check."
    );
    metrics::describe_counter!(
        "orderly_cache_requests_total",
        "Cache lookups, by cache (products, stats) and result (hit, miss)."
    );
    metrics::describe_counter!(
        "orderly_payment_provider_calls_total",
        "Payment provider calls, by operation (charge, refund, lookup) and outcome (ok, failed, timeout, circuit_open, bulkhead_full)."
    );
    metrics::describe_gauge!(
        "orderly_payment_circuit_state",
        "1 for the payment provider circuit's present state (closed, open, half_open), 0 for the others."
    );
    metrics::describe_gauge!(
        "orderly_payment_attempts_unsettled",
        "Provider calls written ahead whose outcome is not recorded yet, by kind (charge, refund, reversal)."
    );
    metrics::describe_gauge!(
        "orderly_payment_attempt_oldest_unsettled_seconds",
        "Age of the oldest unsettled provider call; 0 when there is none."
    );
    metrics::describe_counter!(
        "orderly_payment_attempts_reconciled_total",
        "Provider calls settled by the reconciler, by kind and outcome (succeeded, declined, reversed, not_made)."
    );
}

/// The public keys that verify access tokens (RFC 7517), selected by the token's `kid`.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "JSON Web Key Set", content_type = "application/json", body = Object))
)]
async fn jwks(State(ops): State<Operations>) -> Response {
    let mut response = Json(ops.keys.jwks().clone()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}
