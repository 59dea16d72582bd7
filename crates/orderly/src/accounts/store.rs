//! Account storage: users, refresh-token families and API keys. The only place in this module
//! that touches the database.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, Param, Row, now};
use crate::events::EventType;
use crate::events::store as events;
use crate::listing::{ListParams, and_where, seek};
use orderly_kit::pagination::Page;

use super::domain::Role;

/// A user row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    /// Unique.
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns [`User::from_row`] reads, in its order; `user_columns!("u")` qualifies them
/// with a table alias (a macro, so queries are `concat!`ed into constant text).
macro_rules! user_columns {
    () => {
        "id, email, name, role, password_hash, version, created_at, updated_at"
    };
    ($table:literal) => {
        concat!(
            $table,
            ".id, ",
            $table,
            ".email, ",
            $table,
            ".name, ",
            $table,
            ".role, ",
            $table,
            ".password_hash, ",
            $table,
            ".version, ",
            $table,
            ".created_at, ",
            $table,
            ".updated_at"
        )
    };
}

impl User {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            email: row.get(1)?,
            name: row.get(2)?,
            role: parse_role(row.get(3)?)?,
            password_hash: row.get(4)?,
            version: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
        })
    }
}

fn parse_role(raw: String) -> Result<Role, DbError> {
    Role::parse(&raw).ok_or_else(|| DbError::corrupt(format!("users.role: unknown role {raw:?}")))
}

/// A refresh-token row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    pub id: Uuid,
    /// Every token descending from one login shares a family; replaying a used token
    /// revokes the whole family.
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    /// Set when the token is exchanged for its successor.
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The columns [`RefreshToken::from_row`] reads, in its order.
macro_rules! refresh_token_columns {
    () => {
        "id, family_id, user_id, token_hash, expires_at, used_at, revoked_at, created_at"
    };
}

impl RefreshToken {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            family_id: row.get(1)?,
            user_id: row.get(2)?,
            token_hash: row.get(3)?,
            expires_at: row.get(4)?,
            used_at: row.get(5)?,
            revoked_at: row.get(6)?,
            created_at: row.get(7)?,
        })
    }
}

/// An API key row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The first characters of the secret, shown so people can tell keys apart.
    pub prefix: String,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A user account.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// Incremented on every change; the ETag changes with it.
    pub version: i64,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

pub fn user_body(user: &User) -> UserBody {
    UserBody {
        id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
        role: user.role,
        version: user.version,
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}

impl User {
    /// The user as the API serves it.
    pub fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&user_body(self)).expect("representations serialize")
    }
}

/// The columns [`ApiKey::from_row`] reads, in its order.
macro_rules! api_key_columns {
    () => {
        "id, user_id, name, prefix, secret_hash, created_at"
    };
}

impl ApiKey {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            user_id: row.get(1)?,
            name: row.get(2)?,
            prefix: row.get(3)?,
            secret_hash: row.get(4)?,
            created_at: row.get(5)?,
        })
    }
}

pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

pub async fn insert_user(conn: &mut Conn<'_>, new: NewUser) -> Result<User, DbError> {
    let now = now();
    let user = User {
        id: Uuid::now_v7(),
        email: new.email,
        name: new.name,
        role: new.role,
        password_hash: new.password_hash,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    conn.execute(
        "INSERT INTO users (id, email, name, role, password_hash, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &user.id,
            &user.email,
            &user.name,
            &user.role.as_str(),
            &user.password_hash,
            &user.version,
            &user.created_at,
            &user.updated_at,
        ],
    )
    .await?;
    events::record(conn, EventType::UserCreated, user.id, &user.json()).await?;
    Ok(user)
}

/// How many users exist.
pub async fn count_users(conn: &mut Conn<'_>) -> Result<u64, DbError> {
    let count = conn.query_one("SELECT count(*) FROM users", &[], |row| row.get::<i64>(0)).await?;
    u64::try_from(count).map_err(|_| DbError::corrupt(format!("negative user count {count}")))
}

pub async fn find_user(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<User>, DbError> {
    const SQL: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    conn.query_opt(SQL, &[&id], User::from_row).await
}

pub async fn find_user_by_email(conn: &mut Conn<'_>, email: &str) -> Result<Option<User>, DbError> {
    const SQL: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE email = $1");
    conn.query_opt(SQL, &[&email], User::from_row).await
}

/// Filters of the admin user list.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UserFilter {
    pub role: Option<Role>,
    pub email: Option<String>,
}

