//! Orders remember the idempotency claim that placed them, so a retry that re-runs after the
//! first attempt committed but died before its response was kept finds the order instead of
//! placing another.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    IdempotencyClaim,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(ColumnDef::new(Orders::IdempotencyClaim).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("orders_idempotency_claim_key")
                    .table(Orders::Table)
                    .col(Orders::IdempotencyClaim)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("orders_idempotency_claim_key").table(Orders::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Orders::Table).drop_column(Orders::IdempotencyClaim).to_owned()).await
    }
}
