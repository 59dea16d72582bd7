//! The read replica: its pool, and the watch that decides once a second whether lists and
//! figures may read it. They read the primary instead while the replica is unreachable or
//! further behind than `ORDERLY_DATABASE_READ_MAX_LAG`, so a failed, stalled or cut-off
//! replica costs the primary some load, never an answer and never more staleness than the
//! bound.
//!
//! Lag is measured against the primary, not by the replica alone: each check notes the
//! primary's WAL position, then asks the replica how far it has replayed. A replica that has
//! replayed past a position noted at time `t` holds every transaction committed before `t`, so
//! its lag is at most the age of the newest such note. A replica asked on its own can only say
//! how much of what it *received* it has replayed, which stays "all of it" when it is cut off
//! from the primary and receives nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::{Hook, HookError};
use tokio_postgres::Client;

use crate::config::{ConfigError, DatabaseConfig};

const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A server that cannot answer one small query within this time counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Notes of the primary's position are kept this much longer than the lag bound, so a replica
/// that never catches up is reported as "at least this far behind" with a bounded memory.
const NOTES_KEPT_BEYOND_BOUND: Duration = Duration::from_secs(10);

/// The primary's WAL position, in bytes.
const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
/// Whether the server replays WAL (is a standby), and how far it has replayed, in bytes.
const REPLAY_POSITION: &str = "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

#[derive(Debug, Clone)]
pub(super) struct Replica {
    pool: deadpool_postgres::Pool,
    watch: Arc<Watch>,
    /// For the watch's own connections, apart from the pools so a busy pool is not taken
    /// for a failed server.
    primary_options: tokio_postgres::Config,
    replica_options: tokio_postgres::Config,
}

/// What the checks found, shared with every request that picks a connection.
#[derive(Debug)]
struct Watch {
    max_lag: Duration,
    /// Whether `state` is `InUse`, read by every list without taking the lock.
    in_use: AtomicBool,
    state: Mutex<State>,
    started: Instant,
    /// When the replica last became reachable again, in nanoseconds after `started`. Pooled
    /// connections opened before then may be dead, and are replaced rather than used.
    reachable_since: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Unchecked,
    InUse { lag: Duration },
    Behind { lag: Duration },
    LagUnknown,
    Unreachable { reason: String },
}

/// The checks' own connections and the primary's recent positions, carried from one check to
/// the next.
struct Probe {
    primary: Option<Client>,
    replica: Option<Client>,
    /// (when, the primary's position then), oldest first.
    notes: VecDeque<(Instant, i64)>,
}

/// How far behind the replica is: at most `Within` (it holds every transaction committed
/// before then), or `AtLeast` when it has not caught up with any position still noted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lag {
    Within(Duration),
    AtLeast(Duration),
}

