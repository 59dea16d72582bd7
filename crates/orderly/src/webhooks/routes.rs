//! Webhook endpoints (admin): register, list, change, delete, rotate the secret, and see and
//! resend deliveries.

use axum::Json;
use axum::extract::{FromRef, OriginalUri, Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::StatusCode;
use orderly_kit::Problem;
use orderly_kit::conditional::CacheControl;
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use orderly_kit::extract::{Id, parse_id};
use orderly_kit::pagination::ListBody;
use orderly_kit::problem::{FieldError, ProblemBody};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator};
use crate::error::{ApiResult, AppError, Code};
use crate::events::EventType;
use crate::listing::{CreatedAtSort, ListParams, PageQuery};
use crate::responses::{created, written};
use crate::schemas::Description;

use super::Webhooks;
use super::signature::new_secret;
use super::store::{self, Attempt, Delivery, DeliveryStatus, Endpoint, NewEndpoint};
use super::target::TargetUrl;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Webhooks: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(recover))
}

/// An endpoint that receives events.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookBody {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Event types it receives; `*` is every type.
    pub events: Vec<String>,
    /// False once disabled: by an admin, by a 410 from the receiver, or after failing too long.
    pub enabled: bool,
    /// Why it was disabled, when it was not by an admin.
    pub disabled_reason: Option<String>,
    /// Since when its deliveries fail (none since the last success).
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failing_since: Option<DateTime<Utc>>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation also signs deliveries.
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with its signing secret: shown once, when registered or rotated.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecretBody {
    #[serde(flatten)]
    pub webhook: WebhookBody,
    /// `whsec_…`: the HMAC-SHA256 key of `Orderly-Signature`. Keep it; it is not shown again.
    pub secret: String,
}

fn webhook_body(endpoint: &Endpoint) -> WebhookBody {
    WebhookBody {
        id: endpoint.id,
        url: endpoint.url.clone(),
        description: endpoint.description.clone(),
        events: endpoint.events.clone(),
        enabled: endpoint.enabled,
        disabled_reason: endpoint.disabled_reason.clone(),
        failing_since: endpoint.failing_since,
        last_success_at: endpoint.last_success_at,
        previous_secret_expires_at: endpoint.previous_secret_expires_at,
        created_at: endpoint.created_at,
        updated_at: endpoint.updated_at,
    }
}

fn webhook_value(endpoint: &Endpoint) -> Value {
    serde_json::to_value(webhook_body(endpoint)).expect("representations serialize")
}

fn with_secret(endpoint: &Endpoint) -> Value {
    let body = WebhookWithSecretBody { webhook: webhook_body(endpoint), secret: endpoint.secret.clone() };
    serde_json::to_value(body).expect("representations serialize")
}

/// A delivery of one event to one endpoint, with every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    /// When it is attempted next, while pending.
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

fn delivery_body(delivery: &Delivery) -> DeliveryBody {
    DeliveryBody {
        id: delivery.id,
        webhook_id: delivery.endpoint_id,
        event_id: delivery.event_id,
        event_type: delivery.event_type.clone(),
        status: delivery.status,
        attempt_count: delivery.attempt_count,
        next_attempt_at: delivery.next_attempt_at,
        attempts: delivery.attempts.clone(),
        created_at: delivery.created_at,
        updated_at: delivery.updated_at,
    }
}

/// Event types an endpoint receives: each a type's name, or `*` for every type.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct EventFilter(Vec<String>);

impl utoipa::PartialSchema for EventFilter {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let names: Vec<&str> = std::iter::once("*").chain(EventType::ALL.iter().map(|kind| kind.as_str())).collect();
        ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)))
            .min_items(Some(1))
            .max_items(Some(MAX_EVENT_TYPES))
            .description(Some("Event types the endpoint receives: each a type's name, or `*` for every type."))
            .build()
            .into()
    }
}

impl utoipa::ToSchema for EventFilter {}

/// More would only repeat: there are fewer types than this.
const MAX_EVENT_TYPES: usize = 32;

impl TryFrom<Vec<String>> for EventFilter {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        if names.is_empty() {
            return Err("name at least one event type, or `*`".into());
        }
        if names.len() > MAX_EVENT_TYPES {
            return Err(format!("at most {MAX_EVENT_TYPES} event types"));
        }
        for name in &names {
            if name != "*" && EventType::parse(name).is_none() {
                return Err(format!("`{name}` is not an event type"));
            }
        }
        let mut names = names;
        names.sort();
        names.dedup();
        Ok(Self(names))
    }
}

