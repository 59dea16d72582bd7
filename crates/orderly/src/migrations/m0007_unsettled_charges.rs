//! Charges whose outcome is unknown (the provider timed out or failed mid-call): one row per
//! order until a later attempt or the reconciler learns what happened at the provider.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UnsettledCharges {
    Table,
    OrderId,
    UserId,
    ProviderKey,
    Amount,
    Currency,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UnsettledCharges::Table)
                    .col(ColumnDef::new(UnsettledCharges::OrderId).uuid().not_null().primary_key())
                    .col(ColumnDef::new(UnsettledCharges::UserId).uuid().not_null())
                    .col(ColumnDef::new(UnsettledCharges::ProviderKey).string_len(255).not_null())
                    .col(ColumnDef::new(UnsettledCharges::Amount).big_integer().not_null())
                    .col(ColumnDef::new(UnsettledCharges::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(UnsettledCharges::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(UnsettledCharges::Table).to_owned()).await
    }
}
