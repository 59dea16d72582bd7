//! Exports: reports generated in the background (job kind `report`), kept in the database in
//! chunks so any instance serves the download, in bounded memory at both ends.
//!
//! An export reads its orders a page at a time and stores its CSV a chunk at a time; each
//! chunk commits with the progress it brings (rows, the last order written) and the renewal of
//! the job's lease, so a worker that dies mid-export loses at most the chunk it was writing,
//! and the worker that takes the job over goes on after the last chunk committed. A worker
//! whose lease lapsed cannot commit another chunk.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Database, DbError};
use crate::jobs::{JobKind, Jobs, Lease};
use crate::orders::store::{self as orders, Order};

use super::store::{self, NewReport, Progress, Report, ReportKind, ReportStatus};

/// Orders read at once.
const PAGE: i64 = 1000;
/// A chunk is stored once it holds this much CSV.
const CHUNK_BYTES: usize = 256 * 1024;
/// The header row of `orders_csv`.
const HEADER: &str = "id,user_id,status,currency,total,items,created_at,updated_at\r\n";
/// What the owner of a failed export is told.
const FAILED: &str = "the export failed; ask for a new report";

/// Why an export run stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Another worker took the job over: this one stops, writing nothing more.
    #[error("the job's lease was lost")]
    LeaseLost,
    #[error(transparent)]
    Database(#[from] DbError),
}

/// A request for a report.
pub struct Request {
    pub user_id: Uuid,
    pub kind: ReportKind,
    /// Whose orders (`None`: everyone's, for an admin).
    pub scope_user_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Records the report and its job in one transaction, then announces the job.
pub async fn request(db: &Database, jobs: &Jobs, ttl: Duration, request: Request) -> Result<Report, DbError> {
    let max_attempts = jobs.max_attempts;
    let new = NewReport {
        user_id: request.user_id,
        kind: request.kind,
        scope_user_id: request.scope_user_id,
        created_after: request.created_after,
        created_before: request.created_before,
        ttl: crate::db::span(ttl),
    };
    let (report, job_id) = db
        .write()
        .transaction(async move |conn| {
            let report = store::insert_report(conn, new).await?;
            let job_id = crate::jobs::store::enqueue(conn, JobKind::Report, report.id, max_attempts).await?;
            Ok::<_, DbError>((report, job_id))
        })
        .await?;
    jobs.announce(job_id, JobKind::Report);
    Ok(report)
}

/// Generates report `id` under `lease`, from where the last run left off; `ttl` is how long
/// it is kept once finished. A report already finished is left as it is.
pub async fn run(db: &Database, lease: &Lease, id: Uuid, ttl: Duration) -> Result<(), ExportError> {
    let Some(report) = db.current().run(async move |conn| store::find_report(conn, id, None).await).await? else {
        // Expired and swept while queued: nothing to do.
        return Ok(());
    };
    let mut report = match report.status {
        ReportStatus::Succeeded | ReportStatus::Failed => return Ok(()),
        ReportStatus::Queued | ReportStatus::Running if report.total_rows.is_none() => {
            let (owner, after, before) = (report.scope_user_id, report.created_after, report.created_before);
            let total =
                db.current().run(async move |conn| orders::export_count(conn, owner, after, before).await).await?;
            hold(db, lease, async move |conn| store::start(conn, id, total).await).await?;
            Report { status: ReportStatus::Running, total_rows: Some(total), ..report }
        }
        _ => report,
    };
    let started = std::time::Instant::now();
    let rows_before = report.row_count;
    let mut csv = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
    if report.chunk_count == 0 {
        csv.extend_from_slice(HEADER.as_bytes());
    }
    loop {
        let (owner, after, before, cursor) =
            (report.scope_user_id, report.created_after, report.created_before, report.cursor);
        let page = db
            .current()
            .run(async move |conn| orders::export_page(conn, owner, after, before, cursor, PAGE).await)
            .await?;
        let last_page = page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX);
        for order in &page {
            write_row(&mut csv, order);
        }
        report.row_count += i64::try_from(page.len()).unwrap_or(i64::MAX);
        report.cursor = page.last().map(|order| (order.created_at, order.id)).or(report.cursor);
        drop(page);
        if csv.len() >= CHUNK_BYTES || last_page {
            let finished = last_page.then(|| {
                let at = crate::db::now();
                (at, at + crate::db::span(ttl))
            });
            let progress = Progress {
                row_count: report.row_count,
                cursor: report.cursor,
                chunk_count: report.chunk_count + 1,
                byte_count: report.byte_count + i64::try_from(csv.len()).unwrap_or(i64::MAX),
                finished,
            };
            let (seq, data) = (report.chunk_count, std::mem::take(&mut csv));
            let (chunk_count, byte_count) = (progress.chunk_count, progress.byte_count);
            hold(db, lease, async move |conn| store::append_chunk(conn, id, seq, &data, &progress).await).await?;
            report.chunk_count = chunk_count;
            report.byte_count = byte_count;
            csv.reserve(CHUNK_BYTES + 64 * 1024);
        }
        if last_page {
            break;
        }
    }
    let rows = u64::try_from(report.row_count - rows_before).unwrap_or_default();
    metrics::counter!("orderly_report_rows_total").increment(rows);
    tracing::info!(report.id = %id, rows, elapsed_ms = started.elapsed().as_millis() as u64, "report generated");
    Ok(())
}

