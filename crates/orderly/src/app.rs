//! The composition root: wires configuration to components (the [`AppState`]), builds the
//! router with every cross-cutting layer, binds the listener and runs until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use orderly_kit::cursor::CursorCodec;
use orderly_kit::deprecation::Deprecations;
use orderly_kit::idempotency;
use orderly_kit::middleware;
use orderly_kit::ratelimit::Limiter;
use orderly_kit::redis::SharedRedis;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use utoipa_axum::router::OpenApiRouter;

use crate::accounts::Accounts;
use crate::accounts::auth::Authenticator;
use crate::accounts::tokens::SigningKeys;
use crate::amqp::Amqp;
use crate::catalog::Catalog;
use crate::catalog::cache::ProductCache;
use crate::config::{ConfigError, HttpConfig, ServeConfig};
use crate::db::{Database, DatabaseKind};
use crate::events::Events;
use crate::events::relay::Broker;
use crate::idempotency::{DatabaseStore, Idempotency};
use crate::jobs::Jobs;
use crate::limits::RateLimits;
use crate::ops::Operations;
use crate::orders::Orders;
use crate::payments::Payments;
use crate::payments::provider::PaymentGateway;
use crate::reports::Reports;
use crate::reports::stats::StatsCache;
use crate::state::{AppState, Components};
use crate::webhooks::{self, Webhooks};
use crate::worker::Worker;
use crate::{accounts, catalog, events, ops, orders, payments, reports};
use orderly_kit::contract::Contract;

/// How often expired idempotency records are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How long a request's idempotency key stays locked without renewal (see
/// `orderly_kit::idempotency::Settings::lock_ttl`).
const IDEMPOTENCY_LOCK_TTL: Duration = Duration::from_secs(6);
/// How often in-memory rate-limit buckets that are full again are dropped.
const LIMITER_UPKEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A built server: listener bound, migrations applied, ready to run.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    state: AppState,
    process: Process,
    /// The background work, when this process runs it.
    worker: Option<Worker>,
    shutdown_grace: Duration,
    shutdown_drain_delay: Duration,
}

/// What a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// `orderly serve`: the API on `ORDERLY_LISTEN` (and the background work unless
    /// `ORDERLY_RUN_WORKER=false`).
    Api,
    /// `orderly worker`: the background work, with its probes and metrics on
    /// `ORDERLY_WORKER_LISTEN`.
    Worker,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database migration failed: {0}")]
    Migration(crate::db::MigrateError),
}

impl Application {
    /// Builds `orderly serve`.
    pub async fn build(config: ServeConfig) -> Result<Self, StartError> {
        Self::build_as(config, Process::Api).await
    }

