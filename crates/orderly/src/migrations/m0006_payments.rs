//! Payments, refunds and the ledger. Orders and payments gain an in-flight marker, so one
//! provider call at a time runs per order (charge) and per payment (refund).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    PaymentAttempt,
    PaymentAttemptUntil,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    OrderId,
    UserId,
    Amount,
    Currency,
    Status,
    FailureCode,
    RefundedAmount,
    ProviderReference,
    RefundAttempt,
    RefundAttemptUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Refunds {
    Table,
    Id,
    PaymentId,
    Amount,
    Currency,
    ProviderReference,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Transactions {
    Table,
    Id,
    Kind,
    PaymentId,
    RefundId,
    OrderId,
    Amount,
    Currency,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ColumnDef::new(Orders::PaymentAttempt).uuid().null().to_owned(),
            ColumnDef::new(Orders::PaymentAttemptUntil).timestamp_with_time_zone().null().to_owned(),
        ] {
            manager.alter_table(Table::alter().table(Orders::Table).add_column(column).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Payments::Table)
                    .col(ColumnDef::new(Payments::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Payments::OrderId).uuid().not_null())
                    .col(ColumnDef::new(Payments::UserId).uuid().not_null())
                    .col(ColumnDef::new(Payments::Amount).big_integer().not_null())
                    .col(ColumnDef::new(Payments::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(Payments::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Payments::FailureCode).string_len(64).null())
                    .col(ColumnDef::new(Payments::RefundedAmount).big_integer().not_null())
                    .col(ColumnDef::new(Payments::ProviderReference).string_len(255).null())
                    .col(ColumnDef::new(Payments::RefundAttempt).uuid().null())
                    .col(ColumnDef::new(Payments::RefundAttemptUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Payments::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Payments::UpdatedAt).timestamp_with_time_zone().not_null())
                    .check(Expr::col(Payments::RefundedAmount).gte(0))
                    .check(Expr::col(Payments::RefundedAmount).lte(Expr::col(Payments::Amount)))
                    .foreign_key(
                        ForeignKey::create().from(Payments::Table, Payments::OrderId).to(Orders::Table, Orders::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // A customer's list seeks on the first index, an admin's on the second; an order's
        // payments are found through the third.
        for (name, columns) in [
            ("payments_user_id_created_at_id", vec![Payments::UserId, Payments::CreatedAt, Payments::Id]),
            ("payments_created_at_id", vec![Payments::CreatedAt, Payments::Id]),
            ("payments_order_id", vec![Payments::OrderId]),
        ] {
            let mut index = Index::create().name(name).table(Payments::Table).to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Refunds::Table)
                    .col(ColumnDef::new(Refunds::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Refunds::PaymentId).uuid().not_null())
                    .col(ColumnDef::new(Refunds::Amount).big_integer().not_null())
                    .col(ColumnDef::new(Refunds::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(Refunds::ProviderReference).string_len(255).not_null())
                    .col(ColumnDef::new(Refunds::CreatedAt).timestamp_with_time_zone().not_null())
                    .check(Expr::col(Refunds::Amount).gt(0))
                    .foreign_key(
                        ForeignKey::create().from(Refunds::Table, Refunds::PaymentId).to(Payments::Table, Payments::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("refunds_payment_id").table(Refunds::Table).col(Refunds::PaymentId).to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Transactions::Table)
                    .col(ColumnDef::new(Transactions::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Transactions::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Transactions::PaymentId).uuid().not_null())
                    .col(ColumnDef::new(Transactions::RefundId).uuid().null())
                    .col(ColumnDef::new(Transactions::OrderId).uuid().not_null())
                    .col(ColumnDef::new(Transactions::Amount).big_integer().not_null())
                    .col(ColumnDef::new(Transactions::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(Transactions::CreatedAt).timestamp_with_time_zone().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Transactions::Table, Transactions::PaymentId)
                            .to(Payments::Table, Payments::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("transactions_created_at_id")
                    .table(Transactions::Table)
                    .col(Transactions::CreatedAt)
                    .col(Transactions::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Transactions::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Refunds::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Payments::Table).to_owned()).await?;
        for column in [Orders::PaymentAttemptUntil, Orders::PaymentAttempt] {
            manager.alter_table(Table::alter().table(Orders::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
