//! Payment endpoints: pay an order, list and read payments, refund (admin) and read refunds,
//! the ledger (admin).

use axum::Extension;
use axum::extract::{FromRef, OriginalUri, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use orderly_kit::conditional::{CacheControl, conditional_response};
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, PaymentRequired, ServiceUnavailable, Unauthorized,
    UnsupportedMediaType, ValidationFailed,
};
use orderly_kit::extract::Id;
use orderly_kit::fields::select;
use orderly_kit::idempotency::{Claim, Claimed, KeyedWrite};
use orderly_kit::pagination::ListBody;
use orderly_kit::problem::ProblemBody;
use orderly_kit::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator, Principal};
use crate::error::{ApiResult, AppError, Code};
use crate::listing::{CreatedAtSort, CreatedAtSortQuery, FieldsQuery, ListParams, PageQuery};
use crate::responses::{Written, created};
use crate::schemas::{PaymentMethod, integer_type};

use super::Payments;
use super::service;
use super::store::{self, LedgerEntry, Payment, PaymentBody, PaymentFilter, Refund, payment_body};

/// Paths whose POST requires an `Idempotency-Key`: they move money.
pub const KEY_REQUIRED: &[&str] = &["/api/v1/orders/{id}/payments", "/api/v1/payments/{id}/refunds"];

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Payments: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(pay_order))
        .routes(routes!(list_payments))
        .routes(routes!(get_payment))
        .routes(routes!(refund_payment))
        .routes(routes!(get_refund))
        .routes(routes!(list_transactions))
}

/// A refund of (part of) a payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundBody {
    pub id: Uuid,
    pub payment_id: Uuid,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

/// A ledger row: one per charge (positive) or refund (negative). Append-only.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionBody<'a> {
    pub id: Uuid,
    /// `charge` or `refund`.
    pub kind: &'a str,
    pub payment_id: Uuid,
    pub refund_id: Option<Uuid>,
    pub order_id: Uuid,
    /// Signed, in minor units: charges add to revenue, refunds subtract.
    pub amount: i64,
    pub currency: &'a str,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

fn payment_value(payment: &Payment) -> Value {
    serde_json::to_value(payment_body(payment)).expect("representations serialize")
}

fn refund_value(refund: &Refund) -> Value {
    let body = RefundBody {
        id: refund.id,
        payment_id: refund.payment_id,
        amount: refund.amount,
        currency: refund.currency.clone(),
        created_at: refund.created_at,
    };
    serde_json::to_value(body).expect("representations serialize")
}

fn transaction_body(entry: &LedgerEntry) -> TransactionBody<'_> {
    TransactionBody {
        id: entry.id,
        kind: entry.kind.as_str(),
        payment_id: entry.payment_id,
        refund_id: entry.refund_id,
        order_id: entry.order_id,
        amount: entry.amount,
        currency: &entry.currency,
        created_at: entry.created_at,
    }
}

/// Each payment error as the problem the API answers with.
impl From<service::PaymentError> for AppError {
    fn from(error: service::PaymentError) -> Self {
        use service::PaymentError as E;
        let problem = match error {
            E::NotFound => Problem::not_found(),
            E::InvalidState(detail) => Problem::conflict(Code::InvalidState, detail),
            E::InProgress { detail, retry_after_secs } => Problem::conflict(Code::PaymentInProgress, detail.to_owned())
                .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_secs)),
            E::ExceedsRefundable { refundable } => Problem::validation(vec![FieldError::new(
                "amount",
                "exceeds_refundable",
                format!("must be at most {refundable}, what is left to refund"),
            )]),
            E::Declined { .. } => {
                Problem::new(http::StatusCode::PAYMENT_REQUIRED, Code::CardDeclined, "The payment method was declined.")
            }
            E::ProviderUnavailable { retry_after_secs, .. } => Problem::unavailable(
                Code::PaymentProviderUnavailable,
                "The payment provider did not answer in time. Retrying with the same `Idempotency-Key` is safe: a \
                 charge the provider made meanwhile is found, not made again.",
                retry_after_secs,
            ),
            E::Database(error) => return error.into(),
            E::Internal(message) => return AppError::internal(message),
        };
        problem.into()
    }
}

/// The request's idempotency claim; the layer guarantees one on these paths.
fn claimed(claim: Option<Extension<Claim>>) -> Result<String, Problem> {
    claim.map(|Extension(claim)| claim.id).ok_or_else(key_required)
}

fn key_required() -> Problem {
    Problem::bad_request(
        orderly_kit::problem::Code::IdempotencyKeyRequired,
        "This endpoint requires an `Idempotency-Key` header.",
    )
}

/// Body of `POST /orders/{id}/payments`.
#[derive(Deserialize, ToSchema)]
pub struct PaymentRequest {
    payment_method: PaymentMethod,
}

