//! Product storage. The only place in this module that touches the database, and the only
//! place anywhere that writes products, stock included.
//!
//! Stock is reserved with a conditional decrement (`stock = stock - q WHERE stock >= q`) inside
//! the order's transaction, one product at a time in id order: the database decides, so no
//! interleaving of concurrent orders can oversell, and the decrement takes the row lock in a
//! consistent order, which rules out deadlocks between orders.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Backend, Conn, DbError, Param, Row, now};
use crate::listing::{ListParams, and_where, seek};
use orderly_kit::pagination::Page;

/// A product row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    /// Minor units of `currency`.
    pub unit_price: i64,
    pub currency: String,
    pub stock: i64,
    pub active: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns [`Product::from_row`] reads, in its order (a macro, so queries are `concat!`ed
/// into constant text).
macro_rules! product_columns {
    () => {
        "id, sku, name, description, unit_price, currency, stock, active, version, created_at, updated_at"
    };
}

impl Product {
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get(0)?,
            sku: row.get(1)?,
            name: row.get(2)?,
            description: row.get(3)?,
            unit_price: row.get(4)?,
            currency: row.get(5)?,
            stock: row.get(6)?,
            active: row.get(7)?,
            version: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
        })
    }
}

/// Every field of a product that a client may set.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub unit_price: Option<i64>,
    pub currency: Option<&'static str>,
    pub stock: Option<i64>,
    pub active: Option<bool>,
}

impl ProductChanges {
    /// The product with these changes applied (not yet stored).
    pub fn applied_to(&self, current: &Product) -> Product {
        Product {
            sku: self.sku.clone().unwrap_or_else(|| current.sku.clone()),
            name: self.name.clone().unwrap_or_else(|| current.name.clone()),
            description: self.description.clone().unwrap_or_else(|| current.description.clone()),
            unit_price: self.unit_price.unwrap_or(current.unit_price),
            currency: self.currency.map(str::to_owned).unwrap_or_else(|| current.currency.clone()),
            stock: self.stock.unwrap_or(current.stock),
            active: self.active.unwrap_or(current.active),
            ..current.clone()
        }
    }
}

pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub unit_price: i64,
    pub currency: &'static str,
    pub stock: i64,
    pub active: bool,
}

pub async fn insert_product(conn: &mut Conn<'_>, new: NewProduct) -> Result<Product, DbError> {
    let now = now();
    let product = Product {
        id: Uuid::now_v7(),
        sku: new.sku,
        name: new.name,
        description: new.description,
        unit_price: new.unit_price,
        currency: new.currency.to_owned(),
        stock: new.stock,
        active: new.active,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    conn.execute(
        "INSERT INTO products (id, sku, name, description, unit_price, currency, stock, active, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &product.id,
            &product.sku,
            &product.name,
            &product.description,
            &product.unit_price,
            &product.currency,
            &product.stock,
            &product.active,
            &product.version,
            &product.created_at,
            &product.updated_at,
        ],
    )
    .await?;
    Ok(product)
}

