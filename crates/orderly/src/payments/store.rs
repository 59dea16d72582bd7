//! Payment, refund and ledger storage. The ledger (`transactions`) is append-only: a row is
//! written in the same transaction as the charge or refund it records, and never changed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, Param, Row, now};
use crate::events::EventType;
use crate::events::store as events;
use crate::listing::{ListParams, and_where, seek};
use orderly_kit::pagination::Page;

/// How a charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The money moved.
    Succeeded,
    /// The charge was declined.
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed].into_iter().find(|status| status.as_str() == stored)
    }
}

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Charge,
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Charge, Self::Refund].into_iter().find(|kind| kind.as_str() == stored)
    }
}

/// A payment row: the recorded outcome of a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub failure_code: Option<String>,
    pub refunded_amount: i64,
    /// The provider's id of the charge; unique.
    pub provider_reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A charge of an order. `failed` payments record a declined charge; only `succeeded` ones
/// moved money.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentBody<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// The order's total, in minor units.
    pub amount: i64,
    pub currency: &'a str,
    /// `succeeded` or `failed`.
    pub status: &'a str,
    /// Why the charge failed (`card_declined`, …); `null` when it succeeded.
    pub failure_code: Option<&'a str>,
    /// Sum of the refunds so far, in minor units.
    pub refunded_amount: i64,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

pub fn payment_body(payment: &Payment) -> PaymentBody<'_> {
    PaymentBody {
        id: payment.id,
        order_id: payment.order_id,
        user_id: payment.user_id,
        amount: payment.amount,
        currency: &payment.currency,
        status: payment.status.as_str(),
        failure_code: payment.failure_code.as_deref(),
        refunded_amount: payment.refunded_amount,
        created_at: payment.created_at,
    }
}

impl Payment {
    /// The payment as the API serves it.
    pub fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&payment_body(self)).expect("representations serialize")
    }
}

/// The columns [`Payment::from_row`] reads, in its order.
macro_rules! payment_columns {
    () => {
        "id, order_id, user_id, amount, currency, status, failure_code, refunded_amount, provider_reference, \
         created_at, updated_at"
    };
}

impl Payment {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let status: String = row.get(5)?;
        let status = PaymentStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("payment {id} has an unknown status {status:?}")))?;
        Ok(Self {
            id,
            order_id: row.get(1)?,
            user_id: row.get(2)?,
            amount: row.get(3)?,
            currency: row.get(4)?,
            status,
            failure_code: row.get(6)?,
            refunded_amount: row.get(7)?,
            provider_reference: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
        })
    }
}

/// A refund row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub provider_reference: String,
    pub created_at: DateTime<Utc>,
}

/// The columns [`Refund::from_row`] reads, in its order.
macro_rules! refund_columns {
    () => {
        "id, payment_id, amount, currency, provider_reference, created_at"
    };
}

impl Refund {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            payment_id: row.get(1)?,
            amount: row.get(2)?,
            currency: row.get(3)?,
            provider_reference: row.get(4)?,
            created_at: row.get(5)?,
        })
    }
}

/// A ledger row (`transactions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: Uuid,
    pub kind: EntryKind,
    pub payment_id: Uuid,
    pub refund_id: Option<Uuid>,
    pub order_id: Uuid,
    /// Signed: a charge adds to revenue, a refund subtracts.
    pub amount: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

/// The columns [`LedgerEntry::from_row`] reads, in its order.
macro_rules! ledger_columns {
    () => {
        "id, kind, payment_id, refund_id, order_id, amount, currency, created_at"
    };
}

impl LedgerEntry {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let kind: String = row.get(1)?;
        let kind = EntryKind::parse(&kind)
            .ok_or_else(|| DbError::corrupt(format!("ledger row {id} has an unknown kind {kind:?}")))?;
        Ok(Self {
            id,
            kind,
            payment_id: row.get(2)?,
            refund_id: row.get(3)?,
            order_id: row.get(4)?,
            amount: row.get(5)?,
            currency: row.get(6)?,
            created_at: row.get(7)?,
        })
    }
}

