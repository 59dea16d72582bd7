//! Catalog endpoints: public product reads, admin writes.

use axum::Extension;
use axum::extract::{FromRef, OriginalUri, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use orderly_kit::Problem;
use orderly_kit::conditional::{CacheControl, conditional_response, prepared_conditional_response};
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, PreconditionFailed, Unauthorized, UnsupportedMediaType,
    ValidationFailed,
};
use orderly_kit::extract::Id;
use orderly_kit::idempotency::KeyedWrite;
use orderly_kit::pagination::ListBody;
use orderly_kit::problem::ProblemBody;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator};
use crate::error::{ApiResult, AppError, Code};
use crate::listing::{FieldsQuery, ListParams, PageQuery, Sort};
use crate::responses::{Written, written};

use super::Catalog;
use super::domain::{Currency, Price, Stock};
use super::service::{self, CatalogError};
use super::store::{self, After, NewProduct, Product, ProductChanges, ProductFilter};
use crate::schemas::{Description, Name, ProductName, Sku};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Catalog: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(list_products, create_product)).routes(routes!(
        get_product,
        patch_product,
        delete_product
    ))
}

/// A product in the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductBody {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    /// Price of one unit in minor units of `currency` (cents for USD).
    pub unit_price: i64,
    /// ISO 4217 code, upper case.
    #[schema(example = "USD")]
    pub currency: String,
    pub stock: i64,
    /// Archived products are inactive and cannot be ordered.
    pub active: bool,
    pub version: i64,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

fn product_body(product: &Product) -> ProductBody {
    ProductBody {
        id: product.id,
        sku: product.sku.clone(),
        name: product.name.clone(),
        description: product.description.clone(),
        unit_price: product.unit_price,
        currency: product.currency.clone(),
        stock: product.stock,
        active: product.active,
        version: product.version,
        created_at: product.created_at,
        updated_at: product.updated_at,
    }
}

impl From<CatalogError> for AppError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NotFound => Problem::not_found().into(),
            CatalogError::PreconditionFailed => Problem::precondition_failed().into(),
            CatalogError::SkuTaken => {
                Problem::conflict(Code::SkuTaken, "A product with this SKU already exists.").into()
            }
            CatalogError::Database(error) => error.into(),
        }
    }
}

fn created_product(product: &Product) -> Written {
    Written::created(format!("/api/v1/products/{}", product.id), &product_value(product), product.updated_at)
}

fn product_value(product: &Product) -> Value {
    serde_json::to_value(product_body(product)).expect("representations serialize")
}

/// Sort orders of the product list.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum ProductSort {
    /// Newest first (the default).
    #[default]
    #[serde(rename = "-created_at")]
    NewestFirst,
    #[serde(rename = "created_at")]
    OldestFirst,
    /// Cheapest first.
    #[serde(rename = "unit_price")]
    Cheapest,
    #[serde(rename = "-unit_price")]
    DearestFirst,
}

impl From<ProductSort> for Sort {
    fn from(sort: ProductSort) -> Self {
        let (key, descending) = match sort {
            ProductSort::NewestFirst => ("created_at", true),
            ProductSort::OldestFirst => ("created_at", false),
            ProductSort::Cheapest => ("unit_price", false),
            ProductSort::DearestFirst => ("unit_price", true),
        };
        Sort { key, descending }
    }
}

/// The sort and filters of the product list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductListQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<ProductSort>,
    /// Only active (`true`) or archived (`false`) products.
    active: Option<bool>,
    /// Only products priced in this ISO 4217 currency.
    currency: Option<Currency>,
    /// Minimum unit price, inclusive, in minor units.
    min_price: Option<Price>,
    /// Maximum unit price, inclusive, in minor units (below `min_price`, nothing matches).
    max_price: Option<Price>,
    /// Case-insensitive search in name and SKU.
    q: Option<Name>,
}

