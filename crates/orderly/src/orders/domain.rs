//! Order value types: the status machine, the parsed item list of a new order, and the items
//! an order keeps.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::domain::MAX_UNIT_PRICE;

/// The largest total an order can have: 50 lines (`PlaceOrderRequest`) of 1000 units
/// ([`OrderLine`]) at the largest unit price.
pub const MAX_TOTAL: i64 = 50 * 1000 * MAX_UNIT_PRICE;

/// `pending` → `paid` → `refunded`, or `pending` → `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Refunded,
    Cancelled,
}

impl OrderStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "paid" => Some(Self::Paid),
            "refunded" => Some(Self::Refunded),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Refunded => "refunded",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One line of a placed order: the product as it was when ordered, and how many units. Stored
/// with the order exactly as it is served (items never change once placed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    /// Price of one unit when the order was placed, in minor units.
    pub unit_price: i64,
    pub quantity: i64,
    /// `unit_price × quantity`.
    pub line_total: i64,
}

/// One requested line: a product and how many units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// The indexes of lines that name a product an earlier line already names: an order's
/// products are distinct.
pub fn repeated_products(lines: &[OrderLine]) -> Vec<usize> {
    (1..lines.len()).filter(|&i| lines[..i].iter().any(|earlier| earlier.product_id == lines[i].product_id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_may_appear_once() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let line = |product_id, quantity| OrderLine { product_id, quantity };
        assert_eq!(repeated_products(&[line(a, 1), line(b, 1)]), Vec::<usize>::new());
        assert_eq!(repeated_products(&[line(a, 1), line(b, 1), line(a, 2), line(a, 1)]), [2, 3]);
    }
}
