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
//! together with its first statement, so it costs no round trip of its own, and so are writes
//! the unit does not read back ([`Conn::defer`]): a transaction's closing writes and its
//! `COMMIT` are one round trip. Reads can go ahead the same way
//! ([`Conn::ahead`]): several reads that do not depend on each other's rows cost one round
//! trip.

use orderly_kit::trace::TraceParent;
use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::ClientWrapper;
use futures_util::future::try_join_all;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
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

/// A list of integers bound as one parameter: an `int8[]` on PostgreSQL (`= ANY($n)`), a JSON
/// array on SQLite (`IN (SELECT value FROM json_each($n))`), so a statement names any number of
/// rows at once.
#[derive(Debug, Clone)]
pub struct IntList(pub Vec<i64>);

impl ToSql for IntList {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <Vec<i64> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl Param for IntList {
    fn to_sqlite(&self) -> ToSqlOutput<'_> {
        let mut json = String::with_capacity(self.0.len() * 8 + 2);
        json.push('[');
        for (index, value) in self.0.iter().enumerate() {
            if index > 0 {
                json.push(',');
            }
            json.push_str(itoa::Buffer::new().format(*value));
        }
        json.push(']');
        ToSqlOutput::from(json)
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
    /// The span that started the unit, when spans are exported: what the unit records for
    /// later work to continue (an event's publication).
    trace: Option<TraceParent>,
}

enum Inner<'a> {
    Sqlite(&'a mut rusqlite::Connection),
    Postgres {
        client: &'a ClientWrapper,
        /// The unit is one transaction (else each statement commits on its own).
        transaction: bool,
        /// A transaction was asked for and `BEGIN` is not sent yet: it goes with the first
        /// statement.
        begin_pending: bool,
        /// Writes and reads to send with the next statement.
        deferred: Vec<Deferred>,
        /// Rows of reads sent ahead, by slot, until they are fetched.
        fetched: Vec<Option<Vec<tokio_postgres::Row>>>,
    },
}

/// A read sent ahead of the unit's next statement ([`Conn::ahead`]); [`Conn::fetch`] gives
/// its rows.
#[must_use = "a read sent ahead is fetched"]
pub struct Ahead<T> {
    state: AheadState<T>,
}

enum AheadState<T> {
    /// SQLite ran it when it was asked for.
    Read(Vec<T>),
    /// PostgreSQL sends it with the next statement; its rows wait in `fetched[slot]`.
    Queued { slot: usize, map: fn(&Row<'_>) -> Result<T, DbError> },
}

/// A PostgreSQL write or read waiting for the next statement, its parameters already encoded.
struct Deferred {
    statement: tokio_postgres::Statement,
    params: Vec<Encoded>,
    purpose: Purpose,
}

enum Purpose {
    Write,
    /// A read whose rows go to this slot of `fetched`.
    Read(usize),
}

/// What a deferred statement came back with.
enum Outcome {
    Written,
    Rows(Vec<tokio_postgres::Row>),
}

/// A parameter in PostgreSQL's binary form (`None` is NULL).
#[derive(Debug)]
struct Encoded(Option<Bytes>);

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    /// Checked when it was encoded, against the statement's own parameter types.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> Conn<'a> {
    pub(super) fn sqlite(connection: &'a mut rusqlite::Connection, trace: Option<TraceParent>) -> Self {
        Self { inner: Inner::Sqlite(connection), trace }
    }

    pub(super) fn postgres(client: &'a ClientWrapper, in_transaction: bool, trace: Option<TraceParent>) -> Self {
        let (deferred, fetched) = (Vec::new(), Vec::new());
        let begin_pending = in_transaction;
        let inner = Inner::Postgres { client, transaction: in_transaction, begin_pending, deferred, fetched };
        Self { inner, trace }
    }

    /// The span that started this unit of work, as a `traceparent`; `None` when spans are not
    /// exported.
    pub fn trace(&self) -> Option<TraceParent> {
        self.trace
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
            Inner::Postgres { client, begin_pending, deferred, fetched, .. } => {
                let statement = client.prepare_cached(sql).await?;
                let params = postgres_params(params);
                pipelined(client, begin_pending, deferred, fetched, client.execute(&statement, &params)).await
            }
        }
    }

