//! Orderly: an orders-and-payments HTTP API.
//!
//! [`app`] is the composition root: it builds [`state::AppState`], which owns every component,
//! and the router. Each capability (accounts, catalog, …) is a module that owns its routes,
//! logic and storage and declares the component it uses (`catalog::Catalog`, …); its router
//! takes any state that provides that component, so no capability depends on [`app`] or
//! [`state`]. Cross-cutting HTTP mechanics live in `orderly-kit`.

pub mod accounts;
pub mod amqp;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod limits;
pub mod listing;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod reports;
pub mod responses;
pub mod schemas;
pub mod state;
pub mod telemetry;
pub mod webhooks;
pub mod worker;
