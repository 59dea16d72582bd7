//! Account logic: registration, the OAuth 2.0 token grants with refresh-token rotation and
//! reuse detection, logout, user updates and API keys.

use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use orderly_kit::Problem;
use orderly_kit::idempotency::KeyedWrite;
use serde::Serialize;
use uuid::Uuid;

use crate::app::App;
use crate::db::DbError;
use crate::error::{AppError, conflict_on_unique};
use crate::idempotency::{Keyed, answered_already, keyed_transaction};
use crate::responses::Written;

use super::domain::{Email, Password, Role, UserName};
use super::passwords;
use super::store::{self, ApiKey, NewUser, Rotation, User, UserChanges};
use super::tokens::{generate_secret, hash_secret};

const REFRESH_TOKEN_PREFIX: &str = "rt_";

pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub name: UserName,
}

/// Creates a customer account (409 `email_taken` when the address is in use).
pub async fn register(
    app: &App,
    registration: Registration,
    role: Role,
    key: Option<KeyedWrite>,
    render: fn(&User) -> Written,
) -> Result<Keyed<User>, AppError> {
    // A retry of a finished registration is answered before its password is hashed again.
    if let Some(answer) = answered_already(&app.db, key.as_ref()).await? {
        return Ok(Keyed::Answered(answer));
    }
    let email = registration.email.as_str().to_owned();
    let existing = {
        let email = email.clone();
        app.db.current().run(async move |conn| store::find_user_by_email(conn, &email).await).await?
    };
    if existing.is_some() {
        return Err(email_taken().into());
    }
    let password_hash = passwords::hash(registration.password).await?;
    let new = NewUser { email, name: registration.name.into_inner(), role, password_hash };
    keyed_transaction(&app.db, key, render, async move |conn| {
        store::insert_user(conn, new).await.map_err(|error| conflict_on_unique(error, email_taken))
    })
    .await
}

fn email_taken() -> Problem {
    Problem::conflict("email_taken", "An account with this email already exists.")
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

impl IntoResponse for TokenGrant {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self).into_response();
        no_store(&mut response);
        response
    }
}

/// An error response of the token endpoint (RFC 6749 §5.2).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OAuthError {
    #[serde(skip)]
    pub status: u16,
    /// `invalid_request`, `invalid_grant`, `unsupported_grant_type`, …
    pub error: &'static str,
    pub error_description: String,
}

impl OAuthError {
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self { status: 400, error: "invalid_request", error_description: description.into() }
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self { status: 400, error: "invalid_grant", error_description: description.into() }
    }

    pub fn unsupported_grant_type() -> Self {
        Self {
            status: 400,
            error: "unsupported_grant_type",
            error_description: "grant_type must be `password` or `refresh_token`".into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::Json(self)).into_response();
        no_store(&mut response);
        response
    }
}

