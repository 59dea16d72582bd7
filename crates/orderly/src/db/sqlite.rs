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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::conn::{Conn, DbError};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

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
                .spawn(move || {
                    // Ends when every sender is gone (the `Database` was dropped).
                    for job in jobs {
                        busy.fetch_add(1, Ordering::Relaxed);
                        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut connection)));
                        if outcome.is_err() && !connection.is_autocommit() {
                            // The panic cut a transaction short; end it before the next job.
                            let _ = connection.execute_batch("ROLLBACK");
                        }
                        busy.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .map_err(|error| format!("cannot start a database thread: {error}"))?;
        }
        Ok(Self { queue, busy, threads, acquire_timeout, writer })
    }

    /// Threads busy and idle, for the pool gauges.
    pub(super) fn usage(&self) -> super::Usage {
        let in_use = self.busy.load(Ordering::Relaxed).min(self.threads);
        super::Usage { in_use, idle: self.threads - in_use, max: self.threads }
    }

    /// Runs `work` on one of the threads, in a transaction when `transaction` is set (rolled
    /// back when `work` fails). Waits at most the acquire timeout for a thread to take it.
    pub(super) async fn run<T, E, F>(&self, transaction: bool, work: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job_state = Arc::clone(&state);
        let begin = if self.writer { "BEGIN IMMEDIATE" } else { "BEGIN" };
        let job: Job = Box::new(move |connection: &mut Connection| {
            if job_state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return;
            }
            let result = if transaction { in_transaction(connection, begin, work) } else { unit(connection, work) };
            let _ = reply.send(result);
        });
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

fn unit<T, E, F>(connection: &mut Connection, work: F) -> Result<T, E>
where
    F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E>,
{
    let mut conn = Conn::sqlite(connection);
    block_on(work(&mut conn))
}

fn in_transaction<T, E, F>(connection: &mut Connection, begin: &str, work: F) -> Result<T, E>
where
    F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    connection.prepare_cached(begin).and_then(|mut s| s.execute([])).map_err(DbError::from)?;
    let result = unit(connection, work);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    if let Err(error) = connection.prepare_cached(end).and_then(|mut s| s.execute([])) {
        if !connection.is_autocommit() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        // A failed COMMIT loses the work; a failed ROLLBACK still reports the work's error.
        if result.is_ok() {
            return Err(DbError::from(error).into());
        }
    }
    result
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
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}
