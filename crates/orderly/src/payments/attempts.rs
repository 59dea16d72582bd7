//! The write-ahead log of provider calls (`payment_attempts`).
//!
//! Every charge, refund and reversal is written here, and committed, before its call goes out;
//! so no call to the provider can leave without a durable trace. An attempt is *unsettled*
//! until its outcome is recorded (by the request that made it, a retry under the same provider
//! key, or the reconciler) and then *settled* with that outcome. While its hold lasts, the
//! request that made it is presumed alive and will settle it itself; after, its outcome is
//! unknown and the reconciler asks the provider.
//!
//! The provider deduplicates on the provider key, so every attempt under one key is one and
//! the same call there: they are settled together.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::db::now;

pub mod attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// [`super::Kind`].
        pub kind: String,
        pub order_id: Uuid,
        /// A refund's or reversal's payment; a charge's once it recorded one.
        pub payment_id: Option<Uuid>,
        /// The refund a refund or reversal recorded.
        pub refund_id: Option<Uuid>,
        pub user_id: Uuid,
        /// The key the call is made under; a lookup by it tells what happened.
        pub provider_key: String,
        /// A refund's or reversal's charge at the provider.
        pub charge_reference: Option<String>,
        pub amount: i64,
        pub currency: String,
        /// The idempotency claim of the request that made it, so a retry finds its outcome.
        pub idempotency_claim: Option<String>,
        /// Until then the request that made it settles it; after, the reconciler may.
        pub hold_until: DateTimeUtc,
        pub created_at: DateTimeUtc,
        pub settled_at: Option<DateTimeUtc>,
        /// [`super::Outcome`], once settled.
        pub outcome: Option<String>,
        /// Not before then: the last try to reconcile it failed.
        pub reconcile_after: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use attempt::Column;
pub use attempt::Model as Attempt;

/// What a provider call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Charging an order's total.
    Charge,
    /// A refund someone asked for.
    Refund,
    /// Giving back a charge that landed on an order that could no longer be paid: Orderly
    /// owes it, so it is carried out, never just looked up.
    Reversal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
            Self::Reversal => "reversal",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Charge, Self::Refund, Self::Reversal].into_iter().find(|kind| kind.as_str() == stored)
    }
}

/// How an attempt was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The money moved and is recorded.
    Succeeded,
    /// The charge was declined; the failed payment is recorded.
    Declined,
    /// The charge moved money for an order that could no longer be paid; a reversal gives it
    /// back.
    Reversed,
    /// Nothing happened at the provider.
    NotMade,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Reversed => "reversed",
            Self::NotMade => "not_made",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Succeeded, Self::Declined, Self::Reversed, Self::NotMade].into_iter().find(|o| o.as_str() == stored)
    }
}

impl Attempt {
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(&self.kind)
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.as_deref().and_then(Outcome::parse)
    }

    /// Whether the request that made it is presumed to be still at work on it.
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        self.settled_at.is_none() && self.hold_until > now
    }
}

/// An attempt to write ahead of its call.
pub struct NewAttempt {
    pub kind: Kind,
    pub order_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub user_id: Uuid,
    pub provider_key: String,
    pub charge_reference: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub idempotency_claim: Option<String>,
    pub hold_until: DateTime<Utc>,
}

pub async fn insert(db: &impl ConnectionTrait, new: NewAttempt) -> Result<Attempt, DbErr> {
    let row = Attempt {
        id: Uuid::now_v7(),
        kind: new.kind.as_str().to_owned(),
        order_id: new.order_id,
        payment_id: new.payment_id,
        refund_id: None,
        user_id: new.user_id,
        provider_key: new.provider_key,
        charge_reference: new.charge_reference,
        amount: new.amount,
        currency: new.currency,
        idempotency_claim: new.idempotency_claim,
        hold_until: new.hold_until,
        created_at: now(),
        settled_at: None,
        outcome: None,
        reconcile_after: None,
    };
    attempt::Entity::insert(attempt::ActiveModel::from(row.clone())).exec_without_returning(db).await?;
    Ok(row)
}

/// The unsettled charge attempts of an order, newest first. All of them share one provider
/// key: a new key is only taken once a decline settled the previous one.
pub async fn unsettled_charges(db: &impl ConnectionTrait, order_id: Uuid) -> Result<Vec<Attempt>, DbErr> {
    attempt::Entity::find()
        .filter(Column::OrderId.eq(order_id))
        .filter(Column::Kind.eq(Kind::Charge.as_str()))
        .filter(Column::SettledAt.is_null())
        .order_by_desc(Column::CreatedAt)
        .all(db)
        .await
}

/// The unsettled refund and reversal attempts of a payment.
pub async fn unsettled_refunds(db: &impl ConnectionTrait, payment_id: Uuid) -> Result<Vec<Attempt>, DbErr> {
    attempt::Entity::find()
        .filter(Column::PaymentId.eq(payment_id))
        .filter(Column::Kind.ne(Kind::Charge.as_str()))
        .filter(Column::SettledAt.is_null())
        .all(db)
        .await
}

