//! Webhook storage: endpoints and deliveries. The only place in this module that touches the
//! database.
//!
//! The relay calls [`offer`] in the transaction that marks a batch of events published, so an
//! event published is an event with its deliveries (an event offered twice, after a crash,
//! makes no second delivery). The runner claims due deliveries of one endpoint at a time
//! ([`claim`]) under a lease, and writes each attempt's outcome ([`record_attempt`]) only while
//! its claim is still the latest.

use chrono::{DateTime, Utc};
use orderly_kit::trace::TraceParent;
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, Param, Row, now};
use crate::events::EventType;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

/// A registered endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Event types it receives; `*` is every type.
    pub events: Vec<String>,
    pub secret: String,
    /// The secret before the last rotation, signing too until `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The first failure since the last success.
    pub failing_since: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! endpoint_columns {
    () => {
        "id, url, description, events, secret, previous_secret, previous_secret_expires_at, status, \
         disabled_reason, failing_since, last_success_at, created_at, updated_at"
    };
}

impl Endpoint {
    fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let events: String = row.get(3)?;
        let events = serde_json::from_str(&events)
            .map_err(|_| DbError::corrupt(format!("webhook endpoint {id} has events that are not a JSON list")))?;
        let status: String = row.get(7)?;
        Ok(Self {
            id,
            url: row.get(1)?,
            description: row.get(2)?,
            events,
            secret: row.get(4)?,
            previous_secret: row.get(5)?,
            previous_secret_expires_at: row.get(6)?,
            enabled: status == ENABLED,
            disabled_reason: row.get(8)?,
            failing_since: row.get(9)?,
            last_success_at: row.get(10)?,
            created_at: row.get(11)?,
            updated_at: row.get(12)?,
        })
    }

    /// Whether it receives events of `kind`.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.iter().any(|wanted| wanted == "*" || wanted == kind.as_str())
    }

    /// The secrets that sign a delivery made at `at`: the current one first.
    pub fn signing_secrets(&self, at: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && at < until
        {
            secrets.push(previous);
        }
        secrets
    }
}

const ENABLED: &str = "enabled";
const DISABLED: &str = "disabled";

/// What registering an endpoint stores.
pub struct NewEndpoint {
    pub url: String,
    pub description: Option<String>,
    pub events: Vec<String>,
    pub secret: String,
}

pub async fn insert_endpoint(conn: &mut Conn<'_>, new: NewEndpoint) -> Result<Endpoint, DbError> {
    let (id, at) = (Uuid::now_v7(), now());
    let events = serde_json::to_string(&new.events).expect("strings serialize");
    conn.execute(
        "INSERT INTO webhook_endpoints (id, url, description, events, secret, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $6)",
        &[&id, &new.url, &new.description, &events, &new.secret, &at],
    )
    .await?;
    Ok(Endpoint {
        id,
        url: new.url,
        description: new.description,
        events: new.events,
        secret: new.secret,
        previous_secret: None,
        previous_secret_expires_at: None,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        last_success_at: None,
        created_at: at,
        updated_at: at,
    })
}

pub async fn find_endpoint(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Endpoint>, DbError> {
    const SQL: &str = concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE id = $1");
    conn.query_opt(SQL, &[&id], Endpoint::from_row).await
}

/// One page of endpoints, in the list's order.
pub async fn list_endpoints(
    conn: &mut Conn<'_>,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Endpoint>, DbError> {
    let mut sql = String::from(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, Endpoint::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// Writes an endpoint's registration back after a change (url, events, description, status).
/// Enabling it clears its failure record.
pub async fn update_endpoint(conn: &mut Conn<'_>, endpoint: &Endpoint) -> Result<(), DbError> {
    let events = serde_json::to_string(&endpoint.events).expect("strings serialize");
    let status = if endpoint.enabled { ENABLED } else { DISABLED };
    conn.execute(
        "UPDATE webhook_endpoints SET url = $2, description = $3, events = $4, status = $5, disabled_reason = $6,
             failing_since = $7, updated_at = $8
         WHERE id = $1",
        &[
            &endpoint.id,
            &endpoint.url,
            &endpoint.description,
            &events,
            &status,
            &endpoint.disabled_reason,
            &endpoint.failing_since,
            &endpoint.updated_at,
        ],
    )
    .await
    .map(drop)
}

/// Replaces the secret; the one it replaces signs too until `previous_expires_at`.
pub async fn rotate_secret(
    conn: &mut Conn<'_>,
    id: Uuid,
    secret: &str,
    previous_expires_at: DateTime<Utc>,
) -> Result<Option<Endpoint>, DbError> {
    const SQL: &str = concat!(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2, previous_secret_expires_at = $3,
             updated_at = $4
         WHERE id = $1 RETURNING ",
        endpoint_columns!()
    );
    conn.query_opt(SQL, &[&id, &secret, &previous_expires_at, &now()], Endpoint::from_row).await
}

/// Deletes an endpoint and its deliveries; false when there was none.
pub async fn delete_endpoint(conn: &mut Conn<'_>, id: Uuid) -> Result<bool, DbError> {
    // Deliveries first: explicit rather than relying on the foreign key's cascade.
    conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = $1", &[&id]).await?;
    Ok(conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id]).await? > 0)
}

/// An event the relay has published, as deliveries are made of it.
#[derive(Debug, Clone)]
pub struct Published {
    pub event_id: Uuid,
    pub kind: EventType,
    /// The span that published it, which its deliveries continue.
    pub traceparent: Option<TraceParent>,
}

/// Creates a delivery of each of `events` to each enabled endpoint that wants it, due now;
/// returns how many. Called in the transaction that marks the events published.
pub async fn offer(conn: &mut Conn<'_>, events: &[Published]) -> Result<u64, DbError> {
    const ENABLED_ENDPOINTS: &str =
        concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE status = 'enabled'");
    let endpoints = conn.query(ENABLED_ENDPOINTS, &[], Endpoint::from_row).await?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let at = now();
    let mut offered = 0;
    for event in events {
        let traceparent = event.traceparent.map(|span| span.to_string());
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.wants(event.kind)) {
            offered += conn
                .execute(
                    "INSERT INTO webhook_deliveries
                         (id, endpoint_id, event_id, event_type, status, attempt_count, next_attempt_at, attempts,
                          created_at, updated_at, traceparent)
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, '[]', $5, $5, $6)
                     ON CONFLICT (endpoint_id, event_id) DO NOTHING",
                    &[&Uuid::now_v7(), &endpoint.id, &event.event_id, &event.kind.as_str(), &at, &traceparent],
                )
                .await?;
        }
    }
    Ok(offered)
}

