//! Provider calls are written ahead: one `payment_attempts` row per charge, refund or reversal,
//! committed before the call goes out and settled when its outcome is recorded. It replaces
//! the in-flight marks on orders and payments and the `unsettled_charges` table: a charge left
//! unsettled there becomes an unsettled attempt, and so does an order whose mark was set when
//! the previous release stopped (its call may have reached the provider).
//!
//! Payments and refunds also become unique by the provider's id, so one charge or refund at
//! the provider can never be recorded twice.

use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::prelude::*;
use uuid::Uuid;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PaymentAttempts {
    Table,
    Id,
    Kind,
    OrderId,
    PaymentId,
    RefundId,
    UserId,
    ProviderKey,
    ChargeReference,
    Amount,
    Currency,
    IdempotencyClaim,
    HoldUntil,
    CreatedAt,
    SettledAt,
    Outcome,
    ReconcileAfter,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    UserId,
    Total,
    Currency,
    PaymentAttempt,
    PaymentAttemptUntil,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    OrderId,
    Status,
    ProviderReference,
    RefundAttempt,
    RefundAttemptUntil,
}

#[derive(DeriveIden)]
enum Refunds {
    Table,
    ProviderReference,
}

#[derive(DeriveIden)]
enum UnsettledCharges {
    Table,
    OrderId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use PaymentAttempts as A;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .col(ColumnDef::new(A::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(A::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(A::OrderId).uuid().not_null())
                    .col(ColumnDef::new(A::PaymentId).uuid().null())
                    .col(ColumnDef::new(A::RefundId).uuid().null())
                    .col(ColumnDef::new(A::UserId).uuid().not_null())
                    .col(ColumnDef::new(A::ProviderKey).string_len(255).not_null())
                    .col(ColumnDef::new(A::ChargeReference).string_len(255).null())
                    .col(ColumnDef::new(A::Amount).big_integer().not_null())
                    .col(ColumnDef::new(A::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(A::IdempotencyClaim).string_len(255).null())
                    .col(ColumnDef::new(A::HoldUntil).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(A::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(A::SettledAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(A::Outcome).string_len(16).null())
                    .col(ColumnDef::new(A::ReconcileAfter).timestamp_with_time_zone().null())
                    .check(Expr::col(A::Amount).gt(0))
                    .to_owned(),
            )
            .await?;
        // The reconciler scans the unsettled ones oldest first; a charge checks its order's
        // attempts, a refund its payment's, a retried request its claim's.
        for (name, columns) in [
            ("payment_attempts_unsettled", vec![A::SettledAt, A::CreatedAt]),
            ("payment_attempts_order_id", vec![A::OrderId]),
            ("payment_attempts_payment_id", vec![A::PaymentId]),
            ("payment_attempts_idempotency_claim", vec![A::IdempotencyClaim]),
        ] {
            let mut index = Index::create().name(name).table(A::Table).to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        for (name, table, column) in [
            ("payments_provider_reference_key", Payments::Table.into_iden(), Payments::ProviderReference.into_iden()),
            ("refunds_provider_reference_key", Refunds::Table.into_iden(), Refunds::ProviderReference.into_iden()),
        ] {
            manager.create_index(Index::create().name(name).table(table).col(column).unique().to_owned()).await?;
        }

        carry_over_unsettled_charges(manager).await?;

        manager.drop_table(Table::drop().table(UnsettledCharges::Table).to_owned()).await?;
        for column in [Orders::PaymentAttempt, Orders::PaymentAttemptUntil] {
            manager.alter_table(Table::alter().table(Orders::Table).drop_column(column).to_owned()).await?;
        }
        for column in [Payments::RefundAttempt, Payments::RefundAttemptUntil] {
            manager.alter_table(Table::alter().table(Payments::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("payment attempts cannot be folded back into in-flight marks".into()))
    }
}

/// Every charge the previous release may have left unrecorded becomes an unsettled attempt
/// under the key it was made with: the rows of `unsettled_charges`, and orders still marked in
/// flight (their key follows the rule of `payments::service::charge_key`).
async fn carry_over_unsettled_charges(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    db.execute(Statement::from_string(
        backend,
        "INSERT INTO payment_attempts \
         (id, kind, order_id, user_id, provider_key, amount, currency, hold_until, created_at) \
         SELECT order_id, 'charge', order_id, user_id, provider_key, amount, currency, created_at, created_at \
         FROM unsettled_charges",
    ))
    .await?;

    let declines = Query::select()
        .expr(Expr::col(Payments::OrderId).count())
        .from(Payments::Table)
        .and_where(Expr::col((Payments::Table, Payments::OrderId)).equals((Orders::Table, Orders::Id)))
        .and_where(Expr::col((Payments::Table, Payments::Status)).eq("failed"))
        .to_owned();
    let marked = Query::select()
        .columns([Orders::Id, Orders::UserId, Orders::Total, Orders::Currency, Orders::PaymentAttemptUntil])
        .expr_as(SimpleExpr::SubQuery(None, Box::new(declines.into_sub_query_statement())), Alias::new("declines"))
        .from(Orders::Table)
        .and_where(Expr::col(Orders::PaymentAttempt).is_not_null())
        .and_where(Expr::col(Orders::Id).not_in_subquery(
            Query::select().column(UnsettledCharges::OrderId).from(UnsettledCharges::Table).to_owned(),
        ))
        .to_owned();
    for row in db.query_all(backend.build(&marked)).await? {
        let order_id: Uuid = row.try_get("", "id")?;
        let declines: i64 = row.try_get("", "declines")?;
        let held_until: chrono::DateTime<chrono::Utc> = row.try_get("", "payment_attempt_until")?;
        let insert = Query::insert()
            .into_table(PaymentAttempts::Table)
            .columns([
                PaymentAttempts::Id,
                PaymentAttempts::Kind,
                PaymentAttempts::OrderId,
                PaymentAttempts::UserId,
                PaymentAttempts::ProviderKey,
                PaymentAttempts::Amount,
                PaymentAttempts::Currency,
                PaymentAttempts::HoldUntil,
                PaymentAttempts::CreatedAt,
            ])
            .values_panic([
                Uuid::now_v7().into(),
                "charge".into(),
                order_id.into(),
                row.try_get::<Uuid>("", "user_id")?.into(),
                format!("orderly-charge-{order_id}-{declines}").into(),
                row.try_get::<i64>("", "total")?.into(),
                row.try_get::<String>("", "currency")?.into(),
                held_until.into(),
                held_until.into(),
            ])
            .to_owned();
        db.execute(backend.build(&insert)).await?;
    }
    Ok(())
}
