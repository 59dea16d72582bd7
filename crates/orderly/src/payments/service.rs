//! Money movement: charging an order and refunding a payment, exactly once.
//!
//! Neither holds a database transaction or lock while the provider is called. Instead a short
//! transaction marks the attempt in flight on the order (or payment), which makes a concurrent
//! attempt answer 409 until this one ends; the mark lapses by itself if the process dies. The
//! outcome is then recorded in a second transaction: the payment or refund, its ledger row
//! and the order's new status together. The provider call and the recording run in a task of
//! their own, so a client that hangs up cannot leave a charge made but unrecorded.
//!
//! A charge whose outcome is unknown (the provider timed out, or the process died) is found
//! again by the next attempt to pay the order: the provider's idempotency key is derived from
//! the order and its declines so far ([`charge_key`]), not from the client's
//! `Idempotency-Key`, so even a retry under a new key cannot charge an order twice. If nobody
//! retries, [`settle_unknown_charges`] looks the charge up at the provider and records it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use orderly_kit::{FieldError, Problem};
use sea_orm::TransactionTrait;
use uuid::Uuid;

use crate::accounts::auth::Principal;
use crate::app::AppState;
use crate::db::now;
use crate::error::AppError;
use crate::orders::domain::OrderStatus;
use crate::orders::store as orders;

use super::provider::{ChargeOutcome, ChargeRequest, RefundRequest, Unavailable};
use super::store::{self, NewPayment, Payment, Refund, UnsettledCharge};

/// Charges an order's total.
pub async fn pay(
    app: AppState,
    caller: Principal,
    order_id: Uuid,
    payment_method: String,
) -> Result<Payment, AppError> {
    let owner = caller.owner_scope();
    let attempt = Uuid::now_v7();
    let transaction = app.db.write().begin().await?;
    let order = orders::lock_order(&transaction, order_id, owner).await?.ok_or_else(Problem::not_found)?;
    if order.status != OrderStatus::Pending.as_str() {
        return Err(invalid_state(format!("Only pending orders can be paid; this one is {}.", order.status)));
    }
    if orders::payment_in_flight(&order, now()) {
        return Err(in_progress("A payment for this order is already being processed; retry shortly."));
    }
    let declines = store::count_declined(&transaction, order.id).await?;
    orders::start_payment_attempt(&transaction, order.id, attempt, hold_until(&app)).await?;
    transaction.commit().await?;

    let request = ChargeRequest {
        key: charge_key(order.id, declines),
        amount: order.total,
        currency: order.currency.clone(),
        payment_method,
        reference: order.id,
    };
    let owner_id = order.user_id;
    let task = tokio::spawn(async move {
        let outcome = app.payments.charge(&request).await;
        record_charge(&app, owner_id, &request, attempt, outcome).await
    });
    task.await.map_err(|_| AppError::internal("the payment task panicked"))?
}

/// The provider's idempotency key for charging an order: the same for every attempt until one
/// is declined. An order is paid at most once, so every attempt after an unknown outcome,
/// whatever its `Idempotency-Key` and payment method, must find the charge the provider may
/// already have made rather than make another; a recorded decline moves on to a fresh key, so
/// another payment method can be tried.
fn charge_key(order_id: Uuid, declines: u64) -> String {
    format!("orderly-charge-{order_id}-{declines}")
}

