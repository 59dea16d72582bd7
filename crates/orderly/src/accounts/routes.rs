//! Account endpoints: registration, the token endpoint, logout, users and API keys.
//! Handlers parse, call the service or store, and respond.

use axum::Extension;
use axum::extract::{FromRef, OriginalUri, Request, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use orderly_kit::Problem;
use orderly_kit::conditional::{CacheControl, conditional_response};
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, PreconditionFailed, Unauthorized, UnsupportedMediaType,
    ValidationFailed,
};
use orderly_kit::extract::{BodyKind, Id, parse_json_object, query_pairs, read_body};
use orderly_kit::fields::select;
use orderly_kit::idempotency::KeyedWrite;
use orderly_kit::pagination::ListBody;
use orderly_kit::problem::ProblemBody;
use orderly_kit::ratelimit::Decision;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::db::Database;
use crate::error::{ApiResult, AppError, Code};
use crate::limits::RateLimits;
use crate::listing::{CreatedAtSort, CreatedAtSortQuery, FieldsQuery, ListParams, PageQuery};
use crate::responses::{Written, written};
use crate::schemas::{Name, Token};

use super::Accounts;
use super::auth::{Admin, Authenticator, Principal};
use super::domain::{Email, Password, Role, UserName};
use super::service::{self, AccountError, Registration, TokenGrant};
use super::store::{self, ApiKey, User, UserBody, UserChanges, UserFilter, user_body};

/// The account routes; the token endpoint also counts password attempts per account.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Accounts: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
    RateLimits: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(token))
        .routes(routes!(logout))
        .routes(routes!(get_me, patch_me))
        .routes(routes!(list_users))
        .routes(routes!(get_user, patch_user))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(get_api_key, delete_api_key))
}

// ---------------------------------------------------------------------------------------------
// Representations

fn user_value(user: &User) -> Value {
    serde_json::to_value(user_body(user)).expect("representations serialize")
}

/// An API key. The secret is shown only in the response that creates it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyBody {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

/// A newly created API key, with its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKeyBody {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// Use as `Authorization: Bearer <secret>`. Shown once; only a digest is stored.
    pub secret: String,
}

fn api_key_body(key: &ApiKey) -> ApiKeyBody {
    ApiKeyBody { id: key.id, name: key.name.clone(), prefix: key.prefix.clone(), created_at: key.created_at }
}

fn api_key_value(key: &ApiKey) -> Value {
    serde_json::to_value(api_key_body(key)).expect("representations serialize")
}

impl From<AccountError> for AppError {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::NotFound => Problem::not_found().into(),
            AccountError::PreconditionFailed => Problem::precondition_failed().into(),
            AccountError::EmailTaken => {
                Problem::conflict(Code::EmailTaken, "An account with this email already exists.").into()
            }
            // The token endpoint answers refused grants in RFC 6749's format (`TokenOutcome`)
            // before they get here; anywhere else a refusal is a plain 400.
            AccountError::InvalidGrant(description) => {
                Problem::new(StatusCode::BAD_REQUEST, Code::InvalidGrant, description).into()
            }
            AccountError::Hashing(error) => AppError::internal(error.to_string()),
            AccountError::Database(error) => error.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration and tokens

/// Body of `POST /auth/register`.
#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// Must be unique.
    email: Email,
    password: Password,
    name: UserName,
}

