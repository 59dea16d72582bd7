//! Database connections: one code path over SQLite (embedded) and PostgreSQL.
//!
//! Writes go through [`Database::write`], reads that may be served by a replica through
//! [`Database::read`]. On SQLite the write pool holds a single connection: SQLite admits one
//! writer at a time anyway, and queueing writers in the pool (bounded by the acquire timeout)
//! avoids `SQLITE_BUSY` failures under concurrency; reads use a separate read-only pool and
//! run beside the writer thanks to WAL. On PostgreSQL the primary is one pool, and a replica,
//! when configured, another (see [`replica`]).

mod replica;

use std::str::FromStr;
use std::time::Duration;

use sea_orm::sqlx::ConnectOptions;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqlxPostgresConnector, SqlxSqliteConnector};
use sea_orm_migration::MigratorTrait;

use crate::config::{ConfigError, DatabaseConfig};
use crate::migrations::Migrator;

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

/// The application's database handles.
#[derive(Debug, Clone)]
pub struct Database {
    write: DatabaseConnection,
    /// Sees every committed write: the SQLite read pool, or the PostgreSQL primary.
    current: DatabaseConnection,
    replica: Option<replica::Replica>,
}

impl Database {
    /// Connects both pools; on SQLite the file and its folder are created when missing.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        match DatabaseKind::of(config)? {
            DatabaseKind::Sqlite => Self::connect_sqlite(config).await,
            DatabaseKind::Postgres => {
                let write = connect_postgres(&config.database_url, "ORDERLY_DATABASE_URL", config).await?;
                let replica = match &config.database_read_url {
                    Some(read_url) => Some(replica::Replica::connect(config, read_url)?),
                    None => None,
                };
                Ok(Self { current: write.clone(), write, replica })
            }
        }
    }

    async fn connect_sqlite(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let setting = "ORDERLY_DATABASE_URL";
        let options = SqliteConnectOptions::from_str(&config.database_url)
            .map_err(|error| ConfigError::new(setting, error.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .disable_statement_logging();
        if options.get_filename() == std::path::Path::new(":memory:") {
            return Err(ConfigError::new(setting, "an in-memory database cannot be shared by the pools; use a file"));
        }
        if let Some(folder) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|error| ConfigError::new(setting, format!("cannot create {}: {error}", folder.display())))?;
        }
        let unreachable =
            |error: sea_orm::sqlx::Error| ConfigError::new(setting, format!("cannot open the database: {error}"));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.database_acquire_timeout)
            // A ping per checkout doubles the round trips of every query; a dead connection
            // fails its query instead, which answers 503 and is dropped from the pool.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        // Every SQLite connection is a thread of its own; beyond the CPUs they only contend
        // (measured: 2 readers serve order lists 25 % faster than 16 on one core, in 20 MiB less).
        let cpus = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let read = SqlitePoolOptions::new()
            .max_connections(config.database_max_connections.min(cpus.max(2)))
            .acquire_timeout(config.database_acquire_timeout)
            // A ping per checkout doubles the round trips of every query; a dead connection
            // fails its query instead, which answers 503 and is dropped from the pool.
            .test_before_acquire(false)
            // The OS page cache holds the file for every reader; a small private cache each
            // keeps memory flat as readers are added.
            .connect_with(options.read_only(true).pragma("cache_size", "-256"))
            .await
            .map_err(unreachable)?;
        let read = SqlxSqliteConnector::from_sqlx_sqlite_pool(read);
        Ok(Self { write: SqlxSqliteConnector::from_sqlx_sqlite_pool(write), current: read, replica: None })
    }

    /// The primary: every write and every read that must see the latest write.
    pub fn write(&self) -> &DatabaseConnection {
        &self.write
    }

    /// Lists and figures, which tolerate lag: the replica while it is usable (reachable and
    /// within `ORDERLY_DATABASE_READ_MAX_LAG`), else the same as [`Database::current`].
    pub fn read(&self) -> &DatabaseConnection {
        self.replica.as_ref().and_then(replica::Replica::usable).unwrap_or(&self.current)
    }

    /// Reads that must see every committed write but write nothing: single resources (a
    /// client follows a `Location` or reads back what it just wrote), credentials (a key just
    /// created must work), and loads that fill caches shared beyond one request. The primary
    /// on PostgreSQL; on SQLite the read pool, whose WAL readers see every commit without
    /// queueing behind the one writer.
    pub fn current(&self) -> &DatabaseConnection {
        &self.current
    }

    pub fn backend(&self) -> DbBackend {
        self.write.get_database_backend()
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.write, None).await
    }

    /// Checks the replica, when there is one, for as long as the instance runs.
    pub async fn watch_replica(self) {
        if let Some(replica) = self.replica {
            replica.watch_forever().await;
        }
    }

    /// Sets the pool gauges; called before metrics are rendered. The read pool is the SQLite
    /// read-only pool or the replica's; a PostgreSQL primary without replica reports one pool.
    pub fn publish_metrics(&self) {
        publish_pool_metrics("primary", &self.write);
        match &self.replica {
            Some(replica) => replica.publish_metrics(),
            None if self.backend() == DbBackend::Sqlite => publish_pool_metrics("read", &self.current),
            None => {}
        }
    }

    /// For readiness, when a replica is configured: "ok", or why lists read the primary.
    pub fn replica_status(&self) -> Option<String> {
        self.replica.as_ref().map(replica::Replica::status)
    }

    /// Readiness: the primary (and on SQLite the read pool) answers and no migration is
    /// pending. A replica is not required: without it lists read the primary.
    pub async fn check(&self) -> Result<(), String> {
        let ping = |db: &DatabaseConnection| {
            let db = db.clone();
            async move { db.execute_unprepared("SELECT 1").await.map(drop) }
        };
        ping(&self.write).await.map_err(|_| "primary database is unreachable".to_owned())?;
        if self.backend() == DbBackend::Sqlite {
            ping(&self.current).await.map_err(|_| "read database is unreachable".to_owned())?;
        }
        let pending = Migrator::get_pending_migrations(&self.write)
            .await
            .map_err(|_| "cannot read the migration table".to_owned())?;
        if pending.is_empty() { Ok(()) } else { Err(format!("{} migration(s) pending", pending.len())) }
    }
}

