//! A connection inside one unit of work, the values bound to statements and read from rows,
//! and the one database error type.
//!
//! Store functions take `&mut Conn` and are written once for both backends. Portable SQL is
//! written once with PostgreSQL's `$1` placeholders (SQLite reads them as its own `?1`);
//! where the dialects differ, the function holds both texts and picks by [`Conn::backend`].
//!
//! On SQLite every method completes without waiting: the whole unit of work runs on a
//! database thread (see [`super::sqlite`]). On PostgreSQL the methods are network calls;
//! statements are prepared once per connection and cached. A transaction's `BEGIN` is sent
//! together with its first statement, so it costs no round trip of its own.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::ClientWrapper;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{FromSql, ToSql};
use uuid::Uuid;

/// The two supported backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Why a database call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// Out of connections, unreachable, or (SQLite) locked by another process: worth a retry
    /// later, so the API answers 503.
    #[error("database unavailable ({cause}): {detail}")]
    Unavailable { cause: &'static str, detail: String },
    /// A unique constraint or index refused the write.
    #[error("unique constraint violated: {constraint}")]
    UniqueViolation { constraint: String },
    /// A stored value this code cannot read (a broken invariant, never the client's fault).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Other(String),
}

impl DbError {
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::UniqueViolation { .. })
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(failure, message) = &error {
            let detail = || message.clone().unwrap_or_else(|| failure.to_string());
            match failure.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return Self::Unavailable { cause: "unreachable", detail: detail() };
                }
                ErrorCode::ConstraintViolation
                    if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    return Self::UniqueViolation { constraint: detail() };
                }
                ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull => {
                    return Self::Unavailable { cause: "unreachable", detail: detail() };
                }
                _ => {}
            }
        }
        Self::Other(error.to_string())
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if let Some(db) = error.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION {
                return Self::UniqueViolation { constraint: db.constraint().unwrap_or_default().to_owned() };
            }
            // Class 08: connection exceptions; 57P: the server is shutting down or restarting.
            if code.code().starts_with("08") || code.code().starts_with("57P") {
                return Self::Unavailable { cause: "unreachable", detail: db.message().to_owned() };
            }
            return Self::Other(format!("{}: {}", code.code(), db.message()));
        }
        if error.is_closed() || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>()) {
            return Self::Unavailable { cause: "unreachable", detail: error.to_string() };
        }
        Self::Other(error.to_string())
    }
}

/// A value bound to a statement: its PostgreSQL encoding, and its SQLite one (the storage
/// formats the schema has always used: UUIDs as 16-byte blobs, timestamps as RFC 3339 text).
pub trait Param: ToSql + Sync {
    fn to_sqlite(&self) -> ToSqlOutput<'_>;
}

/// A value read from a column, on either backend.
pub trait Column: Sized + for<'a> FromSql<'a> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String>;
}

impl Param for i64 {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(*self)
    }
}

impl Column for i64 {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        value.as_i64().map_err(|e| e.to_string())
    }
}

impl Param for bool {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(*self)
    }
}

impl Column for bool {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        value.as_i64().map(|v| v != 0).map_err(|e| e.to_string())
    }
}

impl Param for &str {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(*self)
    }
}

impl Param for String {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(self.as_str())
    }
}

impl Column for String {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        value.as_str().map(str::to_owned).map_err(|e| e.to_string())
    }
}

impl Param for &[u8] {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(*self)
    }
}

impl Param for Vec<u8> {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(self.as_slice())
    }
}

impl Column for Vec<u8> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        value.as_blob().map(<[u8]>::to_vec).map_err(|e| e.to_string())
    }
}

impl Param for Uuid {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::from(self.as_bytes().as_slice())
    }
}

impl Column for Uuid {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        let bytes = value.as_blob().map_err(|e| e.to_string())?;
        Uuid::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Param for DateTime<Utc> {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        // The format every row has been written in: text comparisons order it by time.
        ToSqlOutput::from(self.to_rfc3339_opts(SecondsFormat::AutoSi, false))
    }
}

impl Column for DateTime<Utc> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        let text = value.as_str().map_err(|e| e.to_string())?;
        DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| e.to_string())
    }
}

impl<T: Param> Param for Option<T> {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        match self {
            Some(value) => value.to_sqlite(),
            None => ToSqlOutput::from(rusqlite::types::Null),
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Null => Ok(None),
            value => T::from_sqlite(value).map(Some),
        }
    }
}

/// One row of a result, as the mapping closure of a query sees it.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// The value of column `index` (0-based, in the order the query selects them).
    pub fn get<T: Column>(&self, index: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(row) => {
                let value = row.get_ref(index)?;
                T::from_sqlite(value).map_err(|error| DbError::corrupt(format!("column {index}: {error}")))
            }
            Row::Postgres(row) => {
                row.try_get(index).map_err(|error| DbError::corrupt(format!("column {index}: {error}")))
            }
        }
    }
}