/// What happened in one attempt, as `GET /webhooks/{id}/deliveries` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub attempted_at: DateTime<Utc>,
    /// The receiver's status code; none when no response came (refused, timed out).
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// Why the attempt failed, when it did not reach a response or the response was not 2xx.
    pub error: Option<String>,
    /// The first 4 KiB of the response body (lossy UTF-8).
    pub response_body: Option<String>,
}

/// A delivery of one event to one endpoint.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub attempts: Vec<Attempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The span that published the event, which each attempt continues.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or in one).
    Pending,
    Succeeded,
    /// Out of attempts, or its endpoint was disabled.
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed].into_iter().find(|status| status.as_str() == name)
    }
}

macro_rules! delivery_columns {
    () => {
        "id, endpoint_id, event_id, event_type, status, attempt_count, next_attempt_at, attempts, created_at, updated_at, \
         traceparent"
    };
}

impl Delivery {
    fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let status: String = row.get(4)?;
        let status = DeliveryStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("webhook delivery {id} has an unknown status {status:?}")))?;
        let attempts: String = row.get(7)?;
        let attempts = serde_json::from_str(&attempts)
            .map_err(|_| DbError::corrupt(format!("webhook delivery {id} has unreadable attempts")))?;
        Ok(Self {
            id,
            endpoint_id: row.get(1)?,
            event_id: row.get(2)?,
            event_type: row.get(3)?,
            status,
            attempt_count: row.get(5)?,
            next_attempt_at: row.get(6)?,
            attempts,
            created_at: row.get(8)?,
            updated_at: row.get(9)?,
            traceparent: row.get(10)?,
        })
    }
}

