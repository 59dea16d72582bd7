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
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, Set};

use crate::accounts::auth;
use crate::app::AppState;
use crate::db::Database;

pub const EXEMPT_PATHS: &[&str] = &["/api/v1/auth/token"];

pub mod record {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        /// SHA-256 of scope, method, path and key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub fingerprint: String,
        /// The sealed response; `None` while the first request runs.
        pub response: Option<Vec<u8>>,
        /// Until then an unfinished record blocks its key; after, its request is presumed dead.
        pub locked_until: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
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
    pub async fn sweep(&self) -> Result<u64, DbErr> {
        let result = record::Entity::delete_many()
            .filter(record::Column::ExpiresAt.lt(Utc::now()))
            .exec(self.db.write())
            .await?;
        Ok(result.rows_affected)
    }
}

impl IdempotencyStore for DatabaseStore {
    type Error = DbErr;

    async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        locked_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Record>, DbErr> {
        use record::Column;
        // Two rounds: the standing record may be released between our insert and our read.
        for _ in 0..2 {
            let now = Utc::now();
            let fresh = record::ActiveModel {
                id: Set(id.to_owned()),
                fingerprint: Set(fingerprint.to_owned()),
                response: Set(None),
                locked_until: Set(locked_until),
                expires_at: Set(expires_at),
                created_at: Set(now),
            };
            let replace_if_dead = Expr::col((record::Entity, Column::ExpiresAt)).lte(now).or(Expr::col((
                record::Entity,
                Column::Response,
            ))
            .is_null()
            .and(Expr::col((record::Entity, Column::LockedUntil)).lte(now)));
            let upsert = OnConflict::column(Column::Id)
                .update_columns([
                    Column::Fingerprint,
                    Column::Response,
                    Column::LockedUntil,
                    Column::ExpiresAt,
                    Column::CreatedAt,
                ])
                .action_and_where(replace_if_dead)
                .to_owned();
            let inserted =
                record::Entity::insert(fresh).on_conflict(upsert).exec_without_returning(self.db.write()).await?;
            if inserted == 1 {
                return Ok(None);
            }
            if let Some(standing) = record::Entity::find_by_id(id).one(self.db.write()).await? {
                return Ok(Some(Record { fingerprint: standing.fingerprint, response: standing.response }));
            }
        }
        Err(DbErr::Custom("idempotency record kept changing under a claim".into()))
    }

    async fn complete(&self, id: &str, response: Vec<u8>, expires_at: DateTime<Utc>) -> Result<(), DbErr> {
        record::Entity::update_many()
            .col_expr(record::Column::Response, Expr::value(response))
            .col_expr(record::Column::ExpiresAt, Expr::value(expires_at))
            .filter(record::Column::Id.eq(id))
            .exec(self.db.write())
            .await
            .map(drop)
    }

    async fn release(&self, id: &str) -> Result<(), DbErr> {
        record::Entity::delete_by_id(id).exec(self.db.write()).await.map(drop)
    }

    async fn renew(&self, id: &str, locked_until: DateTime<Utc>) -> Result<(), DbErr> {
        record::Entity::update_many()
            .col_expr(record::Column::LockedUntil, Expr::value(locked_until))
            .filter(record::Column::Id.eq(id))
            .filter(record::Column::Response.is_null())
            .exec(self.db.write())
            .await
            .map(drop)
    }
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
