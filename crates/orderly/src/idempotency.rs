//! Idempotency keys for every POST, stored in the database so they hold across instances.
//!
//! The mechanics (fingerprints, replay, 409/422, sealing) are in `orderly_kit::idempotency`;
//! this module supplies the caller's scope, the storage, the background sweep of expired
//! records, and [`keyed_transaction`]: the writes whose whole effect is one transaction
//! ([`WITH_THE_WRITE`]) claim their key first in it and keep their response last, so a keyed
//! write is one commit; a payment ([`IN_PHASES`]) claims its key in the transaction that writes
//! its charge ahead and keeps its response in the one that records it ([`claim_key`],
//! [`keep_response`]). The token endpoint is exempt: its responses are fresh credentials bound
//! to a rotation chain, and RFC 6749 clients retry it by design.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::Method;
use orderly_kit::idempotency::{self, IdempotencyStore, Keeping, Kept, KeyedWrite, Record};

use crate::accounts::auth::{Authenticator, Principal};
use crate::db::{Ahead, Backend, Conn, Database, DbError, Param, Row};
use crate::responses::Written;

pub const EXEMPT_PATHS: &[&str] = &["/api/v1/auth/token"];

/// A row of `idempotency_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// SHA-256 of scope, method, path and key.
    pub id: String,
    pub fingerprint: String,
    /// The sealed response; `None` while the first request runs.
    pub response: Option<Vec<u8>>,
    /// Until then an unfinished record blocks its key; after, its request is presumed dead.
    pub locked_until: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// The columns [`KeyRecord::from_row`] reads, in its order.
macro_rules! key_record_columns {
    () => {
        "id, fingerprint, response, locked_until, expires_at, created_at"
    };
}

impl KeyRecord {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            fingerprint: row.get(1)?,
            response: row.get(2)?,
            locked_until: row.get(3)?,
            expires_at: row.get(4)?,
            created_at: row.get(5)?,
        })
    }
}

/// Routes whose whole effect is one database transaction: their key is claimed and kept in it
/// ([`Keeping::WithTheWrite`]).
pub const WITH_THE_WRITE: &[&str] =
    &["/api/v1/auth/register", "/api/v1/products", "/api/v1/orders", "/api/v1/orders/{id}/cancel", "/api/v1/api-keys"];

/// Routes whose effect is two transactions around a provider call (a charge written ahead,
/// then recorded): the key is claimed in the first and kept in the last
/// ([`Keeping::InPhases`]; see `payments::service::pay`).
pub const IN_PHASES: &[&str] = &["/api/v1/orders/{id}/payments"];

/// What a write that keeps its key answers: its result and rendered response, or the answer
/// owed to a retry (the first run's response replayed, 422, 409).
pub enum Keyed<T> {
    Done(T, Written),
    Answered(Response),
}

impl<T> IntoResponse for Keyed<T> {
    fn into_response(self) -> Response {
        let mut response = match self {
            Self::Done(_, written) => written.into_response(),
            Self::Answered(response) => return response,
        };
        response.extensions_mut().insert(Kept);
        response
    }
}

/// Runs `work` in one transaction that first claims the request's `key` (when it has one) and
/// last keeps the response `render` makes of the result, so the key, the effect and the kept
/// response commit together. A request with the same key waits for that transaction: it
/// replays what committed, or runs if it rolled back. When `work` fails nothing is kept here
/// (the idempotency layer keeps a refusal afterwards).
pub async fn keyed_transaction<T, E, F>(
    db: &Database,
    key: Option<KeyedWrite>,
    render: impl FnOnce(&T) -> Written + Send + 'static,
    work: F,
) -> Result<Keyed<T>, E>
where
    F: AsyncFnOnce(&mut Conn<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    let answering = key.clone();
    let outcome = db
        .write()
        .transaction(async move |conn| {
            if let Some(key) = &key
                && let Some(standing) = claim_key(conn, key).await?
            {
                return Ok(Err(standing));
            }
            let result = work(conn).await?;
            let written = render(&result);
            if let Some(key) = &key {
                keep_response(conn, key, &written).await?;
            }
            Ok::<_, E>(Ok((result, written)))
        })
        .await?;
    // Answered here, not in the unit: a problem carries the request's id, which the database
    // thread does not know.
    Ok(match (outcome, answering) {
        (Ok((result, written)), _) => Keyed::Done(result, written),
        (Err(standing), Some(key)) => Keyed::Answered(key.answer(&standing)),
        (Err(_), None) => unreachable!("only a claimed key finds a standing record"),
    })
}

/// Claims `key` in the caller's transaction: `None` when this request now owns it, else the
/// record of another request that stands (answer it with [`KeyedWrite::answer`], outside the
/// unit of work).
pub async fn claim_key(conn: &mut Conn<'_>, key: &KeyedWrite) -> Result<Option<Record>, DbError> {
    claim(conn, &key.id, &key.fingerprint, key.locked_until, key.expires_at).await
}

