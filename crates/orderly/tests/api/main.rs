//! HTTP tests against the real application on a random port. Every scenario runs once on
//! SQLite and once on PostgreSQL (`ORDERLY_TEST_DATABASE_URL`), each on a fresh database.

mod accounts;
mod binary;
mod broker;
mod caching;
mod catalog;
mod concurrency;
mod conventions;
mod events;
mod fake_provider;
mod helpers;
mod idempotency;
mod migrations;
mod operations;
mod orders;
mod pagination;
mod payment_faults;
mod payments;
mod rabbitmq;
mod ratelimits;
mod replica;
mod reports;
mod traces;
mod webhooks;
