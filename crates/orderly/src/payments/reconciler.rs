//! The reconciler: settles provider calls whose request never did (the process died, the
//! database was down, the provider never answered), on every instance.
//!
//! An attempt is its work once its hold has lapsed and it is older than
//! `ORDERLY_PAYMENT_SETTLE_AFTER` (time for the client to retry first). A charge or a refund is
//! looked up at the provider under its key (a lookup never moves money) and what it did is
//! recorded: the charge, the decline, the refund, or nothing. "Nothing" is believed only once
//! the attempt is also older than the provider deadline plus a margin: until then a call under
//! its key may still land. A reversal is owed, so it is carried out (the provider's key makes a
//! repeat return the refund already made).
//!
//! Instances may reconcile the same attempt at once: recording locks the order (or payment)
//! and finds a call already recorded by its key or the provider's id, so each is recorded once.
//!
//! Metrics: `orderly_payment_attempts_unsettled{kind}` and
//! `orderly_payment_attempt_oldest_unsettled_seconds`, refreshed every pass, and
//! `orderly_payment_attempts_reconciled_total{kind, outcome}`.

use std::time::Duration;

use crate::db::{DbError, now};

use super::Payments;
use super::attempts::{self, Attempt, Kind, Outcome};
use super::service::{PaymentError, record_charge, record_refund, reverse};

/// Attempts reconciled per pass; the rest wait for the next.
const BATCH: i64 = 100;

/// How long an attempt whose reconciliation failed waits for its next try.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

/// How long past our own deadline a provider may still be acting on a call.
const PROVIDER_MARGIN: Duration = Duration::from_secs(5);

/// Reconciles every so often until the task is aborted.
pub async fn reconcile_forever(payments: Payments) {
    let mut interval =
        tokio::time::interval((payments.settle_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = publish_metrics(&payments).await {
            tracing::warn!(%error, "counting unsettled payment attempts failed");
        }
        if let Err(error) = reconcile(&payments).await {
            tracing::warn!(%error, "reconciling payment attempts failed; trying again later");
        }
    }
}

/// One pass over the attempts due for reconciliation. An attempt that cannot be settled now
/// is left for a later pass without holding up the others; the pass ends early only when the
/// provider refuses every call (circuit open) or the database cannot be written.
pub async fn reconcile(payments: &Payments) -> Result<(), PaymentError> {
    let settle_after = payments.settle_after;
    let now = now();
    let ago = |duration: Duration| now - chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX);
    // A lookup that finds nothing proves nothing while a call under the key may still land:
    // "nothing" is believed only once every call of the attempt has had its whole deadline
    // and a margin for the provider's own processing, however short `settle_after` is.
    let silent_before = ago(settle_after.max(payments.gateway.deadline() + PROVIDER_MARGIN));
    let before = ago(settle_after);
    // Found on `current`, not `write`: on SQLite a read there never queues behind the one writer
    // (which waits out a locked database), so a hold is judged lapsed by the clock, not late.
    // Recording locks and checks what is on record, so a row read here that is settled
    // meanwhile is recorded once all the same.
    let lapsed = payments.db.current().run(async move |conn| attempts::lapsed(conn, before, BATCH).await).await?;
    for attempt in lapsed {
        let outcome = match reconcile_one(payments, &attempt, attempt.created_at < silent_before).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => continue,
            Err(PaymentError::ProviderUnavailable { sent: false, .. }) => {
                tracing::warn!("cannot reconcile payment attempts: the payment provider is unavailable");
                return Ok(());
            }
            // Nothing can be recorded while the database cannot be written; the next pass tries
            // again, without postponing attempts that are not at fault.
            Err(PaymentError::Database(DbError::Unavailable { .. })) => {
                tracing::warn!("cannot reconcile payment attempts: the database is unavailable");
                return Ok(());
            }
            Err(error) => {
                // Tried again after a while, not every pass: an attempt the provider keeps
                // failing on must not trip the circuit breaker for every payment.
                tracing::warn!(
                    %error, order.id = %attempt.order_id, payment.provider_key = %attempt.provider_key,
                    "a payment attempt could not be reconciled; trying again later"
                );
                let later = crate::db::now() + chrono::TimeDelta::from_std(RETRY_FAILED_AFTER).unwrap_or_default();
                let id = attempt.id;
                payments.db.write().run(async move |conn| attempts::postpone(conn, id, later).await).await?;
                continue;
            }
        };
        metrics::counter!(
            "orderly_payment_attempts_reconciled_total",
            "kind" => attempt.kind.as_str(),
            "outcome" => outcome.as_str(),
        )
        .increment(1);
        tracing::info!(
            order.id = %attempt.order_id,
            payment.provider_key = %attempt.provider_key,
            payment.attempt_kind = attempt.kind.as_str(),
            payment.outcome = outcome.as_str(),
            "a payment attempt was reconciled"
        );
    }
    Ok(())
}

/// Settles one attempt; `None` when the provider has nothing under its key yet and that cannot
/// be believed (`silence_is_final` is false): a later pass asks again.
async fn reconcile_one(
    payments: &Payments,
    attempt: &Attempt,
    silence_is_final: bool,
) -> Result<Option<Outcome>, PaymentError> {
    match attempt.kind {
        Kind::Charge => {
            let found =
                payments.gateway.find_charge(&attempt.provider_key).await.map_err(|e| PaymentError::from(&e))?;
            if found.is_none() && !silence_is_final {
                return Ok(None);
            }
            Ok(Some(record_charge(payments, attempt, found, None).await?.0))
        }
        Kind::Refund => {
            let found =
                payments.gateway.find_refund(&attempt.provider_key).await.map_err(|e| PaymentError::from(&e))?;
            if found.is_none() && !silence_is_final {
                return Ok(None);
            }
            let outcome = if found.is_some() { Outcome::Succeeded } else { Outcome::NotMade };
            record_refund(&payments.db, attempt, found).await?;
            Ok(Some(outcome))
        }
        // Owed, so carried out; never given up.
        Kind::Reversal => reverse(payments, attempt).await.map(Some),
    }
}

/// Sets the gauges of unsettled attempts.
async fn publish_metrics(payments: &Payments) -> Result<(), DbError> {
    let unsettled = payments.db.current().run(async |conn| attempts::unsettled_by_kind(conn).await).await?;
    let now = now();
    for kind in [Kind::Charge, Kind::Refund, Kind::Reversal] {
        let count = unsettled.iter().find(|(k, ..)| *k == kind).map_or(0, |(_, count, _)| *count);
        metrics::gauge!("orderly_payment_attempts_unsettled", "kind" => kind.as_str()).set(count as f64);
    }
    let oldest = unsettled.iter().map(|(_, _, oldest)| *oldest).min();
    let age = oldest.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
    metrics::gauge!("orderly_payment_attempt_oldest_unsettled_seconds").set(age);
    Ok(())
}