/// Connections open (`in_use` + `idle`) and the most allowed, of one pool.
fn publish_pool_metrics(pool: &'static str, connection: &DatabaseConnection) {
    let (size, idle, max) = match connection {
        DatabaseConnection::SqlxSqlitePoolConnection(_) => {
            let pool = connection.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle(), pool.options().get_max_connections())
        }
        DatabaseConnection::SqlxPostgresPoolConnection(_) => {
            let pool = connection.get_postgres_connection_pool();
            (pool.size(), pool.num_idle(), pool.options().get_max_connections())
        }
        _ => return,
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
    metrics::gauge!("orderly_db_pool_connections", "pool" => pool, "state" => "in_use").set(f64::from(size - idle));
    metrics::gauge!("orderly_db_pool_connections", "pool" => pool, "state" => "idle").set(f64::from(idle));
    metrics::gauge!("orderly_db_pool_max_connections", "pool" => pool).set(f64::from(max));
}

async fn connect_postgres(
    url: &str,
    setting: &'static str,
    config: &DatabaseConfig,
) -> Result<DatabaseConnection, ConfigError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| ConfigError::new(setting, "is not a valid PostgreSQL URL"))?
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(config.database_acquire_timeout)
        // A ping per checkout doubles the round trips of every query; a dead connection
        // fails its query instead, which answers 503 and is dropped from the pool.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        // The URL may hold a password: name the setting, never echo its value.
        .map_err(|error| ConfigError::new(setting, format!("cannot connect: {}", describe_connect_error(&error))))?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

fn describe_connect_error(error: &sea_orm::sqlx::Error) -> String {
    match error {
        sea_orm::sqlx::Error::Database(db) => db.message().to_owned(),
        sea_orm::sqlx::Error::Io(io) => io.to_string(),
        sea_orm::sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        other => other.to_string(),
    }
}

/// Whether a database error is a unique-constraint violation (mapped to 409 by callers).
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// Current time at the precision both backends store (microseconds), so a value read back
/// equals the value written and representations are identical on SQLite and PostgreSQL.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta};
    chrono::Utc::now().duration_trunc(TimeDelta::microseconds(1)).expect("microsecond truncation cannot overflow")
}
