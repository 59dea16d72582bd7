//! Job storage: the only place that touches the `jobs` table.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, Row, now};

use super::{Job, JobKind, JobStatus};

/// Enqueues a job of `kind` about `subject_id`, due now, in the caller's transaction; returns
/// its id.
pub async fn enqueue(conn: &mut Conn<'_>, kind: JobKind, subject_id: Uuid, max_attempts: i64) -> Result<Uuid, DbError> {
    let (id, at) = (Uuid::now_v7(), now());
    conn.defer(
        "INSERT INTO jobs (id, kind, subject_id, status, attempts, max_attempts, due_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 0, $5, $6, $6, $6)",
        &[&id, &kind.as_str(), &subject_id, &JobStatus::Queued.as_str(), &max_attempts, &at],
    )
    .await?;
    Ok(id)
}

fn job_from_row(row: &Row<'_>) -> Result<Job, DbError> {
    let id: Uuid = row.get(0)?;
    let kind: String = row.get(1)?;
    let kind =
        JobKind::parse(&kind).ok_or_else(|| DbError::corrupt(format!("job {id} has an unknown kind {kind:?}")))?;
    Ok(Job { id, kind, subject_id: row.get(2)?, attempt: row.get(3)?, max_attempts: row.get(4)? })
}

/// Claims the job due first (queued and due, or running with a lapsed lease) until
/// `lease_until`, counting an attempt. On PostgreSQL workers claim side by side (`SKIP LOCKED`).
pub async fn claim(conn: &mut Conn<'_>, lease_until: DateTime<Utc>) -> Result<Option<Job>, DbError> {
    const POSTGRES: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, due_at = $1, updated_at = $2
         WHERE id = (SELECT id FROM jobs WHERE status IN ('queued', 'running') AND due_at <= $2
                     ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, subject_id, attempts, max_attempts";
    const SQLITE: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, due_at = $1, updated_at = $2
         WHERE id = (SELECT id FROM jobs WHERE status IN ('queued', 'running') AND due_at <= $2
                     ORDER BY due_at LIMIT 1)
         RETURNING id, kind, subject_id, attempts, max_attempts";
    let sql = if conn.backend() == Backend::Postgres { POSTGRES } else { SQLITE };
    conn.query_opt(sql, &[&lease_until, &now()], job_from_row).await
}

/// Extends the lease of `attempt` of job `id`; `false` when that attempt no longer holds it.
pub async fn hold(conn: &mut Conn<'_>, id: Uuid, attempt: i64, lease_until: DateTime<Utc>) -> Result<bool, DbError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET due_at = $1, updated_at = $2 WHERE id = $3 AND attempts = $4 AND status = 'running'",
            &[&lease_until, &now(), &id, &attempt],
        )
        .await?;
    Ok(changed == 1)
}

/// Records that `attempt` of job `id` succeeded.
pub async fn succeed(conn: &mut Conn<'_>, id: Uuid, attempt: i64) -> Result<bool, DbError> {
    let at = now();
    let changed = conn
        .execute(
            "UPDATE jobs SET status = 'succeeded', updated_at = $1, finished_at = $1, last_error = NULL
             WHERE id = $2 AND attempts = $3 AND status = 'running'",
            &[&at, &id, &attempt],
        )
        .await?;
    Ok(changed == 1)
}

/// Puts job `id` back in the queue, due at `due_at` (a retry, or a job a stopping worker gives
/// back), with `error` when an attempt failed.
pub async fn requeue(
    conn: &mut Conn<'_>,
    id: Uuid,
    attempt: i64,
    due_at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<bool, DbError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET status = 'queued', due_at = $1, updated_at = $2, last_error = COALESCE($3, last_error)
             WHERE id = $4 AND attempts = $5 AND status = 'running'",
            &[&due_at, &now(), &error, &id, &attempt],
        )
        .await?;
    Ok(changed == 1)
}

/// Gives back a claim without counting it as an attempt (a worker stopping before it is done).
pub async fn release(conn: &mut Conn<'_>, id: Uuid, attempt: i64) -> Result<bool, DbError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET status = 'queued', attempts = attempts - 1, due_at = $1, updated_at = $1
             WHERE id = $2 AND attempts = $3 AND status = 'running'",
            &[&now(), &id, &attempt],
        )
        .await?;
    Ok(changed == 1)
}

/// Records that job `id` failed for good, with `error`.
pub async fn fail(conn: &mut Conn<'_>, id: Uuid, attempt: i64, error: &str) -> Result<bool, DbError> {
    let at = now();
    let changed = conn
        .execute(
            "UPDATE jobs SET status = 'failed', updated_at = $1, finished_at = $1, last_error = $2
             WHERE id = $3 AND attempts = $4 AND status = 'running'",
            &[&at, &error, &id, &attempt],
        )
        .await?;
    Ok(changed == 1)
}

/// Whether job `id` exists (an announcement naming no job is dead-lettered).
pub async fn exists(conn: &mut Conn<'_>, id: Uuid) -> Result<bool, DbError> {
    Ok(conn.query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id], |_| Ok(())).await?.is_some())
}

/// How many jobs are in each state (states without jobs are absent).
pub async fn count_by_status(conn: &mut Conn<'_>) -> Result<Vec<(JobStatus, i64)>, DbError> {
    conn.query("SELECT status, COUNT(*) FROM jobs GROUP BY status", &[], |row| {
        let status: String = row.get(0)?;
        let status = JobStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("a job has an unknown status {status:?}")))?;
        Ok((status, row.get(1)?))
    })
    .await
}

/// Deletes the jobs about `subject_id` (their subject is gone).
pub async fn delete_for(conn: &mut Conn<'_>, subject_id: Uuid) -> Result<(), DbError> {
    conn.execute("DELETE FROM jobs WHERE subject_id = $1", &[&subject_id]).await.map(drop)
}
