//! Database access: one code path over SQLite (embedded) and PostgreSQL.
//!
//! Work reaches the database as *units of work*: an async closure given a [`Conn`], run by
//! [`Pool::run`] (each statement commits on its own) or [`Pool::transaction`] (all or
//! nothing). Writes go through [`Database::write`]; reads that may be served by a replica
//! through [`Database::read`]; reads that must see every commit through
//! [`Database::current`].
//!
//! - SQLite: the unit runs on a database thread of its own (see [`sqlite`]): one writer, and a
//!   few read-only connections beside it thanks to WAL.
//! - PostgreSQL: `tokio-postgres` connections pooled by `deadpool-postgres`, checked out
//!   without a round trip (a closed connection is replaced; a broken one fails its query,
//!   which answers 503); statements are prepared once per connection. A replica, when
//!   configured, is another pool (see [`replica`]).
//!
//! Waiting longer than `ORDERLY_DATABASE_ACQUIRE_TIMEOUT` for a connection is
//! [`DbError::Unavailable`], which the API answers with 503.

mod conn;
pub mod migrate;
mod replica;
mod sqlite;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, RecyclingMethod, Runtime};
use orderly_kit::trace::TraceParent;
use tracing::Instrument;

pub use conn::{Ahead, Backend, Column, Conn, DbError, IntList, Param, Row};
pub use migrate::MigrateError;

use crate::config::{ConfigError, DatabaseConfig};

/// Which backend a configuration selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded: one instance, state in a local file.
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    /// Reads the backend from the URL scheme, rejecting unsupported ones and replica misuse.
    pub fn of(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let url = config.database_url.as_str();
        if url.starts_with("sqlite:") {
            if config.database_read_url.is_some() {
                return Err(ConfigError::new("ORDERLY_DATABASE_READ_URL", "a read replica needs PostgreSQL"));
            }
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(ConfigError::new("ORDERLY_DATABASE_URL", "must start with sqlite:// or postgres://"))
        }
    }
}

/// The application's database handles; cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pools: Arc<Pools>,
}

// One per process, behind an `Arc`: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Pools {
    Sqlite { writer: sqlite::Workers, readers: sqlite::Workers },
    Postgres { primary: deadpool_postgres::Pool, replica: Option<replica::Replica> },
}

