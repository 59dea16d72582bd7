//! Order endpoints: place, list, read, cancel.

use axum::Extension;
use axum::extract::{FromRef, OriginalUri, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use orderly_kit::conditional::{CacheControl, conditional_response};
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{BadRequest, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed};
use orderly_kit::extract::Id;
use orderly_kit::fields::select;
use orderly_kit::idempotency::KeyedWrite;
use orderly_kit::pagination::ListBody;
use orderly_kit::problem::ProblemBody;
use orderly_kit::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Authenticator, Principal};
use crate::error::{ApiResult, AppError, Code};
use crate::listing::{CreatedAtSort, FieldsQuery, ListParams, PageQuery};
use crate::responses::Written;

use super::Orders;
use super::domain::{OrderItem, OrderLine, OrderStatus, repeated_products};
use super::service::{self, LineRefusal, OrderError};
use super::store::{self, Order, OrderFilter};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Orders: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(place_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
}

/// An order. Items keep the SKU, name and price the product had when it was ordered.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    /// Served as stored: items never change once the order is placed.
    #[schema(value_type = Vec<OrderItem>)]
    pub items: &'a RawValue,
    /// ISO 4217 code shared by every item.
    pub currency: &'a str,
    /// Sum of the line totals, in minor units.
    pub total: i64,
    pub version: i64,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

fn order_body(order: &Order) -> OrderBody<'_> {
    OrderBody {
        id: order.id,
        user_id: order.user_id,
        status: order.status,
        items: &order.items,
        currency: &order.currency,
        total: order.total,
        version: order.version,
        created_at: order.created_at,
        updated_at: order.updated_at,
    }
}

fn order_value(order: &Order) -> Value {
    serde_json::to_value(order_body(order)).expect("representations serialize")
}

/// Body of `POST /orders`.
#[derive(Deserialize, ToSchema)]
pub struct PlaceOrderRequest {
    /// 1–50 lines, each of a different product.
    #[schema(min_items = 1, max_items = 50)]
    items: Vec<OrderLine>,
}

/// Place an order. Prices are taken from the catalog now; stock is reserved atomically.
#[utoipa::path(
    post, path = "/orders", tag = "orders", request_body = PlaceOrderRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = OrderBody, description = "Placed", headers(("Location" = String), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, description = "`insufficient_stock`: a product has fewer units than ordered (the detail names it); `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn place_order(
    State(orders): State<Orders>,
    principal: Principal,
    key: Option<Extension<KeyedWrite>>,
    Body(PlaceOrderRequest { items }): Body<PlaceOrderRequest>,
) -> ApiResult {
    let repeated = repeated_products(&items);
    if !repeated.is_empty() {
        let errors = repeated.into_iter().map(|index| {
            let field = format!("items[{index}].product_id");
            FieldError::new(field, "duplicate_product", "each product may appear once; combine the quantities")
        });
        return Err(Problem::validation(errors.collect()).into());
    }
    let key = key.map(|Extension(key)| key);
    let (db, products, idempotency_ttl) = (&orders.db, &orders.products, orders.idempotency_ttl);
    Ok(service::place_order(db, products, idempotency_ttl, principal.user_id, &items, key, placed_order)
        .await?
        .into_response())
}

impl From<OrderError> for AppError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::NotFound => Problem::not_found().into(),
            OrderError::InvalidState(status) => Problem::conflict(
                Code::InvalidState,
                format!("Only pending orders can be cancelled; this one is {}.", status.as_str()),
            )
            .into(),
            OrderError::Unorderable(lines) => Problem::validation(
                lines
                    .into_iter()
                    .map(|(index, refusal)| {
                        let field = format!("items[{index}].product_id");
                        match refusal {
                            LineRefusal::Unknown => FieldError::new(field, "unknown_product", "no product has this id"),
                            LineRefusal::Archived => FieldError::new(
                                field,
                                "archived_product",
                                "this product is archived and cannot be ordered",
                            ),
                        }
                    })
                    .collect(),
            )
            .into(),
            OrderError::MixedCurrencies => Problem::validation(vec![FieldError::new(
                "items",
                "mixed_currencies",
                "all products of an order must be priced in one currency",
            )])
            .into(),
            OrderError::InsufficientStock { product_id, sku, requested, available } => Problem::conflict(
                Code::InsufficientStock,
                format!(
                    "Not enough stock for product {product_id} ({sku}): {requested} requested, {available} available."
                ),
            )
            .into(),
            OrderError::Payment(error) => error.into(),
            OrderError::Database(error) => error.into(),
            OrderError::Internal(message) => AppError::internal(message),
        }
    }
}

fn placed_order(order: &Order) -> Written {
    Written::created(format!("/api/v1/orders/{}", order.id), &order_body(order), order.updated_at)
}

