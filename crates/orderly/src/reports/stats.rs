//! `GET /stats`: counts and revenue, computed by concurrent queries and kept for a few seconds.
//!
//! One computation runs at a time: callers that find the figures stale wait for the one
//! computing them instead of each running the queries (no stampede).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::db::Database;
use crate::orders::domain::OrderStatus;

/// Figures over all users, orders and payments.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
}

impl StatsCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, latest: Mutex::new(None) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The figures, computed at most `ttl` ago.
    pub async fn get(&self, db: &Database) -> Result<Stats, DbErr> {
        let mut latest = self.latest.lock().await;
        if let Some((at, stats)) = latest.as_ref()
            && at.elapsed() < self.ttl
        {
            metrics::counter!("orderly_cache_requests_total", "cache" => "stats", "result" => "hit").increment(1);
            return Ok(stats.clone());
        }
        metrics::counter!("orderly_cache_requests_total", "cache" => "stats", "result" => "miss").increment(1);
        let stats = compute(db).await?;
        *latest = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

async fn compute(db: &Database) -> Result<Stats, DbErr> {
    let generated_at = crate::db::now();
    let (users, by_status, revenue) = tokio::try_join!(
        crate::accounts::store::count_users(db.read()),
        crate::orders::store::count_by_status(db.read()),
        crate::payments::store::revenue_by_currency(db.read()),
    )?;
    let mut orders_by_status: BTreeMap<String, i64> =
        [OrderStatus::Pending, OrderStatus::Paid, OrderStatus::Refunded, OrderStatus::Cancelled]
            .iter()
            .map(|status| (status.as_str().to_owned(), 0))
            .collect();
    orders_by_status.extend(by_status);
    Ok(Stats {
        users,
        orders: orders_by_status.values().sum(),
        orders_by_status,
        revenue: revenue.into_iter().collect(),
        generated_at,
    })
}
