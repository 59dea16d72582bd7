//! The background work: the outbox relay, the job runner (report exports), webhook
//! deliveries, and the sweeps of old events and expired reports.
//!
//! `orderly worker` runs it alone, with `/healthz`, `/readyz` and `/metrics` on a port of its
//! own; `orderly serve` runs it in-process too unless `ORDERLY_RUN_WORKER=false`. Any number of
//! workers may run against one database: the relay's claims keep them from publishing an event
//! twice in the normal case, and a job is claimed by one worker at a time (under a lease it
//! renews while it works). Told to stop, a worker claims nothing more, lets running jobs finish
//! within two thirds of the grace period, then gives back the claims of those still running.
//!
//! With RabbitMQ, jobs are also announced on the jobs queue (`ORDERLY_AMQP_JOBS_QUEUE`); a worker consumes the queue with
//! manual acks and a prefetch of its concurrency, and wakes its runner for each announcement
//! of a job that exists. One that names no job is rejected into the dead-letter queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::amqp::Amqp;
use crate::config::{WebhookConfig, WorkerConfig};
use crate::db::Database;
use crate::events::relay::{self, Broker, Bus, Relay};
use crate::jobs::{self, Announcer, Job, JobKind, Jobs, Lease};
use crate::reports::export::{self, ExportError};
use crate::webhooks::deliver;

/// How often events past their retention are swept.
const EVENT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How often expired reports are deleted.
const REPORT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// How jobs are run.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    pub concurrency: usize,
    pub max_attempts: i64,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub retry_backoff: Duration,
    pub report_ttl: Duration,
}

impl JobSettings {
    pub fn new(config: &WorkerConfig) -> Self {
        Self {
            concurrency: usize::from(config.job_concurrency),
            max_attempts: i64::from(config.job_max_attempts),
            lease: config.job_lease,
            poll_interval: config.job_poll_interval,
            retry_backoff: config.job_retry_backoff,
            report_ttl: config.report_ttl,
        }
    }
}

/// What the background work runs on. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub db: Database,
    pub broker: Broker,
    pub relay: relay::Settings,
    pub relays: u16,
    pub event_retention: Duration,
    pub jobs: JobSettings,
    /// Rung by announcements: in-process ones, or those consumed from RabbitMQ.
    pub wake: Arc<Notify>,
    /// Sends webhook deliveries; rung by this worker's relays when they create some.
    pub deliveries: deliver::Runner,
}

impl Worker {
    /// The broker the configuration names: RabbitMQ, or the in-process bus.
    pub fn broker(config: &WorkerConfig) -> Result<Broker, String> {
        Ok(match &config.amqp_url {
            Some(url) => Broker::Amqp(Arc::new(Amqp::new(url, &config.amqp_jobs_queue)?)),
            None => Broker::InProcess(Bus::new()),
        })
    }

    /// What the API uses to hand jobs to workers: RabbitMQ announcements, or `wake` (the
    /// runner of this process).
    pub fn jobs(broker: &Broker, wake: &Arc<Notify>, config: &WorkerConfig) -> Jobs {
        let announcer = match broker {
            Broker::Amqp(amqp) => Announcer::Amqp(Arc::clone(amqp)),
            Broker::InProcess(_) => Announcer::InProcess(Arc::clone(wake)),
        };
        Jobs { announcer, max_attempts: i64::from(config.job_max_attempts) }
    }

    pub fn new(
        db: Database,
        broker: Broker,
        wake: Arc<Notify>,
        config: &WorkerConfig,
        webhooks: &WebhookConfig,
    ) -> Result<Self, String> {
        let settings = deliver::Settings {
            schedule: webhooks.webhook_retry_schedule.0.clone(),
            timeout: webhooks.webhook_timeout,
            disable_after: webhooks.webhook_disable_after,
            concurrency: usize::from(webhooks.webhook_concurrency),
            per_endpoint: usize::from(webhooks.webhook_endpoint_concurrency),
            poll_interval: webhooks.webhook_poll_interval,
        };
        let allow = Arc::new(webhooks.webhook_allowed_targets.clone());
        let deliveries = deliver::Runner::new(db.clone(), settings, allow, Arc::new(Notify::new()))?;
        let relay = relay::Settings {
            batch: i64::from(config.relay_batch),
            idle: config.relay_interval,
            lease: config.relay_lease,
        };
        Ok(Self {
            db,
            broker,
            relay,
            relays: config.relay_concurrency,
            event_retention: config.event_retention,
            jobs: JobSettings::new(config),
            wake,
            deliveries,
        })
    }

