//! SQLite on threads of its own: one writer connection and a few read-only ones (WAL lets
//! them read beside the writer), each owned by a thread that runs whole units of work.
//!
//! A unit of work (every statement of a request, its transaction included) crosses from the
//! async runtime to a database thread once and its result comes back once, instead of one
//! handoff per statement. SQLite calls never wait on the network, so the unit's future is
//! polled to completion right there; a unit that waits on anything but the database is a bug
//! and panics (see [`block_on`]).
//!
//! One writer thread is the whole write "pool": SQLite admits one writer at a time anyway, so
//! queueing writes here, bounded by the acquire timeout, replaces `SQLITE_BUSY` failures with
//! an orderly wait. Readers share one queue, so any idle reader takes the next read.
//!
//! The writer commits in groups: the writes waiting in its queue when it takes one run in a
//! single SQLite transaction, each in a savepoint of its own, and share one commit. A
//! transaction that fails rolls back to its savepoint, leaving the others' work in place (a
//! unit whose statements commit one by one keeps what it did before failing, as it would
//! alone); every unit is answered only after the group's commit, so no caller sees a write
//! before it is durable and visible to the readers. Work that begins and ends transactions
//! itself (migrations) runs alone. Under load most of a commit's cost (the WAL frames of
//! the pages it touched, the WAL index) is paid once per group instead of once per request;
//! alone, a unit runs exactly as before.

use orderly_kit::trace::TraceParent;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::conn::{Conn, DbError};

/// Work queued for a database thread.
enum Job {
    /// Runs on its own, outside any transaction: reads, and work that begins and ends
    /// transactions itself (migrations).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs in a transaction: on the writer, one it may share with other writes (see the
    /// module documentation); on a reader, a read transaction of its own.
    InTransaction(Box<dyn GroupMember>),
}

/// How a unit of work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// All or nothing.
    Transaction,
    /// Each statement stands on its own: when the unit fails, what it did before the failing
    /// statement is kept, as if each had committed.
    Statements,
    /// Never grouped, outside any transaction.
    Alone,
}

/// A unit of work that can run inside a group's transaction and be answered after its commit.
trait GroupMember: Send {
    /// Takes the unit off the queue: false when its caller already gave it up (it never runs).
    fn start(&self) -> bool;
    /// Runs the unit; false when it failed.
    fn run(&mut self, connection: &mut Connection) -> bool;
    /// Whether the changes of a failed run stay (statement by statement semantics).
    fn keeps_partial_work(&self) -> bool;
    /// Answers the caller: the unit's own outcome if `commit` succeeded, else the error.
    fn answer(self: Box<Self>, commit: Result<(), DbError>);
}

/// How many queued transactions at most share one commit; bounds the wait of the first.
const MAX_GROUP: usize = 64;

/// A job waits in the queue, runs, or was given up by its caller (acquire timeout).
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

/// Where the database file is, read from `sqlite://path` (`sqlite:///abs/path` for absolute
/// paths).
pub(super) fn path_of(url: &str) -> Result<PathBuf, String> {
    let rest =
        url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).ok_or("must start with sqlite://")?;
    if rest.contains('?') {
        return Err("options after `?` are not supported; Orderly sets the SQLite options itself".into());
    }
    if rest.is_empty() || rest == ":memory:" {
        return Err("an in-memory database cannot be shared by the threads; use a file".into());
    }
    Ok(PathBuf::from(rest))
}

/// A set of threads, each owning one connection, taking jobs from one queue.
#[derive(Debug)]
pub(super) struct Workers {
    queue: crossbeam_channel::Sender<Job>,
    /// Threads running a job now, for the pool gauges.
    busy: Arc<AtomicUsize>,
    threads: usize,
    acquire_timeout: Duration,
    writer: bool,
}

