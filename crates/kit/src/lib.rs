//! HTTP API mechanics shared by every Orderly endpoint.
//!
//! This crate knows nothing about orders, users or products. It owns the conventions that must
//! hold identically on every endpoint: RFC 9457 problem responses, per-request context (request
//! id, trace id), requests checked against the published OpenAPI document (every offending field reported at once), signed
//! keyset cursors, `fields=` selection, strong ETags with conditional requests, and the
//! middleware that bounds, times, logs and measures each request.

pub mod client_ip;
pub mod conditional;
pub mod context;
pub mod contract;
pub mod cursor;
pub mod deprecation;
pub mod docs;
pub mod extract;
pub mod fields;
pub mod hex;
pub mod idempotency;
pub mod json;
pub mod lease;
pub mod metrics;
pub mod middleware;
pub mod pagination;
pub mod problem;
pub mod ratelimit;
pub mod redis;
pub mod resilience;
pub mod telemetry;
pub mod timestamp;
pub mod trace;

pub use problem::{FieldError, Problem};