    /// A write whose outcome (not even its row count) the unit of work does not read. On
    /// SQLite it runs now; on PostgreSQL it is sent with the unit's next statement, or with its
    /// `COMMIT`, saving a round trip. A failure fails that next statement, so the transaction
    /// does not commit.
    pub async fn defer(&mut self, sql: &str, params: &[&dyn Param]) -> Result<(), DbError> {
        match &mut self.inner {
            Inner::Sqlite(_) => self.execute(sql, params).await.map(drop),
            Inner::Postgres { client, deferred, .. } => {
                let (statement, params) = encoded(client, sql, params).await?;
                deferred.push(Deferred { statement, params, purpose: Purpose::Write });
                Ok(())
            }
        }
    }

    /// A read sent ahead: on PostgreSQL it goes with the unit's next statement (before it), so
    /// that reads which do not need each other's rows share one round trip; on SQLite it runs
    /// now. [`Conn::fetch`] gives its rows, mapped by `map`.
    pub async fn ahead<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        map: fn(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Ahead<T>, DbError> {
        match &mut self.inner {
            Inner::Sqlite(_) => Ok(Ahead { state: AheadState::Read(self.query(sql, params, map).await?) }),
            Inner::Postgres { client, deferred, fetched, .. } => {
                let (statement, params) = encoded(client, sql, params).await?;
                let slot = fetched.len();
                fetched.push(None);
                deferred.push(Deferred { statement, params, purpose: Purpose::Read(slot) });
                Ok(Ahead { state: AheadState::Queued { slot, map } })
            }
        }
    }

    /// The rows of a read sent ahead; sends it now (with whatever else waits) if no statement
    /// has taken it yet.
    pub async fn fetch<T>(&mut self, ahead: Ahead<T>) -> Result<Vec<T>, DbError> {
        let (slot, map) = match ahead.state {
            AheadState::Read(rows) => return Ok(rows),
            AheadState::Queued { slot, map } => (slot, map),
        };
        let Inner::Postgres { client, begin_pending, deferred, fetched, .. } = &mut self.inner else {
            unreachable!("only PostgreSQL queues reads")
        };
        if fetched.get(slot).is_some_and(Option::is_none) {
            pipelined(client, begin_pending, deferred, fetched, async { Ok(()) }).await?;
        }
        let rows = fetched
            .get_mut(slot)
            .and_then(Option::take)
            .ok_or_else(|| DbError::Other("a read sent ahead has no rows: it failed, or was fetched before".into()))?;
        rows.iter().map(|row| map(&Row::Postgres(row))).collect()
    }

    /// [`Conn::fetch`] of a read that returns at most one row.
    pub async fn fetch_opt<T>(&mut self, ahead: Ahead<T>) -> Result<Option<T>, DbError> {
        at_most_one(self.fetch(ahead).await?)
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
            Inner::Postgres { client, begin_pending, deferred, fetched, .. } => {
                let statement = client.prepare_cached(sql).await?;
                let params = postgres_params(params);
                let rows =
                    pipelined(client, begin_pending, deferred, fetched, client.query(&statement, &params)).await?;
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
        at_most_one(self.query(sql, params, map).await?)
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
            Inner::Postgres { client, begin_pending, deferred, fetched, .. } => {
                pipelined(client, begin_pending, deferred, fetched, async { Ok(()) }).await?;
                Ok(client.batch_execute(sql).await?)
            }
        }
    }

    /// Ends a unit of work on PostgreSQL. A transaction ends with `COMMIT`, sent with the
    /// writes still deferred, or `ROLLBACK`, which drops them; with neither when no statement
    /// was sent (so `BEGIN` never was). A unit without a transaction sends its deferred writes
    /// whatever its outcome, as SQLite ran them when they were asked for.
    pub(super) async fn finish(&mut self, commit: bool) -> Result<(), DbError> {
        let Inner::Postgres { client, transaction, begin_pending, deferred, fetched } = &mut self.inner else {
            return Ok(());
        };
        // Reads nobody fetched are not worth sending.
        deferred.retain(|statement| matches!(statement.purpose, Purpose::Write));
        if !*transaction {
            return pipelined(client, begin_pending, deferred, fetched, async { Ok(()) }).await;
        }
        if !commit {
            deferred.clear();
        }
        if *begin_pending && deferred.is_empty() {
            return Ok(());
        }
        let end = client.prepare_cached(if commit { "COMMIT" } else { "ROLLBACK" }).await?;
        pipelined(client, begin_pending, deferred, fetched, client.execute(&end, &[])).await.map(drop)
    }
}

/// Sends `BEGIN` when it is due and the deferred writes and reads, then `current`, as one
/// pipeline (a join polls its parts in order, so every request is written before any answer
/// is awaited), and keeps the rows of the reads. The server runs them in order; the first to
/// fail fails the rest of the transaction, and its error is the one returned.
async fn pipelined<T>(
    client: &ClientWrapper,
    begin_pending: &mut bool,
    deferred: &mut Vec<Deferred>,
    fetched: &mut [Option<Vec<tokio_postgres::Row>>],
    current: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    if !*begin_pending && deferred.is_empty() {
        return Ok(current.await?);
    }
    let begin = if std::mem::take(begin_pending) { Some(client.prepare_cached("BEGIN").await?) } else { None };
    let statements = std::mem::take(deferred);
    let ahead = async {
        let begin = async {
            match &begin {
                Some(begin) => client.execute(begin, &[]).await.map(drop),
                None => Ok(()),
            }
        };
        let sent = try_join_all(statements.iter().map(|deferred| async move {
            match deferred.purpose {
                Purpose::Write => {
                    client.execute_raw(&deferred.statement, &deferred.params).await.map(|_| Outcome::Written)
                }
                Purpose::Read(_) => {
                    let params: Vec<&(dyn ToSql + Sync)> = deferred.params.iter().map(|p| p as _).collect();
                    client.query(&deferred.statement, &params).await.map(Outcome::Rows)
                }
            }
        }));
        tokio::try_join!(begin, sent)
    };
    let (((), outcomes), value) = tokio::try_join!(ahead, current)?;
    for (deferred, outcome) in statements.into_iter().zip(outcomes) {
        match (deferred.purpose, outcome) {
            (Purpose::Write, Outcome::Written) => {}
            (Purpose::Read(slot), Outcome::Rows(rows)) => fetched[slot] = Some(rows),
            _ => unreachable!("each statement comes back as what it was sent as"),
        }
    }
    Ok(value)
}

/// The one row of `rows`, if any; more is an error.
fn at_most_one<T>(mut rows: Vec<T>) -> Result<Option<T>, DbError> {
    if rows.len() > 1 {
        return Err(DbError::Other(format!("expected at most one row, got {}", rows.len())));
    }
    Ok(rows.pop())
}

/// A prepared statement and `params` encoded for it, to be sent later.
async fn encoded(
    client: &ClientWrapper,
    sql: &str,
    params: &[&dyn Param],
) -> Result<(tokio_postgres::Statement, Vec<Encoded>), DbError> {
    let statement = client.prepare_cached(sql).await?;
    let types = statement.params();
    if types.len() != params.len() {
        return Err(DbError::Other(format!("statement takes {} parameters, {} given", types.len(), params.len())));
    }
    let mut buffer = BytesMut::new();
    let mut encoded = Vec::with_capacity(params.len());
    for (param, ty) in params.iter().zip(types) {
        let value = match param.to_sql_checked(ty, &mut buffer) {
            Ok(IsNull::No) => Some(buffer.split().freeze()),
            Ok(IsNull::Yes) => None,
            Err(error) => return Err(DbError::Other(format!("cannot encode a parameter: {error}"))),
        };
        encoded.push(Encoded(value));
    }
    Ok((statement, encoded))
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::DatabaseConfig;
    use crate::db::{Database, DbError};

    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        database: DatabaseConfig,
    }

