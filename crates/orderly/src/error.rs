//! The one application error type and its mapping to problem responses.
//!
//! Expected failures are [`Problem`]s built where the decision is made. Everything else
//! (database faults, broken invariants) becomes an opaque 500 whose cause is logged here and
//! never sent; a database that is out of connections or unreachable is a 503 with
//! `Retry-After`, not a hang and not a 500.

use axum::response::{IntoResponse, Response};
use orderly_kit::Problem;
use sea_orm::DbErr;

pub type ApiResult<T = Response> = Result<T, AppError>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Problem(#[from] Problem),
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Database(error) if is_unavailable(&error) => {
                let cause = if is_pool_timeout(&error) { "pool_timeout" } else { "unreachable" };
                metrics::counter!("orderly_db_unavailable_total", "cause" => cause).increment(1);
                tracing::warn!(error = %error, "database unavailable");
                Problem::unavailable("database_unavailable", "The database is busy or unreachable; retry shortly.", 1)
                    .into_response()
            }
            Self::Database(error) => {
                tracing::error!(error = %error, "database error");
                Problem::internal().into_response()
            }
            Self::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                Problem::internal().into_response()
            }
        }
    }
}

fn is_unavailable(error: &DbErr) -> bool {
    matches!(error, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
        || matches!(error, DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
            if matches!(e, sea_orm::sqlx::Error::PoolTimedOut | sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::PoolClosed)
                || is_locked_out(e))
}

/// SQLite's `SQLITE_BUSY` family: another process held the database past the busy timeout, as
/// an outage would. PostgreSQL's connection errors (class 08) and shutdown (57P): the server is
/// going away or restarting.
fn is_locked_out(error: &sea_orm::sqlx::Error) -> bool {
    let sea_orm::sqlx::Error::Database(error) = error else { return false };
    if let Some(sqlite) = error.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>() {
        const SQLITE_BUSY: i32 = 5;
        return sea_orm::sqlx::error::DatabaseError::code(sqlite)
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == SQLITE_BUSY);
    }
    error.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
}

fn is_pool_timeout(error: &DbErr) -> bool {
    matches!(error, DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout))
        || matches!(error, DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
            if matches!(e, sea_orm::sqlx::Error::PoolTimedOut))
}

/// Maps a unique-constraint violation to the given 409; other errors pass through.
pub fn conflict_on_unique(error: DbErr, conflict: impl FnOnce() -> Problem) -> AppError {
    if crate::db::is_unique_violation(&error) { conflict().into() } else { error.into() }
}
