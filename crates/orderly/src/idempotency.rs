//! Idempotency keys for every POST, stored in the database so they hold across instances.
//!
//! The mechanics (fingerprints, replay, 409/422, sealing) are in `orderly_kit::idempotency`;
//! this module supplies the caller's scope, the storage, and the background sweep of expired
//! records. The token endpoint is exempt: its responses are fresh credentials bound to a
//! rotation chain, and RFC 6749 clients retry it by design.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::Method;
use orderly_kit::idempotency::{self, IdempotencyStore, Record};

use crate::accounts::auth;
use crate::app::AppState;
use crate::db::{Conn, Database, DbError, Row};

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

    async fn complete(&self, id: &str, response: Vec<u8>, expires_at: DateTime<Utc>) -> Result<(), DbError> {
        let id = id.to_owned();
        self.db
            .write()
            .run(async move |conn| {
                conn.execute(
                    "UPDATE idempotency_keys SET response = $1, expires_at = $2 WHERE id = $3",
                    &[&response, &expires_at, &id],
                )
                .await
            })
            .await
            .map(drop)
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
        self.db
            .write()
            .run(async move |conn| {
                conn.execute(
                    "UPDATE idempotency_keys SET locked_until = $1 WHERE id = $2 AND response IS NULL",
                    &[&locked_until, &id],
                )
                .await
            })
            .await
            .map(drop)
    }
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
    const UPSERT: &str =
        "INSERT INTO idempotency_keys (id, fingerprint, response, locked_until, expires_at, created_at)
         VALUES ($1, $2, NULL, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response,
             locked_until = excluded.locked_until, expires_at = excluded.expires_at, created_at = excluded.created_at
         WHERE idempotency_keys.expires_at <= $5
             OR (idempotency_keys.response IS NULL AND idempotency_keys.locked_until <= $5)";
    const STANDING: &str = concat!("SELECT ", key_record_columns!(), " FROM idempotency_keys WHERE id = $1");
    // Two rounds: the standing record may be released between our insert and our read.
    for _ in 0..2 {
        let now = Utc::now();
        let inserted = conn.execute(UPSERT, &[&id, &fingerprint, &locked_until, &expires_at, &now]).await?;
        if inserted == 1 {
            return Ok(None);
        }
        if let Some(standing) = conn.query_opt(STANDING, &[&id], KeyRecord::from_row).await? {
            return Ok(Some(Record { fingerprint: standing.fingerprint, response: standing.response }));
        }
    }
    Err(DbError::Other("idempotency record kept changing under a claim".into()))
}

/// Applies the key of a POST under the caller's scope: the user for authenticated calls, one
/// shared anonymous scope otherwise. A request with bad credentials passes straight through:
/// its handler answers 401, which is never kept.
pub async fn middleware(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if request.method() != Method::POST || EXEMPT_PATHS.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let caller = match request.extensions().get::<auth::Principal>() {
        Some(principal) => Ok(Some(*principal)),
        None => auth::authenticate(&app, request.headers()).await,
    };
    let scope = match caller {
        Ok(Some(principal)) => {
            request.extensions_mut().insert(principal);
            format!("user:{}", principal.user_id)
        }
        Ok(None) => "anonymous".to_owned(),
        Err(_) => return next.run(request).await,
    };
    let required = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|route| crate::payments::KEY_REQUIRED.contains(&route.as_str()));
    idempotency::run(&app.idempotency, &app.idempotency_settings, &scope, required, request, next).await
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