/// Create a customer account.
#[utoipa::path(
    post, path = "/auth/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = UserBody, headers(("Location" = String, description = "URL of the new user"), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 409, description = "`email_taken`: an account with this email exists; `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn register(
    State(accounts): State<Accounts>,
    key: Option<Extension<KeyedWrite>>,
    Body(RegisterRequest { email, password, name }): Body<RegisterRequest>,
) -> ApiResult {
    let key = key.map(|Extension(key)| key);
    let registration = Registration { email, password, name };
    Ok(service::register(&accounts.db, registration, Role::Customer, key, registered_user).await?.into_response())
}

fn registered_user(user: &User) -> Written {
    Written::created(format!("/api/v1/users/{}", user.id), &user_value(user), user.updated_at)
}

/// Body of `POST /auth/token` (form-encoded or JSON): one of the two grants, by `grant_type`.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case")]
pub enum TokenRequest {
    /// `grant_type=password`: exchange an email and password for tokens.
    Password {
        /// The account email.
        #[schema(example = "customer@example.com", min_length = 1)]
        username: String,
        #[schema(format = Password, example = "customer-password", min_length = 1)]
        password: String,
    },
    /// `grant_type=refresh_token`: exchange a refresh token for new tokens (it rotates).
    RefreshToken {
        #[schema(min_length = 1)]
        refresh_token: String,
    },
}

/// OAuth 2.0 token endpoint (RFC 6749): password and refresh-token grants.
///
/// Refresh tokens rotate on every use; presenting an already-used refresh token revokes every
/// token descending from the same login. Unrecognised parameters are ignored, as RFC 6749
/// requires. Errors use the RFC 6749 §5.2 body. The parameters may also be sent as a JSON
/// object of strings.
#[utoipa::path(
    post, path = "/auth/token", tag = "accounts",
    request_body(content((TokenRequest = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "Tokens issued", body = TokenGrant),
        (status = 400, description = "RFC 6749 error: `invalid_request`, `invalid_grant`, `unsupported_grant_type`", body = OAuthError),
        (status = 413, response = PayloadTooLarge),
        (status = 415, description = "The body is neither form-encoded nor JSON", body = OAuthError),
        (status = 429, description = "Too many token requests, from this address or for this account: RFC 6749 error `temporarily_unavailable`", body = OAuthError,
            headers(("Retry-After" = u64, description = "Seconds to wait"), ("RateLimit" = String), ("RateLimit-Policy" = String))),
    )
)]
async fn token(State(accounts): State<Accounts>, State(limits): State<RateLimits>, request: Request) -> ApiResult {
    let kind = BodyKind::of(request.headers());
    let body = read_body(request).await?;
    let params = match kind {
        Some(BodyKind::Form) => Ok(query_pairs(std::str::from_utf8(&body).ok())),
        Some(BodyKind::Json) => token_params_from_json(&body),
        _ => Err(OAuthError {
            status: 415,
            error: "invalid_request",
            error_description: "send the parameters as application/x-www-form-urlencoded or application/json".into(),
        }),
    };
    let params = match params {
        Ok(params) => params,
        Err(error) => return Ok(error.into_response()),
    };
    let (db, keys, ttl) = (&accounts.db, &accounts.keys, accounts.refresh_token_ttl);
    let mut account_guard = None;
    let outcome = match token_request(params) {
        Err(error) => TokenOutcome::Refused(error),
        Ok(TokenRequest::Password { username, password }) => {
            let guard = limits.check_account_login(&username).await;
            if !guard.allowed {
                return Ok(OAuthError::rate_limited(&guard));
            }
            account_guard = Some(guard);
            TokenOutcome::of(service::grant_password(db, keys, ttl, &username, password).await)?
        }
        Ok(TokenRequest::RefreshToken { refresh_token }) => {
            TokenOutcome::of(service::grant_refresh(db, keys, ttl, &refresh_token).await)?
        }
    };
    let mut response = match outcome {
        TokenOutcome::Granted(grant) => grant.into_response(),
        TokenOutcome::Refused(error) => error.into_response(),
    };
    if let Some(guard) = account_guard {
        guard.write_headers(response.headers_mut());
    }
    Ok(response)
}

/// The token endpoint's answer: tokens, or a refusal in RFC 6749's terms.
enum TokenOutcome {
    Granted(TokenGrant),
    Refused(OAuthError),
}

impl TokenOutcome {
    /// A refused grant becomes RFC 6749 `invalid_grant`; any other failure is an application
    /// error.
    fn of(granted: Result<TokenGrant, AccountError>) -> Result<Self, AppError> {
        match granted {
            Ok(grant) => Ok(Self::Granted(grant)),
            Err(AccountError::InvalidGrant(description)) => Ok(Self::Refused(OAuthError::invalid_grant(description))),
            Err(error) => Err(error.into()),
        }
    }
}

impl IntoResponse for TokenGrant {
    fn into_response(self) -> Response {
        let mut response = axum::Json(self).into_response();
        no_store(&mut response);
        response
    }
}

/// An error response of the token endpoint (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
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

    /// The 429 of a refused token request, with the rate-limit headers: RFC 6749 names no code
    /// for it, so it borrows `temporarily_unavailable`, which a client treats as a refusal to
    /// retry later.
    pub fn rate_limited(decision: &Decision) -> Response {
        let description = format!("too many token requests; retry in {} s", decision.retry_after_secs());
        let refusal = Self { status: 429, error: "temporarily_unavailable", error_description: description };
        decision.refusing(refusal.into_response())
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

fn token_params_from_json(body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let object = parse_json_object(body).map_err(|_| OAuthError::invalid_request("the body must be a JSON object"))?;
    object
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(value) => Ok((name, value)),
            _ => Err(OAuthError::invalid_request(format!("`{name}` must be a string"))),
        })
        .collect()
}

/// Reads the grant from its parameters. A parameter sent without a value counts as omitted
/// (RFC 6749 §3.1) and unrecognised ones are ignored; a repeated one is refused.
fn token_request(params: Vec<(String, String)>) -> Result<TokenRequest, OAuthError> {
    let mut object = Map::new();
    for (name, value) in params {
        if object.contains_key(&name) {
            return Err(OAuthError::invalid_request(format!("`{name}` must be given at most once")));
        }
        if !value.is_empty() {
            object.insert(name, Value::String(value));
        }
    }
    match object.get("grant_type").and_then(Value::as_str) {
        None => return Err(OAuthError::invalid_request("`grant_type` is required")),
        Some("password" | "refresh_token") => {}
        Some(_) => return Err(OAuthError::unsupported_grant_type()),
    }
    serde_json::from_value(Value::Object(object)).map_err(|error| OAuthError::invalid_request(error.to_string()))
}

/// Body of `POST /auth/logout`.
#[derive(Deserialize, ToSchema)]
pub struct LogoutRequest {
    refresh_token: Token,
}

/// Revoke a refresh token and every refresh token descending from the same login. Access
/// tokens already issued stay valid until they expire (`ORDERLY_ACCESS_TOKEN_TTL`, 15 minutes
/// by default): they are checked by signature, not looked up.
#[utoipa::path(
    post, path = "/auth/logout", tag = "accounts",
    request_body = LogoutRequest,
    responses(
        (status = 204, description = "Revoked (also when the token was unknown)"),
        (status = 400, response = BadRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn logout(State(accounts): State<Accounts>, Body(request): Body<LogoutRequest>) -> ApiResult {
    service::logout(&accounts.db, &request.refresh_token.0).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Users

/// The filters of the user list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
    /// Only users with this role.
    role: Option<Role>,
    /// Only the user with this email (case-insensitive).
    email: Option<Email>,
}

/// The caller's own account.
#[utoipa::path(
    get, path = "/users/me", tag = "users", params(FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = UserBody, description = "The caller", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_me(
    State(accounts): State<Accounts>,
    principal: Principal,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let user_id = principal.user_id;
    let user = accounts
        .db
        .current()
        .run(async move |conn| store::find_user(conn, user_id).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(conditional_response(
        &headers,
        &select(fields.as_ref(), user_value(&user)),
        user.updated_at,
        CacheControl::Private,
    ))
}

/// Body of `PATCH /users/me`.
#[derive(Deserialize, ToSchema)]
pub struct UpdateMeRequest {
    name: Option<UserName>,
}

/// Change the caller's own name. Honours `If-Match`.
#[utoipa::path(
    patch, path = "/users/me", tag = "users", request_body = UpdateMeRequest, security(("bearer" = [])),
    params(("If-Match" = Option<String>, Header, description = "Apply only if the user's current ETag matches")),
    responses(
        (status = 200, body = UserBody, description = "Updated", headers(("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 412, response = PreconditionFailed),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn patch_me(
    State(accounts): State<Accounts>,
    principal: Principal,
    headers: HeaderMap,
    Body(UpdateMeRequest { name }): Body<UpdateMeRequest>,
) -> ApiResult {
    let changes = UserChanges { name: name.map(UserName::into_inner), role: None };
    update_user(&accounts.db, headers, principal.user_id, changes).await
}

/// List users (admin).
#[utoipa::path(
    get, path = "/users", tag = "users", params(PageQuery, UserListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<UserBody>, description = "A page of users", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_users(
    State(accounts): State<Accounts>,
    _admin: Admin,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(UserListQuery { sort, role, email }): Params<UserListQuery>,
) -> ApiResult {
    let params = ListParams::new(page, sort.unwrap_or_default());
    let filter = UserFilter { role, email: email.map(|e| e.as_str().to_owned()) };
    let scope = ("users", &params.sort, &filter);
    let after = params.position(&accounts.cursors, &scope)?;
    let page = {
        let (filter, params) = (filter.clone(), params.clone());
        accounts.db.read().run(async move |conn| store::list_users(conn, &filter, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        user_body,
        |last| accounts.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// Get a user (admin).
#[utoipa::path(
    get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path), FieldsQuery),
    responses(
        (status = 200, body = UserBody, description = "The user", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_user(
    State(accounts): State<Accounts>,
    _admin: Admin,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let user = accounts
        .db
        .current()
        .run(async move |conn| store::find_user(conn, id).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(conditional_response(
        &headers,
        &select(fields.as_ref(), user_value(&user)),
        user.updated_at,
        CacheControl::Private,
    ))
}

/// Body of `PATCH /users/{id}`.
#[derive(Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    name: Option<UserName>,
    role: Option<Role>,
}

/// Change a user's name or role (admin). Honours `If-Match`.
#[utoipa::path(
    patch, path = "/users/{id}", tag = "users", request_body = UpdateUserRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Apply only if the user's current ETag matches")),
    responses(
        (status = 200, body = UserBody, description = "Updated", headers(("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn patch_user(
    State(accounts): State<Accounts>,
    _admin: Admin,
    Id(id): Id,
    headers: HeaderMap,
    Body(UpdateUserRequest { name, role }): Body<UpdateUserRequest>,
) -> ApiResult {
    let changes = UserChanges { name: name.map(UserName::into_inner), role };
    update_user(&accounts.db, headers, id, changes).await
}

/// Applies `changes` if `If-Match` matches the user as it stands under its row lock (see
/// [`service::update_user`]).
async fn update_user(db: &Database, headers: HeaderMap, id: Uuid, changes: UserChanges) -> ApiResult {
    let user = service::update_user(db, id, changes, headers, user_value).await?;
    Ok(written(&user_value(&user), user.updated_at))
}

// ---------------------------------------------------------------------------------------------
// API keys

/// Body of `POST /api-keys`.
#[derive(Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    #[schema(example = "CI deploys")]
    name: Name,
}

/// Create an API key for the caller. The secret is in this response only.
#[utoipa::path(
    post, path = "/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = NewApiKeyBody, description = "Created", headers(("Location" = String), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_api_key(
    State(accounts): State<Accounts>,
    principal: Principal,
    key: Option<Extension<KeyedWrite>>,
    Body(CreateApiKeyRequest { name: Name(name) }): Body<CreateApiKeyRequest>,
) -> ApiResult {
    let key = key.map(|Extension(key)| key);
    Ok(service::create_api_key(&accounts.db, principal.user_id, name, key, created_api_key).await?.into_response())
}

/// The new key with its secret, shown this once.
fn created_api_key((api_key, secret): &(ApiKey, String)) -> Written {
    let mut value = api_key_value(api_key);
    value["secret"] = Value::String(secret.clone());
    Written::created(format!("/api/v1/api-keys/{}", api_key.id), &value, api_key.created_at)
}

/// The caller's API keys.
#[utoipa::path(
    get, path = "/api-keys", tag = "api-keys", security(("bearer" = [])),
    params(PageQuery, CreatedAtSortQuery),
    responses(
        (status = 200, body = ListBody<ApiKeyBody>, description = "A page of keys", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_api_keys(
    State(accounts): State<Accounts>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(CreatedAtSortQuery { sort }): Params<CreatedAtSortQuery>,
) -> ApiResult {
    let params = ListParams::new(page, sort.unwrap_or_default());
    let user_id = principal.user_id;
    let scope = ("api_keys", user_id, &params.sort);
    let after = params.position(&accounts.cursors, &scope)?;
    let page = {
        let params = params.clone();
        accounts.db.read().run(async move |conn| store::list_api_keys(conn, user_id, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        api_key_body,
        |last| accounts.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// One of the caller's API keys.
#[utoipa::path(
    get, path = "/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path), FieldsQuery),
    responses(
        (status = 200, body = ApiKeyBody, description = "The key", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_api_key(
    State(accounts): State<Accounts>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let user_id = principal.user_id;
    let key = accounts
        .db
        .current()
        .run(async move |conn| store::find_api_key(conn, user_id, id).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(conditional_response(
        &headers,
        &select(fields.as_ref(), api_key_value(&key)),
        key.created_at,
        CacheControl::Private,
    ))
}

/// Revoke one of the caller's API keys. Honours `If-Match`.
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Delete only if the key's current ETag matches")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
    )
)]
async fn delete_api_key(
    State(accounts): State<Accounts>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
) -> ApiResult {
    service::delete_api_key(&accounts.db, principal.user_id, id, headers, api_key_value).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