pub async fn find_product(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Product>, DbError> {
    const SQL: &str = concat!("SELECT ", product_columns!(), " FROM products WHERE id = $1");
    conn.query_opt(SQL, &[&id], Product::from_row).await
}

/// The product, locked for update until the transaction ends (`FOR UPDATE` on PostgreSQL;
/// SQLite has a single writer).
pub async fn lock_product(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Product>, DbError> {
    let sql = match conn.backend() {
        Backend::Postgres => concat!("SELECT ", product_columns!(), " FROM products WHERE id = $1 FOR UPDATE"),
        Backend::Sqlite => concat!("SELECT ", product_columns!(), " FROM products WHERE id = $1"),
    };
    conn.query_opt(sql, &[&id], Product::from_row).await
}

/// Stores `desired` over a product read with [`lock_product`] in the same transaction.
pub async fn update_product(conn: &mut Conn<'_>, current: &Product, desired: Product) -> Result<Product, DbError> {
    let updated = Product { version: current.version + 1, updated_at: now(), ..desired };
    let changed = conn
        .execute(
            "UPDATE products SET sku = $1, name = $2, description = $3, unit_price = $4, currency = $5, stock = $6,
                 active = $7, version = $8, updated_at = $9
             WHERE id = $10 AND version = $11",
            &[
                &updated.sku,
                &updated.name,
                &updated.description,
                &updated.unit_price,
                &updated.currency,
                &updated.stock,
                &updated.active,
                &updated.version,
                &updated.updated_at,
                &current.id,
                &current.version,
            ],
        )
        .await?;
    if changed != 1 {
        return Err(DbError::Other(format!("product {} changed under its lock", current.id)));
    }
    Ok(updated)
}

/// Filters of the public product list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProductFilter {
    pub active: Option<bool>,
    pub currency: Option<&'static str>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// Case-insensitive substring of the name or SKU.
    pub q: Option<String>,
}

/// Where a page starts: the sort key of the last row seen, and its id.
pub enum After {
    CreatedAt(DateTime<Utc>, Uuid),
    UnitPrice(i64, Uuid),
}

pub async fn list_products(
    conn: &mut Conn<'_>,
    filter: &ProductFilter,
    params: &ListParams,
    after: Option<After>,
) -> Result<Page<Product>, DbError> {
    let mut sql = String::from(concat!("SELECT ", product_columns!(), " FROM products WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    if let Some(active) = &filter.active {
        and_where(&mut sql, &mut values, "active = $", active);
    }
    if let Some(currency) = &filter.currency {
        and_where(&mut sql, &mut values, "currency = $", currency);
    }
    if let Some(min) = &filter.min_price {
        and_where(&mut sql, &mut values, "unit_price >= $", min);
    }
    if let Some(max) = &filter.max_price {
        and_where(&mut sql, &mut values, "unit_price <= $", max);
    }
    let pattern = filter
        .q
        .as_ref()
        .map(|q| format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    if let Some(pattern) = &pattern {
        and_where(&mut sql, &mut values, r"(lower(name) LIKE $ ESCAPE '\' OR lower(sku) LIKE $ ESCAPE '\')", pattern);
    }
    let key = if params.sort.key == "unit_price" { "unit_price" } else { "created_at" };
    let after = after.map(|after| match after {
        After::CreatedAt(created_at, id) => (Box::new(created_at) as Box<dyn Param + Send>, id),
        After::UnitPrice(price, id) => (Box::new(price) as Box<dyn Param + Send>, id),
    });
    let limit = params.limit + 1;
    seek(
        &mut sql,
        &mut values,
        key,
        params.sort.descending,
        after.as_ref().map(|(k, id)| (&**k as &dyn Param, id)),
        &limit,
    );
    let rows = conn.query(&sql, &values, Product::from_row).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}

/// The products named by an order, locked until the transaction ends (`FOR UPDATE` on
/// PostgreSQL, in id order; SQLite has a single writer), keyed by id.
pub async fn lock_products(conn: &mut Conn<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, Product>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Only read to explain a refusal, so the list of placeholders is built each time.
    let placeholders = (1..=ids.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
    let lock = match conn.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let sql = format!(
        concat!("SELECT ", product_columns!(), " FROM products WHERE id IN ({}) ORDER BY id{}"),
        placeholders, lock
    );
    let params: Vec<&dyn Param> = ids.iter().map(|id| id as &dyn Param).collect();
    let products = conn.query(&sql, &params, Product::from_row).await?;
    Ok(products.into_iter().map(|p| (p.id, p)).collect())
}

/// Takes `quantity` units of an active product's stock if that many are there, and returns the
/// product as it is now (locked until the transaction ends). `None` means unknown, archived or
/// not enough stock, and nothing changed.
pub async fn take_stock(conn: &mut Conn<'_>, product_id: Uuid, quantity: i64) -> Result<Option<Product>, DbError> {
    const SQL: &str = concat!(
        "UPDATE products SET stock = stock - $1, version = version + 1, updated_at = $2
         WHERE id = $3 AND active AND stock >= $1
         RETURNING ",
        product_columns!()
    );
    conn.query_opt(SQL, &[&quantity, &now(), &product_id], Product::from_row).await
}

/// Puts `quantity` units back (archived products included: the units exist).
pub async fn return_stock(conn: &mut Conn<'_>, product_id: Uuid, quantity: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE products SET stock = stock + $1, version = version + 1, updated_at = $2 WHERE id = $3",
        &[&quantity, &now(), &product_id],
    )
    .await
    .map(drop)
}