/// Body of `POST /webhooks`.
#[derive(Deserialize, ToSchema)]
pub struct CreateWebhookRequest {
    /// `https://…` (plain `http` only for targets on the operator's allow-list); no
    /// credentials; must not resolve to a private, loopback, link-local or otherwise internal
    /// address unless the allow-list names it.
    #[schema(max_length = 2048, format = "uri", example = "https://hooks.example.com/orderly")]
    url: String,
    events: EventFilter,
    description: Option<Description>,
}

/// Body of `PATCH /webhooks/{id}`: any subset of the fields.
#[derive(Deserialize, ToSchema)]
pub struct UpdateWebhookRequest {
    #[schema(max_length = 2048, format = "uri")]
    url: Option<String>,
    events: Option<EventFilter>,
    description: Option<Description>,
    /// `true` enables a disabled endpoint (its failure record starts over); `false` disables it.
    enabled: Option<bool>,
}

/// Body of `POST /webhooks/{id}/recover`.
#[derive(Deserialize, ToSchema)]
pub struct RecoverRequest {
    /// Resend every failed delivery created at or after this instant (RFC 3339).
    since: DateTime<Utc>,
}

/// What `POST /webhooks/{id}/recover` did.
#[derive(Serialize, ToSchema)]
pub struct RecoveredBody {
    /// Failed deliveries made due again.
    pub recovered: u64,
}

/// Checks a URL as registration requires, as a 422 that says why.
async fn checked_url(webhooks: &Webhooks, raw: &str) -> Result<String, AppError> {
    TargetUrl::check(raw, &webhooks.allow).await.map(|url| url.as_str().to_owned()).map_err(|refusal| {
        match refusal.code() {
            "unsafe_url" => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, Code::UnsafeUrl, refusal.to_string()).into(),
            code => Problem::validation(vec![FieldError::new("url", code, refusal.to_string())]).into(),
        }
    })
}

