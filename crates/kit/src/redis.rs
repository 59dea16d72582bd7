//! A shared Redis connection for state that must be common to all instances (rate-limit
//! buckets, cached representations), built so that Redis is never a reason to fail a request.
//!
//! Every call has a deadline. Failures feed a circuit breaker: after a few in a row, calls are
//! refused at once for a second, then one probe is let through. The caller gets
//! [`Unavailable`] and falls back to per-instance state; the connection reconnects by itself
//! when Redis comes back. The first failure after a healthy spell is logged as a warning and
//! the recovery as info, so a Redis outage is two log lines, not one per request; the
//! `redis_errors_total` counter and the `redis_available` gauge (see
//! [`SharedRedis::publish_metrics`]) tell the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::resilience::CircuitBreaker;

/// Consecutive failures after which Redis is not asked for a while.
const FAILURES_BEFORE_BYPASS: u32 = 3;
/// How long Redis is bypassed before one call probes it again.
const BYPASS_FOR: Duration = Duration::from_secs(1);

/// The call was not made or did not complete; use per-instance state instead.
#[derive(Debug, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct Unavailable(String);

pub struct SharedRedis {
    connection: ConnectionManager,
    breaker: CircuitBreaker,
    timeout: Duration,
    prefix: String,
    degraded: AtomicBool,
}

impl SharedRedis {
    /// Prepares a connection to `url` without making it: the process starts, and serves,
    /// whether or not Redis is up. Only a malformed URL is an error. Every key this instance
    /// uses starts with `prefix`, so deployments can share one Redis.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is retried on the next call after a failure; the breaker paces calls.
            .set_number_of_retries(1)
            .set_max_delay(BYPASS_FOR);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            breaker: CircuitBreaker::new(FAILURES_BEFORE_BYPASS, BYPASS_FOR),
            timeout,
            prefix: prefix.to_owned(),
            degraded: AtomicBool::new(false),
        })
    }

    /// `name` under this deployment's prefix.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `command` on the shared connection within the deadline, unless Redis is being
    /// bypassed after recent failures. `operation` names the call in metrics and logs.
    pub async fn call<T>(
        &self,
        operation: &'static str,
        command: impl AsyncFnOnce(&mut ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, Unavailable> {
        let attempt = self.breaker.attempt().map_err(|_| Unavailable("bypassed after recent failures".into()))?;
        let mut connection = self.connection.clone();
        let span = crate::span!(
            "redis",
            otel.name = %format_args!("redis {operation}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
        );
        // Built in each branch: a future first held in a variable is moved once more to be awaited.
        let called = if span.is_none() {
            tokio::time::timeout(self.timeout, command(&mut connection)).await
        } else {
            tokio::time::timeout(self.timeout, command(&mut connection)).instrument(span.clone()).await
        };
        let outcome = match called {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match outcome {
            Ok(value) => {
                attempt.succeeded();
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(operation, "redis is reachable again; shared state is back in use");
                }
                Ok(value)
            }
            Err(reason) => {
                span.record("otel.status_code", "ERROR");
                attempt.failed();
                metrics::counter!("redis_errors_total", "operation" => operation).increment(1);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(operation, error = %reason, "redis is unavailable; using per-instance state");
                }
                Err(Unavailable(reason))
            }
        }
    }

    /// Whether the last call failed: callers are using per-instance state.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Sets `redis_available`; call right before rendering metrics.
    pub fn publish_metrics(&self) {
        metrics::gauge!("redis_available").set(if self.is_degraded() { 0.0 } else { 1.0 });
    }

    /// Whether Redis answers a `PING` now (for readiness detail).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        self.call("ping", async |connection| redis::cmd("PING").query_async::<()>(connection).await).await
    }
}
