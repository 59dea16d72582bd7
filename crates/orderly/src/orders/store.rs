//! Order storage. The only place in this module that touches the database. The stock an order
//! takes and returns moves through `catalog::store`, which owns the products.
//!
//! An order's items are stored with it, in `orders.items`, as the JSON array they are served
//! as: they never change once the order is placed, and every read of an order needs all of them,
//! so one row (one round trip) serves an order or a page of orders.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::db::{Ahead, Backend, Conn, DbError, Param, Row, now};
use crate::events::EventType;
use crate::events::store as events;
use crate::listing::{ListParams, and_where, seek};
use orderly_kit::pagination::Page;

use super::domain::{OrderItem, OrderStatus};

/// An order as read: its row, with the items as the JSON they are served as.
#[derive(Clone, Debug)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub currency: String,
    /// Sum of the line totals, in minor units.
    pub total: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// JSON array of [`crate::orders::domain::OrderItem`], in the order requested.
    pub items: Arc<RawValue>,
}

/// Orders already read, by id, each at the version it was read at, with its representation
/// once a page has written it. An order at a given version never changes (every change bumps
/// its version: [`set_status`]), so a page read again decodes only each row's id and version
/// and takes the rest, written, from here: decoding and writing 20 orders was most of the work
/// of serving a page. Filled only by reads outside transactions, which see committed rows
/// alone. Bounded in bytes.
#[derive(Clone)]
pub struct KnownOrders(moka::sync::Cache<Uuid, Arc<KnownOrder>, foldhash::fast::RandomState>);

/// An order as read at one version, and what it is written as.
pub struct KnownOrder {
    pub order: Order,
    /// The order's representation, written by the first page that served it at this version.
    pub written: OnceLock<Box<[u8]>>,
}

impl KnownOrders {
    pub fn new(max_bytes: u64) -> Self {
        // The representation is about the items and 300 bytes more; weighed before it exists.
        let weigh = |_: &Uuid, known: &Arc<KnownOrder>| {
            u32::try_from(2 * known.order.items.get().len() + 512).unwrap_or(u32::MAX)
        };
        let builder = moka::sync::Cache::builder().max_capacity(max_bytes).weigher(weigh);
        Self(builder.build_with_hasher(foldhash::fast::RandomState::default()))
    }

    /// The order of `row`: from here when it is known at the row's version, else read (and kept).
    fn read(&self, row: &Row<'_>) -> Result<Arc<KnownOrder>, DbError> {
        let id: Uuid = row.get(0)?;
        let version: i64 = row.get(5)?;
        if let Some(known) = self.0.get(&id)
            && known.order.version == version
        {
            return Ok(known);
        }
        let known = Arc::new(KnownOrder { order: Order::from_row(row)?, written: OnceLock::new() });
        self.0.insert(id, Arc::clone(&known));
        Ok(known)
    }
}

/// The columns [`Order::from_row`] reads, in its order (a macro, so queries are `concat!`ed
/// into constant text).
macro_rules! order_columns {
    () => {
        "id, user_id, status, currency, total, version, created_at, updated_at, items"
    };
}

impl Order {
    /// Reads an order row; an unknown status is corrupt, and so are items that are not JSON
    /// (checked here, so serving them as they are is safe).
    pub fn from_row(row: &Row<'_>) -> Result<Self, DbError> {
        let id: Uuid = row.get(0)?;
        let status: String = row.get(2)?;
        let status = OrderStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("order {id} has an unknown status {status:?}")))?;
        let items: Arc<RawValue> = RawValue::from_string(row.get(8)?).map_err(|_| corrupt(id))?.into();
        Ok(Self {
            id,
            user_id: row.get(1)?,
            status,
            currency: row.get(3)?,
            total: row.get(4)?,
            version: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
            items,
        })
    }

    /// Writes the order as the API serves it (`orders::routes::OrderBody`, byte for byte).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut object = orderly_kit::json::Object::begin(out);
        object
            .uuid("id", self.id)
            .uuid("user_id", self.user_id)
            .str("status", self.status.as_str())
            .raw("items", self.items.get())
            .str("currency", &self.currency)
            .i64("total", self.total)
            .i64("version", self.version)
            .timestamp("created_at", &self.created_at)
            .timestamp("updated_at", &self.updated_at);
        object.end();
    }

    /// The representation [`Order::write_json`] writes.
    pub fn json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.items.get().len() + 320);
        self.write_json(&mut out);
        out
    }

    /// The items as values (for the stock they hold).
    pub fn item_list(&self) -> Result<Vec<OrderItem>, DbError> {
        serde_json::from_str(self.items.get()).map_err(|_| corrupt(self.id))
    }
}