/// Pay an order: charges its total through the payment provider. Requires `Idempotency-Key`.
#[utoipa::path(
    post, path = "/orders/{id}/payments", tag = "payments", params(("id" = Uuid, Path)), request_body = PaymentRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = PaymentBody, description = "Charged; the order is paid", headers(("Location" = String), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 404, response = NotFound),
        (status = 409, description = "`invalid_state`: the order is not pending; `payment_in_progress` (with `Retry-After`): another payment of the order is being processed; `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn pay_order(
    State(payments): State<Payments>,
    principal: Principal,
    Id(order_id): Id,
    key: Option<Extension<KeyedWrite>>,
    Body(PaymentRequest { payment_method: PaymentMethod(method) }): Body<PaymentRequest>,
) -> ApiResult {
    let key = key.map(|Extension(key)| key).ok_or_else(key_required)?;
    match service::pay(payments, principal, order_id, method, key, paid).await {
        Ok(keyed) => Ok(keyed.into_response()),
        Err(service::NotPaid { error, key_claimed }) => {
            let mut response = AppError::from(error).into_response();
            if key_claimed {
                // The key is this request's: the idempotency layer keeps this answer under it.
                response.extensions_mut().insert(Claimed);
            }
            Ok(response)
        }
    }
}

fn paid(payment: &Payment) -> Written {
    Written::created(format!("/api/v1/payments/{}", payment.id), &payment_value(payment), payment.updated_at)
}

/// The sort and filters of the payment list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
    /// Only payments of this order.
    order_id: Option<Uuid>,
}

/// List payments: the caller's own, or everyone's for an admin.
#[utoipa::path(
    get, path = "/payments", tag = "payments", params(PageQuery, PaymentListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<PaymentBody>, description = "A page of payments", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_payments(
    State(payments): State<Payments>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(PaymentListQuery { sort, order_id }): Params<PaymentListQuery>,
) -> ApiResult {
    let params = ListParams::new(page, sort.unwrap_or_default());
    let filter = PaymentFilter { user_id: principal.owner_scope(), order_id };
    let scope = ("payments", &params.sort, &filter);
    let after = params.position(&payments.cursors, &scope)?;
    let page = {
        let (filter, params) = (filter.clone(), params.clone());
        payments.db.read().run(async move |conn| store::list_payments(conn, &filter, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        payment_body,
        |last| payments.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}

/// Get a payment (the caller's own; any for an admin).
#[utoipa::path(
    get, path = "/payments/{id}", tag = "payments", params(("id" = Uuid, Path), FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = PaymentBody, description = "The payment", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_payment(
    State(payments): State<Payments>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let owner = principal.owner_scope();
    // Read from the primary: a client reads its payment right after paying.
    let payment = payments
        .db
        .current()
        .run(async move |conn| store::find_payment(conn, id, owner).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    let value = select(fields.as_ref(), payment_value(&payment));
    Ok(conditional_response(&headers, &value, payment.updated_at, CacheControl::Private))
}

/// Body of `POST /payments/{id}/refunds`.
#[derive(Deserialize, ToSchema)]
pub struct RefundRequestBody {
    /// At most what is left to refund; all of that when omitted.
    amount: Option<RefundAmount>,
}

integer_type!(
    /// An amount to refund, in minor units (no refund can exceed the largest order total).
    RefundAmount,
    1,
    crate::orders::domain::MAX_TOTAL
);

/// Refund a payment, in part or in full (admin). Requires `Idempotency-Key`.
#[utoipa::path(
    post, path = "/payments/{id}/refunds", tag = "payments", params(("id" = Uuid, Path)), request_body = RefundRequestBody,
    security(("bearer" = [])),
    responses(
        (status = 201, body = RefundBody, description = "Refunded; a fully refunded order becomes `refunded`", headers(("Location" = String), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`invalid_state`: the payment did not succeed or is fully refunded; `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn refund_payment(
    State(payments): State<Payments>,
    _admin: Admin,
    Id(payment_id): Id,
    claim: Option<Extension<Claim>>,
    Body(RefundRequestBody { amount }): Body<RefundRequestBody>,
) -> ApiResult {
    let amount = amount.map(|a| a.0);
    let key = claimed(claim)?;
    let (_payment, refund) = service::refund(payments, payment_id, amount, key).await?;
    Ok(created(format!("/api/v1/refunds/{}", refund.id), &refund_value(&refund), refund.created_at))
}

/// Get a refund (of the caller's own payment; any for an admin). Refunds never change.
#[utoipa::path(
    get, path = "/refunds/{id}", tag = "payments", params(("id" = Uuid, Path), FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = RefundBody, description = "The refund", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_refund(
    State(payments): State<Payments>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let owner = principal.owner_scope();
    // Read from the primary: the refund's Location is followed right after it is created.
    let refund = payments
        .db
        .current()
        .run(async move |conn| store::find_refund(conn, id, owner).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    let value = select(fields.as_ref(), refund_value(&refund));
    Ok(conditional_response(&headers, &value, refund.created_at, CacheControl::Private))
}

/// The ledger (admin): one row per charge or refund, append-only.
#[utoipa::path(
    get, path = "/transactions", tag = "payments", params(PageQuery, CreatedAtSortQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ListBody<TransactionBody>, description = "A page of ledger rows", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_transactions(
    State(payments): State<Payments>,
    _admin: Admin,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(CreatedAtSortQuery { sort }): Params<CreatedAtSortQuery>,
) -> ApiResult {
    let params = ListParams::new(page, sort.unwrap_or_default());
    let scope = ("transactions", &params.sort);
    let after = params.position(&payments.cursors, &scope)?;
    let page = {
        let params = params.clone();
        payments.db.read().run(async move |conn| store::list_ledger(conn, &params, after).await).await?
    };
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        transaction_body,
        |last| payments.cursors.encode(&scope, &(last.created_at, last.id)),
        CacheControl::Private,
    ))
}
