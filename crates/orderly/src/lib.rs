//! Orderly: an orders-and-payments HTTP API.
//!
//! [`app`] is the composition root; each capability (accounts, catalog, …) is a module that
//! owns its routes, logic and storage. Cross-cutting HTTP mechanics live in `orderly-kit`.

pub mod accounts;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod listing;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod reports;
pub mod responses;
pub mod schemas;
pub mod telemetry;
