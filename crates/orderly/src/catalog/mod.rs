//! Catalog: products with prices in minor units and stock levels. Public reads are cacheable
//! (`Cache-Control: public`); writes are for admins. Archiving deactivates a product instead
//! of deleting it, so orders that reference it keep their snapshot.
//!
//! Owns the `products` table.

use std::sync::Arc;

use orderly_kit::cursor::CursorCodec;

use crate::db::Database;

pub mod cache;
pub mod domain;
mod routes;
pub mod service;
pub mod store;

pub use routes::router;

/// What the catalog endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Catalog {
    pub db: Database,
    /// Representations of single products for public reads; every product write invalidates.
    pub products: Arc<cache::ProductCache>,
    pub cursors: CursorCodec,
    /// `max-age` of public catalog reads, seconds (`ORDERLY_CATALOG_MAX_AGE`).
    pub max_age: u32,
}
