//! Schema migrations, written once with the schema builder and applied on SQLite and
//! PostgreSQL alike. Migrations are append-only: a landed migration is never edited.

use sea_orm_migration::prelude::*;

mod m0001_accounts;
mod m0002_catalog;
mod m0003_idempotency;
mod m0004_orders;
mod m0005_order_items_inline;
mod m0006_payments;
mod m0007_unsettled_charges;
mod m0008_order_idempotency_claims;
mod m0009_payment_attempts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_accounts::Migration),
            Box::new(m0002_catalog::Migration),
            Box::new(m0003_idempotency::Migration),
            Box::new(m0004_orders::Migration),
            Box::new(m0005_order_items_inline::Migration),
            Box::new(m0006_payments::Migration),
            Box::new(m0007_unsettled_charges::Migration),
            Box::new(m0008_order_idempotency_claims::Migration),
            Box::new(m0009_payment_attempts::Migration),
        ]
    }
}
