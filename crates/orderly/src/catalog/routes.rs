//! Catalog endpoints: public product reads, admin writes.

use axum::Extension;
use axum::extract::{FromRef, OriginalUri, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use orderly_kit::Problem;
use orderly_kit::conditional::{CacheControl, conditional_response, prepared_conditional_response};
use orderly_kit::docs::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, PreconditionFailed, Unauthorized, UnsupportedMediaType,
    ValidationFailed,
};
use orderly_kit::extract::{Id, JsonBody, Query};
use orderly_kit::idempotency::KeyedWrite;
use orderly_kit::validation::{Fields, json, query, text};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator};
use crate::error::{ApiResult, AppError};
use crate::listing::{FieldsQuery, ListParams, read_fields};
use crate::responses::{Written, written};

use super::Catalog;
use super::domain::{Currency, MAX_STOCK, MAX_UNIT_PRICE, Sku, currency_schema};
use super::service::{self, CatalogError};
use super::store::{self, After, NewProduct, Product, ProductChanges, ProductFilter};
use crate::schemas;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Catalog: FromRef<S>,
    Authenticator: FromRef<S>,
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

#[derive(ToSchema)]
#[allow(dead_code)] // Documents the response shape; lists are rendered by `listing::respond`.
pub struct ProductList {
    data: Vec<ProductBody>,
    next_cursor: Option<String>,
    has_more: bool,
}

