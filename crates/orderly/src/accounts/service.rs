//! Account logic: registration, the OAuth 2.0 token grants with refresh-token rotation and
//! reuse detection, logout, user updates and API keys. Changes under `If-Match` are checked
//! under the row lock. Failures are [`AccountError`]s, which the routes turn into problems (and
//! refused grants into RFC 6749 errors).

use std::time::Duration;

use chrono::Utc;
use http::HeaderMap;
use orderly_kit::conditional::check_if_match;
use orderly_kit::idempotency::KeyedWrite;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Database, DbError};
use crate::idempotency::{Keyed, answered_already, keyed_transaction};
use crate::responses::Written;

use super::domain::{Email, Password, Role, UserName};
use super::passwords::{self, HashingFailed};
use super::store::{self, ApiKey, NewUser, Rotation, User, UserChanges};
use super::tokens::{SigningKeys, generate_secret, hash_secret};

/// Why an account operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No such user, or no such API key of the caller's.
    #[error("not found")]
    NotFound,
    #[error("the current representation does not match `If-Match`")]
    PreconditionFailed,
    #[error("an account with this email already exists")]
    EmailTaken,
    /// A token grant was refused (RFC 6749 `invalid_grant`); the description says why.
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error(transparent)]
    Hashing(#[from] HashingFailed),
    #[error(transparent)]
    Database(#[from] DbError),
}

const REFRESH_TOKEN_PREFIX: &str = "rt_";

pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub name: UserName,
}

