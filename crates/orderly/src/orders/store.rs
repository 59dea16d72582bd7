//! Order storage, and the stock movements an order makes. The only place in this module that
//! touches the database.
//!
//! Stock is reserved with a conditional decrement (`stock = stock - q WHERE stock >= q`) inside
//! the order's transaction, one product at a time in id order: the database decides, so no
//! interleaving of concurrent orders can oversell, and the decrement takes the row lock in a
//! consistent order, which rules out deadlocks between orders.
//!
//! An order's items are stored with it, in `orders.items`, as the JSON array they are served
//! as: they never change once the order is placed, and every read of an order needs all of them,
//! so one row (one round trip) serves an order or a page of orders.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::catalog::store::{Product, product};
use crate::db::now;
use crate::listing::{ListParams, seek};
use orderly_kit::pagination::Page;

use super::domain::{OrderItem, OrderStatus};

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
        /// JSON array of [`crate::orders::domain::OrderItem`], in the order requested.
        pub items: String,
        /// The idempotency claim of the request that placed it, if it had a key.
        pub idempotency_claim: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An order as read: its row, with the items as the JSON they are served as.
#[derive(Clone, Debug)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub currency: String,
    pub total: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub items: Box<RawValue>,
}

impl Order {
    /// The items as values (for the stock they hold).
    pub fn item_list(&self) -> Result<Vec<OrderItem>, DbErr> {
        serde_json::from_str(self.items.get()).map_err(|_| corrupt(self.id))
    }
}

impl TryFrom<order::Model> for Order {
    type Error = DbErr;

    /// Checks that the stored items are JSON, so serving them as they are is safe.
    fn try_from(row: order::Model) -> Result<Self, DbErr> {
        let items = RawValue::from_string(row.items).map_err(|_| corrupt(row.id))?;
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            status: row.status,
            currency: row.currency,
            total: row.total,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            items,
        })
    }
}

fn corrupt(id: Uuid) -> DbErr {
    DbErr::Type(format!("order {id} has malformed items"))
}

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

/// Takes `quantity` units of an active product's stock if that many are there, and returns the
/// product as it is now (locked until the transaction ends). `None` means unknown, archived or
/// not enough stock, and nothing changed.
pub async fn take_stock(db: &impl ConnectionTrait, product_id: Uuid, quantity: i64) -> Result<Option<Product>, DbErr> {
    let mut updated = product::Entity::update_many()
        .col_expr(product::Column::Stock, Expr::col(product::Column::Stock).sub(quantity))
        .col_expr(product::Column::Version, Expr::col(product::Column::Version).add(1))
        .col_expr(product::Column::UpdatedAt, Expr::value(now()))
        .filter(product::Column::Id.eq(product_id))
        .filter(product::Column::Active.eq(true))
        .filter(product::Column::Stock.gte(quantity))
        .exec_with_returning(db)
        .await?;
    Ok(updated.pop())
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

/// Inserts a pending order with its items (in the order given); a second order under the same
/// idempotency claim is a unique violation.
pub async fn insert_order(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    currency: &str,
    items: &[OrderItem],
    claim: Option<&str>,
) -> Result<Order, DbErr> {
    let now = now();
    let row = order::Model {
        id: Uuid::now_v7(),
        user_id,
        status: OrderStatus::Pending.as_str().to_owned(),
        currency: currency.to_owned(),
        total: items.iter().map(|item| item.line_total).sum(),
        version: 1,
        created_at: now,
        updated_at: now,
        items: serde_json::to_string(items).expect("items serialize"),
        idempotency_claim: claim.map(str::to_owned),
    };
    order::Entity::insert(order::ActiveModel::from(row.clone())).exec_without_returning(db).await?;
    Order::try_from(row)
}

/// An order visible to the caller: their own, or any for an admin (`owner = None`). Another
/// customer's order is indistinguishable from a missing one.
pub async fn find_order(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Order>, DbErr> {
    let mut select = order::Entity::find_by_id(id);
    if let Some(owner) = owner {
        select = select.filter(order::Column::UserId.eq(owner));
    }
    select.one(db).await?.map(Order::try_from).transpose()
}

/// The order placed under an idempotency claim, if any.
pub async fn find_order_by_claim(db: &impl ConnectionTrait, claim: &str) -> Result<Option<Order>, DbErr> {
    order::Entity::find()
        .filter(order::Column::IdempotencyClaim.eq(claim))
        .one(db)
        .await?
        .map(Order::try_from)
        .transpose()
}

/// Detaches an idempotency claim from the order that holds it (its key expired and is used
/// again).
pub async fn release_claim(db: &impl ConnectionTrait, claim: &str) -> Result<(), DbErr> {
    order::Entity::update_many()
        .col_expr(order::Column::IdempotencyClaim, Expr::value(Option::<String>::None))
        .filter(order::Column::IdempotencyClaim.eq(claim))
        .exec(db)
        .await
        .map(drop)
}

/// As [`find_order`], locked until the transaction ends.
pub async fn lock_order(db: &impl ConnectionTrait, id: Uuid, owner: Option<Uuid>) -> Result<Option<Order>, DbErr> {
    let mut select = order::Entity::find_by_id(id).lock_exclusive();
    if let Some(owner) = owner {
        select = select.filter(order::Column::UserId.eq(owner));
    }
    select.one(db).await?.map(Order::try_from).transpose()
}

/// Moves an order read under lock in this transaction to `status`.
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

/// How many orders are in each status (statuses without orders are absent).
pub async fn count_by_status(db: &impl ConnectionTrait) -> Result<Vec<(String, i64)>, DbErr> {
    order::Entity::find()
        .select_only()
        .column(order::Column::Status)
        .column_as(Expr::col(order::Column::Id).count(), "count")
        .group_by(order::Column::Status)
        .into_tuple()
        .all(db)
        .await
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
    let page = Page::from_overfetch(rows, params.limit);
    let rows = page.rows.into_iter().map(Order::try_from).collect::<Result<_, _>>()?;
    Ok(Page { rows, has_more: page.has_more })
}
