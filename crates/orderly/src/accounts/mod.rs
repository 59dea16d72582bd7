//! Accounts: registration, OAuth 2.0 tokens (password and refresh grants with rotation and
//! reuse detection), users, roles and API keys.
//!
//! Owns the `users`, `refresh_tokens` and `api_keys` tables and the token signing keys. Never
//! stores or logs a password, refresh token or API key secret in the clear.

pub mod auth;
pub mod domain;
pub mod passwords;
mod routes;
pub mod service;
pub mod store;
pub mod tokens;

pub use routes::router;
