//! Event storage: the outbox. The only place in this module that touches the database.
//!
//! Writers call [`record`] inside the transaction of their change. The relay claims the
//! oldest unpublished events ([`claim`]) under a lease, publishes them, and marks them
//! published ([`mark_published`]) only once the broker has confirmed them; a relay that dies
//! leaves its claims to lapse, and another relay publishes them again (at-least-once).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, IntList, Param, Row, now};
use crate::listing::{ListParams, and_where, seek};
use orderly_kit::pagination::Page;

use super::EventType;

/// An event as stored: `body` is its JSON, served and published as it is.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Uuid,
    pub kind: EventType,
    pub created_at: DateTime<Utc>,
    pub body: Box<RawValue>,
}

/// The columns [`Event::from_row`] reads, in its order.
macro_rules! event_columns {
    () => {
        "id, type, created_at, body"
    };
}

impl Event {
    fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let kind: String = row.get(1)?;
        let kind = EventType::parse(&kind)
            .ok_or_else(|| DbError::corrupt(format!("event {id} has an unknown type {kind:?}")))?;
        let body = RawValue::from_string(row.get(3)?)
            .map_err(|_| DbError::corrupt(format!("event {id} has a body that is not JSON")))?;
        Ok(Self { id, kind, created_at: row.get(2)?, body })
    }
}

/// Records that `kind` happened to the aggregate `aggregate_id` (the order or user whose
/// events must arrive in order), `object` being the resource as the API serves it now. Call it
/// in the transaction of the change. Nothing reads it back, so on PostgreSQL it travels with
/// the next statement.
pub async fn record(conn: &mut Conn<'_>, kind: EventType, aggregate_id: Uuid, object: &[u8]) -> Result<(), DbError> {
    let created_at = now();
    let id = id_at(&created_at);
    let body = body(id, kind, &created_at, object);
    // The span that wrote it: its publication continues that trace.
    let traceparent = conn.trace().map(|span| span.to_string());
    conn.defer(
        "INSERT INTO events (id, type, aggregate_id, created_at, body, traceparent) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &kind.as_str(), &aggregate_id, &created_at, &body, &traceparent],
    )
    .await
}

/// An event's id: a UUIDv7 whose timestamp is the event's `created_at` (to the millisecond),
/// so [`find_event`] finds it through the `(created_at, id)` index and the table needs no
/// index of its own on `id` (one B-tree fewer written with every change).
fn id_at(created_at: &DateTime<Utc>) -> Uuid {
    let seconds = u64::try_from(created_at.timestamp()).expect("events happen after 1970");
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, created_at.timestamp_subsec_nanos()))
}

/// The span of `created_at` in which the event `id` was written: the millisecond of its UUIDv7
/// timestamp, and a few after it for events written before ids were minted from `created_at`
/// (their `created_at` was read just after the id). `None` for an id no event can have.
fn created_span(id: Uuid) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    let from = DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)?;
    Some((from, from + chrono::TimeDelta::milliseconds(10)))
}

