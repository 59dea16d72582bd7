//! The relay: publishes committed events from the outbox, oldest first, each at least once.
//!
//! A pass claims a batch under a lease ([`store::claim`]: at most the first unpublished event
//! of each aggregate, so an order's events go out in the order they happened), publishes it,
//! and marks it published once the broker has confirmed all of it. A relay that fails to
//! publish releases its claims and tries again after a backoff; one that dies holding claims
//! leaves them to lapse, and any relay publishes them again. So a crash at any point publishes
//! an event twice rather than never; consumers deduplicate by the event's id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly_kit::resilience::Backoff;
use orderly_kit::trace::TraceParent;
use tokio::sync::{Notify, broadcast, watch};
use tracing::Span;

use crate::db::{Database, DbError};

use super::store::{self, Claimed};
use crate::amqp::{Amqp, AmqpError};
use crate::webhooks::store::Published;

/// Where the relay publishes.
#[derive(Clone)]
pub enum Broker {
    /// RabbitMQ (`ORDERLY_AMQP_URL`).
    Amqp(Arc<Amqp>),
    /// The in-process bus: the same pipeline, for an instance without a broker.
    InProcess(Bus),
}

/// Events published in-process, to whatever in this process subscribes (a subscriber that
/// falls behind by more than the bus holds misses events, as a consumer of a bounded queue
/// would; the outbox keeps them all).
#[derive(Clone)]
pub struct Bus(broadcast::Sender<Arc<Claimed>>);

impl Bus {
    pub fn new() -> Self {
        Self(broadcast::channel(4096).0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Claimed>> {
        self.0.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

/// How a relay works.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Events claimed and published at once.
    pub batch: i64,
    /// How long a claim holds: a batch not published by then is published by another relay.
    pub lease: Duration,
    /// How long to wait before looking again when nothing was waiting.
    pub idle: Duration,
}

impl Settings {
    /// How long publishing one batch may take before it counts as failed (and is released):
    /// well before another relay may take the batch.
    fn publish_timeout(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(10))
    }
}

/// Why a pass published nothing.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] AmqpError),
}

/// One relay: run as many as you like, in as many processes.
pub struct Relay {
    pub db: Database,
    pub broker: Broker,
    pub settings: Settings,
    /// Rung when a batch made webhook deliveries.
    pub deliveries: Arc<Notify>,
}

impl Relay {
    /// Publishes until `stop` turns true, finishing the pass under way (so its claims are
    /// published or released, not left to lapse). Between passes it waits only while nothing
    /// is waiting; after a failure it backs off (up to 10 s) and logs the outage and the
    /// recovery once each.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(10) };
        let mut failures = 0_u32;
        while !*stop.borrow() {
            let pause = match self.pass().await {
                Ok(published) => {
                    if failures > 0 {
                        tracing::info!(failed_passes = failures, "the relay publishes events again");
                        failures = 0;
                    }
                    if published == 0 { self.settings.idle } else { Duration::ZERO }
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(%error, "the relay cannot publish events; retrying with backoff");
                    }
                    failures = failures.saturating_add(1);
                    backoff.delay(failures - 1)
                }
            };
            if !pause.is_zero() {
                let _ = tokio::time::timeout(pause, stop.wait_for(|stop| *stop)).await;
            }
        }
    }

    /// Claims, publishes and marks one batch; returns how many events it published.
    async fn pass(&self) -> Result<usize, RelayError> {
        let (batch, lease) = (self.settings.batch, self.settings.lease);
        let lease_until = crate::db::now() + crate::db::span(lease);
        // One statement: atomic without a transaction around it (and no `COMMIT` round trip).
        let claimed = self.db.write().run(async move |conn| store::claim(conn, batch, lease_until).await).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let spans = publication_spans(&claimed, &self.broker);
        let traces: Vec<_> = spans.iter().map(orderly_kit::trace::traceparent_of).collect();
        let seqs: Vec<i64> = claimed.iter().map(|event| event.seq).collect();
        let published: Vec<_> = claimed
            .iter()
            .enumerate()
            .map(|(index, event)| Published {
                event_id: event.id,
                kind: event.kind,
                traceparent: traces.get(index).copied().flatten(),
            })
            .collect();
        if let Err(error) = self.publish(claimed, &traces).await {
            for span in &spans {
                span.record("otel.status_code", "ERROR");
            }
            // Released now, so they go out with the next pass rather than when the lease lapses.
            let _ = self.db.write().run(async move |conn| store::release(conn, seqs).await).await;
            return Err(error);
        }
        let count = seqs.len();
        // With the mark, in one transaction: an event published is an event offered to every
        // webhook endpoint that wants it (offered again after a crash, it makes no second
        // delivery).
        let offered = self
            .db
            .write()
            .transaction(async move |conn| {
                store::mark_published(conn, seqs).await?;
                crate::webhooks::store::offer(conn, &published).await
            })
            .await?;
        if offered > 0 {
            self.deliveries.notify_one();
        }
        metrics::counter!("orderly_events_published_total").increment(count as u64);
        metrics::histogram!("orderly_relay_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(count)
    }

    async fn publish(&self, claimed: Vec<Claimed>, traces: &[Option<TraceParent>]) -> Result<(), RelayError> {
        match &self.broker {
            Broker::Amqp(amqp) => {
                let timeout = self.settings.publish_timeout();
                tokio::time::timeout(timeout, amqp.publish_events(&claimed, traces))
                    .await
                    .map_err(|_| AmqpError::Timeout(timeout))??;
            }
            Broker::InProcess(bus) => {
                for event in claimed {
                    // No subscriber is not a failure: the event is kept in the outbox either way.
                    let _ = bus.0.send(Arc::new(event));
                }
            }
        }
        Ok(())
    }
}

