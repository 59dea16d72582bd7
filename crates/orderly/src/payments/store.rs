//! Payment, refund and ledger storage. The ledger (`transactions`) is append-only: a row is
//! written in the same transaction as the charge or refund it records, and never changed.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use uuid::Uuid;

use crate::db::now;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

pub mod payment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub order_id: Uuid,
        pub user_id: Uuid,
        pub amount: i64,
        pub currency: String,
        /// `succeeded` or `failed`.
        pub status: String,
        pub failure_code: Option<String>,
        pub refunded_amount: i64,
        /// The provider's id of the charge; unique.
        pub provider_reference: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refund {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub payment_id: Uuid,
        pub amount: i64,
        pub currency: String,
        pub provider_reference: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transaction {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "transactions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// `charge` or `refund`.
        pub kind: String,
        pub payment_id: Uuid,
        pub refund_id: Option<Uuid>,
        pub order_id: Uuid,
        /// Signed: a charge adds to revenue, a refund subtracts.
        pub amount: i64,
        pub currency: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use payment::Model as Payment;
pub use refund::Model as Refund;
pub use transaction::Model as LedgerEntry;

/// A payment to record: the outcome of a charge.
pub struct NewPayment {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub outcome: Result<String, String>,
}

/// Records a charge's outcome; a successful one also gets its ledger row.
pub async fn insert_payment(db: &impl ConnectionTrait, new: NewPayment) -> Result<Payment, DbErr> {
    let now = now();
    let (status, failure_code, provider_reference) = match new.outcome {
        Ok(reference) => ("succeeded", None, Some(reference)),
        Err(code) => ("failed", Some(code), None),
    };
    let row = Payment {
        id: Uuid::now_v7(),
        order_id: new.order_id,
        user_id: new.user_id,
        amount: new.amount,
        currency: new.currency,
        status: status.to_owned(),
        failure_code,
        refunded_amount: 0,
        provider_reference,
        created_at: now,
        updated_at: now,
    };
    payment::Entity::insert(payment::ActiveModel::from(row.clone())).exec_without_returning(db).await?;
    if row.status == "succeeded" {
        append_ledger(db, "charge", &row, None, row.amount, now).await?;
    }
    Ok(row)
}

/// The refund recorded for a refund at the provider, if any.
pub async fn refund_by_reference(db: &impl ConnectionTrait, reference: &str) -> Result<Option<Refund>, DbErr> {
    refund::Entity::find().filter(refund::Column::ProviderReference.eq(reference)).one(db).await
}

/// How many succeeded payments of an order still hold money.
pub async fn count_holding_money(db: &impl ConnectionTrait, order_id: Uuid) -> Result<u64, DbErr> {
    payment::Entity::find()
        .filter(payment::Column::OrderId.eq(order_id))
        .filter(payment::Column::Status.eq("succeeded"))
        .filter(Expr::col(payment::Column::RefundedAmount).lt(Expr::col(payment::Column::Amount)))
        .count(db)
        .await
}

/// How many charges of an order were declined.
pub async fn count_declined(db: &impl ConnectionTrait, order_id: Uuid) -> Result<u64, DbErr> {
    payment::Entity::find()
        .filter(payment::Column::OrderId.eq(order_id))
        .filter(payment::Column::Status.eq("failed"))
        .count(db)
        .await
}

async fn append_ledger(
    db: &impl ConnectionTrait,
    kind: &str,
    payment: &Payment,
    refund_id: Option<Uuid>,
    amount: i64,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let entry = LedgerEntry {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        payment_id: payment.id,
        refund_id,
        order_id: payment.order_id,
        amount,
        currency: payment.currency.clone(),
        created_at: at,
    };
    transaction::Entity::insert(transaction::ActiveModel::from(entry)).exec_without_returning(db).await.map(drop)
}

/// A payment visible to the caller: their own, or any for an admin (`owner = None`).
pub async fn find_payment(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Payment>, DbErr> {
    let mut select = payment::Entity::find_by_id(id);
    if let Some(owner) = owner {
        select = select.filter(payment::Column::UserId.eq(owner));
    }
    select.one(db).await
}

/// A refund visible to the caller: of their own payment, or any for an admin (`owner = None`).
pub async fn find_refund(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Refund>, DbErr> {
    let mut select = refund::Entity::find_by_id(id);
    if let Some(owner) = owner {
        let owned = sea_orm::sea_query::Query::select()
            .column(payment::Column::Id)
            .from(payment::Entity)
            .and_where(payment::Column::UserId.eq(owner))
            .to_owned();
        select = select.filter(refund::Column::PaymentId.in_subquery(owned));
    }
    select.one(db).await
}

/// As [`find_payment`] for any owner, locked until the transaction ends.
pub async fn lock_payment(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<Payment>, DbErr> {
    payment::Entity::find_by_id(id).lock_exclusive().one(db).await
}

/// Records a refund of a payment read under lock in this transaction: the refund, its ledger
/// row and the payment's refunded amount. The `CHECK (refunded_amount <= amount)` backs the
/// caller's check.
pub async fn insert_refund(
    db: &impl ConnectionTrait,
    payment: &Payment,
    amount: i64,
    provider_reference: String,
) -> Result<(Payment, Refund), DbErr> {
    let now = now();
    let refund = Refund {
        id: Uuid::now_v7(),
        payment_id: payment.id,
        amount,
        currency: payment.currency.clone(),
        provider_reference,
        created_at: now,
    };
    refund::Entity::insert(refund::ActiveModel::from(refund.clone())).exec_without_returning(db).await?;
    append_ledger(db, "refund", payment, Some(refund.id), -amount, now).await?;
    let refunded_amount = payment.refunded_amount + amount;
    payment::Entity::update_many()
        .col_expr(payment::Column::RefundedAmount, Expr::value(refunded_amount))
        .col_expr(payment::Column::UpdatedAt, Expr::value(now))
        .filter(payment::Column::Id.eq(payment.id))
        .exec(db)
        .await?;
    Ok((Payment { refunded_amount, updated_at: now, ..payment.clone() }, refund))
}

/// Money kept per currency: what succeeded payments charged, less what was refunded. Computed
/// from the payments, not the ledger, so the two records can be checked against each other.
pub async fn revenue_by_currency(db: &impl ConnectionTrait) -> Result<Vec<(String, i64)>, DbErr> {
    payment::Entity::find()
        .select_only()
        .column(payment::Column::Currency)
        // PostgreSQL sums bigints as numeric; the cast keeps one integer type on both backends.
        .column_as(Expr::cust("CAST(SUM(amount - refunded_amount) AS BIGINT)"), "revenue")
        .filter(payment::Column::Status.eq("succeeded"))
        .group_by(payment::Column::Currency)
        .into_tuple()
        .all(db)
        .await
}

/// Filters of the payment list. `user_id` is forced to the caller for customers.
#[derive(Debug, Default, Serialize)]
pub struct PaymentFilter {
    pub user_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
}

pub async fn list_payments(
    db: &impl ConnectionTrait,
    filter: &PaymentFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Payment>, DbErr> {
    use payment::Column;
    let mut select = payment::Entity::find();
    if let Some(user_id) = filter.user_id {
        select = select.filter(Column::UserId.eq(user_id));
    }
    if let Some(order_id) = filter.order_id {
        select = select.filter(Column::OrderId.eq(order_id));
    }
    let after = after.map(|(created_at, id)| (Expr::value(created_at), id));
    let rows = seek(select, Column::CreatedAt, Column::Id, params.sort.descending, after, params.limit).all(db).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

pub async fn list_ledger(
    db: &impl ConnectionTrait,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<LedgerEntry>, DbErr> {
    use transaction::Column;
    let after = after.map(|(created_at, id)| (Expr::value(created_at), id));
    let rows =
        seek(transaction::Entity::find(), Column::CreatedAt, Column::Id, params.sort.descending, after, params.limit)
            .all(db)
            .await?;
    Ok(Page::from_overfetch(rows, params.limit))
}
