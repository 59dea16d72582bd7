//! Event endpoints (admin): list events and read one, each served as it was recorded.

use axum::extract::{FromRef, OriginalUri, State};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use orderly_kit::Problem;
use orderly_kit::conditional::{CacheControl, conditional_response, etag_of, prepared_conditional_response};
use orderly_kit::contract::Params;
use orderly_kit::docs::{BadRequest, Forbidden, NotFound, Unauthorized, ValidationFailed};
use orderly_kit::extract::Id;
use orderly_kit::pagination::ListBody;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator};
use crate::error::ApiResult;
use crate::listing::{CreatedAtSort, FieldsQuery, ListParams, PageQuery};

use super::store::{self, Event, EventFilter};
use super::{EventType, Events};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Events: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(list_events)).routes(routes!(get_event))
}

/// Something that happened: `data.object` is the resource as the API served it at that moment.
/// The same body is published to RabbitMQ (`orderly.events`, routing key = `type`).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventBody {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    pub data: EventData,
}

/// What an event is about.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventData {
    /// The user, order or payment, as its own endpoint served it when the event happened.
    #[schema(value_type = Object)]
    pub object: Value,
}

/// The sort and filters of the event list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
    /// Only events of this type.
    #[param(inline)]
    #[serde(rename = "type")]
    kind: Option<EventType>,
    /// Only events created strictly after this instant (RFC 3339).
    created_after: Option<DateTime<Utc>>,
    /// Only events created strictly before this instant (RFC 3339); when it is not after
    /// `created_after`, nothing matches.
    created_before: Option<DateTime<Utc>>,
}

fn event_value(event: &Event) -> Value {
    serde_json::from_str(event.body.get()).expect("event bodies are checked to be JSON when read")
}

/// List events (admin), newest first by default. Kept for the retention period
/// (`ORDERLY_EVENT_RETENTION`, 30 days by default).
#[utoipa::path(
    get, path = "/events", tag = "events", params(PageQuery, EventListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<EventBody>, description = "A page of events", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_events(
    State(events): State<Events>,
    _admin: Admin,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(query): Params<EventListQuery>,
) -> ApiResult {
    let EventListQuery { sort, kind, created_after, created_before } = query;
    let params = ListParams::new(page, sort.unwrap_or_default());
    let filter = EventFilter { kind, created_after, created_before };
    let scope = ("events", &params.sort, &filter);
    let after = params.position(&events.cursors, &scope)?;
    let page = {
        let (filter, params) = (filter.clone(), params.clone());
        events.db.read().run(async move |conn| store::list_events(conn, &filter, &params, after).await).await?
    };
    Ok(crate::listing::respond_writing(
        &uri,
        &page,
        &params,
        event_value,
        |out, event| out.extend_from_slice(event.body.get().as_bytes()),
        |last| events.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// Get an event (admin). An event never changes.
#[utoipa::path(
    get, path = "/events/{id}", tag = "events", params(("id" = Uuid, Path), FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = EventBody, description = "The event", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_event(
    State(events): State<Events>,
    _admin: Admin,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let event = events
        .db
        .current()
        .run(async move |conn| store::find_event(conn, id).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(match fields {
        Some(fields) => {
            conditional_response(&headers, &fields.apply(event_value(&event)), event.created_at, CacheControl::Private)
        }
        None => {
            let body = bytes::Bytes::from(event.body.get().to_owned());
            let etag = etag_of(&body);
            prepared_conditional_response(&headers, body, &etag, event.created_at, CacheControl::Private)
        }
    })
}