/// One producer span per event, each continuing the trace of the request that wrote the
/// event, and ending once the event is marked published; none when spans are not exported.
fn publication_spans(claimed: &[Claimed], broker: &Broker) -> Vec<Span> {
    if !orderly_kit::trace::enabled() {
        return Vec::new();
    }
    let system = match broker {
        Broker::Amqp(_) => "rabbitmq",
        Broker::InProcess(_) => "in-process",
    };
    claimed
        .iter()
        .map(|event| {
            let span = orderly_kit::span!(
                "publish",
                otel.name = %format_args!("publish {}", event.kind.as_str()),
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                messaging.system = system,
                messaging.operation.type = "send",
                messaging.destination.name = crate::amqp::EVENTS_EXCHANGE,
                messaging.message.id = %event.id,
            );
            orderly_kit::trace::continue_from(&span, event.traceparent.as_deref());
            span
        })
        .collect()
}

/// Deletes published events older than `retention` now and then, for as long as it runs.
pub async fn sweep_forever(db: Database, retention: Duration, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let before = crate::db::now() - crate::db::span(retention);
        match db.write().run(async move |conn| store::sweep(conn, before).await).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "swept events past their retention"),
            Err(error) => tracing::warn!(%error, "could not sweep old events"),
        }
    }
}

/// The outbox as the gauges show it: events waiting, and the age of the oldest.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub waiting: i64,
    pub oldest_age: Duration,
}

impl Backlog {
    /// Reads it; `None` (logged) when the database does not answer.
    pub async fn read(db: &Database) -> Option<Self> {
        match db.current().run(async |conn| store::backlog(conn).await).await {
            Ok((waiting, oldest)) => {
                let oldest_age = oldest.and_then(|at| (crate::db::now() - at).to_std().ok()).unwrap_or_default();
                Some(Self { waiting, oldest_age })
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the outbox backlog");
                None
            }
        }
    }

    /// Sets `orderly_outbox_backlog` and `orderly_outbox_oldest_age_seconds`.
    pub fn publish(self) {
        #[allow(clippy::cast_precision_loss)] // a backlog is far below 2^52
        metrics::gauge!("orderly_outbox_backlog").set(self.waiting as f64);
        metrics::gauge!("orderly_outbox_oldest_age_seconds").set(self.oldest_age.as_secs_f64());
    }
}
