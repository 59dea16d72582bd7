//! Events: what happened, as the transactional outbox keeps it and the relay publishes it.
//!
//! Owns the `events` table. Every change an event type names records its event here with
//! [`store::record`], in the change's own transaction (the store functions that make those
//! changes call it), so an event exists if and only if its change committed. The relay
//! ([`relay`]) publishes each event once its change is committed: to RabbitMQ when it is
//! configured, else to the in-process bus (`relay::Bus`). `GET /events` and `GET /events/{id}`
//! (admin) serve the table; events are swept after the retention period.

use std::time::Duration;

use orderly_kit::cursor::CursorCodec;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Database;

pub mod relay;
mod routes;
pub mod store;

pub use routes::router;

/// What the event endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Events {
    pub db: Database,
    pub cursors: CursorCodec,
}

/// How long published events are kept before they are swept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The kinds of event, as their `type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.paid")]
    OrderPaid,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    #[serde(rename = "payment.succeeded")]
    PaymentSucceeded,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
    #[serde(rename = "payment.refunded")]
    PaymentRefunded,
}

impl EventType {
    pub const ALL: [Self; 7] = [
        Self::UserCreated,
        Self::OrderCreated,
        Self::OrderPaid,
        Self::OrderCancelled,
        Self::PaymentSucceeded,
        Self::PaymentFailed,
        Self::PaymentRefunded,
    ];

    /// The type's name: the event's `type`, and its routing key on RabbitMQ.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::OrderCreated => "order.created",
            Self::OrderPaid => "order.paid",
            Self::OrderCancelled => "order.cancelled",
            Self::PaymentSucceeded => "payment.succeeded",
            Self::PaymentFailed => "payment.failed",
            Self::PaymentRefunded => "payment.refunded",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::EventType;

    #[test]
    fn names_are_the_serialized_forms() {
        for kind in EventType::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("order.shipped"), None);
    }
}