pub async fn list_users(
    conn: &mut Conn<'_>,
    filter: &UserFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<User>, DbError> {
    let mut sql = String::from(concat!("SELECT ", user_columns!(), " FROM users WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    let role = filter.role.map(Role::as_str);
    if let Some(role) = &role {
        and_where(&mut sql, &mut values, "role = $", role);
    }
    if let Some(email) = &filter.email {
        and_where(&mut sql, &mut values, "email = $", email);
    }
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, User::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub name: Option<String>,
    pub role: Option<Role>,
}

/// The user, locked for update until the transaction ends (`FOR UPDATE` on PostgreSQL; SQLite
/// has a single writer).
pub async fn lock_user(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<User>, DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1 FOR UPDATE"),
        Backend::Sqlite => concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
    };
    conn.query_opt(sql, &[&id], User::from_row).await
}

/// Applies `changes` to a user read with [`lock_user`] in the same transaction.
pub async fn update_user(conn: &mut Conn<'_>, current: &User, changes: UserChanges) -> Result<User, DbError> {
    let updated = User {
        name: changes.name.unwrap_or_else(|| current.name.clone()),
        role: changes.role.unwrap_or(current.role),
        version: current.version + 1,
        updated_at: now(),
        ..current.clone()
    };
    let changed = conn
        .execute(
            "UPDATE users SET name = $1, role = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6",
            &[
                &updated.name,
                &updated.role.as_str(),
                &updated.version,
                &updated.updated_at,
                &current.id,
                &current.version,
            ],
        )
        .await?;
    if changed != 1 {
        return Err(DbError::Other(format!("user {} changed under its lock", current.id)));
    }
    Ok(updated)
}

/// Starts a new refresh-token family (a login).
pub async fn insert_refresh_token(
    conn: &mut Conn<'_>,
    family_id: Uuid,
    user_id: Uuid,
    token_hash: String,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, used_at, revoked_at, created_at)
         VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6)",
        &[&Uuid::now_v7(), &family_id, &user_id, &token_hash, &expires_at, &now()],
    )
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

/// Exchanges a refresh token for its successor atomically (call it inside a transaction). A
/// token can be exchanged once; the conditional `used_at IS NULL` update decides which of two
/// concurrent exchanges wins, and the loser is treated as a replay. Every outcome is `Ok`, so
/// the transaction commits the revocation a replay writes.
pub async fn rotate_refresh_token(
    conn: &mut Conn<'_>,
    presented_hash: &str,
    successor_hash: String,
    successor_expires_at: DateTime<Utc>,
) -> Result<Rotation, DbError> {
    const FIND: &str = concat!("SELECT ", refresh_token_columns!(), " FROM refresh_tokens WHERE token_hash = $1");
    let Some(token) = conn.query_opt(FIND, &[&presented_hash], RefreshToken::from_row).await? else {
        return Ok(Rotation::Rejected);
    };
    let now = now();
    if token.revoked_at.is_some() || token.expires_at <= now {
        return Ok(Rotation::Rejected);
    }
    let claimed = conn
        .execute(
            "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL",
            &[&now, &token.id],
        )
        .await?;
    if claimed == 0 {
        revoke_family_in(conn, token.family_id).await?;
        return Ok(Rotation::ReplayDetected);
    }
    insert_refresh_token(conn, token.family_id, token.user_id, successor_hash, successor_expires_at).await?;
    Ok(Rotation::Rotated { user_id: token.user_id })
}

/// Revokes the family of the given token, if it exists.
pub async fn revoke_family_of(conn: &mut Conn<'_>, token_hash: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = $1
         WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $2) AND revoked_at IS NULL",
        &[&now(), &token_hash],
    )
    .await
    .map(drop)
}

async fn revoke_family_in(conn: &mut Conn<'_>, family_id: Uuid) -> Result<(), DbError> {
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        &[&now(), &family_id],
    )
    .await
    .map(drop)
}

pub async fn insert_api_key(
    conn: &mut Conn<'_>,
    user_id: Uuid,
    name: String,
    prefix: String,
    secret_hash: String,
) -> Result<ApiKey, DbError> {
    let key = ApiKey { id: Uuid::now_v7(), user_id, name, prefix, secret_hash, created_at: now() };
    conn.execute(
        "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&key.id, &key.user_id, &key.name, &key.prefix, &key.secret_hash, &key.created_at],
    )
    .await?;
    Ok(key)
}

/// The id of the key with this secret hash, and its owner.
pub async fn find_api_key_owner(conn: &mut Conn<'_>, secret_hash: &str) -> Result<Option<(Uuid, User)>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        user_columns!("u"),
        ", k.id FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.secret_hash = $1"
    );
    conn.query_opt(SQL, &[&secret_hash], |row| Ok((row.get(8)?, User::from_row(row)?))).await
}

/// A key owned by `user_id`; another user's key is indistinguishable from a missing one.
pub async fn find_api_key(conn: &mut Conn<'_>, user_id: Uuid, id: Uuid) -> Result<Option<ApiKey>, DbError> {
    const SQL: &str = concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = $1 AND user_id = $2");
    conn.query_opt(SQL, &[&id, &user_id], ApiKey::from_row).await
}

pub async fn list_api_keys(
    conn: &mut Conn<'_>,
    user_id: Uuid,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<ApiKey>, DbError> {
    let mut sql = String::from(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE user_id = $1"));
    let mut values: Vec<&dyn Param> = vec![&user_id];
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, ApiKey::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

pub async fn delete_api_key(conn: &mut Conn<'_>, key: ApiKey) -> Result<(), DbError> {
    conn.execute("DELETE FROM api_keys WHERE id = $1", &[&key.id]).await.map(drop)
}
