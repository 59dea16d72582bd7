//! Orders: placing an order snapshots catalog prices and reserves stock atomically; a pending
//! order can be cancelled, which returns its stock. Customers see only their own orders (others
//! are 404); admins see all.
//!
//! Owns the `orders` table (each order keeps its items), and moves `products.stock` only through
//! `catalog::store::take_stock` and `catalog::store::return_stock`.

use std::sync::Arc;
use std::time::Duration;

use orderly_kit::cursor::CursorCodec;

use crate::catalog::cache::ProductCache;
use crate::db::Database;

pub mod domain;
mod routes;
pub mod service;
pub mod store;

pub use routes::router;

/// What the order endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Orders {
    pub db: Database,
    /// Invalidated for every product whose stock an order takes or returns.
    pub products: Arc<ProductCache>,
    pub cursors: CursorCodec,
    /// Orders read before, at the version they were read at, and their representations.
    pub known: store::KnownOrders,
    /// How long idempotency keys are kept: an order's claim older than this belongs to a key
    /// that expired and may be used again.
    pub idempotency_ttl: Duration,
    /// How long after it was made an unsettled charge is reconciled: when a cancel refused
    /// during a payment may be retried.
    pub payment_settle_after: Duration,
}
