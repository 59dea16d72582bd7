//! Background jobs that survive crashes. Owns the `jobs` table.
//!
//! A job is enqueued in the transaction of the change that asks for it ([`store::enqueue`]),
//! then announced ([`Jobs::announce`]): over RabbitMQ, or to this process's runner. A worker
//! claims it with a lease ([`store::claim`]), renews the lease while it works
//! ([`Lease::renew`]), and records the outcome: done, retried later with exponential backoff
//! and jitter, or `failed` with a reason once out of attempts. A worker that dies leaves its
//! lease to lapse; the job is claimed again (its attempt counted). Every write of a running job
//! names its attempt, so a worker that lost its lease changes nothing. The runner itself lives
//! in `crate::worker`, which knows what each kind does.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::amqp::Amqp;
use crate::db::{Database, DbError};

pub mod store;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Generates a report (`reports::export`); the subject is the report.
    Report,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Report].into_iter().find(|kind| kind.as_str() == stored)
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [Self; 4] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == stored)
    }
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub subject_id: Uuid,
    /// This claim's number (1 for the first): it fences every write of this run.
    pub attempt: i64,
    pub max_attempts: i64,
}

/// A running job's hold on its row: renewing it proves the job is still this worker's.
#[derive(Clone)]
pub struct Lease {
    pub db: Database,
    pub job_id: Uuid,
    pub attempt: i64,
    pub duration: Duration,
}

impl Lease {
    /// When a lease taken now ends.
    pub fn until(&self) -> DateTime<Utc> {
        crate::db::now() + crate::db::span(self.duration)
    }

    /// Extends the lease; `Ok(false)` when the job is no longer this worker's (its lease lapsed
    /// and another worker took it, or it was finished).
    pub async fn renew(&self) -> Result<bool, DbError> {
        let (id, attempt, until) = (self.job_id, self.attempt, self.until());
        self.db.write().run(async move |conn| store::hold(conn, id, attempt, until).await).await
    }
}

/// How announced jobs reach a runner. Cheap to clone.
#[derive(Clone)]
pub enum Announcer {
    /// Over RabbitMQ, to any worker.
    Amqp(Arc<Amqp>),
    /// To the runner of this process (others find the job when they next look).
    InProcess(Arc<Notify>),
}

/// What the API uses to hand work to the workers. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub announcer: Announcer,
    /// Claims after this many end in `failed`.
    pub max_attempts: i64,
}

impl Jobs {
    /// Tells the workers that job `id` is waiting; call it once the job's transaction committed.
    /// Over RabbitMQ the announcement goes out in the background: the request that asked for
    /// the job never waits for the broker (which may be down; the job is found by polling then).
    pub fn announce(&self, id: Uuid, kind: JobKind) {
        match &self.announcer {
            Announcer::Amqp(amqp) => {
                let amqp = Arc::clone(amqp);
                tokio::spawn(async move { amqp.announce_job(id, kind.as_str()).await });
            }
            Announcer::InProcess(wake) => wake.notify_one(),
        }
    }
}

/// The delay before retrying a job whose attempt `attempt` (1 for the first) failed: `base`
/// doubled per earlier attempt, at most an hour, half of it random (so jobs that failed together
/// do not retry together).
pub fn retry_delay(attempt: i64, base: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
    let ceiling = base.saturating_mul(1 << doublings).min(Duration::from_secs(3600));
    let half = ceiling / 2;
    half + orderly_kit::resilience::Backoff { base: half, max: half }.delay(0)
}

/// Jobs in each state, as `orderly_jobs{state}` shows them.
pub struct Depth(Vec<(JobStatus, i64)>);

impl Depth {
    /// Counts them; `None` (logged) when the database does not answer.
    pub async fn read(db: &Database) -> Option<Self> {
        match db.current().run(async |conn| store::count_by_status(conn).await).await {
            Ok(counts) => Some(Self(counts)),
            Err(error) => {
                tracing::warn!(%error, "could not count jobs");
                None
            }
        }
    }

    pub fn publish(&self) {
        for status in JobStatus::ALL {
            let count = self.0.iter().find(|(s, _)| *s == status).map_or(0, |(_, count)| *count);
            #[allow(clippy::cast_precision_loss)] // far below 2^52
            metrics::gauge!("orderly_jobs", "state" => status.as_str()).set(count as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_an_hour() {
        let base = Duration::from_secs(5);
        for (attempt, ceiling) in [(1, 5), (2, 10), (3, 20), (30, 3600)] {
            for _ in 0..100 {
                let delay = retry_delay(attempt, base);
                let ceiling = Duration::from_secs(ceiling);
                assert!(delay >= ceiling / 2 && delay <= ceiling, "attempt {attempt}: {delay:?}");
            }
        }
    }
}
