//! Product storage. The only place in this module that touches the database.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func, LikeExpr};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};
use serde::Serialize;
use uuid::Uuid;

use crate::db::now;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

pub mod product {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub sku: String,
        pub name: String,
        pub description: String,
        /// Minor units of `currency`.
        pub unit_price: i64,
        pub currency: String,
        pub stock: i64,
        pub active: bool,
        pub version: i64,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use product::Model as Product;

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

pub async fn insert_product(db: &impl ConnectionTrait, new: NewProduct) -> Result<Product, DbErr> {
    let now = now();
    product::ActiveModel {
        id: Set(Uuid::now_v7()),
        sku: Set(new.sku),
        name: Set(new.name),
        description: Set(new.description),
        unit_price: Set(new.unit_price),
        currency: Set(new.currency.to_owned()),
        stock: Set(new.stock),
        active: Set(new.active),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
}

pub async fn find_product(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<Product>, DbErr> {
    product::Entity::find_by_id(id).one(db).await
}

/// The product, locked for update until the transaction ends (`FOR UPDATE` on PostgreSQL;
/// SQLite has a single writer).
pub async fn lock_product(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<Product>, DbErr> {
    product::Entity::find_by_id(id).lock_exclusive().one(db).await
}

/// Stores `desired` over a product read with [`lock_product`] in the same transaction.
pub async fn update_product(db: &impl ConnectionTrait, current: &Product, desired: Product) -> Result<Product, DbErr> {
    let updated = Product { version: current.version + 1, updated_at: now(), ..desired };
    let result = product::Entity::update_many()
        .col_expr(product::Column::Sku, Expr::value(updated.sku.clone()))
        .col_expr(product::Column::Name, Expr::value(updated.name.clone()))
        .col_expr(product::Column::Description, Expr::value(updated.description.clone()))
        .col_expr(product::Column::UnitPrice, Expr::value(updated.unit_price))
        .col_expr(product::Column::Currency, Expr::value(updated.currency.clone()))
        .col_expr(product::Column::Stock, Expr::value(updated.stock))
        .col_expr(product::Column::Active, Expr::value(updated.active))
        .col_expr(product::Column::Version, Expr::value(updated.version))
        .col_expr(product::Column::UpdatedAt, Expr::value(updated.updated_at))
        .filter(product::Column::Id.eq(current.id))
        .filter(product::Column::Version.eq(current.version))
        .exec(db)
        .await?;
    if result.rows_affected != 1 {
        return Err(DbErr::RecordNotUpdated);
    }
    Ok(updated)
}

/// Filters of the public product list.
#[derive(Debug, Default, Serialize)]
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
    db: &impl ConnectionTrait,
    filter: &ProductFilter,
    params: &ListParams,
    after: Option<After>,
) -> Result<Page<Product>, DbErr> {
    use product::Column;
    let mut select = product::Entity::find();
    if let Some(active) = filter.active {
        select = select.filter(Column::Active.eq(active));
    }
    if let Some(currency) = filter.currency {
        select = select.filter(Column::Currency.eq(currency));
    }
    if let Some(min) = filter.min_price {
        select = select.filter(Column::UnitPrice.gte(min));
    }
    if let Some(max) = filter.max_price {
        select = select.filter(Column::UnitPrice.lte(max));
    }
    if let Some(q) = &filter.q {
        let pattern = format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let like = |column: Column| {
            Expr::expr(Func::lower(Expr::col(column))).like(LikeExpr::new(pattern.clone()).escape('\\'))
        };
        select = select.filter(like(Column::Name).or(like(Column::Sku)));
    }
    let key = if params.sort.key == "unit_price" { Column::UnitPrice } else { Column::CreatedAt };
    let after = after.map(|after| match after {
        After::CreatedAt(created_at, id) => (Expr::value(created_at), id),
        After::UnitPrice(price, id) => (Expr::value(price), id),
    });
    let rows = seek(select, key, Column::Id, params.sort.descending, after, params.limit).all(db).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}