/// A connection lent to one unit of work.
pub struct Conn<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Sqlite(&'a mut rusqlite::Connection),
    Postgres {
        client: &'a ClientWrapper,
        /// A transaction was asked for and `BEGIN` is not sent yet: it goes with the first
        /// statement.
        begin_pending: bool,
    },
}

impl<'a> Conn<'a> {
    pub(super) fn sqlite(connection: &'a mut rusqlite::Connection) -> Self {
        Self { inner: Inner::Sqlite(connection) }
    }

    pub(super) fn postgres(client: &'a ClientWrapper, in_transaction: bool) -> Self {
        Self { inner: Inner::Postgres { client, begin_pending: in_transaction } }
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Runs a statement that returns no rows; returns how many rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(&sqlite_text(sql))?;
                bind(&mut statement, params)?;
                Ok(statement.raw_execute()? as u64)
            }
            Inner::Postgres { client, begin_pending } => {
                let statement = client.prepare_cached(sql).await?;
                let params = postgres_params(params);
                if std::mem::take(begin_pending) {
                    let begin = client.prepare_cached("BEGIN").await?;
                    let (_, changed) =
                        tokio::try_join!(client.execute(&begin, &[]), client.execute(&statement, &params))?;
                    Ok(changed)
                } else {
                    Ok(client.execute(&statement, &params).await?)
                }
            }
        }
    }

    /// Runs a query and maps every row it returns.
    pub async fn query<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        mut map: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(&sqlite_text(sql))?;
                bind(&mut statement, params)?;
                let mut rows = statement.raw_query();
                let mut mapped = Vec::new();
                while let Some(row) = rows.next()? {
                    mapped.push(map(&Row::Sqlite(row))?);
                }
                Ok(mapped)
            }
            Inner::Postgres { client, begin_pending } => {
                let statement = client.prepare_cached(sql).await?;
                let params = postgres_params(params);
                let rows = if std::mem::take(begin_pending) {
                    let begin = client.prepare_cached("BEGIN").await?;
                    tokio::try_join!(client.execute(&begin, &[]), client.query(&statement, &params))?.1
                } else {
                    client.query(&statement, &params).await?
                };
                rows.iter().map(|row| map(&Row::Postgres(row))).collect()
            }
        }
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut rows = self.query(sql, params, map).await?;
        if rows.len() > 1 {
            return Err(DbError::Other(format!("expected at most one row, got {}", rows.len())));
        }
        Ok(rows.pop())
    }

    /// Runs a query that returns exactly one row.
    pub async fn query_one<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, params, map).await?.ok_or_else(|| DbError::Other("expected one row, got none".into()))
    }

    /// Runs several statements separated by `;`, without parameters (schema migrations).
    pub async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.inner {
            Inner::Sqlite(connection) => Ok(connection.execute_batch(sql)?),
            Inner::Postgres { client, begin_pending } => {
                if std::mem::take(begin_pending) {
                    client.batch_execute("BEGIN").await?;
                }
                Ok(client.batch_execute(sql).await?)
            }
        }
    }

    /// Ends a transaction begun by [`Conn::postgres`]: `COMMIT` or `ROLLBACK`, or nothing when
    /// no statement was sent (so `BEGIN` never was).
    pub(super) async fn finish(&mut self, commit: bool) -> Result<(), DbError> {
        if let Inner::Postgres { client, begin_pending } = &mut self.inner
            && !std::mem::take(begin_pending)
        {
            let end = client.prepare_cached(if commit { "COMMIT" } else { "ROLLBACK" }).await?;
            client.execute(&end, &[]).await?;
        }
        Ok(())
    }
}

/// SQLite reads `?N` as PostgreSQL's `$N`: the N-th parameter wherever it appears.
fn sqlite_text(sql: &str) -> Cow<'_, str> {
    if sql.contains('$') { Cow::Owned(sql.replace('$', "?")) } else { Cow::Borrowed(sql) }
}

fn bind(statement: &mut rusqlite::Statement<'_>, params: &[&dyn Param]) -> Result<(), DbError> {
    let expected = statement.parameter_count();
    if expected != params.len() {
        return Err(DbError::Other(format!("statement takes {expected} parameters, {} given", params.len())));
    }
    for (index, param) in params.iter().enumerate() {
        statement.raw_bind_parameter(index + 1, param.to_sqlite())?;
    }
    Ok(())
}

fn postgres_params<'p>(params: &'p [&'p dyn Param]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|param| *param as &(dyn ToSql + Sync)).collect()
}
