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
use uuid::Uuid;

use super::store::PaymentStatus;
use crate::db::{Conn, DbError, Param, Row, now};

/// A provider call written ahead (a `payment_attempts` row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    pub kind: Kind,
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
    pub hold_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
    /// How it was settled, once it is.
    pub outcome: Option<Outcome>,
    /// Not before then: the last try to reconcile it failed.
    pub reconcile_after: Option<DateTime<Utc>>,
}

/// The columns [`Attempt::from_row`] reads, in its order.
macro_rules! attempt_columns {
    () => {
        "id, kind, order_id, payment_id, refund_id, user_id, provider_key, charge_reference, amount, currency, \
         idempotency_claim, hold_until, created_at, settled_at, outcome, reconcile_after"
    };
}

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
    /// Reads an attempt row; an unknown kind or outcome is corrupt.
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let kind: String = row.get(1)?;
        let kind = Kind::parse(&kind)
            .ok_or_else(|| DbError::corrupt(format!("payment attempt {id} has an unknown kind {kind:?}")))?;
        let outcome =
            match row.get::<Option<String>>(14)? {
                None => None,
                Some(outcome) => Some(Outcome::parse(&outcome).ok_or_else(|| {
                    DbError::corrupt(format!("payment attempt {id} has an unknown outcome {outcome:?}"))
                })?),
            };
        Ok(Self {
            id,
            kind,
            order_id: row.get(2)?,
            payment_id: row.get(3)?,
            refund_id: row.get(4)?,
            user_id: row.get(5)?,
            provider_key: row.get(6)?,
            charge_reference: row.get(7)?,
            amount: row.get(8)?,
            currency: row.get(9)?,
            idempotency_claim: row.get(10)?,
            hold_until: row.get(11)?,
            created_at: row.get(12)?,
            settled_at: row.get(13)?,
            outcome,
            reconcile_after: row.get(15)?,
        })
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

pub async fn insert(conn: &mut Conn<'_>, new: NewAttempt) -> Result<Attempt, DbError> {
    let row = Attempt {
        id: Uuid::now_v7(),
        kind: new.kind,
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
    conn.defer(
        concat!(
            "INSERT INTO payment_attempts (",
            attempt_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ),
        &[
            &row.id,
            &row.kind.as_str(),
            &row.order_id,
            &row.payment_id,
            &row.refund_id,
            &row.user_id,
            &row.provider_key,
            &row.charge_reference,
            &row.amount,
            &row.currency,
            &row.idempotency_claim,
            &row.hold_until,
            &row.created_at,
            &row.settled_at,
            &row.outcome.map(Outcome::as_str),
            &row.reconcile_after,
        ],
    )
    .await?;
    Ok(row)
}

/// What a new charge of an order must know, read in one statement after the order is locked.
#[derive(Debug)]
pub struct ChargeStanding {
    /// The newest attempt made under the request's idempotency claim since the horizon whose
    /// call did something at the provider (see [`recorded_for_claim`]).
    pub recorded_for_claim: Option<Attempt>,
    /// The order's unsettled charge attempts, newest first (see [`unsettled_charges`]).
    pub unsettled: Vec<Attempt>,
    /// How many charges of the order were declined (its failed payments).
    pub declines: i64,
}

/// [`recorded_for_claim`] for an order's charge, its [`unsettled_charges`] and its declines,
/// in one round trip: the write-ahead transaction of a payment reads all three.
pub async fn charge_standing(
    conn: &mut Conn<'_>,
    order_id: Uuid,
    claim: &str,
    since: DateTime<Utc>,
) -> Result<ChargeStanding, DbError> {
    // One row per matching attempt, or a single row of NULLs when none matches; the count of
    // declines rides on every row.
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        ", (SELECT count(*) FROM payments WHERE order_id = $1 AND status = $2)
         FROM (SELECT 1 AS one) AS always
         LEFT JOIN payment_attempts ON order_id = $1 AND kind = $3 AND (
             settled_at IS NULL
             OR (idempotency_claim = $4 AND outcome <> $5 AND created_at > $6))
         ORDER BY created_at DESC"
    );
    let params: [&dyn Param; 6] = [
        &order_id,
        &PaymentStatus::Failed.as_str(),
        &Kind::Charge.as_str(),
        &claim,
        &Outcome::NotMade.as_str(),
        &since,
    ];
    let rows = conn
        .query(SQL, &params, |row| {
            let attempt = match row.get::<Option<Uuid>>(0)? {
                Some(_) => Some(Attempt::from_row(row)?),
                None => None,
            };
            Ok((attempt, row.get::<i64>(16)?))
        })
        .await?;
    let declines = rows.first().map_or(0, |(_, declines)| *declines);
    let mut standing = ChargeStanding { recorded_for_claim: None, unsettled: Vec::new(), declines };
    for attempt in rows.into_iter().filter_map(|(attempt, _)| attempt) {
        if attempt.settled_at.is_none() {
            standing.unsettled.push(attempt);
        } else if standing.recorded_for_claim.is_none() {
            standing.recorded_for_claim = Some(attempt);
        }
    }
    Ok(standing)
}

/// The unsettled charge attempts of an order, newest first. All of them share one provider
/// key: a new key is only taken once a decline settled the previous one.
pub async fn unsettled_charges(conn: &mut Conn<'_>, order_id: Uuid) -> Result<Vec<Attempt>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM payment_attempts WHERE order_id = $1 AND kind = $2 AND settled_at IS NULL ORDER BY created_at DESC"
    );
    conn.query(SQL, &[&order_id, &Kind::Charge.as_str()], Attempt::from_row).await
}

