//! Leases: work that holds a claim in shared storage (an idempotency key, a payment attempt)
//! renews the claim while it runs, so the claim lapses soon after its holder dies instead of
//! after the longest the work could take.

use std::time::Duration;

/// Runs `work`; every `every` until it is done, awaits `renew` (which extends the claim and
/// reports its own failures). The first renewal comes `every` after the start. Renewals run
/// beside the work, never in its way: a renewal waiting for a connection the work holds does
/// not stop the work from finishing and giving it back.
pub async fn renewing<T, R>(work: impl Future<Output = T>, every: Duration, mut renew: impl FnMut() -> R) -> T
where
    R: Future<Output = ()>,
{
    let renewals = async {
        let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            renewal.tick().await;
            renew().await;
        }
    };
    tokio::select! {
        done = work => done,
        never = renewals => never,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_waits_does_not_hold_up_the_work() {
        let done = renewing(
            async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            },
            Duration::from_secs(1),
            std::future::pending::<()>,
        );
        let started = tokio::time::Instant::now();
        assert_eq!(done.await, "done");
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_period_while_the_work_runs_and_never_after() {
        let renewals = AtomicU32::new(0);
        let done = renewing(
            async {
                tokio::time::sleep(Duration::from_millis(3500)).await;
                7
            },
            Duration::from_secs(1),
            || async {
                renewals.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await;
        assert_eq!(done, 7);
        assert_eq!(renewals.load(Ordering::Relaxed), 3, "at 1 s, 2 s and 3 s");
    }
}