/// `{id, type, created_at, data: {object}}`.
fn body(id: Uuid, kind: EventType, created_at: &DateTime<Utc>, object: &[u8]) -> String {
    let mut out = Vec::with_capacity(object.len() + 128);
    let mut event = orderly_kit::json::Object::begin(&mut out);
    event.uuid("id", id).str("type", kind.as_str()).timestamp("created_at", created_at);
    let mut data = Vec::with_capacity(object.len() + 12);
    data.extend_from_slice(b"{\"object\":");
    data.extend_from_slice(object);
    data.push(b'}');
    event.raw("data", std::str::from_utf8(&data).expect("representations are UTF-8 JSON"));
    event.end();
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Which events a list shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventFilter {
    pub kind: Option<EventType>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// One page of events, in the list's order.
pub async fn list_events(
    conn: &mut Conn<'_>,
    filter: &EventFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Event>, DbError> {
    let mut sql = String::from(concat!("SELECT ", event_columns!(), " FROM events WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    let kind = filter.kind.map(EventType::as_str);
    if let Some(kind) = &kind {
        and_where(&mut sql, &mut values, "type = $", kind);
    }
    if let Some(after) = &filter.created_after {
        and_where(&mut sql, &mut values, "created_at > $", after);
    }
    if let Some(before) = &filter.created_before {
        and_where(&mut sql, &mut values, "created_at < $", before);
    }
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, Event::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// The event `id`, looked up in the `(created_at, id)` index within the span its id was
/// minted in.
pub async fn find_event(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Event>, DbError> {
    const SQL: &str =
        concat!("SELECT ", event_columns!(), " FROM events WHERE created_at >= $1 AND created_at < $2 AND id = $3");
    let Some((from, until)) = created_span(id) else { return Ok(None) };
    conn.query_opt(SQL, &[&from, &until, &id], Event::from_row).await
}

/// An event a relay holds a lease on, to publish.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub id: Uuid,
    pub kind: EventType,
    pub created_at: DateTime<Utc>,
    pub body: String,
    /// The span that wrote the event, when spans were exported.
    pub traceparent: Option<String>,
}

impl Claimed {
    fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(1)?;
        let kind: String = row.get(2)?;
        let kind = EventType::parse(&kind)
            .ok_or_else(|| DbError::corrupt(format!("event {id} has an unknown type {kind:?}")))?;
        Ok(Self { seq: row.get(0)?, id, kind, created_at: row.get(3)?, body: row.get(4)?, traceparent: row.get(5)? })
    }
}

/// Takes a lease until `lease_until` on up to `limit` of the oldest unpublished events that
/// no live lease holds, each the first unpublished event of its aggregate (so an aggregate's
/// events are published one after another, in order, however many relays run). Returned in
/// the order they were written.
///
/// On PostgreSQL, `SKIP LOCKED` lets relays claim side by side: one skips the rows another is
/// claiming, and an aggregate's later event waits for its earlier one, locked or not.
///
/// SQLite has one writer, so a claim sees every event written before it, and events are
/// written in `seq` order. Its outbox keeps no index of unpublished events (each index is one
/// more page in the commit of every change that records an event): `outbox_position` says
/// below which `seq` every event is published, and a claim reads on from there, a window of
/// the oldest unpublished events (claimed or not), ranked within their aggregate. An event
/// ranked first has no earlier unpublished event, since any such event is older, so in the
/// window too.
pub async fn claim(conn: &mut Conn<'_>, limit: i64, lease_until: DateTime<Utc>) -> Result<Vec<Claimed>, DbError> {
    const POSTGRES: &str = "UPDATE events SET claimed_until = $1 WHERE seq IN (
             SELECT e.seq FROM events e
             WHERE e.published_at IS NULL AND (e.claimed_until IS NULL OR e.claimed_until < $2)
               AND NOT EXISTS (SELECT 1 FROM events p
                               WHERE p.aggregate_id = e.aggregate_id AND p.published_at IS NULL AND p.seq < e.seq)
             ORDER BY e.seq LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING seq, id, type, created_at, body, traceparent";
    const SQLITE: &str = "UPDATE events SET claimed_until = $1 WHERE seq IN (
             SELECT seq FROM (
                 SELECT seq, claimed_until, row_number() OVER (PARTITION BY aggregate_id ORDER BY seq) AS place
                 FROM (SELECT seq, aggregate_id, claimed_until FROM events
                       WHERE seq >= (SELECT published_below FROM outbox_position) AND published_at IS NULL
                       ORDER BY seq LIMIT $3 * $4))
             WHERE place = 1 AND (claimed_until IS NULL OR claimed_until < $2)
             ORDER BY seq LIMIT $3)
         RETURNING seq, id, type, created_at, body, traceparent";
    /// How many batches of the oldest unpublished events a claim on SQLite looks through.
    const WINDOW: i64 = 4;
    let now = now();
    let mut claimed = match conn.backend() {
        Backend::Postgres => conn.query(POSTGRES, &[&lease_until, &now, &limit], Claimed::from_row).await?,
        Backend::Sqlite => conn.query(SQLITE, &[&lease_until, &now, &limit, &WINDOW], Claimed::from_row).await?,
    };
    claimed.sort_unstable_by_key(|event| event.seq);
    Ok(claimed)
}

/// Marks events published (the broker confirmed them): they leave the relay's scan. On
/// SQLite, `outbox_position` then moves up to the oldest event still unpublished.
pub async fn mark_published(conn: &mut Conn<'_>, seqs: Vec<i64>) -> Result<(), DbError> {
    match conn.backend() {
        Backend::Postgres => {
            let sql = "UPDATE events SET published_at = $1, claimed_until = NULL WHERE seq = ANY($2)";
            conn.execute(sql, &[&now(), &IntList(seqs)]).await?;
        }
        Backend::Sqlite => {
            let sql = "UPDATE events SET published_at = $1, claimed_until = NULL
                       WHERE seq IN (SELECT value FROM json_each($2))";
            conn.execute(sql, &[&now(), &IntList(seqs)]).await?;
            // Past the last event when none is unpublished: the next one written is `max + 1`
            // (the sweep never deletes the newest event, so no `seq` is written twice).
            let advance = "UPDATE outbox_position SET published_below = COALESCE(
                    (SELECT seq FROM events WHERE seq >= published_below AND published_at IS NULL
                     ORDER BY seq LIMIT 1),
                    (SELECT max(seq) + 1 FROM events),
                    published_below)";
            conn.execute(advance, &[]).await?;
        }
    }
    Ok(())
}

/// Gives up the leases on events a relay could not publish, so they are published again at
/// once rather than when the lease lapses.
pub async fn release(conn: &mut Conn<'_>, seqs: Vec<i64>) -> Result<(), DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => "UPDATE events SET claimed_until = NULL WHERE seq = ANY($1) AND published_at IS NULL",
        Backend::Sqlite => {
            "UPDATE events SET claimed_until = NULL
             WHERE seq IN (SELECT value FROM json_each($1)) AND published_at IS NULL"
        }
    };
    conn.execute(sql, &[&IntList(seqs)]).await.map(drop)
}

/// Deletes published events created before `before`; returns how many. An event never
/// published is kept, however old: it is still owed to the broker. So is the newest event,
/// whatever its age: SQLite gives a new row the `seq` after the greatest left, and a `seq`
/// written twice could fall below `outbox_position`.
pub async fn sweep(conn: &mut Conn<'_>, before: DateTime<Utc>) -> Result<u64, DbError> {
    let sql = "DELETE FROM events WHERE created_at < $1 AND published_at IS NOT NULL
               AND seq < (SELECT max(seq) FROM events)";
    conn.execute(sql, &[&before]).await
}

/// How many events wait to be published, and when the oldest of them was written.
pub async fn backlog(conn: &mut Conn<'_>) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    let unpublished = match conn.backend() {
        Backend::Postgres => "published_at IS NULL",
        Backend::Sqlite => "seq >= (SELECT published_below FROM outbox_position) AND published_at IS NULL",
    };
    let count = format!("SELECT COUNT(*) FROM events WHERE {unpublished}");
    let count = conn.query_one(&count, &[], |row| row.get(0)).await?;
    let oldest = format!("SELECT created_at FROM events WHERE {unpublished} ORDER BY seq LIMIT 1");
    let oldest = conn.query_opt(&oldest, &[], |row| row.get::<DateTime<Utc>>(0)).await?;
    Ok((count, oldest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_the_object_as_written() {
        let id = Uuid::nil();
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z").unwrap().with_timezone(&Utc);
        let body = body(id, EventType::OrderPaid, &at, br#"{"id":"x","total":5}"#);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "type": "order.paid",
                "created_at": "2026-01-02T03:04:05.123456Z",
                "data": {"object": {"id": "x", "total": 5}},
            })
        );
    }
}