/// The sort and filters of the order list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
    /// Only orders in this status.
    #[param(inline)]
    status: Option<OrderStatus>,
    /// Only orders of this user (admins; a customer only ever sees their own).
    user_id: Option<Uuid>,
    /// Only orders created strictly after this instant (RFC 3339).
    created_after: Option<DateTime<Utc>>,
    /// Only orders created strictly before this instant (RFC 3339); when it is not after
    /// `created_after`, nothing matches.
    created_before: Option<DateTime<Utc>>,
}

/// List orders: the caller's own, or everyone's for an admin.
#[utoipa::path(
    get, path = "/orders", tag = "orders", params(PageQuery, OrderListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<OrderBody>, description = "A page of orders", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_orders(
    State(orders): State<Orders>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(query): Params<OrderListQuery>,
) -> ApiResult {
    let OrderListQuery { sort, status, user_id, created_after, created_before } = query;
    let params = ListParams::new(page, sort.unwrap_or_default());
    // A customer sees only their own orders, whatever `user_id` says.
    let user_id = match principal.owner_scope() {
        Some(own) if user_id.is_some_and(|asked| asked != own) => return Ok(empty_list(&uri)),
        Some(own) => Some(own),
        None => user_id,
    };
    let filter = OrderFilter { user_id, status, created_after, created_before };
    let scope = ("orders", &params.sort, &filter);
    let after = params.position(&orders.cursors, &scope)?;
    let page = {
        let (filter, params, known) = (filter.clone(), params.clone(), orders.known.clone());
        orders.db.read().run(async move |conn| store::list_orders(conn, &known, &filter, &params, after).await).await?
    };
    Ok(crate::listing::respond_writing(
        &uri,
        &page,
        &params,
        |known| order_body(&known.order),
        |out, known| out.extend_from_slice(known.written.get_or_init(|| known.order.json().into_boxed_slice())),
        |last| orders.cursors.encode(&scope, &(last.order.created_at, last.order.id)),
        CacheControl::Private,
    ))
}

fn empty_list(uri: &http::Uri) -> axum::response::Response {
    let body = orderly_kit::pagination::ListBody::<Value> { data: Vec::new(), next_cursor: None, has_more: false };
    orderly_kit::pagination::list_response(uri, body, CacheControl::Private)
}

/// Get an order (the caller's own; any for an admin).
#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders", params(("id" = Uuid, Path), FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = OrderBody, description = "The order", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_order(
    State(orders): State<Orders>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let owner = principal.owner_scope();
    let order = orders
        .db
        .current()
        .run(async move |conn| store::find_order(conn, id, owner).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    let value = select(fields.as_ref(), order_value(&order));
    Ok(conditional_response(&headers, &value, order.updated_at, CacheControl::Private))
}

/// Cancel a pending order and return its stock. Cancelling a cancelled order returns it as is;
/// an order that is not pending is 409 `invalid_state`; while a payment of the order is being
/// processed (its outcome not yet recorded), 409 `payment_in_progress` with `Retry-After`.
#[utoipa::path(
    post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 200, body = OrderBody, description = "Cancelled", headers(("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "`invalid_state`: the order is neither pending nor cancelled; `payment_in_progress` (with `Retry-After`): a payment of the order is being processed; `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
    )
)]
async fn cancel_order(
    State(orders): State<Orders>,
    principal: Principal,
    Id(id): Id,
    key: Option<Extension<KeyedWrite>>,
) -> ApiResult {
    let key = key.map(|Extension(key)| key);
    let (db, products, settle_after) = (&orders.db, &orders.products, orders.payment_settle_after);
    Ok(service::cancel_order(db, products, settle_after, principal, id, key, cancelled_order).await?.into_response())
}

fn cancelled_order(order: &Order) -> Written {
    Written::ok(&order_body(order), order.updated_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_written_order_is_the_bytes_its_representation_serializes_to() {
        let items = r#"[{"product_id":"0193b1e8-0000-7000-8000-000000000001","sku":"A-1","name":"Tea \"Earl\" \u00e9","unit_price":450,"quantity":2,"line_total":900}]"#;
        let created_at = Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap() + chrono::TimeDelta::microseconds(1);
        for (status, currency) in [
            (OrderStatus::Pending, "EUR"),
            (OrderStatus::Paid, "usd"),
            (OrderStatus::Refunded, ""),
            (OrderStatus::Cancelled, "a\"b\\c\u{1}"),
        ] {
            let order = Order {
                id: Uuid::now_v7(),
                user_id: Uuid::now_v7(),
                status,
                currency: currency.into(),
                total: 900,
                version: 3,
                created_at,
                updated_at: created_at + chrono::TimeDelta::milliseconds(5),
                items: RawValue::from_string(items.into()).unwrap().into(),
            };
            let mut written = Vec::new();
            order.write_json(&mut written);
            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&order_body(&order)).unwrap());
        }
    }
}