    /// Starts every task; they stop once `stop` turns true, within `grace`.
    pub fn start(&self, stop: &watch::Receiver<bool>, grace: Duration) -> Running {
        let mut tasks = JoinSet::new();
        for _ in 0..self.relays {
            let relay = Relay {
                db: self.db.clone(),
                broker: self.broker.clone(),
                settings: self.relay,
                deliveries: Arc::clone(&self.deliveries.wake),
            };
            tasks.spawn(relay.run(stop.clone()));
        }
        tasks.spawn(self.deliveries.clone().run(stop.clone()));
        let runner = Runner { db: self.db.clone(), settings: self.jobs, wake: Arc::clone(&self.wake) };
        tasks.spawn(runner.run(stop.clone(), grace * 2 / 3));
        if let Broker::Amqp(amqp) = &self.broker {
            let announcements =
                consume_announcements(Arc::clone(amqp), self.db.clone(), Arc::clone(&self.wake), self.jobs);
            tasks.spawn(until_stopped(announcements, stop.clone()));
        }
        let sweep = relay::sweep_forever(self.db.clone(), self.event_retention, EVENT_SWEEP_INTERVAL);
        tasks.spawn(until_stopped(sweep, stop.clone()));
        tasks.spawn(until_stopped(sweep_reports_forever(self.db.clone()), stop.clone()));
        Running { tasks }
    }
}

/// The background tasks of a started [`Worker`].
pub struct Running {
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits, up to `grace`, for every task to finish once told to stop; then drops the rest
    /// (their claims lapse and another worker takes them over).
    pub async fn stopped(mut self, grace: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background work still running after the grace period; stopping it");
            self.tasks.abort_all();
        }
    }
}

/// Runs `task` until `stop` turns true (for tasks that hold nothing when dropped).
async fn until_stopped(task: impl Future<Output = ()>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        () = task => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}

/// Claims due jobs and runs up to `concurrency` of them at once.
struct Runner {
    db: Database,
    settings: JobSettings,
    wake: Arc<Notify>,
}

impl Runner {
    async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let (cancel, cancelled) = watch::channel(false);
        let mut running = JoinSet::new();
        let mut failures = 0_u32;
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let lease_until = crate::db::now() + crate::db::span(this.settings.lease);
            let pause = match this.db.write().run(async move |conn| jobs::store::claim(conn, lease_until).await).await {
                Ok(Some(job)) => {
                    failures = 0;
                    let (this, cancelled) = (Arc::clone(&this), cancelled.clone());
                    let span = orderly_kit::span!(
                        "job",
                        otel.name = %format_args!("job {}", job.kind.as_str()),
                        otel.kind = "consumer",
                        job.id = %job.id,
                        job.attempt = job.attempt,
                    );
                    running.spawn(
                        async move {
                            this.execute(job, cancelled).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                    continue;
                }
                Ok(None) => {
                    failures = 0;
                    this.settings.poll_interval
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(%error, "cannot claim jobs; retrying");
                    }
                    failures = failures.saturating_add(1);
                    Duration::from_secs(1)
                }
            };
            drop(permit);
            tokio::select! {
                () = this.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        // Running jobs may finish; past the grace they give their claims back.
        let finish = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, finish).await.is_err() {
            let _ = cancel.send(true);
            while running.join_next().await.is_some() {}
        }
    }

    /// Runs a claimed job, renewing its lease, and records how it ended.
    async fn execute(&self, job: Job, mut cancelled: watch::Receiver<bool>) {
        let lease = Lease { db: self.db.clone(), job_id: job.id, attempt: job.attempt, duration: self.settings.lease };
        if job.attempt > job.max_attempts {
            // Every earlier claim ended with its worker gone (crashed, or killed mid-job).
            let reason = format!("stopped without an outcome {} times", job.attempt - 1);
            self.give_up(&job, &reason).await;
            return;
        }
        let started = Instant::now();
        let renewing = async {
            loop {
                tokio::time::sleep(self.settings.lease / 3).await;
                match lease.renew().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    // Tried again at the next tick; the lease lapses if that keeps failing.
                    Err(error) => tracing::warn!(%error, job.id = %job.id, "could not renew a job's lease"),
                }
            }
        };
        let outcome = tokio::select! {
            result = self.perform(&job, &lease) => Some(Some(result)),
            () = renewing => Some(None),
            _ = cancelled.wait_for(|cancelled| *cancelled) => None,
        };
        let Some(outcome) = outcome else {
            let (id, attempt) = (job.id, job.attempt);
            let _ = self.db.write().run(async move |conn| jobs::store::release(conn, id, attempt).await).await;
            tracing::info!(job.id = %job.id, "stopping: gave a running job back");
            return;
        };
        let kind = job.kind.as_str();
        let outcome = match outcome {
            Some(Ok(())) => {
                let (id, attempt) = (job.id, job.attempt);
                match self.db.write().run(async move |conn| jobs::store::succeed(conn, id, attempt).await).await {
                    Ok(_) => "succeeded",
                    Err(error) => {
                        // Its lease lapses and it runs again, finding the work done.
                        tracing::warn!(%error, job.id = %job.id, "could not record a job's success");
                        "unrecorded"
                    }
                }
            }
            Some(Err(JobError::LeaseLost)) | None => {
                tracing::warn!(job.id = %job.id, "a job's lease was taken over; leaving it to the other worker");
                "lost"
            }
            Some(Err(JobError::Failed(error))) if job.attempt >= job.max_attempts => {
                self.give_up(&job, &error).await;
                "failed"
            }
            Some(Err(JobError::Failed(error))) => {
                let due_at =
                    crate::db::now() + crate::db::span(jobs::retry_delay(job.attempt, self.settings.retry_backoff));
                let (id, attempt) = (job.id, job.attempt);
                tracing::warn!(job.id = %id, job.kind = kind, attempt, %error, "a job failed; it will be retried");
                let _ = self
                    .db
                    .write()
                    .run(async move |conn| jobs::store::requeue(conn, id, attempt, due_at, Some(&error)).await)
                    .await;
                "retried"
            }
        };
        metrics::histogram!("orderly_job_duration_seconds", "kind" => kind, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("orderly_job_runs_total", "kind" => kind, "outcome" => outcome).increment(1);
    }

