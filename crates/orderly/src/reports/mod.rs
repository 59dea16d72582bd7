//! Reports: figures computed over the whole data set (`GET /stats`) and exports generated in
//! the background (`POST /reports`, CSV of orders; see [`export`]).
//!
//! Owns the `reports` and `report_chunks` tables; reads orders through `orders::store`.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Database;
use crate::jobs::Jobs;

pub mod export;
mod routes;
pub mod stats;
pub mod store;

pub use routes::router;

/// What the report endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Reports {
    pub db: Database,
    /// `GET /stats` figures, recomputed at most once per TTL.
    pub stats: Arc<stats::StatsCache>,
    /// Where exports are handed to the workers.
    pub jobs: Jobs,
    /// How long a report is kept (`ORDERLY_REPORT_TTL`).
    pub report_ttl: Duration,
}