    pub async fn build_as(config: ServeConfig, process: Process) -> Result<Self, StartError> {
        let metrics = orderly_kit::metrics::install();
        ops::describe_metrics();
        let embedded = DatabaseKind::of(&config.database)? == DatabaseKind::Sqlite;
        let (deadline, timeout) = (config.payments.payment_provider_deadline, config.http.request_timeout);
        if deadline >= timeout {
            // Either may be the one that was changed: the line names both, with their values.
            return Err(ConfigError::new(
                "ORDERLY_REQUEST_TIMEOUT and ORDERLY_PAYMENT_PROVIDER_DEADLINE",
                format!(
                    "the request timeout ({timeout:?}) must be longer than the payment provider deadline \
                     ({deadline:?}), so a charge is recorded before the request gives up"
                ),
            )
            .into());
        }
        let keys = Arc::new(SigningKeys::load(&config.auth, embedded)?);
        crate::accounts::passwords::configure(usize::from(config.auth.password_hashers));
        let db = Database::connect(&config.database).await?;
        if config.migrate_on_start {
            db.migrate().await.map_err(StartError::Migration)?;
        }
        let redis = match &config.redis.redis_url {
            None => None,
            Some(url) => Some(Arc::new(
                SharedRedis::connect(url, &config.redis.redis_key_prefix, config.redis.redis_timeout)
                    .map_err(|error| ConfigError::new("ORDERLY_REDIS_URL", error.to_string()))?,
            )),
        };
        let broker = Worker::broker(&config.worker).map_err(|error| ConfigError::new("ORDERLY_AMQP_URL", error))?;
        let amqp = match &broker {
            Broker::Amqp(amqp) => Some(Arc::clone(amqp)),
            Broker::InProcess(_) => None,
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let jobs = Worker::jobs(&broker, &wake, &config.worker);
        let worker = match process {
            Process::Api if !config.worker.run_worker => None,
            _ => Some(
                Worker::new(db.clone(), broker, wake, &config.worker, &config.webhooks)
                    .map_err(|error| ConfigError::new("ORDERLY_WEBHOOK_TIMEOUT", error))?,
            ),
        };
        let (api, document, deprecations) = api();
        // Requests are checked against the document itself, so what it publishes is what is enforced.
        let contract = Arc::new(Contract::new(&document, crate::schemas::MEANINGS));
        let state = assemble(&config, db, keys, redis, amqp, jobs, process, metrics, embedded, contract)?;
        let (address, setting) = match process {
            Process::Api => (config.listen, "ORDERLY_LISTEN"),
            Process::Worker => (config.worker.worker_listen, "ORDERLY_WORKER_LISTEN"),
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| ConfigError::new(setting, format!("cannot listen on {address}: {error}")))?;
        let router = match process {
            Process::Api => router(state.clone(), api, document, deprecations, &config.http),
            Process::Worker => worker_router(state.clone(), &config.http),
        };
        Ok(Self {
            listener,
            router,
            state,
            process,
            worker,
            shutdown_grace: config.http.shutdown_grace,
            shutdown_drain_delay: config.http.shutdown_drain_delay,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` completes, then fails readiness, waits out the drain delay,
    /// stops accepting connections and lets in-flight requests finish within the grace period.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, service).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        let mut server = tokio::spawn(server.into_future());
        let mut background = vec![tokio::spawn(metrics_upkeep(self.state.operations.metrics.clone()))];
        if self.process == Process::Api {
            let idempotency = self.state.idempotency.store.clone();
            background.push(tokio::spawn(crate::idempotency::sweep_forever(idempotency, SWEEP_INTERVAL)));
            background.push(tokio::spawn(payments::reconciler::reconcile_forever(self.state.payments.clone())));
            background.push(tokio::spawn(limiter_upkeep(Arc::clone(&self.state.rate_limits.limiter))));
            background.push(tokio::spawn(self.state.db.clone().watch_replica()));
        }
        let (stop_work, work_stopped) = tokio::sync::watch::channel(false);
        let work = self.worker.as_ref().map(|worker| worker.start(&work_stopped, self.shutdown_grace));
        tokio::select! {
            result = &mut server => {
                background.iter().for_each(tokio::task::JoinHandle::abort);
                let _ = stop_work.send(true);
                if let Some(work) = work {
                    work.stopped(self.shutdown_grace).await;
                }
                return result.map_err(std::io::Error::other)?;
            }
            () = shutdown => {}
        }
        background.iter().for_each(tokio::task::JoinHandle::abort);
        tracing::info!(grace_secs = self.shutdown_grace.as_secs(), "shutting down: readiness is now failing");
        self.state.operations.begin_shutdown();
        // Background work stops with the requests: what it is doing finishes, nothing new starts.
        let _ = stop_work.send(true);
        let work = async move {
            if let Some(work) = work {
                work.stopped(self.shutdown_grace).await;
            }
        };
        let requests = async move {
            tokio::time::sleep(self.shutdown_drain_delay).await;
            let _ = stop.send(true);
            match tokio::time::timeout(self.shutdown_grace, server).await {
                Ok(result) => result.map_err(std::io::Error::other)?,
                Err(_) => {
                    tracing::warn!("grace period over with requests still in flight; stopping anyway");
                    Ok(())
                }
            }
        };
        let ((), served) = tokio::join!(work, requests);
        served
    }
}

/// Builds every component from the configuration. Components that share a pool, a cache or a
/// client share one instance of it.
// Each argument is a component built by the caller; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn assemble(
    config: &ServeConfig,
    db: Database,
    keys: Arc<SigningKeys>,
    redis: Option<Arc<SharedRedis>>,
    amqp: Option<Arc<Amqp>>,
    jobs: Jobs,
    process: Process,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    embedded: bool,
    contract: Arc<Contract>,
) -> Result<AppState, StartError> {
    let cursors = CursorCodec::new(&keys.derive_secret("orderly cursor signing v1"));
    let products = Arc::new(product_cache(config.http.catalog_cache_ttl, embedded, redis.as_ref()));
    let gateway = Arc::new(
        PaymentGateway::new(&config.payments)
            .map_err(|error| ConfigError::new("ORDERLY_PAYMENT_PROVIDER_URL", error.to_string()))?,
    );
    let idempotency_ttl = config.http.idempotency_ttl;
    let authenticator = Authenticator { db: db.clone(), keys: Arc::clone(&keys) };
    Ok(AppState::new(Components {
        accounts: Accounts {
            db: db.clone(),
            keys: Arc::clone(&keys),
            cursors: cursors.clone(),
            refresh_token_ttl: config.auth.refresh_token_ttl,
        },
        catalog: Catalog {
            db: db.clone(),
            products: Arc::clone(&products),
            cursors: cursors.clone(),
            max_age: config.http.catalog_max_age,
        },
        orders: Orders {
            db: db.clone(),
            products,
            cursors: cursors.clone(),
            // A few megabytes hold the items of the orders of many busy customers' first pages.
            known: orders::store::KnownOrders::new(4 << 20),
            idempotency_ttl,
            payment_settle_after: config.payments.payment_settle_after,
        },
        payments: Payments {
            db: db.clone(),
            gateway: Arc::clone(&gateway),
            cursors: cursors.clone(),
            settle_after: config.payments.payment_settle_after,
            idempotency_ttl,
        },
        reports: Reports {
            db: db.clone(),
            stats: Arc::new(StatsCache::new(config.http.stats_cache_ttl, redis.clone())),
            jobs,
            report_ttl: config.worker.report_ttl,
        },
        rate_limits: RateLimits {
            limiter: Arc::new(Limiter::new(crate::limits::policies(&config.limits), redis.clone())),
            trusted_proxies: Arc::new(config.limits.trusted_proxies.clone()),
            authenticator: authenticator.clone(),
        },
        idempotency: Idempotency {
            store: DatabaseStore::new(db.clone()),
            settings: idempotency::Settings {
                ttl: idempotency_ttl,
                // Renewed while the request runs; long enough to cover clock skew between
                // instances, short enough that a retry after a crash soon runs.
                lock_ttl: IDEMPOTENCY_LOCK_TTL,
                max_body_bytes: usize::try_from(config.http.max_body_bytes).unwrap_or(usize::MAX),
                sealer: idempotency::Sealer::new(&keys.derive_secret("orderly idempotency sealing v1")),
            },
            authenticator: authenticator.clone(),
        },
        events: Events { db: db.clone(), cursors: cursors.clone() },
        webhooks: Webhooks {
            db: db.clone(),
            cursors: cursors.clone(),
            allow: Arc::new(config.webhooks.webhook_allowed_targets.clone()),
            secret_overlap: config.webhooks.webhook_secret_overlap,
        },
        operations: Operations {
            db: db.clone(),
            keys,
            gateway,
            redis,
            amqp,
            // A worker cannot relay without its broker; an API instance serves without it (the
            // outbox keeps the events), so there it is reported, never deciding.
            amqp_decides_readiness: process == Process::Worker,
            metrics,
            shutting_down: Arc::default(),
        },
        authenticator,
        db,
        contract,
    }))
}

/// Folds recorded latencies into their buckets now and then, so memory stays flat between
/// scrapes.
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut interval = tokio::time::interval(orderly_kit::metrics::UPKEEP_INTERVAL);
    loop {
        interval.tick().await;
        handle.run_upkeep();
    }
}

/// Products are cached in Redis when it is configured (every write invalidates the one shared
/// copy), else in memory: embedded, this instance makes every write and invalidates on each;
/// on PostgreSQL without Redis, the short TTL bounds how long another instance's write takes
/// to show.
fn product_cache(configured_ttl: Option<Duration>, embedded: bool, redis: Option<&Arc<SharedRedis>>) -> ProductCache {
    match redis {
        Some(redis) if configured_ttl != Some(Duration::ZERO) => {
            ProductCache::shared(Arc::clone(redis), configured_ttl.unwrap_or(Duration::from_secs(60)))
        }
        _ => ProductCache::local(configured_ttl.unwrap_or(if embedded {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(2)
        })),
    }
}

async fn limiter_upkeep(limiter: Arc<Limiter>) {
    let mut interval = tokio::time::interval(LIMITER_UPKEEP_INTERVAL);
    loop {
        interval.tick().await;
        limiter.forget_idle();
    }
}

/// Every documented route, the document that describes them as the API publishes it, and the
/// operations their declarations deprecate (`x-deprecation`, beside each route; see
/// ARCHITECTURE.md on retiring an operation).
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi, Deprecations) {
    let (api, openapi) = OpenApiRouter::<AppState>::with_openapi(ops::api_doc())
        .nest(
            "/api/v1",
            accounts::router()
                .merge(catalog::router())
                .merge(orders::router())
                .merge(payments::router())
                .merge(reports::router())
                .merge(events::router())
                .merge(webhooks::router()),
        )
        .merge(ops::router())
        .split_for_parts();
    let openapi = orderly_kit::docs::tighten(openapi);
    let (openapi, deprecations) =
        orderly_kit::deprecation::declared(openapi).expect("every declared deprecation is checked by a test");
    let openapi = orderly_kit::docs::document_idempotency(
        openapi,
        crate::idempotency::EXEMPT_PATHS,
        crate::payments::KEY_REQUIRED,
    );
    let openapi = orderly_kit::docs::document_conventions(
        openapi,
        &orderly_kit::docs::Conventions {
            codes: &[orderly_kit::problem::Code::DOCUMENTED, crate::error::Code::DOCUMENTED],
            rate_limited: "/api/",
            never_shed: ops::NEVER_SHED,
        },
    );
    (api, openapi, deprecations)
}

/// The whole HTTP surface with its layers, outermost last.
fn router(
    state: AppState,
    api: Router<AppState>,
    openapi: utoipa::openapi::OpenApi,
    deprecations: Deprecations,
    http: &HttpConfig,
) -> Router {
    // Shared, so each request clones one reference count, not every handle inside.
    let (idempotency, rate_limits) = (Arc::new(state.idempotency.clone()), Arc::new(state.rate_limits.clone()));
    let envelope = envelope(http);
    let body_limit = usize::try_from(http.max_body_bytes).unwrap_or(usize::MAX);
    let compress =
        SizeAbove::new(1024).and(NotForContentType::GRPC).and(NotForContentType::IMAGES).and(NotForContentType::SSE);
    Router::new()
        .merge(api)
        .merge(ops::docs_router(openapi))
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(idempotency, crate::idempotency::middleware))
        .layer(axum::middleware::from_fn_with_state(rate_limits, crate::limits::middleware))
        .layer(axum::middleware::from_fn_with_state(deprecations, orderly_kit::deprecation::middleware))
        .layer(axum::middleware::from_fn_with_state(envelope, middleware::envelope))
        .layer(CompressionLayer::new().compress_when(compress))
}

/// The state of `middleware::envelope`: the in-flight cap and the deadline.
fn envelope(http: &HttpConfig) -> Arc<middleware::Envelope> {
    Arc::new(middleware::Envelope {
        in_flight: tokio::sync::Semaphore::new(usize::try_from(http.max_in_flight).unwrap_or(usize::MAX)),
        never_shed: ops::NEVER_SHED,
        deadline: http.request_timeout,
    })
}

/// A worker's HTTP surface: its probes and metrics.
fn worker_router(state: AppState, http: &HttpConfig) -> Router {
    let envelope = envelope(http);
    let (probes, _) = OpenApiRouter::<AppState>::new().merge(ops::probes_router()).split_for_parts();
    probes.with_state(state).layer(axum::middleware::from_fn_with_state(envelope, middleware::envelope))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_deprecation_is_valid() {
        // Building the API reads and checks every route's declaration, as the server does.
        let (_, document, _) = api();
        let document = serde_json::to_value(&document).unwrap();
        for (route, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let declared = operation.get(orderly_kit::deprecation::EXTENSION).is_some();
                assert_eq!(operation["deprecated"] == true, declared, "{method} {route}: deprecated as declared");
            }
        }
    }
}
