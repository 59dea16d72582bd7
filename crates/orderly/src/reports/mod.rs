//! Reports: figures computed over the whole data set. Today `GET /stats`; asynchronous exports
//! come here too.

use std::sync::Arc;

use crate::db::Database;

mod routes;
pub mod stats;

pub use routes::router;

/// What the report endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Reports {
    pub db: Database,
    /// `GET /stats` figures, recomputed at most once per TTL.
    pub stats: Arc<stats::StatsCache>,
}
