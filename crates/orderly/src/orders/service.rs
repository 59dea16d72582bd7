//! Order logic: placing an order (price snapshot, stock reservation) and cancelling it (stock
//! returned). Each runs in one transaction; a failure leaves stock and orders untouched and is
//! answered as an [`OrderError`], which the routes turn into problems.

use std::collections::HashMap;
use std::time::Duration;

use orderly_kit::idempotency::KeyedWrite;

use uuid::Uuid;

use crate::accounts::auth::Principal;
use crate::catalog::cache::ProductCache;
use crate::catalog::store::{self as catalog, Product};
use crate::db::{Conn, Database, DbError};
use crate::idempotency::{Keyed, keyed_transaction};
use crate::payments::service::PaymentError;
use crate::responses::Written;

use super::domain::{OrderItem, OrderLine, OrderStatus};
use super::store::{self, Order};

/// Why an order cannot be placed or cancelled; `orders::routes` turns each into its problem.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("no such order")]
    NotFound,
    #[error("the order is {}", .0.as_str())]
    InvalidState(OrderStatus),
    /// Lines naming products that cannot be ordered, by their index in the request.
    #[error("some lines name products that cannot be ordered")]
    Unorderable(Vec<(usize, LineRefusal)>),
    #[error("the products are priced in more than one currency")]
    MixedCurrencies,
    #[error("not enough stock for product {product_id}")]
    InsufficientStock { product_id: Uuid, sku: String, requested: i64, available: i64 },
    /// A payment of the order is being processed.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("{0}")]
    Internal(&'static str),
}

/// Why a line's product cannot be ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRefusal {
    Unknown,
    Archived,
}

/// Places an order for `user_id`: every product must exist, be active and share one currency;
/// every line must be in stock. Prices are the catalog's at this moment; the products whose
/// stock it takes are invalidated in `products` once it commits.
///
/// The hot path is one conditional decrement per line and one insert. Only when a decrement
/// finds nothing does the order read its products, to say which rule it broke: unknown or
/// archived products and mixed currencies (422) before missing stock (409).
///
/// With an idempotency key, the key is claimed and kept in the order's transaction
/// ([`keyed_transaction`]): the key, the stock, the order and the kept response commit together.
/// The key's id is also stored with the order (`orders.idempotency_claim`), as defence in
/// depth: should a key record ever be lost while its order stands, a retry finds the order
/// its first run placed instead of placing another. A claim on an order older than the
/// idempotency TTL belongs to a key that expired and was used again; it is released and the new
/// order placed (`idempotency_ttl` is how long keys are kept).
pub async fn place_order(
    db: &Database,
    products: &ProductCache,
    idempotency_ttl: Duration,
    user_id: Uuid,
    lines: &[OrderLine],
    key: Option<KeyedWrite>,
    render: fn(&Order) -> Written,
) -> Result<Keyed<Order>, OrderError> {
    let ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    let claim = key.as_ref().map(|key| key.id.clone());
    let placed = {
        let (lines, claim) = (lines.to_vec(), claim.clone());
        keyed_transaction(db, key.clone(), render, async move |conn| {
            place(conn, user_id, &lines, claim.as_deref()).await
        })
        .await
    };
    let placed = match placed {
        Ok(placed) => placed,
        Err(Unplaced::Refused(error)) => return Err(error),
        Err(Unplaced::ClaimTaken) => {
            let Some(claim) = claim else {
                return Err(OrderError::Internal("an order without a claim broke a unique index"));
            };
            let expired_before =
                chrono::Utc::now() - chrono::TimeDelta::from_std(idempotency_ttl).unwrap_or(chrono::TimeDelta::days(1));
            let lines = lines.to_vec();
            let placed = keyed_transaction(db, key, render, async move |conn| {
                match store::find_order_by_claim(conn, &claim).await? {
                    Some(placed) if placed.user_id == user_id && placed.created_at > expired_before => {
                        return Ok(placed);
                    }
                    Some(_) => store::release_claim(conn, &claim).await?,
                    None => {}
                }
                place(conn, user_id, &lines, Some(&claim)).await
            })
            .await;
            match placed {
                Ok(placed) => placed,
                Err(Unplaced::Refused(error)) => return Err(error),
                Err(Unplaced::ClaimTaken) => {
                    return Err(OrderError::Internal(
                        "an order's idempotency claim was taken again right after its release",
                    ));
                }
            }
        }
    };
    if let Keyed::Done(..) = placed {
        products.invalidate(ids).await;
    }
    Ok(placed)
}

/// Why the unit of work placing an order rolled back.
enum Unplaced {
    /// Another order holds the claim.
    ClaimTaken,
    /// The order cannot be placed (or the database failed).
    Refused(OrderError),
}

