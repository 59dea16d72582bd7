//! Order items move into their order: `orders.items` holds them as the JSON array they are
//! served as, so an order or a page of orders is read in one query. Existing items are copied
//! over, then `order_items` is dropped.

use sea_orm::{ConnectionTrait, StatementBuilder};
use sea_orm_migration::prelude::*;
use serde::Serialize;
use uuid::Uuid;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    Items,
}

#[derive(DeriveIden)]
enum OrderItems {
    Table,
    OrderId,
    Position,
    ProductId,
    Sku,
    Name,
    UnitPrice,
    Quantity,
    LineTotal,
}

/// The stored item, frozen as this migration writes it.
#[derive(Serialize)]
struct Item {
    product_id: Uuid,
    sku: String,
    name: String,
    unit_price: i64,
    quantity: i64,
    line_total: i64,
}

const BATCH: u64 = 500;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(ColumnDef::new(Orders::Items).text().not_null().default("[]"))
                    .to_owned(),
            )
            .await?;
        copy_items(manager).await?;
        manager.drop_table(Table::drop().table(OrderItems::Table).to_owned()).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("order items cannot be moved back into their own table".into()))
    }
}

/// Copies every order's items into `orders.items`, a batch of orders at a time.
async fn copy_items(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let mut after: Option<Uuid> = None;
    loop {
        let mut select = Query::select();
        select.column(Orders::Id).from(Orders::Table).order_by(Orders::Id, Order::Asc).limit(BATCH);
        if let Some(after) = after {
            select.and_where(Expr::col(Orders::Id).gt(after));
        }
        let ids: Vec<Uuid> =
            query(db, &select).await?.iter().map(|row| row.try_get("", "id")).collect::<Result<_, _>>()?;
        let Some(&last) = ids.last() else { return Ok(()) };
        after = Some(last);

        let items = Query::select()
            .columns([
                OrderItems::OrderId,
                OrderItems::ProductId,
                OrderItems::Sku,
                OrderItems::Name,
                OrderItems::UnitPrice,
                OrderItems::Quantity,
                OrderItems::LineTotal,
            ])
            .from(OrderItems::Table)
            .and_where(Expr::col(OrderItems::OrderId).is_in(ids.iter().copied()))
            .order_by(OrderItems::OrderId, Order::Asc)
            .order_by(OrderItems::Position, Order::Asc)
            .to_owned();
        let mut grouped: Vec<(Uuid, Vec<Item>)> = Vec::new();
        for row in query(db, &items).await? {
            let order_id: Uuid = row.try_get("", "order_id")?;
            let item = Item {
                product_id: row.try_get("", "product_id")?,
                sku: row.try_get("", "sku")?,
                name: row.try_get("", "name")?,
                unit_price: row.try_get("", "unit_price")?,
                quantity: row.try_get("", "quantity")?,
                line_total: row.try_get("", "line_total")?,
            };
            match grouped.last_mut() {
                Some((id, list)) if *id == order_id => list.push(item),
                _ => grouped.push((order_id, vec![item])),
            }
        }
        for (order_id, list) in grouped {
            let json = serde_json::to_string(&list).map_err(|error| DbErr::Migration(error.to_string()))?;
            let update = Query::update()
                .table(Orders::Table)
                .value(Orders::Items, json)
                .and_where(Expr::col(Orders::Id).eq(order_id))
                .to_owned();
            db.execute(db.get_database_backend().build(&update)).await?;
        }
    }
}

async fn query(
    db: &SchemaManagerConnection<'_>,
    statement: &impl StatementBuilder,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    db.query_all(db.get_database_backend().build(statement)).await
}
