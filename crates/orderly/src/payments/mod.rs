//! Payments: charging an order through the payment provider, refunds, and the ledger.
//!
//! Owns the `payments`, `refunds` and `transactions` (ledger) tables. Money moves exactly once:
//! each request's `Idempotency-Key` (required here) is forwarded to the provider on every
//! attempt, and what the provider did is recorded in one transaction with its ledger row and
//! the order's new status.

pub mod provider;
mod routes;
pub mod service;
pub mod store;

pub use routes::{KEY_REQUIRED, router};