async fn record_charge(
    app: &AppState,
    user_id: Uuid,
    request: &ChargeRequest,
    attempt: Uuid,
    outcome: Result<ChargeOutcome, Unavailable>,
) -> Result<Payment, AppError> {
    let outcome = match outcome {
        Ok(ChargeOutcome::Succeeded { reference }) => Ok(reference),
        Ok(ChargeOutcome::Declined { code }) => Err(code),
        Err(unavailable) => {
            let transaction = app.db.write().begin().await?;
            if unavailable.reached {
                // The provider may have charged: remember to find out, should nobody retry.
                let unsettled = UnsettledCharge {
                    order_id: request.reference,
                    user_id,
                    provider_key: request.key.clone(),
                    amount: request.amount,
                    currency: request.currency.clone(),
                    created_at: now(),
                };
                store::remember_unsettled(&transaction, unsettled).await?;
            }
            orders::end_payment_attempt(&transaction, request.reference, attempt).await?;
            transaction.commit().await?;
            return Err(provider_unavailable(&unavailable));
        }
    };
    let transaction = app.db.write().begin().await?;
    let order = orders::lock_order(&transaction, request.reference, None).await?.ok_or_else(Problem::not_found)?;
    store::forget_unsettled(&transaction, order.id, None).await?;
    let succeeded = outcome.is_ok();
    let payment = store::insert_payment(
        &transaction,
        NewPayment {
            order_id: request.reference,
            user_id,
            amount: request.amount,
            currency: request.currency.clone(),
            outcome,
        },
    )
    .await?;
    if succeeded {
        if order.payment_attempt != Some(attempt) || order.status != OrderStatus::Pending.as_str() {
            // Only if this attempt outlived its mark: the money moved, so it is recorded, but
            // the order may already have been settled by another attempt.
            tracing::error!(order_id = %order.id, payment_id = %payment.id, "a charge completed after its attempt lapsed");
        }
        if order.status == OrderStatus::Pending.as_str() {
            orders::set_status(&transaction, &order, OrderStatus::Paid).await?;
        }
    }
    orders::end_payment_attempt(&transaction, request.reference, attempt).await?;
    transaction.commit().await?;
    if succeeded {
        Ok(payment)
    } else {
        Err(Problem::new(StatusCode::PAYMENT_REQUIRED, "card_declined", "The payment method was declined.").into())
    }
}

