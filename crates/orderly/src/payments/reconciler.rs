//! The reconciler: settles provider calls whose request never did (the process died, the
//! database was down, the provider never answered), on every instance.
//!
//! An attempt is its work once its hold has lapsed and it is older than
//! `ORDERLY_PAYMENT_SETTLE_AFTER` (time for the client to retry first). A charge or a refund is
//! looked up at the provider under its key (a lookup never moves money) and what it did is
//! recorded: the charge, the decline, the refund, or nothing. A reversal is owed, so it is
//! carried out (the provider's key makes a repeat return the refund already made).
//!
//! Instances may reconcile the same attempt at once: recording locks the order (or payment)
//! and finds a call already recorded by its key or the provider's id, so each is recorded once.
//!
//! Metrics: `orderly_payment_attempts_unsettled{kind}` and
//! `orderly_payment_attempt_oldest_unsettled_seconds`, refreshed every pass, and
//! `orderly_payment_attempts_reconciled_total{kind, outcome}`.

use std::time::Duration;

use crate::app::AppState;
use crate::db::now;
use crate::error::AppError;

use super::attempts::{self, Attempt, Kind, Outcome};
use super::service::{record_charge, record_refund, reverse};

/// Attempts reconciled per pass; the rest wait for the next.
const BATCH: u64 = 100;

/// Reconciles every so often until the task is aborted.
pub async fn reconcile_forever(app: AppState, settle_after: Duration) {
    let mut interval =
        tokio::time::interval((settle_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = publish_metrics(&app).await {
            tracing::warn!(%error, "counting unsettled payment attempts failed");
        }
        if let Err(error) = reconcile(&app, settle_after).await {
            tracing::warn!(%error, "reconciling payment attempts failed; trying again later");
        }
    }
}

/// One pass over the attempts due for reconciliation.
pub async fn reconcile(app: &AppState, settle_after: Duration) -> Result<(), AppError> {
    let before = now() - chrono::TimeDelta::from_std(settle_after).unwrap_or(chrono::TimeDelta::MAX);
    for attempt in attempts::lapsed(app.db.write(), before, BATCH).await? {
        let outcome = match reconcile_one(app, &attempt).await {
            Ok(outcome) => outcome,
            Err(Unreachable) => {
                tracing::warn!("cannot reconcile payment attempts: the payment provider is unavailable");
                return Ok(());
            }
        };
        let outcome = outcome?;
        metrics::counter!(
            "orderly_payment_attempts_reconciled_total",
            "kind" => attempt.kind.clone(),
            "outcome" => outcome.as_str(),
        )
        .increment(1);
        tracing::info!(
            order.id = %attempt.order_id,
            payment.provider_key = %attempt.provider_key,
            payment.attempt_kind = %attempt.kind,
            payment.outcome = outcome.as_str(),
            "a payment attempt was reconciled"
        );
    }
    Ok(())
}

/// The provider could not be asked; the pass ends and the next one tries again.
struct Unreachable;

async fn reconcile_one(app: &AppState, attempt: &Attempt) -> Result<Result<Outcome, AppError>, Unreachable> {
    match attempt.kind() {
        Some(Kind::Charge) => {
            let found = app.payments.find_charge(&attempt.provider_key).await.map_err(|_| Unreachable)?;
            Ok(record_charge(app, attempt, found).await.map(|(outcome, _)| outcome))
        }
        Some(Kind::Refund) => {
            let found = app.payments.find_refund(&attempt.provider_key).await.map_err(|_| Unreachable)?;
            let made = found.is_some();
            Ok(record_refund(app, attempt, found)
                .await
                .map(|_| if made { Outcome::Succeeded } else { Outcome::NotMade }))
        }
        Some(Kind::Reversal) => match reverse(app, attempt).await {
            Ok(outcome) => Ok(Ok(outcome)),
            // Logged where it failed; a reversal is never given up.
            Err(AppError::Problem(_)) => Err(Unreachable),
            Err(error) => Ok(Err(error)),
        },
        None => Ok(Err(AppError::internal(format!("payment attempt {} has an unknown kind", attempt.id)))),
    }
}

/// Sets the gauges of unsettled attempts.
async fn publish_metrics(app: &AppState) -> Result<(), AppError> {
    let unsettled = attempts::unsettled_by_kind(app.db.write()).await?;
    let now = now();
    for kind in [Kind::Charge, Kind::Refund, Kind::Reversal] {
        let count = unsettled.iter().find(|(k, ..)| k == kind.as_str()).map_or(0, |(_, count, _)| *count);
        metrics::gauge!("orderly_payment_attempts_unsettled", "kind" => kind.as_str()).set(count as f64);
    }
    let oldest = unsettled.iter().map(|(_, _, oldest)| *oldest).min();
    let age = oldest.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
    metrics::gauge!("orderly_payment_attempt_oldest_unsettled_seconds").set(age);
    Ok(())
}
