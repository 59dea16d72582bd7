//! Accounts: registration, OAuth 2.0 tokens (password and refresh grants with rotation and
//! reuse detection), users, roles and API keys.
//!
//! Owns the `users`, `refresh_tokens` and `api_keys` tables and the token signing keys. Never
//! stores or logs a password, refresh token or API key secret in the clear.

use std::sync::Arc;
use std::time::Duration;

use orderly_kit::cursor::CursorCodec;

use crate::db::Database;

pub mod auth;
pub mod domain;
pub mod passwords;
mod routes;
pub mod service;
pub mod store;
pub mod tokens;

pub use routes::{OAuthError, router};

/// What the account endpoints use. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Accounts {
    pub db: Database,
    /// Sign the access tokens the token endpoint issues.
    pub keys: Arc<tokens::SigningKeys>,
    pub cursors: CursorCodec,
    /// How long a refresh token lasts (`ORDERLY_REFRESH_TOKEN_TTL`).
    pub refresh_token_ttl: Duration,
}