impl From<DbError> for Unplaced {
    /// The one unique index an order placement can hit is the order's claim (the insert may
    /// fail as late as the commit it travels with).
    fn from(error: DbError) -> Self {
        if error.is_unique_violation() { Self::ClaimTaken } else { Self::Refused(error.into()) }
    }
}

/// Takes the stock and inserts the order; fails (so the caller's transaction undoes the lines
/// already taken) when a line cannot be had, or with `ClaimTaken` when another order holds
/// `claim`.
async fn place(
    conn: &mut Conn<'_>,
    user_id: Uuid,
    lines: &[OrderLine],
    claim: Option<&str>,
) -> Result<Order, Unplaced> {
    let mut by_id: Vec<&OrderLine> = lines.iter().collect();
    by_id.sort_by_key(|line| line.product_id);
    let mut taken: HashMap<Uuid, Product> = HashMap::with_capacity(lines.len());
    for line in by_id {
        match catalog::take_stock(conn, line.product_id, line.quantity).await? {
            Some(product) => {
                taken.insert(product.id, product);
            }
            None => return Err(Unplaced::Refused(refusal(conn, lines, line).await)),
        }
    }
    let currency = &taken[&lines[0].product_id].currency;
    if taken.values().any(|product| &product.currency != currency) {
        return Err(Unplaced::Refused(OrderError::MixedCurrencies));
    }
    let items: Vec<OrderItem> = lines
        .iter()
        .map(|line| {
            let product = &taken[&line.product_id];
            OrderItem {
                product_id: product.id,
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_price: product.unit_price,
                quantity: line.quantity,
                line_total: product.unit_price * line.quantity,
            }
        })
        .collect();
    Ok(store::insert_order(conn, user_id, currency, &items, claim).await?)
}

/// Why an order cannot be placed, once the decrement for `short` changed nothing. The caller
/// fails its unit of work, which undoes the lines already taken.
async fn refusal(conn: &mut Conn<'_>, lines: &[OrderLine], short: &OrderLine) -> OrderError {
    let mut ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    ids.sort();
    // Locked in id order, like the decrements, so this read cannot deadlock with other orders.
    let products = match catalog::lock_products(conn, &ids).await {
        Ok(products) => products,
        Err(error) => return error.into(),
    };
    let refused: Vec<(usize, LineRefusal)> = lines
        .iter()
        .enumerate()
        .filter_map(|(index, line)| match products.get(&line.product_id) {
            None => Some((index, LineRefusal::Unknown)),
            Some(product) if !product.active => Some((index, LineRefusal::Archived)),
            Some(_) => None,
        })
        .collect();
    if !refused.is_empty() {
        return OrderError::Unorderable(refused);
    }
    let currency = &products[&lines[0].product_id].currency;
    if products.values().any(|product| &product.currency != currency) {
        return OrderError::MixedCurrencies;
    }
    let product = &products[&short.product_id];
    OrderError::InsufficientStock {
        product_id: product.id,
        sku: product.sku.clone(),
        requested: short.quantity,
        available: product.stock,
    }
}

/// Cancels a pending order and returns its stock. Cancelling a cancelled order returns it
/// unchanged; any other state is 409 `invalid_state`; while a charge of the order is unsettled,
/// 409 `payment_in_progress` (`payment_settle_after` says when to retry). The products whose
/// stock comes back are invalidated in `products`.
pub async fn cancel_order(
    db: &Database,
    products: &ProductCache,
    payment_settle_after: Duration,
    caller: Principal,
    id: Uuid,
    key: Option<KeyedWrite>,
    render: fn(&Order) -> Written,
) -> Result<Keyed<Order>, OrderError> {
    let owner = caller.owner_scope();
    let cancelled = keyed_transaction(
        db,
        key,
        move |(order, _): &(Order, Option<Vec<OrderItem>>)| render(order),
        async move |conn| {
            let order = store::lock_order(conn, id, owner).await?.ok_or(OrderError::NotFound)?;
            match order.status {
                OrderStatus::Cancelled => return Ok((order.into_order(), None)),
                OrderStatus::Pending => {}
                other => return Err(OrderError::InvalidState(other)),
            }
            // Cancelling and paying exclude each other: the stock goes back only with the money.
            crate::payments::service::refuse_while_charging(conn, order.id, payment_settle_after).await?;
            let mut items = order.item_list()?;
            // In id order, the order stock is taken in.
            items.sort_by_key(|item| item.product_id);
            for item in &items {
                catalog::return_stock(conn, item.product_id, item.quantity).await?;
            }
            let cancelled = store::set_status(conn, &order, OrderStatus::Cancelled).await?;
            Ok::<_, OrderError>((cancelled, Some(items)))
        },
    )
    .await?;
    Ok(match cancelled {
        Keyed::Done((order, returned), written) => {
            if let Some(items) = returned {
                products.invalidate(items.iter().map(|item| item.product_id)).await;
            }
            Keyed::Done(order, written)
        }
        Keyed::Answered(response) => Keyed::Answered(response),
    })
}
