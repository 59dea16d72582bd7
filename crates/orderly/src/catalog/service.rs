//! Catalog writes: creating a product, and changing or archiving one under `If-Match`. Each
//! write is one transaction; the product cache is invalidated after it commits, before the
//! caller answers. Failures are [`CatalogError`]s, which the routes turn into problems.

use http::HeaderMap;
use orderly_kit::conditional::check_if_match;
use orderly_kit::idempotency::KeyedWrite;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Database, DbError};
use crate::idempotency::{Keyed, keyed_transaction};
use crate::responses::Written;

use super::cache::ProductCache;
use super::store::{self, NewProduct, Product, ProductChanges};

/// Why a catalog write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no such product")]
    NotFound,
    #[error("the product's current representation does not match `If-Match`")]
    PreconditionFailed,
    #[error("another product has this SKU")]
    SkuTaken,
    #[error(transparent)]
    Database(DbError),
}

impl From<DbError> for CatalogError {
    /// The one unique key a product write can break is its SKU.
    fn from(error: DbError) -> Self {
        if error.is_unique_violation() { Self::SkuTaken } else { Self::Database(error) }
    }
}

/// Creates a product; with an idempotency key, the key is kept in the same transaction.
pub async fn create_product(
    db: &Database,
    new: NewProduct,
    key: Option<KeyedWrite>,
    render: fn(&Product) -> Written,
) -> Result<Keyed<Product>, CatalogError> {
    keyed_transaction(db, key, render, async move |conn| Ok(store::insert_product(conn, new).await?)).await
}

/// Applies `changes` to a product if the client's `If-Match` (in `request_headers`) matches its
/// current representation, as `render` makes it. Reading, checking and writing happen in one
/// transaction holding the row lock, so the precondition is checked against exactly the row
/// that is written.
pub async fn change_product(
    db: &Database,
    products: &ProductCache,
    id: Uuid,
    changes: ProductChanges,
    request_headers: HeaderMap,
    render: fn(&Product) -> Value,
) -> Result<Product, CatalogError> {
    let updated = db
        .write()
        .transaction(async move |conn| {
            let current = store::lock_product(conn, id).await?.ok_or(CatalogError::NotFound)?;
            check_if_match(&request_headers, &render(&current)).map_err(|_| CatalogError::PreconditionFailed)?;
            let desired = changes.applied_to(&current);
            if desired == current {
                return Ok::<_, CatalogError>(current);
            }
            Ok(store::update_product(conn, &current, desired).await?)
        })
        .await?;
    // Also when nothing changed: a retry of a write whose first attempt committed but was cut
    // off before invalidating must still leave no older copy behind.
    products.invalidate([id]).await;
    Ok(updated)
}