const PRODUCT_FIELDS: &[&str] = &[
    "id",
    "sku",
    "name",
    "description",
    "unit_price",
    "currency",
    "stock",
    "active",
    "version",
    "created_at",
    "updated_at",
];
const PRODUCT_SORTS: &[&str] = &["-created_at", "created_at", "unit_price", "-unit_price"];

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
            CatalogError::SkuTaken => Problem::conflict("sku_taken", "A product with this SKU already exists.").into(),
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
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Documents accepted values; requests are parsed by hand.
pub enum ProductSort {
    #[serde(rename = "-created_at")]
    CreatedAtDescending,
    #[serde(rename = "created_at")]
    CreatedAt,
    #[serde(rename = "unit_price")]
    UnitPrice,
    #[serde(rename = "-unit_price")]
    UnitPriceDescending,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; it is parsed field by field in `list_products`.
pub struct ProductListQuery {
    /// Page size, 1–100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// Opaque cursor from `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<ProductSort>,
    /// Comma-separated top-level fields to return.
    fields: Option<String>,
    /// Only active (`true`) or archived (`false`) products.
    active: Option<bool>,
    /// Only products priced in this ISO 4217 currency.
    #[param(schema_with = currency_schema)]
    currency: Option<String>,
    /// Minimum unit price, inclusive, in minor units.
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    min_price: Option<i64>,
    /// Maximum unit price, inclusive, in minor units.
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    max_price: Option<i64>,
    /// Case-insensitive search in name and SKU.
    #[param(schema_with = schemas::name_100)]
    q: Option<String>,
}

/// List products (public).
#[utoipa::path(
    get, path = "/products", tag = "catalog", params(ProductListQuery),
    responses(
        (status = 200, body = ProductList, description = "A page of products", headers(("Link" = String, description = "`rel=\"next\"` page"))),
        (status = 400, response = BadRequest),
        (status = 422, response = ValidationFailed),
    )
)]
async fn list_products(
    State(catalog): State<Catalog>,
    OriginalUri(uri): OriginalUri,
    Query(mut query): Query,
) -> ApiResult {
    let params = ListParams::read(&mut query, PRODUCT_FIELDS, PRODUCT_SORTS);
    let active = query.optional("active", |v| query::boolean(v));
    let currency = query.optional("currency", |v| Currency::parse(v));
    let min_price = query.optional("min_price", |v| query::integer(v, 0, MAX_UNIT_PRICE));
    let max_price = query.optional("max_price", |v| query::integer(v, 0, MAX_UNIT_PRICE));
    let q = query.optional("q", |v| text(v, 1, 100));
    if let (Some(Some(min)), Some(Some(max))) = (min_price, max_price)
        && min > max
    {
        query.push("max_price", "out_of_range", "must not be less than min_price");
    }
    let (params, active, currency, min_price, max_price, q) =
        query.finish((params, active, currency, min_price, max_price, q))?;
    let filter = ProductFilter { active, currency: currency.map(Currency::code), min_price, max_price, q };
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
    Query(mut query): Query,
) -> ApiResult {
    let fields = read_fields(&mut query, PRODUCT_FIELDS);
    let (fields,) = query.finish((fields,))?;
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
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the body; it is parsed field by field in `create_product`.
pub struct CreateProductRequest {
    #[schema(example = "TSHIRT-RED-L", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    sku: String,
    #[schema(schema_with = schemas::name_200)]
    name: String,
    #[schema(schema_with = schemas::description)]
    description: Option<String>,
    #[schema(example = 1999, minimum = 0, maximum = 1_000_000_000_000_i64)]
    unit_price: i64,
    #[schema(schema_with = currency_schema)]
    currency: String,
    #[schema(example = 100, minimum = 0, maximum = 1_000_000_000)]
    stock: i64,
    /// Defaults to `true`.
    active: Option<bool>,
}

/// Body of `PATCH /products/{id}`: any subset of the fields.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the body; it is parsed field by field in `patch_product`.
pub struct UpdateProductRequest {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    sku: Option<String>,
    #[schema(schema_with = schemas::name_200)]
    name: Option<String>,
    #[schema(schema_with = schemas::description)]
    description: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    unit_price: Option<i64>,
    #[schema(schema_with = currency_schema)]
    currency: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: Option<i64>,
    active: Option<bool>,
}

/// Reads the product fields of a body; `required` marks the ones a create must have.
fn read_product_fields(body: &mut Fields<Value>, required: bool) -> Option<ProductChanges> {
    macro_rules! field {
        ($name:literal, $parse:expr) => {
            if required { body.required($name, $parse).map(Some) } else { body.optional($name, $parse) }
        };
    }
    let sku = field!("sku", |v| Sku::from_json(v).map(Sku::into_inner));
    let name = field!("name", |v| json::text(v, 1, 200));
    let description = body.optional("description", |v| json::text(v, 0, 2000));
    let unit_price = field!("unit_price", |v| json::integer(v, 0, MAX_UNIT_PRICE));
    let currency = field!("currency", |v| Currency::from_json(v).map(Currency::code));
    let stock = field!("stock", |v| json::integer(v, 0, MAX_STOCK));
    let active = body.optional("active", json::boolean);
    Some(ProductChanges {
        sku: sku?,
        name: name?,
        description: description?,
        unit_price: unit_price?,
        currency: currency?,
        stock: stock?,
        active: active?,
    })
}

/// Create a product (admin).
#[utoipa::path(
    post, path = "/products", tag = "catalog", request_body = CreateProductRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = ProductBody, description = "Created", headers(("Location" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn create_product(
    State(catalog): State<Catalog>,
    _admin: Admin,
    key: Option<Extension<KeyedWrite>>,
    JsonBody(mut body): JsonBody,
) -> ApiResult {
    let fields = read_product_fields(&mut body, true);
    let (fields,) = body.finish((fields,))?;
    let new = NewProduct {
        sku: fields.sku.expect("required"),
        name: fields.name.expect("required"),
        description: fields.description.unwrap_or_default(),
        unit_price: fields.unit_price.expect("required"),
        currency: fields.currency.expect("required"),
        stock: fields.stock.expect("required"),
        active: fields.active.unwrap_or(true),
    };
    let key = key.map(|Extension(key)| key);
    Ok(service::create_product(&catalog.db, new, key, created_product).await?.into_response())
}

/// Update a product (admin). Honours `If-Match`.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "catalog", request_body = UpdateProductRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "Apply only if the product's current ETag matches")),
    responses(
        (status = 200, body = ProductBody, description = "Updated"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
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
    JsonBody(mut body): JsonBody,
) -> ApiResult {
    let changes = read_product_fields(&mut body, false);
    let (changes,) = body.finish((changes,))?;
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