/// A claim of a request's key sent ahead of the unit's next statement ([`Conn::ahead`]), so
/// that the reads the request needs either way share its round trip; [`claimed`] tells how it
/// went.
#[must_use = "a claim sent ahead is looked at with `claimed`"]
pub struct ClaimAhead(Claiming);

/// Sends the claim of `key` ahead, in the caller's transaction.
pub async fn claim_key_ahead(conn: &mut Conn<'_>, key: &KeyedWrite) -> Result<ClaimAhead, DbError> {
    claim_ahead(conn, &key.id, &key.fingerprint, key.locked_until, key.expires_at).await.map(ClaimAhead)
}

/// What [`claim_key`] answers, for a claim sent ahead.
pub async fn claimed(conn: &mut Conn<'_>, key: &KeyedWrite, ahead: ClaimAhead) -> Result<Option<Record>, DbError> {
    claim_outcome(conn, ahead.0, &key.id, &key.fingerprint, key.locked_until, key.expires_at).await
}

/// Keeps `written` as the response of the request owning `key`, in the caller's transaction.
pub async fn keep_response(conn: &mut Conn<'_>, key: &KeyedWrite, written: &Written) -> Result<(), DbError> {
    let sealed = key.seal(written.status, written.location.as_deref(), &written.body);
    complete(conn, &key.id, &sealed).await
}

/// Extends the lock of the unfinished record `id`: its request still runs (a provider call
/// renews it with the hold of its attempt, in one statement each).
pub async fn renew_key(conn: &mut Conn<'_>, id: &str, locked_until: DateTime<Utc>) -> Result<(), DbError> {
    conn.execute(
        "UPDATE idempotency_keys SET locked_until = $1 WHERE id = $2 AND response IS NULL",
        &[&locked_until, &id],
    )
    .await
    .map(drop)
}

/// The answer owed to a keyed request whose key already holds a finished outcome, read before
/// costly work (hashing a password) that a replay does not need.
pub async fn answered_already(db: &Database, key: Option<&KeyedWrite>) -> Result<Option<Response>, DbError> {
    let Some(key) = key else { return Ok(None) };
    let (id, now) = (key.id.clone(), Utc::now());
    const SQL: &str = concat!(
        "SELECT ",
        key_record_columns!(),
        " FROM idempotency_keys WHERE id = $1 AND expires_at > $2 AND response IS NOT NULL"
    );
    let standing =
        db.current().run(async move |conn| conn.query_opt(SQL, &[&id, &now], KeyRecord::from_row).await).await?;
    Ok(standing.map(|record| key.answer(&Record { fingerprint: record.fingerprint, response: record.response })))
}

/// Idempotency records in the primary database.
#[derive(Clone)]
pub struct DatabaseStore {
    db: Database,
}

impl DatabaseStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Deletes expired records; returns how many.
    pub async fn sweep(&self) -> Result<u64, DbError> {
        let now = Utc::now();
        self.db
            .write()
            .run(async move |conn| conn.execute("DELETE FROM idempotency_keys WHERE expires_at < $1", &[&now]).await)
            .await
    }
}

impl IdempotencyStore for DatabaseStore {
    type Error = DbError;

    async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        locked_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Record>, DbError> {
        let (id, fingerprint) = (id.to_owned(), fingerprint.to_owned());
        self.db.write().run(async move |conn| claim(conn, &id, &fingerprint, locked_until, expires_at).await).await
    }

    async fn complete(&self, id: &str, response: Vec<u8>) -> Result<(), DbError> {
        let id = id.to_owned();
        self.db.write().run(async move |conn| complete(conn, &id, &response).await).await
    }

    async fn release(&self, id: &str) -> Result<(), DbError> {
        let id = id.to_owned();
        self.db
            .write()
            .run(async move |conn| conn.execute("DELETE FROM idempotency_keys WHERE id = $1", &[&id]).await)
            .await
            .map(drop)
    }

    async fn renew(&self, id: &str, locked_until: DateTime<Utc>) -> Result<(), DbError> {
        let id = id.to_owned();
        self.db.write().run(async move |conn| renew_key(conn, &id, locked_until).await).await
    }
}

/// [`IdempotencyStore::complete`]: keeps the sealed response of the request that owns `id`.
/// Its claim set the expiry; leaving indexed columns alone lets PostgreSQL update the row in
/// place (HOT), with no index entries to write.
async fn complete(conn: &mut Conn<'_>, id: &str, response: &[u8]) -> Result<(), DbError> {
    conn.defer("UPDATE idempotency_keys SET response = $1 WHERE id = $2", &[&response, &id]).await
}

