//! Money movement: charging an order and refunding a payment, exactly once, through crashes,
//! outages and races.
//!
//! Every provider call is written ahead ([`super::attempts`]): a short transaction commits the
//! attempt (order or payment, provider key, amount) before the call goes out, and no database
//! lock is held while the provider is called. The outcome is then recorded in one transaction:
//! the payment or refund, its ledger row, the order's new status, and the attempt settled. When
//! that never happens (the process died, the database was down, the provider never answered),
//! the reconciler ([`super::reconciler`]) asks the provider what happened under the attempt's
//! key and records it. The call and the recording run in a task of their own, so a client that
//! hangs up cannot leave a charge made but unrecorded.
//!
//! What keeps money right:
//! - An unsettled charge attempt holds its order: a second payment waits for it (409
//!   `payment_in_progress`), and so does a cancel, so cancelling and paying cannot both win.
//! - A charge's provider key comes from the order and its declines so far ([`charge_key`]), not
//!   from the client's `Idempotency-Key`: every attempt to pay an order, under any key, finds
//!   the charge an earlier one may have made instead of making another.
//! - A recorded outcome is found again: by provider key (each call's outcome is recorded once)
//!   and by idempotency claim (a retried request answers what its first run did).
//! - A charge that lands on an order that can no longer be paid is recorded and given back
//!   (a reversal, itself written ahead), never kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use orderly_kit::idempotency::KeyedWrite;

use crate::accounts::auth::Principal;
use crate::db::{Conn, Database, DbError, now};
use crate::idempotency::{self, Keyed};
use crate::orders::domain::OrderStatus;
use crate::orders::store as orders;
use crate::responses::Written;

use super::Payments;
use super::attempts::{self, Attempt, Kind, NewAttempt, Outcome, Settlement};
use super::provider::{ChargeOutcome, ChargeRequest, RefundRequest, Unavailable};
use super::store::{self, NewPayment, Payment, PaymentStatus, Refund};