/// A payment to record: the outcome of a charge.
pub struct NewPayment {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub outcome: Result<String, String>,
}

/// Records a charge's outcome; a successful one also gets its ledger row.
pub async fn insert_payment(conn: &mut Conn<'_>, new: NewPayment) -> Result<Payment, DbError> {
    let now = now();
    let (status, failure_code, provider_reference) = match new.outcome {
        Ok(reference) => (PaymentStatus::Succeeded, None, Some(reference)),
        Err(code) => (PaymentStatus::Failed, Some(code), None),
    };
    let row = Payment {
        id: Uuid::now_v7(),
        order_id: new.order_id,
        user_id: new.user_id,
        amount: new.amount,
        currency: new.currency,
        status,
        failure_code,
        refunded_amount: 0,
        provider_reference,
        created_at: now,
        updated_at: now,
    };
    conn.defer(
        concat!(
            "INSERT INTO payments (",
            payment_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        &[
            &row.id,
            &row.order_id,
            &row.user_id,
            &row.amount,
            &row.currency,
            &row.status.as_str(),
            &row.failure_code,
            &row.refunded_amount,
            &row.provider_reference,
            &row.created_at,
            &row.updated_at,
        ],
    )
    .await?;
    let event = match row.status {
        PaymentStatus::Succeeded => {
            append_ledger(conn, EntryKind::Charge, &row, None, row.amount, now).await?;
            EventType::PaymentSucceeded
        }
        PaymentStatus::Failed => EventType::PaymentFailed,
    };
    // The order is the aggregate: its payment's events keep their place among its own.
    events::record(conn, event, row.order_id, &row.json()).await?;
    Ok(row)
}

/// The refund recorded for a refund at the provider, if any.
pub async fn refund_by_reference(conn: &mut Conn<'_>, reference: &str) -> Result<Option<Refund>, DbError> {
    const SQL: &str = concat!("SELECT ", refund_columns!(), " FROM refunds WHERE provider_reference = $1");
    conn.query_opt(SQL, &[&reference], Refund::from_row).await
}

/// How many succeeded payments of an order still hold money.
pub async fn count_holding_money(conn: &mut Conn<'_>, order_id: Uuid) -> Result<i64, DbError> {
    conn.query_one(
        "SELECT count(*) FROM payments WHERE order_id = $1 AND status = $2 AND refunded_amount < amount",
        &[&order_id, &PaymentStatus::Succeeded.as_str()],
        |row| row.get(0),
    )
    .await
}

async fn append_ledger(
    conn: &mut Conn<'_>,
    kind: EntryKind,
    payment: &Payment,
    refund_id: Option<Uuid>,
    amount: i64,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    conn.defer(
        concat!("INSERT INTO transactions (", ledger_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
        &[&Uuid::now_v7(), &kind.as_str(), &payment.id, &refund_id, &payment.order_id, &amount, &payment.currency, &at],
    )
    .await
}

/// A payment visible to the caller: their own, or any for an admin (`owner = None`).
pub async fn find_payment(conn: &mut Conn<'_>, id: Uuid, owner: Option<Uuid>) -> Result<Option<Payment>, DbError> {
    match owner {
        None => {
            const SQL: &str = concat!("SELECT ", payment_columns!(), " FROM payments WHERE id = $1");
            conn.query_opt(SQL, &[&id], Payment::from_row).await
        }
        Some(owner) => {
            const SQL: &str = concat!("SELECT ", payment_columns!(), " FROM payments WHERE id = $1 AND user_id = $2");
            conn.query_opt(SQL, &[&id, &owner], Payment::from_row).await
        }
    }
}

/// A refund visible to the caller: of their own payment, or any for an admin (`owner = None`).
pub async fn find_refund(conn: &mut Conn<'_>, id: Uuid, owner: Option<Uuid>) -> Result<Option<Refund>, DbError> {
    match owner {
        None => {
            const SQL: &str = concat!("SELECT ", refund_columns!(), " FROM refunds WHERE id = $1");
            conn.query_opt(SQL, &[&id], Refund::from_row).await
        }
        Some(owner) => {
            const SQL: &str = concat!(
                "SELECT ",
                refund_columns!(),
                " FROM refunds WHERE id = $1 AND payment_id IN (SELECT id FROM payments WHERE user_id = $2)"
            );
            conn.query_opt(SQL, &[&id, &owner], Refund::from_row).await
        }
    }
}

/// As [`find_payment`] for any owner, locked until the transaction ends (`FOR UPDATE` on
/// PostgreSQL; SQLite has a single writer).
pub async fn lock_payment(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Payment>, DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => concat!("SELECT ", payment_columns!(), " FROM payments WHERE id = $1 FOR UPDATE"),
        Backend::Sqlite => concat!("SELECT ", payment_columns!(), " FROM payments WHERE id = $1"),
    };
    conn.query_opt(sql, &[&id], Payment::from_row).await
}

/// Records a refund of a payment read under lock in this transaction: the refund, its ledger
/// row and the payment's refunded amount. The `CHECK (refunded_amount <= amount)` backs the
/// caller's check.
pub async fn insert_refund(
    conn: &mut Conn<'_>,
    payment: &Payment,
    amount: i64,
    provider_reference: String,
) -> Result<(Payment, Refund), DbError> {
    let now = now();
    let refund = Refund {
        id: Uuid::now_v7(),
        payment_id: payment.id,
        amount,
        currency: payment.currency.clone(),
        provider_reference,
        created_at: now,
    };
    conn.execute(
        concat!("INSERT INTO refunds (", refund_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6)"),
        &[
            &refund.id,
            &refund.payment_id,
            &refund.amount,
            &refund.currency,
            &refund.provider_reference,
            &refund.created_at,
        ],
    )
    .await?;
    append_ledger(conn, EntryKind::Refund, payment, Some(refund.id), -amount, now).await?;
    let refunded_amount = payment.refunded_amount + amount;
    conn.execute(
        "UPDATE payments SET refunded_amount = $1, updated_at = $2 WHERE id = $3",
        &[&refunded_amount, &now, &payment.id],
    )
    .await?;
    let payment = Payment { refunded_amount, updated_at: now, ..payment.clone() };
    events::record(conn, EventType::PaymentRefunded, payment.order_id, &payment.json()).await?;
    Ok((payment, refund))
}

/// Money kept per currency: what succeeded payments charged, less what was refunded. Computed
/// from the payments, not the ledger, so the two records can be checked against each other.
pub async fn revenue_by_currency(conn: &mut Conn<'_>) -> Result<Vec<(String, i64)>, DbError> {
    // PostgreSQL sums bigints as numeric; the cast keeps one integer type on both backends.
    conn.query(
        "SELECT currency, CAST(SUM(amount - refunded_amount) AS BIGINT) FROM payments WHERE status = $1
         GROUP BY currency",
        &[&PaymentStatus::Succeeded.as_str()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .await
}

/// Filters of the payment list. `user_id` is forced to the caller for customers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PaymentFilter {
    pub user_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
}

pub async fn list_payments(
    conn: &mut Conn<'_>,
    filter: &PaymentFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Payment>, DbError> {
    let mut sql = String::from(concat!("SELECT ", payment_columns!(), " FROM payments WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    if let Some(user_id) = &filter.user_id {
        and_where(&mut sql, &mut values, "user_id = $", user_id);
    }
    if let Some(order_id) = &filter.order_id {
        and_where(&mut sql, &mut values, "order_id = $", order_id);
    }
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, Payment::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

pub async fn list_ledger(
    conn: &mut Conn<'_>,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<LedgerEntry>, DbError> {
    let mut sql = String::from(concat!("SELECT ", ledger_columns!(), " FROM transactions WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, LedgerEntry::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}
