//! Report storage: the `reports` and `report_chunks` tables. The only place in this module
//! that touches the database.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Conn, DbError, Row, now};

/// What a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum ReportKind {
    /// The orders in scope as CSV, one row per order, oldest first.
    #[serde(rename = "orders_csv")]
    OrdersCsv,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrdersCsv => "orders_csv",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        (stored == "orders_csv").then_some(Self::OrdersCsv)
    }
}

/// Where a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ReportStatus {
    const ALL: [Self; 4] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == stored)
    }
}

/// A report as stored.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: Uuid,
    /// Who asked for it: only they (and admins) see it.
    pub user_id: Uuid,
    pub kind: ReportKind,
    /// Whose orders it covers; `None`: everyone's.
    pub scope_user_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    /// The end of the period: the one asked for, or the moment of the request if earlier.
    pub created_before: DateTime<Utc>,
    pub status: ReportStatus,
    pub row_count: i64,
    /// Known once the export started.
    pub total_rows: Option<i64>,
    /// The last order written, for an export taken over after a crash.
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    pub chunk_count: i64,
    pub byte_count: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

macro_rules! report_columns {
    () => {
        "id, user_id, kind, scope_user_id, created_after, created_before, status, row_count, total_rows, \
         cursor_created_at, cursor_id, chunk_count, byte_count, error, created_at, updated_at, finished_at, expires_at"
    };
}

impl Report {
    fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let kind: String = row.get(2)?;
        let kind = ReportKind::parse(&kind)
            .ok_or_else(|| DbError::corrupt(format!("report {id} has an unknown kind {kind:?}")))?;
        let status: String = row.get(6)?;
        let status = ReportStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("report {id} has an unknown status {status:?}")))?;
        let cursor = match (row.get::<Option<DateTime<Utc>>>(9)?, row.get::<Option<Uuid>>(10)?) {
            (Some(created_at), Some(order_id)) => Some((created_at, order_id)),
            _ => None,
        };
        Ok(Self {
            id,
            user_id: row.get(1)?,
            kind,
            scope_user_id: row.get(3)?,
            created_after: row.get(4)?,
            created_before: row.get(5)?,
            status,
            row_count: row.get(7)?,
            total_rows: row.get(8)?,
            cursor,
            chunk_count: row.get(11)?,
            byte_count: row.get(12)?,
            error: row.get(13)?,
            created_at: row.get(14)?,
            updated_at: row.get(15)?,
            finished_at: row.get(16)?,
            expires_at: row.get(17)?,
        })
    }
}

/// A report to insert.
pub struct NewReport {
    pub user_id: Uuid,
    pub kind: ReportKind,
    pub scope_user_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// How long it is kept.
    pub ttl: chrono::TimeDelta,
}

/// Inserts a queued report; its period ends at the requested end or now, whichever is first.
pub async fn insert_report(conn: &mut Conn<'_>, new: NewReport) -> Result<Report, DbError> {
    let at = now();
    let report = Report {
        id: Uuid::now_v7(),
        user_id: new.user_id,
        kind: new.kind,
        scope_user_id: new.scope_user_id,
        created_after: new.created_after,
        created_before: new.created_before.map_or(at, |before| before.min(at)),
        status: ReportStatus::Queued,
        row_count: 0,
        total_rows: None,
        cursor: None,
        chunk_count: 0,
        byte_count: 0,
        error: None,
        created_at: at,
        updated_at: at,
        finished_at: None,
        expires_at: at + new.ttl,
    };
    conn.defer(
        "INSERT INTO reports (id, user_id, kind, scope_user_id, created_after, created_before, status, row_count,
             chunk_count, byte_count, created_at, updated_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, 0, $8, $8, $9)",
        &[
            &report.id,
            &report.user_id,
            &report.kind.as_str(),
            &report.scope_user_id,
            &report.created_after,
            &report.created_before,
            &report.status.as_str(),
            &at,
            &report.expires_at,
        ],
    )
    .await?;
    Ok(report)
}