impl Replica {
    /// The pool connects lazily, and lists read the primary until the first check (when the
    /// instance starts serving) finds the replica usable: an instance starts while its
    /// replica is down.
    pub(super) fn connect(config: &DatabaseConfig, read_url: &str) -> Result<Self, ConfigError> {
        let parse = |url: &str, setting: &'static str| {
            url.parse::<tokio_postgres::Config>()
                .map_err(|_| ConfigError::new(setting, "is not a valid PostgreSQL URL"))
        };
        let mut primary_options = parse(&config.database_url, "ORDERLY_DATABASE_URL")?;
        let mut replica_options = parse(read_url, "ORDERLY_DATABASE_READ_URL")?;
        for options in [&mut primary_options, &mut replica_options] {
            options.application_name("orderly-replica-watch").connect_timeout(CHECK_TIMEOUT);
        }
        let watch = Arc::new(Watch {
            max_lag: config.database_read_max_lag,
            in_use: AtomicBool::new(false),
            state: Mutex::new(State::Unchecked),
            started: Instant::now(),
            reachable_since: AtomicU64::new(0),
        });
        let fresh = Arc::clone(&watch);
        let pool = super::postgres_pool_builder(read_url, "ORDERLY_DATABASE_READ_URL", config)?
            // As on the primary: no ping per checkout. A connection opened before the last
            // outage is dropped instead, so the first lists after a replica restart do not
            // fail on sockets the restart closed.
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if fresh.opened_after_outage(metrics.age()) {
                    Ok(())
                } else {
                    Err(HookError::message("opened before the replica's last outage"))
                }
            }))
            .build()
            .map_err(|error| {
                ConfigError::new("ORDERLY_DATABASE_READ_URL", format!("cannot create the pool: {error}"))
            })?;
        Ok(Self { pool, watch, primary_options, replica_options })
    }

    /// Whether lists may read the replica now.
    pub(super) fn usable(&self) -> bool {
        self.watch.in_use.load(Ordering::Relaxed)
    }

    pub(super) fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// Sets the replica gauges; called before metrics are rendered.
    pub(super) fn publish_metrics(&self) {
        let in_use = self.watch.in_use.load(Ordering::Relaxed);
        metrics::gauge!("orderly_db_replica_in_use").set(if in_use { 1.0 } else { 0.0 });
        let lag = match &*self.watch.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::InUse { lag } | State::Behind { lag } => lag.as_secs_f64(),
            State::Unchecked | State::LagUnknown | State::Unreachable { .. } => f64::NAN,
        };
        metrics::gauge!("orderly_db_replica_lag_seconds").set(lag);
        super::publish_pool_metrics("read", super::postgres_usage(&self.pool));
    }

    /// For readiness: "ok", or why lists read the primary.
    pub(super) fn status(&self) -> String {
        match &*self.watch.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::InUse { .. } => "ok".to_owned(),
            state => format!("degraded: {}; lists read the primary", self.watch.describe(state)),
        }
    }

    /// Checks the replica every second, for as long as the instance runs.
    pub(super) async fn watch_forever(self) {
        let mut probe = Probe::new();
        let mut interval = tokio::time::interval(CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.check(&mut probe).await;
        }
    }

    async fn check(&self, probe: &mut Probe) {
        // The primary first: whatever it had committed by now, a replica that has replayed
        // past this position holds.
        if let Ok(position) = probe.primary_position(&self.primary_options).await {
            probe.notes.push_back((Instant::now(), position));
        }
        let state = match probe.replay_position(&self.replica_options).await {
            Err(reason) => State::Unreachable { reason },
            // Not a standby (a promoted replica, say): there is nothing for it to lag behind.
            Ok(None) => State::InUse { lag: Duration::ZERO },
            Ok(Some(replayed)) => {
                let keep = self.watch.max_lag + NOTES_KEPT_BEYOND_BOUND;
                match probe.lag(replayed, Instant::now(), keep) {
                    Lag::Within(lag) if lag <= self.watch.max_lag => State::InUse { lag },
                    Lag::Within(lag) => State::Behind { lag },
                    Lag::AtLeast(lag) if lag > self.watch.max_lag => State::Behind { lag },
                    Lag::AtLeast(_) => State::LagUnknown,
                }
            }
        };
        self.watch.record(state);
    }
}

impl Probe {
    fn new() -> Self {
        Self { primary: None, replica: None, notes: VecDeque::new() }
    }

    async fn primary_position(&mut self, options: &tokio_postgres::Config) -> Result<i64, String> {
        let row = query_within(&mut self.primary, options, PRIMARY_POSITION).await?;
        row.try_get(0).map_err(|error| error.to_string())
    }

    /// How far the replica has replayed; `None` when it is not a standby.
    async fn replay_position(&mut self, options: &tokio_postgres::Config) -> Result<Option<i64>, String> {
        let row = query_within(&mut self.replica, options, REPLAY_POSITION).await?;
        let standby: bool = row.try_get(0).map_err(|error| error.to_string())?;
        let replayed: Option<i64> = row.try_get(1).map_err(|error| error.to_string())?;
        Ok(standby.then(|| replayed.unwrap_or(0)))
    }

    /// The replica's lag given how far it has `replayed`, dropping notes it no longer needs:
    /// those older than the newest it has caught up with, and those older than `keep`.
    fn lag(&mut self, replayed: i64, now: Instant, keep: Duration) -> Lag {
        if let Some(newest) = self.notes.iter().rposition(|(_, position)| *position <= replayed) {
            self.notes.drain(..newest);
            return Lag::Within(now.saturating_duration_since(self.notes[0].0));
        }
        while self.notes.len() > 1 && now.saturating_duration_since(self.notes[1].0) > keep {
            self.notes.pop_front();
        }
        Lag::AtLeast(self.notes.front().map_or(Duration::ZERO, |(noted, _)| now.saturating_duration_since(*noted)))
    }
}

