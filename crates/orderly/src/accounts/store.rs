//! Account storage: users, refresh-token families and API keys. The only place in this module
//! that touches the database.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set,
    TransactionTrait,
};
use uuid::Uuid;

use crate::db::now;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

pub mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub email: String,
        pub name: String,
        pub role: String,
        pub password_hash: String,
        pub version: i64,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Every token descending from one login shares a family; replaying a used token
        /// revokes the whole family.
        pub family_id: Uuid,
        pub user_id: Uuid,
        pub token_hash: String,
        pub expires_at: DateTimeUtc,
        /// Set when the token is exchanged for its successor.
        pub used_at: Option<DateTimeUtc>,
        pub revoked_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub user_id: Uuid,
        pub name: String,
        /// The first characters of the secret, shown so people can tell keys apart.
        pub prefix: String,
        pub secret_hash: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use user::Model as User;

pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: &'static str,
    pub password_hash: String,
}

pub async fn insert_user(db: &impl ConnectionTrait, new: NewUser) -> Result<User, DbErr> {
    let now = now();
    user::ActiveModel {
        id: Set(Uuid::now_v7()),
        email: Set(new.email),
        name: Set(new.name),
        role: Set(new.role.to_owned()),
        password_hash: Set(new.password_hash),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
}

/// How many users exist.
pub async fn count_users(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    sea_orm::PaginatorTrait::count(user::Entity::find(), db).await
}

pub async fn find_user(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<User>, DbErr> {
    user::Entity::find_by_id(id).one(db).await
}

pub async fn find_user_by_email(db: &impl ConnectionTrait, email: &str) -> Result<Option<User>, DbErr> {
    user::Entity::find().filter(user::Column::Email.eq(email)).one(db).await
}

/// Filters of the admin user list.
#[derive(Debug, Default, serde::Serialize)]
pub struct UserFilter {
    pub role: Option<&'static str>,
    pub email: Option<String>,
}

pub async fn list_users(
    db: &impl ConnectionTrait,
    filter: &UserFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<User>, DbErr> {
    let mut select = user::Entity::find();
    if let Some(role) = filter.role {
        select = select.filter(user::Column::Role.eq(role));
    }
    if let Some(email) = &filter.email {
        select = select.filter(user::Column::Email.eq(email.as_str()));
    }
    let after = after.map(|(created_at, id)| (Expr::value(created_at), id));
    let rows = seek(select, user::Column::CreatedAt, user::Column::Id, params.sort.descending, after, params.limit)
        .all(db)
        .await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub name: Option<String>,
    pub role: Option<&'static str>,
}

/// The user, locked for update until the transaction ends (`FOR UPDATE` on PostgreSQL; SQLite
/// has a single writer).
pub async fn lock_user(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<User>, DbErr> {
    user::Entity::find_by_id(id).lock_exclusive().one(db).await
}

/// Applies `changes` to a user read with [`lock_user`] in the same transaction.
pub async fn update_user(db: &impl ConnectionTrait, current: &User, changes: UserChanges) -> Result<User, DbErr> {
    let updated_at = now();
    let result = user::Entity::update_many()
        .col_expr(user::Column::Name, Expr::value(changes.name.clone().unwrap_or_else(|| current.name.clone())))
        .col_expr(user::Column::Role, Expr::value(changes.role.unwrap_or(&current.role)))
        .col_expr(user::Column::Version, Expr::value(current.version + 1))
        .col_expr(user::Column::UpdatedAt, Expr::value(updated_at))
        .filter(user::Column::Id.eq(current.id))
        .filter(user::Column::Version.eq(current.version))
        .exec(db)
        .await?;
    if result.rows_affected != 1 {
        return Err(DbErr::RecordNotUpdated);
    }
    Ok(User {
        name: changes.name.unwrap_or_else(|| current.name.clone()),
        role: changes.role.map(str::to_owned).unwrap_or_else(|| current.role.clone()),
        version: current.version + 1,
        updated_at,
        ..current.clone()
    })
}

/// Starts a new refresh-token family (a login).
pub async fn insert_refresh_token(
    db: &impl ConnectionTrait,
    family_id: Uuid,
    user_id: Uuid,
    token_hash: String,
    expires_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    refresh_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        family_id: Set(family_id),
        user_id: Set(user_id),
        token_hash: Set(token_hash),
        expires_at: Set(expires_at),
        used_at: Set(None),
        revoked_at: Set(None),
        created_at: Set(now()),
    }
    .insert(db)
    .await
    .map(drop)
}

/// What happened when a refresh token was presented.
pub enum Rotation {
    /// The token was current: it is now used, and its successor is stored.
    Rotated { user_id: Uuid },
    /// Unknown, expired or revoked.
    Rejected,
    /// Already used once: the whole family has been revoked.
    ReplayDetected,
}

/// Exchanges a refresh token for its successor atomically. A token can be exchanged once; the
/// conditional `used_at IS NULL` update decides which of two concurrent exchanges wins, and
/// the loser is treated as a replay.
pub async fn rotate_refresh_token(
    db: &impl TransactionTrait,
    presented_hash: &str,
    successor_hash: String,
    successor_expires_at: DateTime<Utc>,
) -> Result<Rotation, DbErr> {
    let transaction = db.begin().await?;
    let Some(token) = refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(presented_hash))
        .one(&transaction)
        .await?
    else {
        return Ok(Rotation::Rejected);
    };
    let now = now();
    if token.revoked_at.is_some() || token.expires_at <= now {
        return Ok(Rotation::Rejected);
    }
    let claimed = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::Id.eq(token.id))
        .filter(refresh_token::Column::UsedAt.is_null())
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(&transaction)
        .await?;
    if claimed.rows_affected == 0 {
        revoke_family_in(&transaction, token.family_id).await?;
        transaction.commit().await?;
        return Ok(Rotation::ReplayDetected);
    }
    insert_refresh_token(&transaction, token.family_id, token.user_id, successor_hash, successor_expires_at).await?;
    transaction.commit().await?;
    Ok(Rotation::Rotated { user_id: token.user_id })
}

/// Revokes the family of the given token, if it exists.
pub async fn revoke_family_of(db: &impl ConnectionTrait, token_hash: &str) -> Result<(), DbErr> {
    let token = refresh_token::Entity::find().filter(refresh_token::Column::TokenHash.eq(token_hash)).one(db).await?;
    if let Some(token) = token {
        revoke_family_in(db, token.family_id).await?;
    }
    Ok(())
}

async fn revoke_family_in(db: &impl ConnectionTrait, family_id: Uuid) -> Result<(), DbErr> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(now()))
        .filter(refresh_token::Column::FamilyId.eq(family_id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(db)
        .await
        .map(drop)
}

pub use api_key::Model as ApiKey;

pub async fn insert_api_key(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    name: String,
    prefix: String,
    secret_hash: String,
) -> Result<ApiKey, DbErr> {
    api_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id),
        name: Set(name),
        prefix: Set(prefix),
        secret_hash: Set(secret_hash),
        created_at: Set(now()),
    }
    .insert(db)
    .await
}