/// Where a unit of work runs: a set of SQLite threads or a PostgreSQL pool.
#[derive(Clone, Copy)]
pub struct Pool<'a> {
    target: Target<'a>,
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Sqlite(&'a sqlite::Workers),
    Postgres(&'a deadpool_postgres::Pool),
}

impl Database {
    /// Connects; on SQLite the file and its folder are created when missing.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let pools = match DatabaseKind::of(config)? {
            DatabaseKind::Sqlite => {
                let setting = "ORDERLY_DATABASE_URL";
                let path = sqlite::path_of(&config.database_url).map_err(|error| ConfigError::new(setting, error))?;
                let writer = sqlite::Workers::writer(&path, config.database_acquire_timeout)
                    .map_err(|error| ConfigError::new(setting, error))?;
                // Every reader is a thread; beyond the CPUs they only contend (measured: 2
                // readers serve order lists 25 % faster than 16 on one core, in 20 MiB less).
                let cpus = std::thread::available_parallelism().map_or(2, usize::from);
                let count = usize::try_from(config.database_max_connections).unwrap_or(usize::MAX).min(cpus.max(2));
                let readers = sqlite::Workers::readers(&path, count, config.database_acquire_timeout)
                    .map_err(|error| ConfigError::new(setting, error))?;
                Pools::Sqlite { writer, readers }
            }
            DatabaseKind::Postgres => {
                let setting = "ORDERLY_DATABASE_URL";
                let primary = postgres_pool(&config.database_url, setting, config)?;
                // Fail at start, naming the setting, rather than on the first request.
                if let Err(error) = primary.get().await {
                    // The URL may hold a password: name the setting, never echo its value.
                    return Err(ConfigError::new(setting, format!("cannot connect: {}", pool_error(error))));
                }
                let replica = match &config.database_read_url {
                    Some(read_url) => Some(replica::Replica::connect(config, read_url)?),
                    None => None,
                };
                Pools::Postgres { primary, replica }
            }
        };
        Ok(Self { pools: Arc::new(pools) })
    }

    /// The primary: every write and every read that must see the latest write.
    pub fn write(&self) -> Pool<'_> {
        match &*self.pools {
            Pools::Sqlite { writer, .. } => Pool { target: Target::Sqlite(writer) },
            Pools::Postgres { primary, .. } => Pool { target: Target::Postgres(primary) },
        }
    }

    /// Lists and figures, which tolerate lag: the replica while it is usable (reachable and
    /// within `ORDERLY_DATABASE_READ_MAX_LAG`), else the same as [`Database::current`].
    pub fn read(&self) -> Pool<'_> {
        match &*self.pools {
            Pools::Postgres { replica: Some(replica), .. } if replica.usable() => {
                Pool { target: Target::Postgres(replica.pool()) }
            }
            _ => self.current(),
        }
    }

    /// Reads that must see every committed write but write nothing: single resources (a
    /// client follows a `Location` or reads back what it just wrote), credentials (a key just
    /// created must work), and loads that fill caches shared beyond one request. The primary
    /// on PostgreSQL; on SQLite the read-only threads, whose WAL readers see every commit
    /// without queueing behind the one writer.
    pub fn current(&self) -> Pool<'_> {
        match &*self.pools {
            Pools::Sqlite { readers, .. } => Pool { target: Target::Sqlite(readers) },
            Pools::Postgres { primary, .. } => Pool { target: Target::Postgres(primary) },
        }
    }

    pub fn backend(&self) -> Backend {
        match &*self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        self.migrate_up_to(None).await
    }

    /// Applies pending migrations up to `version` (all when `None`).
    pub async fn migrate_up_to(&self, version: Option<i64>) -> Result<(), MigrateError> {
        self.write().run_alone(None, async move |conn| migrate::up(conn, version).await).await
    }

    /// Checks the replica, when there is one, for as long as the instance runs.
    pub async fn watch_replica(self) {
        if let Pools::Postgres { replica: Some(replica), .. } = &*self.pools {
            replica.clone().watch_forever().await;
        }
    }

    /// Sets the pool gauges; called before metrics are rendered. The read pool is the SQLite
    /// read-only threads or the replica's; a PostgreSQL primary without replica reports one
    /// pool.
    pub fn publish_metrics(&self) {
        match &*self.pools {
            Pools::Sqlite { writer, readers } => {
                publish_pool_metrics("primary", writer.usage());
                publish_pool_metrics("read", readers.usage());
            }
            Pools::Postgres { primary, replica } => {
                publish_pool_metrics("primary", postgres_usage(primary));
                if let Some(replica) = replica {
                    replica.publish_metrics();
                }
            }
        }
    }

    /// For readiness, when a replica is configured: "ok", or why lists read the primary.
    pub fn replica_status(&self) -> Option<String> {
        match &*self.pools {
            Pools::Postgres { replica: Some(replica), .. } => Some(replica.status()),
            _ => None,
        }
    }

    /// Readiness: the primary (and on SQLite the read threads) answers and no migration is
    /// pending. A replica is not required: without it lists read the primary.
    pub async fn check(&self) -> Result<(), String> {
        let pending = self
            .write()
            .run(async |conn| migrate::pending(conn).await)
            .await
            .map_err(|_| "primary database is unreachable".to_owned())?;
        if self.backend() == Backend::Sqlite {
            self.current()
                .run(async |conn| conn.query_one("SELECT 1", &[], |row| row.get::<i64>(0)).await)
                .await
                .map_err(|_| "read database is unreachable".to_owned())?;
        }
        if pending == 0 { Ok(()) } else { Err(format!("{pending} migration(s) pending")) }
    }
}

impl Pool<'_> {
    /// Runs a unit of work whose statements each commit on their own.
    pub fn run<T, E, F>(&self, work: F) -> impl Future<Output = Result<T, E>>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        // The caller's span, for the unit to record beside what it writes.
        let caller = orderly_kit::trace::outgoing();
        let span = self.span("statements");
        // On the heap, as `transaction`'s.
        Box::pin(async move {
            match self.target {
                Target::Sqlite(workers) => workers.run(sqlite::Unit::Statements, caller, work).await,
                Target::Postgres(_) => self.run_alone(caller, work).await,
            }
        })
        .instrument(span)
    }

    /// The span of a unit of work (`Span::none()` when spans are not exported).
    fn span(&self, unit: &'static str) -> tracing::Span {
        let system = match self.target {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgresql",
        };
        orderly_kit::span!("db", otel.name = %format_args!("{system} {unit}"), otel.kind = "client", db.system.name = system)
    }

    /// As [`Pool::run`], for work that begins and ends transactions itself (migrations): on
    /// SQLite it never shares a transaction with other work.
    async fn run_alone<T, E, F>(&self, trace: Option<TraceParent>, work: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        match self.target {
            Target::Sqlite(workers) => workers.run(sqlite::Unit::Alone, trace, work).await,
            Target::Postgres(pool) => {
                let client = pool.get().await.map_err(pool_error)?;
                let mut conn = Conn::postgres(&client, false, trace);
                let result = work(&mut conn).await;
                conn.finish(result.is_ok()).await?;
                result
            }
        }
    }

    /// Runs a unit of work in one transaction: it commits when `work` returns `Ok`, and
    /// nothing of it remains when `work` fails, panics or is cancelled.
    pub fn transaction<T, E, F>(&self, work: F) -> impl Future<Output = Result<T, E>>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        // The caller's span, for the unit to record beside what it writes.
        let caller = orderly_kit::trace::outgoing();
        let span = self.span("transaction");
        // On the heap: the future holds the unit's, which holds every statement's, and kept
        // inline in its callers' futures it would be copied whole each time one of them moves.
        Box::pin(async move {
            match self.target {
                Target::Sqlite(workers) => workers.run(sqlite::Unit::Transaction, caller, work).await,
                Target::Postgres(pool) => {
                    let client = pool.get().await.map_err(pool_error)?;
                    let mut checkout = Checkout { client: Some(client), finished: false };
                    let client = checkout.client.as_ref().expect("checked out");
                    let mut conn = Conn::postgres(client, true, caller);
                    let result = work(&mut conn).await;
                    let end = conn.finish(result.is_ok()).await;
                    checkout.finished = end.is_ok();
                    end?;
                    result
                }
            }
        })
        // Around the box, so instrumenting moves a pointer, not the unit's future.
        .instrument(span)
    }
}