impl Workers {
    /// The single writer: creates the file (and its folder) if missing and turns on WAL.
    pub(super) fn writer(path: &Path, acquire_timeout: Duration) -> Result<Self, String> {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // SQLite's own checkpointing (by the writer, every 1,000 WAL pages) stays: checkpointing
        // less often, or from a thread of its own, was measured faster but raised p99 latency
        // past 30 ms (bench/README.md).
        let connection = open(path, flags, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Self::start(vec![connection], acquire_timeout, true, "sqlite-writer")
    }

    /// `count` read-only connections.
    pub(super) fn readers(path: &Path, count: usize, acquire_timeout: Duration) -> Result<Self, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The OS page cache holds the file for every reader; a small private cache each keeps
        // memory flat as readers are added.
        let connections =
            (0..count).map(|_| open(path, flags, "PRAGMA cache_size = -256;")).collect::<Result<Vec<_>, _>>()?;
        Self::start(connections, acquire_timeout, false, "sqlite-reader")
    }

    fn start(
        connections: Vec<Connection>,
        acquire_timeout: Duration,
        writer: bool,
        name: &str,
    ) -> Result<Self, String> {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let busy = Arc::new(AtomicUsize::new(0));
        let threads = connections.len();
        for (index, mut connection) in connections.into_iter().enumerate() {
            let jobs = jobs.clone();
            let busy = Arc::clone(&busy);
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || serve(&mut connection, &jobs, &busy, writer))
                .map_err(|error| format!("cannot start a database thread: {error}"))?;
        }
        Ok(Self { queue, busy, threads, acquire_timeout, writer })
    }

    /// Threads busy and idle, for the pool gauges.
    pub(super) fn usage(&self) -> super::Usage {
        let in_use = self.busy.load(Ordering::Relaxed).min(self.threads);
        super::Usage { in_use, idle: self.threads - in_use, max: self.threads }
    }

    /// Runs `work` on one of the threads, as `kind` says (readers run every unit but a
    /// transaction alone), its connection carrying the caller's `trace`. Waits at most the
    /// acquire timeout for a thread to take it.
    pub(super) async fn run<T, E, F>(&self, kind: Unit, trace: Option<TraceParent>, work: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let grouped = match kind {
            Unit::Transaction => true,
            Unit::Statements => self.writer,
            Unit::Alone => false,
        };
        let job = if grouped {
            let keeps_partial_work = kind == Unit::Statements;
            Job::InTransaction(Box::new(Member {
                state: Arc::clone(&state),
                keeps_partial_work,
                trace,
                work: Some(work),
                ran: None,
                reply,
            }))
        } else {
            let job_state = Arc::clone(&state);
            Job::Alone(Box::new(move |connection: &mut Connection| {
                if job_state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    let _ = reply.send(unit(connection, trace, work));
                }
            }))
        };
        if self.queue.send(job).is_err() {
            return Err(
                DbError::Unavailable { cause: "unreachable", detail: "the database threads stopped".into() }.into()
            );
        }
        // A caller that goes away (cancelled, timed out) takes its work with it if no thread
        // has started it yet; once started, a unit runs to its end.
        let abandon = AbandonIfQueued(&state);
        let mut answer = answer;
        let result = match tokio::time::timeout(self.acquire_timeout, &mut answer).await {
            Ok(result) => result,
            Err(_) if abandon.abandon() => {
                return Err(DbError::Unavailable {
                    cause: "pool_timeout",
                    detail: format!("no database thread was free within {:?}", self.acquire_timeout),
                }
                .into());
            }
            // Started just in time: its outcome is coming.
            Err(_) => answer.await,
        };
        result.unwrap_or_else(|_| Err(DbError::Other("the unit of work panicked".into()).into()))
    }
}

/// Marks a queued job abandoned when its caller stops waiting, so no thread runs it.
struct AbandonIfQueued<'a>(&'a AtomicU8);