/// Creates an account; [`AccountError::EmailTaken`] when the address is in use.
pub async fn register(
    db: &Database,
    registration: Registration,
    role: Role,
    key: Option<KeyedWrite>,
    render: fn(&User) -> Written,
) -> Result<Keyed<User>, AccountError> {
    // A retry of a finished registration is answered before its password is hashed again.
    if let Some(answer) = answered_already(db, key.as_ref()).await? {
        return Ok(Keyed::Answered(answer));
    }
    let email = registration.email.as_str().to_owned();
    let existing = {
        let email = email.clone();
        db.current().run(async move |conn| store::find_user_by_email(conn, &email).await).await?
    };
    if existing.is_some() {
        return Err(AccountError::EmailTaken);
    }
    let password_hash = passwords::hash(registration.password).await?;
    let new = NewUser { email, name: registration.name.into_inner(), role, password_hash };
    keyed_transaction(db, key, render, async move |conn| {
        // Another registration may take the address between the check above and this insert.
        store::insert_user(conn, new)
            .await
            .map_err(|error| if error.is_unique_violation() { AccountError::EmailTaken } else { error.into() })
    })
    .await
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenGrant {
    /// JWT access token, Ed25519-signed.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use refresh token; each use returns a new one.
    pub refresh_token: String,
}

/// `grant_type=password`: verifies the credentials and starts a new refresh-token family that
/// lasts `refresh_token_ttl`.
pub async fn grant_password(
    db: &Database,
    keys: &SigningKeys,
    refresh_token_ttl: Duration,
    username: &str,
    password: String,
) -> Result<TokenGrant, AccountError> {
    let user = match Email::parse(username.trim()) {
        Ok(email) => {
            let email = email.as_str().to_owned();
            db.current().run(async move |conn| store::find_user_by_email(conn, &email).await).await?
        }
        Err(_) => None,
    };
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let verified = passwords::verify(password, stored).await?;
    let (Some(user), true) = (user, verified) else {
        return Err(AccountError::InvalidGrant("The email or password is incorrect."));
    };
    let refresh_token = generate_secret(REFRESH_TOKEN_PREFIX);
    let (user_id, token_hash, expires_at) = (user.id, hash_secret(&refresh_token), refresh_expiry(refresh_token_ttl));
    db.write()
        .run(async move |conn| store::insert_refresh_token(conn, Uuid::now_v7(), user_id, token_hash, expires_at).await)
        .await?;
    Ok(grant(keys, &user, refresh_token))
}

/// `grant_type=refresh_token`: rotates the token; a replayed (already rotated) token revokes
/// its whole family, so a stolen token stops working for thief and victim alike.
pub async fn grant_refresh(
    db: &Database,
    keys: &SigningKeys,
    refresh_token_ttl: Duration,
    presented: &str,
) -> Result<TokenGrant, AccountError> {
    let successor = generate_secret(REFRESH_TOKEN_PREFIX);
    let (presented_hash, successor_hash, expires_at) =
        (hash_secret(presented), hash_secret(&successor), refresh_expiry(refresh_token_ttl));
    let (rotation, user) = db
        .write()
        .transaction(async move |conn| {
            let rotation = store::rotate_refresh_token(conn, &presented_hash, successor_hash, expires_at).await?;
            let user = match rotation {
                Rotation::Rotated { user_id } => store::find_user(conn, user_id).await?,
                Rotation::Rejected | Rotation::ReplayDetected => None,
            };
            Ok::<_, DbError>((rotation, user))
        })
        .await?;
    match rotation {
        Rotation::Rejected => Err(AccountError::InvalidGrant("The refresh token is invalid, expired or revoked.")),
        Rotation::ReplayDetected => {
            tracing::warn!("refresh token reuse detected; the token family was revoked");
            Err(AccountError::InvalidGrant(
                "The refresh token was already used; every token of this login has been revoked.",
            ))
        }
        Rotation::Rotated { .. } => match user {
            Some(user) => Ok(grant(keys, &user, successor)),
            None => Err(AccountError::InvalidGrant("The account no longer exists.")),
        },
    }
}

/// Revokes the family of a refresh token. Unknown tokens are accepted silently (RFC 7009 §2.2).
pub async fn logout(db: &Database, refresh_token: &str) -> Result<(), AccountError> {
    let token_hash = hash_secret(refresh_token);
    db.write().run(async move |conn| store::revoke_family_of(conn, &token_hash).await).await.map_err(Into::into)
}

fn grant(keys: &SigningKeys, user: &User, refresh_token: String) -> TokenGrant {
    let (access_token, expires_in) = keys.issue_access_token(user.id, user.role);
    TokenGrant { access_token, token_type: "Bearer", expires_in, refresh_token }
}

/// Applies `changes` to user `id` if the client's `If-Match` (in `request_headers`) matches
/// the user's current representation, as `render` makes it. Read, check and write happen in
/// one transaction holding the row lock, so the precondition is checked against exactly the row
/// that is written. A change that changes nothing writes nothing. Returns the user as it now is.
pub async fn update_user(
    db: &Database,
    id: Uuid,
    changes: UserChanges,
    request_headers: HeaderMap,
    render: fn(&User) -> Value,
) -> Result<User, AccountError> {
    db.write()
        .transaction(async move |conn| {
            let current = store::lock_user(conn, id).await?.ok_or(AccountError::NotFound)?;
            check_if_match(&request_headers, &render(&current)).map_err(|_| AccountError::PreconditionFailed)?;
            let unchanged = changes.name.as_ref().is_none_or(|n| *n == current.name)
                && changes.role.is_none_or(|r| r == current.role);
            if unchanged {
                return Ok(current);
            }
            Ok::<_, AccountError>(store::update_user(conn, &current, changes).await?)
        })
        .await
}

/// Creates an API key for `user_id`; returns it with its secret, shown this once and never
/// stored (only its digest is). With an idempotency key, the key is kept in the same
/// transaction.
pub async fn create_api_key(
    db: &Database,
    user_id: Uuid,
    name: String,
    key: Option<KeyedWrite>,
    render: fn(&(ApiKey, String)) -> Written,
) -> Result<Keyed<(ApiKey, String)>, AccountError> {
    let secret = generate_secret(super::auth::API_KEY_PREFIX);
    let prefix: String = secret.chars().take(8).collect();
    let secret_hash = hash_secret(&secret);
    keyed_transaction(db, key, render, async move |conn| {
        let api_key = store::insert_api_key(conn, user_id, name, prefix, secret_hash).await?;
        Ok::<_, AccountError>((api_key, secret))
    })
    .await
}

/// Deletes key `id` of `user_id` if the client's `If-Match` (in `request_headers`) matches the
/// key's current representation, as `render` makes it; [`AccountError::NotFound`] when the
/// user has no such key.
pub async fn delete_api_key(
    db: &Database,
    user_id: Uuid,
    id: Uuid,
    request_headers: HeaderMap,
    render: fn(&ApiKey) -> Value,
) -> Result<(), AccountError> {
    db.write()
        .run(async move |conn| {
            let key = store::find_api_key(conn, user_id, id).await?.ok_or(AccountError::NotFound)?;
            check_if_match(&request_headers, &render(&key)).map_err(|_| AccountError::PreconditionFailed)?;
            Ok::<_, AccountError>(store::delete_api_key(conn, key).await?)
        })
        .await
}

fn refresh_expiry(refresh_token_ttl: Duration) -> chrono::DateTime<Utc> {
    let ttl = chrono::TimeDelta::from_std(refresh_token_ttl).unwrap_or(chrono::TimeDelta::days(30));
    crate::db::now() + ttl
}
