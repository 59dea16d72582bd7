//! Payments: charging an order through the payment provider, refunds, and the ledger.
//!
//! Owns the `payments`, `refunds`, `transactions` (ledger) and `payment_attempts` tables. Money
//! moves exactly once: every provider call is written ahead as an attempt and carries a key the
//! provider deduplicates on; what the provider did is recorded in one transaction with its
//! ledger row and the order's new status, by the request or, if it cannot, by the reconciler.

use std::sync::Arc;
use std::time::Duration;

use orderly_kit::cursor::CursorCodec;

use crate::db::Database;

pub mod attempts;
pub mod provider;
pub mod reconciler;
mod routes;
pub mod service;
pub mod store;

pub use routes::{KEY_REQUIRED, router};

/// What the payment endpoints and the reconciler use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Payments {
    pub db: Database,
    /// The payment provider, behind retries, a circuit breaker and a bulkhead.
    pub gateway: Arc<provider::PaymentGateway>,
    pub cursors: CursorCodec,
    /// How long after it was made an unsettled provider call is reconciled
    /// (`ORDERLY_PAYMENT_SETTLE_AFTER`).
    pub settle_after: Duration,
    /// How long idempotency keys are kept: a retried payment or refund within it answers what
    /// its first run did.
    pub idempotency_ttl: Duration,
}