    async fn connect(url: &str) -> Database {
        let settings = Settings::parse_from(["test", "--database-url", url]);
        Database::connect(&settings.database).await.expect("the test database connects")
    }

    async fn ids(db: &Database, table: &str) -> Vec<i64> {
        let sql = format!("SELECT id FROM {table} ORDER BY id");
        db.write().run(async move |conn| conn.query(&sql, &[], |row| row.get(0)).await).await.unwrap()
    }

    /// Deferred writes take part in their transaction as if they had run when asked for: the
    /// next statement sees them, they commit with it, and one that fails leaves nothing of the
    /// transaction behind.
    async fn deferred_writes_stand_or_fall_with_their_transaction(db: Database) {
        let table = format!("deferred_{}", uuid::Uuid::new_v4().simple());
        let create = format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)");
        db.write().run(async move |conn| conn.batch(&create).await).await.unwrap();
        let insert: &'static str = format!("INSERT INTO {table} (id) VALUES ($1)").leak();

        let seen = db
            .write()
            .transaction(async move |conn| {
                conn.defer(insert, &[&1_i64]).await?;
                conn.defer(insert, &[&2_i64]).await?;
                let sql = format!("SELECT count(*) FROM {}", insert.split(' ').nth(2).unwrap());
                conn.query_one(&sql, &[], |row| row.get::<i64>(0)).await
            })
            .await
            .unwrap();
        assert_eq!(seen, 2, "the next statement sees the deferred writes");
        assert_eq!(ids(&db, &table).await, [1, 2], "and they commit with the transaction");