/// A PostgreSQL connection inside a transaction. If the transaction does not end (its future
/// was dropped mid-way, or `COMMIT`/`ROLLBACK` failed), the connection is closed rather than
/// returned to the pool, and the server rolls the transaction back.
struct Checkout {
    client: Option<Object>,
    finished: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.finished
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

fn postgres_pool(
    url: &str,
    setting: &'static str,
    config: &DatabaseConfig,
) -> Result<deadpool_postgres::Pool, ConfigError> {
    postgres_pool_builder(url, setting, config)?
        .build()
        .map_err(|error| ConfigError::new(setting, format!("cannot create the pool: {error}")))
}

fn postgres_pool_builder(
    url: &str,
    setting: &'static str,
    config: &DatabaseConfig,
) -> Result<deadpool_postgres::PoolBuilder, ConfigError> {
    let mut options: tokio_postgres::Config =
        url.parse().map_err(|_| ConfigError::new(setting, "is not a valid PostgreSQL URL"))?;
    if options.get_application_name().is_none() {
        options.application_name("orderly");
    }
    if options.get_connect_timeout().is_none() {
        options.connect_timeout(config.database_acquire_timeout);
    }
    // `Fast`: a checkout costs no round trip; a connection the server closed is seen as
    // closed and replaced, and one broken silently fails its query (503) and is dropped.
    let manager =
        Manager::from_config(options, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let max = usize::try_from(config.database_max_connections).unwrap_or(usize::MAX);
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(max)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.database_acquire_timeout))
        .create_timeout(Some(config.database_acquire_timeout)))
}

fn pool_error(error: deadpool_postgres::PoolError) -> DbError {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Timeout(_) => {
            DbError::Unavailable { cause: "pool_timeout", detail: "no connection was free in time".into() }
        }
        PoolError::Backend(error) => match DbError::from(error) {
            DbError::Other(detail) => DbError::Unavailable { cause: "unreachable", detail },
            other => other,
        },
        other => DbError::Unavailable { cause: "unreachable", detail: other.to_string() },
    }
}

/// Connections in use, open and idle, and the most allowed, of one pool.
#[derive(Debug, Clone, Copy)]
struct Usage {
    in_use: usize,
    idle: usize,
    max: usize,
}

fn postgres_usage(pool: &deadpool_postgres::Pool) -> Usage {
    let status = pool.status();
    Usage { in_use: status.size.saturating_sub(status.available), idle: status.available, max: status.max_size }
}

// Precision loss is impossible at pool sizes.
#[allow(clippy::cast_precision_loss)]
fn publish_pool_metrics(pool: &'static str, usage: Usage) {
    metrics::gauge!("orderly_db_pool_connections", "pool" => pool, "state" => "in_use").set(usage.in_use as f64);
    metrics::gauge!("orderly_db_pool_connections", "pool" => pool, "state" => "idle").set(usage.idle as f64);
    metrics::gauge!("orderly_db_pool_max_connections", "pool" => pool).set(usage.max as f64);
}

/// A configured duration as a span of stored time (saturating; no configured duration comes
/// near the 292 million years a `TimeDelta` holds).
pub fn span(duration: std::time::Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX)
}

/// Current time at the precision both backends store (microseconds), so a value read back
/// equals the value written and representations are identical on SQLite and PostgreSQL.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta};
    chrono::Utc::now().duration_trunc(TimeDelta::microseconds(1)).expect("microsecond truncation cannot overflow")
}
