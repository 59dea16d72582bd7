//! Payments: charging an order through the payment provider, refunds, and the ledger.
//!
//! Owns the `payments`, `refunds`, `transactions` (ledger) and `payment_attempts` tables. Money
//! moves exactly once: every provider call is written ahead as an attempt and carries a key the
//! provider deduplicates on; what the provider did is recorded in one transaction with its
//! ledger row and the order's new status, by the request or, if it cannot, by the reconciler.

pub mod attempts;
pub mod provider;
pub mod reconciler;
mod routes;
pub mod service;
pub mod store;

pub use routes::{KEY_REQUIRED, router};