impl AbandonIfQueued<'_> {
    /// Whether the job was still queued (and now never runs).
    fn abandon(&self) -> bool {
        self.0.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl Drop for AbandonIfQueued<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

fn unit<T, E, F>(connection: &mut Connection, trace: Option<TraceParent>, work: F) -> Result<T, E>
where
    F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E>,
{
    let mut conn = Conn::sqlite(connection, trace);
    block_on(work(&mut conn))
}

/// A database thread's loop: ends when every sender is gone (the `Database` was dropped).
fn serve(connection: &mut Connection, jobs: &crossbeam_channel::Receiver<Job>, busy: &AtomicUsize, writer: bool) {
    let mut next = None;
    loop {
        let Some(job) = next.take().or_else(|| jobs.recv().ok()) else { return };
        busy.fetch_add(1, Ordering::Relaxed);
        match job {
            Job::Alone(job) => {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(connection)));
                if outcome.is_err() && !connection.is_autocommit() {
                    // The panic cut a transaction short; end it before the next job.
                    let _ = connection.execute_batch("ROLLBACK");
                }
            }
            Job::InTransaction(first) if !first.start() => {}
            Job::InTransaction(first) if !writer => drop(commit_group(connection, "BEGIN", vec![first])),
            Job::InTransaction(first) => {
                // Whatever else is already waiting joins this commit, in queue order; a job
                // that must run alone ends the group and runs next. Members are started
                // before the transaction begins, so waiting for SQLite's lock counts against
                // the request's deadline, not its wait for a thread.
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::InTransaction(member)) if !member.start() => {}
                        Ok(Job::InTransaction(member)) => group.push(member),
                        Ok(alone) => {
                            next = Some(alone);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let committed = commit_group(connection, "BEGIN IMMEDIATE", group);
                if committed > 0 {
                    metrics::counter!("orderly_db_sqlite_commits_total").increment(1);
                    metrics::counter!("orderly_db_sqlite_committed_transactions_total").increment(committed as u64);
                }
            }
        }
        busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `group` in one transaction, each member in a savepoint when there are several, and
/// answers every member after the commit. Returns how many members' work was committed.
fn commit_group(connection: &mut Connection, begin: &str, group: Vec<Box<dyn GroupMember>>) -> usize {
    if let [_] = group.as_slice() {
        let mut member = group.into_iter().next().expect("one member");
        if let Err(error) = statement(connection, begin) {
            member.answer(Err(error));
            return 0;
        }
        let ok = member.run(connection);
        let ended = statement(connection, if ok || member.keeps_partial_work() { "COMMIT" } else { "ROLLBACK" });
        if ended.is_err() && !connection.is_autocommit() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        let committed = usize::from(ok && ended.is_ok());
        // A failed COMMIT loses the work; a failed ROLLBACK still reports the work's own error.
        member.answer(if ok { ended } else { Ok(()) });
        return committed;
    }
    let mut members = group.into_iter();
    // Members that ran in the open transaction, waiting for its commit.
    let mut ran: Vec<Box<dyn GroupMember>> = Vec::new();
    let mut succeeded = 0;
    while members.len() > 0 {
        if let Err(error) = statement(connection, begin) {
            members.for_each(|member| member.answer(Err(error.clone())));
            break;
        }
        for mut member in members.by_ref() {
            if let Err(error) = statement(connection, "SAVEPOINT unit") {
                member.answer(Err(error));
                continue;
            }
            let ok = member.run(connection);
            let undone = ok || member.keeps_partial_work() || statement(connection, "ROLLBACK TO unit").is_ok();
            if !undone && !connection.is_autocommit() {
                // A failed unit's changes could not be undone alone: undo the whole group.
                let _ = connection.execute_batch("ROLLBACK");
            }
            if connection.is_autocommit() {
                // The transaction ended under the group (an I/O error, a full disk, the
                // rollback above): the members before this one lost their work with it.
                let lost = DbError::Other("the database rolled the transaction back".into());
                ran.drain(..).for_each(|member| member.answer(Err(lost.clone())));
                succeeded = 0;
                member.answer(if ok { Err(lost) } else { Ok(()) });
                break; // the members left begin a transaction of their own
            }
            let _ = statement(connection, "RELEASE unit");
            succeeded += usize::from(ok);
            ran.push(member);
        }
    }
    if ran.is_empty() {
        if !connection.is_autocommit() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        return 0;
    }
    let committed = statement(connection, "COMMIT");
    if committed.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    let count = if committed.is_ok() { succeeded } else { 0 };
    ran.into_iter().for_each(|member| member.answer(committed.clone()));
    count
}

fn statement(connection: &mut Connection, sql: &str) -> Result<(), DbError> {
    connection.prepare_cached(sql).and_then(|mut statement| statement.execute([])).map(drop).map_err(DbError::from)
}

/// A caller's transaction, as queued.
struct Member<T, E, F> {
    state: Arc<AtomicU8>,
    keeps_partial_work: bool,
    trace: Option<TraceParent>,
    work: Option<F>,
    /// `None` until it ran; `Some(None)` when it panicked.
    ran: Option<Option<Result<T, E>>>,
    reply: tokio::sync::oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> GroupMember for Member<T, E, F>
where
    F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    fn start(&self) -> bool {
        self.state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn keeps_partial_work(&self) -> bool {
        self.keeps_partial_work
    }

    fn run(&mut self, connection: &mut Connection) -> bool {
        let Some(work) = self.work.take() else { return true };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unit(connection, self.trace, work))).ok();
        let ok = outcome.as_ref().is_some_and(Result::is_ok);
        self.ran = Some(outcome);
        ok
    }

    fn answer(self: Box<Self>, commit: Result<(), DbError>) {
        let outcome = match (self.ran, commit) {
            // Panicked: dropping `reply` tells the caller.
            (Some(None), _) => return,
            (Some(Some(Ok(value))), Ok(())) => Ok(value),
            (Some(Some(Ok(_))), Err(error)) => Err(error.into()),
            (Some(Some(Err(error))), _) => Err(error),
            // Never ran: the transaction could not begin.
            (None, commit) => Err(commit.err().unwrap_or_else(|| DbError::Other("the unit did not run".into())).into()),
        };
        let _ = self.reply.send(outcome);
    }
}