/// The unsettled refund and reversal attempts of a payment.
pub async fn unsettled_refunds(conn: &mut Conn<'_>, payment_id: Uuid) -> Result<Vec<Attempt>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM payment_attempts WHERE payment_id = $1 AND kind <> $2 AND settled_at IS NULL"
    );
    conn.query(SQL, &[&payment_id, &Kind::Charge.as_str()], Attempt::from_row).await
}

/// The newest attempt of `kind` made under an idempotency claim since `since` whose call did
/// something at the provider (its outcome is on record). Attempts that did nothing are passed
/// over: a retry refused before its call went out must not hide what an earlier one did.
pub async fn recorded_for_claim(
    conn: &mut Conn<'_>,
    claim: &str,
    kind: Kind,
    since: DateTime<Utc>,
) -> Result<Option<Attempt>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM payment_attempts
         WHERE idempotency_claim = $1 AND kind = $2 AND settled_at IS NOT NULL AND outcome <> $3 AND created_at > $4
         ORDER BY created_at DESC LIMIT 1"
    );
    conn.query_opt(SQL, &[&claim, &kind.as_str(), &Outcome::NotMade.as_str(), &since], Attempt::from_row).await
}

/// A settled charge attempt under `key` that recorded a payment (declined, succeeded or
/// reversed), if any: the outcome of that call at the provider is on record.
pub async fn recorded_under_key(conn: &mut Conn<'_>, order_id: Uuid, key: &str) -> Result<Option<Attempt>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM payment_attempts
         WHERE order_id = $1 AND kind = $2 AND provider_key = $3 AND settled_at IS NOT NULL AND payment_id IS NOT NULL
         LIMIT 1"
    );
    conn.query_opt(SQL, &[&order_id, &Kind::Charge.as_str(), &key], Attempt::from_row).await
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
pub async fn settle(conn: &mut Conn<'_>, settlement: Settlement<'_>) -> Result<(), DbError> {
    // A payment or refund id is set when given, else left as it is.
    const ALL: &str = "UPDATE payment_attempts
        SET settled_at = $1, outcome = $2, payment_id = COALESCE($3, payment_id), refund_id = COALESCE($4, refund_id)
        WHERE order_id = $5 AND provider_key = $6 AND settled_at IS NULL";
    const LAPSED: &str = "UPDATE payment_attempts
        SET settled_at = $1, outcome = $2, payment_id = COALESCE($3, payment_id), refund_id = COALESCE($4, refund_id)
        WHERE order_id = $5 AND provider_key = $6 AND settled_at IS NULL AND hold_until <= $1";
    let sql = if settlement.outcome == Outcome::NotMade { LAPSED } else { ALL };
    conn.defer(
        sql,
        &[
            &now(),
            &settlement.outcome.as_str(),
            &settlement.payment_id,
            &settlement.refund_id,
            &settlement.order_id,
            &settlement.provider_key,
        ],
    )
    .await
}

/// Settles one attempt whose call never went out (nothing was sent to the provider).
pub async fn settle_unsent(conn: &mut Conn<'_>, id: Uuid) -> Result<(), DbError> {
    conn.execute(
        "UPDATE payment_attempts SET settled_at = $1, outcome = $2 WHERE id = $3 AND settled_at IS NULL",
        &[&now(), &Outcome::NotMade.as_str(), &id],
    )
    .await
    .map(drop)
}

/// Extends the hold of an unsettled attempt: the request that made it is alive.
pub async fn renew_hold(conn: &mut Conn<'_>, id: Uuid, until: DateTime<Utc>) -> Result<(), DbError> {
    conn.execute("UPDATE payment_attempts SET hold_until = $1 WHERE id = $2 AND settled_at IS NULL", &[&until, &id])
        .await
        .map(drop)
}

/// Ends the hold of an attempt whose outcome is unknown (its call failed after reaching the
/// provider): a retry may take it over at once, and the reconciler will find it.
pub async fn release(conn: &mut Conn<'_>, id: Uuid) -> Result<(), DbError> {
    conn.execute("UPDATE payment_attempts SET hold_until = $1 WHERE id = $2 AND settled_at IS NULL", &[&now(), &id])
        .await
        .map(drop)
}

/// Unsettled attempts whose hold has lapsed and that were made before `before`, oldest first,
/// but for those postponed after a failed try: the reconciler's work.
pub async fn lapsed(conn: &mut Conn<'_>, before: DateTime<Utc>, limit: i64) -> Result<Vec<Attempt>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM payment_attempts
         WHERE settled_at IS NULL AND created_at < $1 AND hold_until <= $2
             AND (reconcile_after IS NULL OR reconcile_after <= $2)
         ORDER BY created_at ASC LIMIT $3"
    );
    conn.query(SQL, &[&before, &now(), &limit], Attempt::from_row).await
}

/// Leaves an attempt to the reconciler's passes after `until` (its last try failed).
pub async fn postpone(conn: &mut Conn<'_>, id: Uuid, until: DateTime<Utc>) -> Result<(), DbError> {
    conn.execute("UPDATE payment_attempts SET reconcile_after = $1 WHERE id = $2", &[&until, &id]).await.map(drop)
}

/// Per kind: how many attempts are unsettled, and when the oldest was made.
pub async fn unsettled_by_kind(conn: &mut Conn<'_>) -> Result<Vec<(Kind, i64, DateTime<Utc>)>, DbError> {
    conn.query(
        "SELECT kind, count(id), min(created_at) FROM payment_attempts WHERE settled_at IS NULL GROUP BY kind",
        &[],
        |row| {
            let kind: String = row.get(0)?;
            let kind = Kind::parse(&kind)
                .ok_or_else(|| DbError::corrupt(format!("payment attempts have an unknown kind {kind:?}")))?;
            Ok((kind, row.get(1)?, row.get(2)?))
        },
    )
    .await
}
