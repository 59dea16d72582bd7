//! The read replica: its pool, and the watch that decides once a second whether lists and
//! figures may read it. They read the primary instead while the replica is unreachable or
//! further behind than `ORDERLY_DATABASE_READ_MAX_LAG`, so a failed or stalled replica costs
//! the primary some load, never an answer and never more staleness than the bound.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sea_orm::sqlx::{ConnectOptions, Connection};
use sea_orm::{DatabaseConnection, SqlxPostgresConnector};

use crate::config::{ConfigError, DatabaseConfig};

const SETTING: &str = "ORDERLY_DATABASE_READ_URL";
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A replica that cannot answer this small query within this time is treated as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How far behind the primary the replica is, in seconds: zero when it has replayed all it has
/// received (or is not a replica at all), else the age of the last transaction it replayed.
/// NULL when that is unknown (no transaction replayed since it started).
const LAG_QUERY: &str = "SELECT CASE \
    WHEN NOT pg_is_in_recovery() THEN 0::float8 \
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0::float8 \
    ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 END";

#[derive(Debug, Clone)]
pub(super) struct Replica {
    pool: DatabaseConnection,
    watch: Arc<Watch>,
}

#[derive(Debug)]
struct Watch {
    /// For the watch's own connection, apart from the pool so a busy pool is not mistaken
    /// for a failed replica.
    options: PgConnectOptions,
    max_lag: Duration,
    in_use: AtomicBool,
    /// As of the last check, as `f64` bits; NaN when unknown.
    lag_seconds: AtomicU64,
    state: Mutex<State>,
    started: Instant,
    /// When the replica last became reachable again, in nanoseconds after `started`. Pooled
    /// connections opened before then may be dead, and are replaced rather than used.
    reachable_since: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Unchecked,
    InUse,
    Behind { lag: Duration },
    LagUnknown,
    Unreachable { reason: String },
}

impl Replica {
    /// The pool connects lazily and the first check runs now: an instance starts, with lists
    /// on the primary, while its replica is down.
    pub(super) async fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| ConfigError::new(SETTING, "is not a valid PostgreSQL URL"))?
            .disable_statement_logging();
        let watch = Arc::new(Watch {
            options: options.clone(),
            max_lag: config.database_read_max_lag,
            in_use: AtomicBool::new(false),
            lag_seconds: AtomicU64::new(f64::NAN.to_bits()),
            state: Mutex::new(State::Unchecked),
            started: Instant::now(),
            reachable_since: AtomicU64::new(0),
        });
        let fresh = Arc::clone(&watch);
        let pool = PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(config.database_acquire_timeout)
            // As on the primary: no ping per checkout. A connection opened before the last
            // outage is dropped instead, so the first lists after a replica restart do not
            // fail on sockets the restart closed.
            .test_before_acquire(false)
            .before_acquire(move |_, meta| {
                let opened_after_outage = fresh.opened_after_outage(meta.age);
                Box::pin(async move { Ok(opened_after_outage) })
            })
            .connect_lazy_with(options);
        let replica = Self { pool: SqlxPostgresConnector::from_sqlx_postgres_pool(pool), watch };
        replica.check(&mut None).await;
        Ok(replica)
    }

    /// The pool, while lists may read it.
    pub(super) fn usable(&self) -> Option<&DatabaseConnection> {
        self.watch.in_use.load(Ordering::Relaxed).then_some(&self.pool)
    }

    /// Sets the replica gauges; called before metrics are rendered.
    pub(super) fn publish_metrics(&self) {
        let in_use = self.watch.in_use.load(Ordering::Relaxed);
        metrics::gauge!("orderly_db_replica_in_use").set(if in_use { 1.0 } else { 0.0 });
        let lag = f64::from_bits(self.watch.lag_seconds.load(Ordering::Relaxed));
        metrics::gauge!("orderly_db_replica_lag_seconds").set(lag);
        super::publish_pool_metrics("read", &self.pool);
    }

    /// For readiness: "ok", or why lists read the primary.
    pub(super) fn status(&self) -> String {
        let max_lag = self.watch.max_lag.as_secs_f64();
        match &*self.watch.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            State::InUse => "ok".to_owned(),
            State::Unchecked => "unchecked; lists read the primary".to_owned(),
            State::Behind { lag } => {
                format!("degraded: {:.1} s behind (more than {max_lag} s); lists read the primary", lag.as_secs_f64())
            }
            State::LagUnknown => "degraded: its replay position is unknown; lists read the primary".to_owned(),
            State::Unreachable { reason } => format!("degraded: {reason}; lists read the primary"),
        }
    }

    /// Checks the replica every second, for as long as the instance runs.
    pub(super) async fn watch_forever(self) {
        let mut connection = None;
        let mut interval = tokio::time::interval(CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.check(&mut connection).await;
        }
    }

    async fn check(&self, connection: &mut Option<PgConnection>) {
        let measured = tokio::time::timeout(CHECK_TIMEOUT, measure_lag(&self.watch.options, connection)).await;
        let lag = measured.as_ref().ok().and_then(|result| result.as_ref().ok()).copied().flatten();
        let state = match measured {
            Ok(Ok(Some(lag))) if lag <= self.watch.max_lag => State::InUse,
            Ok(Ok(Some(lag))) => State::Behind { lag },
            Ok(Ok(None)) => State::LagUnknown,
            Ok(Err(error)) => {
                *connection = None;
                State::Unreachable { reason: super::describe_connect_error(&error) }
            }
            Err(_) => {
                *connection = None;
                State::Unreachable { reason: format!("no answer within {} s", CHECK_TIMEOUT.as_secs()) }
            }
        };
        self.watch.record(state, lag);
    }
}