fn corrupt(id: Uuid) -> DbError {
    DbError::corrupt(format!("order {id} has malformed items"))
}

/// Inserts a pending order with its items (in the order given). Nothing in the transaction
/// reads the row back, so on PostgreSQL it travels with the next statement (for an order,
/// `COMMIT`). A second order under the same idempotency claim is a unique violation: from this
/// call on SQLite, from the transaction's commit on PostgreSQL.
pub async fn insert_order(
    conn: &mut Conn<'_>,
    user_id: Uuid,
    currency: &str,
    items: &[OrderItem],
    claim: Option<&str>,
) -> Result<Order, DbError> {
    let now = now();
    let id = Uuid::now_v7();
    let status = OrderStatus::Pending;
    let total: i64 = items.iter().map(|item| item.line_total).sum();
    let version = 1_i64;
    let items = serde_json::to_string(items).expect("items serialize");
    conn.defer(
        "INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items,
             idempotency_claim)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[&id, &user_id, &status.as_str(), &currency, &total, &version, &now, &now, &items, &claim],
    )
    .await?;
    let order = Order {
        id,
        user_id,
        status,
        currency: currency.to_owned(),
        total,
        version,
        created_at: now,
        updated_at: now,
        items: RawValue::from_string(items).map_err(|_| corrupt(id))?.into(),
    };
    events::record(conn, EventType::OrderCreated, order.id, &order.json()).await?;
    Ok(order)
}

/// An order visible to the caller: their own, or any for an admin (`owner = None`). Another
/// customer's order is indistinguishable from a missing one.
pub async fn find_order(conn: &mut Conn<'_>, id: Uuid, owner: Option<Uuid>) -> Result<Option<Order>, DbError> {
    match owner {
        None => {
            const SQL: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");
            conn.query_opt(SQL, &[&id], Order::from_row).await
        }
        Some(owner) => {
            const SQL: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1 AND user_id = $2");
            conn.query_opt(SQL, &[&id, &owner], Order::from_row).await
        }
    }
}

/// The order placed under an idempotency claim, if any.
pub async fn find_order_by_claim(conn: &mut Conn<'_>, claim: &str) -> Result<Option<Order>, DbError> {
    const SQL: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE idempotency_claim = $1");
    conn.query_opt(SQL, &[&claim], Order::from_row).await
}

/// Detaches an idempotency claim from the order that holds it (its key expired and is used
/// again).
pub async fn release_claim(conn: &mut Conn<'_>, claim: &str) -> Result<(), DbError> {
    conn.execute("UPDATE orders SET idempotency_claim = NULL WHERE idempotency_claim = $1", &[&claim]).await.map(drop)
}

/// As [`find_order`], locked until the transaction ends (`FOR UPDATE` on PostgreSQL; SQLite
/// has a single writer).
pub async fn lock_order(conn: &mut Conn<'_>, id: Uuid, owner: Option<Uuid>) -> Result<Option<Locked>, DbError> {
    let locked = lock_order_ahead(conn, id, owner).await?;
    conn.fetch_opt(locked).await
}

/// [`lock_order`], sent ahead of the unit's next statement ([`Conn::ahead`]).
pub async fn lock_order_ahead(conn: &mut Conn<'_>, id: Uuid, owner: Option<Uuid>) -> Result<Ahead<Locked>, DbError> {
    let postgres = conn.backend() == Backend::Postgres;
    match owner {
        None => {
            let sql = if postgres {
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1 FOR UPDATE")
            } else {
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1")
            };
            conn.ahead(sql, &[&id], |row| Order::from_row(row).map(Locked)).await
        }
        Some(owner) => {
            let sql = if postgres {
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1 AND user_id = $2 FOR UPDATE")
            } else {
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1 AND user_id = $2")
            };
            conn.ahead(sql, &[&id, &owner], |row| Order::from_row(row).map(Locked)).await
        }
    }
}

/// An order read under its row lock in the current transaction ([`lock_order`]): nothing else
/// can change it until the transaction ends, so it is the one kind of order whose status may
/// be set ([`set_status`]).
pub struct Locked(Order);

impl Locked {
    /// The order as read, lock or no lock.
    pub fn into_order(self) -> Order {
        self.0
    }
}

impl std::ops::Deref for Locked {
    type Target = Order;

    fn deref(&self) -> &Order {
        &self.0
    }
}