/// The key with this secret digest and its owner.
/// The id of the key with this secret hash, and its owner.
pub async fn find_api_key_owner(db: &impl ConnectionTrait, secret_hash: &str) -> Result<Option<(Uuid, User)>, DbErr> {
    let Some(key) = api_key::Entity::find().filter(api_key::Column::SecretHash.eq(secret_hash)).one(db).await? else {
        return Ok(None);
    };
    Ok(find_user(db, key.user_id).await?.map(|owner| (key.id, owner)))
}

/// A key owned by `user_id`; another user's key is indistinguishable from a missing one.
pub async fn find_api_key(db: &impl ConnectionTrait, user_id: Uuid, id: Uuid) -> Result<Option<ApiKey>, DbErr> {
    api_key::Entity::find_by_id(id).filter(api_key::Column::UserId.eq(user_id)).one(db).await
}

pub async fn list_api_keys(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<ApiKey>, DbErr> {
    let select = api_key::Entity::find().filter(api_key::Column::UserId.eq(user_id));
    let after = after.map(|(created_at, id)| (Expr::value(created_at), id));
    let rows =
        seek(select, api_key::Column::CreatedAt, api_key::Column::Id, params.sort.descending, after, params.limit)
            .all(db)
            .await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

pub async fn delete_api_key(db: &impl ConnectionTrait, key: ApiKey) -> Result<(), DbErr> {
    key.into_active_model().delete(db).await.map(drop)
}