impl Watch {
    fn record(&self, state: State, lag: Option<Duration>) {
        let in_use = state == State::InUse;
        self.lag_seconds.store(lag.map_or(f64::NAN, |lag| lag.as_secs_f64()).to_bits(), Ordering::Relaxed);
        let mut current = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(*current, State::Unreachable { .. }) && !matches!(state, State::Unreachable { .. }) {
            let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.reachable_since.store(now, Ordering::Relaxed);
        }
        // Logged when lists move between the replica and the primary, not on every check.
        let was_in_use = *current == State::InUse;
        let first = *current == State::Unchecked;
        *current = state;
        drop(current);
        self.in_use.store(in_use, Ordering::Relaxed);
        if in_use && !was_in_use {
            tracing::info!("the read replica is in use");
        } else if !in_use && (was_in_use || first) {
            tracing::warn!(replica = %self.state_text(), "the read replica is not used; lists read the primary");
        }
    }

    fn state_text(&self) -> String {
        match &*self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            State::Behind { lag } => format!("{:.1} s behind", lag.as_secs_f64()),
            State::LagUnknown => "replay position unknown".to_owned(),
            State::Unreachable { reason } => reason.clone(),
            State::Unchecked | State::InUse => String::new(),
        }
    }

    /// Whether a pooled connection of this age was opened after the replica last came back.
    fn opened_after_outage(&self, age: Duration) -> bool {
        let opened = self.started.elapsed().saturating_sub(age);
        u64::try_from(opened.as_nanos()).unwrap_or(u64::MAX) >= self.reachable_since.load(Ordering::Relaxed)
    }
}

/// The replica's lag (see [`LAG_QUERY`]) over the watch's own connection, opened when needed.
async fn measure_lag(
    options: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
) -> Result<Option<Duration>, sea_orm::sqlx::Error> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(PgConnection::connect_with(options).await?),
    };
    let seconds: Option<f64> = sea_orm::sqlx::query_scalar(LAG_QUERY).fetch_one(connection).await?;
    // A replica clock behind the primary's gives a negative age: it is not behind.
    Ok(seconds.and_then(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).ok()))
}
