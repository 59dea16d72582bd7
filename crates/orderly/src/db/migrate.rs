//! Schema migrations: SQL files per backend (`crates/orderly/migrations/{postgres,sqlite}/`),
//! embedded in the binary, applied in version order, each in its own transaction with its
//! record in `orderly_migrations` (version, name, SHA-256 of the text, when).
//!
//! A landed migration is never edited: an applied one whose text no longer matches its
//! checksum stops the start, as does a database with versions this binary does not know
//! (made by a newer release). On PostgreSQL a session advisory lock serialises instances that
//! start at once; the second finds the work done.
//!
//! Databases made by releases whose migrations were Rust code carry `seaql_migrations`
//! instead: its rows name the same migrations, so they are recorded here as applied (the
//! files reproduce them exactly) and the rest is applied as usual.

use ring::digest::{SHA256, digest};

use super::conn::{Backend, Conn, DbError};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

macro_rules! migrations {
    ($($version:literal $name:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            postgres: include_str!(concat!("../../migrations/postgres/", $name, ".sql")),
            sqlite: include_str!(concat!("../../migrations/sqlite/", $name, ".sql")),
        }),*]
    };
}

/// Every migration, oldest first. Append only.
pub const MIGRATIONS: &[Migration] = migrations![
    1 "0001_accounts",
    2 "0002_catalog",
    3 "0003_idempotency",
    4 "0004_orders",
    5 "0005_order_items_inline",
    6 "0006_payments",
    7 "0007_unsettled_charges",
    8 "0008_order_idempotency_claims",
    9 "0009_payment_attempts",
    10 "0010_partial_attempt_indexes",
    11 "0011_events",
    12 "0012_jobs_reports",
    13 "0013_lean_outbox",
    14 "0014_webhooks",
    15 "0015_trace_context",
];

/// Any key, held only while migrating; taken by every instance of every Orderly deployment
/// sharing the server, which costs nothing since migrating is rare and short.
const ADVISORY_LOCK: i64 = 0x6f72_6465_726c_7901;

impl Migration {
    fn text(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        }
    }

    fn checksum(&self, backend: Backend) -> String {
        orderly_kit::hex::lower(digest(&SHA256, self.text(backend).as_bytes()).as_ref())
    }
}

/// Why migrating stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("migration {version} ({name}) was changed after it was applied (checksum mismatch)")]
    Changed { version: i64, name: String },
    #[error("the database has migration {version} ({name}), which this release does not know; run a newer release")]
    Unknown { version: i64, name: String },
    #[error("the database was made by a release older than 0.1 ({0}); upgrade through 0.1 first")]
    Unrecognised(String),
}

/// An applied migration, as recorded.
struct Applied {
    version: i64,
    name: String,
    checksum: String,
}

/// Applies every pending migration up to `target` (all when `None`), on a connection outside
/// any transaction.
pub(super) async fn up(conn: &mut Conn<'_>, target: Option<i64>) -> Result<(), MigrateError> {
    let backend = conn.backend();
    if backend == Backend::Postgres {
        conn.execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK]).await?;
    }
    let outcome = apply(conn, target).await;
    if backend == Backend::Postgres {
        // Also released when the connection closes, should this fail.
        conn.execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK]).await?;
    }
    outcome
}

async fn apply(conn: &mut Conn<'_>, target: Option<i64>) -> Result<(), MigrateError> {
    let backend = conn.backend();
    conn.batch(
        "CREATE TABLE IF NOT EXISTS orderly_migrations (
            version bigint NOT NULL PRIMARY KEY,
            name varchar(255) NOT NULL,
            checksum varchar(64) NOT NULL,
            applied_at bigint NOT NULL
        )",
    )
    .await?;
    let mut applied = recorded(conn).await?;
    if applied.is_empty() {
        adopt_earlier_releases(conn).await?;
        applied = recorded(conn).await?;
    }
    verify(&applied, backend)?;
    let last = applied.last().map_or(0, |m| m.version);
    for migration in MIGRATIONS.iter().filter(|m| m.version > last && target.is_none_or(|t| m.version <= t)) {
        conn.batch("BEGIN").await?;
        let outcome = async {
            conn.batch(migration.text(backend)).await?;
            record(conn, migration, backend).await
        }
        .await;
        match outcome {
            Ok(()) => conn.batch("COMMIT").await?,
            Err(error) => {
                let _ = conn.batch("ROLLBACK").await;
                return Err(error.into());
            }
        }
        tracing::info!(migration.version = migration.version, migration.name = migration.name, "migration applied");
    }
    Ok(())
}

/// How many known migrations are not applied yet (readiness).
pub(super) async fn pending(conn: &mut Conn<'_>) -> Result<usize, DbError> {
    let last: Option<i64> =
        conn.query_opt("SELECT max(version) FROM orderly_migrations", &[], |row| row.get(0)).await?.flatten();
    let last = last.unwrap_or(0);
    Ok(MIGRATIONS.iter().filter(|m| m.version > last).count())
}

async fn recorded(conn: &mut Conn<'_>) -> Result<Vec<Applied>, DbError> {
    conn.query("SELECT version, name, checksum FROM orderly_migrations ORDER BY version", &[], |row| {
        Ok(Applied { version: row.get(0)?, name: row.get(1)?, checksum: row.get(2)? })
    })
    .await
}

fn verify(applied: &[Applied], backend: Backend) -> Result<(), MigrateError> {
    for record in applied {
        match MIGRATIONS.iter().find(|m| m.version == record.version) {
            None => return Err(MigrateError::Unknown { version: record.version, name: record.name.clone() }),
            Some(known) if known.checksum(backend) != record.checksum => {
                return Err(MigrateError::Changed { version: record.version, name: record.name.clone() });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn record(conn: &mut Conn<'_>, migration: &Migration, backend: Backend) -> Result<(), DbError> {
    let applied_at = chrono::Utc::now().timestamp();
    conn.execute(
        "INSERT INTO orderly_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
        &[&migration.version, &migration.name, &migration.checksum(backend), &applied_at],
    )
    .await
    .map(drop)
}

/// Records the migrations an earlier release applied (listed in `seaql_migrations` as
/// `m0001_accounts` …), which the files reproduce one for one.
async fn adopt_earlier_releases(conn: &mut Conn<'_>) -> Result<(), MigrateError> {
    let backend = conn.backend();
    let exists = match backend {
        Backend::Postgres => {
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'seaql_migrations' AND table_schema = current_schema()"
        }
        Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
    };
    if conn.query_one(exists, &[], |row| row.get::<i64>(0)).await? == 0 {
        return Ok(());
    }
    let earlier: Vec<String> =
        conn.query("SELECT version FROM seaql_migrations ORDER BY version", &[], |row| row.get(0)).await?;
    for (index, name) in earlier.iter().enumerate() {
        let migration = MIGRATIONS
            .get(index)
            .filter(|m| name.strip_prefix('m') == Some(m.name))
            .ok_or_else(|| MigrateError::Unrecognised(format!("unknown migration {name}")))?;
        record(conn, migration, backend).await?;
    }
    Ok(())
}