/// Why a payment or refund did not go through, or not yet; the routes answer each with its
/// problem.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// No such order or payment, or not the caller's.
    #[error("not found")]
    NotFound,
    /// The order or payment is not in a state that allows it.
    #[error("{0}")]
    InvalidState(String),
    /// Another charge or refund holds the order or payment until it is settled.
    #[error("{detail}")]
    InProgress { detail: &'static str, retry_after_secs: u64 },
    /// A refund larger than what is left of the payment.
    #[error("at most {refundable} is left to refund")]
    ExceedsRefundable { refundable: i64 },
    /// The provider declined the charge.
    #[error("the charge was declined ({code})")]
    Declined { code: String },
    /// The provider could not be asked, or did not answer in time. `sent`: whether a call
    /// went out (else the circuit breaker or the bulkhead refused it here).
    #[error("payment provider unavailable: {reason}")]
    ProviderUnavailable { reason: &'static str, retry_after_secs: u64, sent: bool },
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// A broken invariant: a row that should be there is not.
    #[error("{0}")]
    Internal(&'static str),
}

/// A charge that did not go through, or not yet, and whether the request's idempotency key
/// was claimed (by the transaction that wrote the charge ahead): then the answer is the
/// request's to keep under it, or the key to release.
#[derive(Debug)]
pub struct NotPaid {
    pub error: PaymentError,
    pub key_claimed: bool,
}

/// Charges an order's total, under the request's idempotency `key`, in two commits: the key is
/// claimed in the transaction that writes the charge ahead, and the response (`render` of the
/// payment) kept in the one that records its outcome.
pub async fn pay(
    payments: Payments,
    caller: Principal,
    order_id: Uuid,
    payment_method: String,
    key: KeyedWrite,
    render: fn(&Payment) -> Written,
) -> Result<Keyed<Payment>, NotPaid> {
    let owner = caller.owner_scope();
    let horizon = claim_horizon(payments.idempotency_ttl);
    let claim = key.id.clone();
    let keyed = key.clone();
    // Written ahead: the attempt commits before the call goes out.
    let begun = payments
        .db
        .write()
        .transaction(async move |conn| {
            // The order's lock, the claim of the key and the order's standing go in one round
            // trip (a retry that finds its key taken locked the order for nothing, and commits
            // nothing). The lock comes first: the recording transaction locks the order and
            // then keeps the response under the key, and locks taken in another order could
            // wait on each other.
            let order = orders::lock_order_ahead(conn, order_id, owner).await?;
            let claiming = idempotency::claim_key_ahead(conn, &keyed).await?;
            let standing = attempts::charge_standing(conn, order_id, &claim, horizon).await?;
            if let Some(standing) = idempotency::claimed(conn, &keyed, claiming).await? {
                return Ok(Err(standing));
            }
            let order = conn.fetch_opt(order).await?.ok_or(PaymentError::NotFound)?;
            if let Some(earlier) = standing.recorded_for_claim
                && let Some(outcome) = earlier.outcome
            {
                // A retry of a request whose charge was recorded, by its first run or anyone else.
                let payment = recorded_payment(conn, earlier.payment_id).await?;
                let answering = Answering { key: keyed, render };
                let written = kept_charge(conn, Some(&answering), outcome, payment.as_ref()).await?;
                return Ok(Ok(Begun::Recorded((outcome, payment, written))));
            }
            if order.status != OrderStatus::Pending {
                return Err(invalid_state(format!(
                    "Only pending orders can be paid; this one is {}.",
                    order.status.as_str()
                )));
            }
            if standing.unsettled.iter().any(|attempt| attempt.is_held(now())) {
                return Err(in_progress("A payment for this order is already being processed; retry shortly.", 1));
            }
            // A lapsed attempt's outcome is unknown: take it over under its key, so that whatever it
            // did at the provider is found rather than done again.
            let provider_key = match standing.unsettled.first() {
                Some(lapsed) => lapsed.provider_key.clone(),
                None => charge_key(order.id, standing.declines),
            };
            let attempt = attempts::insert(
                conn,
                NewAttempt {
                    kind: Kind::Charge,
                    order_id: order.id,
                    payment_id: None,
                    user_id: order.user_id,
                    provider_key,
                    charge_reference: None,
                    amount: order.total,
                    currency: order.currency.clone(),
                    idempotency_claim: Some(claim),
                    hold_until: hold_until(),
                },
            )
            .await?;
            Ok(Ok(Begun::Attempt(Box::new(attempt))))
        })
        .await
        .map_err(|error| NotPaid { error, key_claimed: false })?;
    // Answered here, not in the unit: a problem carries the request's id.
    let attempt = match begun {
        Err(standing) => return Ok(Keyed::Answered(key.answer(&standing))),
        Ok(Begun::Recorded((outcome, payment, written))) => return charge_answer(outcome, payment, written),
        Ok(Begun::Attempt(attempt)) => *attempt,
    };

    let request = ChargeRequest {
        key: attempt.provider_key.clone(),
        amount: attempt.amount,
        currency: attempt.currency.clone(),
        payment_method,
        reference: attempt.order_id,
    };
    // A task of its own, so the charge is settled even if the client hangs up; still part of
    // the request's trace.
    let task = orderly_kit::trace::spawn(async move {
        let outcome = match holding(&payments.db, &attempt, payments.gateway.charge(&request)).await {
            Ok(outcome) => outcome,
            Err(unavailable) => {
                let error = call_failed(&payments.db, &attempt, &unavailable).await;
                return Err(NotPaid { error, key_claimed: true });
            }
        };
        let recorded = record_charge(&payments, &attempt, Some(outcome), Some(Answering { key, render })).await;
        let (outcome, payment, written) = recorded.map_err(|error| NotPaid { error, key_claimed: true })?;
        charge_answer(outcome, payment, written)
    });
    task.await.map_err(|_| NotPaid { error: PaymentError::Internal("the payment task panicked"), key_claimed: true })?
}

/// The request a charge answers: its idempotency key, and how it renders a payment.
pub(super) struct Answering {
    key: KeyedWrite,
    render: fn(&Payment) -> Written,
}

/// Keeps the response to a charge that succeeded under the key of the request it answers
/// (none for the reconciler), in the transaction that recorded it (or found it recorded).
/// Other outcomes are answered with a problem, which carries the request's id and is kept by
/// the idempotency layer.
async fn kept_charge(
    conn: &mut Conn<'_>,
    answering: Option<&Answering>,
    outcome: Outcome,
    payment: Option<&Payment>,
) -> Result<Option<Written>, DbError> {
    match (answering, outcome, payment) {
        (Some(answering), Outcome::Succeeded, Some(payment)) => {
            let written = (answering.render)(payment);
            idempotency::keep_response(conn, &answering.key, &written).await?;
            Ok(Some(written))
        }
        _ => Ok(None),
    }
}

/// How a payment or refund request's first transaction ended: with what a first run of the
/// request recorded (it is a retry), or with an attempt written ahead of its call.
enum Begun<T> {
    Recorded(T),
    Attempt(Box<Attempt>),
}

/// The provider's idempotency key for charging an order: the same for every attempt until one
/// is declined. An order is paid at most once, so every attempt after an unknown outcome,
/// whatever its `Idempotency-Key` and payment method, must find the charge the provider may
/// already have made rather than make another; a recorded decline moves on to a fresh key, so
/// another payment method can be tried.
fn charge_key(order_id: Uuid, declines: i64) -> String {
    format!("orderly-charge-{order_id}-{declines}")
}

/// The provider's idempotency key for giving back a charge that landed on an order that could
/// no longer be paid.
fn reversal_key(payment_id: Uuid) -> String {
    format!("orderly-reversal-{payment_id}")
}

/// What a charge request answers once its outcome is recorded; `written`, the response kept
/// with a successful charge.
fn charge_answer(
    outcome: Outcome,
    payment: Option<Payment>,
    written: Option<Written>,
) -> Result<Keyed<Payment>, NotPaid> {
    let error = match (outcome, payment, written) {
        (Outcome::Succeeded, Some(payment), Some(written)) => return Ok(Keyed::Done(payment, written)),
        (Outcome::Declined, payment, _) => PaymentError::Declined {
            code: payment.and_then(|payment| payment.failure_code).unwrap_or_else(|| "card_declined".into()),
        },
        (Outcome::Reversed, _, _) => invalid_state(
            "The order could no longer be paid when the charge went through (it was cancelled or paid meanwhile); \
             the charge is being refunded."
                .into(),
        ),
        _ => PaymentError::Internal("a recorded charge has no payment"),
    };
    Err(NotPaid { error, key_claimed: true })
}

async fn recorded_payment(conn: &mut Conn<'_>, payment_id: Option<Uuid>) -> Result<Option<Payment>, DbError> {
    match payment_id {
        Some(id) => store::find_payment(conn, id, None).await,
        None => Ok(None),
    }
}

/// A provider call failed. If it never went out, nothing happened there and the attempt is
/// settled as such (a reversal stays due: it is owed). Otherwise the outcome is unknown: the
/// hold ends, so a retry may take the attempt over at once, and the reconciler finds out if
/// nobody does.
async fn call_failed(db: &Database, attempt: &Attempt, unavailable: &Unavailable) -> PaymentError {
    let id = attempt.id;
    let settled = if unavailable.reached || attempt.kind == Kind::Reversal {
        db.write().run(async move |conn| attempts::release(conn, id).await).await
    } else {
        db.write().run(async move |conn| attempts::settle_unsent(conn, id).await).await
    };
    if let Err(error) = settled {
        // The attempt stays held until its hold lapses; then the reconciler settles it.
        tracing::warn!(%error, attempt_id = %attempt.id, "could not release a payment attempt");
    }
    provider_unavailable(unavailable)
}

/// Records what a charge did at the provider (`None`: nothing, as a lookup found), once for
/// every attempt under its key, and settles them. A charge that succeeded on an order that is
/// no longer pending is recorded and reversed. With the request's `keep` (its idempotency key
/// and how it renders a payment), a successful charge's response is kept in the same
/// transaction. Returns how the attempts were settled, with the payment recorded, if any, and
/// the response kept.
pub(super) async fn record_charge(
    payments: &Payments,
    charge: &Attempt,
    outcome: Option<ChargeOutcome>,
    keep: Option<Answering>,
) -> Result<(Outcome, Option<Payment>, Option<Written>), PaymentError> {
    let charge = charge.clone();
    let (outcome, payment, written, reversal) = payments
        .db
        .write()
        .transaction(async move |conn| {
            // The order's lock and the outcome on record go in one round trip.
            let order = orders::lock_order_ahead(conn, charge.order_id, None).await?;
            let on_record = attempts::recorded_under_key(conn, charge.order_id, &charge.provider_key).await?;
            let order =
                conn.fetch_opt(order).await?.ok_or(PaymentError::Internal("a payment attempt's order is gone"))?;
            let settlement = |outcome, payment_id| Settlement {
                order_id: order.id,
                provider_key: &charge.provider_key,
                outcome,
                payment_id,
                refund_id: None,
            };
            if let Some(recorded) = on_record
                && let Some(outcome) = recorded.outcome
            {
                // Another attempt under this key (one call at the provider) recorded it already.
                attempts::settle(conn, settlement(outcome, recorded.payment_id)).await?;
                let payment = recorded_payment(conn, recorded.payment_id).await?;
                let written = kept_charge(conn, keep.as_ref(), outcome, payment.as_ref()).await?;
                return Ok((outcome, payment, written, None));
            }
            let new_payment = |outcome| NewPayment {
                order_id: order.id,
                user_id: charge.user_id,
                amount: charge.amount,
                currency: charge.currency.clone(),
                outcome,
            };
            let recorded = match outcome {
                None => {
                    attempts::settle(conn, settlement(Outcome::NotMade, None)).await?;
                    (Outcome::NotMade, None, None)
                }
                Some(ChargeOutcome::Declined { code }) => {
                    let payment = store::insert_payment(conn, new_payment(Err(code))).await?;
                    attempts::settle(conn, settlement(Outcome::Declined, Some(payment.id))).await?;
                    (Outcome::Declined, Some(payment), None)
                }
                Some(ChargeOutcome::Succeeded { reference }) => {
                    let payment = store::insert_payment(conn, new_payment(Ok(reference.clone()))).await?;
                    if order.status == OrderStatus::Pending {
                        orders::set_status(conn, &order, OrderStatus::Paid).await?;
                        attempts::settle(conn, settlement(Outcome::Succeeded, Some(payment.id))).await?;
                        (Outcome::Succeeded, Some(payment), None)
                    } else {
                        // Defence in depth: paying and cancelling exclude each other, so only a stray
                        // charge gets here. The money goes back, and that is written ahead too.
                        let reversal = attempts::insert(
                            conn,
                            NewAttempt {
                                kind: Kind::Reversal,
                                order_id: order.id,
                                payment_id: Some(payment.id),
                                user_id: charge.user_id,
                                provider_key: reversal_key(payment.id),
                                charge_reference: Some(reference),
                                amount: payment.amount,
                                currency: payment.currency.clone(),
                                idempotency_claim: None,
                                hold_until: hold_until(),
                            },
                        )
                        .await?;
                        attempts::settle(conn, settlement(Outcome::Reversed, Some(payment.id))).await?;
                        (Outcome::Reversed, Some(payment), Some((reversal, order.status)))
                    }
                }
            };
            let (outcome, payment, reversal) = recorded;
            let written = kept_charge(conn, keep.as_ref(), outcome, payment.as_ref()).await?;
            Ok::<_, PaymentError>((outcome, payment, written, reversal))
        })
        .await?;
    if let Some((reversal, status)) = reversal {
        // Logged here, in the request's context (a unit of work may run on a database thread).
        tracing::warn!(
            order.id = %reversal.order_id, payment.id = %reversal.payment_id.unwrap_or_default(),
            order.status = status.as_str(),
            "a charge landed on an order that can no longer be paid; reversing it"
        );
        // Best effort now; the reconciler carries it out if this does not.
        let _ = reverse(payments, &reversal).await;
    }
    Ok((outcome, payment, written))
}

/// Gives back the charge of a reversal attempt, under the reversal's key: a repeat returns the
/// refund already made.
pub(super) async fn reverse(payments: &Payments, reversal: &Attempt) -> Result<Outcome, PaymentError> {
    let request = refund_request(reversal);
    match holding(&payments.db, reversal, payments.gateway.refund(&request)).await {
        Ok(reference) => record_refund(&payments.db, reversal, Some(reference)).await.map(|_| Outcome::Succeeded),
        Err(unavailable) => Err(call_failed(&payments.db, reversal, &unavailable).await),
    }
}

/// The provider call of a refund or reversal attempt.
fn refund_request(attempt: &Attempt) -> RefundRequest {
    RefundRequest {
        key: attempt.provider_key.clone(),
        charge: attempt.charge_reference.clone().unwrap_or_default(),
        amount: attempt.amount,
        currency: attempt.currency.clone(),
    }
}

/// Refunds `amount` of a payment (all that is left when `None`). `claim` is the request's
/// idempotency claim; it is also the provider's key for this refund.
pub async fn refund(
    payments: Payments,
    payment_id: Uuid,
    amount: Option<i64>,
    claim: String,
) -> Result<(Payment, Refund), PaymentError> {
    let horizon = claim_horizon(payments.idempotency_ttl);
    let settle_after = payments.settle_after;
    // Written ahead: the attempt commits before the call goes out.
    let attempt = payments
        .db
        .write()
        .transaction(async move |conn| {
            let payment = store::lock_payment(conn, payment_id).await?.ok_or(PaymentError::NotFound)?;
            if let Some(earlier) = attempts::recorded_for_claim(conn, &claim, Kind::Refund, horizon).await?
                && earlier.payment_id == Some(payment.id)
                && let Some(refund_id) = earlier.refund_id
            {
                // A retry of a request whose refund was recorded, by its first run or the reconciler.
                let refund = store::find_refund(conn, refund_id, None)
                    .await?
                    .ok_or(PaymentError::Internal("a recorded refund is gone"))?;
                return Ok(Begun::Recorded((payment, refund)));
            }
            if payment.status != PaymentStatus::Succeeded {
                return Err(invalid_state("Only succeeded payments can be refunded.".into()));
            }
            let unsettled = attempts::unsettled_refunds(conn, payment.id).await?;
            if unsettled.iter().any(|attempt| attempt.provider_key != claim || attempt.is_held(now())) {
                let wait = retry_after(settle_after, &unsettled);
                return Err(in_progress("A refund of this payment is already being processed; retry shortly.", wait));
            }
            let refundable = payment.amount - payment.refunded_amount;
            if refundable == 0 {
                return Err(invalid_state("This payment is already fully refunded.".into()));
            }
            let amount = amount.unwrap_or(refundable);
            if amount > refundable {
                return Err(PaymentError::ExceedsRefundable { refundable });
            }
            let attempt = attempts::insert(
                conn,
                NewAttempt {
                    kind: Kind::Refund,
                    order_id: payment.order_id,
                    payment_id: Some(payment.id),
                    user_id: payment.user_id,
                    provider_key: claim.clone(),
                    charge_reference: payment.provider_reference.clone(),
                    amount,
                    currency: payment.currency.clone(),
                    idempotency_claim: Some(claim),
                    hold_until: hold_until(),
                },
            )
            .await?;
            Ok(Begun::Attempt(Box::new(attempt)))
        })
        .await?;
    let attempt = match attempt {
        Begun::Recorded(recorded) => return Ok(recorded),
        Begun::Attempt(attempt) => *attempt,
    };

    let request = refund_request(&attempt);
    let task = orderly_kit::trace::spawn(async move {
        let reference = match holding(&payments.db, &attempt, payments.gateway.refund(&request)).await {
            Ok(reference) => reference,
            Err(unavailable) => return Err(call_failed(&payments.db, &attempt, &unavailable).await),
        };
        record_refund(&payments.db, &attempt, Some(reference))
            .await?
            .ok_or(PaymentError::Internal("a refund the provider made was not recorded"))
    });
    task.await.map_err(|_| PaymentError::Internal("the refund task panicked"))?
}

/// Records what a refund or reversal did at the provider (`None`: nothing, as a lookup found)
/// and settles its attempts. A refund at the provider is recorded once, whoever learns of it:
/// the refund, its ledger row, the payment's refunded amount, and the order `refunded` once
/// none of its payments holds money.
pub(super) async fn record_refund(
    db: &Database,
    attempt: &Attempt,
    reference: Option<String>,
) -> Result<Option<(Payment, Refund)>, PaymentError> {
    let payment_id = attempt.payment_id.ok_or(PaymentError::Internal("a refund attempt has no payment"))?;
    let provider_key = attempt.provider_key.clone();
    let amount = attempt.amount;
    db.write()
        .transaction(async move |conn| {
            let payment = store::lock_payment(conn, payment_id)
                .await?
                .ok_or(PaymentError::Internal("a refund attempt's payment is gone"))?;
            let order_id = payment.order_id;
            let settlement = |outcome, refund_id| Settlement {
                order_id,
                provider_key: &provider_key,
                outcome,
                payment_id: None,
                refund_id,
            };
            let Some(reference) = reference else {
                attempts::settle(conn, settlement(Outcome::NotMade, None)).await?;
                return Ok(None);
            };
            let recorded = match store::refund_by_reference(conn, &reference).await? {
                Some(refund) => (payment, refund),
                None => {
                    // The database refuses a refund beyond the amount (CHECK): one refund runs per
                    // payment at a time, so only a broken invariant could get there, and then this
                    // fails instead of over-refunding.
                    let (payment, refund) = store::insert_refund(conn, &payment, amount, reference).await?;
                    if payment.refunded_amount == payment.amount {
                        let order = orders::lock_order(conn, payment.order_id, None)
                            .await?
                            .ok_or(PaymentError::Internal("a payment's order is gone"))?;
                        if order.status == OrderStatus::Paid && store::count_holding_money(conn, order.id).await? == 0 {
                            orders::set_status(conn, &order, OrderStatus::Refunded).await?;
                        }
                    }
                    (payment, refund)
                }
            };
            attempts::settle(conn, settlement(Outcome::Succeeded, Some(recorded.1.id))).await?;
            Ok(Some(recorded))
        })
        .await
}

/// Refuses (409 `payment_in_progress`) while a charge of the order is unsettled: a cancel must
/// not return the stock of an order whose money may be moving. Runs inside the cancel's
/// transaction; `settle_after` is `Payments::settle_after`.
pub async fn refuse_while_charging(
    conn: &mut Conn<'_>,
    order_id: Uuid,
    settle_after: Duration,
) -> Result<(), PaymentError> {
    let unsettled = attempts::unsettled_charges(conn, order_id).await?;
    if unsettled.is_empty() {
        return Ok(());
    }
    let detail = "A payment of this order is being processed; it can be cancelled once that is settled.";
    Err(in_progress(detail, retry_after(settle_after, &unsettled)))
}

/// When unsettled attempts will have been settled: at once for one held by its request (it is
/// about to end), else when the reconciler is due to look it up (`settle_after`, as
/// `Payments::settle_after`, after it was made).
fn retry_after(settle_after: Duration, unsettled: &[Attempt]) -> u64 {
    let now = now();
    if unsettled.iter().any(|attempt| attempt.is_held(now)) {
        return 1;
    }
    let settle_after = chrono::TimeDelta::from_std(settle_after).unwrap_or(chrono::TimeDelta::MAX);
    let due = unsettled.iter().map(|attempt| attempt.created_at + settle_after).max().unwrap_or(now);
    u64::try_from((due - now).num_seconds()).unwrap_or(0).max(1)
}

/// How long an attempt stays held without renewal. The request that made it renews the hold
/// while its provider call runs ([`holding`]), so a retry after a crash can take the attempt
/// over this long after the crash, not after the provider's whole budget; long enough to
/// cover clock skew between instances and the recording of the outcome.
const HOLD: Duration = Duration::from_secs(6);

fn hold_until() -> DateTime<Utc> {
    now() + chrono::TimeDelta::from_std(HOLD).unwrap_or(chrono::TimeDelta::minutes(1))
}

/// Runs a provider call for `attempt`, renewing its hold, and the lock of the idempotency key
/// of the request that made it, until the call ends.
async fn holding<T>(db: &Database, attempt: &Attempt, call: impl Future<Output = T>) -> T {
    let id = attempt.id;
    let claim = attempt.idempotency_claim.clone();
    orderly_kit::lease::renewing(call, HOLD / 3, || {
        let claim = claim.clone();
        async move {
            let until = hold_until();
            let renewed = db
                .write()
                .run(async move |conn| {
                    attempts::renew_hold(conn, id, until).await?;
                    match &claim {
                        Some(claim) => idempotency::renew_key(conn, claim, until).await,
                        None => Ok(()),
                    }
                })
                .await;
            if let Err(error) = renewed {
                tracing::warn!(%error, attempt_id = %id, "could not renew a payment attempt's hold");
            }
        }
    })
    .await
}

/// The oldest a request's attempt may be for a retry to be answered with its outcome: as long
/// as idempotency keys are kept.
fn claim_horizon(idempotency_ttl: Duration) -> DateTime<Utc> {
    now() - chrono::TimeDelta::from_std(idempotency_ttl).unwrap_or(chrono::TimeDelta::days(1))
}

fn invalid_state(detail: String) -> PaymentError {
    PaymentError::InvalidState(detail)
}

fn in_progress(detail: &'static str, retry_after_secs: u64) -> PaymentError {
    PaymentError::InProgress { detail, retry_after_secs }
}

fn provider_unavailable(unavailable: &Unavailable) -> PaymentError {
    tracing::warn!(reason = unavailable.reason, "payment provider unavailable");
    unavailable.into()
}

impl From<&Unavailable> for PaymentError {
    fn from(unavailable: &Unavailable) -> Self {
        Self::ProviderUnavailable {
            reason: unavailable.reason,
            retry_after_secs: unavailable.retry_after.as_secs().max(1),
            sent: unavailable.reached,
        }
    }
}
