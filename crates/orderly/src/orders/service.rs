//! Order logic: placing an order (price snapshot, stock reservation) and cancelling it (stock
//! returned). Each runs in one transaction; a failure leaves stock and orders untouched.

use orderly_kit::{FieldError, Problem};
use sea_orm::TransactionTrait;
use uuid::Uuid;

use crate::accounts::auth::Principal;
use crate::app::App;
use crate::error::AppError;

use super::domain::{OrderLine, OrderStatus};
use super::store::{self, NewItem, Order, OrderItem};

/// Places an order for `user_id`: every product must exist, be active and share one currency;
/// every line must be in stock. Prices are the catalog's at this moment.
pub async fn place_order(app: &App, user_id: Uuid, lines: &[OrderLine]) -> Result<(Order, Vec<OrderItem>), AppError> {
    let transaction = app.db.write().begin().await?;
    let mut ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    ids.sort();
    let products = store::lock_products(&transaction, &ids).await?;

    let mut errors = Vec::new();
    let mut items = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let field = format!("items[{index}].product_id");
        match products.get(&line.product_id) {
            None => errors.push(field_error(field, "unknown_product", "no product has this id")),
            Some(product) if !product.active => {
                errors.push(field_error(field, "archived_product", "this product is archived and cannot be ordered"))
            }
            Some(product) => items.push(NewItem {
                product_id: product.id,
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_price: product.unit_price,
                quantity: line.quantity,
            }),
        }
    }
    let currency = items.first().map(|item| products[&item.product_id].currency.clone());
    if errors.is_empty() && items.iter().any(|item| Some(&products[&item.product_id].currency) != currency.as_ref()) {
        errors.push(field_error(
            "items".into(),
            "mixed_currencies",
            "all products of an order must be priced in one currency",
        ));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors).into());
    }

    // Reserve in id order, the order the rows were locked in.
    let mut reservations: Vec<&NewItem> = items.iter().collect();
    reservations.sort_by_key(|item| item.product_id);
    for item in reservations {
        if !store::take_stock(&transaction, item.product_id, item.quantity).await? {
            let product = &products[&item.product_id];
            return Err(Problem::conflict(
                "insufficient_stock",
                format!(
                    "Not enough stock for product {} ({}): {} requested, {} available.",
                    product.id, product.sku, item.quantity, product.stock
                ),
            )
            .into());
        }
    }
    let currency = currency.expect("an order has at least one item");
    let placed = store::insert_order(&transaction, user_id, &currency, items).await?;
    transaction.commit().await?;
    app.products.invalidate(ids);
    Ok(placed)
}

/// Cancels a pending order and returns its stock. Cancelling a cancelled order returns it
/// unchanged; any other state is 409 `invalid_state`.
pub async fn cancel_order(app: &App, caller: Principal, id: Uuid) -> Result<(Order, Vec<OrderItem>), AppError> {
    let owner = (!caller.is_admin()).then_some(caller.user_id);
    let transaction = app.db.write().begin().await?;
    let order = store::lock_order(&transaction, id, owner).await?.ok_or_else(Problem::not_found)?;
    let mut items = store::items_of(&transaction, &[order.id]).await?.remove(&order.id).unwrap_or_default();
    match OrderStatus::parse(&order.status).map_err(|_| AppError::internal("stored order status is invalid"))? {
        OrderStatus::Cancelled => return Ok((order, items)),
        OrderStatus::Pending => {}
        other => {
            return Err(Problem::conflict(
                "invalid_state",
                format!("Only pending orders can be cancelled; this one is {}.", other.as_str()),
            )
            .into());
        }
    }
    items.sort_by_key(|item| item.product_id);
    for item in &items {
        store::return_stock(&transaction, item.product_id, item.quantity).await?;
    }
    items.sort_by_key(|item| item.position);
    let cancelled = store::set_status(&transaction, &order, OrderStatus::Cancelled).await?;
    transaction.commit().await?;
    app.products.invalidate(items.iter().map(|item| item.product_id));
    Ok((cancelled, items))
}

fn field_error(field: String, code: &str, message: &str) -> FieldError {
    FieldError { field, code: code.into(), message: message.into() }
}