/// List webhook endpoints (admin), newest first by default.
#[utoipa::path(
    get, path = "/webhooks", tag = "webhooks", params(PageQuery, WebhookListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<WebhookBody>, description = "A page of endpoints", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_webhooks(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(query): Params<WebhookListQuery>,
) -> ApiResult {
    let params = ListParams::new(page, query.sort.unwrap_or_default());
    let scope = ("webhooks", &params.sort);
    let after = params.position(&webhooks.cursors, &scope)?;
    let page = {
        let params = params.clone();
        webhooks.db.read().run(async move |conn| store::list_endpoints(conn, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        webhook_body,
        |last| webhooks.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// The sort of a webhook list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
}

/// Register an endpoint (admin). The answer holds the signing secret, shown this once.
#[utoipa::path(
    post, path = "/webhooks", tag = "webhooks", request_body = CreateWebhookRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = WebhookWithSecretBody, description = "Registered", headers(("Location" = String), ("ETag" = String), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`unsafe_url`: the URL is not https, carries credentials, or resolves to an address webhooks may not reach; `validation_failed`: a field is invalid (`invalid_url`: malformed or not resolvable).", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn create_webhook(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    Body(request): Body<CreateWebhookRequest>,
) -> ApiResult {
    let url = checked_url(&webhooks, &request.url).await?;
    let new = NewEndpoint {
        url,
        description: request.description.map(|d| d.0),
        events: request.events.0,
        secret: new_secret(),
    };
    let endpoint = webhooks.db.write().run(async move |conn| store::insert_endpoint(conn, new).await).await?;
    Ok(created(format!("/api/v1/webhooks/{}", endpoint.id), &with_secret(&endpoint), endpoint.updated_at))
}

async fn load(webhooks: &Webhooks, id: Uuid) -> Result<Endpoint, AppError> {
    webhooks
        .db
        .current()
        .run(async move |conn| store::find_endpoint(conn, id).await)
        .await?
        .ok_or_else(|| Problem::not_found().into())
}

/// Get an endpoint (admin). The secret is never shown again.
#[utoipa::path(
    get, path = "/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookBody, description = "The endpoint"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_webhook(State(webhooks): State<Webhooks>, _admin: Admin, Id(id): Id) -> ApiResult {
    let endpoint = load(&webhooks, id).await?;
    Ok(written(&webhook_value(&endpoint), endpoint.updated_at))
}

/// Change an endpoint (admin): its URL (checked as at registration), events, description, or
/// whether it is enabled.
#[utoipa::path(
    patch, path = "/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhookRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = WebhookBody, description = "Changed"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`unsafe_url` or `validation_failed`, as for registration.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn patch_webhook(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    Id(id): Id,
    Body(request): Body<UpdateWebhookRequest>,
) -> ApiResult {
    let url = match &request.url {
        Some(raw) => Some(checked_url(&webhooks, raw).await?),
        None => None,
    };
    let mut endpoint = load(&webhooks, id).await?;
    if let Some(url) = url {
        endpoint.url = url;
    }
    if let Some(events) = request.events {
        endpoint.events = events.0;
    }
    if let Some(description) = request.description {
        endpoint.description = Some(description.0);
    }
    match request.enabled {
        Some(true) if !endpoint.enabled => {
            endpoint.enabled = true;
            endpoint.disabled_reason = None;
            endpoint.failing_since = None;
        }
        Some(false) if endpoint.enabled => {
            endpoint.enabled = false;
            endpoint.disabled_reason = Some("disabled by an admin".into());
        }
        _ => {}
    }
    endpoint.updated_at = crate::db::now();
    let stored = endpoint.clone();
    webhooks.db.write().run(async move |conn| store::update_endpoint(conn, &stored).await).await?;
    Ok(written(&webhook_value(&endpoint), endpoint.updated_at))
}

/// Delete an endpoint (admin), with its delivery history.
#[utoipa::path(
    delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn delete_webhook(State(webhooks): State<Webhooks>, _admin: Admin, Id(id): Id) -> ApiResult {
    let deleted = webhooks.db.write().transaction(async move |conn| store::delete_endpoint(conn, id).await).await?;
    if !deleted {
        return Err(Problem::not_found().into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rotate an endpoint's signing secret (admin). The new secret is shown this once; the old one
/// keeps signing (a second `v1`) for `ORDERLY_WEBHOOK_SECRET_OVERLAP` (24 h by default).
#[utoipa::path(
    post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookWithSecretBody, description = "Rotated"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn rotate_secret(State(webhooks): State<Webhooks>, _admin: Admin, Id(id): Id) -> ApiResult {
    let (secret, until) = (new_secret(), crate::db::now() + crate::db::span(webhooks.secret_overlap));
    let endpoint = webhooks
        .db
        .write()
        .run(async move |conn| store::rotate_secret(conn, id, &secret, until).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(written(&with_secret(&endpoint), endpoint.updated_at))
}

/// List an endpoint's deliveries (admin), newest first by default, each with its attempts.
#[utoipa::path(
    get, path = "/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = Uuid, Path), PageQuery, WebhookListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<DeliveryBody>, description = "A page of deliveries", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_deliveries(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    Id(id): Id,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(query): Params<WebhookListQuery>,
) -> ApiResult {
    load(&webhooks, id).await?;
    let params = ListParams::new(page, query.sort.unwrap_or_default());
    let scope = ("webhook deliveries", id, &params.sort);
    let after = params.position(&webhooks.cursors, &scope)?;
    let page = {
        let params = params.clone();
        webhooks.db.read().run(async move |conn| store::list_deliveries(conn, id, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        delivery_body,
        |last| webhooks.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// Send a delivery again now (admin), whatever became of it.
#[utoipa::path(
    post, path = "/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 202, body = DeliveryBody, description = "Due now"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn retry_delivery(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult {
    // As `Id` reads one id: any spelling but the canonical one names nothing.
    let (id, delivery_id) = (parse_id(&id)?, parse_id(&delivery_id)?);
    let delivery = webhooks
        .db
        .write()
        .run(async move |conn| store::retry_delivery(conn, id, delivery_id).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok((StatusCode::ACCEPTED, Json(delivery_body(&delivery))).into_response())
}

/// Resend every failed delivery of an endpoint created since a time (admin), after an outage.
#[utoipa::path(
    post, path = "/webhooks/{id}/recover", tag = "webhooks", request_body = RecoverRequest,
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 202, body = RecoveredBody, description = "Those deliveries are due now"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn recover(
    State(webhooks): State<Webhooks>,
    _admin: Admin,
    Id(id): Id,
    Body(request): Body<RecoverRequest>,
) -> ApiResult {
    load(&webhooks, id).await?;
    let since = request.since;
    let recovered = webhooks.db.write().run(async move |conn| store::recover(conn, id, since).await).await?;
    Ok((StatusCode::ACCEPTED, Json(RecoveredBody { recovered })).into_response())
}
