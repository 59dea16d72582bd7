//! An in-process cache of product representations, for the public single-product read.
//!
//! Entries are invalidated by every local write after it commits (`invalidate`), so one
//! instance never serves a representation older than its own last write. Other instances
//! converge within the TTL, well inside the `max-age` public readers may cache for anyway.
//!
//! A load that overlaps a write must not cache what it read before the write committed. Every
//! invalidation bumps an epoch; a load caches its result only if the epoch did not move while
//! it ran, and takes the entry back out if the epoch moved after it inserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use orderly_kit::conditional::{body_of, etag_of};
use sea_orm::{ConnectionTrait, DbErr};
use serde_json::Value;
use uuid::Uuid;

use super::store::{self, Product};

/// A product as the API sends it, with its validators. Only the bytes are kept: a parsed
/// JSON value would take several times the memory.
pub struct CachedProduct {
    pub body: Bytes,
    pub etag: String,
    pub updated_at: DateTime<Utc>,
}

pub struct ProductCache {
    /// `None` when caching is turned off (TTL of zero).
    entries: Option<moka::sync::Cache<Uuid, Arc<CachedProduct>>>,
    epoch: AtomicU64,
}

impl ProductCache {
    pub fn new(ttl: Duration) -> Self {
        let entries =
            (!ttl.is_zero()).then(|| moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build());
        Self { entries, epoch: AtomicU64::new(0) }
    }

    /// The product's current representation, from the cache or the database.
    pub async fn get(
        &self,
        db: &impl ConnectionTrait,
        id: Uuid,
        render: impl Fn(&Product) -> Value,
    ) -> Result<Option<Arc<CachedProduct>>, DbErr> {
        if let Some(hit) = self.entries.as_ref().and_then(|entries| entries.get(&id)) {
            metrics::counter!("orderly_cache_requests_total", "cache" => "products", "result" => "hit").increment(1);
            return Ok(Some(hit));
        }
        metrics::counter!("orderly_cache_requests_total", "cache" => "products", "result" => "miss").increment(1);
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(product) = store::find_product(db, id).await? else {
            return Ok(None);
        };
        let value = render(&product);
        let body = body_of(&value);
        let entry = Arc::new(CachedProduct { etag: etag_of(&body), body, updated_at: product.updated_at });
        if let Some(entries) = &self.entries
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            entries.insert(id, Arc::clone(&entry));
            if self.epoch.load(Ordering::Acquire) != epoch {
                entries.invalidate(&id);
            }
        }
        Ok(Some(entry))
    }

    /// Forgets the given products; call after the write that changed them committed.
    pub fn invalidate(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            for id in ids {
                entries.invalidate(&id);
            }
        }
    }
}
