//! The background work: the outbox relay and the sweep of old events.
//!
//! `orderly worker` runs it alone, with `/healthz`, `/readyz` and `/metrics` on a port of its
//! own; `orderly serve` runs it in-process too unless `ORDERLY_RUN_WORKER=false`. Any number of
//! workers may run against one database: the relay's claims keep them from publishing an event
//! twice in the normal case.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::WorkerConfig;
use crate::db::Database;
use crate::events::amqp::Amqp;
use crate::events::relay::{self, Broker, Bus, Relay};

/// How often events past their retention are swept.
const EVENT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// What the background work runs on. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub db: Database,
    pub broker: Broker,
    pub relay: relay::Settings,
    pub event_retention: Duration,
}

impl Worker {
    /// The broker the configuration names: RabbitMQ, or the in-process bus.
    pub fn broker(config: &WorkerConfig) -> Result<Broker, String> {
        Ok(match &config.amqp_url {
            Some(url) => Broker::Amqp(Arc::new(Amqp::new(url)?)),
            None => Broker::InProcess(Bus::new()),
        })
    }

    pub fn new(db: Database, broker: Broker, config: &WorkerConfig) -> Self {
        let relay = relay::Settings {
            batch: i64::from(config.relay_batch),
            idle: config.relay_interval,
            lease: config.relay_lease,
            // Counted as failed, and released, well before another relay may take the batch.
            publish_timeout: (config.relay_lease / 3).min(Duration::from_secs(10)),
        };
        Self { db, broker, relay, event_retention: config.event_retention }
    }

    /// Starts every task; they stop, finishing what they are doing, once `stop` turns true.
    pub fn start(&self, stop: &watch::Receiver<bool>) -> Running {
        let mut tasks = JoinSet::new();
        let relay = Relay { db: self.db.clone(), broker: self.broker.clone(), settings: self.relay };
        tasks.spawn(relay.run(stop.clone()));
        let sweep = relay::sweep_forever(self.db.clone(), self.event_retention, EVENT_SWEEP_INTERVAL);
        tasks.spawn(until_stopped(sweep, stop.clone()));
        Running { tasks }
    }
}

/// The background tasks of a started [`Worker`].
pub struct Running {
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits, up to `grace`, for every task to finish its work once told to stop; then drops
    /// the rest (their claims lapse and another worker takes them over).
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
