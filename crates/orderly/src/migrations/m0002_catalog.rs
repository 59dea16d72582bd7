//! Products. The two sort orders of the public list each have an index whose trailing `id`
//! makes the order total, so every page is one index range scan.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Sku,
    Name,
    Description,
    UnitPrice,
    Currency,
    Stock,
    Active,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .col(ColumnDef::new(Products::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Products::Sku).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Products::Name).string_len(800).not_null())
                    .col(ColumnDef::new(Products::Description).text().not_null())
                    .col(ColumnDef::new(Products::UnitPrice).big_integer().not_null())
                    .col(ColumnDef::new(Products::Currency).string_len(3).not_null())
                    .col(
                        ColumnDef::new(Products::Stock)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(Products::Stock).gte(0)),
                    )
                    .col(ColumnDef::new(Products::Active).boolean().not_null())
                    .col(ColumnDef::new(Products::Version).big_integer().not_null())
                    .col(ColumnDef::new(Products::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Products::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in
            [("products_created_at_id", Products::CreatedAt), ("products_unit_price_id", Products::UnitPrice)]
        {
            manager
                .create_index(
                    Index::create().name(name).table(Products::Table).col(column).col(Products::Id).to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Products::Table).to_owned()).await
    }
}