        let duplicate: Result<(), DbError> = db
            .write()
            .transaction(async move |conn| {
                conn.execute(insert, &[&3_i64]).await?;
                conn.defer(insert, &[&4_i64]).await?;
                conn.defer(insert, &[&1_i64]).await
            })
            .await;
        assert!(duplicate.is_err_and(|error| error.is_unique_violation()), "the failing write's own error");
        assert_eq!(ids(&db, &table).await, [1, 2], "nothing of a transaction whose deferred write failed");

        let drop = format!("DROP TABLE {table}");
        db.write().run(async move |conn| conn.batch(&drop).await).await.unwrap();
    }

    /// A read sent ahead sees exactly what its unit did before it was asked for, whenever it
    /// is sent and fetched: with the next statement, on its own, or after other reads.
    async fn reads_sent_ahead_see_what_came_before_them(db: Database) {
        let table = format!("ahead_{}", uuid::Uuid::new_v4().simple());
        let create = format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)");
        db.write().run(async move |conn| conn.batch(&create).await).await.unwrap();
        let insert: &'static str = format!("INSERT INTO {table} (id) VALUES ($1)").leak();
        let count: &'static str = format!("SELECT count(*) FROM {table}").leak();

        let counts = db
            .write()
            .transaction(async move |conn| {
                let count_row = |row: &super::Row<'_>| row.get::<i64>(0);
                let none = conn.ahead(count, &[], count_row).await?;
                conn.execute(insert, &[&1_i64]).await?;
                let one = conn.ahead(count, &[], count_row).await?;
                conn.defer(insert, &[&2_i64]).await?;
                let two = conn.ahead(count, &[], count_row).await?;
                let three_later = {
                    conn.execute(insert, &[&3_i64]).await?;
                    conn.ahead(count, &[], count_row).await?
                };
                let fetched = [
                    conn.fetch_opt(three_later).await?,
                    conn.fetch_opt(none).await?,
                    conn.fetch_opt(one).await?,
                    conn.fetch_opt(two).await?,
                ];
                Ok::<_, DbError>(fetched)
            })
            .await
            .unwrap();
        assert_eq!(counts, [Some(3), Some(0), Some(1), Some(2)]);
        assert_eq!(ids(&db, &table).await, [1, 2, 3], "the transaction committed");

        let drop = format!("DROP TABLE {table}");
        db.write().run(async move |conn| conn.batch(&drop).await).await.unwrap();
    }

    #[tokio::test]
    async fn sqlite_reads_sent_ahead_see_what_came_before_them() {
        let path = std::env::temp_dir().join(format!("orderly-ahead-{}.db", uuid::Uuid::new_v4().simple()));
        reads_sent_ahead_see_what_came_before_them(connect(&format!("sqlite://{}", path.display())).await).await;
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn postgres_reads_sent_ahead_see_what_came_before_them() {
        let Some(url) = test_database_url() else { return };
        reads_sent_ahead_see_what_came_before_them(connect(&url).await).await;
    }

    #[tokio::test]
    async fn sqlite_deferred_writes_stand_or_fall_with_their_transaction() {
        let path = std::env::temp_dir().join(format!("orderly-deferred-{}.db", uuid::Uuid::new_v4().simple()));
        deferred_writes_stand_or_fall_with_their_transaction(connect(&format!("sqlite://{}", path.display())).await)
            .await;
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn postgres_deferred_writes_stand_or_fall_with_their_transaction() {
        let Some(url) = test_database_url() else { return };
        deferred_writes_stand_or_fall_with_their_transaction(connect(&url).await).await;
    }

    /// The PostgreSQL suite's database; `None` (the test skips) only off CI.
    fn test_database_url() -> Option<String> {
        match std::env::var("ORDERLY_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("CI=true but ORDERLY_TEST_DATABASE_URL is unset")
            }
            _ => {
                eprintln!("skipping: ORDERLY_TEST_DATABASE_URL is unset");
                None
            }
        }
    }
}
