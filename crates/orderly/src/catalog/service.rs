//! Catalog writes: creating a product, and changing or archiving one under `If-Match`. Each
//! write is one transaction; the product cache is invalidated after it commits, before the
//! caller answers.

use http::HeaderMap;
use orderly_kit::Problem;
use orderly_kit::conditional::check_if_match;
use orderly_kit::idempotency::KeyedWrite;
use serde_json::Value;
use uuid::Uuid;

use crate::db::Database;
use crate::error::{AppError, conflict_on_unique};
use crate::idempotency::{Keyed, keyed_transaction};
use crate::responses::Written;

use super::cache::ProductCache;
use super::store::{self, NewProduct, Product, ProductChanges};

pub fn sku_taken() -> Problem {
    Problem::conflict("sku_taken", "A product with this SKU already exists.")
}

/// Creates a product; with an idempotency key, the key is kept in the same transaction.
pub async fn create_product(
    db: &Database,
    new: NewProduct,
    key: Option<KeyedWrite>,
    render: fn(&Product) -> Written,
) -> Result<Keyed<Product>, AppError> {
    keyed_transaction(db, key, render, async move |conn| {
        store::insert_product(conn, new).await.map_err(|error| conflict_on_unique(error, sku_taken))
    })
    .await
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
) -> Result<Product, AppError> {
    let updated = db
        .write()
        .transaction(async move |conn| {
            let current = store::lock_product(conn, id).await?.ok_or_else(Problem::not_found)?;
            check_if_match(&request_headers, &render(&current))?;
            let desired = changes.applied_to(&current);
            if desired == current {
                return Ok(current);
            }
            store::update_product(conn, &current, desired).await.map_err(|error| conflict_on_unique(error, sku_taken))
        })
        .await?;
    // Also when nothing changed: a retry of a write whose first attempt committed but was cut
    // off before invalidating must still leave no older copy behind.
    products.invalidate([id]).await;
    Ok(updated)
}
