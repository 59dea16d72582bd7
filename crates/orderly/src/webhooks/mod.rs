//! Webhooks: endpoints that receive events, signed, at least once.
//!
//! Owns `webhook_endpoints` and `webhook_deliveries`. Admins register endpoints ([`routes`]);
//! the relay offers each event it publishes to the endpoints that want it
//! ([`store::offer`], in the transaction that marks the event published); the worker's
//! [`deliver::Runner`] sends each delivery, signed ([`signature`]), retrying on a schedule,
//! through an HTTP client that connects only where [`target`] allows: never to a private,
//! loopback or otherwise internal address unless the operator's allow-list names it.

use std::sync::Arc;
use std::time::Duration;

use orderly_kit::cursor::CursorCodec;

use crate::db::Database;

pub mod deliver;
mod routes;
pub mod signature;
pub mod store;
pub mod target;

pub use routes::router;

/// What the webhook endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Webhooks {
    pub db: Database,
    pub cursors: CursorCodec,
    /// Where endpoints may point although private or loopback.
    pub allow: Arc<target::AllowList>,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: Duration,
}

/// Deliveries waiting and endpoints disabled, as the gauges show them.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub pending: i64,
    pub disabled: i64,
}

impl Gauges {
    /// Counts them; `None` (logged) when the database does not answer.
    pub async fn read(db: &Database) -> Option<Self> {
        match db.current().run(async |conn| store::gauges(conn).await).await {
            Ok((pending, disabled)) => Some(Self { pending, disabled }),
            Err(error) => {
                tracing::warn!(%error, "could not count webhook deliveries");
                None
            }
        }
    }

    /// Sets `orderly_webhook_backlog` and `orderly_webhook_endpoints_disabled`.
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    pub fn publish(self) {
        metrics::gauge!("orderly_webhook_backlog").set(self.pending as f64);
        metrics::gauge!("orderly_webhook_endpoints_disabled").set(self.disabled as f64);
    }
}