/// Polls a unit of work that never waits: on SQLite every database call completes at once.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a unit of work waited on something other than the database"),
    }
}

fn open(path: &Path, flags: OpenFlags, pragmas: &str) -> Result<Connection, String> {
    let connection = Connection::open_with_flags(path, flags)
        .map_err(|error| format!("cannot open the database {}: {error}", path.display()))?;
    connection
        .execute_batch(&format!("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; {pragmas}"))
        .map_err(|error| format!("cannot configure the database: {error}"))?;
    // A plan that stays whatever the values bound: otherwise a statement with `LIMIT $n` is
    // planned again at every use, because binding any value to `$n` may change its plan (and
    // a list's page is a quarter of its cost spent planning it).
    connection
        .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|error| format!("cannot configure the database: {error}"))?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    #[test]
    fn a_cached_statement_is_planned_once_whatever_its_limit() {
        let path = std::env::temp_dir().join(format!("orderly-plans-{}.db", uuid::Uuid::new_v4().simple()));
        let connection = open(&path, OpenFlags::default(), "").unwrap();
        connection
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let sql = "SELECT id FROM t WHERE id > ?1 ORDER BY id LIMIT ?2";
        for (after, limit) in [(0, 1), (1, 2), (0, 3), (2, 1)] {
            let mut statement = connection.prepare_cached(sql).unwrap();
            let ids: Vec<i64> =
                statement.query_map([after, limit], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(ids, (after + 1..=3).take(usize::try_from(limit).unwrap()).collect::<Vec<_>>());
        }
        let replanned = connection.prepare_cached(sql).unwrap().get_status(StatementStatus::RePrepare);
        assert_eq!(replanned, 0, "planned again after a new binding");
        drop(connection);
        let _ = std::fs::remove_file(&path);
    }
}