/// Settles, every so often, the charges whose outcome was left unknown at least `after` ago.
pub async fn settle_unknown_charges_forever(app: AppState, after: Duration) {
    let mut interval = tokio::time::interval((after / 4).clamp(Duration::from_millis(100), Duration::from_secs(15)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = settle_unknown_charges(&app, after).await {
            tracing::warn!(%error, "settling unknown charges failed; trying again later");
        }
    }
}

/// Settles charges whose outcome was left unknown (the provider timed out or failed mid-call)
/// at least `after` ago and that no later attempt has settled: asks the provider what
/// happened under their key, which never charges, and records it. A charge that was made is
/// recorded and the order paid; a decline is recorded; nothing is recorded when the provider
/// has no charge. `after` leaves the client time to retry first.
pub async fn settle_unknown_charges(app: &AppState, after: Duration) -> Result<(), AppError> {
    let before = now() - chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
    for charge in store::unsettled_since(app.db.write(), before, 100).await? {
        let outcome = match app.payments.find_charge(&charge.provider_key).await {
            Ok(outcome) => outcome,
            Err(unavailable) => {
                tracing::warn!(
                    reason = unavailable.reason,
                    "cannot settle unknown charges: the payment provider is unavailable"
                );
                return Ok(());
            }
        };
        settle_charge(app, &charge, outcome).await?;
    }
    Ok(())
}

async fn settle_charge(
    app: &AppState,
    charge: &UnsettledCharge,
    outcome: Option<ChargeOutcome>,
) -> Result<(), AppError> {
    let transaction = app.db.write().begin().await?;
    let Some(order) = orders::lock_order(&transaction, charge.order_id, None).await? else {
        return Ok(());
    };
    // An attempt in flight uses the same key and settles the charge itself; another instance
    // may have settled it already.
    if orders::payment_in_flight(&order, now())
        || !store::forget_unsettled(&transaction, order.id, Some(&charge.provider_key)).await?
    {
        return Ok(());
    }
    let outcome = match outcome {
        Some(ChargeOutcome::Succeeded { reference }) => Ok(reference),
        Some(ChargeOutcome::Declined { code }) => Err(code),
        None => {
            tracing::info!(order_id = %order.id, "an unknown charge was never made");
            transaction.commit().await?;
            return Ok(());
        }
    };
    let succeeded = outcome.is_ok();
    let new = NewPayment {
        order_id: order.id,
        user_id: charge.user_id,
        amount: charge.amount,
        currency: charge.currency.clone(),
        outcome,
    };
    let payment = store::insert_payment(&transaction, new).await?;
    let pending = order.status == OrderStatus::Pending.as_str();
    if succeeded && pending {
        orders::set_status(&transaction, &order, OrderStatus::Paid).await?;
    }
    transaction.commit().await?;
    tracing::info!(order_id = %order.id, payment_id = %payment.id, status = %payment.status, "an unknown charge was settled");
    if succeeded && !pending {
        // The order was cancelled meanwhile: the money goes back.
        tracing::warn!(order_id = %order.id, payment_id = %payment.id, "a charge was found for an order no longer pending; refunding it");
        refund(app.clone(), payment.id, None, format!("orderly-refund-{}-unpayable", payment.id)).await?;
    }
    Ok(())
}

/// Refunds `amount` of a payment (all that is left when `None`). `key` identifies this request
/// across retries; it becomes the provider's idempotency key.
pub async fn refund(
    app: AppState,
    payment_id: Uuid,
    amount: Option<i64>,
    key: String,
) -> Result<(Payment, Refund), AppError> {
    let attempt = Uuid::now_v7();
    let transaction = app.db.write().begin().await?;
    let payment = store::lock_payment(&transaction, payment_id).await?.ok_or_else(Problem::not_found)?;
    if payment.status != "succeeded" {
        return Err(invalid_state("Only succeeded payments can be refunded.".into()));
    }
    let refundable = payment.amount - payment.refunded_amount;
    if refundable == 0 {
        return Err(invalid_state("This payment is already fully refunded.".into()));
    }
    let amount = amount.unwrap_or(refundable);
    if amount > refundable {
        return Err(Problem::validation(vec![FieldError {
            field: "amount".into(),
            code: "exceeds_refundable".into(),
            message: format!("must be at most {refundable}, what is left to refund"),
        }])
        .into());
    }
    if store::refund_in_flight(&payment, now()) {
        return Err(in_progress("A refund of this payment is already being processed; retry shortly."));
    }
    store::start_refund_attempt(&transaction, payment.id, attempt, hold_until(&app)).await?;
    transaction.commit().await?;

    let request = RefundRequest {
        key,
        charge: payment.provider_reference.clone().unwrap_or_default(),
        amount,
        currency: payment.currency.clone(),
    };
    let task = tokio::spawn(async move {
        let outcome = app.payments.refund(&request).await;
        record_refund(&app, payment_id, &request, attempt, outcome).await
    });
    task.await.map_err(|_| AppError::internal("the refund task panicked"))?
}

async fn record_refund(
    app: &AppState,
    payment_id: Uuid,
    request: &RefundRequest,
    attempt: Uuid,
    outcome: Result<String, Unavailable>,
) -> Result<(Payment, Refund), AppError> {
    let reference = match outcome {
        Ok(reference) => reference,
        Err(unavailable) => {
            store::end_refund_attempt(app.db.write(), payment_id, attempt).await?;
            return Err(provider_unavailable(&unavailable));
        }
    };
    let transaction = app.db.write().begin().await?;
    let payment = store::lock_payment(&transaction, payment_id).await?.ok_or_else(Problem::not_found)?;
    if payment.refund_attempt != Some(attempt) {
        tracing::error!(payment_id = %payment.id, "a refund completed after its attempt lapsed");
    }
    // The database refuses a refund beyond the amount (CHECK); only a lapsed attempt racing
    // another could get there, and then this one fails instead of over-refunding.
    let (payment, refund) = store::insert_refund(&transaction, &payment, request.amount, reference).await?;
    if payment.refunded_amount == payment.amount {
        let order = orders::lock_order(&transaction, payment.order_id, None).await?.ok_or_else(Problem::not_found)?;
        if order.status == OrderStatus::Paid.as_str() {
            orders::set_status(&transaction, &order, OrderStatus::Refunded).await?;
        }
    }
    store::end_refund_attempt(&transaction, payment.id, attempt).await?;
    transaction.commit().await?;
    Ok((payment, refund))
}

/// How long an attempt's mark holds: the provider's whole budget, with a margin.
fn hold_until(app: &AppState) -> DateTime<Utc> {
    now()
        + chrono::TimeDelta::from_std(app.payments.deadline() + Duration::from_secs(5))
            .unwrap_or(chrono::TimeDelta::minutes(1))
}

fn invalid_state(detail: String) -> AppError {
    Problem::conflict("invalid_state", detail).into()
}

fn in_progress(detail: &str) -> AppError {
    Problem::conflict("payment_in_progress", detail.to_owned())
        .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"))
        .into()
}

fn provider_unavailable(unavailable: &Unavailable) -> AppError {
    tracing::warn!(reason = unavailable.reason, "payment provider unavailable");
    Problem::unavailable(
        "payment_provider_unavailable",
        "The payment provider did not answer in time; nothing was recorded. Retrying with the same `Idempotency-Key` is safe.",
        unavailable.retry_after.as_secs().max(1),
    )
    .into()
}