/// List products (public).
#[utoipa::path(
    get, path = "/products", tag = "catalog", params(PageQuery, ProductListQuery),
    responses(
        (status = 200, body = ListBody<ProductBody>, description = "A page of products", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_products(
    State(catalog): State<Catalog>,
    OriginalUri(uri): OriginalUri,
    Params(page): Params<PageQuery>,
    Params(query): Params<ProductListQuery>,
) -> ApiResult {
    let ProductListQuery { sort, active, currency, min_price, max_price, q } = query;
    let params = ListParams::new(page, sort.unwrap_or_default());
    let filter = ProductFilter {
        active,
        currency: currency.map(Currency::code),
        min_price: min_price.map(|p| p.0),
        max_price: max_price.map(|p| p.0),
        q: q.map(|q| q.0),
    };
    let scope = ("products", &params.sort, &filter);
    let after = match params.sort.key {
        "unit_price" => {
            params.position::<(i64, Uuid)>(&catalog.cursors, &scope)?.map(|(p, id)| After::UnitPrice(p, id))
        }
        _ => params.position::<(DateTime<Utc>, Uuid)>(&catalog.cursors, &scope)?.map(|(t, id)| After::CreatedAt(t, id)),
    };
    let page = {
        let (filter, params) = (filter.clone(), params.clone());
        catalog.db.read().run(async move |conn| store::list_products(conn, &filter, &params, after).await).await?
    };
    let by_price = params.sort.key == "unit_price";
    Ok(crate::listing::respond(
        &uri,
        &page,
        &params,
        product_body,
        |last| {
            if by_price {
                catalog.cursors.encode(&scope, &(last.unit_price, last.id))
            } else {
                catalog.cursors.encode(&scope, &(last.created_at, last.id))
            }
        },
        CacheControl::Public { max_age: catalog.max_age },
    ))
}

/// Get a product (public).
#[utoipa::path(
    get, path = "/products/{id}", tag = "catalog", params(("id" = Uuid, Path), FieldsQuery),
    responses(
        (status = 200, body = ProductBody, description = "The product", headers(("ETag" = String), ("Last-Modified" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified"),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_product(
    State(catalog): State<Catalog>,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let product = catalog.products.get(&catalog.db, id, product_value).await?.ok_or_else(Problem::not_found)?;
    let cache = CacheControl::Public { max_age: catalog.max_age };
    Ok(match fields {
        None => prepared_conditional_response(&headers, product.body.clone(), &product.etag, product.updated_at, cache),
        Some(fields) => {
            let value = serde_json::from_slice(&product.body)
                .map_err(|e| AppError::internal(format!("cached product: {e}")))?;
            conditional_response(&headers, &fields.apply(value), product.updated_at, cache)
        }
    })
}

/// Body of `POST /products`.
#[derive(Deserialize, ToSchema)]
pub struct CreateProductRequest {
    /// Unique among products.
    sku: Sku,
    name: ProductName,
    /// Empty when omitted.
    description: Option<Description>,
    unit_price: Price,
    currency: Currency,
    stock: Stock,
    /// Defaults to `true`.
    active: Option<bool>,
}

/// Body of `PATCH /products/{id}`: any subset of the fields.
#[derive(Deserialize, ToSchema)]
pub struct UpdateProductRequest {
    sku: Option<Sku>,
    name: Option<ProductName>,
    description: Option<Description>,
    unit_price: Option<Price>,
    currency: Option<Currency>,
    stock: Option<Stock>,
    active: Option<bool>,
}

/// Create a product (admin).
#[utoipa::path(
    post, path = "/products", tag = "catalog", request_body = CreateProductRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = ProductBody, description = "Created", headers(("Location" = String), ("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, description = "`sku_taken`: a product with this SKU exists; `idempotency_request_in_progress` (with `Retry-After`): the first request with this key still runs.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_product(
    State(catalog): State<Catalog>,
    _admin: Admin,
    key: Option<Extension<KeyedWrite>>,
    Body(request): Body<CreateProductRequest>,
) -> ApiResult {
    let new = NewProduct {
        sku: request.sku.0,
        name: request.name.0,
        description: request.description.map(|d| d.0).unwrap_or_default(),
        unit_price: request.unit_price.0,
        currency: request.currency.code(),
        stock: request.stock.0,
        active: request.active.unwrap_or(true),
    };
    let key = key.map(|Extension(key)| key);
    Ok(service::create_product(&catalog.db, new, key, created_product).await?.into_response())
}

/// Update a product (admin). Honours `If-Match`.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "catalog", request_body = UpdateProductRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Apply only if the product's current ETag matches")),
    responses(
        (status = 200, body = ProductBody, description = "Updated", headers(("ETag" = String, description = "Strong validator of this representation"), ("Last-Modified" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`sku_taken`: another product has this SKU.", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for the codes that carry it"))),
        (status = 412, response = PreconditionFailed),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn patch_product(
    State(catalog): State<Catalog>,
    _admin: Admin,
    Id(id): Id,
    headers: HeaderMap,
    Body(request): Body<UpdateProductRequest>,
) -> ApiResult {
    let changes = ProductChanges {
        sku: request.sku.map(|s| s.0),
        name: request.name.map(|n| n.0),
        description: request.description.map(|d| d.0),
        unit_price: request.unit_price.map(|p| p.0),
        currency: request.currency.map(Currency::code),
        stock: request.stock.map(|s| s.0),
        active: request.active,
    };
    let product = service::change_product(&catalog.db, &catalog.products, id, changes, headers, product_value).await?;
    Ok(written(&product_value(&product), product.updated_at))
}

/// Archive a product (admin): it becomes inactive; past orders keep their snapshot.
#[utoipa::path(
    delete, path = "/products/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Archive only if the product's current ETag matches")),
    responses(
        (status = 204, description = "Archived (also when it already was)"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
    )
)]
async fn delete_product(State(catalog): State<Catalog>, _admin: Admin, Id(id): Id, headers: HeaderMap) -> ApiResult {
    let archive = ProductChanges { active: Some(false), ..ProductChanges::default() };
    service::change_product(&catalog.db, &catalog.products, id, archive, headers, product_value).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