    async fn perform(&self, job: &Job, lease: &Lease) -> Result<(), JobError> {
        match job.kind {
            JobKind::Report => export::run(&self.db, lease, job.subject_id, self.settings.report_ttl).await.map_err(
                |error| match error {
                    ExportError::LeaseLost => JobError::LeaseLost,
                    ExportError::Database(error) => JobError::Failed(error.to_string()),
                },
            ),
        }
    }

    /// Marks a job out of attempts `failed`, and its subject with it.
    async fn give_up(&self, job: &Job, reason: &str) {
        tracing::error!(job.id = %job.id, job.kind = job.kind.as_str(), reason, "a job failed for good");
        let (id, attempt, reason) = (job.id, job.attempt, reason.to_owned());
        if let Err(error) =
            self.db.write().run(async move |conn| jobs::store::fail(conn, id, attempt, &reason).await).await
        {
            tracing::warn!(%error, job.id = %job.id, "could not record a job's failure");
            return;
        }
        let recorded = match job.kind {
            JobKind::Report => export::give_up(&self.db, job.subject_id, self.settings.report_ttl).await,
        };
        if let Err(error) = recorded {
            tracing::warn!(%error, job.id = %job.id, "could not mark a failed job's subject failed");
        }
    }
}

/// Why a job's run did not succeed.
enum JobError {
    /// Another worker holds the job now.
    LeaseLost,
    /// Worth another attempt, if any is left.
    Failed(String),
}

/// Consumes job announcements from RabbitMQ, reconnecting after any failure, for as long as it
/// runs: each names a job (the runner is woken) or nothing (the message is dead-lettered).
async fn consume_announcements(amqp: Arc<Amqp>, db: Database, wake: Arc<Notify>, settings: JobSettings) {
    let prefetch = u16::try_from(settings.concurrency).unwrap_or(u16::MAX);
    let mut failures = 0_u32;
    loop {
        match amqp.consume_jobs(prefetch).await {
            Ok((_connection, mut consumer)) => {
                if failures > 0 {
                    tracing::info!("consuming job announcements again");
                    failures = 0;
                }
                while let Some(delivery) = consumer.next().await {
                    let Ok(delivery) = delivery else { break };
                    let job = std::str::from_utf8(&delivery.data).ok().and_then(|text| Uuid::parse_str(text).ok());
                    let known = match job {
                        Some(id) => db.current().run(async move |conn| jobs::store::exists(conn, id).await).await,
                        None => Ok(false),
                    };
                    let answered = match known {
                        Ok(true) => {
                            wake.notify_one();
                            delivery.ack(BasicAckOptions::default()).await
                        }
                        Ok(false) => {
                            tracing::warn!(
                                message_id = ?delivery.properties.message_id(),
                                "a job announcement names no job; dead-lettering it"
                            );
                            delivery.reject(BasicRejectOptions { requeue: false }).await
                        }
                        Err(_) => {
                            // The database will say later; the job is found by polling anyway.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
                        }
                    };
                    if answered.is_err() {
                        break;
                    }
                }
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(%error, "cannot consume job announcements; jobs are found by polling meanwhile");
                }
                failures = failures.saturating_add(1);
            }
        }
        let backoff =
            orderly_kit::resilience::Backoff { base: Duration::from_millis(200), max: Duration::from_secs(10) };
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

async fn sweep_reports_forever(db: Database) {
    let mut ticks = tokio::time::interval(REPORT_SWEEP_INTERVAL);
    loop {
        ticks.tick().await;
        match export::sweep(&db).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted expired reports"),
            Err(error) => tracing::warn!(%error, "could not delete expired reports"),
        }
    }
}
