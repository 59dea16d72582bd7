//! RabbitMQ: the relay's broker when `ORDERLY_AMQP_URL` is set.
//!
//! Events go to the durable topic exchange [`EXCHANGE`], routing key = the event's type,
//! persistent, `message_id` = the event's id, on a channel in confirm mode: a batch counts as
//! published only when the broker has confirmed every message of it (acked: it is routed and,
//! for durable queues, written). Any failure drops the connection; the next batch connects
//! again, and the events of the failed batch are published again (at-least-once).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::store::Claimed;

/// The exchange every event is published to.
pub const EXCHANGE: &str = "orderly.events";

/// How long connecting (TCP, AMQP handshake, channel, exchange) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a connection given up on may take to close politely.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused event {0} (nack)")]
    Refused(uuid::Uuid),
}

/// A RabbitMQ connection, opened when first needed and again after any failure.
pub struct Amqp {
    url: String,
    link: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    /// In confirm mode, with the exchange declared.
    publisher: Channel,
}

impl Amqp {
    /// Checks the URL now (so a typo stops the start); connects on first use.
    pub fn new(url: &str) -> Result<Self, String> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|error| format!("is not an AMQP URL: {error}"))?;
        Ok(Self { url: url.to_owned(), link: Mutex::new(None) })
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name("orderly".into());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.url, properties))
            .await
            .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_exchange(&publisher).await?;
        Ok(Link { connection, publisher })
    }

    /// Publishes `events` in order and waits for the broker to confirm every one.
    pub async fn publish(&self, events: &[Claimed]) -> Result<(), AmqpError> {
        let mut link = self.link.lock().await;
        if !link
            .as_ref()
            .is_some_and(|link| link.connection.status().connected() && link.publisher.status().connected())
        {
            *link = None;
            *link = Some(self.connect().await?);
        }
        let channel = &link.as_ref().expect("connected above").publisher;
        let result = publish_confirmed(channel, events).await;
        if result.is_err() {
            // Whatever the state of this connection, the next batch starts on a new one.
            if let Some(old) = link.take() {
                let closing = old.connection.close(0, "orderly: publishing failed".into());
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
            }
        }
        result
    }

    /// For readiness: whether the broker answers (connecting if need be).
    pub async fn check(&self) -> Result<(), String> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|link| link.connection.status().connected()) {
            return Ok(());
        }
        match self.connect().await {
            Ok(connected) => {
                *link = Some(connected);
                Ok(())
            }
            Err(error) => {
                *link = None;
                Err(format!("RabbitMQ is unreachable: {error}"))
            }
        }
    }
}

/// Declares [`EXCHANGE`]: durable, topic. Idempotent.
pub async fn declare_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, options, FieldTable::default()).await
}

async fn publish_confirmed(channel: &Channel, events: &[Claimed]) -> Result<(), AmqpError> {
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event.id.to_string().into())
            .with_type(event.kind.as_str().into())
            .with_content_type("application/json".into())
            .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or_default());
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
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
}