/// [`IdempotencyStore::claim`]: one atomic upsert that inserts the record or replaces a dead
/// one (expired, or unfinished with its lock lapsed), then, when a live record stands, a read
/// of it.
async fn claim(
    conn: &mut Conn<'_>,
    id: &str,
    fingerprint: &str,
    locked_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Option<Record>, DbError> {
    let ahead = claim_ahead(conn, id, fingerprint, locked_until, expires_at).await?;
    claim_outcome(conn, ahead, id, fingerprint, locked_until, expires_at).await
}

/// Inserts the record of `id`, or takes over one that expired or whose request died. On
/// PostgreSQL it goes ahead of the unit's next statement and a row comes back when the claim
/// is ours; SQLite, which has no round trips to save, runs it now and counts the changed row
/// (its `RETURNING` builds a temporary table per run).
async fn claim_ahead(
    conn: &mut Conn<'_>,
    id: &str,
    fingerprint: &str,
    locked_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Claiming, DbError> {
    macro_rules! upsert {
        () => {
            "INSERT INTO idempotency_keys (id, fingerprint, response, locked_until, expires_at, created_at)
             VALUES ($1, $2, NULL, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response,
                 locked_until = excluded.locked_until, expires_at = excluded.expires_at, created_at = excluded.created_at
             WHERE idempotency_keys.expires_at <= $5
                 OR (idempotency_keys.response IS NULL AND idempotency_keys.locked_until <= $5)"
        };
    }
    let now = Utc::now();
    let params: [&dyn Param; 5] = [&id, &fingerprint, &locked_until, &expires_at, &now];
    match conn.backend() {
        Backend::Postgres => {
            conn.ahead(concat!(upsert!(), " RETURNING 1"), &params, |_| Ok(())).await.map(Claiming::Sent)
        }
        Backend::Sqlite => Ok(Claiming::Ran { ours: conn.execute(upsert!(), &params).await? == 1 }),
    }
}

/// A claim on its way ([`claim_ahead`]).
enum Claiming {
    Sent(Ahead<()>),
    Ran { ours: bool },
}

impl Claiming {
    async fn ours(self, conn: &mut Conn<'_>) -> Result<bool, DbError> {
        match self {
            Self::Sent(ahead) => Ok(!conn.fetch(ahead).await?.is_empty()),
            Self::Ran { ours } => Ok(ours),
        }
    }
}

/// `None` when the claim sent ahead made the key ours, else the record that stands.
async fn claim_outcome(
    conn: &mut Conn<'_>,
    claiming: Claiming,
    id: &str,
    fingerprint: &str,
    locked_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Option<Record>, DbError> {
    if claiming.ours(conn).await? {
        return Ok(None);
    }
    if let Some(standing) = standing_record(conn, id).await? {
        return Ok(Some(standing));
    }
    // The standing record was released between our insert and our read: once more.
    let again = claim_ahead(conn, id, fingerprint, locked_until, expires_at).await?;
    if again.ours(conn).await? {
        return Ok(None);
    }
    standing_record(conn, id)
        .await?
        .map(Some)
        .ok_or_else(|| DbError::Other("idempotency record kept changing under a claim".into()))
}

async fn standing_record(conn: &mut Conn<'_>, id: &str) -> Result<Option<Record>, DbError> {
    const STANDING: &str = concat!("SELECT ", key_record_columns!(), " FROM idempotency_keys WHERE id = $1");
    let standing = conn.query_opt(STANDING, &[&id], KeyRecord::from_row).await?;
    Ok(standing.map(|standing| Record { fingerprint: standing.fingerprint, response: standing.response }))
}

/// What the idempotency middleware uses. Cheap to clone.
#[derive(Clone)]
pub struct Idempotency {
    pub store: DatabaseStore,
    pub settings: idempotency::Settings,
    /// Finds the caller whose scope a key belongs to, unless the rate limits found them first.
    pub authenticator: Authenticator,
}

/// Applies the key of a POST under the caller's scope: the user for authenticated calls, one
/// shared anonymous scope otherwise. A request with bad credentials passes straight through:
/// its handler answers 401, which is never kept.
pub async fn middleware(State(idempotency): State<Arc<Idempotency>>, mut request: Request, next: Next) -> Response {
    let Idempotency { store, settings, authenticator } = &*idempotency;
    let path = request.uri().path().to_owned();
    if request.method() != Method::POST || EXEMPT_PATHS.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let caller = match request.extensions().get::<Principal>() {
        Some(principal) => Ok(Some(*principal)),
        None => authenticator.authenticate(request.headers()).await,
    };
    let scope = match caller {
        Ok(Some(principal)) => {
            request.extensions_mut().insert(principal);
            format!("user:{}", principal.user_id)
        }
        Ok(None) => "anonymous".to_owned(),
        Err(_) => return next.run(request).await,
    };
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let required = route.is_some_and(|route| crate::payments::KEY_REQUIRED.contains(&route));
    let keeping = match route {
        Some(route) if WITH_THE_WRITE.contains(&route) => Keeping::WithTheWrite,
        Some(route) if IN_PHASES.contains(&route) => Keeping::InPhases,
        _ => Keeping::Separately,
    };
    idempotency::run(store, settings, &scope, required, keeping, request, next).await
}

/// Deletes expired records every `interval` until the task is aborted.
pub async fn sweep_forever(store: DatabaseStore, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        match store.sweep().await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(error = %error, "sweeping idempotency keys failed"),
        }
    }
}