fn no_store(response: &mut Response) {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The token endpoint's outcome: a grant, a protocol error, or an internal failure.
pub enum TokenOutcome {
    Granted(TokenGrant),
    Refused(OAuthError),
}

/// `grant_type=password`: verifies the credentials and starts a new refresh-token family.
pub async fn grant_password(app: &App, username: &str, password: String) -> Result<TokenOutcome, AppError> {
    let user = match Email::parse(username) {
        Ok(email) => {
            let email = email.as_str().to_owned();
            app.db.current().run(async move |conn| store::find_user_by_email(conn, &email).await).await?
        }
        Err(_) => None,
    };
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let verified = passwords::verify(password, stored).await?;
    let (Some(user), true) = (user, verified) else {
        return Ok(TokenOutcome::Refused(OAuthError::invalid_grant("The email or password is incorrect.")));
    };
    let refresh_token = generate_secret(REFRESH_TOKEN_PREFIX);
    let (user_id, token_hash, expires_at) = (user.id, hash_secret(&refresh_token), refresh_expiry(app));
    app.db
        .write()
        .run(async move |conn| store::insert_refresh_token(conn, Uuid::now_v7(), user_id, token_hash, expires_at).await)
        .await?;
    Ok(TokenOutcome::Granted(grant(app, &user, refresh_token)))
}

/// `grant_type=refresh_token`: rotates the token; a replayed (already rotated) token revokes
/// its whole family, so a stolen token stops working for thief and victim alike.
pub async fn grant_refresh(app: &App, presented: &str) -> Result<TokenOutcome, AppError> {
    let successor = generate_secret(REFRESH_TOKEN_PREFIX);
    let (presented_hash, successor_hash, expires_at) =
        (hash_secret(presented), hash_secret(&successor), refresh_expiry(app));
    let (rotation, user) = app
        .db
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
    let refused = |description: &str| Ok(TokenOutcome::Refused(OAuthError::invalid_grant(description)));
    match rotation {
        Rotation::Rejected => refused("The refresh token is invalid, expired or revoked."),
        Rotation::ReplayDetected => {
            tracing::warn!("refresh token reuse detected; the token family was revoked");
            refused("The refresh token was already used; every token of this login has been revoked.")
        }
        Rotation::Rotated { .. } => match user {
            Some(user) => Ok(TokenOutcome::Granted(grant(app, &user, successor))),
            None => refused("The account no longer exists."),
        },
    }
}

/// Revokes the family of a refresh token. Unknown tokens are accepted silently (RFC 7009 §2.2).
pub async fn logout(app: &App, refresh_token: &str) -> Result<(), AppError> {
    let token_hash = hash_secret(refresh_token);
    app.db.write().run(async move |conn| store::revoke_family_of(conn, &token_hash).await).await.map_err(Into::into)
}

fn grant(app: &App, user: &User, refresh_token: String) -> TokenGrant {
    let (access_token, expires_in) = app.keys.issue_access_token(user.id, user.role);
    TokenGrant { access_token, token_type: "Bearer", expires_in, refresh_token }
}

/// Applies `changes` to user `id` if `precondition` (the `If-Match` check) accepts the user
/// as it stands. Read, check and write happen in one transaction holding the row lock, so the
/// precondition is checked against exactly the row that is written. A change that changes
/// nothing writes nothing. Returns the user as it now is.
pub async fn update_user(
    app: &App,
    id: Uuid,
    changes: UserChanges,
    precondition: impl FnOnce(&User) -> Result<(), Problem> + Send + 'static,
) -> Result<User, AppError> {
    app.db
        .write()
        .transaction(async move |conn| {
            let current = store::lock_user(conn, id).await?.ok_or_else(Problem::not_found)?;
            precondition(&current)?;
            let unchanged = changes.name.as_ref().is_none_or(|n| *n == current.name)
                && changes.role.is_none_or(|r| r == current.role);
            if unchanged {
                return Ok(current);
            }
            Ok::<_, AppError>(store::update_user(conn, &current, changes).await?)
        })
        .await
}

/// Creates an API key for `user_id`; returns it with its secret, shown this once and never
/// stored (only its digest is). With an idempotency key, the key is kept in the same
/// transaction.
pub async fn create_api_key(
    app: &App,
    user_id: Uuid,
    name: String,
    key: Option<KeyedWrite>,
    render: fn(&(ApiKey, String)) -> Written,
) -> Result<Keyed<(ApiKey, String)>, AppError> {
    let secret = generate_secret(super::auth::API_KEY_PREFIX);
    let prefix: String = secret.chars().take(8).collect();
    let secret_hash = hash_secret(&secret);
    keyed_transaction(&app.db, key, render, async move |conn| {
        let api_key = store::insert_api_key(conn, user_id, name, prefix, secret_hash).await?;
        Ok::<_, AppError>((api_key, secret))
    })
    .await
}

/// Deletes key `id` of `user_id` if `precondition` (the `If-Match` check) accepts it as it
/// stands; 404 when the user has no such key.
pub async fn delete_api_key(
    app: &App,
    user_id: Uuid,
    id: Uuid,
    precondition: impl FnOnce(&ApiKey) -> Result<(), Problem> + Send + 'static,
) -> Result<(), AppError> {
    app.db
        .write()
        .run(async move |conn| {
            let key = store::find_api_key(conn, user_id, id).await?.ok_or_else(Problem::not_found)?;
            precondition(&key)?;
            Ok::<_, AppError>(store::delete_api_key(conn, key).await?)
        })
        .await
}

fn refresh_expiry(app: &App) -> chrono::DateTime<Utc> {
    let ttl = chrono::TimeDelta::from_std(app.refresh_token_ttl).unwrap_or(chrono::TimeDelta::days(30));
    crate::db::now() + ttl
}