/// Moves a locked order to `status`. The one way an order's status changes, for this module
/// and for payments; like every change of an order, it bumps the version ([`KnownOrders`]
/// relies on that). It travels with the transaction's next statement or its `COMMIT`, its row
/// count unchecked: the lock holds the version it was read at (checking the count before
/// `COMMIT` would cost a round trip of its own).
pub async fn set_status(conn: &mut Conn<'_>, current: &Locked, status: OrderStatus) -> Result<Order, DbError> {
    let updated_at = now();
    let version = current.version + 1;
    conn.defer(
        "UPDATE orders SET status = $1, version = $2, updated_at = $3 WHERE id = $4 AND version = $5",
        &[&status.as_str(), &version, &updated_at, &current.id, &current.version],
    )
    .await?;
    let order = Order { status, version, updated_at, ..current.0.clone() };
    let event = match status {
        OrderStatus::Paid => Some(EventType::OrderPaid),
        OrderStatus::Cancelled => Some(EventType::OrderCancelled),
        // A refund is told by `payment.refunded`; an order never returns to pending.
        OrderStatus::Refunded | OrderStatus::Pending => None,
    };
    if let Some(event) = event {
        events::record(conn, event, order.id, &order.json()).await?;
    }
    Ok(order)
}

/// How many orders are in each status (statuses without orders are absent).
pub async fn count_by_status(conn: &mut Conn<'_>) -> Result<Vec<(OrderStatus, i64)>, DbError> {
    conn.query("SELECT status, count(id) FROM orders GROUP BY status", &[], |row| {
        let status: String = row.get(0)?;
        let status = OrderStatus::parse(&status)
            .ok_or_else(|| DbError::corrupt(format!("orders have an unknown status {status:?}")))?;
        Ok((status, row.get(1)?))
    })
    .await
}

/// One page of the orders an export covers, oldest first: `owner`'s (everyone's when `None`),
/// created after `created_after` (if any) and before `created_before`, after the order
/// `after` (the last one the export wrote).
pub async fn export_page(
    conn: &mut Conn<'_>,
    owner: Option<Uuid>,
    created_after: Option<DateTime<Utc>>,
    created_before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Order>, DbError> {
    let mut sql = String::from(concat!("SELECT ", order_columns!(), " FROM orders WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    export_scope(&mut sql, &mut values, &owner, &created_after, &created_before);
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", false, after, &limit);
    conn.query(&sql, &values, Order::from_row).await
}

/// How many orders an export covers (see [`export_page`]).
pub async fn export_count(
    conn: &mut Conn<'_>,
    owner: Option<Uuid>,
    created_after: Option<DateTime<Utc>>,
    created_before: DateTime<Utc>,
) -> Result<i64, DbError> {
    let mut sql = String::from("SELECT COUNT(*) FROM orders WHERE true");
    let mut values: Vec<&dyn Param> = Vec::new();
    export_scope(&mut sql, &mut values, &owner, &created_after, &created_before);
    conn.query_one(&sql, &values, |row| row.get(0)).await
}

/// The conditions of an export's scope, added to `sql`.
fn export_scope<'a>(
    sql: &mut String,
    values: &mut Vec<&'a dyn Param>,
    owner: &'a Option<Uuid>,
    created_after: &'a Option<DateTime<Utc>>,
    created_before: &'a DateTime<Utc>,
) {
    if let Some(owner) = owner {
        and_where(sql, values, "user_id = $", owner);
    }
    if let Some(created_after) = created_after {
        and_where(sql, values, "created_at > $", created_after);
    }
    and_where(sql, values, "created_at < $", created_before);
}

/// Filters of the order list. `user_id` is forced to the caller for customers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrderFilter {
    pub user_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

pub async fn list_orders(
    conn: &mut Conn<'_>,
    known: &KnownOrders,
    filter: &OrderFilter,
    params: &ListParams,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Page<Arc<KnownOrder>>, DbError> {
    let mut sql = String::from(concat!("SELECT ", order_columns!(), " FROM orders WHERE true"));
    let mut values: Vec<&dyn Param> = Vec::new();
    if let Some(user_id) = &filter.user_id {
        and_where(&mut sql, &mut values, "user_id = $", user_id);
    }
    let status = filter.status.map(OrderStatus::as_str);
    if let Some(status) = &status {
        and_where(&mut sql, &mut values, "status = $", status);
    }
    if let Some(after) = &filter.created_after {
        and_where(&mut sql, &mut values, "created_at > $", after);
    }
    if let Some(before) = &filter.created_before {
        and_where(&mut sql, &mut values, "created_at < $", before);
    }
    let limit = params.limit + 1;
    let after = after.as_ref().map(|(created_at, id)| (created_at as &dyn Param, id));
    seek(&mut sql, &mut values, "created_at", params.sort.descending, after, &limit);
    let rows = conn.query(&sql, &values, |row| known.read(row)).await?;
    Ok(Page::from_overfetch(rows, params.limit))
}