/// A report visible to `viewer` (`None`: an admin, who sees all), unless it has expired.
pub async fn find_report(conn: &mut Conn<'_>, id: Uuid, viewer: Option<Uuid>) -> Result<Option<Report>, DbError> {
    const SQL: &str = concat!("SELECT ", report_columns!(), " FROM reports WHERE id = $1 AND expires_at > $2");
    let report = conn.query_opt(SQL, &[&id, &now()], Report::from_row).await?;
    Ok(report.filter(|report| viewer.is_none_or(|viewer| viewer == report.user_id)))
}

/// Marks a report running, with the number of rows it will have.
pub async fn start(conn: &mut Conn<'_>, id: Uuid, total_rows: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE reports SET status = 'running', total_rows = $1, updated_at = $2 WHERE id = $3",
        &[&total_rows, &now(), &id],
    )
    .await
    .map(drop)
}

/// Progress of an export to record with a chunk.
pub struct Progress {
    pub row_count: i64,
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    pub chunk_count: i64,
    pub byte_count: i64,
    /// Set on the last chunk: the report is done, and kept until then.
    pub finished: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Stores chunk `seq` of report `id` and the progress it brings, in the caller's transaction.
pub async fn append_chunk(
    conn: &mut Conn<'_>,
    id: Uuid,
    seq: i64,
    data: &[u8],
    progress: &Progress,
) -> Result<(), DbError> {
    conn.defer("INSERT INTO report_chunks (report_id, seq, data) VALUES ($1, $2, $3)", &[&id, &seq, &data]).await?;
    let (cursor_at, cursor_id) = progress.cursor.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    let (status, finished_at, expires_at) = match progress.finished {
        Some((finished_at, expires_at)) => (ReportStatus::Succeeded, Some(finished_at), Some(expires_at)),
        None => (ReportStatus::Running, None, None),
    };
    conn.defer(
        "UPDATE reports SET row_count = $1, cursor_created_at = $2, cursor_id = $3, chunk_count = $4, byte_count = $5,
             status = $6, finished_at = $7, expires_at = COALESCE($8, expires_at), updated_at = $9
         WHERE id = $10",
        &[
            &progress.row_count,
            &cursor_at,
            &cursor_id,
            &progress.chunk_count,
            &progress.byte_count,
            &status.as_str(),
            &finished_at,
            &expires_at,
            &now(),
            &id,
        ],
    )
    .await
}

/// Marks a report failed for good, with `error` (shown to its owner).
pub async fn fail(conn: &mut Conn<'_>, id: Uuid, error: &str, expires_at: DateTime<Utc>) -> Result<(), DbError> {
    let at = now();
    conn.execute(
        "UPDATE reports SET status = 'failed', error = $1, finished_at = $2, updated_at = $2, expires_at = $3
         WHERE id = $4 AND status IN ('queued', 'running')",
        &[&error, &at, &expires_at, &id],
    )
    .await
    .map(drop)
}

/// Chunk `seq` of report `id`.
pub async fn chunk(conn: &mut Conn<'_>, id: Uuid, seq: i64) -> Result<Option<Vec<u8>>, DbError> {
    conn.query_opt("SELECT data FROM report_chunks WHERE report_id = $1 AND seq = $2", &[&id, &seq], |row| row.get(0))
        .await
}

/// Up to `limit` reports expired before `at`.
pub async fn expired(conn: &mut Conn<'_>, at: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>, DbError> {
    conn.query("SELECT id FROM reports WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2", &[&at, &limit], |row| {
        row.get(0)
    })
    .await
}

/// Deletes report `id` and its chunks (in the caller's transaction).
pub async fn delete_report(conn: &mut Conn<'_>, id: Uuid) -> Result<(), DbError> {
    conn.defer("DELETE FROM report_chunks WHERE report_id = $1", &[&id]).await?;
    conn.defer("DELETE FROM reports WHERE id = $1", &[&id]).await
}