/// Runs `query` on the probe's connection to one server, opening it when needed, within
/// [`CHECK_TIMEOUT`]. On failure the connection is dropped, to be opened afresh next time.
async fn query_within(
    connection: &mut Option<Client>,
    options: &tokio_postgres::Config,
    query: &str,
) -> Result<tokio_postgres::Row, String> {
    let attempt = async {
        let open = match connection.as_mut() {
            Some(open) if !open.is_closed() => open,
            _ => {
                let (client, link) = options.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(link);
                connection.insert(client)
            }
        };
        open.query_one(query, &[]).await
    };
    let outcome = match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
        Ok(Ok(row)) => return Ok(row),
        Ok(Err(error)) => error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_owned()),
        Err(_) => format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
    };
    *connection = None;
    Err(outcome)
}

impl Watch {
    fn record(&self, state: State) {
        let in_use = matches!(state, State::InUse { .. });
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*current, State::Unreachable { .. }) && !matches!(state, State::Unreachable { .. }) {
            let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.reachable_since.store(now, Ordering::Relaxed);
        }
        // Logged when lists move between the replica and the primary, not on every check.
        let moved = matches!(*current, State::InUse { .. }) != in_use || *current == State::Unchecked;
        if moved && in_use {
            tracing::info!("the read replica is in use");
        } else if moved {
            tracing::warn!(replica = %self.describe(&state), "the read replica is not used; lists read the primary");
        }
        *current = state;
        self.in_use.store(in_use, Ordering::Relaxed);
    }

    fn describe(&self, state: &State) -> String {
        match state {
            State::Unchecked => "not checked yet".to_owned(),
            State::InUse { .. } => "in use".to_owned(),
            State::Behind { lag } => format!(
                "{:.1} s behind the primary, more than the {} s allowed",
                lag.as_secs_f64(),
                self.max_lag.as_secs_f64()
            ),
            State::LagUnknown => "catching up with the primary".to_owned(),
            State::Unreachable { reason } => format!("unreachable ({reason})"),
        }
    }

    /// Whether a pooled connection of this age was opened after the replica last came back.
    fn opened_after_outage(&self, age: Duration) -> bool {
        let opened = self.started.elapsed().saturating_sub(age);
        u64::try_from(opened.as_nanos()).unwrap_or(u64::MAX) >= self.reachable_since.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_with(notes: &[(u64, i64)], start: Instant) -> Probe {
        let mut probe = Probe::new();
        probe.notes = notes.iter().map(|(secs, position)| (start + Duration::from_secs(*secs), *position)).collect();
        probe
    }

    #[test]
    fn lag_is_the_age_of_the_newest_primary_position_the_replica_has_replayed_past() {
        let start = Instant::now();
        let mut probe = probe_with(&[(0, 100), (1, 200), (2, 300)], start);
        assert_eq!(
            probe.lag(250, start + Duration::from_secs(3), Duration::from_secs(60)),
            Lag::Within(Duration::from_secs(2))
        );
        assert_eq!(probe.notes.len(), 2, "notes older than the one caught up with are dropped");
        assert_eq!(
            probe.lag(300, start + Duration::from_secs(3), Duration::from_secs(60)),
            Lag::Within(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_replica_behind_every_note_is_at_least_as_far_behind_as_the_oldest_kept() {
        let start = Instant::now();
        let notes: Vec<(u64, i64)> = (0..30).map(|second| (second, 1000 + second as i64)).collect();
        let mut probe = probe_with(&notes, start);
        let lag = probe.lag(999, start + Duration::from_secs(30), Duration::from_secs(15));
        assert_eq!(lag, Lag::AtLeast(Duration::from_secs(16)), "one note older than what is kept is kept");
        assert_eq!(probe.notes.len(), 16, "older notes are dropped");
        assert_eq!(Probe::new().lag(0, start, Duration::from_secs(15)), Lag::AtLeast(Duration::ZERO));
    }
}
