//! `GET /stats`: counts and revenue, computed by concurrent queries and kept for a few seconds.
//!
//! One computation runs at a time: callers that find the figures stale wait for the one
//! computing them instead of each running the queries (no stampede). With Redis configured the
//! figures are kept there, so every instance serves the same ones; if Redis cannot answer, the
//! instance keeps its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderly_kit::redis::SharedRedis;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::db::{Database, DbError};
use crate::orders::domain::OrderStatus;

/// Figures over all users, orders and payments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub users: u64,
    pub orders: i64,
    /// Orders per status; every status is present.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Per ISO 4217 currency, in minor units: charged by succeeded payments, less refunds. It
    /// equals the sum of the ledger (`GET /transactions`) per currency.
    pub revenue: BTreeMap<String, i64>,
    /// When these figures were computed.
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub generated_at: DateTime<Utc>,
}

pub struct StatsCache {
    ttl: Duration,
    latest: Mutex<Option<(Instant, Stats)>>,
    shared: Option<Arc<SharedRedis>>,
}

impl StatsCache {
    pub fn new(ttl: Duration, shared: Option<Arc<SharedRedis>>) -> Self {
        // Figures kept for no time are never worth sharing.
        Self { ttl, latest: Mutex::new(None), shared: shared.filter(|_| !ttl.is_zero()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The figures, computed at most `ttl` ago.
    pub async fn get(&self, db: &Database) -> Result<Stats, DbError> {
        if let Some(stats) = self.shared_copy().await {
            count("hit");
            return Ok(stats);
        }
        let mut latest = self.latest.lock().await;
        if let Some((at, stats)) = latest.as_ref()
            && at.elapsed() < self.ttl
        {
            count("hit");
            return Ok(stats.clone());
        }
        count("miss");
        let stats = compute(db).await?;
        *latest = Some((Instant::now(), stats.clone()));
        self.share(&stats).await;
        Ok(stats)
    }

    async fn shared_copy(&self) -> Option<Stats> {
        let redis = self.shared.as_ref()?;
        let key = redis.key("stats");
        let cached: Vec<u8> = redis
            .call("cache_get", async |connection| {
                redis::cmd("GET").arg(&key).query_async::<Option<Vec<u8>>>(connection).await
            })
            .await
            .ok()??;
        serde_json::from_slice(&cached).ok()
    }

    async fn share(&self, stats: &Stats) {
        let Some(redis) = &self.shared else { return };
        let key = redis.key("stats");
        let body = serde_json::to_vec(stats).expect("figures serialize");
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        // A failed store only costs another computation later.
        let _ = redis
            .call("cache_fill", async |connection| {
                redis::cmd("SET").arg(&key).arg(body).arg("PX").arg(ttl).query_async::<()>(connection).await
            })
            .await;
    }
}

fn count(result: &'static str) {
    metrics::counter!("orderly_cache_requests_total", "cache" => "stats", "result" => result).increment(1);
}

/// Runs the three queries concurrently, each a unit of work of its own (so on a connection
/// of its own).
async fn compute(db: &Database) -> Result<Stats, DbError> {
    let generated_at = crate::db::now();
    let read = db.read();
    let (users, by_status, revenue) = tokio::try_join!(
        read.run(async |conn| crate::accounts::store::count_users(conn).await),
        read.run(async |conn| crate::orders::store::count_by_status(conn).await),
        read.run(async |conn| crate::payments::store::revenue_by_currency(conn).await),
    )?;
    let mut orders_by_status: BTreeMap<String, i64> =
        [OrderStatus::Pending, OrderStatus::Paid, OrderStatus::Refunded, OrderStatus::Cancelled]
            .iter()
            .map(|status| (status.as_str().to_owned(), 0))
            .collect();
    orders_by_status.extend(by_status.into_iter().map(|(status, count)| (status.as_str().to_owned(), count)));
    Ok(Stats {
        users,
        orders: orders_by_status.values().sum(),
        orders_by_status,
        revenue: revenue.into_iter().collect(),
        generated_at,
    })
}