/// One page of an endpoint's deliveries, in the list's order.
pub async fn list_deliveries(
    conn: &mut Conn<'_>,
    endpoint_id: Uuid,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Delivery>, DbError> {
    let mut sql =
        String::from(concat!("SELECT ", delivery_columns!(), " FROM webhook_deliveries WHERE endpoint_id = $1"));
    let mut values: Vec<&dyn Param> = vec![&endpoint_id];
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, Delivery::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// Makes a delivery of this endpoint due now, whatever its status (a manual resend); `None`
/// when there is no such delivery. A delivery in an attempt keeps its claim: it is sent again
/// once that attempt is written.
pub async fn retry_delivery(
    conn: &mut Conn<'_>,
    endpoint_id: Uuid,
    delivery_id: Uuid,
) -> Result<Option<Delivery>, DbError> {
    const SQL: &str = concat!(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, updated_at = $3
         WHERE endpoint_id = $1 AND id = $2 RETURNING ",
        delivery_columns!()
    );
    conn.query_opt(SQL, &[&endpoint_id, &delivery_id, &now()], Delivery::from_row).await
}

/// Makes every failed delivery of this endpoint created since `since` due now; returns how
/// many.
pub async fn recover(conn: &mut Conn<'_>, endpoint_id: Uuid, since: DateTime<Utc>) -> Result<u64, DbError> {
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, updated_at = $3
         WHERE endpoint_id = $1 AND status = 'failed' AND created_at >= $2",
        &[&endpoint_id, &since, &now()],
    )
    .await
}

/// Endpoints with deliveries due and unclaimed at `at`, enabled ones only. One probe of
/// `webhook_deliveries_endpoint_due` per enabled endpoint: the runner asks after every attempt,
/// so this must not read the backlog (a scan of every due delivery made a backlog of N cost N²).
pub async fn endpoints_due(conn: &mut Conn<'_>, at: DateTime<Utc>) -> Result<Vec<Uuid>, DbError> {
    conn.query(
        "SELECT w.id FROM webhook_endpoints w
         WHERE w.status = 'enabled' AND EXISTS (
             SELECT 1 FROM webhook_deliveries d
             WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= $1
               AND (d.claimed_until IS NULL OR d.claimed_until <= $1))",
        &[&at],
        |row| row.get(0),
    )
    .await
}

/// A delivery a runner holds a claim on: its `attempt_count` is this attempt's number.
pub type Claimed = Delivery;

/// Claims up to `limit` of the oldest due deliveries of one endpoint until `lease_until`,
/// counting an attempt for each.
pub async fn claim(
    conn: &mut Conn<'_>,
    endpoint_id: Uuid,
    limit: i64,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, DbError> {
    let lock = match conn.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET claimed_until = $1, attempt_count = attempt_count + 1 WHERE id IN (
             SELECT id FROM webhook_deliveries
             WHERE endpoint_id = $2 AND status = 'pending' AND next_attempt_at <= $3
               AND (claimed_until IS NULL OR claimed_until <= $3)
             ORDER BY next_attempt_at LIMIT $4 {lock})
         RETURNING {}",
        delivery_columns!()
    );
    conn.query(&sql, &[&lease_until, &endpoint_id, &now(), &limit], Delivery::from_row).await
}

/// How an attempt ended, for the delivery.
pub enum Next {
    Succeeded,
    /// Another attempt at this time.
    RetryAt(DateTime<Utc>),
    Failed,
}

/// Writes an attempt's outcome, if `attempt` is still the delivery's latest claim; returns
/// whether it was.
pub async fn record_attempt(
    conn: &mut Conn<'_>,
    delivery: &Claimed,
    attempt: Attempt,
    next: &Next,
) -> Result<bool, DbError> {
    let mut attempts = delivery.attempts.clone();
    attempts.push(attempt);
    let attempts = serde_json::to_string(&attempts).expect("attempts serialize");
    let (status, next_attempt_at) = match next {
        Next::Succeeded => (DeliveryStatus::Succeeded, None),
        Next::RetryAt(at) => (DeliveryStatus::Pending, Some(*at)),
        Next::Failed => (DeliveryStatus::Failed, None),
    };
    let written = conn
        .execute(
            "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, claimed_until = NULL, attempts = $5,
                 updated_at = $6
             WHERE id = $1 AND attempt_count = $2",
            &[&delivery.id, &delivery.attempt_count, &status.as_str(), &next_attempt_at, &attempts, &now()],
        )
        .await?;
    Ok(written > 0)
}

/// Records a success of the endpoint: it is failing no longer.
///
/// A busy endpoint succeeds many times a second, and every attempt's transaction would wait for
/// the one before it on the endpoint's row: the row is written only when it says something new
/// (the endpoint was failing), or when `last_success_at` is more than a minute old.
pub async fn endpoint_succeeded(conn: &mut Conn<'_>, id: Uuid) -> Result<(), DbError> {
    let at = now();
    let stale = at - chrono::TimeDelta::minutes(1);
    let sql = "UPDATE webhook_endpoints SET last_success_at = $2, failing_since = NULL
               WHERE id = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < $3)";
    conn.execute(sql, &[&id, &at, &stale]).await.map(drop)
}

/// Records a failure of the endpoint; returns since when it has been failing.
pub async fn endpoint_failed(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<DateTime<Utc>>, DbError> {
    let sql = "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1
               RETURNING failing_since";
    conn.query_opt(sql, &[&id, &now()], |row| row.get::<DateTime<Utc>>(0)).await
}

/// Disables an endpoint, saying why; its pending deliveries fail with it (`recover` resends
/// them once it is enabled again).
pub async fn disable_endpoint(conn: &mut Conn<'_>, id: Uuid, reason: &str) -> Result<(), DbError> {
    let at = now();
    conn.execute(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2, updated_at = $3
         WHERE id = $1 AND status = 'enabled'",
        &[&id, &reason, &at],
    )
    .await?;
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = $2
         WHERE endpoint_id = $1 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until <= $2)",
        &[&id, &at],
    )
    .await
    .map(drop)
}

/// Deliveries waiting (pending), and endpoints disabled: the gauges.
pub async fn gauges(conn: &mut Conn<'_>) -> Result<(i64, i64), DbError> {
    let pending = conn
        .query_one("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'", &[], |row| row.get(0))
        .await?;
    let disabled = conn
        .query_one("SELECT COUNT(*) FROM webhook_endpoints WHERE status = 'disabled'", &[], |row| row.get(0))
        .await?;
    Ok((pending, disabled))
}
