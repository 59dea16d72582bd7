//! Who is calling: the [`Principal`] extractor accepts a JWT access token or an API key as
//! `Authorization: Bearer …`; [`Admin`] additionally requires the admin role. Both work in any
//! router whose state provides an [`Authenticator`].
//!
//! Failures are 401 with `WWW-Authenticate: Bearer` (RFC 6750), or 403 for a caller whose role
//! is not enough. Credentials are never logged.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::{HeaderValue, StatusCode, header, request::Parts};
use orderly_kit::Problem;
use orderly_kit::context::RequestContext;
use uuid::Uuid;

use crate::db::Database;
use crate::error::{AppError, Code};

use super::domain::Role;
use super::store;
use super::tokens::{SigningKeys, hash_secret};

/// API keys start with this prefix; anything else presented as a bearer token is a JWT.
pub const API_KEY_PREFIX: &str = "sk_";

/// An authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub user_id: Uuid,
    pub role: Role,
    /// The API key the caller presented; `None` for an access token.
    pub api_key_id: Option<Uuid>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The owner that scopes what this caller may see: their own id, or `None` for an admin,
    /// who sees everyone's.
    pub fn owner_scope(&self) -> Option<Uuid> {
        (!self.is_admin()).then_some(self.user_id)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal
where
    Authenticator: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        // Middleware that needed the caller first (rate limits, idempotency) has already
        // authenticated.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(*principal);
        }
        Authenticator::from_ref(state).authenticate(&parts.headers).await?.ok_or_else(|| unauthorized(None).into())
    }
}

/// What authenticating a caller takes: the keys that verify access tokens and the database
/// that knows API keys. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    /// Finds API keys on the primary, so a key works the moment it is created.
    pub db: Database,
    pub keys: Arc<SigningKeys>,
}

impl Authenticator {
    /// Authenticates the bearer credential in `headers`: `Ok(None)` when there is none, 401
    /// when it is malformed, unknown or expired.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, AppError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized(Some("The Authorization header must be `Bearer <token>`.")))?;
        let principal = if token.starts_with(API_KEY_PREFIX) {
            let secret_hash = hash_secret(token);
            let found =
                self.db.current().run(async move |conn| store::find_api_key_owner(conn, &secret_hash).await).await?;
            let (key_id, owner) = found.ok_or_else(|| unauthorized(Some("The API key is unknown or revoked.")))?;
            Principal { user_id: owner.id, role: owner.role, api_key_id: Some(key_id) }
        } else {
            let claims = self
                .keys
                .verify_access_token(token)
                .ok_or_else(|| unauthorized(Some("The access token is invalid or expired.")))?;
            let role = Role::parse(&claims.role).ok_or_else(|| unauthorized(Some("The access token is invalid.")))?;
            Principal { user_id: claims.sub, role, api_key_id: None }
        };
        RequestContext::record_user(&principal.user_id.to_string());
        Ok(Some(principal))
    }
}

/// A caller with the admin role.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    Authenticator: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(Self(principal))
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN, Code::Forbidden, "This endpoint requires the admin role.").into())
        }
    }
}

/// 401 with the RFC 6750 challenge; `error="invalid_token"` when a credential was presented.
fn unauthorized(invalid: Option<&str>) -> Problem {
    let (challenge, detail) = match invalid {
        None => {
            ("Bearer realm=\"orderly\"".to_owned(), "Authentication is required: send `Authorization: Bearer <token>`.")
        }
        Some(detail) => {
            (format!("Bearer realm=\"orderly\", error=\"invalid_token\", error_description=\"{detail}\""), detail)
        }
    };
    Problem::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, detail)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ascii challenge"))
}