/// The newest attempt of `kind` made under an idempotency claim since `since` whose call did
/// something at the provider (its outcome is on record). Attempts that did nothing are passed
/// over: a retry refused before its call went out must not hide what an earlier one did.
pub async fn recorded_for_claim(
    db: &impl ConnectionTrait,
    claim: &str,
    kind: Kind,
    since: DateTime<Utc>,
) -> Result<Option<Attempt>, DbErr> {
    attempt::Entity::find()
        .filter(Column::IdempotencyClaim.eq(claim))
        .filter(Column::Kind.eq(kind.as_str()))
        .filter(Column::SettledAt.is_not_null())
        .filter(Column::Outcome.ne(Outcome::NotMade.as_str()))
        .filter(Column::CreatedAt.gt(since))
        .order_by_desc(Column::CreatedAt)
        .one(db)
        .await
}

/// A settled charge attempt under `key` that recorded a payment (declined, succeeded or
/// reversed), if any: the outcome of that call at the provider is on record.
pub async fn recorded_under_key(
    db: &impl ConnectionTrait,
    order_id: Uuid,
    key: &str,
) -> Result<Option<Attempt>, DbErr> {
    attempt::Entity::find()
        .filter(Column::OrderId.eq(order_id))
        .filter(Column::Kind.eq(Kind::Charge.as_str()))
        .filter(Column::ProviderKey.eq(key))
        .filter(Column::SettledAt.is_not_null())
        .filter(Column::PaymentId.is_not_null())
        .one(db)
        .await
}

/// What a settlement records.
pub struct Settlement<'a> {
    pub order_id: Uuid,
    pub provider_key: &'a str,
    pub outcome: Outcome,
    pub payment_id: Option<Uuid>,
    pub refund_id: Option<Uuid>,
}

/// Settles the unsettled attempts under a key. A known outcome settles all of them: they are
/// one call at the provider. "Nothing was made" settles only those whose hold has lapsed: a
/// held one may still land.
pub async fn settle(db: &impl ConnectionTrait, settlement: Settlement<'_>) -> Result<u64, DbErr> {
    let now = now();
    let mut update = attempt::Entity::update_many()
        .col_expr(Column::SettledAt, Expr::value(now))
        .col_expr(Column::Outcome, Expr::value(settlement.outcome.as_str()))
        .filter(Column::OrderId.eq(settlement.order_id))
        .filter(Column::ProviderKey.eq(settlement.provider_key))
        .filter(Column::SettledAt.is_null());
    if let Some(payment_id) = settlement.payment_id {
        update = update.col_expr(Column::PaymentId, Expr::value(payment_id));
    }
    if let Some(refund_id) = settlement.refund_id {
        update = update.col_expr(Column::RefundId, Expr::value(refund_id));
    }
    if settlement.outcome == Outcome::NotMade {
        update = update.filter(Column::HoldUntil.lte(now));
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// Settles one attempt whose call never went out (nothing was sent to the provider).
pub async fn settle_unsent(db: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    attempt::Entity::update_many()
        .col_expr(Column::SettledAt, Expr::value(now()))
        .col_expr(Column::Outcome, Expr::value(Outcome::NotMade.as_str()))
        .filter(Column::Id.eq(id))
        .filter(Column::SettledAt.is_null())
        .exec(db)
        .await
        .map(drop)
}

/// Extends the hold of an unsettled attempt: the request that made it is alive.
pub async fn renew_hold(db: &impl ConnectionTrait, id: Uuid, until: DateTime<Utc>) -> Result<(), DbErr> {
    attempt::Entity::update_many()
        .col_expr(Column::HoldUntil, Expr::value(until))
        .filter(Column::Id.eq(id))
        .filter(Column::SettledAt.is_null())
        .exec(db)
        .await
        .map(drop)
}

/// Ends the hold of an attempt whose outcome is unknown (its call failed after reaching the
/// provider): a retry may take it over at once, and the reconciler will find it.
pub async fn release(db: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    attempt::Entity::update_many()
        .col_expr(Column::HoldUntil, Expr::value(now()))
        .filter(Column::Id.eq(id))
        .filter(Column::SettledAt.is_null())
        .exec(db)
        .await
        .map(drop)
}

/// Unsettled attempts whose hold has lapsed and that were made before `before`, oldest first,
/// but for those postponed after a failed try: the reconciler's work.
pub async fn lapsed(db: &impl ConnectionTrait, before: DateTime<Utc>, limit: u64) -> Result<Vec<Attempt>, DbErr> {
    let now = now();
    attempt::Entity::find()
        .filter(Column::SettledAt.is_null())
        .filter(Column::CreatedAt.lt(before))
        .filter(Column::HoldUntil.lte(now))
        .filter(Column::ReconcileAfter.is_null().or(Column::ReconcileAfter.lte(now)))
        .order_by_asc(Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await
}

/// Leaves an attempt to the reconciler's passes after `until` (its last try failed).
pub async fn postpone(db: &impl ConnectionTrait, id: Uuid, until: DateTime<Utc>) -> Result<(), DbErr> {
    attempt::Entity::update_many()
        .col_expr(Column::ReconcileAfter, Expr::value(until))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await
        .map(drop)
}

/// Per kind: how many attempts are unsettled, and when the oldest was made.
pub async fn unsettled_by_kind(db: &impl ConnectionTrait) -> Result<Vec<(String, i64, DateTime<Utc>)>, DbErr> {
    attempt::Entity::find()
        .select_only()
        .column(Column::Kind)
        .column_as(Expr::col(Column::Id).count(), "count")
        .column_as(Expr::col(Column::CreatedAt).min(), "oldest")
        .filter(Column::SettledAt.is_null())
        .group_by(Column::Kind)
        .into_tuple()
        .all(db)
        .await
}
