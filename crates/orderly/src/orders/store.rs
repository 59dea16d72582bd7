//! Order storage, and the stock movements an order makes. The only place in this module that
//! touches the database.
//!
//! Stock is reserved with a conditional decrement (`stock = stock - q WHERE stock >= q`) inside
//! the order's transaction, after the products were locked in id order: the database decides,
//! so no interleaving of concurrent orders can oversell, and consistent lock order rules out
//! deadlocks between them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::store::{Product, product};
use crate::db::now;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

use super::domain::OrderStatus;

pub mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub user_id: Uuid,
        pub status: String,
        pub currency: String,
        /// Sum of the line totals, in minor units.
        pub total: i64,
        pub version: i64,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod order_item {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: Uuid,
        /// Position in the order as requested.
        #[sea_orm(primary_key, auto_increment = false)]
        pub position: i32,
        pub product_id: Uuid,
        pub sku: String,
        pub name: String,
        pub unit_price: i64,
        pub quantity: i64,
        pub line_total: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use order::Model as Order;
pub use order_item::Model as OrderItem;

/// The products named by an order, locked until the transaction ends, keyed by id.
pub async fn lock_products(db: &impl ConnectionTrait, ids: &[Uuid]) -> Result<HashMap<Uuid, Product>, DbErr> {
    let products = product::Entity::find()
        .filter(product::Column::Id.is_in(ids.iter().copied()))
        .order_by_asc(product::Column::Id)
        .lock_exclusive()
        .all(db)
        .await?;
    Ok(products.into_iter().map(|p| (p.id, p)).collect())
}

/// Takes `quantity` units of an active product's stock if that many are there. `false` means
/// not enough stock, and nothing changed.
pub async fn take_stock(db: &impl ConnectionTrait, product_id: Uuid, quantity: i64) -> Result<bool, DbErr> {
    let result = product::Entity::update_many()
        .col_expr(product::Column::Stock, Expr::col(product::Column::Stock).sub(quantity))
        .col_expr(product::Column::Version, Expr::col(product::Column::Version).add(1))
        .col_expr(product::Column::UpdatedAt, Expr::value(now()))
        .filter(product::Column::Id.eq(product_id))
        .filter(product::Column::Active.eq(true))
        .filter(product::Column::Stock.gte(quantity))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Puts `quantity` units back (archived products included: the units exist).
pub async fn return_stock(db: &impl ConnectionTrait, product_id: Uuid, quantity: i64) -> Result<(), DbErr> {
    product::Entity::update_many()
        .col_expr(product::Column::Stock, Expr::col(product::Column::Stock).add(quantity))
        .col_expr(product::Column::Version, Expr::col(product::Column::Version).add(1))
        .col_expr(product::Column::UpdatedAt, Expr::value(now()))
        .filter(product::Column::Id.eq(product_id))
        .exec(db)
        .await
        .map(drop)
}

/// Inserts an order with its items (positions are the items' order).
pub async fn insert_order(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    currency: &str,
    items: Vec<NewItem>,
) -> Result<(Order, Vec<OrderItem>), DbErr> {
    let now = now();
    let id = Uuid::now_v7();
    let items: Vec<OrderItem> = items
        .into_iter()
        .enumerate()
        .map(|(position, item)| OrderItem {
            order_id: id,
            position: i32::try_from(position).expect("at most 50 items"),
            product_id: item.product_id,
            sku: item.sku,
            name: item.name,
            unit_price: item.unit_price,
            quantity: item.quantity,
            line_total: item.unit_price * item.quantity,
        })
        .collect();
    let order = Order {
        id,
        user_id,
        status: OrderStatus::Pending.as_str().to_owned(),
        currency: currency.to_owned(),
        total: items.iter().map(|i| i.line_total).sum(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    order::Entity::insert(order::ActiveModel::from(order.clone())).exec_without_returning(db).await?;
    order_item::Entity::insert_many(items.iter().cloned().map(order_item::ActiveModel::from))
        .exec_without_returning(db)
        .await?;
    Ok((order, items))
}

/// A line as it will be stored: the product snapshot and the quantity.
pub struct NewItem {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price: i64,
    pub quantity: i64,
}

/// An order visible to the caller: their own, or any for an admin (`owner = None`). Another
/// customer's order is indistinguishable from a missing one.
pub async fn find_order(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Order>, DbErr> {
    let mut select = order::Entity::find_by_id(id);
    if let Some(owner) = owner {
        select = select.filter(order::Column::UserId.eq(owner));
    }
    select.one(db).await
}

/// As [`find_order`], locked until the transaction ends.
pub async fn lock_order(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Order>, DbErr> {
    let mut select = order::Entity::find_by_id(id).lock_exclusive();
    if let Some(owner) = owner {
        select = select.filter(order::Column::UserId.eq(owner));
    }
    select.one(db).await
}

pub async fn set_status(db: &impl ConnectionTrait, current: &Order, status: OrderStatus) -> Result<Order, DbErr> {
    let updated_at = now();
    let result = order::Entity::update_many()
        .col_expr(order::Column::Status, Expr::value(status.as_str()))
        .col_expr(order::Column::Version, Expr::value(current.version + 1))
        .col_expr(order::Column::UpdatedAt, Expr::value(updated_at))
        .filter(order::Column::Id.eq(current.id))
        .filter(order::Column::Version.eq(current.version))
        .exec(db)
        .await?;
    if result.rows_affected != 1 {
        return Err(DbErr::RecordNotUpdated);
    }
    Ok(Order { status: status.as_str().to_owned(), version: current.version + 1, updated_at, ..current.clone() })
}

/// Items of the given orders, grouped by order and in position order.
pub async fn items_of(db: &impl ConnectionTrait, order_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderItem>>, DbErr> {
    let items = order_item::Entity::find()
        .filter(order_item::Column::OrderId.is_in(order_ids.iter().copied()))
        .order_by_asc(order_item::Column::OrderId)
        .order_by_asc(order_item::Column::Position)
        .all(db)
        .await?;
    let mut grouped: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
    for item in items {
        grouped.entry(item.order_id).or_default().push(item);
    }
    Ok(grouped)
}

/// Filters of the order list. `user_id` is forced to the caller for customers.
#[derive(Debug, Default, Serialize)]
pub struct OrderFilter {
    pub user_id: Option<Uuid>,
    pub status: Option<&'static str>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

pub async fn list_orders(
    db: &impl ConnectionTrait,
    filter: &OrderFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Order>, DbErr> {
    use order::Column;
    let mut select = order::Entity::find();
    if let Some(user_id) = filter.user_id {
        select = select.filter(Column::UserId.eq(user_id));
    }
    if let Some(status) = filter.status {
        select = select.filter(Column::Status.eq(status));
    }
    if let Some(after) = filter.created_after {
        select = select.filter(Column::CreatedAt.gt(after));
    }
    if let Some(before) = filter.created_before {
        select = select.filter(Column::CreatedAt.lt(before));
    }
    let after = after.map(|(created_at, id)| (Expr::value(created_at), id));
    let rows = seek(select, Column::CreatedAt, Column::Id, params.sort.descending, after, params.limit).all(db).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}