/// Runs `work` in one transaction with the renewal of `lease`, so it commits only while the
/// job is still this worker's.
async fn hold(
    db: &Database,
    lease: &Lease,
    work: impl AsyncFnOnce(&mut crate::db::Conn<'_>) -> Result<(), DbError> + Send + 'static,
) -> Result<(), ExportError> {
    let (job_id, attempt, until) = (lease.job_id, lease.attempt, lease.until());
    db.write()
        .transaction(async move |conn| {
            if !crate::jobs::store::hold(conn, job_id, attempt, until).await? {
                return Err(ExportError::LeaseLost);
            }
            work(conn).await?;
            Ok(())
        })
        .await
}

/// Marks report `id` failed for good (its job is out of attempts), kept `ttl` from now.
pub async fn give_up(db: &Database, id: Uuid, ttl: Duration) -> Result<(), DbError> {
    let expires_at = crate::db::now() + crate::db::span(ttl);
    db.write().run(async move |conn| store::fail(conn, id, FAILED, expires_at).await).await
}

/// Deletes reports past their expiry (with their chunks and jobs), a batch at a time.
pub async fn sweep(db: &Database) -> Result<usize, DbError> {
    let mut deleted = 0;
    loop {
        let expired = db.write().run(async |conn| store::expired(conn, crate::db::now(), 100).await).await?;
        if expired.is_empty() {
            return Ok(deleted);
        }
        deleted += expired.len();
        db.write()
            .transaction(async move |conn| {
                for id in expired {
                    store::delete_report(conn, id).await?;
                    crate::jobs::store::delete_for(conn, id).await?;
                }
                Ok::<_, DbError>(())
            })
            .await?;
    }
}

/// One CSV row (RFC 4180; no field of an order needs quoting: ids, a status, a currency code,
/// integers and timestamps). Money is in minor units; `items` is the number of lines.
fn write_row(out: &mut Vec<u8>, order: &Order) {
    let mut ids = uuid::Uuid::encode_buffer();
    out.extend_from_slice(order.id.hyphenated().encode_lower(&mut ids).as_bytes());
    out.push(b',');
    out.extend_from_slice(order.user_id.hyphenated().encode_lower(&mut ids).as_bytes());
    out.push(b',');
    out.extend_from_slice(order.status.as_str().as_bytes());
    out.push(b',');
    out.extend_from_slice(order.currency.as_bytes());
    out.push(b',');
    out.extend_from_slice(itoa::Buffer::new().format(order.total).as_bytes());
    out.push(b',');
    let lines = serde_json::from_str::<Vec<serde::de::IgnoredAny>>(order.items.get()).map_or(0, |items| items.len());
    out.extend_from_slice(itoa::Buffer::new().format(lines).as_bytes());
    out.push(b',');
    orderly_kit::timestamp::push(out, &order.created_at);
    out.push(b',');
    orderly_kit::timestamp::push(out, &order.updated_at);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn a_row_is_one_order_with_money_in_minor_units() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T10:00:00.5Z").unwrap().with_timezone(&Utc);
        let order = Order {
            id: Uuid::nil(),
            user_id: Uuid::max(),
            status: crate::orders::domain::OrderStatus::Paid,
            currency: "EUR".into(),
            total: 12345,
            version: 2,
            created_at: at,
            updated_at: at,
            items: RawValue::from_string(r#"[{"a":1},{"b":2}]"#.into()).unwrap().into(),
        };
        let mut out = Vec::new();
        write_row(&mut out, &order);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00000000-0000-0000-0000-000000000000,ffffffff-ffff-ffff-ffff-ffffffffffff,paid,EUR,12345,2,\
             2026-11-30T10:00:00.500Z,2026-11-30T10:00:00.500Z\r\n"
        );
    }
}
