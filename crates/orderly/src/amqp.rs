//! RabbitMQ, when `ORDERLY_AMQP_URL` is set: the relay's broker and the jobs' doorbell.
//!
//! Topology, declared (idempotently) by whoever connects:
//! - [`EVENTS_EXCHANGE`]: durable topic exchange; each event is published to it with its type
//!   as routing key, persistent, `message_id` = the event's id, on a channel in confirm mode: a
//!   batch counts as published only once the broker has acked every message of it.
//! - the jobs queue (`orderly.jobs` by default, `ORDERLY_AMQP_JOBS_QUEUE`): durable, job
//!   announcements (the job's id), consumed by workers with manual acks and a prefetch. The
//!   database row is the job; an announcement only wakes a worker sooner, so a lost one delays
//!   a job and never loses it. A message that names no job (unreadable, or unknown) is rejected
//!   into the dead-letter exchange `<queue>.dead` (fanout), which routes it to the queue
//!   `<queue>.dead`, kept for an operator to look at.
//!
//! Any failure drops the connection; the next use connects again.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use orderly_kit::trace::TraceParent;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::events::store::Claimed;

/// The exchange every event is published to.
pub const EVENTS_EXCHANGE: &str = "orderly.events";

/// How long connecting (TCP, AMQP handshake, channel, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection given up on may take to close politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a readiness check may wait for the broker.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an announcement may wait for its confirm; it is only a doorbell.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused message {0} (nack)")]
    Refused(Uuid),
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
}

/// A RabbitMQ connection for publishing, opened when first needed and again after any failure.
pub struct Amqp {
    url: String,
    jobs_queue: String,
    link: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    /// In confirm mode, with the topology declared.
    publisher: Channel,
}

impl Amqp {
    /// Checks the URL now (so a typo stops the start); connects on first use.
    pub fn new(url: &str, jobs_queue: &str) -> Result<Self, String> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|error| format!("is not an AMQP URL: {error}"))?;
        Ok(Self { url: url.to_owned(), jobs_queue: jobs_queue.to_owned(), link: Mutex::new(None) })
    }

    async fn connect(&self) -> Result<Connection, AmqpError> {
        let properties = ConnectionProperties::default().with_connection_name("orderly".into());
        let connecting = Connection::connect(&self.url, properties);
        Ok(tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| AmqpError::Timeout(CONNECT_TIMEOUT))??)
    }

    async fn link(&self) -> Result<Link, AmqpError> {
        let connection = self.connect().await?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_topology(&publisher, &self.jobs_queue).await?;
        Ok(Link { connection, publisher })
    }

    /// Runs `publish` on the confirm-mode channel, connecting first if need be; on failure the
    /// connection is dropped, so the next call starts on a new one.
    async fn with_publisher<T>(
        &self,
        publish: impl AsyncFnOnce(&Channel) -> Result<T, AmqpError>,
    ) -> Result<T, AmqpError> {
        let mut link = self.link.lock().await;
        if !link
            .as_ref()
            .is_some_and(|link| link.connection.status().connected() && link.publisher.status().connected())
        {
            *link = None;
            *link = Some(self.link().await?);
        }
        let result = publish(&link.as_ref().expect("connected above").publisher).await;
        if result.is_err()
            && let Some(old) = link.take()
        {
            let closing = old.connection.close(0, "orderly: publishing failed".into());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
        result
    }

    /// Publishes `events` in order and waits for the broker to confirm every one. `traces`
    /// holds each event's publication span, sent as the message's `traceparent` header (it is
    /// empty when spans are not exported).
    pub async fn publish_events(&self, events: &[Claimed], traces: &[Option<TraceParent>]) -> Result<(), AmqpError> {
        self.with_publisher(async |channel| {
            let mut confirms = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let mut properties = persistent(event.id)
                    .with_type(event.kind.as_str().into())
                    .with_content_type("application/json".into())
                    .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or_default());
                if let Some(Some(trace)) = traces.get(index) {
                    let mut headers = FieldTable::default();
                    headers.insert("traceparent".into(), AMQPValue::LongString(trace.to_string().into()));
                    properties = properties.with_headers(headers);
                }
                let confirm = channel
                    .basic_publish(
                        EVENTS_EXCHANGE.into(),
                        event.kind.as_str().into(),
                        BasicPublishOptions::default(),
                        event.body.as_bytes(),
                        properties,
                    )
                    .await?;
                confirms.push((event.id, confirm));
            }
            for (id, confirm) in confirms {
                if !confirm.await?.is_ack() {
                    return Err(AmqpError::Refused(id));
                }
            }
            Ok(())
        })
        .await
    }

    /// Announces job `id` on the jobs queue. Best effort: the job runs when a worker next
    /// looks at the database either way.
    pub async fn announce_job(&self, id: Uuid, kind: &str) {
        let announcing = self.with_publisher(async |channel| {
            let properties = persistent(id).with_type(kind.into()).with_content_type("text/plain".into());
            let text = id.hyphenated().to_string();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.jobs_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    text.as_bytes(),
                    properties,
                )
                .await?;
            if confirm.await?.is_ack() { Ok(()) } else { Err(AmqpError::Refused(id)) }
        });
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, announcing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, job.id = %id, "could not announce a job; a worker will find it"),
            Err(_) => tracing::debug!(job.id = %id, "announcing a job timed out; a worker will find it"),
        }
    }

    /// Consumes the jobs queue on a connection of its own, at most `prefetch` unacknowledged
    /// messages at a time. The connection lives as long as the consumer's channel.
    pub async fn consume_jobs(&self, prefetch: u16) -> Result<(Connection, Consumer), AmqpError> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        declare_topology(&channel, &self.jobs_queue).await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                self.jobs_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((connection, consumer))
    }

    /// For readiness: whether the broker answers (connecting if need be), within
    /// [`CHECK_TIMEOUT`] so a probe never waits on an unreachable host.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.with_publisher(async |_| Ok(()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("RabbitMQ is unreachable: {error}")),
            Err(_) => Err(format!("RabbitMQ did not answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// Persistent, with `message_id` = `id`.
fn persistent(id: Uuid) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_message_id(id.hyphenated().to_string().into())
}

/// Declares the exchanges and queues of the module doc. Idempotent.
pub async fn declare_topology(channel: &Channel, jobs_queue: &str) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let dead = format!("{jobs_queue}.dead");
    channel.exchange_declare(dead.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(dead.as_str().into(), durable_queue, FieldTable::default()).await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dead.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dead.as_str().into()));
    channel.queue_declare(jobs_queue.into(), durable_queue, arguments).await?;
    Ok(())
}
